//! The demo's notification scenes: the reference captures through the gateway, a busy mailbox,
//! a worker outage bridged by Exchange's retries, and hostile requests the gateway refuses.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{wait_for, Demo, Report, Writes, EXCHANGE, PATH, STRANGER};
use crate::exchange_sim::client::{self, notification_request};
use crate::exchange_sim::ItemSpec;
use crate::notification::{self, EventKind, Limits, SubscriptionStatus};
use crate::store::EventState;

/// The reference notifications, embedded so the demo runs from the binary alone.
const FIXTURES: &[(&str, &[u8], bool)] = &[
    (
        "exo-capture.xml",
        include_bytes!("../../tests/fixtures/notifications/exo-capture.xml"),
        true,
    ),
    (
        "status-event.xml",
        include_bytes!("../../tests/fixtures/notifications/status-event.xml"),
        true,
    ),
    (
        "created-calendar-item.xml",
        include_bytes!("../../tests/fixtures/notifications/created-calendar-item.xml"),
        true,
    ),
    (
        "moved-to-deleted-items.xml",
        include_bytes!("../../tests/fixtures/notifications/moved-to-deleted-items.xml"),
        true,
    ),
    (
        "deleted-event.xml",
        include_bytes!("../../tests/fixtures/notifications/deleted-event.xml"),
        true,
    ),
    (
        "other-prefixes.xml",
        include_bytes!("../../tests/fixtures/notifications/other-prefixes.xml"),
        true,
    ),
    (
        "error-no-notification.xml",
        include_bytes!("../../tests/fixtures/notifications/error-no-notification.xml"),
        true,
    ),
    (
        "seed-capture-verbatim.xml",
        include_bytes!("../../tests/fixtures/notifications/seed-capture-verbatim.xml"),
        false,
    ),
];

/// The room that gets the burst of Outlook changes, and the one whose deliveries span the outage.
const BUSY_ROOM: usize = 23;
const OUTAGE_ROOM: usize = 4;
const BURST: usize = 120;
const OUTAGE_CHANGES: usize = 10;

/// Scene 1: the reference captures, each sent twice as Exchange resends. None of their
/// subscriptions is the worker's: the gateway passes the valid ones, the worker answers
/// `Unsubscribe` (Exchange then ends the subscription) and stores nothing.
pub(super) async fn reference_notifications(
    demo: &Demo,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.line(
        "\n1. Reference notifications (real captures) from subscriptions this worker never made, each sent twice",
    );
    let limits = Limits::default();
    for (name, body, valid) in FIXTURES {
        let request = notification_request(PATH, "localhost", body);
        if !*valid {
            let answer = demo.send(EXCHANGE, &request).await;
            let status = answer.as_ref().map_or(0, |a| a.status);
            report.check(
                format!("{name}: refused by the gateway"),
                status == 400,
                format!(
                    "({status} {}, never forwarded)",
                    answer
                        .as_ref()
                        .map(|a| String::from_utf8_lossy(&a.body).trim().to_string())
                        .unwrap_or_default()
                ),
            );
            continue;
        }
        let parsed = notification::parse(body, &limits);
        let events = parsed.as_ref().map_or(0, |n| n.events().count());
        let subscriptions: Vec<String> = parsed
            .as_ref()
            .map(|n| {
                n.response_messages
                    .iter()
                    .filter_map(|m| m.subscription_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut answers = Vec::new();
        for _ in 0..2 {
            let started = Instant::now();
            let answer = demo.send(EXCHANGE, &request).await;
            report.latencies.push(started.elapsed());
            answers.push(answer);
        }
        let unsubscribe = notification::result_envelope(SubscriptionStatus::Unsubscribe);
        let told_to_unsubscribe = answers.iter().all(|a| {
            a.as_ref()
                .is_ok_and(|a| a.status == 200 && a.body == unsubscribe)
        });
        let mut stored = 0;
        for id in &subscriptions {
            stored += demo.store.events(Some(id)).await?.len();
        }
        report.check(
            format!("{name}: passed by the gateway, answered Unsubscribe twice, nothing stored"),
            told_to_unsubscribe && stored == 0 && !subscriptions.is_empty(),
            format!(
                "({}, events: {events}, stored: {stored})",
                answers
                    .iter()
                    .map(|a| a.as_ref().map_or(0, |a| a.status).to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            ),
        );
    }
    Ok(())
}

/// Scene 6: a burst of Outlook changes in one room: at most 50 events per notification, one
/// notification in flight, every event stored once; none of the items is a reservation's.
pub(super) async fn busy_mailbox(demo: &Demo, report: &mut Report) -> anyhow::Result<()> {
    let room = demo.rooms[BUSY_ROOM].clone();
    report.line(format!(
        "\n6. A busy room: {BURST} items made in Outlook in {room} at once (none of them a reservation's)"
    ));
    let before = demo.writes();
    let made = private_items(demo, &room, BURST, "Private appointment", 1)?;
    let stored = wait_all_created(demo, &made).await?;
    let created = demo
        .store
        .events(None)
        .await?
        .into_iter()
        .filter(|e| e.kind == EventKind::Created)
        .filter(|e| e.object.as_ref().is_some_and(|o| made.contains(&o.id)))
        .count();
    let deliveries: Vec<_> = demo
        .sim
        .deliveries()
        .into_iter()
        .filter(|d| d.mailbox.eq_ignore_ascii_case(&room) && d.kind == "events")
        .collect();
    let largest = deliveries.iter().map(|d| d.events).max().unwrap_or(0);
    report.check(
        format!("{BURST} Created events stored once each, in notifications of at most 50 events"),
        stored && created == BURST && largest <= 50,
        format!(
            "({created} stored, {} notifications, the largest {largest} events)",
            deliveries.len()
        ),
    );
    let handled = wait_for(|| async {
        let processed = demo
            .store
            .events(None)
            .await?
            .into_iter()
            .filter(|e| e.kind == EventKind::Created && e.state == EventState::Processed)
            .filter(|e| e.object.as_ref().is_some_and(|o| made.contains(&o.id)))
            .count();
        Ok((processed == BURST).then_some(()))
    })
    .await?;
    let quiet = demo.quiet().await?;
    let mut linked = 0;
    for id in &made {
        if demo.store.reservation_by_item(&room, id).await?.is_some() {
            linked += 1;
        }
    }
    let ignored = demo
        .worker_metric("pushgate_sync_events_total{outcome=\"ignored\"}")
        .await;
    report.check_writes(
        &format!("{BURST} items that are not ours"),
        "the sync step read them and left them alone: no reservation, no write",
        handled.is_some() && quiet && linked == 0,
        demo.writes().since(before),
        Writes::NONE,
    );
    report.line(format!(
        "   ({linked} linked to a reservation; {ignored} events ignored by the sync step so far)"
    ));
    Ok(())
}

/// `count` items made in Outlook in the room, `days` from now, none of them a reservation's.
fn private_items(
    demo: &Demo,
    room: &str,
    count: usize,
    subject: &str,
    days: i64,
) -> anyhow::Result<HashSet<String>> {
    let start = time::OffsetDateTime::now_utc().replace_nanosecond(0)? + time::Duration::days(days);
    let mut made = HashSet::new();
    for n in 0..count {
        let item = demo.sim.create_item(
            room,
            ItemSpec {
                subject: format!("{subject} {n}"),
                start,
                end: start + time::Duration::minutes(30),
                location: None,
                reservation_id: None,
            },
        )?;
        made.insert(item.id);
    }
    Ok(made)
}

/// Waits until a Created event of every item in `made` is stored.
async fn wait_all_created(demo: &Demo, made: &HashSet<String>) -> anyhow::Result<bool> {
    let stored = wait_for(|| async {
        let ids = created_items(demo).await?;
        Ok(made.iter().all(|id| ids.contains(id)).then_some(()))
    })
    .await?;
    Ok(stored.is_some())
}

/// Item ids of every stored Created event.
async fn created_items(demo: &Demo) -> anyhow::Result<HashSet<String>> {
    Ok(demo
        .store
        .events(None)
        .await?
        .into_iter()
        .filter(|e| e.kind == EventKind::Created)
        .filter_map(|e| e.object.map(|o| o.id))
        .collect())
}

/// Scene 7: the worker goes away; Exchange's retries carry the notifications over the gap.
pub(super) async fn worker_outage(demo: &mut Demo, report: &mut Report) -> anyhow::Result<()> {
    let room = demo.rooms[OUTAGE_ROOM].clone();
    report.line(format!(
        "\n7. Worker outage: the worker stops, {OUTAGE_CHANGES} items are made in {room}, Exchange retries \
         (after 30 s, then 60 s on its clock)"
    ));
    let subscription = demo
        .store
        .mailbox(&room)
        .await?
        .and_then(|v| v.mailbox.subscription_id)
        .unwrap_or_default();
    let before = demo.writes();
    report.worker_before_restart = demo.worker_metrics().await;
    demo.stop_worker().await?;
    let made = private_items(demo, &room, OUTAGE_CHANGES, "Made during the outage", 2)?;
    let failed = wait_for(|| async {
        Ok(demo
            .sim
            .deliveries()
            .iter()
            .any(|d| d.subscription_id == subscription && d.outcome.starts_with("failed"))
            .then_some(()))
    })
    .await?;
    let restart = Instant::now();
    demo.start_worker().await?;
    let restart_ms = restart.elapsed().as_millis();
    let stored = wait_all_created(demo, &made).await?;
    // The simulator records an attempt once it has the answer, just after the worker committed.
    let failed_notification = first_failed_notification(demo, &subscription);
    let of_it = |d: &&crate::exchange_sim::DeliveryRecord| {
        d.subscription_id == subscription && d.notification == failed_notification
    };
    wait_for(|| async {
        Ok(demo
            .sim
            .deliveries()
            .iter()
            .any(|d| of_it(&d) && !d.outcome.starts_with("failed"))
            .then_some(()))
    })
    .await?;
    let attempts: Vec<_> = demo
        .sim
        .deliveries()
        .iter()
        .filter(of_it)
        .cloned()
        .collect();
    let started_at = attempts.first().map_or(0, |a| a.at_ms);
    report.line(format!(
        "   attempts of that notification (real time): {}",
        attempts
            .iter()
            .map(|a| format!("+{} ms: {}", a.at_ms.saturating_sub(started_at), a.outcome))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let exchange_side = demo.sim.subscription(&subscription);
    let now = demo
        .store
        .mailbox(&room)
        .await?
        .and_then(|v| v.mailbox.subscription_id);
    report.line(format!(
        "   the worker was back {restart_ms} ms after the first failure; the subscription {}{}",
        match exchange_side.as_ref().and_then(|s| s.ended.clone()) {
            Some(why) => format!("ended ({why})"),
            None => "is alive".to_string(),
        },
        if now.as_deref() == Some(subscription.as_str()) {
            ", still the room's"
        } else {
            ", replaced by a new one"
        }
    ));
    report.check(
        "delivered after the outage by Exchange's retry, on the same subscription",
        failed.is_some()
            && attempts.len() > 1
            && attempts.last().is_some_and(|a| a.outcome == "OK"),
        format!("({} attempts)", attempts.len()),
    );
    report.check(
        "nothing lost",
        stored,
        format!("({OUTAGE_CHANGES} items made, every Created event stored)"),
    );
    let quiet = demo.quiet().await?;
    report.check_writes(
        "items made during the outage (not ours)",
        "handled after the restart, no write",
        quiet,
        demo.writes().since(before),
        Writes::NONE,
    );
    Ok(())
}

/// The number of the subscription's first notification that failed a delivery attempt.
fn first_failed_notification(demo: &Demo, subscription: &str) -> u64 {
    demo.sim
        .deliveries()
        .iter()
        .find(|d| d.subscription_id == subscription && d.outcome.starts_with("failed"))
        .map_or(0, |d| d.notification)
}

/// Scene 2: requests the gateway must refuse; the worker must see none of them.
pub(super) async fn hostile_requests(stage: &Demo, report: &mut Report) -> anyhow::Result<()> {
    report.line("\n2. Hostile requests (none may reach the worker)");
    // Played before any mailbox is synced: nothing else reaches the worker meanwhile.
    let before = stage
        .worker_metric("pushgate_worker_notifications_total{")
        .await;
    let valid = FIXTURES[0].1;
    let with = |from: &str, to: &str| -> Vec<u8> {
        String::from_utf8_lossy(&notification_request(PATH, "localhost", valid))
            .replacen(from, to, 1)
            .into_bytes()
    };
    let schema_violation = String::from_utf8_lossy(valid).replacen(
        "<t:TimeStamp>2020-12-03T11:03:50Z</t:TimeStamp>",
        "",
        1,
    );
    let billion_laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>&lol3;</s:Body></s:Envelope>"#;
    let truncated = &valid[..valid.len() / 2];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("wrong method (PUT)", with("POST ", "PUT "), 405),
        ("wrong path", with(PATH, "/owa/auth/logon.aspx"), 404),
        (
            "wrong SOAPAction",
            with("/SendNotification", "/GetItem"),
            400,
        ),
        (
            "wrong content type",
            with("text/xml; charset=utf-8", "application/json"),
            415,
        ),
        (
            "compressed body",
            with("Accept: text/xml", "Content-Encoding: gzip"),
            415,
        ),
        (
            "oversize (10 MB declared)",
            with(
                &format!("Content-Length: {}", valid.len()),
                "Content-Length: 10485760",
            ),
            413,
        ),
        (
            "malformed XML (truncated)",
            notification_request(PATH, "localhost", truncated),
            400,
        ),
        (
            "schema violation (TimeStamp missing)",
            notification_request(PATH, "localhost", schema_violation.as_bytes()),
            400,
        ),
        (
            "DTD entity bomb",
            notification_request(PATH, "localhost", billion_laughs.as_bytes()),
            400,
        ),
        (
            "request smuggling (Content-Length + Transfer-Encoding)",
            with("Connection: close", "Transfer-Encoding: chunked"),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let answer = stage.send(EXCHANGE, &request).await;
        let got = answer.as_ref().map(|r| r.status).unwrap_or(0);
        report.check(what, got == status, format!("({got})"));
    }
    let denied = stage
        .send(STRANGER, &notification_request(PATH, "localhost", valid))
        .await;
    report.check(
        "source outside the allowlist",
        denied.is_err(),
        "(connection closed before TLS)".to_string(),
    );
    let slow = slow_header(stage).await;
    report.check(
        "slow header (slowloris)",
        slow,
        "(cut off after header_timeout)".to_string(),
    );
    let after = stage
        .worker_metric("pushgate_worker_notifications_total{")
        .await;
    report.check(
        "the worker saw none of them",
        (after - before).abs() < f64::EPSILON,
        format!("({} notifications reached the worker)", after - before),
    );
    Ok(())
}

/// Sends a request head one byte every 250 ms; true when the gateway hangs up in time.
async fn slow_header(stage: &Demo) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(target) = stage.target(EXCHANGE) else {
        return false;
    };
    let Ok(mut stream) = client::connect(&target).await else {
        return false;
    };
    let started = Instant::now();
    for byte in b"POST /Webservices/SyncNotification.svc HTTP/1.1\r\nHost: localhost\r\n" {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if started.elapsed() > stage.config.gateway.header_timeout + Duration::from_secs(3) {
            return false;
        }
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    ) && started.elapsed() < stage.config.gateway.header_timeout + Duration::from_secs(3)
}
