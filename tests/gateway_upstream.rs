//! The worker side of the gateway: 502 when the worker is unreachable or hangs up, 504 when it
//! does not answer within `upstream_timeout` (both make Exchange retry), graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_worker_gives_502() {
    // A port bound but never listening: held for the test (so no other test can take it), and
    // every connection to it is refused.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = reserved.local_addr().unwrap();
    let h = Harness::with(Options {
        upstream: Some(format!("http://{addr}")),
        ..Options::default()
    })
    .await;
    let response = h.post(&fixture("exo-capture.xml")).await;
    assert_eq!(response.status, 502);
    drop(reserved);
    assert!(response.header("server").is_none());
    assert_eq!(response.body, b"Bad Gateway\n");
    h.wait_metric(r#"pushgate_gateway_requests_total{outcome="upstream_error",reason="upstream_unreachable"}"#, 1.0).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_hanging_up_gives_502() {
    let h = Harness::start().await;
    h.upstream.set_behaviour(Behaviour::Hangup);
    let response = h.post(&fixture("exo-capture.xml")).await;
    assert_eq!(response.status, 502);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_worker_gives_504_before_exchange_gives_up() {
    let h = Harness::with(Options {
        upstream_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    h.upstream
        .set_behaviour(Behaviour::Delay(Duration::from_secs(4)));
    let started = std::time::Instant::now();
    let response = h.post(&fixture("exo-capture.xml")).await;
    assert_eq!(response.status, 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="upstream_error",reason="upstream_timeout"}"#,
        1.0,
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_request_in_flight_finish() {
    let h = Harness::start().await;
    h.upstream
        .set_behaviour(Behaviour::Delay(Duration::from_millis(800)));
    let target = h.target(ALLOWED);
    let body = fixture("exo-capture.xml");
    let in_flight = tokio::spawn(async move {
        pushgate::exchange_sim::client::exchange(
            &target,
            &pushgate::exchange_sim::client::notification_request(LEGACY_PATH, "localhost", &body),
            TIMEOUT,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = h.tls_addr();
    h.stop().await;
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status, 200, "the request in flight got its answer");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// As `pushgate gateway` runs: connections served on two threads of their own, each with its own
/// pool of connections to the worker. Every notification of many sent at once, on new
/// connections and on a balancer's kept-alive ones, reaches the worker exactly once and is
/// answered with the worker's answer; shutdown still lets the gateway end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_serving_thread_forwards_with_its_own_pool() {
    let h = Harness::with(Options {
        serving_threads: 2,
        ..Options::default()
    })
    .await;
    let body = fixture("exo-capture.xml");
    let sent = 48;
    let mut tasks = Vec::new();
    for _ in 0..sent {
        let target = h.target(ALLOWED);
        let request =
            pushgate::exchange_sim::client::notification_request(LEGACY_PATH, "localhost", &body);
        tasks.push(tokio::spawn(async move {
            pushgate::exchange_sim::client::exchange(&target, &request, TIMEOUT).await
        }));
    }
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status, 200, "{response:?}");
    }
    // A balancer's kept-alive connection: several requests in turn, each forwarded.
    let mut stream = pushgate::exchange_sim::client::connect(&h.target(PROXY))
        .await
        .unwrap();
    let mut reader = AnswerReader::default();
    for _ in 0..5 {
        stream
            .write_all(&balancer_request("40.92.0.1", &body))
            .await
            .unwrap();
        let answer = reader.next(&mut stream).await.expect("an answer");
        assert_eq!(answer.status, 200);
    }
    h.upstream.wait_for_requests(sent + 5).await;
    let requests = h.upstream.requests();
    assert_eq!(requests.len(), sent + 5, "each notification forwarded once");
    assert!(requests.iter().all(|r| r.body == body));
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="forwarded",reason="ok"}"#,
        (sent + 5) as f64,
    )
    .await;
    h.stop().await;
}
