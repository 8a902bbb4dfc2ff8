//! What one calendar item, as Exchange shows it now, means for its reservation: nothing (same
//! ChangeKey, no difference), a link (C6), an update (F2), a cancellation (E/F), a followed move,
//! or nothing of ours. Pure: the event loop and the resync read, decide here, apply elsewhere.

use time::OffsetDateTime;

use crate::ews::CalendarItem;
use crate::store::{
    ExchangeOutcome, ItemFields, ItemLink, Reservation, ReservationStatus, SyncState,
};

/// How the reservation was found for the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// It is linked to this item id.
    ItemId,
    /// It is linked to the id the item had before a move (MovedEvent's OldItemId).
    OldItemId,
    /// The item's reservation property names it (and it is a reservation of this mailbox).
    Property,
}

/// Why an item counts as gone from the calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoneCause {
    /// DeletedEvent: removed for good (a hard delete).
    Deleted,
    /// MovedEvent out of the calendar: Outlook's delete (to Deleted Items) or Exchange Online's
    /// soft delete (to the recoverable items).
    MovedOut,
    /// GetItem answered ErrorItemNotFound, and no later event moves the item on.
    NotFound,
    /// The organiser cancelled the meeting (IsCancelled).
    IsCancelled,
}

impl GoneCause {
    pub const ALL: [GoneCause; 4] = [
        GoneCause::Deleted,
        GoneCause::MovedOut,
        GoneCause::NotFound,
        GoneCause::IsCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GoneCause::Deleted => "deleted",
            GoneCause::MovedOut => "moved_out",
            GoneCause::NotFound => "not_found",
            GoneCause::IsCancelled => "is_cancelled",
        }
    }
}

/// The item as the sync step knows it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState<'a> {
    /// Read with GetItem (or FindItem, in a resync).
    Read(&'a CalendarItem),
    /// Gone from the calendar without being read: a DeletedEvent, a MovedEvent whose new parent
    /// folder is not the calendar, or ErrorItemNotFound.
    Gone(GoneCause),
    /// ErrorItemNotFound, but a later event of the same subscription moves the item on: that
    /// event says where it went, this one says nothing.
    MovedOn,
}

/// Everything the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    pub item: ItemState<'a>,
    /// The mailbox calendar's own folder id (GetFolder).
    pub calendar_folder_id: &'a str,
    /// The reservation found for the item, and how (by item id first, else by the property).
    pub reservation: Option<(&'a Reservation, FoundBy)>,
    /// The item the found reservation is linked to is known to be gone (a resync read it and got
    /// ErrorItemNotFound): an item carrying its property is where it went.
    pub linked_item_gone: bool,
}

/// Why an item event changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// No reservation is linked to the item and its property names none of this mailbox's.
    NotOurs,
    /// The property names a reservation linked to another item: a copy.
    LinkedElsewhere,
    /// The reservation is cancelled: a restored or later edited item never revives it.
    ReservationCancelled,
    /// A web change of the reservation is not yet written to the item (pending, retrying or
    /// given up): the web change wins, its write follows and overwrites the item.
    WebWriteOwed,
    /// The item is gone from this id, and a later event moves it on.
    MovedOn,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::NotOurs => "not_ours",
            IgnoreReason::LinkedElsewhere => "linked_elsewhere",
            IgnoreReason::ReservationCancelled => "reservation_cancelled",
            IgnoreReason::WebWriteOwed => "web_write_owed",
            IgnoreReason::MovedOn => "moved_on",
        }
    }
}

/// What to do with the reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The item has the ChangeKey stored: it has not changed since (our own write's echo).
    NoopSameChangeKey,
    /// The item changed, but not in the synced fields: store its new ChangeKey (when it has one)
    /// without a version bump.
    NoopNoDifference {
        new_change_key: Option<ItemLink>,
    },
    /// C6: the item carries the reservation id; link it (and take the fields that differ).
    Link {
        item: ItemLink,
        fields: ItemFields,
    },
    /// F2: the synced fields differ; the reservation takes them, `last_change = exchange`.
    Update {
        item: ItemLink,
        fields: ItemFields,
    },
    /// The item moved and stays in the calendar: the reservation follows it to its new id.
    FollowMove {
        item: ItemLink,
        fields: ItemFields,
    },
    /// E/F: the item is gone from the calendar or cancelled; so is the reservation. `link` links
    /// the item when the reservation was found by its property.
    Cancel {
        cause: GoneCause,
        link: Option<ItemLink>,
    },
    Ignore(IgnoreReason),
}

/// Every value of the `outcome` label of `pushgate_sync_events_total` a decision gives.
pub const DECISION_OUTCOMES: [&str; 6] = [
    "noop_same_changekey",
    "noop_no_difference",
    "linked",
    "updated",
    "cancelled",
    "ignored",
];

impl Decision {
    /// The metric label: a followed move counts as `linked` (a new item id is linked).
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::NoopSameChangeKey => "noop_same_changekey",
            Decision::NoopNoDifference { .. } => "noop_no_difference",
            Decision::Link { .. } | Decision::FollowMove { .. } => "linked",
            Decision::Update { .. } => "updated",
            Decision::Cancel { .. } => "cancelled",
            Decision::Ignore(_) => "ignored",
        }
    }

    /// Fields the decision takes from the item.
    pub fn fields(&self) -> Option<&ItemFields> {
        match self {
            Decision::Link { fields, .. }
            | Decision::Update { fields, .. }
            | Decision::FollowMove { fields, .. } => Some(fields),
            _ => None,
        }
    }

    /// What to write for `reservation` (read before the item, or re-read: the store applies it
    /// only if the reservation still has that version). `None`: nothing to write.
    pub fn to_outcome(&self, reservation: &Reservation) -> Option<ExchangeOutcome> {
        let outcome = |item: Option<&ItemLink>, fields: &ItemFields, cancel: bool| {
            Some(ExchangeOutcome {
                reservation_id: reservation.id.clone(),
                expected_version: reservation.version,
                item: item.cloned(),
                fields: fields.clone(),
                cancel,
            })
        };
        match self {
            Decision::NoopSameChangeKey | Decision::Ignore(_) => None,
            Decision::NoopNoDifference { new_change_key } => new_change_key
                .as_ref()
                .and_then(|link| outcome(Some(link), &ItemFields::default(), false)),
            Decision::Link { item, fields }
            | Decision::Update { item, fields }
            | Decision::FollowMove { item, fields } => outcome(Some(item), fields, false),
            Decision::Cancel { link, .. } => outcome(link.as_ref(), &ItemFields::default(), true),
        }
    }

    /// The cause label of `pushgate_reservations_changed_total` when applying this decision
    /// changed the reservation (its version moved).
    pub fn change_cause(&self) -> &'static str {
        match self {
            Decision::Cancel { cause, .. } => cause.as_str(),
            _ => "outlook_change",
        }
    }
}

/// Every value of the `cause` label of `pushgate_reservations_changed_total`.
pub const CHANGE_CAUSES: [&str; 5] = [
    "outlook_change",
    "deleted",
    "moved_out",
    "not_found",
    "is_cancelled",
];

/// A web change the item does not have yet: pending or retrying in the outbox, or given up
/// (`failed`, until a resync or a later change queues it again).
pub fn web_write_owed(reservation: &Reservation) -> bool {
    reservation.write_pending || reservation.sync_state == SyncState::Failed
}

/// The decision for one item and the reservation found for it.
pub fn decide(situation: &Situation<'_>) -> Decision {
    let Some((reservation, by)) = situation.reservation else {
        return Decision::Ignore(IgnoreReason::NotOurs);
    };
    match situation.item {
        ItemState::MovedOn => Decision::Ignore(IgnoreReason::MovedOn),
        ItemState::Gone(cause) => {
            if by == FoundBy::Property {
                // Unreachable through the loops (a gone item has no property to read), but a
                // reservation found by a property alone is not proof this item was its own.
                return Decision::Ignore(IgnoreReason::NotOurs);
            }
            if reservation.status == ReservationStatus::Cancelled {
                // Our own DeleteItem's echo, or the add-in cancelled first (E3).
                Decision::NoopNoDifference {
                    new_change_key: None,
                }
            } else {
                Decision::Cancel { cause, link: None }
            }
        }
        ItemState::Read(item) => decide_read(item, reservation, by, situation),
    }
}

fn decide_read(
    item: &CalendarItem,
    reservation: &Reservation,
    found_by: FoundBy,
    situation: &Situation<'_>,
) -> Decision {
    let id = item.item_id.id.as_str();
    let mut by = found_by;
    if by == FoundBy::Property {
        match reservation.item_id.as_deref() {
            Some(linked) if linked == id => by = FoundBy::ItemId,
            // Its own item is gone: this one, carrying its id, is where it went.
            Some(_) if situation.linked_item_gone => by = FoundBy::OldItemId,
            // A copy (or an item given the property by hand): the reservation keeps its item.
            Some(_) => return Decision::Ignore(IgnoreReason::LinkedElsewhere),
            None => {}
        }
    }
    if by == FoundBy::ItemId
        && item.item_id.change_key.is_some()
        && item.item_id.change_key == reservation.change_key
    {
        return Decision::NoopSameChangeKey;
    }
    let in_calendar = item
        .parent_folder_id
        .as_deref()
        .is_none_or(|parent| parent == situation.calendar_folder_id);
    let link = ItemLink {
        item_id: id.to_string(),
        change_key: item.item_id.change_key.clone(),
    };
    if reservation.status == ReservationStatus::Cancelled {
        return if !in_calendar || item.is_cancelled {
            Decision::NoopNoDifference {
                new_change_key: None,
            }
        } else {
            // Restored from Deleted Items, or edited after the cancellation: a cancelled
            // reservation stays cancelled.
            Decision::Ignore(IgnoreReason::ReservationCancelled)
        };
    }
    if !in_calendar || item.is_cancelled {
        // A deletion or cancellation wins even over a web write still owed: a cancelled
        // reservation cannot be changed any more, and writing the web change would bring back an
        // item the user removed.
        let cause = if in_calendar {
            GoneCause::IsCancelled
        } else {
            GoneCause::MovedOut
        };
        return Decision::Cancel {
            cause,
            link: (by != FoundBy::ItemId).then_some(link),
        };
    }
    let owed = web_write_owed(reservation);
    let fields = if owed {
        ItemFields::default()
    } else {
        differences(reservation, item)
    };
    match by {
        FoundBy::ItemId if owed => Decision::Ignore(IgnoreReason::WebWriteOwed),
        FoundBy::ItemId if is_empty(&fields) => Decision::NoopNoDifference {
            new_change_key: link.change_key.is_some().then_some(link),
        },
        FoundBy::ItemId => Decision::Update { item: link, fields },
        FoundBy::OldItemId => Decision::FollowMove { item: link, fields },
        FoundBy::Property => Decision::Link { item: link, fields },
    }
}

pub fn is_empty(fields: &ItemFields) -> bool {
    fields.subject.is_none() && fields.start.is_none() && fields.end.is_none()
}

/// The synced fields in which the item differs from the reservation. Times compare in whole
/// seconds (calendars keep no fractions; the service writes whole seconds). A field the item
/// does not carry (Exchange leaves out what is not set) is no difference. An item shortened to
/// nothing (start = end, which Outlook allows) is mirrored; times that would end before they start
/// are not taken.
pub fn differences(reservation: &Reservation, item: &CalendarItem) -> ItemFields {
    let subject = item
        .subject
        .as_ref()
        .filter(|subject| **subject != reservation.subject)
        .cloned();
    let start = item.start.map(whole_seconds);
    let end = item.end.map(whole_seconds);
    let current_start = whole_seconds(reservation.start);
    let current_end = whole_seconds(reservation.end);
    let new_start = start.unwrap_or(current_start);
    let new_end = end.unwrap_or(current_end);
    let (start, end) = if new_start <= new_end {
        (
            start.filter(|s| *s != current_start),
            end.filter(|e| *e != current_end),
        )
    } else {
        (None, None)
    };
    ItemFields {
        subject,
        start,
        end,
    }
}

/// The instant in UTC without its fraction of a second.
pub fn whole_seconds(at: OffsetDateTime) -> OffsetDateTime {
    let utc = at.to_offset(time::UtcOffset::UTC);
    utc.replace_nanosecond(0).unwrap_or(utc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ews::ItemId;
    use crate::store::{ChangeSource, LastChange};
    use time::macros::datetime;

    const CALENDAR: &str = "CAL";
    const DELETED_ITEMS: &str = "DEL";

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
            sync_state: SyncState::Synced,
            version: 3,
            last_change: LastChange::Web,
            last_error: None,
            created_at: datetime!(2026-12-01 09:00 UTC),
            updated_at: datetime!(2026-12-01 09:00 UTC),
            write_pending: false,
        }
    }

    fn item(id: &str, key: &str) -> CalendarItem {
        CalendarItem {
            item_id: ItemId::with_change_key(id, key),
            parent_folder_id: Some(CALENDAR.into()),
            subject: Some("Planning".into()),
            start: Some(datetime!(2026-12-02 09:00 UTC)),
            end: Some(datetime!(2026-12-02 10:00 UTC)),
            location: Some("Room 1".into()),
            is_cancelled: false,
            reservation_id: Some("res-1".into()),
        }
    }

    fn decide_for(item: ItemState<'_>, reservation: Option<(&Reservation, FoundBy)>) -> Decision {
        decide(&Situation {
            item,
            calendar_folder_id: CALENDAR,
            reservation,
            linked_item_gone: false,
        })
    }

    fn link(id: &str, key: &str) -> ItemLink {
        ItemLink {
            item_id: id.into(),
            change_key: Some(key.into()),
        }
    }

    #[test]
    fn an_item_of_nobody_is_not_ours() {
        let read = item("A", "CK1");
        for state in [
            ItemState::Read(&read),
            ItemState::Gone(GoneCause::Deleted),
            ItemState::MovedOn,
        ] {
            assert_eq!(
                decide_for(state, None),
                Decision::Ignore(IgnoreReason::NotOurs)
            );
        }
    }

    #[test]
    fn the_echo_of_our_own_write_has_the_stored_change_key() {
        let r = reservation();
        let echo = item("A", "CK1");
        let decision = decide_for(ItemState::Read(&echo), Some((&r, FoundBy::ItemId)));
        assert_eq!(decision, Decision::NoopSameChangeKey);
        assert_eq!(decision.to_outcome(&r), None, "nothing is written");
        assert_eq!(decision.outcome(), "noop_same_changekey");
        // Even a cancelled reservation's item: unchanged since we saw it.
        let mut cancelled = r.clone();
        cancelled.status = ReservationStatus::Cancelled;
        assert_eq!(
            decide_for(ItemState::Read(&echo), Some((&cancelled, FoundBy::ItemId))),
            Decision::NoopSameChangeKey
        );
    }

    #[test]
    fn a_new_change_key_without_a_difference_is_stored_without_a_change() {
        let r = reservation();
        let mut touched = item("A", "CK2");
        touched.location = Some("Somewhere else".into()); // not a synced field
        touched.start = Some(datetime!(2026-12-02 09:00:00.400 UTC)); // same second
        let decision = decide_for(ItemState::Read(&touched), Some((&r, FoundBy::ItemId)));
        assert_eq!(
            decision,
            Decision::NoopNoDifference {
                new_change_key: Some(link("A", "CK2"))
            }
        );
        let outcome = decision.to_outcome(&r).unwrap();
        assert_eq!(outcome.expected_version, 3);
        assert_eq!(outcome.item, Some(link("A", "CK2")));
        assert!(is_empty(&outcome.fields) && !outcome.cancel);
        // No change key in the answer: nothing to store.
        let mut keyless = item("A", "x");
        keyless.item_id.change_key = None;
        let decision = decide_for(ItemState::Read(&keyless), Some((&r, FoundBy::ItemId)));
        assert_eq!(
            decision,
            Decision::NoopNoDifference {
                new_change_key: None
            }
        );
        assert_eq!(decision.to_outcome(&r), None);
    }

    #[test]
    fn an_outlook_change_updates_the_reservation() {
        let r = reservation();
        let mut changed = item("A", "CK2");
        changed.subject = Some("Board".into());
        changed.end = Some(datetime!(2026-12-02 11:00 UTC));
        let decision = decide_for(ItemState::Read(&changed), Some((&r, FoundBy::ItemId)));
        let fields = ItemFields {
            subject: Some("Board".into()),
            start: None,
            end: Some(datetime!(2026-12-02 11:00 UTC)),
        };
        assert_eq!(
            decision,
            Decision::Update {
                item: link("A", "CK2"),
                fields: fields.clone()
            }
        );
        assert_eq!(decision.outcome(), "updated");
        assert_eq!(decision.change_cause(), "outlook_change");
        let outcome = decision.to_outcome(&r).unwrap();
        assert_eq!(outcome.fields, fields);
        assert!(!outcome.cancel);
    }

    #[test]
    fn the_add_in_item_is_linked_by_its_property() {
        let mut r = reservation();
        r.source = ChangeSource::Addin;
        r.item_id = None;
        r.change_key = None;
        r.sync_state = SyncState::Pending;
        let booked = item("B", "CK1");
        let decision = decide_for(ItemState::Read(&booked), Some((&r, FoundBy::Property)));
        assert_eq!(
            decision,
            Decision::Link {
                item: link("B", "CK1"),
                fields: ItemFields::default()
            }
        );
        assert_eq!(decision.outcome(), "linked");
        // Changed in Outlook before the link: linked and updated at once.
        let mut moved = item("B", "CK2");
        moved.start = Some(datetime!(2026-12-02 08:00 UTC));
        let Decision::Link { fields, .. } =
            decide_for(ItemState::Read(&moved), Some((&r, FoundBy::Property)))
        else {
            panic!("a link");
        };
        assert_eq!(fields.start, Some(datetime!(2026-12-02 08:00 UTC)));
    }

    #[test]
    fn a_property_naming_a_reservation_linked_to_this_item_is_the_item_id_case() {
        let r = reservation();
        let same = item("A", "CK1");
        assert_eq!(
            decide_for(ItemState::Read(&same), Some((&r, FoundBy::Property))),
            Decision::NoopSameChangeKey
        );
    }

    #[test]
    fn a_copy_carrying_a_linked_reservation_is_ignored() {
        let r = reservation();
        let copy = item("COPY", "CK9");
        assert_eq!(
            decide_for(ItemState::Read(&copy), Some((&r, FoundBy::Property))),
            Decision::Ignore(IgnoreReason::LinkedElsewhere)
        );
        // Deleting the copy does not cancel the reservation either.
        let mut deleted_copy = copy.clone();
        deleted_copy.parent_folder_id = Some(DELETED_ITEMS.into());
        assert_eq!(
            decide_for(
                ItemState::Read(&deleted_copy),
                Some((&r, FoundBy::Property))
            ),
            Decision::Ignore(IgnoreReason::LinkedElsewhere)
        );
    }

    #[test]
    fn when_the_linked_item_is_gone_the_item_carrying_the_property_is_followed() {
        let r = reservation();
        let moved = item("NEW", "CK5");
        let decision = decide(&Situation {
            item: ItemState::Read(&moved),
            calendar_folder_id: CALENDAR,
            reservation: Some((&r, FoundBy::Property)),
            linked_item_gone: true,
        });
        assert_eq!(
            decision,
            Decision::FollowMove {
                item: link("NEW", "CK5"),
                fields: ItemFields::default()
            }
        );
    }

    #[test]
    fn a_move_within_the_calendar_is_followed() {
        let r = reservation();
        let mut moved = item("A2", "CK2");
        moved.subject = Some("Renamed".into());
        let decision = decide_for(ItemState::Read(&moved), Some((&r, FoundBy::OldItemId)));
        assert_eq!(
            decision,
            Decision::FollowMove {
                item: link("A2", "CK2"),
                fields: ItemFields {
                    subject: Some("Renamed".into()),
                    ..ItemFields::default()
                }
            }
        );
        assert_eq!(decision.outcome(), "linked");
        // With a web write owed: followed, its fields not taken.
        let mut owed = r.clone();
        owed.write_pending = true;
        assert_eq!(
            decide_for(ItemState::Read(&moved), Some((&owed, FoundBy::OldItemId))),
            Decision::FollowMove {
                item: link("A2", "CK2"),
                fields: ItemFields::default()
            }
        );
    }

    #[test]
    fn deletions_cancel() {
        let r = reservation();
        for cause in [GoneCause::Deleted, GoneCause::MovedOut, GoneCause::NotFound] {
            for by in [FoundBy::ItemId, FoundBy::OldItemId] {
                let decision = decide_for(ItemState::Gone(cause), Some((&r, by)));
                assert_eq!(decision, Decision::Cancel { cause, link: None });
                assert_eq!(decision.outcome(), "cancelled");
                assert_eq!(decision.change_cause(), cause.as_str());
                let outcome = decision.to_outcome(&r).unwrap();
                assert!(outcome.cancel);
                assert_eq!(outcome.item, None);
            }
        }
        // A gone item has no property: a reservation found that way is no proof.
        assert_eq!(
            decide_for(
                ItemState::Gone(GoneCause::NotFound),
                Some((&r, FoundBy::Property))
            ),
            Decision::Ignore(IgnoreReason::NotOurs)
        );
    }

    #[test]
    fn an_item_read_outside_the_calendar_cancels() {
        let r = reservation();
        let mut in_deleted_items = item("A9", "CK3");
        in_deleted_items.parent_folder_id = Some(DELETED_ITEMS.into());
        assert_eq!(
            decide_for(
                ItemState::Read(&in_deleted_items),
                Some((&r, FoundBy::OldItemId))
            ),
            Decision::Cancel {
                cause: GoneCause::MovedOut,
                link: Some(link("A9", "CK3"))
            }
        );
        let mut same_id = in_deleted_items.clone();
        same_id.item_id = ItemId::with_change_key("A", "CK3");
        assert_eq!(
            decide_for(ItemState::Read(&same_id), Some((&r, FoundBy::ItemId))),
            Decision::Cancel {
                cause: GoneCause::MovedOut,
                link: None
            }
        );
    }

    #[test]
    fn is_cancelled_cancels_and_links_an_unlinked_reservation() {
        let r = reservation();
        let mut cancelled = item("A", "CK2");
        cancelled.is_cancelled = true;
        assert_eq!(
            decide_for(ItemState::Read(&cancelled), Some((&r, FoundBy::ItemId))),
            Decision::Cancel {
                cause: GoneCause::IsCancelled,
                link: None
            }
        );
        let mut unlinked = r.clone();
        unlinked.item_id = None;
        unlinked.change_key = None;
        assert_eq!(
            decide_for(
                ItemState::Read(&cancelled),
                Some((&unlinked, FoundBy::Property))
            ),
            Decision::Cancel {
                cause: GoneCause::IsCancelled,
                link: Some(link("A", "CK2"))
            }
        );
    }

    #[test]
    fn a_deletion_wins_over_a_web_write_owed() {
        let mut r = reservation();
        r.write_pending = true;
        r.sync_state = SyncState::Retrying;
        assert_eq!(
            decide_for(
                ItemState::Gone(GoneCause::MovedOut),
                Some((&r, FoundBy::OldItemId))
            ),
            Decision::Cancel {
                cause: GoneCause::MovedOut,
                link: None
            }
        );
        let mut cancelled = item("A", "CK2");
        cancelled.is_cancelled = true;
        assert!(matches!(
            decide_for(ItemState::Read(&cancelled), Some((&r, FoundBy::ItemId))),
            Decision::Cancel {
                cause: GoneCause::IsCancelled,
                ..
            }
        ));
    }

    #[test]
    fn an_outlook_change_waits_for_a_web_write_owed() {
        let mut changed = item("A", "CK2");
        changed.subject = Some("Outlook's subject".into());
        for (pending, state) in [
            (true, SyncState::Pending),
            (true, SyncState::Retrying),
            (false, SyncState::Failed),
        ] {
            let mut r = reservation();
            r.write_pending = pending;
            r.sync_state = state;
            let decision = decide_for(ItemState::Read(&changed), Some((&r, FoundBy::ItemId)));
            assert_eq!(decision, Decision::Ignore(IgnoreReason::WebWriteOwed));
            assert_eq!(decision.to_outcome(&r), None);
        }
    }

    #[test]
    fn the_created_event_of_a_web_create_links_before_the_answer_is_stored() {
        // B: the notification can be handled before the CreateItem answer is recorded.
        let mut r = reservation();
        r.item_id = None;
        r.change_key = None;
        r.write_pending = true;
        r.sync_state = SyncState::Pending;
        let created = item("A", "CK1");
        assert_eq!(
            decide_for(ItemState::Read(&created), Some((&r, FoundBy::Property))),
            Decision::Link {
                item: link("A", "CK1"),
                fields: ItemFields::default()
            }
        );
    }

    #[test]
    fn a_cancelled_reservation_is_never_revived() {
        let mut r = reservation();
        r.status = ReservationStatus::Cancelled;
        let restored = item("A3", "CK7");
        for by in [FoundBy::OldItemId, FoundBy::Property] {
            let mut unlinked = r.clone();
            if by == FoundBy::Property {
                unlinked.item_id = None;
            }
            assert_eq!(
                decide_for(ItemState::Read(&restored), Some((&unlinked, by))),
                Decision::Ignore(IgnoreReason::ReservationCancelled)
            );
        }
        let mut edited = item("A", "CK8");
        edited.subject = Some("Back again".into());
        assert_eq!(
            decide_for(ItemState::Read(&edited), Some((&r, FoundBy::ItemId))),
            Decision::Ignore(IgnoreReason::ReservationCancelled)
        );
        // The echo of our DeleteItem, or E3 after the add-in cancelled: no difference.
        for state in [
            ItemState::Gone(GoneCause::MovedOut),
            ItemState::Gone(GoneCause::Deleted),
        ] {
            assert_eq!(
                decide_for(state, Some((&r, FoundBy::OldItemId))),
                Decision::NoopNoDifference {
                    new_change_key: None
                }
            );
        }
        let mut in_deleted_items = item("A4", "CK9");
        in_deleted_items.parent_folder_id = Some(DELETED_ITEMS.into());
        assert_eq!(
            decide_for(
                ItemState::Read(&in_deleted_items),
                Some((&r, FoundBy::OldItemId))
            ),
            Decision::NoopNoDifference {
                new_change_key: None
            }
        );
    }

    #[test]
    fn an_item_moved_on_says_nothing() {
        let r = reservation();
        assert_eq!(
            decide_for(ItemState::MovedOn, Some((&r, FoundBy::ItemId))),
            Decision::Ignore(IgnoreReason::MovedOn)
        );
    }

    #[test]
    fn differences_ignore_what_the_item_leaves_out_and_inverted_windows() {
        let r = reservation();
        let mut bare = item("A", "CK2");
        bare.subject = None;
        bare.start = None;
        bare.end = None;
        assert!(is_empty(&differences(&r, &bare)));
        let mut inverted = item("A", "CK2");
        inverted.start = Some(datetime!(2026-12-02 12:00 UTC));
        inverted.subject = Some("New".into());
        let fields = differences(&r, &inverted);
        assert_eq!(fields.subject.as_deref(), Some("New"));
        assert_eq!(
            (fields.start, fields.end),
            (None, None),
            "no inverted window"
        );
        let mut zero = item("A", "CK2");
        zero.end = zero.start;
        assert_eq!(
            differences(&r, &zero).end,
            Some(datetime!(2026-12-02 09:00 UTC)),
            "shortened to nothing: mirrored"
        );
        let mut offset = item("A", "CK2");
        offset.start = Some(datetime!(2026-12-02 10:00 +01:00));
        assert!(
            is_empty(&differences(&r, &offset)),
            "the same instant in another offset"
        );
        let mut later = item("A", "CK2");
        later.start = Some(datetime!(2026-12-02 09:30:00.900 +00:00));
        assert_eq!(
            differences(&r, &later).start,
            Some(datetime!(2026-12-02 09:30 UTC))
        );
    }

    #[test]
    fn outcome_labels_are_the_metric_s() {
        let decisions = [
            Decision::NoopSameChangeKey,
            Decision::NoopNoDifference {
                new_change_key: None,
            },
            Decision::Link {
                item: link("A", "K"),
                fields: ItemFields::default(),
            },
            Decision::Update {
                item: link("A", "K"),
                fields: ItemFields::default(),
            },
            Decision::Cancel {
                cause: GoneCause::Deleted,
                link: None,
            },
            Decision::Ignore(IgnoreReason::NotOurs),
        ];
        for decision in &decisions {
            assert!(DECISION_OUTCOMES.contains(&decision.outcome()));
            assert!(CHANGE_CAUSES.contains(&decision.change_cause()));
        }
    }
}
