//! The values the client takes and gives: items, ids, the reservation property, views. Plain data,
//! no I/O.

use time::OffsetDateTime;

/// The GUID of the PublicStrings property set (PS_PUBLIC_STRINGS). Exchange may answer with this
/// `PropertySetId` form where the request said `DistinguishedPropertySetId="PublicStrings"`.
pub const PUBLIC_STRINGS_GUID: &str = "00020329-0000-0000-C000-000000000046";

/// Exchange's limits on `t:StatusFrequency` (minutes), from the schema.
pub const STATUS_FREQUENCY_MINUTES: std::ops::RangeInclusive<u16> = 1..=1440;

/// Exchange refuses push URLs longer than this (ErrorInvalidPushSubscriptionUrl).
pub const MAX_PUSH_URL_CHARS: usize = 2082;

/// The EWS operations the client calls; `name()` is the SOAP body element and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Subscribe,
    GetItem,
    CreateItem,
    UpdateItem,
    DeleteItem,
    FindItem,
    GetFolder,
}

impl Operation {
    pub const ALL: [Operation; 7] = [
        Operation::Subscribe,
        Operation::GetItem,
        Operation::CreateItem,
        Operation::UpdateItem,
        Operation::DeleteItem,
        Operation::FindItem,
        Operation::GetFolder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Subscribe => "Subscribe",
            Operation::GetItem => "GetItem",
            Operation::CreateItem => "CreateItem",
            Operation::UpdateItem => "UpdateItem",
            Operation::DeleteItem => "DeleteItem",
            Operation::FindItem => "FindItem",
            Operation::GetFolder => "GetFolder",
        }
    }

    /// Reads change nothing in Exchange, so the client may repeat them after a transient failure.
    /// Subscribe creates a subscription and counts as a write.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Operation::GetItem | Operation::FindItem | Operation::GetFolder
        )
    }
}

/// A push subscription on the mailbox's calendar folder (Created, Modified, Deleted, Moved and
/// Copied events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscriptionRequest {
    /// Resume after this watermark: Exchange replays every event since. None: from now on.
    pub watermark: Option<String>,
    /// Heartbeat interval and retry horizon, 1–1440 minutes.
    pub status_frequency_minutes: u16,
    /// Where Exchange delivers notifications (http or https, at most 2,082 characters).
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeResult {
    pub subscription_id: String,
    pub watermark: String,
}

/// An item's id; the change key is its version (it changes with every modification).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemId {
    pub id: String,
    pub change_key: Option<String>,
}

impl ItemId {
    pub fn new(id: impl Into<String>) -> Self {
        ItemId {
            id: id.into(),
            change_key: None,
        }
    }

    pub fn with_change_key(id: impl Into<String>, change_key: impl Into<String>) -> Self {
        ItemId {
            id: id.into(),
            change_key: Some(change_key.into()),
        }
    }
}

/// The extended property that links a calendar item to its reservation: PublicStrings property
/// set, `PropertyName = name`, `PropertyType = String`. The same triple is written and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationProperty {
    pub name: String,
}

impl ReservationProperty {
    pub fn new(name: impl Into<String>) -> Self {
        ReservationProperty { name: name.into() }
    }
}

/// A calendar item as GetItem or FindItem returns it. Fields Exchange left out are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarItem {
    pub item_id: ItemId,
    pub parent_folder_id: Option<String>,
    pub subject: Option<String>,
    pub start: Option<OffsetDateTime>,
    pub end: Option<OffsetDateTime>,
    pub location: Option<String>,
    pub is_cancelled: bool,
    /// The reservation property's value, when the item carries it.
    pub reservation_id: Option<String>,
}

/// A calendar item to create, linked to its reservation. Times are sent in UTC, whole seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCalendarItem {
    pub subject: String,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub location: Option<String>,
    pub reservation_id: String,
}

/// What to change on an item; `None` leaves a field alone. `location: Some(None)` removes the
/// location. `reservation_id` sets (or repairs) the link to a reservation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalendarItemChanges {
    pub subject: Option<String>,
    pub start: Option<OffsetDateTime>,
    pub end: Option<OffsetDateTime>,
    pub location: Option<Option<String>>,
    pub reservation_id: Option<String>,
}

impl CalendarItemChanges {
    pub fn is_empty(&self) -> bool {
        self.subject.is_none()
            && self.start.is_none()
            && self.end.is_none()
            && self.location.is_none()
            && self.reservation_id.is_none()
    }
}

/// How DeleteItem disposes of an item (always with `SendMeetingCancellations=SendToNone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteType {
    /// Gone for good (the Purges folder).
    HardDelete,
    /// Into the dumpster's Deletions folder.
    SoftDelete,
    /// Into Deleted Items, from where a user can restore it.
    MoveToDeletedItems,
}

impl DeleteType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteType::HardDelete => "HardDelete",
            DeleteType::SoftDelete => "SoftDelete",
            DeleteType::MoveToDeletedItems => "MoveToDeletedItems",
        }
    }
}

/// The window a FindItem CalendarView covers: items with `end > start` and `start < end`,
/// recurring series expanded. Exchange has no paging offset: when a page is truncated, split the
/// window. At most two years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalendarView {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub max_entries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarViewPage {
    pub items: Vec<CalendarItem>,
    /// False: the window held more than `max_entries` items and this page is truncated.
    pub includes_last_item_in_range: bool,
}

/// Whom a request acts for, and how: with impersonation, the SOAP header names the mailbox and
/// `DistinguishedFolderId calendar` means its calendar; without, the folder id names the mailbox
/// (delegate access).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox<'a> {
    pub address: &'a str,
    pub impersonation: bool,
}
