//! SQLite that cannot be written: 503 (so Exchange retries), nothing half-written, and the
//! worker recovers once the database can be written again. (PostgreSQL stopped: see
//! `store_failure_postgres.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod worker_support;

use std::time::{Duration, Instant};

use pushgate::notification::{result_envelope, SubscriptionStatus};
use pushgate::worker;
use worker_support::*;

fn db_path(db: &TestDb) -> std::path::PathBuf {
    db.dir().join("pushgate.db")
}

/// Tests run as root, so file permissions would not stop a write: another connection holding
/// the database's write lock (`BEGIN EXCLUSIVE`) does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_database_answers_503_and_recovers() {
    let db = TestDb::sqlite();
    let handle = worker::start(db.config()).await.expect("worker starts");
    let store = db.inspect().await;
    let addr = handle.listen_addr;
    let first = body("LOCK", &watermark("LOCK", 0), &[watermark("LOCK", 1)]);
    assert_eq!(post(addr, LEGACY_PATH, first).await.unwrap().status, 200);

    let locker = rusqlite::Connection::open(db_path(&db)).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let blocked = body(
        "LOCK",
        &watermark("LOCK", 1),
        &[watermark("LOCK", 2), watermark("LOCK", 3)],
    );
    let started = Instant::now();
    let answer = post(addr, LEGACY_PATH, blocked.clone()).await.unwrap();
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert!(answer.body.len() < 100);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered well before the gateway gives up"
    );
    let metrics =
        String::from_utf8_lossy(&get(handle.metrics_addr, "/metrics").await.unwrap().body)
            .to_string();
    assert!(
        metrics.contains("pushgate_worker_notifications_total{result=\"unavailable\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pushgate_worker_commit_failures_total 1"),
        "{metrics}"
    );
    let rows: i64 = locker
        .query_row("SELECT count(*) FROM notification_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "nothing of the refused notification");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    // Exchange's retry of the identical body now succeeds, once.
    let answer = post(addr, LEGACY_PATH, blocked).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body.as_ref(),
        result_envelope(SubscriptionStatus::Ok)
    );
    let watermarks: Vec<String> = store
        .events(Some("LOCK"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.watermark.unwrap())
        .collect();
    assert_eq!(watermarks, [1, 2, 3].map(|n| watermark("LOCK", n)));
    handle.shutdown().await.unwrap();
}

/// A write that fails half-way through a notification (a trigger refuses its second event):
/// 503, and its first event is not left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_inside_the_transaction_leaves_nothing_behind() {
    let db = TestDb::sqlite();
    let handle = worker::start(db.config()).await.expect("worker starts");
    let store = db.inspect().await;
    let poison = watermark("HALF", 2);
    rusqlite::Connection::open(db_path(&db))
        .unwrap()
        .execute_batch(&format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON notification_events
             WHEN NEW.watermark = '{poison}' BEGIN SELECT RAISE(ABORT, 'refused'); END;"
        ))
        .unwrap();
    let half = body(
        "HALF",
        &watermark("HALF", 0),
        &[watermark("HALF", 1), poison],
    );
    let answer = post(handle.listen_addr, LEGACY_PATH, half).await.unwrap();
    assert_eq!(answer.status, 503);
    assert!(
        store.events(None).await.unwrap().is_empty(),
        "first event not kept"
    );
    assert!(
        store.subscription("HALF").await.unwrap().is_none(),
        "no bookkeeping either"
    );
    handle.shutdown().await.unwrap();
}
