//! The gateway's part of the operator kit: per-source request rate and connection limits (refusals
//! counted by reason, nothing forwarded), the certificate expiry metric, the bearer token rotated
//! without a restart (gateway and worker), an access log that cannot stall requests, and the
//! ranges updater's runs shown in the gateway's metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use pushgate::config::{Config, UnknownSubscriptions};
use pushgate::exchange_sim::client::{self, notification_request, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_above_the_rate_of_a_source_get_429_and_reach_nothing() {
    let h = Harness::with(Options {
        rate_limit_per_source: 1,
        rate_limit_burst: 2,
        ..Options::default()
    })
    .await;
    let body = fixture("status-event.xml");
    let (mut ok, mut limited) = (0usize, 0usize);
    // Seven requests at once from one source: the burst of two passes, then at most one more
    // per second.
    for _ in 0..7 {
        let response = h.post(&body).await;
        match response.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(response.body, b"Too Many Requests\n");
                assert_eq!(response.header("connection"), Some("close"));
            }
            other => panic!("status {other}"),
        }
    }
    assert!(ok >= 2, "the burst passes ({ok} passed)");
    assert!(limited >= 1, "the rest is limited ({limited} limited)");
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), ok, "only the admitted requests were forwarded");
    let wire: usize = seen.iter().map(Recorded::wire_size).sum();
    assert_eq!(h.upstream.bytes(), wire, "nothing of a limited request");
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="rate_limited"}"#,
        limited as f64,
    )
    .await;
    // Another client has its own budget (here behind the trusted balancer).
    let other = balancer_request("40.92.0.1", &body);
    assert_eq!(h.send(PROXY, &other).await.unwrap().status, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_share_of_a_source_are_closed_before_tls() {
    let h = Harness::with(Options {
        max_connections_per_source: 2,
        ..Options::default()
    })
    .await;
    let target = h.target(ALLOWED);
    let first = client::connect(&target).await.unwrap();
    let second = client::connect(&target).await.unwrap();
    let body = fixture("status-event.xml");
    let request = notification_request(LEGACY_PATH, "localhost", &body);
    // The third is reset before the handshake.
    assert!(client::exchange(&target, &request, TIMEOUT).await.is_err());
    h.wait_metric(
        r#"pushgate_gateway_connections_rejected_total{reason="source_connection_limit"}"#,
        1.0,
    )
    .await;
    h.upstream.assert_untouched("connection over the limit");
    // Other sources are not affected.
    let other = balancer_request("40.92.0.1", &body);
    assert_eq!(h.send(PROXY, &other).await.unwrap().status, 200);
    // A closed connection gives its slot back (once the gateway has seen the close).
    drop(first);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match client::exchange(&target, &request, TIMEOUT).await {
            Ok(response) => {
                assert_eq!(response.status, 200);
                break;
            }
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the slot never came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(second);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_metric_follows_every_reload() {
    let h = Harness::start().await;
    let expiry = |pem: &str| {
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        cert.validity().not_after.timestamp() as f64
    };
    h.wait_metric(
        "pushgate_gateway_tls_certificate_expiry_timestamp_seconds",
        expiry(&h.ca_pem),
    )
    .await;
    let not_after = time::macros::datetime!(2031-03-04 05:06:07 UTC);
    let (cert, key) = pushgate::gateway::tls::self_signed_until(
        &["localhost"],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        Some(not_after),
    )
    .unwrap();
    std::fs::write(h.dir.path().join("key.pem.new"), &key).unwrap();
    std::fs::write(h.dir.path().join("cert.pem.new"), &cert).unwrap();
    std::fs::rename(h.dir.path().join("key.pem.new"), &h.config.gateway.tls_key).unwrap();
    std::fs::rename(
        h.dir.path().join("cert.pem.new"),
        &h.config.gateway.tls_cert,
    )
    .unwrap();
    h.wait_metric(
        "pushgate_gateway_tls_certificate_expiry_timestamp_seconds",
        not_after.unix_timestamp() as f64,
    )
    .await;
    // And the new certificate is the one served.
    let renewed = Target::tls(h.tls_addr(), &cert, "localhost")
        .unwrap()
        .from(ALLOWED);
    let response = client::exchange(
        &renewed,
        &notification_request(LEGACY_PATH, "localhost", &fixture("status-event.xml")),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    h.stop().await;
}

/// A worker with its own token file and a short grace period.
async fn worker_with_token(
    dir: &std::path::Path,
    token_file: &std::path::Path,
    grace: Duration,
) -> pushgate::worker::WorkerHandle {
    let mut config = Config::default();
    config.worker.listen = "127.0.0.1:0".into();
    config.worker.metrics_listen = "127.0.0.1:0".into();
    config.worker.database_url = format!("sqlite://{}", dir.join("worker.db").display());
    config.worker.gateway_token_file = token_file.to_path_buf();
    config.worker.unknown_subscriptions = UnknownSubscriptions::Accept;
    config.worker.token_grace = grace;
    pushgate::worker::start(config).await.unwrap()
}

/// Replaces a token file as operators and secret managers do: a new file renamed over the old.
fn rotate(path: &std::path::Path, token: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, format!("{token}\n")).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Plain HTTP straight to the worker with a given token (what the gateway would send).
async fn post_to_worker(worker: &pushgate::worker::WorkerHandle, token: &str) -> u16 {
    let body = fixture("status-event.xml");
    let mut request = String::from_utf8(notification_request(LEGACY_PATH, "localhost", &body))
        .unwrap()
        .replacen(
            "\r\n\r\n",
            &format!("\r\nAuthorization: Bearer {token}\r\n\r\n"),
            1,
        )
        .into_bytes();
    request.truncate(request.len() - body.len());
    request.extend_from_slice(&body);
    client::exchange(&Target::plain(worker.listen_addr), &request, TIMEOUT)
        .await
        .unwrap()
        .status
}

async fn wait_for_status(worker: &pushgate::worker::WorkerHandle, token: &str, status: u16) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = post_to_worker(worker, token).await;
        if got == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker answers {got} to {token}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Worker first, gateway later (separate hosts): the worker takes the new token and still
/// accepts the old one for the grace period, so notifications never fail; after the grace only the
/// new token opens the worker, and the gateway is sending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_rotates_without_a_restart_worker_first() {
    let dir = tempfile::tempdir().unwrap();
    let worker_token = dir.path().join("worker.token");
    std::fs::write(&worker_token, format!("{TOKEN}\n")).unwrap();
    let worker = worker_with_token(dir.path(), &worker_token, Duration::from_secs(3)).await;
    let h = Harness::with(Options {
        upstream: Some(format!("http://{}", worker.listen_addr)),
        ..Options::default()
    })
    .await;
    let body = fixture("status-event.xml");
    assert_eq!(h.post(&body).await.status, 200);

    rotate(&worker_token, "second-token-0123456789");
    wait_for_status(&worker, "second-token-0123456789", 200).await;
    // The gateway still sends the first token: accepted within the grace period.
    assert_eq!(
        h.post(&body).await.status,
        200,
        "old token within the grace"
    );
    rotate(&h.dir.path().join("token"), "second-token-0123456789");
    // Once the grace has passed the first token is refused...
    wait_for_status(&worker, TOKEN, 401).await;
    // ...and the gateway has switched: its notifications still get through.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = h.post(&body).await.status;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never sent the new token ({status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop().await;
    worker.shutdown().await.unwrap();
}

/// One file for both (same host): whichever side sees the change first, no notification is
/// refused while they switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_rotates_without_a_refusal_when_both_read_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let shared_token = dir.path().join("shared.token");
    std::fs::write(&shared_token, format!("{TOKEN}\n")).unwrap();
    let worker = worker_with_token(dir.path(), &shared_token, Duration::from_secs(300)).await;
    let h = Harness::with(Options {
        upstream: Some(format!("http://{}", worker.listen_addr)),
        ..Options::default()
    })
    .await;
    // Point the running gateway's file at the shared one: its file becomes a symlink to it.
    let gateway_token = h.dir.path().join("token");
    std::fs::remove_file(&gateway_token).unwrap();
    std::os::unix::fs::symlink(&shared_token, &gateway_token).unwrap();
    let body = fixture("status-event.xml");
    // Each rotation is given time for both sides to see it (a check each second) before the next:
    // only the token before the current one is kept.
    for round in 0..3 {
        rotate(&shared_token, &format!("token-round-{round}-0123456789"));
        for _ in 0..25 {
            let status = h.post(&body).await.status;
            assert_eq!(status, 200, "round {round}: refused while switching");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The worker took every new token (the last one opens it; two rotations back does not).
    wait_for_status(&worker, "token-round-2-0123456789", 200).await;
    wait_for_status(&worker, "token-round-1-0123456789", 200).await;
    wait_for_status(&worker, "token-round-0-0123456789", 401).await;
    wait_for_status(&worker, TOKEN, 401).await;
    h.stop().await;
    worker.shutdown().await.unwrap();
}

/// The access log goes to a pipe nobody reads: once the pipe is full, lines are dropped and
/// counted, and requests go on being answered (the old writer blocked every request thread on the
/// full pipe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_access_log_never_stalls_requests() {
    use pushgate::gateway::access_log::QUEUE_LINES;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    // Opened for reading and writing so that the gateway's open does not wait for a reader; never
    // read from, so the pipe fills up (64 KiB) and stays full.
    let _stalled_reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let h = Harness::with(Options {
        access_log: Some(fifo.display().to_string()),
        plain_listener: true,
        keepalive_max_requests: 100_000,
        ..Options::default()
    })
    .await;
    // An invalid body is refused once read whole, so the balancer's connection stays open and the
    // requests are quick; each writes an access-log line of about 400 bytes. More lines than the
    // pipe, the writer's buffer and the queue hold together, so lines must be dropped.
    const CONNECTIONS: usize = 4;
    let per_connection = (QUEUE_LINES + 2_000) / CONNECTIONS;
    let refused = balancer_request("40.92.0.1", b"<x/>");
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let target = h.plain_target(PROXY);
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client::connect(&target).await.unwrap();
            let mut reader = AnswerReader::default();
            let mut answered = 0usize;
            for _ in 0..per_connection {
                stream.write_all(&refused).await.unwrap();
                let answer = reader.next(&mut stream).await.expect("answered");
                assert_eq!(answer.status, 400);
                answered += 1;
            }
            answered
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    assert_eq!(
        answered,
        per_connection * CONNECTIONS,
        "every request answered"
    );
    let dropped = h.metric("pushgate_gateway_access_log_dropped_total").await;
    assert!(dropped > 0.0, "lines were dropped and counted");
    // A notification is still forwarded and answered.
    assert_eq!(h.post(&fixture("status-event.xml")).await.status, 200);
    h.upstream
        .requests()
        .iter()
        .for_each(|r| assert_ne!(r.body, b"<x/>"));
    h.stop().await;
}

/// What `pushgate ranges update` records in `[ranges] state_dir` reaches the gateway's metrics
/// without a restart: nothing recorded (0 and -1), a success, then a failure that keeps the
/// last success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ranges_updaters_runs_are_shown_in_the_metrics() {
    use pushgate::ranges::state::StateDir;
    let h = Harness::start().await;
    let run = "pushgate_ranges_update_last_run_timestamp_seconds";
    let success = "pushgate_ranges_update_last_success_timestamp_seconds";
    let status = "pushgate_ranges_update_last_exit_status";
    let text = h.metrics().await;
    for name in [run, success, status] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing:\n{text}"
        );
    }
    assert_eq!(h.metric(success).await, 0.0);
    assert_eq!(h.metric(status).await, -1.0);

    let state = StateDir::new(&h.config.ranges.state_dir);
    state.record_run(1_800_000_000, 0).unwrap();
    h.wait_metric(success, 1_800_000_000.0).await;
    h.wait_metric(run, 1_800_000_000.0).await;
    h.wait_metric(status, 0.0).await;

    state.record_run(1_800_003_600, 3).unwrap();
    h.wait_metric(status, 3.0).await;
    h.wait_metric(run, 1_800_003_600.0).await;
    assert_eq!(h.metric(success).await, 1_800_000_000.0);
    h.stop().await;
}
