//! PostgreSQL stopped under a running worker: 503 and an unhealthy /healthz while it is down,
//! nothing half-written, and recovery (reconnect) once it is back. The server stopped is a private
//! throw-away one started for this test (tests/private_postgres), never the machine's cluster that
//! other tests and other work use; without PostgreSQL's server binaries it says SKIPPED (a
//! failure with PUSHGATE_REQUIRE_ALL=1).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod worker_support;

#[path = "private_postgres/mod.rs"]
mod private_postgres;

use std::time::{Duration, Instant};

use private_postgres::{Options, PrivatePostgres};
use pushgate::worker;
use worker_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_postgres_answers_503_then_recovers() {
    let Some(mut server) =
        tokio::task::block_in_place(|| PrivatePostgres::start(Options { tls: false }))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("127.0.0.1", "?sslmode=disable");
    let handle = worker::start(worker_config(dir.path(), &url))
        .await
        .expect("worker starts");
    let addr = handle.listen_addr;
    let first = body("PGDOWN", &watermark("PGDOWN", 0), &[watermark("PGDOWN", 1)]);
    assert_eq!(post(addr, LEGACY_PATH, first).await.unwrap().status, 200);

    tokio::task::block_in_place(|| server.stop_keeping_data());

    let during = body(
        "PGDOWN",
        &watermark("PGDOWN", 1),
        &[watermark("PGDOWN", 2), watermark("PGDOWN", 3)],
    );
    for _ in 0..3 {
        let started = Instant::now();
        let answer = post(addr, LEGACY_PATH, during.clone()).await.unwrap();
        assert_eq!(answer.status, 503, "{:?}", answer.body);
        assert!(started.elapsed() < Duration::from_secs(25));
    }
    assert_eq!(
        get(handle.metrics_addr, "/healthz").await.unwrap().status,
        503
    );

    tokio::task::block_in_place(|| server.start_again());
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = post(addr, LEGACY_PATH, during.clone()).await.unwrap();
        if answer.status == 200 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(answer.status, 200, "worker reconnects: {:?}", answer.body);
    assert_eq!(
        get(handle.metrics_addr, "/healthz").await.unwrap().status,
        200
    );
    let store = pushgate::store::open(&url)
        .await
        .expect("open store for inspection");
    let watermarks: Vec<String> = store
        .events(Some("PGDOWN"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.watermark.unwrap())
        .collect();
    assert_eq!(
        watermarks,
        [1, 2, 3].map(|n| watermark("PGDOWN", n)),
        "each event once, none lost"
    );
    handle.shutdown().await.unwrap();
}
