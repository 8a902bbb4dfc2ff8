//! Web changes to the calendar (B2, D2): claims outbox rows and brings each item to its
//! reservation's current state with one CreateItem, UpdateItem or DeleteItem, storing the ItemId
//! and ChangeKey answered; a CreateItem whose outcome is unknown is never repeated blindly.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::decide::whole_seconds;
use super::resync::find_reservation_item;
use super::{Shared, StepError};
use crate::ews::{
    CalendarItem, CalendarItemChanges, DeleteType, EwsError, ItemId, NewCalendarItem, ResponseCode,
};
use crate::store::{
    ChangeSource, ItemLink, LastChange, Lease, OutboxClaim, OutboxRetry, Reservation,
    ReservationStatus,
};

pub(super) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let poll = shared.poll_interval();
    let most = shared.options.outbox_batch.max(1);
    // Writes in flight, one per reservation (the claim's lease): a slow one does not hold up
    // the others.
    let mut writes: JoinSet<()> = JoinSet::new();
    while !*shutdown.borrow() {
        let room = most.saturating_sub(writes.len());
        let mut full = false;
        if room > 0 {
            let now = shared.options.clock.now();
            let lease = Lease {
                owner: shared.options.owner.clone(),
                until: now
                    + time::Duration::try_from(shared.options.lease)
                        .unwrap_or(time::Duration::MINUTE),
            };
            match shared.store.claim_outbox(now, room, &lease).await {
                Ok(claims) => {
                    full = claims.len() == room;
                    for claim in claims {
                        let shared = shared.clone();
                        writes.spawn(async move { write_one(&shared, claim).await });
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot claim calendar writes; retrying"),
            }
        }
        if full && writes.len() < most {
            continue;
        }
        tokio::select! {
            Some(_) = writes.join_next(), if !writes.is_empty() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = shared.outbox_wake.notified(), if writes.len() < most => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
    // A write in flight is let finish (each is bounded by the EWS timeout): its answer must be
    // recorded, or the next worker cannot know what happened.
    while writes.join_next().await.is_some() {}
}

/// Why a write did not finish.
struct Failed {
    error: StepError,
    /// A CreateItem may have happened.
    create_outcome_unknown: bool,
}

impl From<StepError> for Failed {
    fn from(error: StepError) -> Self {
        Failed {
            error,
            create_outcome_unknown: false,
        }
    }
}

impl From<EwsError> for Failed {
    fn from(error: EwsError) -> Self {
        StepError::from(error).into()
    }
}

async fn write_one(shared: &Shared, claim: OutboxClaim) {
    let reservation = &claim.reservation;
    let result = bring_item_to(shared, &claim).await;
    let now = shared.options.clock.now();
    match result {
        Ok(link) => {
            if let Err(error) = shared
                .store
                .finish_outbox(&reservation.id, reservation.version, link.as_ref(), now)
                .await
            {
                // The lease expires and the row is written again: an UpdateItem with the stale
                // ChangeKey then meets a conflict and finds the item already right; a lost
                // CreateItem answer was noted before the call, so the item is looked for.
                tracing::warn!(%error, reservation = %reservation.id, "calendar write not recorded");
            }
        }
        Err(failed) => {
            let attempts = claim.row.attempts.saturating_add(1);
            // An outage is waited out, however long: only a write Exchange refuses for itself
            // is given up.
            let give_up = attempts >= shared.options.max_attempts && !failed.error.is_outage();
            let wait = shared.retry_delay(attempts, failed.error.back_off());
            let retry = OutboxRetry {
                error: failed.error.to_string(),
                next_attempt_at: now
                    + time::Duration::try_from(wait).unwrap_or(time::Duration::HOUR),
                create_outcome_unknown: claim.row.create_outcome_unknown
                    || failed.create_outcome_unknown,
                failed: give_up,
            };
            if give_up {
                tracing::error!(reservation = %reservation.id, attempts, error = %retry.error, "calendar write given up (sync_state failed)");
            } else {
                tracing::warn!(reservation = %reservation.id, attempts, retry_in = ?wait, error = %retry.error, "calendar write failed; will retry");
            }
            if let Err(error) = shared.store.retry_outbox(claim.row.id, &retry, now).await {
                tracing::warn!(%error, reservation = %reservation.id, "failed calendar write not recorded");
            }
        }
    }
}

/// Makes the item what the reservation (as claimed) says; the item to link, if it changed.
async fn bring_item_to(shared: &Shared, claim: &OutboxClaim) -> Result<Option<ItemLink>, Failed> {
    let reservation = &claim.reservation;
    let unknown = claim.row.create_outcome_unknown;
    if reservation.status == ReservationStatus::Cancelled {
        return delete(shared, reservation, unknown).await;
    }
    match reservation.item_id.as_deref() {
        Some(item_id) if unknown => {
            // Linked since a CreateItem's answer was lost (the item's own notification found
            // it): write only what differs.
            let item = read_item(shared, reservation, item_id).await?;
            repair(shared, reservation, &item, "found_item_repair")
                .await
                .map(Some)
        }
        Some(item_id) => update(shared, reservation, item_id).await.map(Some),
        None if unknown => match find_reservation_item(shared, reservation).await? {
            Some(item) => {
                tracing::info!(reservation = %reservation.id, item_id = %item.item_id.id, "found the item of an earlier CreateItem; linking it");
                repair(shared, reservation, &item, "found_item_repair")
                    .await
                    .map(Some)
            }
            None if reservation.source == ChangeSource::Addin => Err(StepError::Other(
                "waiting for Outlook to write the add-in's item".into(),
            )
            .into()),
            None => create(shared, reservation).await.map(Some),
        },
        None => create(shared, reservation).await.map(Some),
    }
}

async fn create(shared: &Shared, reservation: &Reservation) -> Result<ItemLink, Failed> {
    // Noted before the call: if this worker dies before the answer is recorded, the next
    // attempt looks for the item instead of making a second one.
    shared
        .store
        .note_create_attempt(&reservation.id, shared.options.clock.now())
        .await
        .map_err(StepError::from)?;
    let item = NewCalendarItem {
        subject: reservation.subject.clone(),
        start: reservation.start,
        end: reservation.end,
        location: Some(reservation.resource.clone()),
        reservation_id: reservation.id.clone(),
    };
    count_write(shared, "CreateItem", "web_create");
    match shared
        .ews
        .create_calendar_item(&reservation.mailbox, &item, &shared.options.property)
        .await
    {
        Ok(id) => Ok(link_of(&id)),
        Err(error) => Err(Failed {
            create_outcome_unknown: error.outcome_unknown(),
            error: error.into(),
        }),
    }
}

/// UpdateItem with the stored ChangeKey; on a conflict (the item changed since: an Outlook edit,
/// or our own earlier write whose answer was lost) the item is read and only a difference is
/// written, over the fresh ChangeKey: the web change wins.
async fn update(
    shared: &Shared,
    reservation: &Reservation,
    item_id: &str,
) -> Result<ItemLink, Failed> {
    let id = ItemId {
        id: item_id.to_string(),
        change_key: reservation.change_key.clone(),
    };
    count_write(shared, "UpdateItem", "web_change");
    match shared
        .ews
        .update_calendar_item(
            &reservation.mailbox,
            &id,
            &all_fields(reservation),
            &shared.options.property,
        )
        .await
    {
        Ok(id) => Ok(link_of(&id)),
        Err(EwsError::ResponseCode {
            code: ResponseCode::IrresolvableConflict,
            ..
        }) => {
            let item = read_item(shared, reservation, item_id).await?;
            repair(shared, reservation, &item, "conflict_retry").await
        }
        Err(error) => Err(error.into()),
    }
}

/// The item `item_id` as it is now; gone is a failure to retry (its notification cancels the
/// reservation or follows a move meanwhile).
async fn read_item(
    shared: &Shared,
    reservation: &Reservation,
    item_id: &str,
) -> Result<CalendarItem, Failed> {
    let mut answers = shared
        .ews
        .get_calendar_items(
            &reservation.mailbox,
            &[ItemId::new(item_id)],
            &shared.options.property,
        )
        .await?;
    match answers.pop() {
        Some(Ok(item)) => Ok(item),
        Some(Err(error)) => Err(error.into()),
        None => Err(StepError::Other("GetItem answered nothing".into()).into()),
    }
}

/// Writes what differs between the item and the reservation, with the item's ChangeKey.
async fn repair(
    shared: &Shared,
    reservation: &Reservation,
    item: &CalendarItem,
    cause: &'static str,
) -> Result<ItemLink, Failed> {
    let changes = item_changes(reservation, item);
    if changes.is_empty() {
        return Ok(link_of(&item.item_id));
    }
    count_write(shared, "UpdateItem", cause);
    let id = shared
        .ews
        .update_calendar_item(
            &reservation.mailbox,
            &item.item_id,
            &changes,
            &shared.options.property,
        )
        .await?;
    Ok(link_of(&id))
}

/// D2: the item moves to Deleted Items. Already gone is done.
async fn delete(
    shared: &Shared,
    reservation: &Reservation,
    create_outcome_unknown: bool,
) -> Result<Option<ItemLink>, Failed> {
    if reservation.last_change == LastChange::Exchange {
        // Cancelled because the item was deleted or cancelled in Exchange: nothing to write.
        return Ok(None);
    }
    let (item_id, cause) = match reservation.item_id.as_deref() {
        Some(item_id) => (ItemId::new(item_id), "web_cancel"),
        None if create_outcome_unknown => match find_reservation_item(shared, reservation).await? {
            Some(item) => (ItemId::new(item.item_id.id), "found_item_cancel"),
            None => return Ok(None),
        },
        // Never written: nothing to delete.
        None => return Ok(None),
    };
    count_write(shared, "DeleteItem", cause);
    match shared
        .ews
        .delete_calendar_item(
            &reservation.mailbox,
            &item_id,
            DeleteType::MoveToDeletedItems,
        )
        .await
    {
        Ok(()) => Ok(None),
        Err(error) if error.is_item_not_found() => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn count_write(shared: &Shared, operation: &str, cause: &str) {
    if let Some(metrics) = &shared.metrics {
        metrics.write(operation, cause);
    }
}

fn link_of(id: &ItemId) -> ItemLink {
    ItemLink {
        item_id: id.id.clone(),
        change_key: id.change_key.clone(),
    }
}

/// Every field the service writes: the item becomes the reservation.
fn all_fields(reservation: &Reservation) -> CalendarItemChanges {
    CalendarItemChanges {
        subject: Some(reservation.subject.clone()),
        start: Some(reservation.start),
        end: Some(reservation.end),
        location: Some(Some(reservation.resource.clone())),
        reservation_id: None,
    }
}

/// Only the fields in which the item differs from the reservation (Location from the resource;
/// the property when the item lacks it).
pub fn item_changes(reservation: &Reservation, item: &CalendarItem) -> CalendarItemChanges {
    let differs_at = |mine: time::OffsetDateTime, theirs: Option<time::OffsetDateTime>| match theirs
    {
        Some(theirs) => whole_seconds(theirs) != whole_seconds(mine),
        None => true,
    };
    CalendarItemChanges {
        subject: (item.subject.as_deref() != Some(reservation.subject.as_str()))
            .then(|| reservation.subject.clone()),
        start: differs_at(reservation.start, item.start).then_some(reservation.start),
        end: differs_at(reservation.end, item.end).then_some(reservation.end),
        location: (item.location.as_deref() != Some(reservation.resource.as_str()))
            .then(|| Some(reservation.resource.clone())),
        reservation_id: (item.reservation_id.as_deref() != Some(reservation.id.as_str()))
            .then(|| reservation.id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LastChange, SyncState};
    use time::macros::datetime;

    fn reservation() -> Reservation {
        Reservation {
            id: "res-1".into(),
            tenant: "default".into(),
            mailbox: "room1@contoso.com".into(),
            resource: "Room 1".into(),
            subject: "Planning".into(),
            start: datetime!(2026-12-02 09:00 UTC),
            end: datetime!(2026-12-02 10:00 UTC),
            status: ReservationStatus::Active,
            source: ChangeSource::Web,
            item_id: Some("A".into()),
            change_key: Some("CK1".into()),
            sync_state: SyncState::Pending,
            version: 2,
            last_change: LastChange::Web,
            last_error: None,
            created_at: datetime!(2026-12-01 09:00 UTC),
            updated_at: datetime!(2026-12-01 09:00 UTC),
            write_pending: true,
        }
    }

    fn item() -> CalendarItem {
        CalendarItem {
            item_id: ItemId::with_change_key("A", "CK2"),
            parent_folder_id: Some("CAL".into()),
            subject: Some("Planning".into()),
            start: Some(datetime!(2026-12-02 10:00 +01:00)),
            end: Some(datetime!(2026-12-02 10:00:00.5 UTC)),
            location: Some("Room 1".into()),
            is_cancelled: false,
            reservation_id: Some("res-1".into()),
        }
    }

    #[test]
    fn an_item_that_already_is_the_reservation_needs_no_write() {
        assert!(item_changes(&reservation(), &item()).is_empty());
    }

    #[test]
    fn only_differences_are_written() {
        let mut outlook = item();
        outlook.subject = Some("Changed in Outlook".into());
        outlook.location = None;
        outlook.reservation_id = None;
        outlook.end = None;
        let changes = item_changes(&reservation(), &outlook);
        assert_eq!(changes.subject.as_deref(), Some("Planning"));
        assert_eq!(changes.start, None);
        assert_eq!(changes.end, Some(datetime!(2026-12-02 10:00 UTC)));
        assert_eq!(changes.location, Some(Some("Room 1".into())));
        assert_eq!(changes.reservation_id.as_deref(), Some("res-1"));
    }

    #[test]
    fn a_web_change_writes_every_field() {
        let changes = all_fields(&reservation());
        assert_eq!(changes.subject.as_deref(), Some("Planning"));
        assert_eq!(changes.location, Some(Some("Room 1".into())));
        assert!(changes.start.is_some() && changes.end.is_some());
        assert_eq!(changes.reservation_id, None);
    }
}
