//! The worker's durable state behind one [`Store`]: events deduplicated on (subscription id,
//! watermark), subscription bookkeeping and incidents ([`EventStore`]), mailboxes
//! ([`MailboxStore`]), reservations and their outbox ([`ReservationStore`]) and the sync step's
//! claims on events ([`EventClaims`]); SQLite and PostgreSQL implementations with embedded
//! migrations, and the group committer that batches ingest transactions.

pub mod claims;
mod group_commit;
pub mod mailboxes;
mod migrations;
mod plan;
mod postgres;
pub mod reservations;
mod sqlite;
mod timefmt;

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::notification::{
    Event, EventKind, Notification, ObjectId, ObjectKind, SubscriptionStatus,
};

pub use claims::{ClaimedEvents, EventClaims};
pub use group_commit::{BatchObserver, GroupCommitOptions, GroupCommitter};
pub use mailboxes::{
    BeginSubscribe, FinishOutcome, Lease, MailboxCalendar, MailboxRecord, MailboxState,
    MailboxStore, MailboxSummary, MailboxView, PutMailbox, PutOutcome, RenewCause, ResyncRequest,
    SubscribeOutcome,
};
pub use plan::{dedupe_key, MAX_KEY_BYTES};
pub use postgres::connect::redact_database_url;
pub use postgres::PostgresStore;
pub use reservations::{
    new_reservation_id, ApplyResult, ChangeSource, ExchangeOutcome, ItemFields, ItemLink,
    LastChange, NewReservation, OutboxClaim, OutboxRetry, OutboxRow, OutboxState, Reservation,
    ReservationChange, ReservationCursor, ReservationError, ReservationFilter, ReservationStatus,
    ReservationStore, ReservationWrite, SyncBacklog, SyncState,
};
pub use sqlite::SqliteStore;
pub use timefmt::{format_utc, parse_utc};

/// One notification as the worker received it, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestRequest {
    /// From the request's query string (`default` when it has none).
    pub tenant: String,
    /// The gateway's `X-Request-Id`, when it sent one.
    pub request_id: Option<String>,
    pub received_at: OffsetDateTime,
    pub notification: Notification,
}

/// What the store does with a notification for a subscription id it has no row for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnknownSubscriptions {
    /// Register the subscription and store its events (another system subscribes).
    Accept,
    /// Store nothing; the answer is `Unsubscribe`.
    Unsubscribe,
}

/// What storing one notification did, and the answer Exchange gets for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOutcome {
    pub status: SubscriptionStatus,
    pub result: IngestResult,
    /// Kinds of the events stored by this notification (not those already present).
    pub stored_events: Vec<EventKind>,
    /// Events of this notification that were already stored (or stored by an earlier member of the
    /// same commit).
    pub duplicate_events: usize,
    /// Subscriptions whose state this notification changed.
    pub flagged: Vec<(String, SubscriptionState)>,
    /// Subscriptions seen for the first time (registered under `unknown_subscriptions = "accept"`).
    pub registered: Vec<String>,
    /// Subscription ids nobody asked for, answered `Unsubscribe` (unsubscribe mode). The worker
    /// holds such a notification while one of its own Subscribe calls is in flight: Exchange may
    /// deliver before the call's answer is stored.
    pub unknown: Vec<String>,
}

/// The three ways a notification can end well (a failure is a [`StoreError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestResult {
    /// Something new was recorded.
    Stored,
    /// Everything in it was already stored: an identical retry.
    Duplicate,
    /// A subscription the worker does not want: nothing stored, answered `Unsubscribe`.
    Unsubscribe,
}

impl IngestResult {
    pub fn as_str(self) -> &'static str {
        match self {
            IngestResult::Stored => "stored",
            IngestResult::Duplicate => "duplicate",
            IngestResult::Unsubscribe => "unsubscribe",
        }
    }
}

/// Bookkeeping state of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionState {
    Active,
    /// A `PreviousWatermark` did not match the stored one: events were missed.
    ResyncNeeded,
    /// Exchange reported an error for it (and drops it): subscribe again.
    ResubscribeNeeded,
    /// The worker no longer wants it: its notifications are answered `Unsubscribe`.
    Unsubscribed,
}

impl SubscriptionState {
    pub const ALL: [SubscriptionState; 4] = [
        SubscriptionState::Active,
        SubscriptionState::ResyncNeeded,
        SubscriptionState::ResubscribeNeeded,
        SubscriptionState::Unsubscribed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Active => "active",
            SubscriptionState::ResyncNeeded => "resync_needed",
            SubscriptionState::ResubscribeNeeded => "resubscribe_needed",
            SubscriptionState::Unsubscribed => "unsubscribed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// Processing state of one stored event (the sync step moves it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventState {
    Pending,
    Processing,
    Processed,
    Failed,
}

impl EventState {
    pub const ALL: [EventState; 4] = [
        EventState::Pending,
        EventState::Processing,
        EventState::Processed,
        EventState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Processing => "processing",
            EventState::Processed => "processed",
            EventState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// One row of `subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub subscription_id: String,
    pub tenant: String,
    pub last_watermark: Option<String>,
    pub last_notification_at: Option<OffsetDateTime>,
    pub state: SubscriptionState,
    pub state_reason: Option<String>,
    pub updated_at: OffsetDateTime,
    /// The mailbox the worker made this subscription for (absent for subscriptions registered
    /// under `unknown_subscriptions = "accept"`).
    pub mailbox: Option<String>,
    /// The last watermark stored before a gap was seen: a renewal replays from here, so the
    /// missed events arrive again.
    pub replay_from: Option<String>,
}

/// One row of `notification_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    pub tenant: String,
    pub subscription_id: String,
    pub previous_watermark: Option<String>,
    pub watermark: Option<String>,
    /// The watermark, or for an event without one a digest of the notification's content.
    pub dedupe_key: String,
    /// Index of the event within its notification.
    pub position: i32,
    pub kind: EventKind,
    pub object: Option<ObjectId>,
    pub parent_folder_id: Option<ObjectId>,
    pub old_object: Option<ObjectId>,
    pub old_parent_folder_id: Option<ObjectId>,
    pub unread_count: Option<i32>,
    /// `TimeStamp` exactly as Exchange sent it.
    pub event_time: Option<String>,
    pub received_at: OffsetDateTime,
    pub request_id: Option<String>,
    pub state: EventState,
    pub processed_at: Option<OffsetDateTime>,
    /// Failed processing attempts so far (the sync step parks it after `[sync] max_attempts`).
    pub attempts: u32,
    /// The last failure's reason (also of a dead letter).
    pub last_error: Option<String>,
    /// After a failed attempt: not before then (the subscription's later events wait too).
    pub next_attempt_at: Option<OffsetDateTime>,
}

impl StoredEvent {
    /// The event as the notification model holds it.
    pub fn to_event(&self) -> Event {
        Event {
            kind: self.kind,
            watermark: self.watermark.clone(),
            timestamp: self.event_time.clone(),
            object: self.object.clone(),
            parent_folder_id: self.parent_folder_id.clone(),
            old_object: self.old_object.clone(),
            old_parent_folder_id: self.old_parent_folder_id.clone(),
            unread_count: self.unread_count,
        }
    }
}

/// What `subscription_events` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncidentKind {
    /// Exchange sent `ResponseClass="Error"` for the subscription.
    Error,
    /// `PreviousWatermark` differed from the stored last watermark.
    WatermarkGap,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Error => "error",
            IncidentKind::WatermarkGap => "watermark_gap",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [IncidentKind::Error, IncidentKind::WatermarkGap]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One row of `subscription_events`: an incident kept for the subscription manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionIncident {
    pub id: i64,
    pub tenant: String,
    /// Absent when Exchange's error message named no subscription.
    pub subscription_id: Option<String>,
    pub kind: IncidentKind,
    pub response_class: Option<String>,
    pub response_code: Option<String>,
    pub message_text: Option<String>,
    pub detail: Option<String>,
    pub received_at: OffsetDateTime,
    pub request_id: Option<String>,
}

/// Why the store could not do what was asked. `Unavailable` means "try again later" (the worker
/// answers 503); `Rejected` means this data made the statement fail, so the group committer
/// retries the other members of a failed commit on their own.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database refused the data: {0}")]
    Rejected(String),
    #[error("worker.database_url: {0}")]
    Config(String),
    #[error("migration {version} ({name}): {detail}")]
    Migration {
        version: i64,
        name: &'static str,
        detail: String,
    },
    #[error("unexpected value in column {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
    #[error("store is shut down")]
    Closed,
}

/// The worker's storage. Every implementation gives the same guarantees: `commit` stores a whole
/// batch in one transaction or nothing of it, and returns only after the commit is durable.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Stores every notification of `batch` in ONE transaction and returns one outcome per
    /// notification, in order. An error means nothing of the batch was stored.
    async fn commit(
        &self,
        batch: &[IngestRequest],
        unknown: UnknownSubscriptions,
    ) -> Result<Vec<IngestOutcome>, StoreError>;

    /// A cheap round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Events still `pending`.
    async fn backlog(&self) -> Result<u64, StoreError>;

    /// Deletes `processed` events processed before `cutoff`; returns how many.
    async fn purge_processed_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError>;

    /// Stored events in insertion order, all or one subscription's.
    async fn events(&self, subscription_id: Option<&str>) -> Result<Vec<StoredEvent>, StoreError>;

    async fn subscription(
        &self,
        subscription_id: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError>;

    /// Recorded incidents in insertion order, all or one subscription's.
    async fn incidents(
        &self,
        subscription_id: Option<&str>,
    ) -> Result<Vec<SubscriptionIncident>, StoreError>;

    /// Registers a subscription or changes its state (the subscription manager's side).
    async fn set_subscription_state(
        &self,
        subscription_id: &str,
        tenant: &str,
        state: SubscriptionState,
        reason: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Moves events to `state` (the sync step's side); `at` becomes `processed_at` for
    /// `processed` and `failed`. Returns how many rows changed.
    async fn set_event_state(
        &self,
        ids: &[i64],
        state: EventState,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError>;
}

/// All of the worker's storage, one database behind every part: events and subscriptions
/// ([`EventStore`]), mailboxes ([`MailboxStore`]), reservations and their outbox
/// ([`ReservationStore`]) and the sync step's claims on events ([`EventClaims`]).
pub trait Store: EventStore + MailboxStore + ReservationStore + EventClaims {}

impl<T: EventStore + MailboxStore + ReservationStore + EventClaims + ?Sized> Store for T {}

/// Opens the store `database_url` names (`sqlite://PATH` or `postgres://...`) and runs its
/// migrations.
pub async fn open(database_url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match DatabaseUrl::parse(database_url)? {
        DatabaseUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        DatabaseUrl::Postgres => Ok(Arc::new(PostgresStore::connect(database_url).await?)),
    }
}

/// Checks `database_url` as [`open`] reads it, without connecting: the scheme, the SQLite path,
/// and for PostgreSQL the URL's options, `sslmode` and `sslrootcert` (the CA file is read), so
/// that `pushgate config check` finds what would stop the worker's start.
pub fn check_database_url(database_url: &str) -> Result<(), StoreError> {
    if let DatabaseUrl::Postgres = DatabaseUrl::parse(database_url)? {
        postgres::connect::PgTarget::parse(database_url)?;
    }
    Ok(())
}

enum DatabaseUrl<'a> {
    Sqlite(&'a std::path::Path),
    Postgres,
}

impl<'a> DatabaseUrl<'a> {
    fn parse(database_url: &'a str) -> Result<Self, StoreError> {
        if let Some(path) = database_url.strip_prefix("sqlite://") {
            // An empty path or `:memory:` would give SQLite a database that vanishes with the
            // process: nothing acknowledged may live there.
            if path.is_empty() || path.starts_with(":memory:") {
                return Err(StoreError::Config(
                    "sqlite:// needs a file path (sqlite://data/pushgate.db, sqlite:///var/lib/...)"
                        .to_string(),
                ));
            }
            Ok(Self::Sqlite(std::path::Path::new(path)))
        } else if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            Ok(Self::Postgres)
        } else {
            Err(StoreError::Config(
                "must start with sqlite:// or postgres://".to_string(),
            ))
        }
    }
}

/// One PostgreSQL connection for `database_url` (a `postgres://` URL), made as the store makes
/// its own: the same `sslmode` and `sslrootcert`, the same errors. For tools and tests that run
/// SQL of their own beside a store.
pub async fn connect_postgres(database_url: &str) -> Result<tokio_postgres::Client, StoreError> {
    postgres::connect::PgTarget::parse(database_url)?
        .connect()
        .await
}

fn event_kind_column(value: &str) -> Result<EventKind, StoreError> {
    EventKind::from_str_name(value).ok_or_else(|| StoreError::Corrupt {
        column: "kind",
        value: value.to_string(),
    })
}

fn event_state_column(value: &str) -> Result<EventState, StoreError> {
    EventState::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "state",
        value: value.to_string(),
    })
}

fn subscription_state_column(value: &str) -> Result<SubscriptionState, StoreError> {
    SubscriptionState::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "state",
        value: value.to_string(),
    })
}

fn mailbox_state_column(value: &str) -> Result<MailboxState, StoreError> {
    MailboxState::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "mailboxes.state",
        value: value.to_string(),
    })
}

fn renew_cause_column(value: &str) -> Result<RenewCause, StoreError> {
    RenewCause::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "renew_cause",
        value: value.to_string(),
    })
}

fn reservation_status_column(value: &str) -> Result<ReservationStatus, StoreError> {
    ReservationStatus::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "reservations.status",
        value: value.to_string(),
    })
}

fn change_source_column(value: &str) -> Result<ChangeSource, StoreError> {
    ChangeSource::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "reservations.source",
        value: value.to_string(),
    })
}

fn last_change_column(value: &str) -> Result<LastChange, StoreError> {
    LastChange::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "reservations.last_change",
        value: value.to_string(),
    })
}

fn sync_state_column(value: &str) -> Result<SyncState, StoreError> {
    SyncState::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "reservations.sync_state",
        value: value.to_string(),
    })
}

fn outbox_state_column(value: &str) -> Result<OutboxState, StoreError> {
    OutboxState::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "outbox.state",
        value: value.to_string(),
    })
}

fn incident_kind_column(value: &str) -> Result<IncidentKind, StoreError> {
    IncidentKind::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "kind",
        value: value.to_string(),
    })
}

/// Rebuilds an id from its columns; `kind` is `None` for parent folders (always folders).
fn object_id_columns(
    kind: Option<&str>,
    id: Option<String>,
    change_key: Option<String>,
    default_kind: ObjectKind,
) -> Result<Option<ObjectId>, StoreError> {
    let Some(id) = id else {
        return Ok(None);
    };
    let kind = match kind {
        None => default_kind,
        Some("item") => ObjectKind::Item,
        Some("folder") => ObjectKind::Folder,
        Some(other) => {
            return Err(StoreError::Corrupt {
                column: "object_kind",
                value: other.to_string(),
            })
        }
    };
    Ok(Some(ObjectId {
        kind,
        id,
        change_key,
    }))
}
