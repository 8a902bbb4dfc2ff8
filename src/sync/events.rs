//! The loop over stored events: claims each subscription's oldest pending events in order, reads
//! their items with GetItem (≤ 10 ids per call, each once per claim), settles and finishes them;
//! failures wait with back-off and become dead letters after `[sync] max_attempts`.

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::decide::{FoundBy, GoneCause};
use super::settle::{settle, Read, Subject};
use super::{Shared, StepError};
use crate::ews::{CalendarItem, EwsError, ItemId};
use crate::notification::{EventKind, ObjectKind};
use crate::store::{ClaimedEvents, Lease, Reservation, StoredEvent};

/// What an event asks of the sync step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventWork {
    /// A heartbeat (StatusEvent), a folder's event, an event naming no item: nothing to read.
    NoItemWork,
    /// Read the item; its reservation is the one linked to `old_item_id` (a move's old id) or to
    /// `item_id`, else the one its property names.
    Read {
        item_id: String,
        old_item_id: Option<String>,
    },
    /// The item left the calendar (hard delete, or a move whose new parent folder is not the
    /// calendar): nothing to read, the reservation linked to it is cancelled.
    Gone {
        cause: GoneCause,
        item_id: String,
        old_item_id: Option<String>,
    },
}

/// What `event` asks for, given the calendar's folder id.
pub fn event_work(event: &StoredEvent, calendar_folder_id: &str) -> EventWork {
    let item_id = match &event.object {
        Some(object) if object.kind == ObjectKind::Item && event.kind != EventKind::Status => {
            object.id.clone()
        }
        _ => return EventWork::NoItemWork,
    };
    let old_item_id = event
        .old_object
        .as_ref()
        .filter(|o| o.kind == ObjectKind::Item)
        .map(|o| o.id.clone());
    match event.kind {
        EventKind::Deleted => EventWork::Gone {
            cause: GoneCause::Deleted,
            item_id,
            old_item_id: None,
        },
        EventKind::Moved => {
            let out_of_calendar = event
                .parent_folder_id
                .as_ref()
                .is_some_and(|parent| parent.id != calendar_folder_id);
            if out_of_calendar {
                EventWork::Gone {
                    cause: GoneCause::MovedOut,
                    item_id,
                    old_item_id,
                }
            } else {
                EventWork::Read {
                    item_id,
                    old_item_id,
                }
            }
        }
        // A copy is a new item: the reservation linked to the original stays with the original.
        EventKind::Copied => EventWork::Read {
            item_id,
            old_item_id: None,
        },
        _ => EventWork::Read {
            item_id,
            old_item_id: None,
        },
    }
}

fn is_item_event(event: &StoredEvent) -> bool {
    event_work(event, "") != EventWork::NoItemWork
}

/// A later event of the batch moves the item on from `item_id`: its ErrorItemNotFound is no
/// deletion.
fn moved_on(later: &[StoredEvent], item_id: &str) -> bool {
    later.iter().any(|e| {
        e.kind == EventKind::Moved && e.old_object.as_ref().is_some_and(|o| o.id == item_id)
    })
}

pub(super) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let poll = shared.poll_interval();
    let owner = shared.options.owner.clone();
    let most = shared.options.max_subscriptions.max(1);
    // Subscriptions being worked on, each with the events it holds: one slow subscription (an
    // EWS timeout) does not hold up the others, which are claimed as room frees up.
    let mut running: JoinSet<()> = JoinSet::new();
    let mut held: HashMap<tokio::task::Id, Vec<i64>> = HashMap::new();
    while !*shutdown.borrow() {
        let room = most.saturating_sub(running.len());
        let mut full = false;
        if room > 0 {
            let now = shared.options.clock.now();
            let lease = Lease {
                owner: owner.clone(),
                until: now
                    + time::Duration::try_from(shared.options.lease)
                        .unwrap_or(time::Duration::MINUTE),
            };
            match shared
                .store
                .claim_events(now, &lease, room, shared.options.max_events)
                .await
            {
                Ok(claimed) => {
                    full = claimed.len() == room;
                    for group in claimed {
                        let ids = group.events.iter().map(|e| e.id).collect();
                        let shared = shared.clone();
                        let task =
                            running.spawn(async move { process_group(&shared, &group).await });
                        held.insert(task.id(), ids);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot claim events; retrying"),
            }
        }
        if full && running.len() < most {
            continue;
        }
        tokio::select! {
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(error) => error.id(),
                };
                held.remove(&id);
            }
            _ = tokio::time::sleep(poll) => {}
            _ = shared.events_wake.notified(), if running.len() < most => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
    // Mid-sync: what is not finished is given back now rather than at the lease's end.
    // Processing is idempotent, so a half-done event is simply done again.
    running.abort_all();
    while running.join_next().await.is_some() {}
    let ids: Vec<i64> = held.into_values().flatten().collect();
    if !ids.is_empty() {
        if let Err(error) = shared.store.release_events(&ids, &owner).await {
            tracing::warn!(%error, "claims not given back; they expire");
        }
    }
}

/// One event handled: its outcome label and when it arrived.
struct Handled {
    id: i64,
    outcome: &'static str,
    received_at: OffsetDateTime,
}

/// Handles a subscription's claimed events in order, finishes those handled, and records the
/// failure of the first that failed (its later events wait with it).
async fn process_group(shared: &Shared, group: &ClaimedEvents) {
    let mut handled = Vec::with_capacity(group.events.len());
    let failure = work_through(shared, group, &mut handled).await.err();
    let now = shared.options.clock.now();
    if !handled.is_empty() {
        let ids: Vec<i64> = handled.iter().map(|h| h.id).collect();
        match shared.store.finish_events(&ids, now).await {
            Ok(_) => {
                if let Some(metrics) = &shared.metrics {
                    for event in &handled {
                        metrics.event(event.outcome);
                        metrics.lag((now - event.received_at).as_seconds_f64());
                    }
                }
            }
            Err(error) => {
                // Their claims expire and they are handled again: nothing is applied twice.
                tracing::warn!(%error, events = ids.len(), "cannot mark events processed");
                return;
            }
        }
    }
    if let Some((index, error)) = failure {
        if let Some(event) = group.events.get(index) {
            fail(shared, event, &error).await;
        }
    }
}

async fn fail(shared: &Shared, event: &StoredEvent, error: &StepError) {
    let owner = &shared.options.owner;
    let attempts = event.attempts.saturating_add(1);
    let now = shared.options.clock.now();
    let text = error.to_string();
    if attempts >= shared.options.max_attempts && !error.is_outage() {
        tracing::error!(
            event = event.id,
            subscription_id = %event.subscription_id,
            kind = event.kind.as_str(),
            attempts,
            error = %text,
            "event parked as a dead letter (pushgate events replay {})",
            event.id
        );
        match shared.store.dead_letter(event.id, owner, &text, now).await {
            Ok(_) => {
                if let Some(metrics) = &shared.metrics {
                    metrics.event("dead");
                }
            }
            Err(e) => tracing::warn!(error = %e, event = event.id, "dead letter not recorded"),
        }
        return;
    }
    let wait = shared.retry_delay(attempts, error.back_off());
    tracing::warn!(
        event = event.id,
        subscription_id = %event.subscription_id,
        attempts,
        retry_in = ?wait,
        error = %text,
        "event failed; will retry"
    );
    let next = now + time::Duration::try_from(wait).unwrap_or(time::Duration::HOUR);
    match shared.store.retry_event(event.id, owner, &text, next).await {
        Ok(_) => {
            if let Some(metrics) = &shared.metrics {
                metrics.event("failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, event = event.id, "failed attempt not recorded"),
    }
}

/// Handles events in order into `handled`; stops at the first failure, with its index.
async fn work_through(
    shared: &Shared,
    group: &ClaimedEvents,
    handled: &mut Vec<Handled>,
) -> Result<(), (usize, StepError)> {
    let events = &group.events;
    let no_item_work = |event: &StoredEvent| Handled {
        id: event.id,
        outcome: "no_item_work",
        received_at: event.received_at,
    };
    let first_item = events.iter().position(is_item_event);
    let (Some(mailbox), Some(first_item)) = (group.mailbox.as_deref(), first_item) else {
        // Nothing to read, or no mailbox to read it in (a subscription registered under
        // `unknown_subscriptions = "accept"`).
        handled.extend(events.iter().map(no_item_work));
        return Ok(());
    };
    handled.extend(events[..first_item].iter().map(no_item_work));
    let at_first = |error: StepError| (first_item, error);
    let calendar = shared.calendar_folder_id(mailbox).await.map_err(at_first)?;
    let works: Vec<EventWork> = events.iter().map(|e| event_work(e, &calendar)).collect();

    // The reservations linked to the items, read before the items (see `settle`).
    let mut known: HashMap<String, Option<Reservation>> = HashMap::new();
    for work in &works[first_item..] {
        let (EventWork::Read {
            item_id,
            old_item_id,
        }
        | EventWork::Gone {
            item_id,
            old_item_id,
            ..
        }) = work
        else {
            continue;
        };
        for id in std::iter::once(item_id).chain(old_item_id) {
            if !known.contains_key(id) {
                let reservation = shared
                    .store
                    .reservation_by_item(mailbox, id)
                    .await
                    .map_err(|e| at_first(e.into()))?;
                known.insert(id.clone(), reservation);
            }
        }
    }

    // Each item once, in batches of 10 (the client cuts them).
    let mut wanted: Vec<ItemId> = Vec::new();
    for work in &works {
        if let EventWork::Read { item_id, .. } = work {
            if !wanted.iter().any(|w| &w.id == item_id) {
                wanted.push(ItemId::new(item_id.clone()));
            }
        }
    }
    let items: Result<HashMap<String, Result<CalendarItem, EwsError>>, EwsError> =
        if wanted.is_empty() {
            Ok(HashMap::new())
        } else {
            shared
                .ews
                .get_calendar_items(mailbox, &wanted, &shared.options.property)
                .await
                .map(|answers| wanted.iter().map(|w| w.id.clone()).zip(answers).collect())
        };

    for (index, event) in events.iter().enumerate().skip(first_item) {
        let (item_id, old_item_id, read) = match &works[index] {
            EventWork::NoItemWork => {
                handled.push(no_item_work(event));
                continue;
            }
            EventWork::Gone {
                cause,
                item_id,
                old_item_id,
            } => (item_id, old_item_id, Read::Gone(*cause)),
            EventWork::Read {
                item_id,
                old_item_id,
            } => {
                let answer = match &items {
                    Ok(items) => items.get(item_id),
                    Err(e) => return Err((index, e.clone().into())),
                };
                let read = match answer {
                    Some(Ok(item)) => Read::Item(item.clone()),
                    Some(Err(e)) if e.is_item_not_found() => {
                        if moved_on(&events[index + 1..], item_id) {
                            Read::MovedOn
                        } else {
                            Read::Gone(GoneCause::NotFound)
                        }
                    }
                    Some(Err(e)) => return Err((index, e.clone().into())),
                    None => {
                        return Err((
                            index,
                            StepError::Other(format!("GetItem gave no answer for {item_id}")),
                        ))
                    }
                };
                (item_id, old_item_id, read)
            }
        };
        let reservation = lookup(&known, item_id, old_item_id.as_deref());
        let settled = settle(
            shared,
            Subject {
                mailbox,
                calendar_folder_id: &calendar,
                item_id,
                old_item_id: old_item_id.as_deref(),
                read,
                reservation,
                gone_items: None,
            },
        )
        .await
        .map_err(|e| (index, e))?;
        if let Some(reservation) = &settled.reservation {
            remember(&mut known, reservation);
        }
        if settled.changed {
            if let Some(metrics) = &shared.metrics {
                metrics.changed(settled.decision.change_cause());
            }
        }
        tracing::debug!(
            event = event.id,
            kind = event.kind.as_str(),
            item_id = %item_id,
            decision = ?settled.decision,
            "event settled"
        );
        handled.push(Handled {
            id: event.id,
            outcome: settled.decision.outcome(),
            received_at: event.received_at,
        });
    }
    Ok(())
}

/// The reservation linked to a move's old id, else to the item's id, as last known.
fn lookup(
    known: &HashMap<String, Option<Reservation>>,
    item_id: &str,
    old_item_id: Option<&str>,
) -> Option<(Reservation, FoundBy)> {
    let linked_to = |id: &str| {
        known
            .get(id)
            .and_then(Option::as_ref)
            .filter(|r| r.item_id.as_deref() == Some(id))
            .cloned()
    };
    if let Some(reservation) = old_item_id.and_then(linked_to) {
        return Some((reservation, FoundBy::OldItemId));
    }
    linked_to(item_id).map(|reservation| (reservation, FoundBy::ItemId))
}

/// Keeps what settling left: later events of the batch see the reservation as it now stands
/// (as of the item they share), under the item it is now linked to.
fn remember(known: &mut HashMap<String, Option<Reservation>>, reservation: &Reservation) {
    for value in known.values_mut() {
        if value.as_ref().is_some_and(|r| r.id == reservation.id) {
            *value = None;
        }
    }
    if let Some(item_id) = &reservation.item_id {
        known.insert(item_id.clone(), Some(reservation.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::ObjectId;
    use crate::store::EventState;

    fn object(kind: ObjectKind, id: &str) -> Option<ObjectId> {
        Some(ObjectId {
            kind,
            id: id.into(),
            change_key: Some("DwAAAA==".into()),
        })
    }

    fn event(kind: EventKind, item: Option<&str>, parent: &str) -> StoredEvent {
        StoredEvent {
            id: 1,
            tenant: "default".into(),
            subscription_id: "S".into(),
            previous_watermark: None,
            watermark: Some("W".into()),
            dedupe_key: "W".into(),
            position: 0,
            kind,
            object: item.and_then(|id| object(ObjectKind::Item, id)),
            parent_folder_id: object(ObjectKind::Folder, parent),
            old_object: None,
            old_parent_folder_id: None,
            unread_count: None,
            event_time: None,
            received_at: OffsetDateTime::UNIX_EPOCH,
            request_id: None,
            state: EventState::Pending,
            processed_at: None,
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
        }
    }

    fn moved(from: &str, to: &str, parent: &str) -> StoredEvent {
        let mut e = event(EventKind::Moved, Some(to), parent);
        e.old_object = object(ObjectKind::Item, from);
        e.old_parent_folder_id = object(ObjectKind::Folder, "CAL");
        e
    }

    #[test]
    fn heartbeats_and_folder_events_need_no_item_work() {
        assert_eq!(
            event_work(&event(EventKind::Status, None, "CAL"), "CAL"),
            EventWork::NoItemWork
        );
        let mut folder = event(EventKind::Modified, None, "ROOT");
        folder.object = object(ObjectKind::Folder, "CAL");
        assert_eq!(event_work(&folder, "CAL"), EventWork::NoItemWork);
    }

    #[test]
    fn items_are_read_deletions_and_moves_out_are_not() {
        for kind in [EventKind::Created, EventKind::Modified, EventKind::Copied] {
            assert_eq!(
                event_work(&event(kind, Some("A"), "CAL"), "CAL"),
                EventWork::Read {
                    item_id: "A".into(),
                    old_item_id: None
                }
            );
        }
        assert_eq!(
            event_work(&event(EventKind::Deleted, Some("A"), "CAL"), "CAL"),
            EventWork::Gone {
                cause: GoneCause::Deleted,
                item_id: "A".into(),
                old_item_id: None
            }
        );
        assert_eq!(
            event_work(&moved("A", "B", "DELETED"), "CAL"),
            EventWork::Gone {
                cause: GoneCause::MovedOut,
                item_id: "B".into(),
                old_item_id: Some("A".into())
            }
        );
        assert_eq!(
            event_work(&moved("A", "B", "CAL"), "CAL"),
            EventWork::Read {
                item_id: "B".into(),
                old_item_id: Some("A".into())
            }
        );
        // A copy's original keeps its reservation: no old id to follow.
        let mut copy = event(EventKind::Copied, Some("C"), "CAL");
        copy.old_object = object(ObjectKind::Item, "A");
        assert_eq!(
            event_work(&copy, "CAL"),
            EventWork::Read {
                item_id: "C".into(),
                old_item_id: None
            }
        );
    }

    #[test]
    fn a_later_move_makes_not_found_say_nothing() {
        let later = [
            event(EventKind::Modified, None, "ROOT"),
            moved("A", "B", "CAL"),
        ];
        assert!(moved_on(&later, "A"));
        assert!(!moved_on(&later, "B"));
        assert!(!moved_on(&[], "A"));
    }

    fn reservation(id: &str, item: &str) -> Reservation {
        use crate::store::{ChangeSource, LastChange, ReservationStatus, SyncState};
        Reservation {
            id: id.into(),
            tenant: "default".into(),
            mailbox: "room1@contoso.com".into(),
            resource: "Room 1".into(),
            subject: "s".into(),
            start: OffsetDateTime::UNIX_EPOCH,
            end: OffsetDateTime::UNIX_EPOCH + time::Duration::HOUR,
            status: ReservationStatus::Active,
            source: ChangeSource::Web,
            item_id: Some(item.into()),
            change_key: None,
            sync_state: SyncState::Synced,
            version: 1,
            last_change: LastChange::Web,
            last_error: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            write_pending: false,
        }
    }

    #[test]
    fn lookups_prefer_the_old_id_and_follow_what_settling_left() {
        let mut known = HashMap::new();
        known.insert("A".to_string(), Some(reservation("r1", "A")));
        known.insert("B".to_string(), None);
        let (r, by) = lookup(&known, "B", Some("A")).unwrap();
        assert_eq!((r.id.as_str(), by), ("r1", FoundBy::OldItemId));
        assert!(lookup(&known, "B", None).is_none());
        // The move was followed: A no longer finds it, B does.
        remember(&mut known, &reservation("r1", "B"));
        assert!(lookup(&known, "A", None).is_none());
        let (r, by) = lookup(&known, "B", Some("A")).unwrap();
        assert_eq!((r.item_id.as_deref(), by), (Some("B"), FoundBy::ItemId));
    }
}
