//! Deciding and applying for one item, shared by the event loop and the resync, with the ordering
//! rule that keeps changes from being lost: fields are taken from an item only with a reservation
//! read before it, applied only if the reservation still has that version.

use std::collections::HashSet;

use super::decide::{decide, is_empty, Decision, FoundBy, GoneCause, ItemState, Situation};
use super::{Shared, StepError};
use crate::ews::{CalendarItem, ItemId};
use crate::store::{ApplyResult, Reservation};

/// The item as it was read.
#[derive(Debug, Clone)]
pub(crate) enum Read {
    Item(CalendarItem),
    Gone(GoneCause),
    MovedOn,
}

impl Read {
    fn state(&self) -> ItemState<'_> {
        match self {
            Read::Item(item) => ItemState::Read(item),
            Read::Gone(cause) => ItemState::Gone(*cause),
            Read::MovedOn => ItemState::MovedOn,
        }
    }
}

/// One item to settle.
pub(crate) struct Subject<'a> {
    pub mailbox: &'a str,
    pub calendar_folder_id: &'a str,
    /// The id the item has now (an event's item, a move's new id).
    pub item_id: &'a str,
    /// A move's old id.
    pub old_item_id: Option<&'a str>,
    pub read: Read,
    /// The reservation linked to the item id or the old id, read before the item.
    pub reservation: Option<(Reservation, FoundBy)>,
    /// Items a resync found gone (ErrorItemNotFound).
    pub gone_items: Option<&'a HashSet<String>>,
}

/// What settling did.
#[derive(Debug, Clone)]
pub(crate) struct Settled {
    pub decision: Decision,
    /// The reservation as it now stands, when there is one.
    pub reservation: Option<Reservation>,
    /// Its version moved.
    pub changed: bool,
}

/// Rounds of read, decide, apply: the first with what the caller read, one more after a
/// conflict or to read the item again after its reservation.
const ROUNDS: usize = 2;

/// Decides for the item and applies the decision. An item read before its reservation may be
/// older than a web change made in between: a decision taking fields from it is applied only
/// with a reservation read before the item, and only if the reservation still has that version;
/// otherwise both are read again, the reservation first (the second GetItem of a changed item, at
/// most).
pub(crate) async fn settle(
    shared: &Shared,
    mut subject: Subject<'_>,
) -> Result<Settled, StepError> {
    let mut read = subject.read.clone();
    let mut fresh = subject.reservation.is_some();
    let mut found = match subject.reservation.take() {
        Some(found) => Some(found),
        None => by_property(shared, subject.mailbox, &read).await?,
    };
    for round in 0..ROUNDS {
        let linked_item_gone = match (&found, subject.gone_items) {
            (Some((reservation, _)), Some(gone)) => reservation
                .item_id
                .as_ref()
                .is_some_and(|id| gone.contains(id)),
            _ => false,
        };
        let decision = decide(&Situation {
            item: read.state(),
            calendar_folder_id: subject.calendar_folder_id,
            reservation: found.as_ref().map(|(r, by)| (r, *by)),
            linked_item_gone,
        });
        let Some((reservation, _)) = &found else {
            return Ok(Settled {
                decision,
                reservation: None,
                changed: false,
            });
        };
        let Some(outcome) = decision.to_outcome(reservation) else {
            return Ok(Settled {
                decision,
                reservation: Some(reservation.clone()),
                changed: false,
            });
        };
        let last = round + 1 == ROUNDS;
        let takes_fields = decision.fields().is_some_and(|f| !is_empty(f));
        if takes_fields && !fresh {
            if last {
                return Err(StepError::Other(
                    "the reservation was read after its item twice".into(),
                ));
            }
            // Found by the item's property, so read after the item: read both again, the
            // reservation first.
            let current = shared.store.reservation(&reservation.id).await?;
            (found, read) = reread(shared, &subject, current, read).await?;
            fresh = true;
            continue;
        }
        let now = shared.options.clock.now();
        match shared.store.apply_exchange(&outcome, now).await? {
            ApplyResult::Applied {
                reservation,
                changed,
            } => {
                return Ok(Settled {
                    decision,
                    reservation: Some(reservation),
                    changed,
                })
            }
            ApplyResult::Unchanged(reservation) => {
                return Ok(Settled {
                    decision,
                    reservation: Some(reservation),
                    changed: false,
                })
            }
            ApplyResult::NotFound => {
                return Ok(Settled {
                    decision,
                    reservation: None,
                    changed: false,
                })
            }
            ApplyResult::Conflict(current) => {
                if last {
                    return Err(StepError::Other(format!(
                        "reservation {} changed while its item was read, twice",
                        current.id
                    )));
                }
                (found, read) = reread(shared, &subject, Some(current), read).await?;
                fresh = true;
            }
        }
    }
    Err(StepError::Other("no decision settled".into()))
}

/// The reservation named by the item's property, if it belongs to this mailbox.
async fn by_property(
    shared: &Shared,
    mailbox: &str,
    read: &Read,
) -> Result<Option<(Reservation, FoundBy)>, StepError> {
    let Read::Item(item) = read else {
        return Ok(None);
    };
    let Some(reservation_id) = item.reservation_id.as_deref() else {
        return Ok(None);
    };
    Ok(shared
        .store
        .reservation(reservation_id)
        .await?
        .filter(|r| r.mailbox.eq_ignore_ascii_case(mailbox))
        .map(|r| (r, FoundBy::Property)))
}

/// The item read again after `current` (already read): a gone item stays gone.
async fn reread(
    shared: &Shared,
    subject: &Subject<'_>,
    current: Option<Reservation>,
    read: Read,
) -> Result<(Option<(Reservation, FoundBy)>, Read), StepError> {
    let read = match read {
        Read::Item(item) => {
            let ids = [ItemId::new(item.item_id.id.clone())];
            let mut answers = shared
                .ews
                .get_calendar_items(subject.mailbox, &ids, &shared.options.property)
                .await?;
            match answers.pop() {
                Some(Ok(item)) => Read::Item(item),
                Some(Err(e)) if e.is_item_not_found() => Read::Gone(GoneCause::NotFound),
                Some(Err(e)) => return Err(e.into()),
                None => return Err(StepError::Other("GetItem answered nothing".into())),
            }
        }
        other => other,
    };
    let found = current
        .and_then(|reservation| found_by(&reservation, subject, &read).map(|by| (reservation, by)));
    Ok((found, read))
}

/// How `reservation` relates to the item, if it still does.
fn found_by(reservation: &Reservation, subject: &Subject<'_>, read: &Read) -> Option<FoundBy> {
    let linked = reservation.item_id.as_deref();
    if linked == Some(subject.item_id) {
        return Some(FoundBy::ItemId);
    }
    if linked.is_some() && linked == subject.old_item_id {
        return Some(FoundBy::OldItemId);
    }
    match read {
        Read::Item(item)
            if item.reservation_id.as_deref() == Some(reservation.id.as_str())
                && reservation.mailbox.eq_ignore_ascii_case(subject.mailbox) =>
        {
            Some(FoundBy::Property)
        }
        _ => None,
    }
}
