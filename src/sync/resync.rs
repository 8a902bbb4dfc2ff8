//! Reading a mailbox's calendar again (after a fresh subscription, or `pushgate sync resync`):
//! FindItem CalendarView over the `[sync]` window, both sides repaired by the same decisions as
//! events; also the search for the item carrying a reservation id.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::decide::{FoundBy, GoneCause};
use super::settle::{settle, Read, Subject};
use super::{Shared, StepError};
use crate::ews::{CalendarItem, CalendarView, ItemId};
use crate::store::{ChangeSource, Lease, Reservation, ResyncRequest, SyncState};

/// Longest CalendarView window: Exchange refuses more than two years
/// (ErrorCalendarViewRangeTooBig); 700 days stays clear of leap years.
const MAX_VIEW: time::Duration = time::Duration::days(700);
/// A truncated window is halved until it is this short; shorter, what came back is taken.
const MIN_VIEW: time::Duration = time::Duration::minutes(1);
/// Items per FindItem answer.
const MAX_ENTRIES: u32 = 500;
/// Resync requests taken per round.
const RESYNC_BATCH: usize = 4;

/// `[from, to)` cut into windows of at most `max`, in order.
pub fn view_windows(
    from: OffsetDateTime,
    to: OffsetDateTime,
    max: time::Duration,
) -> Vec<(OffsetDateTime, OffsetDateTime)> {
    let mut windows = Vec::new();
    let mut start = from;
    while start < to && max > time::Duration::ZERO {
        let end = (start + max).min(to);
        windows.push((start, end));
        start = end;
    }
    windows
}

pub(super) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let poll = shared.poll_interval();
    while !*shutdown.borrow() {
        let now = shared.options.clock.now();
        let hold = shared.options.lease.saturating_mul(4);
        let lease = Lease {
            owner: shared.options.owner.clone(),
            until: now + time::Duration::try_from(hold).unwrap_or(time::Duration::HOUR),
        };
        let requests = match shared.store.take_resyncs(now, &lease, RESYNC_BATCH).await {
            Ok(requests) => requests,
            Err(error) => {
                tracing::warn!(%error, "cannot read resync requests");
                Vec::new()
            }
        };
        if requests.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
            continue;
        }
        for request in requests {
            // A resync is reads and idempotent repairs: stopping half-way loses nothing (the
            // request stays and is taken again once the hold expires).
            let outcome = tokio::select! {
                outcome = resync_mailbox(&shared, &request) => outcome,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            finish(&shared, &request, outcome).await;
        }
    }
}

/// What a resync repaired.
#[derive(Debug, Default)]
struct Repairs {
    items: usize,
    changed: usize,
    cancelled: usize,
    linked: usize,
    requeued: usize,
}

async fn finish(shared: &Shared, request: &ResyncRequest, outcome: Result<Repairs, StepError>) {
    let now = shared.options.clock.now();
    match outcome {
        Ok(repairs) => {
            tracing::info!(
                mailbox = %request.address,
                items = repairs.items,
                changed = repairs.changed,
                cancelled = repairs.cancelled,
                linked = repairs.linked,
                requeued = repairs.requeued,
                "calendar resynchronised"
            );
            if let Some(metrics) = &shared.metrics {
                metrics.resync(true);
            }
            if repairs.requeued > 0 {
                shared.outbox_wake.notify_one();
            }
            if let Err(error) = shared
                .store
                .finish_resync(&request.address, request.requested_at, now)
                .await
            {
                tracing::warn!(%error, mailbox = %request.address, "resync not recorded; it runs again");
            }
        }
        Err(error) => {
            let wait = shared
                .options
                .clock
                .span(Duration::from_secs(300))
                .max(error.back_off().unwrap_or_default());
            tracing::warn!(mailbox = %request.address, %error, retry_in = ?wait, "resync failed; will retry");
            if let Some(metrics) = &shared.metrics {
                metrics.resync(false);
            }
            let until = now + time::Duration::try_from(wait).unwrap_or(time::Duration::HOUR);
            if let Err(error) = shared
                .store
                .defer_resync(&request.address, &shared.options.owner, until)
                .await
            {
                tracing::warn!(%error, mailbox = %request.address, "resync failure not recorded");
            }
        }
    }
}

async fn resync_mailbox(shared: &Shared, request: &ResyncRequest) -> Result<Repairs, StepError> {
    let mailbox = request.address.as_str();
    let calendar = shared.calendar_folder_id(mailbox).await?;
    let now = shared.options.clock.now();
    let from = now - time::Duration::days(i64::from(shared.options.resync_past_days));
    let to = now + time::Duration::days(i64::from(shared.options.resync_future_days));
    // The reservations first, then the calendar: an item read after its reservation is never
    // older than it (see `settle`).
    let reservations = shared
        .store
        .active_reservations_in(mailbox, from, to)
        .await?;
    let items = read_window(shared, mailbox, from, to).await?;
    let mut repairs = Repairs {
        items: items.len(),
        ..Repairs::default()
    };
    let by_item: HashMap<&str, &Reservation> = reservations
        .iter()
        .filter_map(|r| r.item_id.as_deref().map(|id| (id, r)))
        .collect();

    // Linked items the window did not show: moved in time, out of the calendar, or gone.
    let seen: HashSet<&str> = items.iter().map(|i| i.item_id.id.as_str()).collect();
    let missing: Vec<ItemId> = reservations
        .iter()
        .filter_map(|r| r.item_id.as_deref())
        .filter(|id| !seen.contains(id))
        .map(ItemId::new)
        .collect();
    let mut gone = HashSet::new();
    let mut elsewhere = Vec::new();
    if !missing.is_empty() {
        let answers = shared
            .ews
            .get_calendar_items(mailbox, &missing, &shared.options.property)
            .await?;
        for (id, answer) in missing.iter().zip(answers) {
            match answer {
                Ok(item) => elsewhere.push(item),
                Err(e) if e.is_item_not_found() => {
                    gone.insert(id.id.clone());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    let mut settled_reservations = HashSet::new();
    for item in items.iter().chain(elsewhere.iter()) {
        let reservation = by_item
            .get(item.item_id.id.as_str())
            .map(|r| ((*r).clone(), FoundBy::ItemId));
        let settled = settle(
            shared,
            Subject {
                mailbox,
                calendar_folder_id: &calendar,
                item_id: &item.item_id.id,
                old_item_id: None,
                read: Read::Item(item.clone()),
                reservation,
                gone_items: Some(&gone),
            },
        )
        .await?;
        count(shared, &settled, &mut repairs);
        if let Some(reservation) = &settled.reservation {
            settled_reservations.insert(reservation.id.clone());
        }
    }
    // Linked items that are gone, and no item carrying the reservation took their place.
    for reservation in &reservations {
        let Some(item_id) = reservation.item_id.as_deref() else {
            continue;
        };
        if !gone.contains(item_id) || settled_reservations.contains(&reservation.id) {
            continue;
        }
        let settled = settle(
            shared,
            Subject {
                mailbox,
                calendar_folder_id: &calendar,
                item_id,
                old_item_id: None,
                read: Read::Gone(GoneCause::NotFound),
                reservation: Some((reservation.clone(), FoundBy::ItemId)),
                gone_items: Some(&gone),
            },
        )
        .await?;
        count(shared, &settled, &mut repairs);
        settled_reservations.insert(reservation.id.clone());
    }
    // Web reservations whose write was given up (never written, or not the latest change): the
    // outbox tries again.
    let now = shared.options.clock.now();
    for reservation in &reservations {
        let given_up = reservation.sync_state == SyncState::Failed && !reservation.write_pending;
        let never_written = reservation.source == ChangeSource::Web
            && reservation.item_id.is_none()
            && !reservation.write_pending;
        if (given_up || never_written)
            && !settled_reservations.contains(&reservation.id)
            && shared
                .store
                .requeue_reservation(&reservation.id, now)
                .await?
                .is_some()
        {
            repairs.requeued += 1;
        }
    }
    Ok(repairs)
}

fn count(shared: &Shared, settled: &super::settle::Settled, repairs: &mut Repairs) {
    match settled.decision.outcome() {
        "cancelled" => repairs.cancelled += 1,
        "linked" => repairs.linked += 1,
        "updated" => repairs.changed += 1,
        _ => {}
    }
    if settled.changed {
        if let Some(metrics) = &shared.metrics {
            metrics.changed(settled.decision.change_cause());
        }
    }
}

/// Every calendar item overlapping `[from, to)`, each once. A truncated answer splits its
/// window. Items that come back without the reservation property are read once more with GetItem
/// (Exchange may leave extended properties out of FindItem answers).
pub(super) async fn read_window(
    shared: &Shared,
    mailbox: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<CalendarItem>, StepError> {
    let mut pending = view_windows(from, to, MAX_VIEW);
    pending.reverse();
    let mut items: Vec<CalendarItem> = Vec::new();
    let mut seen = HashSet::new();
    while let Some((start, end)) = pending.pop() {
        let view = CalendarView {
            start,
            end,
            max_entries: MAX_ENTRIES,
        };
        let page = shared
            .ews
            .find_calendar_items(mailbox, &view, &shared.options.property)
            .await?;
        if !page.includes_last_item_in_range && end - start > MIN_VIEW * 2 {
            let middle = start + (end - start) / 2;
            pending.push((middle, end));
            pending.push((start, middle));
            continue;
        }
        if !page.includes_last_item_in_range {
            tracing::warn!(mailbox, %start, %end, "more than {MAX_ENTRIES} items in a minute; the rest is not read");
        }
        for item in page.items {
            if seen.insert(item.item_id.id.clone()) {
                items.push(item);
            }
        }
    }
    let unmarked: Vec<ItemId> = items
        .iter()
        .filter(|i| i.reservation_id.is_none())
        .map(|i| ItemId::new(i.item_id.id.clone()))
        .collect();
    if !unmarked.is_empty() {
        let answers = shared
            .ews
            .get_calendar_items(mailbox, &unmarked, &shared.options.property)
            .await?;
        let read: HashMap<String, CalendarItem> = answers
            .into_iter()
            .filter_map(Result::ok)
            .map(|item| (item.item_id.id.clone(), item))
            .collect();
        for item in &mut items {
            if let Some(fresh) = read.get(&item.item_id.id) {
                item.reservation_id.clone_from(&fresh.reservation_id);
            }
        }
    }
    Ok(items)
}

/// The calendar item carrying `reservation`'s id, if there is one: looked for before any
/// CreateItem that may repeat one whose answer was lost. The window covers the resync window and
/// the reservation's own (the item has the times of the create, which later web changes may have
/// moved).
pub(super) async fn find_reservation_item(
    shared: &Shared,
    reservation: &Reservation,
) -> Result<Option<CalendarItem>, StepError> {
    let now = shared.options.clock.now();
    let from = (now - time::Duration::days(i64::from(shared.options.resync_past_days)))
        .min(reservation.start - time::Duration::DAY);
    let to = (now + time::Duration::days(i64::from(shared.options.resync_future_days)))
        .max(reservation.end + time::Duration::DAY);
    let calendar = shared.calendar_folder_id(&reservation.mailbox).await?;
    let items = read_window(shared, &reservation.mailbox, from, to).await?;
    let mut carrying = items.into_iter().filter(|item| {
        item.reservation_id.as_deref() == Some(reservation.id.as_str())
            && item
                .parent_folder_id
                .as_deref()
                .is_none_or(|parent| parent == calendar)
    });
    let found = carrying.next();
    if found.is_some() && carrying.next().is_some() {
        tracing::warn!(reservation = %reservation.id, "several items carry the reservation id; linking the first");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn windows_cover_the_range_in_order_within_the_maximum() {
        let from = datetime!(2026-11-24 00:00 UTC);
        let to = from + time::Duration::days(372 + 1000);
        let windows = view_windows(from, to, MAX_VIEW);
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].0, from);
        assert_eq!(windows[1].1, to);
        assert_eq!(windows[0].1, windows[1].0);
        assert!(windows.iter().all(|(s, e)| *e - *s <= MAX_VIEW && s < e));
        assert_eq!(
            view_windows(from, from + time::Duration::days(372), MAX_VIEW).len(),
            1
        );
        assert!(view_windows(from, from, MAX_VIEW).is_empty());
        assert!(view_windows(to, from, MAX_VIEW).is_empty());
    }
}
