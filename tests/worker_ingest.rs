//! The real worker on real loopback sockets, against SQLite and PostgreSQL: fixtures end up as
//! exactly their events, retries are absorbed, concurrent senders lose nothing, and the answers
//! are byte-for-byte the `SendNotificationResult` envelopes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod worker_support;

use std::collections::HashSet;
use std::time::Duration;

use pushgate::config::UnknownSubscriptions;
use pushgate::notification::envelope::read_result;
use pushgate::notification::{self, result_envelope, EventKind, Limits, SubscriptionStatus};
use pushgate::store::{EventState, IncidentKind, SubscriptionState};
use pushgate::worker;
use time::OffsetDateTime;
use worker_support::*;

per_backend!(
    every_fixture_is_stored_as_exactly_its_events,
    same_body_five_times_is_stored_once,
    concurrent_senders_lose_nothing,
    unknown_subscriptions_are_told_to_unsubscribe,
    tenant_and_request_id_are_stored,
    bad_requests_change_nothing,
    metrics_and_health,
    retention_purges_in_the_background,
    shutdown_finishes_what_was_acknowledged,
);

fn assert_ok_answer(answer: &Answer, context: &str) {
    assert_eq!(answer.status, 200, "{context}: {:?}", answer.body);
    assert_eq!(
        answer.body.as_ref(),
        result_envelope(SubscriptionStatus::Ok),
        "{context}: byte-for-byte envelope"
    );
    assert_eq!(
        answer.headers.get("content-type").unwrap(),
        "text/xml; charset=utf-8",
        "{context}"
    );
    assert!(
        answer.headers.get("content-encoding").is_none(),
        "{context}: never compressed"
    );
    assert!(answer.body.len() < 1024);
    assert_eq!(read_result(&answer.body), Some(SubscriptionStatus::Ok));
}

async fn every_fixture_is_stored_as_exactly_its_events(db: &TestDb) {
    let handle = worker::start(db.config()).await.expect("worker starts");
    let store = db.inspect().await;
    let mut files: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 8, "fixtures present: {files:?}");
    let mut expected_total = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let body = std::fs::read(path).unwrap();
        let before = store.events(None).await.unwrap().len();
        let answer = post(handle.listen_addr, LEGACY_PATH, body.clone())
            .await
            .expect("answer");
        if name == "seed-capture-verbatim.xml" {
            assert_eq!(answer.status, 400, "{name}: not well-formed");
            assert_eq!(
                store.events(None).await.unwrap().len(),
                before,
                "{name}: nothing stored"
            );
            continue;
        }
        assert_ok_answer(&answer, &name);
        let parsed = notification::parse(&body, &Limits::default()).expect("fixture parses");
        let message = &parsed.response_messages[0];
        let subscription = message
            .subscription_id
            .clone()
            .expect("fixture names its subscription");
        let expected: Vec<_> = parsed.events().cloned().collect();
        let rows: Vec<_> = store
            .events(Some(&subscription))
            .await
            .unwrap()
            .into_iter()
            .filter(|row| expected.iter().any(|e| e.watermark == row.watermark))
            .collect();
        let stored: Vec<_> = rows.iter().map(|row| row.to_event()).collect();
        assert_eq!(stored, expected, "{name}: rows are exactly the events");
        for row in &rows {
            assert_eq!(row.tenant, "default");
            assert_eq!(
                row.previous_watermark,
                message
                    .notification
                    .as_ref()
                    .and_then(|n| n.previous_watermark.clone())
            );
            assert_eq!(row.state, EventState::Pending);
        }
        expected_total += expected.len();
        assert_eq!(
            store.events(None).await.unwrap().len(),
            expected_total,
            "{name}"
        );
        if name == "error-no-notification.xml" {
            // (The fixtures share one subscription with unrelated watermarks, so gaps are
            // recorded beside the error.)
            let incidents = store.incidents(Some(&subscription)).await.unwrap();
            let errors: Vec<_> = incidents
                .iter()
                .filter(|i| i.kind == IncidentKind::Error)
                .collect();
            assert_eq!(errors.len(), 1, "the error is recorded: {incidents:?}");
            assert_eq!(
                errors[0].response_code.as_deref(),
                Some("ErrorReadEventsFailed")
            );
            let record = store.subscription(&subscription).await.unwrap().unwrap();
            assert_eq!(record.state, SubscriptionState::ResubscribeNeeded);
        }
    }
    // The real capture, checked against values written out by hand rather than by the parser.
    let capture = store
        .events(Some(
            "LABkYjhwcjAxbWI2NDg1LmV1cnByZDAxLnByb2QuZXhjaGFuZ2VsYWJzLmNvbRAAAADELVfykPBZQp7Q8IIUrUfmCKn7JnqX2AgQAAAAWTlI8+A2EEqLQp01E8Pw2Q==",
        ))
        .await
        .unwrap();
    assert_eq!(capture.len(), 2);
    assert_eq!(capture[0].kind, EventKind::Modified);
    assert_eq!(
        capture[0].watermark.as_deref(),
        Some("AQAAAExY/dNdjDVKjtBVHKR5IOsoIukhAAAAAAE=")
    );
    assert_eq!(
        capture[0].previous_watermark.as_deref(),
        Some("AQAAAExY/dNdjDVKjtBVHKR5IOurFukhAAAAAAE=")
    );
    assert_eq!(
        capture[0].event_time.as_deref(),
        Some("2020-12-03T11:03:50Z")
    );
    let item = capture[0].object.as_ref().unwrap();
    assert_eq!(item.kind, notification::ObjectKind::Item);
    assert_eq!(item.change_key.as_deref(), Some("DwAAAA=="));
    assert!(item
        .id
        .starts_with("AQMkAGYzNDgzOTU5LTM2ZTAtNGExMC04YjQyLTlkMzUxM2MzZjBkOQBGAAAD"));
    assert_eq!(
        capture[1].object.as_ref().unwrap().kind,
        notification::ObjectKind::Folder
    );
    assert_eq!(
        capture[1].watermark.as_deref(),
        Some("AQAAAExY/dNdjDVKjtBVHKR5IOstIukhAAAAAAE=")
    );
    handle.shutdown().await.expect("shutdown");
}

async fn same_body_five_times_is_stored_once(db: &TestDb) {
    let handle = worker::start(db.config()).await.expect("worker starts");
    let store = db.inspect().await;
    let fixture = std::fs::read(fixtures_dir().join("created-calendar-item.xml")).unwrap();
    for attempt in 0..5 {
        let answer = post(handle.listen_addr, LEGACY_PATH, fixture.clone())
            .await
            .unwrap();
        assert_ok_answer(&answer, &format!("attempt {attempt}"));
    }
    assert_eq!(store.events(None).await.unwrap().len(), 2);
    // Five at once: they share a commit, and still one copy.
    let watermarks = [watermark("S5", 1), watermark("S5", 2)];
    let same = body("S5", &watermark("S5", 0), &watermarks);
    let sends = (0..5).map(|_| post(handle.listen_addr, LEGACY_PATH, same.clone()));
    for answer in futures_join_all(sends).await {
        assert_ok_answer(&answer.unwrap(), "concurrent duplicate");
    }
    assert_eq!(store.events(Some("S5")).await.unwrap().len(), 2);
    assert_eq!(store.events(None).await.unwrap().len(), 4);
    let metrics = get(handle.metrics_addr, "/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("pushgate_worker_duplicates_total 16"),
        "{text}"
    );
    assert!(
        text.contains("pushgate_worker_notifications_total{result=\"duplicate\"} 8"),
        "{text}"
    );
    assert!(
        text.contains("pushgate_worker_notifications_total{result=\"stored\"} 2"),
        "{text}"
    );
    handle.shutdown().await.unwrap();
}

async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

/// 32 concurrent senders, 2,000 notifications (each two events, chained watermarks per
/// subscription): every acknowledged event is in the table exactly once, and no watermark gap
/// was flagged.
async fn concurrent_senders_lose_nothing(db: &TestDb) {
    const SENDERS: usize = 32;
    const TOTAL: usize = 2_000;
    let handle = worker::start(db.config()).await.expect("worker starts");
    let addr = handle.listen_addr;
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        tasks.push(tokio::spawn(async move {
            let subscription = format!("SUB{sender:02}");
            let mut connection = Connection::open(addr).await.unwrap();
            let mut acknowledged = Vec::new();
            let mut n = 0;
            let mine = (sender..TOTAL).step_by(SENDERS).count();
            for _ in 0..mine {
                let watermarks = [
                    watermark(&subscription, n + 1),
                    watermark(&subscription, n + 2),
                ];
                let body = body(&subscription, &watermark(&subscription, n), &watermarks);
                let answer = connection
                    .post(LEGACY_PATH, Some(TOKEN), body, &[])
                    .await
                    .expect("answer");
                assert_eq!(answer.status, 200);
                assert_eq!(
                    answer.body.as_ref(),
                    result_envelope(SubscriptionStatus::Ok)
                );
                acknowledged.extend(watermarks.map(|w| (subscription.clone(), w)));
                n += 2;
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    assert_eq!(acknowledged.len(), TOTAL * 2);
    let store = db.inspect().await;
    let rows = store.events(None).await.unwrap();
    let stored: Vec<(String, String)> = rows
        .iter()
        .map(|row| (row.subscription_id.clone(), row.watermark.clone().unwrap()))
        .collect();
    let unique: HashSet<_> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "no event twice");
    let acknowledged: HashSet<_> = acknowledged.into_iter().collect();
    assert_eq!(
        unique, acknowledged,
        "every acknowledged event, nothing else"
    );
    for sender in 0..SENDERS {
        let record = store
            .subscription(&format!("SUB{sender:02}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.state, SubscriptionState::Active, "chains had no gap");
    }
    assert!(store.incidents(None).await.unwrap().is_empty());
    let metrics =
        String::from_utf8_lossy(&get(handle.metrics_addr, "/metrics").await.unwrap().body)
            .to_string();
    let single_commits = metric_value(
        &metrics,
        "pushgate_worker_commit_batch_size_bucket{le=\"1\"}",
    );
    let commits = metric_value(&metrics, "pushgate_worker_commit_batch_size_count");
    assert_eq!(
        metric_value(&metrics, "pushgate_worker_commit_batch_size_sum"),
        TOTAL as f64
    );
    assert!(
        commits < TOTAL as f64,
        "group commit shared transactions: {commits} commits, {single_commits} alone"
    );
    handle.shutdown().await.unwrap();
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .map(|v| v.trim().parse::<f64>().expect("number"))
        })
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

async fn unknown_subscriptions_are_told_to_unsubscribe(db: &TestDb) {
    let mut config = db.config();
    config.worker.unknown_subscriptions = UnknownSubscriptions::Unsubscribe;
    let handle = worker::start(config).await.unwrap();
    let store = db.inspect().await;
    let body = std::fs::read(fixtures_dir().join("exo-capture.xml")).unwrap();
    let answer = post(handle.listen_addr, LEGACY_PATH, body.clone())
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body.as_ref(),
        result_envelope(SubscriptionStatus::Unsubscribe)
    );
    assert_eq!(
        read_result(&answer.body),
        Some(SubscriptionStatus::Unsubscribe)
    );
    assert!(
        store.events(None).await.unwrap().is_empty(),
        "nothing stored"
    );

    // Once the subscription manager knows the subscription, its events are taken.
    let parsed = notification::parse(&body, &Limits::default()).unwrap();
    let subscription = parsed.response_messages[0].subscription_id.clone().unwrap();
    store
        .set_subscription_state(&subscription, "default", SubscriptionState::Active, None)
        .await
        .unwrap();
    let answer = post(handle.listen_addr, LEGACY_PATH, body).await.unwrap();
    assert_ok_answer(&answer, "known subscription");
    assert_eq!(store.events(None).await.unwrap().len(), 2);
    handle.shutdown().await.unwrap();
}

async fn tenant_and_request_id_are_stored(db: &TestDb) {
    let handle = worker::start(db.config()).await.unwrap();
    let store = db.inspect().await;
    let cases = [
        (format!("{LEGACY_PATH}?Default"), "Default"),
        (
            "/webservices/syncnotification.svc?tenant=acme-eu".to_string(),
            "acme-eu",
        ),
        ("/api/webhooks/exchange".to_string(), "default"),
    ];
    for (i, (path, tenant)) in cases.iter().enumerate() {
        let subscription = format!("TEN{i}");
        let body = body(&subscription, "P0", &[watermark(&subscription, 1)]);
        let mut connection = Connection::open(handle.listen_addr).await.unwrap();
        let request_id = format!("req-{i}-abc");
        let answer = connection
            .post(
                path,
                Some(TOKEN),
                body,
                &[
                    ("x-request-id", &request_id),
                    ("x-forwarded-for", "2603:1026:c02:3097::5"),
                ],
            )
            .await
            .unwrap();
        assert_ok_answer(&answer, path);
        let rows = store.events(Some(&subscription)).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].tenant, *tenant, "{path}");
        assert_eq!(rows[0].request_id.as_deref(), Some(request_id.as_str()));
        let age = OffsetDateTime::now_utc() - rows[0].received_at;
        assert!(
            age >= time::Duration::ZERO && age < time::Duration::minutes(1),
            "{age}"
        );
    }
    handle.shutdown().await.unwrap();
}

async fn bad_requests_change_nothing(db: &TestDb) {
    let handle = worker::start(db.config()).await.unwrap();
    let store = db.inspect().await;
    let good = std::fs::read(fixtures_dir().join("status-event.xml")).unwrap();
    let addr = handle.listen_addr;

    let answer = post(addr, "/Webservices/Other.svc", good.clone())
        .await
        .unwrap();
    assert_eq!(answer.status, 404);
    let answer = get(addr, LEGACY_PATH).await.unwrap();
    assert_eq!(answer.status, 405);
    assert_eq!(answer.headers.get("allow").unwrap(), "POST");
    let answer = post(
        addr,
        &format!("{LEGACY_PATH}?tenant=bad%20name"),
        good.clone(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 400);
    let mut huge = good.clone();
    huge.extend(std::iter::repeat_n(b' ', worker::MAX_BODY_BYTES));
    let answer = post(addr, LEGACY_PATH, huge).await.unwrap();
    assert_eq!(answer.status, 413);
    let answer = post(addr, LEGACY_PATH, b"<not-a-notification/>".to_vec())
        .await
        .unwrap();
    assert_eq!(answer.status, 400);
    assert!(answer.body.len() < 200, "short answer");
    let long_watermark = "W".repeat(pushgate::store::MAX_KEY_BYTES + 1);
    let answer = post(addr, LEGACY_PATH, body("LONG", "P0", &[long_watermark]))
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{:?}", answer.body);

    assert!(store.events(None).await.unwrap().is_empty());
    assert!(store.subscription("LONG").await.unwrap().is_none());
    let metrics =
        String::from_utf8_lossy(&get(handle.metrics_addr, "/metrics").await.unwrap().body)
            .to_string();
    assert_eq!(
        metric_value(
            &metrics,
            "pushgate_worker_notifications_total{result=\"invalid\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "pushgate_worker_notifications_total{result=\"too_large\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "pushgate_worker_notifications_total{result=\"not_found\"}"
        ),
        2.0
    );

    // And the worker still works.
    assert_ok_answer(
        &post(addr, LEGACY_PATH, good).await.unwrap(),
        "after bad requests",
    );
    handle.shutdown().await.unwrap();
}

async fn metrics_and_health(db: &TestDb) {
    let handle = worker::start_with(
        db.config(),
        worker::Tuning {
            backlog_interval: Duration::from_millis(50),
            ..worker::Tuning::default()
        },
    )
    .await
    .unwrap();
    let health = get(handle.metrics_addr, "/healthz").await.unwrap();
    assert_eq!(health.status, 200);
    let body = std::fs::read(fixtures_dir().join("created-calendar-item.xml")).unwrap();
    assert_ok_answer(
        &post(handle.listen_addr, LEGACY_PATH, body).await.unwrap(),
        "stored",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text =
            String::from_utf8_lossy(&get(handle.metrics_addr, "/metrics").await.unwrap().body)
                .to_string();
        if metric_value(&text, "pushgate_worker_backlog_events") == 2.0 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backlog never reached 2:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        metric_value(
            &text,
            "pushgate_worker_events_stored_total{kind=\"created\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "pushgate_worker_events_stored_total{kind=\"modified\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "pushgate_worker_notifications_total{result=\"stored\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&text, "pushgate_worker_ingest_duration_seconds_count"),
        1.0
    );
    assert_eq!(
        metric_value(&text, "pushgate_worker_commit_batch_size_count"),
        1.0
    );
    assert_eq!(
        get(handle.metrics_addr, "/nothing").await.unwrap().status,
        404
    );
    // The notification listener serves notifications only.
    assert_eq!(
        get(handle.listen_addr, "/metrics").await.unwrap().status,
        404
    );
    handle.shutdown().await.unwrap();
}

async fn retention_purges_in_the_background(db: &TestDb) {
    let handle = worker::start_with(
        db.config(),
        worker::Tuning {
            retention_interval: Duration::from_millis(50),
            ..worker::Tuning::default()
        },
    )
    .await
    .unwrap();
    let store = db.inspect().await;
    let body = body(
        "RET",
        "P0",
        &[
            watermark("RET", 1),
            watermark("RET", 2),
            watermark("RET", 3),
        ],
    );
    assert_ok_answer(
        &post(handle.listen_addr, LEGACY_PATH, body).await.unwrap(),
        "stored",
    );
    let ids: Vec<i64> = store
        .events(None)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let old = OffsetDateTime::now_utc() - time::Duration::days(31);
    store
        .set_event_state(&ids[..2], EventState::Processed, old)
        .await
        .unwrap();
    store
        .set_event_state(&ids[2..], EventState::Processed, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<i64> = store
            .events(None)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        if left == ids[2..] {
            break;
        }
        assert!(left.len() == 3, "only old processed events go: {left:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "retention never purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.shutdown().await.unwrap();
}

/// Requests in flight when shutdown starts still get their commit; whatever was answered 200 is
/// in the table.
async fn shutdown_finishes_what_was_acknowledged(db: &TestDb) {
    let handle = worker::start(db.config()).await.unwrap();
    let addr = handle.listen_addr;
    let mut tasks = Vec::new();
    for sender in 0..8 {
        tasks.push(tokio::spawn(async move {
            let subscription = format!("SHUT{sender}");
            let mut acknowledged = Vec::new();
            for n in 0..200 {
                let body = body(
                    &subscription,
                    &watermark(&subscription, n),
                    &[watermark(&subscription, n + 1)],
                );
                match post(addr, LEGACY_PATH, body).await {
                    Ok(answer) if answer.status == 200 => {
                        acknowledged.push((subscription.clone(), watermark(&subscription, n + 1)))
                    }
                    _ => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.shutdown().await.expect("graceful shutdown");
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    assert!(!acknowledged.is_empty());
    let store = db.inspect().await;
    let stored: HashSet<(String, String)> = store
        .events(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.subscription_id, e.watermark.unwrap()))
        .collect();
    for event in &acknowledged {
        assert!(
            stored.contains(event),
            "acknowledged but missing: {event:?}"
        );
    }
}
