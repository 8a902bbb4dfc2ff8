//! The worker side of the gateway: 502 when the worker is unreachable, hangs up or answers what
//! cannot be relayed safely, 504 when it does not answer within `upstream_timeout` (both make
//! Exchange retry), kept-alive connections to the worker reused and replaced when the worker closed
//! them, graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod common;

use std::sync::Arc;
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

/// The pool keeps the connection to the worker for the next notification; when the worker has
/// closed it meanwhile (as a worker dropping idle connections does), the notification goes out
/// once more on a new connection, and the client never sees the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_worker_closed_is_replaced() {
    let h = Harness::start().await;
    let body = fixture("exo-capture.xml");
    for _ in 0..3 {
        assert_eq!(h.post(&body).await.status, 200);
    }
    assert_eq!(
        h.upstream.connections(),
        1,
        "one kept-alive connection for three notifications"
    );

    h.upstream.set_behaviour(Behaviour::OkThenClose);
    // The first goes out on the pooled connection (still open) and the worker closes it after
    // answering; each next one finds its pooled connection closed and is sent again on a new one.
    for _ in 0..3 {
        let response = h.post(&body).await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body, ok_envelope());
    }
    h.upstream.wait_for_requests(6).await;
    assert_eq!(
        h.upstream.requests().len(),
        6,
        "each notification reached the worker once"
    );
    assert_eq!(
        h.upstream.connections(),
        3,
        "two closed connections were replaced"
    );
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="forwarded",reason="ok"}"#,
        6.0,
    )
    .await;
    h.stop().await;
}

/// A chunked answer is read whole and relayed with a length; the connection stays in the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_worker_answer_is_relayed_with_a_length() {
    let h = Harness::start().await;
    let envelope = ok_envelope();
    let (first, rest) = envelope.split_at(envelope.len() / 3);
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in [first, rest] {
        answer.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        answer.extend_from_slice(part);
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    h.upstream.set_behaviour(Behaviour::Raw(Arc::new(answer)));
    for _ in 0..2 {
        let response = h.post(&fixture("exo-capture.xml")).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, envelope);
        assert_eq!(
            response.header("content-length"),
            Some(envelope.len().to_string().as_str())
        );
        assert!(response.header("transfer-encoding").is_none());
    }
    assert_eq!(h.upstream.connections(), 1);
    h.stop().await;
}

/// What the gateway cannot relay safely (a body beyond 64 KiB, two framings, a protocol switch, a
/// broken head) is a 502 that Exchange retries; the worker's bytes never reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_gateway_cannot_relay_is_a_502() {
    let h = Harness::start().await;
    let answers: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Leak: secret\r\nContent Length: 1\r\n\r\nx",
    ];
    for (sent, answer) in answers.iter().enumerate() {
        h.upstream
            .set_behaviour(Behaviour::Raw(Arc::new(answer.to_vec())));
        let response = h.post(&fixture("exo-capture.xml")).await;
        assert_eq!(
            response.status,
            502,
            "{:?}",
            String::from_utf8_lossy(answer)
        );
        assert_eq!(response.body, b"Bad Gateway\n");
        assert!(response.header("x-leak").is_none());
        h.wait_metric(
            r#"pushgate_gateway_requests_total{outcome="upstream_error",reason="upstream_failed"}"#,
            (sent + 1) as f64,
        )
        .await;
    }
    h.upstream.wait_for_requests(answers.len()).await;
    h.stop().await;
}
