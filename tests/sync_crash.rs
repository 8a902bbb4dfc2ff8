//! SIGKILL in the middle of the sync step: the real `pushgate worker` process, behind the real
//! gateway and in front of the simulated Exchange (every EWS call slowed so that kills land inside
//! calls), is killed several times while web bookings are written to the calendar and Outlook
//! edits items, and restarted each time on the same database. Afterwards every reservation has
//! exactly one calendar item (a CreateItem cut off by a kill is never blindly repeated), both
//! sides agree, every Outlook edit made on a synced reservation is in it, nothing is dead-lettered
//! and nothing waits. Without taking back its killed run's claims at start, the restarted worker
//! would leave them until their lease expires (a minute here), past this test's waits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod common;
mod exchange_support;
mod worker_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use exchange_support::*;
use pushgate::exchange_sim::ItemUpdate;
use pushgate::store::{
    Reservation, ReservationCursor, ReservationFilter, ReservationStatus, Store, SyncState,
};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use worker_support::TestDb;

const MAILBOXES: usize = 4;
const BOOKINGS: usize = 24;
const KILLS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_sync_sqlite() {
    sigkill_mid_sync(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_sync_postgres() {
    let Some(db) = TestDb::postgres("sigkill_mid_sync_postgres").await else {
        return;
    };
    sigkill_mid_sync(db).await;
}

fn mailbox(n: usize) -> String {
    format!("room{n}@contoso.com")
}

/// Books through the API until it is answered 201 (the worker may be down or killed mid-call; a
/// booking whose answer was lost may exist without its id here: the checks read the store).
async fn book(api: std::net::SocketAddr, n: usize) -> Option<String> {
    let start = (time::OffsetDateTime::now_utc() + time::Duration::days(2 + n as i64))
        .replace_time(time::Time::from_hms(9, 0, 0).unwrap());
    let body = json!({
        "mailbox": mailbox(n % MAILBOXES),
        "resource": "Room",
        "subject": format!("Booking {n}"),
        "start": start.format(&Rfc3339).unwrap(),
        "end": (start + time::Duration::hours(1)).format(&Rfc3339).unwrap(),
        "source": "web",
    })
    .to_string();
    for _ in 0..400 {
        let answer = worker_support::api(
            api,
            "POST",
            "/api/v1/reservations",
            Some(worker_support::API_TOKEN),
            Some(&body),
        )
        .await;
        match answer {
            Ok(answer) if answer.status == 201 => {
                let json: Value = serde_json::from_slice(&answer.body).unwrap();
                return json["id"].as_str().map(str::to_string);
            }
            Ok(answer) => assert!(answer.status >= 500, "booking refused: {answer:?}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn all_reservations(store: &dyn Store) -> Vec<Reservation> {
    let mut all = Vec::new();
    let mut after: Option<ReservationCursor> = None;
    loop {
        let page = store
            .reservations(&ReservationFilter::default(), after.as_ref(), 100)
            .await
            .unwrap();
        let Some(last) = page.last() else {
            return all;
        };
        after = Some(ReservationCursor::after(last));
        all.extend(page);
    }
}

async fn sigkill_mid_sync(db: TestDb) {
    let mailboxes: Vec<String> = (0..MAILBOXES).map(mailbox).collect();
    let mut stack = Stack::start(
        db,
        StackOptions {
            mailboxes: mailboxes.clone(),
            ..StackOptions::default()
        },
    )
    .await;
    stack.start_worker_process().await;
    for address in &mailboxes {
        stack.sync_on(address).await;
    }
    for address in &mailboxes {
        stack.wait_active_and_heard(address).await;
    }
    // Every EWS call takes a while, so that kills land inside CreateItem and GetItem calls.
    stack.sim.set_latency(Duration::from_millis(60));

    let api = stack.api_addr();
    let booking_done = Arc::new(AtomicBool::new(false));
    let booker = {
        let done = booking_done.clone();
        tokio::spawn(async move {
            let mut booked = Vec::new();
            for n in 0..BOOKINGS {
                booked.extend(book(api, n).await);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            done.store(true, Ordering::Relaxed);
            booked
        })
    };

    // Outlook edits items whose reservation the worker has recorded as written: those edits must
    // end up in the reservation (no web change of theirs is pending).
    let mut edits: BTreeMap<String, String> = BTreeMap::new();
    let store = stack.store().await;
    let mut kills = 0;
    let mut round = 0;
    while kills < KILLS || !booking_done.load(Ordering::Relaxed) {
        round += 1;
        assert!(round < 200, "the bookings never finished");
        let pause = 150 + rand::random::<u64>() % 350;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        for r in all_reservations(&*store).await {
            if r.sync_state != SyncState::Synced || edits.len() >= BOOKINGS / 2 {
                continue;
            }
            let (Some(item_id), false) = (&r.item_id, edits.contains_key(&r.id)) else {
                continue;
            };
            let subject = format!("Edited in Outlook {}", edits.len());
            let update = ItemUpdate {
                subject: Some(subject.clone()),
                ..ItemUpdate::default()
            };
            stack.sim.update_item(&r.mailbox, item_id, update).unwrap();
            edits.insert(r.id.clone(), subject);
            break;
        }
        if kills < KILLS {
            stack.kill_worker_process().await;
            kills += 1;
            eprintln!("kill {kills} after {pause} ms");
            tokio::time::sleep(Duration::from_millis(50)).await;
            stack.start_worker_process().await;
        }
    }
    let acknowledged = booker.await.unwrap();
    assert!(
        acknowledged.len() >= BOOKINGS / 2,
        "the harness got work done: {} bookings answered",
        acknowledged.len()
    );
    assert!(!edits.is_empty(), "some item was edited in Outlook");

    // Both sides settle: every reservation synced and its item as it says, no event waiting.
    let deadline = tokio::time::Instant::now() + WAIT;
    let settled = loop {
        let reservations = all_reservations(&*store).await;
        let backlog = store.backlog().await.unwrap();
        let agree = reservations.iter().all(|r| {
            r.sync_state == SyncState::Synced
                && r.item_id.as_ref().is_some_and(|id| {
                    stack.sim.item(&r.mailbox, id).is_ok_and(|item| {
                        item.subject.as_deref() == Some(r.subject.as_str())
                            && item.start == r.start
                            && item.end == r.end
                    })
                })
                && edits.get(&r.id).is_none_or(|edit| *edit == r.subject)
        });
        if agree && backlog == 0 {
            break reservations;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled within {WAIT:?}: backlog {backlog}, reservations {reservations:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    for id in &acknowledged {
        assert!(settled.iter().any(|r| &r.id == id), "booking {id} lost");
    }
    let mut items_per_reservation: BTreeMap<String, usize> = BTreeMap::new();
    for address in &mailboxes {
        for item in stack.sim.items(address).unwrap() {
            if item.folder == "calendar" {
                if let Some(id) = item.reservation_id {
                    *items_per_reservation.entry(id).or_default() += 1;
                }
            }
        }
    }
    for r in &settled {
        assert_eq!(r.status, ReservationStatus::Active);
        assert_eq!(
            items_per_reservation.get(&r.id).copied(),
            Some(1),
            "exactly one calendar item for {}",
            r.id
        );
    }
    assert_eq!(
        items_per_reservation.len(),
        settled.len(),
        "no item without its reservation"
    );
    assert!(
        store.dead_events(None, 100).await.unwrap().is_empty(),
        "nothing dead-lettered"
    );
    let counts = stack.sim.call_counts();
    let calls = |operation: &str| -> u64 {
        mailboxes
            .iter()
            .map(|m| counts.for_mailbox(m, operation))
            .sum()
    };
    eprintln!(
        "{} reservations, {} Outlook edits, {kills} kills; calls: {} CreateItem, {} FindItem \
         (looking for an item a cut-off CreateItem may have made), {} GetItem",
        settled.len(),
        edits.len(),
        calls("CreateItem"),
        calls("FindItem"),
        calls("GetItem"),
    );
    stack.stop().await;
}
