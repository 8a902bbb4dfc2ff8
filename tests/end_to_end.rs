//! Gateway and worker together (real TLS, real sockets, a real SQLite file and the real PostgreSQL
//! server): every reference notification played as Exchange sends it; the rows in the table are
//! exactly the events of the fixture and the answer is byte for byte a SendNotificationResult.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod common;
mod worker_support;

use common::{fixture, ok_envelope, Harness, Options, FIXTURE_VERDICTS};
use pushgate::notification::{self, Limits};
use pushgate::store::StoredEvent;
use worker_support::TestDb;

/// Compares what the worker stored with the events of the fixture, field by field.
fn assert_rows_match(name: &str, stored: &[StoredEvent], body: &[u8]) {
    let parsed = notification::parse(body, &Limits::default()).unwrap();
    let expected: Vec<_> = parsed.events().cloned().collect();
    let got: Vec<_> = stored.iter().map(StoredEvent::to_event).collect();
    assert_eq!(
        got, expected,
        "{name}: rows are exactly the fixture's events"
    );
    // Every reference notification carries one response message.
    let subscription = parsed.response_messages[0].subscription_id.as_ref();
    for row in stored {
        assert_eq!(Some(&row.subscription_id), subscription, "{name}");
    }
}

async fn every_fixture_through_gateway_and_worker(db: TestDb) {
    let worker = pushgate::worker::start(db.config()).await.unwrap();
    let h = Harness::with(Options {
        upstream: Some(format!("http://{}", worker.listen_addr)),
        ..Options::default()
    })
    .await;
    let store = db.inspect().await;
    let mut seen_rows = 0;
    for (name, valid) in FIXTURE_VERDICTS {
        let body = fixture(name);
        let response = h.post(&body).await;
        let rows = store.events(None).await.unwrap();
        if !*valid {
            assert_eq!(response.status, 400, "{name}");
            assert_eq!(rows.len(), seen_rows, "{name}: nothing stored");
            continue;
        }
        assert_eq!(response.status, 200, "{name}");
        assert_eq!(response.body, ok_envelope(), "{name}: answer byte for byte");
        assert_eq!(
            response.header("content-type"),
            Some("text/xml; charset=utf-8"),
            "{name}"
        );
        assert!(
            response.header("content-encoding").is_none(),
            "{name}: never compressed"
        );
        let new_rows = &rows[seen_rows..];
        assert_rows_match(name, new_rows, &body);
        // Exchange's retry of the identical body stores nothing new.
        let retry = h.post(&body).await;
        assert_eq!(retry.status, 200, "{name}: retry");
        assert_eq!(
            store.events(None).await.unwrap().len(),
            rows.len(),
            "{name}: retry absorbed"
        );
        seen_rows = rows.len();
        for row in new_rows {
            assert_eq!(
                row.request_id.as_ref().map(String::len),
                Some(32),
                "{name}: the gateway's request id is stored"
            );
            assert_eq!(row.tenant, "Default", "{name}: tenant from ?Default");
        }
    }
    // The Error notification without Notification is recorded for resubscription.
    let incidents = store.incidents(None).await.unwrap();
    assert!(
        incidents.iter().any(|i| i.kind.as_str() == "error"),
        "the Error notification is recorded: {incidents:?}"
    );
    h.stop().await;
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_fixture_through_gateway_and_worker() {
    every_fixture_through_gateway_and_worker(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_fixture_through_gateway_and_worker() {
    let Some(db) = TestDb::postgres("postgres_every_fixture_through_gateway_and_worker").await
    else {
        return;
    };
    every_fixture_through_gateway_and_worker(db).await;
}

#[test]
fn the_demo_passes_every_expectation() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .arg("demo")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("expectations met"), "{report}");
    assert!(!report.contains("[FAIL]"), "{report}");
    for scene in [
        "1. Reference notifications",
        "2. Hostile requests",
        "3. Subscriptions",
        "4. Processes B–F",
        "5. A lost subscription",
        "6. A busy room",
        "7. Worker outage",
        "8. Summary",
    ] {
        assert!(report.contains(scene), "no scene {scene:?}:\n{report}");
    }
    // Every process reconciled at least one reservation.
    let reconciled = section(
        &report,
        "reservations reconciled per process",
        "EWS writes per cause",
    );
    for process in ["B (", "C (", "D (", "E (", "F (", "resync ("] {
        let count = reconciled
            .iter()
            .find(|line| line.trim_start().starts_with(process))
            .and_then(|line| line.split_whitespace().last())
            .and_then(|n| n.parse::<u32>().ok());
        assert!(
            count.is_some_and(|n| n >= 1),
            "{process}: {count:?} reconciled:\n{report}"
        );
    }
    // The writes per cause: one for each web booking, change and cancel; none for echoes, the
    // add-in, Outlook's own changes or the resync.
    let writes = section(
        &report,
        "EWS writes per cause",
        "every EWS write has a cause",
    );
    let writes_of = |cause: &str| -> String {
        writes
            .iter()
            .find(|line| line.trim_start().starts_with(cause))
            // `cause` padded to a column, then the writes.
            .and_then(|line| line.trim().rsplit("  ").next())
            .map(|writes| writes.trim().to_string())
            .unwrap_or_else(|| panic!("no cause {cause:?}:\n{report}"))
    };
    assert_eq!(writes_of("B web booking "), "1 CreateItem");
    assert_eq!(writes_of("D web change"), "1 UpdateItem");
    assert_eq!(writes_of("D web cancel"), "1 DeleteItem");
    for cause in [
        "B echo of the CreateItem",
        "C add-in booking",
        "D echo of the UpdateItem",
        "D echo of the DeleteItem",
        "E add-in change",
        "F Outlook change",
        "F Outlook delete",
        "resync after the lost subscription",
    ] {
        assert_eq!(writes_of(cause), "no write", "{cause}");
    }
}

/// The lines of the report from the one containing `from` up to the one containing `to`.
fn section<'a>(report: &'a str, from: &str, to: &str) -> Vec<&'a str> {
    report
        .lines()
        .skip_while(|line| !line.contains(from))
        .take_while(|line| !line.contains(to))
        .collect()
}
