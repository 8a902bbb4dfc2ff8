//! Reservations (what the web application and the Outlook add-in book) and the outbox of
//! calendar writes that follows every web change (processes B–F). The state changes are pure
//! functions over a row; each backend loads the row inside a transaction, applies one of them and
//! writes the row back together with the outbox row the rule asks for, in the same transaction.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::mailboxes::{truncate, Lease};
use super::timefmt::{format_utc, parse_utc, to_micros};
use super::StoreError;

/// Whether a reservation still holds its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationStatus {
    Active,
    Cancelled,
}

impl ReservationStatus {
    pub const ALL: [ReservationStatus; 2] =
        [ReservationStatus::Active, ReservationStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Active => "active",
            ReservationStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Who made a change through the API, and so who writes the calendar item: the service (`web`,
/// processes B and D) or Outlook with the add-in (`addin`, processes C and E).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeSource {
    Web,
    Addin,
}

impl ChangeSource {
    pub const ALL: [ChangeSource; 2] = [ChangeSource::Web, ChangeSource::Addin];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Web => "web",
            ChangeSource::Addin => "addin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    fn last_change(self) -> LastChange {
        match self {
            ChangeSource::Web => LastChange::Web,
            ChangeSource::Addin => LastChange::Addin,
        }
    }
}

/// Who made the last change of a reservation's synced fields or status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LastChange {
    Web,
    Addin,
    /// Found in the calendar item (process F).
    Exchange,
}

impl LastChange {
    pub const ALL: [LastChange; 3] = [LastChange::Web, LastChange::Addin, LastChange::Exchange];

    pub fn as_str(self) -> &'static str {
        match self {
            LastChange::Web => "web",
            LastChange::Addin => "addin",
            LastChange::Exchange => "exchange",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Where a reservation stands with its calendar item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncState {
    /// A web change waits for its write, or an add-in booking for its item to be seen.
    Pending,
    /// The item is written or linked and holds the reservation's state.
    Synced,
    /// The last write failed; it is retried after a back-off.
    Retrying,
    /// The write was given up after too many attempts (a later change or a resync tries again).
    Failed,
}

impl SyncState {
    pub const ALL: [SyncState; 4] = [
        SyncState::Pending,
        SyncState::Synced,
        SyncState::Retrying,
        SyncState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Pending => "pending",
            SyncState::Synced => "synced",
            SyncState::Retrying => "retrying",
            SyncState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Where one outbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    Pending,
    /// A write brought the item to this row's version or a later one.
    Done,
    /// Given up after too many attempts.
    Failed,
}

impl OutboxState {
    pub const ALL: [OutboxState; 3] =
        [OutboxState::Pending, OutboxState::Done, OutboxState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Done => "done",
            OutboxState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One row of `reservations`. Instants are kept to the microsecond (what both databases keep):
/// the rules truncate what they store, so a row answered is equal to the row read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// `res-` and 32 hex digits: the AppointmentOid the calendar item carries.
    pub id: String,
    pub tenant: String,
    /// The room mailbox's address, lower-cased.
    pub mailbox: String,
    pub resource: String,
    pub subject: String,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub status: ReservationStatus,
    /// Who created it, and so who created the calendar item.
    pub source: ChangeSource,
    pub item_id: Option<String>,
    pub change_key: Option<String>,
    pub sync_state: SyncState,
    /// 1 at creation, +1 for every change of subject, start, end, resource or status.
    pub version: i64,
    pub last_change: LastChange,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Not a column: an outbox row of this reservation is still pending (a web change not yet
    /// written to the item). The sync step leaves such a reservation alone on Exchange events:
    /// the web change wins and its write follows.
    pub write_pending: bool,
}

/// A reservation to create (validated by the caller, except for the mailbox, which is checked in
/// the transaction that creates the reservation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReservation {
    /// Made by [`new_reservation_id`].
    pub id: String,
    /// `None`: the mailbox's tenant.
    pub tenant: Option<String>,
    pub mailbox: String,
    pub resource: String,
    pub subject: String,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub source: ChangeSource,
}

/// A fresh reservation id: `res-` and the 32 hex digits of a v4 UUID.
pub fn new_reservation_id() -> String {
    format!("res-{}", uuid::Uuid::new_v4().simple())
}

/// Fields an API change sets (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReservationChange {
    pub subject: Option<String>,
    pub start: Option<OffsetDateTime>,
    pub end: Option<OffsetDateTime>,
    pub resource: Option<String>,
}

/// The synced fields as the calendar item has them (`None`: unchanged). The resource is not
/// among them: the item's Location is written from it, never read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFields {
    pub subject: Option<String>,
    pub start: Option<OffsetDateTime>,
    pub end: Option<OffsetDateTime>,
}

/// Which reservations a list holds. `from`/`to` keep those overlapping `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReservationFilter {
    pub mailbox: Option<String>,
    pub status: Option<ReservationStatus>,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

/// Where a list page ended: lists are in (start, id) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationCursor {
    pub start: OffsetDateTime,
    pub id: String,
}

impl ReservationCursor {
    pub fn after(reservation: &Reservation) -> Self {
        Self {
            start: reservation.start,
            id: reservation.id.clone(),
        }
    }

    /// The cursor as one string (the API wraps it further).
    pub fn key(&self) -> String {
        format!("{} {}", format_utc(self.start), self.id)
    }

    pub fn parse(key: &str) -> Option<Self> {
        let (start, id) = key.split_once(' ')?;
        if id.is_empty() {
            return None;
        }
        Some(Self {
            start: parse_utc(start).ok()?,
            id: id.to_string(),
        })
    }
}

/// A reservation written by an API call, with the outbox row written in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationWrite {
    pub reservation: Reservation,
    /// The outbox row (web changes that changed something), else `None`.
    pub outbox_id: Option<i64>,
    /// Did the call change anything (a repeated change or cancel does not)?
    pub changed: bool,
}

/// Why a reservation could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    #[error("no such reservation")]
    NotFound,
    #[error("the reservation is cancelled")]
    Cancelled(Box<Reservation>),
    #[error("no such mailbox")]
    UnknownMailbox,
    #[error("sync is off for the mailbox")]
    SyncOff,
    #[error("the mailbox belongs to tenant {mailbox_tenant}")]
    TenantMismatch { mailbox_tenant: String },
    /// After the change, start would not be before end.
    #[error("start must be before end")]
    EmptyWindow,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A calendar item, as the sync step links it to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLink {
    pub item_id: String,
    pub change_key: Option<String>,
}

/// What the sync step found in Exchange for one reservation, applied in one transaction if the
/// reservation still has `expected_version` (optimistic: the caller read it, decided, and
/// re-reads on a conflict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeOutcome {
    pub reservation_id: String,
    pub expected_version: i64,
    /// Store this item id and change key: link an item (C6), follow a move (new item id), or
    /// record a new change key. `None` keeps the stored ones.
    pub item: Option<ItemLink>,
    /// Fields changed in the item (F2): the reservation takes them, `last_change = exchange`.
    pub fields: ItemFields,
    /// The item is gone or cancelled (E/F): the reservation is cancelled.
    pub cancel: bool,
}

/// What [`ReservationStore::apply_exchange`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyResult {
    /// Written; `changed` says whether the version moved.
    Applied {
        reservation: Reservation,
        changed: bool,
    },
    /// Nothing differed from what is stored: nothing written.
    Unchanged(Reservation),
    /// The reservation is at another version than expected: nothing written; here it is as it
    /// now stands.
    Conflict(Reservation),
    NotFound,
}

/// One row of `outbox`: bring reservation `reservation_id`'s calendar item to (at least)
/// `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub reservation_id: String,
    pub version: i64,
    pub state: OutboxState,
    pub attempts: u32,
    pub next_attempt_at: OffsetDateTime,
    /// A CreateItem may have happened for this reservation (the answer was lost, or the add-in
    /// made the item): look for an item carrying the reservation id before any CreateItem. In a
    /// claim this is true when any of the reservation's rows not done says so.
    pub create_outcome_unknown: bool,
    pub last_error: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A claimed outbox row and its reservation as it stood at the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxClaim {
    pub row: OutboxRow,
    pub reservation: Reservation,
}

/// A failed write, for [`ReservationStore::retry_outbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRetry {
    pub error: String,
    pub next_attempt_at: OffsetDateTime,
    /// Set on every row of the reservation not yet done (see [`OutboxRow`]).
    pub create_outcome_unknown: bool,
    /// Give up: the row becomes `failed`, the reservation's `sync_state` too.
    pub failed: bool,
}

/// Counts for the sync metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncBacklog {
    pub events_pending: u64,
    /// Dead letters: events in state `failed`.
    pub events_dead: u64,
    pub outbox_pending: u64,
    pub outbox_failed: u64,
}

/// Reservations and their outbox.
#[async_trait]
pub trait ReservationStore: Send + Sync {
    /// Creates a reservation for a mailbox that is known and has sync on; with `source = web`
    /// the outbox row for its CreateItem is written in the same transaction.
    async fn create_reservation(
        &self,
        new: &NewReservation,
        now: OffsetDateTime,
    ) -> Result<ReservationWrite, ReservationError>;

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, StoreError>;

    /// Reservations matching `filter` in (start, id) order, after `after`, at most `limit`.
    async fn reservations(
        &self,
        filter: &ReservationFilter,
        after: Option<&ReservationCursor>,
        limit: usize,
    ) -> Result<Vec<Reservation>, StoreError>;

    /// Every active reservation of `mailbox` overlapping `[from, to)`, in start order (the
    /// resync's side of the comparison).
    async fn active_reservations_in(
        &self,
        mailbox: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<Reservation>, StoreError> {
        const PAGE: usize = 500;
        let filter = ReservationFilter {
            mailbox: Some(mailbox.to_string()),
            status: Some(ReservationStatus::Active),
            from: Some(from),
            to: Some(to),
        };
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.reservations(&filter, after.as_ref(), PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().map(ReservationCursor::after);
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// The reservation linked to this item of this mailbox.
    async fn reservation_by_item(
        &self,
        mailbox: &str,
        item_id: &str,
    ) -> Result<Option<Reservation>, StoreError>;

    /// Changes the fields given. The version moves only when a value differs; a web change that
    /// changed something writes its outbox row in the same transaction. A cancelled reservation
    /// is refused ([`ReservationError::Cancelled`]).
    async fn change_reservation(
        &self,
        id: &str,
        change: &ReservationChange,
        source: ChangeSource,
        now: OffsetDateTime,
    ) -> Result<ReservationWrite, ReservationError>;

    /// Cancels (idempotent: cancelling a cancelled reservation changes nothing); a web
    /// cancellation writes its outbox row (the item is deleted) in the same transaction.
    async fn cancel_reservation(
        &self,
        id: &str,
        source: ChangeSource,
        now: OffsetDateTime,
    ) -> Result<ReservationWrite, ReservationError>;

    /// Applies what Exchange showed, guarded by the expected version, in one transaction. Never
    /// writes an outbox row: the item already is what the reservation becomes.
    async fn apply_exchange(
        &self,
        outcome: &ExchangeOutcome,
        now: OffsetDateTime,
    ) -> Result<ApplyResult, StoreError>;

    /// Writes an outbox row at the current version unless one is pending (the resync's repair of
    /// a reservation whose item was never written, or an operator's retry of a failed one).
    /// Returns the new row's id.
    async fn requeue_reservation(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<i64>, StoreError>;

    /// Claims, for at most `limit` reservations, the oldest pending outbox row of each, oldest
    /// first: only rows that are due (`next_attempt_at <= now`) of reservations with no live
    /// lease. Claimed rows carry `lease` until finished, retried or expired.
    async fn claim_outbox(
        &self,
        now: OffsetDateTime,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<OutboxClaim>, StoreError>;

    /// The item now holds `written_version` (or the reservation is cancelled and its item
    /// deleted): every pending or failed row of the reservation up to that version becomes
    /// `done`, `item` (when given) is stored, `sync_state` becomes `synced` (or stays `pending`
    /// when a later change waits). Returns the reservation as it now stands.
    async fn finish_outbox(
        &self,
        reservation_id: &str,
        written_version: i64,
        item: Option<&ItemLink>,
        now: OffsetDateTime,
    ) -> Result<Option<Reservation>, StoreError>;

    /// A write failed: the row waits until `next_attempt_at` (or is given up), its lease is
    /// released, and the reservation shows `retrying` (or `failed`). False when the row is not
    /// pending (finished meanwhile by another write).
    async fn retry_outbox(
        &self,
        row_id: i64,
        retry: &OutboxRetry,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// A CreateItem for the reservation is about to be sent: every row of it not done is marked
    /// `create_outcome_unknown` first, so that if the answer is never recorded (the worker dies
    /// mid-call), the next write looks for the item instead of creating a second one. False when
    /// the reservation has no row that is not done.
    async fn note_create_attempt(
        &self,
        reservation_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// A reservation's outbox rows in id order.
    async fn outbox_rows(&self, reservation_id: &str) -> Result<Vec<OutboxRow>, StoreError>;

    async fn sync_backlog(&self) -> Result<SyncBacklog, StoreError>;
}

/// The `WHERE` conditions of a list query, only for what the filter and cursor set (so the
/// databases can use their indexes), with their text values in placeholder order. `text(n)` and
/// `time(n)` render placeholder `n` (from 1) for a backend.
pub(crate) fn list_conditions(
    filter: &ReservationFilter,
    after: Option<&ReservationCursor>,
    text: impl Fn(usize) -> String,
    time: impl Fn(usize) -> String,
) -> (String, Vec<String>) {
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    let mut bind = |value: String| {
        values.push(value);
        values.len()
    };
    if let Some(mailbox) = &filter.mailbox {
        conditions.push(format!("r.mailbox = {}", text(bind(mailbox.clone()))));
    }
    if let Some(status) = filter.status {
        conditions.push(format!("r.status = {}", text(bind(status.as_str().into()))));
    }
    if let Some(from) = filter.from {
        conditions.push(format!("r.end_at > {}", time(bind(format_utc(from)))));
    }
    if let Some(to) = filter.to {
        conditions.push(format!("r.start_at < {}", time(bind(format_utc(to)))));
    }
    if let Some(after) = after {
        let start = time(bind(format_utc(after.start)));
        let id = text(bind(after.id.clone()));
        conditions.push(format!(
            "(r.start_at > {start} OR (r.start_at = {start} AND r.id > {id}))"
        ));
    }
    let conditions = if conditions.is_empty() {
        "TRUE".to_string()
    } else {
        conditions.join(" AND ")
    };
    (conditions, values)
}

/// An outbox row a rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutboxInsert {
    pub version: i64,
    pub create_outcome_unknown: bool,
}

/// The row a rule produced and the outbox row to write with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    pub reservation: Reservation,
    pub changed: bool,
    pub outbox: Option<OutboxInsert>,
}

/// The mailbox a new reservation names, as stored: its tenant and whether sync is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailboxGate {
    pub tenant: String,
    pub sync: bool,
}

/// The tenant a new reservation gets, or why its mailbox cannot take one.
pub(crate) fn check_mailbox(
    mailbox: Option<MailboxGate>,
    tenant: Option<&str>,
) -> Result<String, ReservationError> {
    let mailbox = mailbox.ok_or(ReservationError::UnknownMailbox)?;
    if !mailbox.sync {
        return Err(ReservationError::SyncOff);
    }
    match tenant {
        // A reservation of one tenant in another tenant's mailbox is a mistake of the caller's,
        // not something to store.
        Some(tenant) if tenant != mailbox.tenant => Err(ReservationError::TenantMismatch {
            mailbox_tenant: mailbox.tenant,
        }),
        _ => Ok(mailbox.tenant),
    }
}

/// The outbox row a web change writes. A reservation the add-in booked and whose item is not
/// linked yet has an item Outlook made: the write must find it, never create a second one.
fn web_write(reservation: &Reservation) -> OutboxInsert {
    OutboxInsert {
        version: reservation.version,
        create_outcome_unknown: reservation.source == ChangeSource::Addin
            && reservation.item_id.is_none(),
    }
}

/// `sync_state` after a web change was queued: a write is now pending, unless an earlier one is
/// already pending or retrying (its back-off governs the reservation's writes).
fn queued(state: SyncState) -> SyncState {
    match state {
        SyncState::Synced | SyncState::Failed => SyncState::Pending,
        SyncState::Pending | SyncState::Retrying => state,
    }
}

/// The row a creation writes.
pub(crate) fn apply_create(new: &NewReservation, tenant: String, now: OffsetDateTime) -> Planned {
    let now = to_micros(now);
    let reservation = Reservation {
        id: new.id.clone(),
        tenant,
        mailbox: new.mailbox.clone(),
        resource: new.resource.clone(),
        subject: new.subject.clone(),
        start: to_micros(new.start),
        end: to_micros(new.end),
        status: ReservationStatus::Active,
        source: new.source,
        item_id: None,
        change_key: None,
        // Web: the CreateItem is pending. Add-in: the item Outlook writes is yet to be seen.
        sync_state: SyncState::Pending,
        version: 1,
        last_change: new.source.last_change(),
        last_error: None,
        created_at: now,
        updated_at: now,
        write_pending: new.source == ChangeSource::Web,
    };
    let outbox = (new.source == ChangeSource::Web).then(|| web_write(&reservation));
    Planned {
        reservation,
        changed: true,
        outbox,
    }
}

/// An API change. Only values that differ count; nothing differing writes nothing.
pub(crate) fn apply_change(
    current: Reservation,
    change: &ReservationChange,
    source: ChangeSource,
    now: OffsetDateTime,
) -> Result<Planned, ReservationError> {
    if current.status == ReservationStatus::Cancelled {
        return Err(ReservationError::Cancelled(Box::new(current)));
    }
    let mut next = current.clone();
    if let Some(subject) = &change.subject {
        next.subject = subject.clone();
    }
    if let Some(resource) = &change.resource {
        next.resource = resource.clone();
    }
    if let Some(start) = change.start {
        next.start = to_micros(start);
    }
    if let Some(end) = change.end {
        next.end = to_micros(end);
    }
    // Only a change of the times is held to start < end: a reservation Outlook shortened to
    // nothing (the calendar allows it) may still get a new subject.
    let times_changed = change.start.is_some() || change.end.is_some();
    if times_changed && next.start >= next.end {
        return Err(ReservationError::EmptyWindow);
    }
    if !fields_differ(&current, &next) {
        return Ok(Planned {
            reservation: current,
            changed: false,
            outbox: None,
        });
    }
    Ok(record_change(next, source, now))
}

/// A cancellation through the API (idempotent).
pub(crate) fn apply_cancel(
    current: Reservation,
    source: ChangeSource,
    now: OffsetDateTime,
) -> Planned {
    if current.status == ReservationStatus::Cancelled {
        return Planned {
            reservation: current,
            changed: false,
            outbox: None,
        };
    }
    let mut next = current;
    next.status = ReservationStatus::Cancelled;
    record_change(next, source, now)
}

fn fields_differ(a: &Reservation, b: &Reservation) -> bool {
    a.subject != b.subject
        || a.resource != b.resource
        || a.start != b.start
        || a.end != b.end
        || a.status != b.status
}

/// Counts a real API change and queues its write when the service writes the item.
fn record_change(mut next: Reservation, source: ChangeSource, now: OffsetDateTime) -> Planned {
    next.version += 1;
    next.last_change = source.last_change();
    next.updated_at = to_micros(now);
    let outbox = match source {
        ChangeSource::Web => {
            next.sync_state = queued(next.sync_state);
            next.write_pending = true;
            Some(web_write(&next))
        }
        // Outlook writes the item (E): nothing for the service to write.
        ChangeSource::Addin => None,
    };
    Planned {
        reservation: next,
        changed: true,
        outbox,
    }
}

/// What Exchange showed, applied to the stored row (which has `write_pending` filled in).
pub(crate) fn apply_exchange_rule(
    current: Reservation,
    outcome: &ExchangeOutcome,
    now: OffsetDateTime,
) -> ApplyResult {
    if current.version != outcome.expected_version {
        return ApplyResult::Conflict(current);
    }
    let mut next = current.clone();
    if let Some(item) = &outcome.item {
        next.item_id = Some(item.item_id.clone());
        next.change_key = item.change_key.clone();
    }
    // A cancelled reservation never changes from Exchange: a restored item does not revive it,
    // and a cancelled item's later edits are not bookings.
    if current.status == ReservationStatus::Active {
        let fields = &outcome.fields;
        if let Some(subject) = &fields.subject {
            next.subject = subject.clone();
        }
        if let Some(start) = fields.start {
            next.start = to_micros(start);
        }
        if let Some(end) = fields.end {
            next.end = to_micros(end);
        }
        if outcome.cancel {
            next.status = ReservationStatus::Cancelled;
        }
    }
    let changed = fields_differ(&current, &next);
    if changed {
        next.version += 1;
        next.last_change = LastChange::Exchange;
    }
    // The item holds what the reservation now says, unless a web write is still on its way.
    if next.item_id.is_some() && !next.write_pending {
        next.sync_state = SyncState::Synced;
        next.last_error = None;
    }
    if next == current {
        return ApplyResult::Unchanged(current);
    }
    next.updated_at = to_micros(now);
    ApplyResult::Applied {
        reservation: next,
        changed,
    }
}

/// A write brought the item to `written_version`; `later_pending` says whether rows of later
/// versions still wait.
pub(crate) fn apply_finish(
    mut current: Reservation,
    item: Option<&ItemLink>,
    later_pending: bool,
    now: OffsetDateTime,
) -> Reservation {
    if let Some(item) = item {
        current.item_id = Some(item.item_id.clone());
        current.change_key = item.change_key.clone();
    }
    current.write_pending = later_pending;
    current.sync_state = if later_pending {
        SyncState::Pending
    } else {
        SyncState::Synced
    };
    current.last_error = None;
    current.updated_at = to_micros(now);
    current
}

/// A write failed.
pub(crate) fn apply_retry(
    mut current: Reservation,
    retry: &OutboxRetry,
    now: OffsetDateTime,
) -> Reservation {
    current.sync_state = if retry.failed {
        SyncState::Failed
    } else {
        SyncState::Retrying
    };
    current.last_error = Some(truncate(&retry.error));
    current.updated_at = to_micros(now);
    current
}

/// What a requeue writes: nothing while a row is pending, else a row at the current version.
pub(crate) fn apply_requeue(current: Reservation, now: OffsetDateTime) -> Option<Planned> {
    if current.write_pending {
        return None;
    }
    let mut next = current;
    next.sync_state = queued(next.sync_state);
    next.write_pending = true;
    next.updated_at = to_micros(now);
    let outbox = Some(web_write(&next));
    Some(Planned {
        reservation: next,
        changed: false,
        outbox,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mailboxes::MAX_ERROR_CHARS;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);

    fn new(source: ChangeSource) -> NewReservation {
        NewReservation {
            id: "res-0123456789abcdef0123456789abcdef".into(),
            tenant: None,
            mailbox: "room1@contoso.com".into(),
            resource: "Room 1".into(),
            subject: "Planning".into(),
            start: datetime!(2026-12-02 09:00 UTC),
            end: datetime!(2026-12-02 10:00 UTC),
            source,
        }
    }

    fn created(source: ChangeSource) -> Reservation {
        apply_create(&new(source), "default".into(), NOW).reservation
    }

    fn later() -> OffsetDateTime {
        NOW + time::Duration::minutes(5)
    }

    #[test]
    fn ids_are_res_and_32_hex_digits() {
        let id = new_reservation_id();
        assert_eq!(id.len(), 36);
        assert!(id.starts_with("res-"));
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_reservation_id());
    }

    #[test]
    fn web_creations_queue_their_create_and_addin_ones_do_not() {
        let web = apply_create(&new(ChangeSource::Web), "default".into(), NOW);
        assert_eq!(
            web.outbox,
            Some(OutboxInsert {
                version: 1,
                create_outcome_unknown: false
            })
        );
        assert_eq!(web.reservation.version, 1);
        assert_eq!(web.reservation.sync_state, SyncState::Pending);
        assert_eq!(web.reservation.last_change, LastChange::Web);
        assert!(web.reservation.write_pending);
        let addin = apply_create(&new(ChangeSource::Addin), "default".into(), NOW);
        assert_eq!(addin.outbox, None);
        assert_eq!(addin.reservation.sync_state, SyncState::Pending);
        assert_eq!(addin.reservation.last_change, LastChange::Addin);
        assert!(!addin.reservation.write_pending);
    }

    #[test]
    fn the_mailbox_must_be_known_synced_and_of_the_same_tenant() {
        let gate = |sync| {
            Some(MailboxGate {
                tenant: "fabrikam".into(),
                sync,
            })
        };
        assert!(matches!(
            check_mailbox(None, None),
            Err(ReservationError::UnknownMailbox)
        ));
        assert!(matches!(
            check_mailbox(gate(false), None),
            Err(ReservationError::SyncOff)
        ));
        assert_eq!(check_mailbox(gate(true), None).unwrap(), "fabrikam");
        assert_eq!(
            check_mailbox(gate(true), Some("fabrikam")).unwrap(),
            "fabrikam"
        );
        assert!(matches!(
            check_mailbox(gate(true), Some("contoso")),
            Err(ReservationError::TenantMismatch { mailbox_tenant }) if mailbox_tenant == "fabrikam"
        ));
    }

    #[test]
    fn only_real_changes_count() {
        let mut current = created(ChangeSource::Web);
        current.sync_state = SyncState::Synced;
        current.write_pending = false;
        current.item_id = Some("AAMk1".into());
        let same = ReservationChange {
            subject: Some("Planning".into()),
            start: Some(current.start),
            ..Default::default()
        };
        let planned = apply_change(current.clone(), &same, ChangeSource::Web, later()).unwrap();
        assert!(!planned.changed);
        assert_eq!(planned.outbox, None);
        assert_eq!(planned.reservation, current, "not even updated_at moves");

        let moved = ReservationChange {
            end: Some(datetime!(2026-12-02 11:00 UTC)),
            ..Default::default()
        };
        let planned = apply_change(current.clone(), &moved, ChangeSource::Web, later()).unwrap();
        assert!(planned.changed);
        assert_eq!(planned.reservation.version, 2);
        assert_eq!(planned.reservation.updated_at, later());
        assert_eq!(planned.reservation.sync_state, SyncState::Pending);
        assert_eq!(
            planned.outbox,
            Some(OutboxInsert {
                version: 2,
                create_outcome_unknown: false
            })
        );

        let addin = apply_change(current.clone(), &moved, ChangeSource::Addin, later()).unwrap();
        assert_eq!(addin.reservation.version, 2);
        assert_eq!(addin.reservation.last_change, LastChange::Addin);
        assert_eq!(addin.outbox, None, "Outlook writes the item");
        assert_eq!(addin.reservation.sync_state, SyncState::Synced);
    }

    #[test]
    fn a_change_may_not_empty_the_window() {
        let current = created(ChangeSource::Web);
        let change = ReservationChange {
            start: Some(datetime!(2026-12-02 10:00 UTC)),
            ..Default::default()
        };
        assert!(matches!(
            apply_change(current, &change, ChangeSource::Web, later()),
            Err(ReservationError::EmptyWindow)
        ));
    }

    #[test]
    fn a_reservation_shortened_to_nothing_in_outlook_can_still_change() {
        let mut current = created(ChangeSource::Addin);
        current.end = current.start;
        let planned = apply_change(
            current.clone(),
            &subject_change("x"),
            ChangeSource::Web,
            NOW,
        );
        assert!(planned.is_ok());
        let same_end = ReservationChange {
            end: Some(current.end),
            ..Default::default()
        };
        assert!(matches!(
            apply_change(current, &same_end, ChangeSource::Web, NOW),
            Err(ReservationError::EmptyWindow)
        ));
    }

    #[test]
    fn a_retrying_write_keeps_its_state_when_another_change_comes() {
        let mut current = created(ChangeSource::Web);
        current.sync_state = SyncState::Retrying;
        let change = ReservationChange {
            subject: Some("Other".into()),
            ..Default::default()
        };
        let planned = apply_change(current.clone(), &change, ChangeSource::Web, later()).unwrap();
        assert_eq!(planned.reservation.sync_state, SyncState::Retrying);
        current.sync_state = SyncState::Failed;
        let planned = apply_change(current, &change, ChangeSource::Web, later()).unwrap();
        assert_eq!(planned.reservation.sync_state, SyncState::Pending);
    }

    #[test]
    fn a_web_change_to_an_unlinked_addin_booking_looks_for_outlooks_item() {
        let current = created(ChangeSource::Addin);
        let change = ReservationChange {
            subject: Some("Other".into()),
            ..Default::default()
        };
        let planned = apply_change(current.clone(), &change, ChangeSource::Web, later()).unwrap();
        assert_eq!(
            planned.outbox,
            Some(OutboxInsert {
                version: 2,
                create_outcome_unknown: true
            })
        );
        let mut linked = current;
        linked.item_id = Some("AAMk1".into());
        let planned = apply_change(linked, &change, ChangeSource::Web, later()).unwrap();
        assert_eq!(
            planned.outbox.map(|o| o.create_outcome_unknown),
            Some(false)
        );
    }

    #[test]
    fn cancel_is_idempotent_and_final() {
        let current = created(ChangeSource::Web);
        let cancelled = apply_cancel(current, ChangeSource::Web, later());
        assert!(cancelled.changed);
        assert_eq!(cancelled.reservation.status, ReservationStatus::Cancelled);
        assert_eq!(cancelled.reservation.version, 2);
        assert_eq!(cancelled.outbox.map(|o| o.version), Some(2));
        let again = apply_cancel(cancelled.reservation.clone(), ChangeSource::Web, later());
        assert!(!again.changed);
        assert_eq!(again.outbox, None);
        assert_eq!(again.reservation, cancelled.reservation);
        let change = ReservationChange {
            subject: Some("x".into()),
            ..Default::default()
        };
        assert!(matches!(
            apply_change(cancelled.reservation, &change, ChangeSource::Web, later()),
            Err(ReservationError::Cancelled(_))
        ));
        let addin = apply_cancel(created(ChangeSource::Addin), ChangeSource::Addin, later());
        assert!(addin.changed);
        assert_eq!(addin.outbox, None);
        assert_eq!(addin.reservation.last_change, LastChange::Addin);
    }

    fn outcome(version: i64) -> ExchangeOutcome {
        ExchangeOutcome {
            reservation_id: "res-0123456789abcdef0123456789abcdef".into(),
            expected_version: version,
            item: None,
            fields: ItemFields::default(),
            cancel: false,
        }
    }

    fn link(id: &str, key: &str) -> Option<ItemLink> {
        Some(ItemLink {
            item_id: id.into(),
            change_key: Some(key.into()),
        })
    }

    #[test]
    fn exchange_links_updates_and_cancels_guarded_by_the_version() {
        let addin = created(ChangeSource::Addin);
        let linked = match apply_exchange_rule(
            addin.clone(),
            &ExchangeOutcome {
                item: link("AAMk1", "CK1"),
                ..outcome(1)
            },
            later(),
        ) {
            ApplyResult::Applied {
                reservation,
                changed,
            } => {
                assert!(!changed, "a link is not a change of the reservation");
                reservation
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(linked.version, 1);
        assert_eq!(linked.item_id.as_deref(), Some("AAMk1"));
        assert_eq!(linked.sync_state, SyncState::Synced, "C6: linked is synced");

        let stale = apply_exchange_rule(linked.clone(), &outcome(7), later());
        assert_eq!(stale, ApplyResult::Conflict(linked.clone()));

        let same = ExchangeOutcome {
            item: link("AAMk1", "CK1"),
            fields: ItemFields {
                subject: Some("Planning".into()),
                ..Default::default()
            },
            ..outcome(1)
        };
        assert_eq!(
            apply_exchange_rule(linked.clone(), &same, later()),
            ApplyResult::Unchanged(linked.clone())
        );

        let new_key = ExchangeOutcome {
            item: link("AAMk1", "CK2"),
            ..outcome(1)
        };
        let ApplyResult::Applied {
            reservation,
            changed,
        } = apply_exchange_rule(linked.clone(), &new_key, later())
        else {
            panic!("a new change key is stored");
        };
        assert!(!changed);
        assert_eq!(reservation.version, 1, "a change key alone is not a change");
        assert_eq!(reservation.change_key.as_deref(), Some("CK2"));

        let moved_in_outlook = ExchangeOutcome {
            item: link("AAMk1", "CK3"),
            fields: ItemFields {
                start: Some(datetime!(2026-12-02 08:00 UTC)),
                ..Default::default()
            },
            ..outcome(1)
        };
        let ApplyResult::Applied {
            reservation: updated,
            changed,
        } = apply_exchange_rule(linked.clone(), &moved_in_outlook, later())
        else {
            panic!("F2 applies");
        };
        assert!(changed);
        assert_eq!(updated.version, 2);
        assert_eq!(updated.last_change, LastChange::Exchange);
        assert_eq!(updated.start, datetime!(2026-12-02 08:00 UTC));

        let deleted = ExchangeOutcome {
            cancel: true,
            ..outcome(2)
        };
        let ApplyResult::Applied {
            reservation: cancelled,
            ..
        } = apply_exchange_rule(updated, &deleted, later())
        else {
            panic!("F delete applies");
        };
        assert_eq!(cancelled.status, ReservationStatus::Cancelled);
        assert_eq!(cancelled.version, 3);

        // Restored or edited after the cancellation: nothing revives it.
        let revived = ExchangeOutcome {
            fields: ItemFields {
                subject: Some("Back".into()),
                ..Default::default()
            },
            ..outcome(3)
        };
        assert_eq!(
            apply_exchange_rule(cancelled.clone(), &revived, later()),
            ApplyResult::Unchanged(cancelled)
        );
    }

    #[test]
    fn a_pending_web_write_keeps_the_sync_state() {
        let web = created(ChangeSource::Web);
        let ApplyResult::Applied { reservation, .. } = apply_exchange_rule(
            web,
            &ExchangeOutcome {
                item: link("AAMk1", "CK1"),
                ..outcome(1)
            },
            later(),
        ) else {
            panic!("linked");
        };
        assert_eq!(reservation.sync_state, SyncState::Pending);
    }

    #[test]
    fn finishing_and_retrying_move_the_sync_state() {
        let web = created(ChangeSource::Web);
        let retry = OutboxRetry {
            error: "e".repeat(2000),
            next_attempt_at: later(),
            create_outcome_unknown: true,
            failed: false,
        };
        let retrying = apply_retry(web.clone(), &retry, later());
        assert_eq!(retrying.sync_state, SyncState::Retrying);
        assert!(retrying.last_error.as_ref().unwrap().chars().count() <= MAX_ERROR_CHARS + 3);
        let failed = apply_retry(
            web.clone(),
            &OutboxRetry {
                failed: true,
                ..retry
            },
            later(),
        );
        assert_eq!(failed.sync_state, SyncState::Failed);
        let done = apply_finish(failed, link("AAMk1", "CK1").as_ref(), false, later());
        assert_eq!(done.sync_state, SyncState::Synced);
        assert_eq!(done.last_error, None);
        assert_eq!(done.item_id.as_deref(), Some("AAMk1"));
        assert_eq!(done.version, 1, "a write is not a change");
        let waiting = apply_finish(web, None, true, later());
        assert_eq!(waiting.sync_state, SyncState::Pending);
    }

    #[test]
    fn requeue_writes_only_when_nothing_is_pending() {
        let web = created(ChangeSource::Web);
        assert_eq!(apply_requeue(web.clone(), later()), None);
        let mut failed = web;
        failed.write_pending = false;
        failed.sync_state = SyncState::Failed;
        let planned = apply_requeue(failed, later()).unwrap();
        assert_eq!(planned.outbox.map(|o| o.version), Some(1));
        assert_eq!(planned.reservation.sync_state, SyncState::Pending);
        assert_eq!(
            planned.reservation.version, 1,
            "not a change of the reservation"
        );
    }

    #[test]
    fn instants_are_kept_to_the_microsecond() {
        let now = datetime!(2026-12-01 10:00:00.123456789 UTC);
        let mut new = new(ChangeSource::Web);
        new.start = datetime!(2026-12-02 09:00:00.000000999 UTC);
        let created = apply_create(&new, "default".into(), now).reservation;
        assert_eq!(
            created.created_at,
            datetime!(2026-12-01 10:00:00.123456 UTC)
        );
        assert_eq!(created.start, datetime!(2026-12-02 09:00 UTC));
        let changed = apply_change(created, &subject_change("x"), ChangeSource::Web, now)
            .unwrap()
            .reservation;
        assert_eq!(
            changed.updated_at,
            datetime!(2026-12-01 10:00:00.123456 UTC)
        );
    }

    fn subject_change(text: &str) -> ReservationChange {
        ReservationChange {
            subject: Some(text.into()),
            ..Default::default()
        }
    }

    #[test]
    fn list_queries_hold_only_what_is_asked() {
        let q = |n: usize| format!("?{n}");
        let (all, values) = list_conditions(&ReservationFilter::default(), None, q, q);
        assert_eq!((all.as_str(), values.len()), ("TRUE", 0));
        let filter = ReservationFilter {
            mailbox: Some("room1@contoso.com".into()),
            status: None,
            from: None,
            to: Some(datetime!(2026-12-03 00:00 UTC)),
        };
        let cursor = ReservationCursor {
            start: datetime!(2026-12-02 09:00 UTC),
            id: "res-1".into(),
        };
        let t = |n: usize| format!("${n}::timestamptz");
        let (conditions, values) = list_conditions(&filter, Some(&cursor), |n| format!("${n}"), t);
        assert_eq!(
            conditions,
            "r.mailbox = $1 AND r.start_at < $2::timestamptz AND (r.start_at > $3::timestamptz \
             OR (r.start_at = $3::timestamptz AND r.id > $4))"
        );
        assert_eq!(
            values,
            [
                "room1@contoso.com",
                "2026-12-03T00:00:00.000000Z",
                "2026-12-02T09:00:00.000000Z",
                "res-1"
            ]
        );
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = ReservationCursor {
            start: datetime!(2026-12-02 09:00 UTC),
            id: "res-1".into(),
        };
        assert_eq!(ReservationCursor::parse(&cursor.key()), Some(cursor));
        for bad in ["", "x", "2026-12-02T09:00:00.000000Z", "yesterday res-1"] {
            assert_eq!(ReservationCursor::parse(bad), None, "{bad}");
        }
    }
}
