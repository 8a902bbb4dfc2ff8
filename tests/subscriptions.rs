//! Process A through the simulated Exchange, the real gateway and the real worker: every synced
//! mailbox gets one subscription with the right callback URL, and keeps one whatever Exchange
//! does (restarts, Error notifications, refused watermarks, delivery failures, throttling), without
//! losing a notification and without storms.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod common;
mod exchange_support;
mod worker_support;

use std::collections::HashSet;
use std::time::Duration;

use exchange_support::*;
use pushgate::exchange_sim::ItemSpec;
use pushgate::notification::EventKind;
use pushgate::store::{MailboxState, SubscriptionState};
use time::OffsetDateTime;
use worker_support::TestDb;

/// One test per backend for the cases that store what Exchange sends.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = super::TestDb::postgres(stringify!($case)).await else {
                        return;
                    };
                    super::$case(db).await;
                }
            )*
        }
    };
}

on_both_backends!(
    an_exchange_restart_is_noticed_by_silence_and_nothing_is_lost,
    an_error_notification_leads_to_a_new_subscription,
    a_refused_watermark_gives_a_fresh_subscription_and_a_resync_request,
    sync_off_unsubscribes_and_exchange_stops_sending,
    a_short_worker_outage_loses_nothing_and_a_long_one_is_repaired,
);

const ROOMS: [&str; 3] = [
    "room1@contoso.com",
    "room2@contoso.com",
    "room3@contoso.com",
];

fn rooms() -> Vec<String> {
    ROOMS.iter().map(|s| s.to_string()).collect()
}

fn item(subject: &str) -> ItemSpec {
    let start = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::days(1);
    ItemSpec {
        subject: subject.into(),
        start,
        end: start + time::Duration::hours(1),
        location: Some("Room".into()),
        reservation_id: None,
    }
}

/// Every item id that arrived in a stored Created event, whatever the subscription.
async fn created_items(stack: &Stack) -> HashSet<String> {
    stack
        .store()
        .await
        .events(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::Created)
        .filter_map(|e| e.object.map(|o| o.id))
        .collect()
}

async fn wait_items_stored(stack: &Stack, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stored = created_items(stack).await;
        if ids.iter().all(|id| stored.contains(id)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "items {ids:?} not all stored; stored: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(stack: &Stack, sample: &str) -> f64 {
    let answer = worker_support::get(stack.worker().metrics_addr, "/metrics")
        .await
        .unwrap();
    common::metric_value(&String::from_utf8_lossy(&answer.body), sample)
}

async fn all_active_and_heard(stack: &Stack) -> Vec<String> {
    let mut ids = Vec::new();
    for room in ROOMS {
        stack.sync_on(room).await;
    }
    for room in ROOMS {
        let view = stack.wait_active_and_heard(room).await;
        ids.push(view.mailbox.subscription_id.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_callback_rule_gives_its_url_and_heartbeats_arrive() {
    for (rule, expected_path) in [
        (
            Callback::EndpointUrl,
            "/api/webhooks/exchange?tenant=Default",
        ),
        (
            Callback::Legacy,
            "/Webservices/SyncNotification.svc?Default",
        ),
        (Callback::Root, "/api/webhooks/exchange"),
    ] {
        let stack = Stack::start(
            TestDb::sqlite(),
            StackOptions {
                mailboxes: rooms(),
                callback: rule.clone(),
                first_status_after: Duration::from_secs(5),
                ..StackOptions::default()
            },
        )
        .await;
        let port = stack.gateway.as_ref().unwrap().tls_addr().port();
        let expected = format!("https://127.0.0.1:{port}{expected_path}");
        let ids = all_active_and_heard(&stack).await;
        for (room, id) in ROOMS.iter().zip(&ids) {
            let info = stack.sim.subscription(id).expect("the simulator has it");
            assert_eq!(info.url, expected, "{rule:?}");
            assert_eq!(info.mailbox, *room);
            assert_eq!(info.status_frequency_minutes, 1);
            assert!(info.alive);
        }
        // Exactly one Subscribe per mailbox.
        let calls = stack.sim.call_counts();
        for room in ROOMS {
            assert_eq!(calls.for_mailbox(room, "Subscribe"), 1, "{rule:?} {room}");
        }
        // Heartbeats keep arriving and are stored (StatusEvents have watermarks too).
        let first = stack.mailbox(ROOMS[0]).await;
        let heard = first.subscription.unwrap().last_notification_at.unwrap();
        stack
            .wait_mailbox(ROOMS[0], "a later heartbeat", |v| {
                v.subscription
                    .as_ref()
                    .and_then(|s| s.last_notification_at)
                    .is_some_and(|t| t > heard)
            })
            .await;
        let events = stack.store().await.events(Some(&ids[0])).await.unwrap();
        assert!(events.iter().any(|e| e.kind == EventKind::Status));
        stack.stop().await;
    }
}

async fn an_exchange_restart_is_noticed_by_silence_and_nothing_is_lost(db: TestDb) {
    let stack = Stack::start(
        db,
        StackOptions {
            mailboxes: rooms(),
            first_status_after: Duration::from_secs(5),
            ..StackOptions::default()
        },
    )
    .await;
    let before = all_active_and_heard(&stack).await;
    let resync_asked = stack.mailbox(ROOMS[0]).await.mailbox.resync_requested_at;
    // Exchange restarts: every subscription is gone, nobody is told.
    assert_eq!(stack.sim.drop_all_subscriptions(), 3);
    // Changes made while nobody listens.
    let mut created = Vec::new();
    for room in ROOMS {
        created.push(
            stack
                .sim
                .create_item(room, item("made during the outage"))
                .unwrap()
                .id,
        );
    }
    for (room, old) in ROOMS.iter().zip(&before) {
        let view = stack
            .wait_mailbox(room, "renewed after silence", |v| {
                v.mailbox.state == MailboxState::Active
                    && v.mailbox.subscription_id.as_deref() != Some(old.as_str())
            })
            .await;
        let old_row = stack
            .store()
            .await
            .subscription(old)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(old_row.state, SubscriptionState::Unsubscribed, "replaced");
        if *room == ROOMS[0] {
            assert_eq!(
                view.mailbox.resync_requested_at, resync_asked,
                "replayed from the watermark: no new resync request"
            );
        }
    }
    // Renewed from the last watermark: Exchange replays what was missed.
    wait_items_stored(&stack, &created).await;
    assert!(
        metric(
            &stack,
            "pushgate_subscription_renewals_total{cause=\"silence\"}"
        )
        .await
            >= 3.0
    );
    stack.stop().await;
}

async fn an_error_notification_leads_to_a_new_subscription(db: TestDb) {
    let stack = Stack::start(
        db,
        StackOptions {
            mailboxes: rooms(),
            first_status_after: Duration::from_secs(5),
            // Long enough that silence cannot be the cause.
            status_frequency: 5,
            ..StackOptions::default()
        },
    )
    .await;
    let before = all_active_and_heard(&stack).await;
    stack.sim.send_error_notification(&before[0]).unwrap();
    let view = stack
        .wait_mailbox(ROOMS[0], "renewed after the Error notification", |v| {
            v.mailbox.state == MailboxState::Active
                && v.mailbox.subscription_id.as_deref() != Some(before[0].as_str())
        })
        .await;
    let new_id = view.mailbox.subscription_id.unwrap();
    assert!(stack.sim.subscription(&new_id).unwrap().alive);
    let incidents = stack
        .store()
        .await
        .incidents(Some(&before[0]))
        .await
        .unwrap();
    assert_eq!(incidents.len(), 1, "the Error notification is recorded");
    assert_eq!(
        metric(
            &stack,
            "pushgate_subscription_renewals_total{cause=\"error_notification\"}"
        )
        .await,
        1.0
    );
    // The other mailboxes kept theirs.
    for (room, id) in ROOMS.iter().zip(&before).skip(1) {
        assert_eq!(
            stack.mailbox(room).await.mailbox.subscription_id.as_ref(),
            Some(id)
        );
    }
    // A change after the renewal arrives on the new subscription.
    let made = stack.sim.create_item(ROOMS[0], item("after")).unwrap().id;
    wait_items_stored(&stack, &[made]).await;
    stack.stop().await;
}

async fn a_refused_watermark_gives_a_fresh_subscription_and_a_resync_request(db: TestDb) {
    let stack = Stack::start(
        db,
        StackOptions {
            mailboxes: rooms(),
            first_status_after: Duration::from_secs(5),
            ..StackOptions::default()
        },
    )
    .await;
    let before = all_active_and_heard(&stack).await;
    // The sync step takes resync requests as they come: a request is asked for, or already
    // done (the request cleared, `resynced_at` set).
    let resync_mark = || async {
        let calendar = stack
            .store()
            .await
            .mailbox_calendar(ROOMS[0])
            .await
            .unwrap()
            .unwrap();
        calendar.resync_requested_at.max(calendar.resynced_at)
    };
    let first_request = resync_mark()
        .await
        .expect("first subscription: resync requested");
    // Exchange forgets the mailbox's events (as after 30 days) and the subscription dies.
    stack.sim.expire_watermarks(ROOMS[0]).unwrap();
    stack.sim.drop_all_subscriptions();
    let view = stack
        .wait_mailbox(ROOMS[0], "a fresh subscription", |v| {
            v.mailbox.state == MailboxState::Active
                && v.mailbox.subscription_id.as_deref() != Some(before[0].as_str())
        })
        .await;
    assert_ne!(view.mailbox.subscription_id, None);
    let deadline = tokio::time::Instant::now() + WAIT;
    while resync_mark().await <= Some(first_request) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sync step is asked to read the calendar again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcomes: Vec<String> = stack
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.operation == "Subscribe" && c.mailbox.as_deref() == Some(ROOMS[0]))
        .map(|c| c.outcome)
        .collect();
    assert!(
        outcomes.contains(&"ErrorInvalidWatermark".to_string()),
        "{outcomes:?}"
    );
    assert_eq!(outcomes.last().map(String::as_str), Some("NoError"));
    assert!(
        metric(
            &stack,
            "pushgate_subscription_renewals_total{cause=\"refused_watermark\"}"
        )
        .await
            >= 1.0
    );
    stack.stop().await;
}

async fn sync_off_unsubscribes_and_exchange_stops_sending(db: TestDb) {
    let stack = Stack::start(
        db,
        StackOptions {
            mailboxes: rooms(),
            first_status_after: Duration::from_secs(5),
            ..StackOptions::default()
        },
    )
    .await;
    let ids = all_active_and_heard(&stack).await;
    stack.sync_off(ROOMS[1]).await;
    let store = stack.store().await;
    let stored_before = store.events(Some(&ids[1])).await.unwrap().len();
    // The next notification (a heartbeat) is answered Unsubscribe; Exchange ends it.
    wait_until("the simulator ends the subscription", || {
        stack
            .sim
            .subscription(&ids[1])
            .is_some_and(|s| !s.alive && s.ended.as_deref() == Some("unsubscribed"))
    })
    .await;
    assert_eq!(
        store.events(Some(&ids[1])).await.unwrap().len(),
        stored_before,
        "nothing stored after sync off"
    );
    let delivered = stack.sim.subscription(&ids[1]).unwrap().notifications_sent;
    tokio::time::sleep(stack.scaled(Duration::from_secs(150))).await;
    assert_eq!(
        stack.sim.subscription(&ids[1]).unwrap().notifications_sent,
        delivered,
        "Exchange stopped sending"
    );
    assert_eq!(
        stack.mailbox(ROOMS[1]).await.mailbox.state,
        MailboxState::Off
    );
    // The others carry on.
    assert!(stack.sim.subscription(&ids[0]).unwrap().alive);
    stack.stop().await;
}

async fn a_short_worker_outage_loses_nothing_and_a_long_one_is_repaired(db: TestDb) {
    // StatusFrequency 5: Exchange retries after 30, 60, 120 and 240 s (4.5 s here) before it
    // drops a subscription.
    let mut stack = Stack::start(
        db,
        StackOptions {
            mailboxes: rooms(),
            first_status_after: Duration::from_secs(5),
            status_frequency: 5,
            ..StackOptions::default()
        },
    )
    .await;
    let ids = all_active_and_heard(&stack).await;

    // Short: the worker is away for about one retry interval.
    stack.stop_worker().await;
    let short: Vec<String> = ROOMS
        .iter()
        .map(|room| {
            stack
                .sim
                .create_item(room, item("short outage"))
                .unwrap()
                .id
        })
        .collect();
    wait_until("a delivery fails", || {
        stack
            .sim
            .deliveries()
            .iter()
            .any(|d| d.outcome.starts_with("failed"))
    })
    .await;
    stack.start_worker().await;
    wait_items_stored(&stack, &short).await;
    for (room, id) in ROOMS.iter().zip(&ids) {
        assert!(
            stack.sim.subscription(id).unwrap().alive,
            "{room}: same subscription"
        );
        assert_eq!(
            stack.mailbox(room).await.mailbox.subscription_id.as_ref(),
            Some(id)
        );
    }

    // Long: longer than Exchange's retry window; it drops every subscription.
    stack.stop_worker().await;
    let long: Vec<String> = ROOMS
        .iter()
        .map(|room| stack.sim.create_item(room, item("long outage")).unwrap().id)
        .collect();
    wait_until("Exchange drops the subscriptions", || {
        ids.iter()
            .all(|id| !stack.sim.subscription(id).unwrap().alive)
    })
    .await;
    stack.start_worker().await;
    // The watchdog notices the silence and renews from the last watermark: replayed.
    wait_items_stored(&stack, &long).await;
    for (room, id) in ROOMS.iter().zip(&ids) {
        let view = stack.wait_active_and_heard(room).await;
        assert_ne!(
            view.mailbox.subscription_id.as_ref(),
            Some(id),
            "{room}: renewed"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_before_the_subscribe_answer_is_never_answered_unsubscribe() {
    let stack = Stack::start(
        TestDb::sqlite(),
        StackOptions {
            mailboxes: rooms(),
            // Exchange posts at once, before the worker has stored the Subscribe answer.
            first_status_after: Duration::ZERO,
            ..StackOptions::default()
        },
    )
    .await;
    let ids = all_active_and_heard(&stack).await;
    for id in &ids {
        let info = stack.sim.subscription(id).unwrap();
        assert!(info.alive, "{info:?}");
    }
    let unsubscribed: Vec<_> = stack
        .sim
        .deliveries()
        .into_iter()
        .filter(|d| d.outcome == "Unsubscribe")
        .collect();
    assert!(unsubscribed.is_empty(), "{unsubscribed:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxes_exchange_refuses_fail_with_the_reason_and_no_hot_loop() {
    let stack = Stack::start(
        TestDb::sqlite(),
        StackOptions {
            mailboxes: vec!["denied@contoso.com".into()],
            ..StackOptions::default()
        },
    )
    .await;
    stack.sim.deny_impersonation("denied@contoso.com").unwrap();
    stack.sync_on("nobody@contoso.com").await;
    stack.sync_on("denied@contoso.com").await;
    for (mailbox, code) in [
        ("nobody@contoso.com", "ErrorNonExistentMailbox"),
        ("denied@contoso.com", "ErrorImpersonateUserDenied"),
    ] {
        let view = stack
            .wait_mailbox(mailbox, "failed", |v| {
                v.mailbox.state == MailboxState::Failed
            })
            .await;
        assert!(
            view.mailbox.last_error.as_deref().unwrap().contains(code),
            "{view:?}"
        );
        // Retried hourly (36 s at this scale): not again within the test.
        assert!(
            view.mailbox.next_attempt_at.unwrap()
                > OffsetDateTime::now_utc() + time::Duration::seconds(20)
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = stack.sim.call_counts();
    assert_eq!(calls.for_mailbox("nobody@contoso.com", "Subscribe"), 1);
    assert_eq!(calls.for_mailbox("denied@contoso.com", "Subscribe"), 1);

    // EWS switched off for the tenant: the reason an operator reads says so.
    stack.sim.set_ews_disabled(true);
    stack.sim.add_mailbox("room9@contoso.com");
    stack.sync_on("room9@contoso.com").await;
    let view = stack
        .wait_mailbox("room9@contoso.com", "failed", |v| {
            v.mailbox.state == MailboxState::Failed
        })
        .await;
    let error = view.mailbox.last_error.unwrap();
    assert!(
        error.contains("403") && error.contains("allow-list"),
        "{error}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_busy_slows_every_subscribe_down_by_its_hint() {
    let stack = Stack::start(
        TestDb::sqlite(),
        StackOptions {
            mailboxes: rooms(),
            first_status_after: Duration::from_secs(5),
            ..StackOptions::default()
        },
    )
    .await;
    let back_off = Duration::from_millis(1500);
    stack.sim.busy_for(Duration::from_millis(500), back_off);
    for room in ROOMS {
        stack.sync_on(room).await;
    }
    for room in ROOMS {
        stack.wait_active_and_heard(room).await;
    }
    let subscribes: Vec<_> = stack
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.operation == "Subscribe")
        .collect();
    let first_busy = subscribes
        .iter()
        .position(|c| c.outcome.contains("ErrorServerBusy"))
        .expect("Exchange was busy");
    let busy_at = subscribes[first_busy].at_ms;
    for later in &subscribes[first_busy + 1..] {
        // Calls already on their way when the first busy answer came are not held back.
        if later.outcome.contains("ErrorServerBusy") && later.at_ms < busy_at + 100 {
            continue;
        }
        assert!(
            later.at_ms + 50 >= busy_at + back_off.as_millis() as u64,
            "a Subscribe {} ms after ErrorServerBusy asked for {} ms: {subscribes:?}",
            later.at_ms - busy_at,
            back_off.as_millis()
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mailboxes_are_subscribed_within_the_rate_and_a_restart_renews_none() {
    const MAILBOXES: usize = 10_000;
    const RATE: u32 = 1_000;
    let addresses: Vec<String> = (0..MAILBOXES)
        .map(|i| format!("room{i:05}@contoso.com"))
        .collect();
    let mut stack = Stack::start(
        TestDb::sqlite(),
        StackOptions {
            mailboxes: addresses.clone(),
            time_scale: 1.0,
            status_frequency: 5,
            // No deliveries during the test: subscribing is what is measured.
            first_status_after: Duration::from_secs(3600),
            subscribe_rate: RATE,
            gateway: false,
            ..StackOptions::default()
        },
    )
    .await;
    // Switched on at once, as an operator's script would.
    let store = stack.store().await;
    let now = OffsetDateTime::now_utc();
    let requests: Vec<pushgate::store::PutMailbox> = addresses
        .iter()
        .map(|address| pushgate::store::PutMailbox {
            address: address.clone(),
            tenant: None,
            sync: true,
        })
        .collect();
    for chunk in requests.chunks(2_500) {
        store.put_mailboxes(chunk, now).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let summary = store.mailbox_summary().await.unwrap();
        let active = summary
            .by_state
            .iter()
            .find(|(s, _)| *s == MailboxState::Active)
            .map_or(0, |(_, n)| *n);
        if active == MAILBOXES as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {active} active: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let subscribes: Vec<u64> = stack
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.operation == "Subscribe")
        .map(|c| c.at_ms)
        .collect();
    assert_eq!(
        subscribes.len(),
        MAILBOXES,
        "exactly one Subscribe per mailbox"
    );
    // No window of one second holds more calls than the rate allows.
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..subscribes.len() {
        while subscribes[end] - subscribes[start] >= 1000 {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    assert!(
        busiest <= RATE as usize + 1,
        "{busiest} Subscribe calls within one second"
    );

    // A restart of the worker keeps every fresh subscription.
    stack.stop_worker().await;
    stack.start_worker().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.sim.call_counts().operation("Subscribe"),
        MAILBOXES as u64,
        "none renewed"
    );
    stack.stop().await;
}
