//! Processes B–F through the simulated Exchange, the real gateway and the real worker, on SQLite
//! and PostgreSQL. Reservations are made through the worker's REST API, Outlook is played by the
//! simulator's user verbs; every test asserts the final state on both sides (the reservation in
//! the worker's database, the item in the simulated calendar) and counts the EWS writes the
//! simulator received. Waits are bounded; nothing is asserted about how fast anything happens.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod common;
mod exchange_support;
mod worker_support;

use std::time::Duration;

use exchange_support::*;
use pushgate::exchange_sim::{ItemSnapshot, ItemSpec, ItemUpdate, ScriptedFailure};
use pushgate::notification::{EventKind, ObjectKind};
use pushgate::store::{
    EventState, LastChange, Reservation, ReservationStatus, StoredEvent, SyncState,
};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, Time};
use worker_support::TestDb;

/// One test per backend. PostgreSQL missing: `SKIPPED:` (a failure with PUSHGATE_REQUIRE_ALL=1).
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
                    let Some(db) = super::postgres(stringify!($case)).await else {
                        return;
                    };
                    super::$case(db).await;
                }
            )*
        }
    };
}

on_both_backends!(
    b_web_booking_gets_one_create_and_its_echo_writes_nothing,
    c_add_in_item_is_linked_without_a_write,
    d_web_change_and_cancel_write_once_each_and_their_echoes_nothing,
    e_add_in_change_and_cancel_write_nothing,
    f_outlook_change_updates_the_reservation_without_a_write,
    f_outlook_delete_cancels_and_a_restore_does_not_revive,
    f_hard_delete_and_is_cancelled_cancel_without_a_write,
    an_item_that_is_not_ours_changes_nothing,
    a_notification_redelivered_after_the_worker_was_killed_mid_sync_applies_once,
    a_web_change_while_ews_fails_retries_then_syncs,
    an_ambiguous_create_leaves_exactly_one_item,
    a_resync_after_a_lost_subscription_repairs_both_sides,
    a_poison_event_is_dead_lettered_and_replayable,
    a_resync_asked_on_the_command_line_repairs_a_given_up_write,
    a_web_change_meeting_an_outlook_change_wins_and_an_outlook_delete_wins_over_it,
);

async fn postgres(test: &str) -> Option<TestDb> {
    let db = TestDb::postgres(test).await;
    if db.is_none() {
        if std::env::var("PUSHGATE_REQUIRE_ALL").is_ok_and(|v| v == "1") {
            panic!("PostgreSQL required (PUSHGATE_REQUIRE_ALL=1) but not reachable");
        }
        eprintln!("SKIPPED: {test}: PostgreSQL not reachable");
    }
    db
}

const ROOM: &str = "room1@contoso.com";

/// The stack with `ROOM` synced, subscribed, heard from and its first resync done.
async fn synced(db: TestDb, max_attempts: Option<u32>) -> Stack {
    let mut stack = Stack::start(
        db,
        StackOptions {
            mailboxes: vec![ROOM.into(), "room2@contoso.com".into()],
            first_status_after: Duration::from_secs(5),
            ..StackOptions::default()
        },
    )
    .await;
    if let Some(max_attempts) = max_attempts {
        stack.stop_worker().await;
        stack.config.sync.max_attempts = max_attempts;
        stack.start_worker().await;
    }
    stack.sync_on(ROOM).await;
    stack.wait_active_and_heard(ROOM).await;
    wait_resynced(&stack, ROOM, None).await;
    stack
}

/// Waits until the mailbox's calendar was resynchronised (after `after`, when given).
async fn wait_resynced(stack: &Stack, mailbox: &str, after: Option<OffsetDateTime>) {
    let store = stack.store().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let calendar = store.mailbox_calendar(mailbox).await.unwrap().unwrap();
        if calendar
            .resynced_at
            .is_some_and(|at| after.is_none_or(|after| at > after))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{mailbox}: no resync within {WAIT:?}: {calendar:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- the booking side: the worker's REST API ----

/// Nine o'clock UTC, `days` from today.
fn day(days: i64) -> OffsetDateTime {
    (OffsetDateTime::now_utc() + time::Duration::days(days))
        .replace_time(Time::from_hms(9, 0, 0).unwrap())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

async fn call(stack: &Stack, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let answer = worker_support::api(
        stack.worker().listen_addr,
        method,
        path,
        Some(worker_support::API_TOKEN),
        Some(&body.to_string()),
    )
    .await
    .unwrap();
    let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, json)
}

/// Books an hour from `start` in `ROOM` through the API; returns the reservation id.
async fn book(stack: &Stack, source: &str, subject: &str, start: OffsetDateTime) -> String {
    book_in(stack, ROOM, source, subject, start).await
}

async fn book_in(
    stack: &Stack,
    mailbox: &str,
    source: &str,
    subject: &str,
    start: OffsetDateTime,
) -> String {
    let (status, answer) = call(
        stack,
        "POST",
        "/api/v1/reservations",
        &json!({
            "mailbox": mailbox,
            "resource": "Room 1",
            "subject": subject,
            "start": rfc3339(start),
            "end": rfc3339(start + time::Duration::hours(1)),
            "source": source,
        }),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    answer["id"].as_str().unwrap().to_string()
}

async fn change(stack: &Stack, id: &str, body: Value) -> Value {
    let (status, answer) = call(stack, "PATCH", &format!("/api/v1/reservations/{id}"), &body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn cancel(stack: &Stack, id: &str, source: &str) {
    let (status, answer) = call(
        stack,
        "POST",
        &format!("/api/v1/reservations/{id}/cancel"),
        &json!({ "source": source }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

async fn reservation(stack: &Stack, id: &str) -> Reservation {
    stack.store().await.reservation(id).await.unwrap().unwrap()
}

/// Waits (bounded) until `check` holds for the reservation.
async fn wait_reservation(
    stack: &Stack,
    id: &str,
    what: &str,
    check: impl Fn(&Reservation) -> bool,
) -> Reservation {
    let store = stack.store().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let current = store.reservation(id).await.unwrap().unwrap();
        if check(&current) {
            return current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A web booking, written to the calendar and its Created event handled: (reservation, item).
async fn web_booking(stack: &Stack, subject: &str) -> (Reservation, ItemSnapshot) {
    let mark = last_event_id(stack).await;
    let id = book(stack, "web", subject, day(2)).await;
    let booked = wait_reservation(stack, &id, "the item is written", |r| {
        r.sync_state == SyncState::Synced && r.item_id.is_some()
    })
    .await;
    let item_id = booked.item_id.clone().unwrap();
    wait_processed(stack, mark, "the Created event", |e| {
        e.kind == EventKind::Created && names(e, &item_id)
    })
    .await;
    wait_quiet(stack).await;
    (reservation(stack, &id).await, item(stack, &item_id))
}

// ---- the Exchange side: the simulator ----

fn item(stack: &Stack, id: &str) -> ItemSnapshot {
    stack.sim.item(ROOM, id).unwrap()
}

/// Items of the calendar carrying the reservation id.
fn calendar_items_of(stack: &Stack, reservation_id: &str) -> Vec<ItemSnapshot> {
    stack
        .sim
        .items(ROOM)
        .unwrap()
        .into_iter()
        .filter(|i| i.folder == "calendar" && i.reservation_id.as_deref() == Some(reservation_id))
        .collect()
}

/// The calendar item is what the reservation says.
fn assert_item_matches(item: &ItemSnapshot, r: &Reservation) {
    assert_eq!(item.subject.as_deref(), Some(r.subject.as_str()), "subject");
    assert_eq!(item.start, r.start, "start");
    assert_eq!(item.end, r.end, "end");
    assert_eq!(item.reservation_id.as_deref(), Some(r.id.as_str()));
}

/// EWS writes the simulator received for `ROOM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Writes {
    create: u64,
    update: u64,
    delete: u64,
}

fn writes(stack: &Stack) -> Writes {
    let counts = stack.sim.call_counts();
    Writes {
        create: counts.for_mailbox(ROOM, "CreateItem"),
        update: counts.for_mailbox(ROOM, "UpdateItem"),
        delete: counts.for_mailbox(ROOM, "DeleteItem"),
    }
}

/// The next `times` CreateItem calls are refused with ErrorAccessDenied (not an outage: the
/// write is given up after `[sync] max_attempts`).
fn refuse_creates(stack: &Stack, times: usize) {
    for _ in 0..times {
        stack.sim.fail_next(
            "CreateItem",
            ScriptedFailure::Error("ErrorAccessDenied".into()),
        );
    }
}

const NO_WRITES: Writes = Writes {
    create: 0,
    update: 0,
    delete: 0,
};

fn outlook_item(subject: &str, start: OffsetDateTime, reservation_id: Option<&str>) -> ItemSpec {
    ItemSpec {
        subject: subject.into(),
        start,
        end: start + time::Duration::hours(1),
        location: Some("Room 1".into()),
        reservation_id: reservation_id.map(str::to_string),
    }
}

// ---- events ----

fn names(event: &StoredEvent, item_id: &str) -> bool {
    event
        .object
        .as_ref()
        .is_some_and(|o| o.kind == ObjectKind::Item && o.id == item_id)
}

async fn last_event_id(stack: &Stack) -> i64 {
    stack
        .store()
        .await
        .events(None)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e.id)
}

/// Waits until an event stored after `after` matching `check` is processed.
async fn wait_processed(
    stack: &Stack,
    after: i64,
    what: &str,
    check: impl Fn(&StoredEvent) -> bool,
) -> StoredEvent {
    let store = stack.store().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = store.events(None).await.unwrap();
        if let Some(event) = events
            .iter()
            .find(|e| e.id > after && check(e) && e.state == EventState::Processed)
        {
            return event.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not processed within {WAIT:?}; events after {after}: {:?}",
            events
                .iter()
                .filter(|e| e.id > after)
                .map(|e| (e.id, e.kind, e.state, e.last_error.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no event and no calendar write is waiting.
async fn wait_quiet(stack: &Stack) {
    let store = stack.store().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let backlog = store.sync_backlog().await.unwrap();
        if backlog.events_pending == 0 && backlog.outbox_pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still waiting after {WAIT:?}: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric(stack: &Stack, sample: &str) -> f64 {
    let answer = worker_support::get(stack.worker().metrics_addr, "/metrics")
        .await
        .unwrap();
    common::metric_value(&String::from_utf8_lossy(&answer.body), sample)
}

/// Runs the `pushgate` binary on the stack's configuration: (success, stdout, stderr).
fn pushgate(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    let config_file = stack.db.dir().join("pushgate.toml");
    std::fs::write(&config_file, toml::to_string(&stack.config).unwrap()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(args)
        .arg("--config")
        .arg(&config_file)
        .env_remove("PUSHGATE_CONFIG")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

// ---- B–F ----

async fn b_web_booking_gets_one_create_and_its_echo_writes_nothing(db: TestDb) {
    let stack = synced(db, None).await;
    let (booked, item) = web_booking(&stack, "Board meeting").await;
    // Exchange: one item, in the calendar, carrying the reservation id, Location = resource.
    assert_eq!(calendar_items_of(&stack, &booked.id).len(), 1);
    assert_eq!(item.folder, "calendar");
    assert_eq!(item.location.as_deref(), Some("Room 1"));
    assert_item_matches(&item, &booked);
    // The reservation: linked, synced, its ChangeKey the item's, not changed by the echo.
    assert_eq!(booked.item_id.as_deref(), Some(item.id.as_str()));
    assert_eq!(booked.change_key.as_deref(), Some(item.change_key.as_str()));
    assert_eq!(booked.version, 1);
    assert_eq!(booked.last_change, LastChange::Web);
    // One CreateItem, nothing for the echo.
    assert_eq!(
        writes(&stack),
        Writes {
            create: 1,
            ..NO_WRITES
        }
    );
    assert_eq!(
        metric(
            &stack,
            "pushgate_sync_ews_writes_total{cause=\"web_create\",operation=\"CreateItem\"}"
        )
        .await,
        1.0
    );
    stack.stop().await;
}

async fn c_add_in_item_is_linked_without_a_write(db: TestDb) {
    let stack = synced(db, None).await;
    let id = book(&stack, "addin", "Booked in Outlook", day(3)).await;
    assert_eq!(
        reservation(&stack, &id).await.sync_state,
        SyncState::Pending
    );
    // Outlook (with the add-in) writes the item and the reservation id on it.
    let made = stack
        .sim
        .create_item(ROOM, outlook_item("Booked in Outlook", day(3), Some(&id)))
        .unwrap();
    let linked = wait_reservation(&stack, &id, "the add-in's item is linked", |r| {
        r.item_id.as_deref() == Some(made.id.as_str())
    })
    .await;
    wait_quiet(&stack).await;
    let linked_now = reservation(&stack, &id).await;
    assert_eq!(linked_now, linked, "nothing changed after the link");
    assert_eq!(linked.sync_state, SyncState::Synced);
    assert_eq!(linked.change_key.as_deref(), Some(made.change_key.as_str()));
    assert_eq!(linked.version, 1, "a link is not a change");
    assert_eq!(linked.last_change, LastChange::Addin);
    assert_item_matches(&item(&stack, &made.id), &linked);
    assert_eq!(writes(&stack), NO_WRITES);
    assert!(metric(&stack, "pushgate_sync_events_total{outcome=\"linked\"}").await >= 1.0);
    stack.stop().await;
}

async fn d_web_change_and_cancel_write_once_each_and_their_echoes_nothing(db: TestDb) {
    let stack = synced(db, None).await;
    let (booked, made) = web_booking(&stack, "Planning").await;

    // D, change: one UpdateItem; its ModifiedEvent finds the stored ChangeKey.
    let mark = last_event_id(&stack).await;
    let new_start = day(4) + time::Duration::hours(2);
    change(
        &stack,
        &booked.id,
        json!({
            "subject": "Planning, moved",
            "start": rfc3339(new_start),
            "end": rfc3339(new_start + time::Duration::minutes(90)),
            "source": "web",
        }),
    )
    .await;
    let changed = wait_reservation(&stack, &booked.id, "the change is written", |r| {
        r.version == 2 && r.sync_state == SyncState::Synced
    })
    .await;
    wait_processed(&stack, mark, "the echo of the UpdateItem", |e| {
        e.kind == EventKind::Modified && names(e, &made.id)
    })
    .await;
    wait_quiet(&stack).await;
    let after_echo = reservation(&stack, &booked.id).await;
    assert_eq!(after_echo.version, 2, "the echo changed nothing");
    assert_eq!(after_echo.last_change, LastChange::Web);
    assert_eq!(after_echo.subject, "Planning, moved");
    let updated = item(&stack, &made.id);
    assert_item_matches(&updated, &after_echo);
    assert_eq!(
        after_echo.change_key.as_deref(),
        Some(updated.change_key.as_str())
    );
    assert_eq!(changed.item_id, booked.item_id, "the same item");
    assert_eq!(
        writes(&stack),
        Writes {
            create: 1,
            update: 1,
            delete: 0
        }
    );

    // D, cancel: one DeleteItem (to Deleted Items); its MovedEvent changes nothing.
    let mark = last_event_id(&stack).await;
    cancel(&stack, &booked.id, "web").await;
    let cancelled = wait_reservation(&stack, &booked.id, "the item is deleted", |r| {
        r.status == ReservationStatus::Cancelled && r.sync_state == SyncState::Synced
    })
    .await;
    wait_processed(&stack, mark, "the echo of the DeleteItem", |e| {
        e.kind == EventKind::Moved && e.old_object.as_ref().is_some_and(|o| o.id == made.id)
    })
    .await;
    wait_quiet(&stack).await;
    assert_eq!(reservation(&stack, &booked.id).await, cancelled);
    assert_eq!(cancelled.version, 3);
    assert_eq!(cancelled.last_change, LastChange::Web);
    assert!(calendar_items_of(&stack, &booked.id).is_empty());
    let deleted: Vec<ItemSnapshot> = stack
        .sim
        .items(ROOM)
        .unwrap()
        .into_iter()
        .filter(|i| i.reservation_id.as_deref() == Some(booked.id.as_str()))
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].folder, "deleteditems");
    assert_eq!(
        writes(&stack),
        Writes {
            create: 1,
            update: 1,
            delete: 1
        }
    );
    stack.stop().await;
}

async fn e_add_in_change_and_cancel_write_nothing(db: TestDb) {
    let stack = synced(db, None).await;
    let id = book(&stack, "addin", "Booked in Outlook", day(3)).await;
    let made = stack
        .sim
        .create_item(ROOM, outlook_item("Booked in Outlook", day(3), Some(&id)))
        .unwrap();
    wait_reservation(&stack, &id, "linked", |r| r.item_id.is_some()).await;
    wait_quiet(&stack).await;

    // E, change: the add-in tells the API, Outlook saves the item; the event shows no difference.
    let mark = last_event_id(&stack).await;
    let later = day(3) + time::Duration::hours(3);
    change(
        &stack,
        &id,
        json!({"subject": "Renamed in Outlook", "start": rfc3339(later),
               "end": rfc3339(later + time::Duration::hours(1)), "source": "addin"}),
    )
    .await;
    stack
        .sim
        .update_item(
            ROOM,
            &made.id,
            ItemUpdate {
                subject: Some("Renamed in Outlook".into()),
                start: Some(later),
                end: Some(later + time::Duration::hours(1)),
                ..ItemUpdate::default()
            },
        )
        .unwrap();
    wait_processed(&stack, mark, "the ModifiedEvent", |e| {
        e.kind == EventKind::Modified && names(e, &made.id)
    })
    .await;
    wait_quiet(&stack).await;
    let changed = reservation(&stack, &id).await;
    assert_eq!(changed.version, 2, "one change, the add-in's");
    assert_eq!(changed.last_change, LastChange::Addin);
    assert_eq!(changed.sync_state, SyncState::Synced);
    let now_item = item(&stack, &made.id);
    assert_item_matches(&now_item, &changed);
    assert_eq!(
        changed.change_key.as_deref(),
        Some(now_item.change_key.as_str())
    );

    // E, cancel: the add-in cancels, Outlook deletes (to Deleted Items).
    let mark = last_event_id(&stack).await;
    cancel(&stack, &id, "addin").await;
    stack.sim.move_to_deleted_items(ROOM, &made.id).unwrap();
    wait_processed(&stack, mark, "the MovedEvent", |e| {
        e.kind == EventKind::Moved && e.old_object.as_ref().is_some_and(|o| o.id == made.id)
    })
    .await;
    wait_quiet(&stack).await;
    let cancelled = reservation(&stack, &id).await;
    assert_eq!(cancelled.status, ReservationStatus::Cancelled);
    assert_eq!(cancelled.version, 3);
    assert_eq!(cancelled.last_change, LastChange::Addin);
    assert!(calendar_items_of(&stack, &id).is_empty());
    assert_eq!(writes(&stack), NO_WRITES);
    assert!(
        metric(
            &stack,
            "pushgate_sync_events_total{outcome=\"noop_no_difference\"}"
        )
        .await
            >= 2.0
    );
    stack.stop().await;
}

async fn f_outlook_change_updates_the_reservation_without_a_write(db: TestDb) {
    let stack = synced(db, None).await;
    let (booked, made) = web_booking(&stack, "Planning").await;
    let reads_before = stack.sim.call_counts().for_mailbox(ROOM, "GetItem");
    let later = day(5) + time::Duration::hours(1);
    stack
        .sim
        .update_item(
            ROOM,
            &made.id,
            ItemUpdate {
                subject: Some("Changed in OWA".into()),
                start: Some(later),
                end: Some(later + time::Duration::minutes(30)),
                ..ItemUpdate::default()
            },
        )
        .unwrap();
    let updated = wait_reservation(&stack, &booked.id, "F2: the reservation follows", |r| {
        r.subject == "Changed in OWA"
    })
    .await;
    wait_quiet(&stack).await;
    let now_item = item(&stack, &made.id);
    assert_eq!(reservation(&stack, &booked.id).await, updated);
    assert_eq!(updated.start, later);
    assert_eq!(updated.end, later + time::Duration::minutes(30));
    assert_eq!(updated.last_change, LastChange::Exchange);
    assert_eq!(updated.version, 2);
    assert_eq!(updated.sync_state, SyncState::Synced);
    assert_eq!(
        updated.change_key.as_deref(),
        Some(now_item.change_key.as_str())
    );
    assert_item_matches(&now_item, &updated);
    assert_eq!(
        writes(&stack),
        Writes {
            create: 1,
            ..NO_WRITES
        },
        "only the booking's CreateItem"
    );
    let reads = stack.sim.call_counts().for_mailbox(ROOM, "GetItem") - reads_before;
    assert!(reads <= 2, "{reads} GetItem calls for one changed item");
    assert!(
        metric(
            &stack,
            "pushgate_reservations_changed_total{cause=\"outlook_change\"}"
        )
        .await
            >= 1.0
    );
    stack.stop().await;
}

async fn f_outlook_delete_cancels_and_a_restore_does_not_revive(db: TestDb) {
    let stack = synced(db, None).await;
    let (booked, made) = web_booking(&stack, "Planning").await;
    // Outlook's delete: the item moves to Deleted Items (a MovedEvent).
    let in_deleted_items = stack.sim.move_to_deleted_items(ROOM, &made.id).unwrap();
    let cancelled = wait_reservation(&stack, &booked.id, "cancelled by the delete", |r| {
        r.status == ReservationStatus::Cancelled
    })
    .await;
    assert_eq!(cancelled.last_change, LastChange::Exchange);
    assert_eq!(cancelled.version, 2);
    wait_quiet(&stack).await;
    assert_eq!(
        writes(&stack),
        Writes {
            create: 1,
            ..NO_WRITES
        }
    );
    // Restored to the calendar: the reservation stays cancelled.
    let mark = last_event_id(&stack).await;
    let restored = stack.sim.restore_item(ROOM, &in_deleted_items).unwrap();
    wait_processed(&stack, mark, "the restore's MovedEvent", |e| {
        e.kind == EventKind::Moved && names(e, &restored)
    })
    .await;
    wait_quiet(&stack).await;
    assert_eq!(
        reservation(&stack, &booked.id).await,
        cancelled,
        "not revived"
    );
    assert_eq!(item(&stack, &restored).folder, "calendar");
    assert_eq!(
        writes(&stack),
        Writes {
            create: 1,
            ..NO_WRITES
        }
    );
    // Exchange Online's soft delete (to the recoverable items) cancels too.
    let (second, second_item) = web_booking(&stack, "Second").await;
    stack.sim.soft_delete(ROOM, &second_item.id).unwrap();
    let soft = wait_reservation(&stack, &second.id, "cancelled by the soft delete", |r| {
        r.status == ReservationStatus::Cancelled
    })
    .await;
    assert_eq!(soft.last_change, LastChange::Exchange);
    wait_quiet(&stack).await;
    assert_eq!(
        writes(&stack),
        Writes {
            create: 2,
            ..NO_WRITES
        }
    );
    assert!(
        metric(
            &stack,
            "pushgate_reservations_changed_total{cause=\"moved_out\"}"
        )
        .await
            >= 2.0
    );
    stack.stop().await;
}

async fn f_hard_delete_and_is_cancelled_cancel_without_a_write(db: TestDb) {
    let stack = synced(db, None).await;
    let (hard, hard_item) = web_booking(&stack, "Hard").await;
    let (called_off, called_off_item) = web_booking(&stack, "Called off").await;
    stack.sim.hard_delete(ROOM, &hard_item.id).unwrap();
    stack.sim.cancel_item(ROOM, &called_off_item.id).unwrap();
    for (id, cause) in [(&hard.id, "deleted"), (&called_off.id, "is_cancelled")] {
        let r = wait_reservation(&stack, id, cause, |r| {
            r.status == ReservationStatus::Cancelled
        })
        .await;
        assert_eq!(r.last_change, LastChange::Exchange, "{cause}");
        assert_eq!(r.version, 2, "{cause}");
        assert!(
            metric(
                &stack,
                &format!("pushgate_reservations_changed_total{{cause=\"{cause}\"}}")
            )
            .await
                >= 1.0,
            "{cause}"
        );
    }
    wait_quiet(&stack).await;
    assert!(
        stack.sim.item(ROOM, &hard_item.id).is_err(),
        "gone for good"
    );
    let cancelled_item = item(&stack, &called_off_item.id);
    assert!(cancelled_item.is_cancelled);
    assert_eq!(cancelled_item.folder, "calendar", "left where it is");
    assert_eq!(
        writes(&stack),
        Writes {
            create: 2,
            ..NO_WRITES
        }
    );
    stack.stop().await;
}

async fn an_item_that_is_not_ours_changes_nothing(db: TestDb) {
    let stack = synced(db, None).await;
    let (booked, _) = web_booking(&stack, "Ours").await;
    let mark = last_event_id(&stack).await;
    let plain = stack
        .sim
        .create_item(ROOM, outlook_item("Private", day(1), None))
        .unwrap();
    let foreign = stack
        .sim
        .create_item(
            ROOM,
            outlook_item(
                "Someone else's",
                day(1),
                Some("res-00000000000000000000000000000000"),
            ),
        )
        .unwrap();
    for made in [&plain, &foreign] {
        wait_processed(&stack, mark, "the Created event", |e| {
            e.kind == EventKind::Created && names(e, &made.id)
        })
        .await;
    }
    // The reservation id of another mailbox's reservation is not ours either.
    const ROOM2: &str = "room2@contoso.com";
    stack.sync_on(ROOM2).await;
    stack.wait_active_and_heard(ROOM2).await;
    wait_resynced(&stack, ROOM2, None).await;
    let other_room = stack
        .sim
        .create_item(
            ROOM2,
            outlook_item("Copied across", day(1), Some(&booked.id)),
        )
        .unwrap();
    wait_processed(&stack, mark, "the other room's Created event", |e| {
        e.kind == EventKind::Created && names(e, &other_room.id)
    })
    .await;
    stack
        .sim
        .update_item(
            ROOM,
            &plain.id,
            ItemUpdate {
                subject: Some("Private, renamed".into()),
                ..ItemUpdate::default()
            },
        )
        .unwrap();
    wait_processed(&stack, mark, "the ModifiedEvent", |e| {
        e.kind == EventKind::Modified && names(e, &plain.id)
    })
    .await;
    wait_quiet(&stack).await;
    assert_eq!(reservation(&stack, &booked.id).await, booked, "untouched");
    assert_eq!(
        stack
            .store()
            .await
            .reservation_by_item(ROOM, &plain.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        item(&stack, &plain.id).subject.as_deref(),
        Some("Private, renamed")
    );
    assert!(stack.sim.item(ROOM2, &other_room.id).is_ok());
    assert_eq!(
        stack
            .store()
            .await
            .reservation_by_item(ROOM2, &other_room.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(stack.sim.call_counts().for_mailbox(ROOM2, "CreateItem"), 0);
    assert_eq!(stack.sim.call_counts().for_mailbox(ROOM2, "UpdateItem"), 0);
    assert_eq!(
        writes(&stack),
        Writes {
            create: 1,
            ..NO_WRITES
        }
    );
    assert!(metric(&stack, "pushgate_sync_events_total{outcome=\"ignored\"}").await >= 4.0);
    stack.stop().await;
}

// ---- failures ----

async fn a_notification_redelivered_after_the_worker_was_killed_mid_sync_applies_once(db: TestDb) {
    let mut stack = synced(db, None).await;
    let (booked, made) = web_booking(&stack, "Planning").await;
    let mark = last_event_id(&stack).await;
    // EWS stops answering: the worker is caught in the middle of the GetItem for the change.
    stack.sim.stall_for(Duration::from_secs(5));
    stack
        .sim
        .update_item(
            ROOM,
            &made.id,
            ItemUpdate {
                subject: Some("First edit".into()),
                ..ItemUpdate::default()
            },
        )
        .unwrap();
    wait_until("the worker reads the changed item", || {
        stack
            .sim
            .calls()
            .iter()
            .any(|c| c.operation == "GetItem" && c.outcome == "stalled")
    })
    .await;
    stack.stop_worker().await;
    // Changed again while the worker is down: the delivery fails and Exchange sends it again.
    stack
        .sim
        .update_item(
            ROOM,
            &made.id,
            ItemUpdate {
                subject: Some("Second edit".into()),
                ..ItemUpdate::default()
            },
        )
        .unwrap();
    stack.start_worker().await;
    let updated = wait_reservation(&stack, &booked.id, "the last edit arrives", |r| {
        r.subject == "Second edit"
    })
    .await;
    let item_events = |events: Vec<StoredEvent>| -> Vec<StoredEvent> {
        events
            .into_iter()
            .filter(|e| e.id > mark && e.kind == EventKind::Modified && names(e, &made.id))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let handled = loop {
        let events = item_events(stack.store().await.events(None).await.unwrap());
        if events.len() == 2 && events.iter().all(|e| e.state == EventState::Processed) {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both edits handled once: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_quiet(&stack).await;
    assert_eq!(
        handled.len(),
        2,
        "each edit stored once, however often it came"
    );
    assert_eq!(reservation(&stack, &booked.id).await, updated);
    assert_eq!(updated.last_change, LastChange::Exchange);
    assert!(
        updated.version == 2 || updated.version == 3,
        "at most one change per edit: version {}",
        updated.version
    );
    let now_item = item(&stack, &made.id);
    assert_item_matches(&now_item, &updated);
    assert_eq!(
        updated.change_key.as_deref(),
        Some(now_item.change_key.as_str())
    );
    assert_eq!(
        writes(&stack),
        Writes {
            create: 1,
            ..NO_WRITES
        }
    );
    stack.stop().await;
}

async fn a_web_change_while_ews_fails_retries_then_syncs(db: TestDb) {
    let stack = synced(db, Some(2)).await;
    let (booked, made) = web_booking(&stack, "Planning").await;
    stack.sim.set_ews_disabled(true);
    change(
        &stack,
        &booked.id,
        json!({"subject": "Changed while EWS is off", "source": "web"}),
    )
    .await;
    let retrying = wait_reservation(&stack, &booked.id, "the write is retried", |r| {
        r.sync_state == SyncState::Retrying
    })
    .await;
    // An outage is waited out past `max_attempts` (2): the write is not given up.
    let store = stack.store().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = store.outbox_rows(&booked.id).await.unwrap();
        if rows.iter().any(|r| r.attempts >= 3) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        reservation(&stack, &booked.id).await.sync_state,
        SyncState::Retrying
    );
    assert!(
        retrying
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("403")),
        "{retrying:?}"
    );
    assert_eq!(
        item(&stack, &made.id).subject.as_deref(),
        Some("Planning"),
        "not written yet"
    );
    stack.sim.set_ews_disabled(false);
    let synced_now = wait_reservation(&stack, &booked.id, "the write gets through", |r| {
        r.sync_state == SyncState::Synced
    })
    .await;
    wait_quiet(&stack).await;
    assert_eq!(synced_now.version, 2);
    assert_eq!(synced_now.last_error, None);
    let now_item = item(&stack, &made.id);
    assert_item_matches(&now_item, &synced_now);
    assert_eq!(calendar_items_of(&stack, &booked.id).len(), 1);
    let counts = stack.sim.call_counts();
    assert_eq!(counts.succeeded("UpdateItem"), 1, "one write got through");
    assert_eq!(counts.succeeded("CreateItem"), 1);
    assert_eq!(counts.for_mailbox(ROOM, "DeleteItem"), 0);
    stack.stop().await;
}

async fn an_ambiguous_create_leaves_exactly_one_item(db: TestDb) {
    let stack = synced(db, None).await;
    // The CreateItem is carried out, but answered after the client gave up (5 s).
    stack.sim.answer_next_create_after(Duration::from_secs(7));
    let id = book(&stack, "web", "Ambiguous", day(2)).await;
    let linked = wait_reservation(&stack, &id, "linked and synced", |r| {
        r.sync_state == SyncState::Synced && r.item_id.is_some()
    })
    .await;
    wait_quiet(&stack).await;
    let items = calendar_items_of(&stack, &id);
    assert_eq!(items.len(), 1, "exactly one item: {items:?}");
    assert_eq!(linked.item_id.as_deref(), Some(items[0].id.as_str()));
    assert_item_matches(&items[0], &linked);
    assert_eq!(writes(&stack).create, 1, "the CreateItem was not repeated");
    assert_eq!(writes(&stack).delete, 0);
    assert_eq!(reservation(&stack, &id).await.version, 1);
    stack.stop().await;
}

async fn a_resync_after_a_lost_subscription_repairs_both_sides(db: TestDb) {
    let mut stack = synced(db, Some(2)).await;
    // Before: a web booking written, an add-in booking linked, one waiting for its item, and a
    // web booking whose CreateItem was given up while EWS was off.
    let (written, written_item) = web_booking(&stack, "Written").await;
    let addin = book(&stack, "addin", "Add-in", day(3)).await;
    let addin_item = stack
        .sim
        .create_item(ROOM, outlook_item("Add-in", day(3), Some(&addin)))
        .unwrap();
    wait_reservation(&stack, &addin, "linked", |r| r.item_id.is_some()).await;
    let waiting = book(&stack, "addin", "Add-in, item not seen yet", day(4)).await;
    // Exchange refuses the CreateItem itself (an outage would be waited out instead).
    refuse_creates(&stack, 2);
    let never = book(&stack, "web", "Never written", day(5)).await;
    wait_reservation(&stack, &never, "the CreateItem is given up", |r| {
        r.sync_state == SyncState::Failed
    })
    .await;
    wait_quiet(&stack).await;
    let writes_before = writes(&stack);
    let resynced_before = stack
        .store()
        .await
        .mailbox_calendar(ROOM)
        .await
        .unwrap()
        .unwrap();

    // The subscription is lost and nobody listens; Exchange forgets what happened meanwhile.
    stack.stop_worker().await;
    stack.sim.drop_all_subscriptions();
    stack.sim.expire_watermarks(ROOM).unwrap();
    stack
        .sim
        .update_item(
            ROOM,
            &written_item.id,
            ItemUpdate {
                subject: Some("Changed while nobody listened".into()),
                ..ItemUpdate::default()
            },
        )
        .unwrap();
    stack
        .sim
        .move_to_deleted_items(ROOM, &addin_item.id)
        .unwrap();
    let late_item = stack
        .sim
        .create_item(
            ROOM,
            outlook_item("Add-in, item not seen yet", day(4), Some(&waiting)),
        )
        .unwrap();
    let events_before = last_event_id(&stack).await;

    // Back: a fresh subscription, and the calendar is read again.
    stack.start_worker().await;
    wait_resynced(&stack, ROOM, resynced_before.resynced_at).await;
    let changed = wait_reservation(&stack, &written.id, "the Outlook change is taken", |r| {
        r.subject == "Changed while nobody listened"
    })
    .await;
    assert_eq!(changed.last_change, LastChange::Exchange);
    let gone = wait_reservation(&stack, &addin, "the deleted item cancels", |r| {
        r.status == ReservationStatus::Cancelled
    })
    .await;
    assert_eq!(gone.last_change, LastChange::Exchange);
    let late = wait_reservation(&stack, &waiting, "the item made meanwhile is linked", |r| {
        r.item_id.is_some()
    })
    .await;
    assert_eq!(late.item_id.as_deref(), Some(late_item.id.as_str()));
    let repaired = wait_reservation(&stack, &never, "the given-up booking gets its item", |r| {
        r.sync_state == SyncState::Synced
    })
    .await;
    wait_quiet(&stack).await;
    let items = calendar_items_of(&stack, &never);
    assert_eq!(items.len(), 1);
    assert_item_matches(&items[0], &repaired);
    assert_eq!(repaired.item_id.as_deref(), Some(items[0].id.as_str()));
    // The repairs came from reading the calendar, not from replayed events.
    let replayed: Vec<StoredEvent> = stack
        .store()
        .await
        .events(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.id > events_before
                && [&written_item.id, &late_item.id]
                    .iter()
                    .any(|id| names(e, id))
        })
        .collect();
    assert!(replayed.is_empty(), "{replayed:?}");
    let writes_after = writes(&stack);
    assert_eq!(
        writes_after,
        Writes {
            create: writes_before.create + 1,
            ..writes_before
        },
        "one CreateItem for the given-up booking, nothing else"
    );
    assert_item_matches(&item(&stack, &written_item.id), &changed);
    stack.stop().await;
}

async fn a_poison_event_is_dead_lettered_and_replayable(db: TestDb) {
    let stack = synced(db, Some(3)).await;
    let (booked, made) = web_booking(&stack, "Planning").await;
    for _ in 0..3 {
        stack.sim.fail_next(
            "GetItem",
            ScriptedFailure::Error("ErrorAccessDenied".into()),
        );
    }
    let mark = last_event_id(&stack).await;
    stack
        .sim
        .update_item(
            ROOM,
            &made.id,
            ItemUpdate {
                subject: Some("Poisoned".into()),
                ..ItemUpdate::default()
            },
        )
        .unwrap();
    let store = stack.store().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let dead = loop {
        let dead = store.dead_events(None, 10).await.unwrap();
        if let Some(event) = dead.into_iter().find(|e| e.id > mark && names(e, &made.id)) {
            break event;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.state, EventState::Failed);
    assert_eq!(dead.attempts, 3);
    assert!(dead
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("ErrorAccessDenied")));
    // The subscription's later events went on.
    wait_quiet(&stack).await;
    let untouched = reservation(&stack, &booked.id).await;
    assert_eq!(untouched.subject, "Planning");
    assert_eq!(
        metric(&stack, "pushgate_sync_events_total{outcome=\"dead\"}").await,
        1.0
    );

    // The operator lists it and replays it with the command line.
    let pushgate = |args: &[&str]| pushgate(&stack, args);
    let (ok, listed, stderr) = pushgate(&["events", "list", "--dead"]);
    assert!(ok, "{stderr}");
    assert!(
        listed.contains(&format!("{}\tfailed\tmodified", dead.id)),
        "{listed}"
    );
    assert!(listed.contains("ErrorAccessDenied"), "{listed}");
    let (ok, _, stderr) = pushgate(&["events", "replay", &dead.id.to_string()]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = pushgate(&["events", "replay", &dead.id.to_string()]);
    assert!(!ok, "a second replay: no longer a dead letter");
    assert!(stderr.contains("not a dead letter"), "{stderr}");

    let replayed = wait_reservation(&stack, &booked.id, "the replayed event applies", |r| {
        r.subject == "Poisoned"
    })
    .await;
    wait_quiet(&stack).await;
    assert_eq!(replayed.last_change, LastChange::Exchange);
    assert!(store.dead_events(None, 10).await.unwrap().is_empty());
    assert_item_matches(&item(&stack, &made.id), &replayed);
    assert_eq!(
        writes(&stack),
        Writes {
            create: 1,
            ..NO_WRITES
        }
    );
    stack.stop().await;
}

async fn a_resync_asked_on_the_command_line_repairs_a_given_up_write(db: TestDb) {
    let stack = synced(db, Some(1)).await;
    // Exchange refuses the CreateItem: given up at the first failure.
    refuse_creates(&stack, 1);
    let id = book(&stack, "web", "Given up", day(2)).await;
    let failed = wait_reservation(&stack, &id, "the write is given up", |r| {
        r.sync_state == SyncState::Failed
    })
    .await;
    assert!(failed
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("ErrorAccessDenied")));
    wait_quiet(&stack).await;
    assert!(
        calendar_items_of(&stack, &id).is_empty(),
        "nothing retries it on its own"
    );

    let before = stack
        .store()
        .await
        .mailbox_calendar(ROOM)
        .await
        .unwrap()
        .unwrap()
        .resynced_at;
    let (ok, said, stderr) = pushgate(&stack, &["sync", "resync", "Room1@Contoso.com"]);
    assert!(ok, "{stderr}");
    assert!(
        said.contains("room1@contoso.com: resync requested"),
        "{said}"
    );
    let (ok, _, stderr) = pushgate(&stack, &["sync", "resync", "nobody@contoso.com"]);
    assert!(!ok);
    assert!(stderr.contains("no such mailbox"), "{stderr}");

    wait_resynced(&stack, ROOM, before).await;
    let written = wait_reservation(&stack, &id, "the booking gets its item", |r| {
        r.sync_state == SyncState::Synced
    })
    .await;
    wait_quiet(&stack).await;
    let items = calendar_items_of(&stack, &id);
    assert_eq!(items.len(), 1);
    assert_item_matches(&items[0], &written);
    assert_eq!(written.item_id.as_deref(), Some(items[0].id.as_str()));
    assert_eq!(stack.sim.call_counts().succeeded("CreateItem"), 1);
    stack.stop().await;
}

async fn a_web_change_meeting_an_outlook_change_wins_and_an_outlook_delete_wins_over_it(
    db: TestDb,
) {
    let stack = synced(db, Some(2)).await;
    let (edited, edited_item) = web_booking(&stack, "Edited on both sides").await;
    let (deleted, deleted_item) = web_booking(&stack, "Deleted in Outlook").await;
    // EWS is off for the worker: both web changes wait in the outbox.
    stack.sim.set_ews_disabled(true);
    for id in [&edited.id, &deleted.id] {
        change(
            &stack,
            id,
            json!({"subject": "Changed on the web", "source": "web"}),
        )
        .await;
        wait_reservation(&stack, id, "the write waits", |r| {
            r.sync_state == SyncState::Retrying
        })
        .await;
    }
    // Meanwhile in Outlook: one item is deleted, then the other edited. The delete needs no
    // read: it cancels its reservation even while EWS is off (the edit's event, which needs a
    // GetItem, waits, and with it the subscription's later events).
    stack
        .sim
        .move_to_deleted_items(ROOM, &deleted_item.id)
        .unwrap();
    let cancelled = wait_reservation(&stack, &deleted.id, "the delete wins", |r| {
        r.status == ReservationStatus::Cancelled
    })
    .await;
    assert_eq!(cancelled.last_change, LastChange::Exchange);
    stack
        .sim
        .update_item(
            ROOM,
            &edited_item.id,
            ItemUpdate {
                subject: Some("Changed in Outlook".into()),
                ..ItemUpdate::default()
            },
        )
        .unwrap();
    // Its event fails past `max_attempts` (2) while EWS is off, and is not dead-lettered.
    let store = stack.store().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !store
        .pending_events(None, 100)
        .await
        .unwrap()
        .iter()
        .any(|e| names(e, &edited_item.id) && e.attempts >= 3)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edit's event is retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.dead_events(None, 10).await.unwrap().is_empty());
    stack.sim.set_ews_disabled(false);
    // The edit meets the web change: the web change is written over it (the stale ChangeKey is
    // refused, the item read again, what differs written with the fresh one).
    let written = wait_reservation(&stack, &edited.id, "the web change is written", |r| {
        r.sync_state == SyncState::Synced
    })
    .await;
    wait_reservation(&stack, &deleted.id, "nothing left to write", |r| {
        r.sync_state == SyncState::Synced
    })
    .await;
    wait_quiet(&stack).await;
    let written_now = reservation(&stack, &edited.id).await;
    assert_eq!(written_now.subject, "Changed on the web");
    assert_eq!(written_now.version, 2, "Outlook's edit was not taken");
    assert_eq!(written_now.last_change, LastChange::Web);
    assert_eq!(written_now.item_id, written.item_id);
    let item_now = item(&stack, &edited_item.id);
    assert_item_matches(&item_now, &written_now);
    assert_eq!(
        written_now.change_key.as_deref(),
        Some(item_now.change_key.as_str())
    );
    let gone = reservation(&stack, &deleted.id).await;
    assert_eq!(gone.status, ReservationStatus::Cancelled);
    assert!(
        calendar_items_of(&stack, &deleted.id).is_empty(),
        "not brought back"
    );
    let counts = stack.sim.call_counts();
    assert_eq!(
        counts.succeeded("UpdateItem"),
        1,
        "one write: the edited item's"
    );
    assert_eq!(counts.for_mailbox(ROOM, "DeleteItem"), 0);
    assert_eq!(counts.succeeded("CreateItem"), 2);
    assert_eq!(
        metric(
            &stack,
            "pushgate_sync_ews_writes_total{cause=\"conflict_retry\",operation=\"UpdateItem\"}"
        )
        .await,
        1.0
    );
    stack.stop().await;
}

// ---- two workers on one PostgreSQL database ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_postgres_never_process_an_event_twice() {
    let Some(db) = postgres("two_workers_on_postgres_never_process_an_event_twice").await else {
        return;
    };
    let rooms = [
        "room1@contoso.com",
        "room2@contoso.com",
        "room3@contoso.com",
        "room4@contoso.com",
    ];
    let stack = Stack::start(
        db,
        StackOptions {
            mailboxes: rooms.iter().map(|r| r.to_string()).collect(),
            first_status_after: Duration::from_secs(5),
            ..StackOptions::default()
        },
    )
    .await;
    // A second replica on the same database (it takes no notifications: only its loops run).
    let mut second_config = stack.config.clone();
    second_config.worker.listen = "127.0.0.1:0".into();
    let second = pushgate::worker::start_with(second_config, stack.tuning.clone())
        .await
        .unwrap();
    for room in rooms {
        stack.sync_on(room).await;
    }
    for room in rooms {
        stack.wait_active_and_heard(room).await;
        wait_resynced(&stack, room, None).await;
    }
    let store = stack.store().await;
    // Add-in bookings whose items Outlook writes and then edits twice, in every room.
    let mut bookings = Vec::new();
    for (n, room) in rooms.iter().enumerate() {
        for k in 0..3 {
            let start = day(2 + k);
            let subject = format!("Booking {n}.{k}");
            let id = book_in(&stack, room, "addin", &subject, start).await;
            let made = stack
                .sim
                .create_item(room, outlook_item(&subject, start, Some(&id)))
                .unwrap();
            bookings.push((room.to_string(), id, made.id));
        }
    }
    for edit in ["edited once", "edited twice"] {
        for (room, id, item_id) in &bookings {
            stack
                .sim
                .update_item(
                    room,
                    item_id,
                    ItemUpdate {
                        subject: Some(format!("{id} {edit}")),
                        ..ItemUpdate::default()
                    },
                )
                .unwrap();
        }
    }
    for (_, id, item_id) in &bookings {
        let last = format!("{id} edited twice");
        wait_reservation(&stack, id, "the last edit is taken", |r| {
            r.subject == last && r.item_id.as_deref() == Some(item_id.as_str())
        })
        .await;
    }
    wait_quiet(&stack).await;
    // Every item event was handled by exactly one of the two workers.
    let item_events = store
        .events(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.object
                .as_ref()
                .is_some_and(|o| o.kind == ObjectKind::Item)
        })
        .collect::<Vec<_>>();
    assert!(item_events.iter().all(|e| e.state == EventState::Processed));
    assert_eq!(item_events.len(), bookings.len() * 3);
    let outcomes = [
        "noop_same_changekey",
        "noop_no_difference",
        "linked",
        "updated",
        "cancelled",
        "ignored",
    ];
    let mut handled = 0.0;
    let mut per_worker = Vec::new();
    for addr in [stack.worker().metrics_addr, second.metrics_addr] {
        let text = worker_support::get(addr, "/metrics").await.unwrap();
        let text = String::from_utf8_lossy(&text.body).to_string();
        let mut mine = 0.0;
        for outcome in outcomes {
            mine += common::metric_value(
                &text,
                &format!("pushgate_sync_events_total{{outcome=\"{outcome}\"}}"),
            );
        }
        for bad in ["failed", "dead"] {
            assert_eq!(
                common::metric_value(
                    &text,
                    &format!("pushgate_sync_events_total{{outcome=\"{bad}\"}}")
                ),
                0.0
            );
        }
        per_worker.push(mine);
        handled += mine;
    }
    eprintln!("item events handled per worker: {per_worker:?}");
    assert_eq!(
        handled,
        item_events.len() as f64,
        "each item event handled once, by one worker"
    );
    for (room, id, item_id) in &bookings {
        let r = store.reservation(id).await.unwrap().unwrap();
        // Two edits: one change each, or one for both when they were read together.
        assert!(
            r.version == 2 || r.version == 3,
            "{id}: version {}",
            r.version
        );
        let it = stack.sim.item(room, item_id).unwrap();
        assert_eq!(it.subject.as_deref(), Some(r.subject.as_str()));
    }
    assert_eq!(stack.sim.call_counts().writes(), 0);
    second.shutdown().await.unwrap();
    stack.stop().await;
}
