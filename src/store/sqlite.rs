//! SQLite backend, the default: WAL with `synchronous = FULL`, so a returned commit is on disk.
//! Threads own the connections: one writer (SQLite has one anyway), one reader (health checks and
//! listings never queue behind a commit waiting for a lock), one checkpointer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use time::OffsetDateTime;

use super::migrations;
use super::plan::{self, EventRow, IncidentRow};
use super::timefmt::{format_utc, parse_utc};
use super::UnknownSubscriptions;
use super::{
    event_kind_column, event_state_column, incident_kind_column, object_id_columns,
    subscription_state_column, EventState, EventStore, IngestOutcome, IngestRequest, StoreError,
    StoredEvent, SubscriptionIncident, SubscriptionRecord, SubscriptionState,
};
use crate::notification::ObjectKind;

mod claims;
mod mailboxes;
mod reservations;

/// How long a statement waits for a lock another connection holds before the commit fails
/// (and the worker answers 503). Well below the gateway's upstream timeout.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows deleted per retention transaction, so a purge never holds the writer for long.
const PURGE_CHUNK: i64 = 5_000;

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// WAL pages after which the writer checkpoints by itself: only reached when the checkpointer
/// thread falls behind (about 40 MB).
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 10_000;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A thread that owns one connection and runs closures on it in order.
struct ConnectionThread {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ConnectionThread {
    fn spawn(name: &str, mut connection: Connection) -> Result<Self, StoreError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(job) = receiver.recv() {
                    // A panicking job drops its reply (the caller sees `Closed` and answers 503)
                    // and its open transaction (rolled back); the connection thread lives on.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(&mut connection)
                    }));
                    if outcome.is_err() {
                        tracing::error!("a database job panicked; its work was rolled back");
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start {name} thread: {e}")))?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = reply.send(f(connection));
        });
        {
            let sender = self.sender.lock().map_err(|_| StoreError::Closed)?;
            sender
                .as_ref()
                .ok_or(StoreError::Closed)?
                .send(job)
                .map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets the thread finish its queue, then closes the connection.
    fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        if let Ok(mut thread) = self.thread.lock() {
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for ConnectionThread {
    fn drop(&mut self) {
        self.close();
    }
}

/// Checkpoints on a connection of its own, so the fsyncs of the database file do not delay the
/// commits that acknowledge notifications (SQLite would otherwise run them inside a commit).
struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(connection: Connection) -> Result<Self, StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pushgate-sqlite-checkpoint".to_string())
            .spawn(move || loop {
                match stopped.recv_timeout(CHECKPOINT_INTERVAL) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // PASSIVE never waits for the writer; a busy answer is retried next time.
                        if let Err(error) =
                            connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                        {
                            tracing::debug!(%error, "WAL checkpoint deferred");
                        }
                    }
                    _ => return,
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start checkpoint thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    writer: ConnectionThread,
    reader: ConnectionThread,
    _checkpointer: Checkpointer,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its directory, switches it to WAL and
    /// runs the migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening SQLite: {e}")))?
    }

    fn open_blocking(path: PathBuf) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Unavailable(format!("creating {}: {e}", parent.display()))
                })?;
            }
        }
        let mut writer = open_connection(&path)?;
        migrate(&mut writer)?;
        writer
            .pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
            .map_err(|e| sqlite_error("configuring checkpoints", e))?;
        let reader = open_connection(&path)?;
        let checkpointer = open_connection(&path)?;
        Ok(Self {
            writer: ConnectionThread::spawn("pushgate-sqlite-writer", writer)?,
            reader: ConnectionThread::spawn("pushgate-sqlite-reader", reader)?,
            _checkpointer: Checkpointer::spawn(checkpointer)?,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let context = |e: rusqlite::Error| sqlite_error(&format!("opening {}", path.display()), e);
    let connection = Connection::open(path).map_err(context)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(context)?;
    let mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(context)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{}: journal mode stays {mode:?}, WAL is required",
            path.display()
        )));
    }
    // FULL: the WAL is synced at every commit, so an acknowledged notification survives a
    // power cut, not only a crash of the process.
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(context)?;
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let context = |e: rusqlite::Error| sqlite_error("migrating", e);
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(context)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS pushgate_schema_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
    )
    .map_err(context)?;
    let newest: Option<i64> = tx
        .query_row(
            "SELECT max(version) FROM pushgate_schema_migrations",
            [],
            |row| row.get(0),
        )
        .map_err(context)?;
    for migration in migrations::pending(migrations::SQLITE, newest)? {
        tx.execute_batch(migration.sql)
            .map_err(|e| StoreError::Migration {
                version: migration.version,
                name: migration.name,
                detail: e.to_string(),
            })?;
        tx.execute(
            "INSERT INTO pushgate_schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![
                migration.version,
                migration.name,
                format_utc(OffsetDateTime::now_utc())
            ],
        )
        .map_err(context)?;
    }
    tx.commit().map_err(context)
}

/// Lock waits, I/O and open failures are "try again later"; a statement that fails on the data
/// itself (constraint, trigger, size) is a rejection of that data.
fn sqlite_error(context: &str, error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let rejected = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => matches!(
            failure.code,
            ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch
        ),
        rusqlite::Error::ToSqlConversionFailure(_) => true,
        _ => false,
    };
    if rejected {
        StoreError::Rejected(format!("{context}: {error}"))
    } else {
        StoreError::Unavailable(format!("{context}: {error}"))
    }
}

const SUBSCRIPTION_COLUMNS: &str =
    "subscription_id, tenant, last_watermark, last_notification_at, \
     state, state_reason, updated_at, mailbox, replay_from";

/// A `subscriptions` row as SQLite gives it, before its text columns are parsed.
struct SubscriptionColumns {
    subscription_id: String,
    tenant: String,
    last_watermark: Option<String>,
    last_notification_at: Option<String>,
    state: String,
    state_reason: Option<String>,
    updated_at: String,
    mailbox: Option<String>,
    replay_from: Option<String>,
}

fn subscription_tuple(row: &Row<'_>) -> rusqlite::Result<SubscriptionColumns> {
    subscription_columns_at(row, 0)
}

/// The [`SUBSCRIPTION_COLUMNS`] starting at column `at` (joins put them after others).
fn subscription_columns_at(row: &Row<'_>, at: usize) -> rusqlite::Result<SubscriptionColumns> {
    Ok(SubscriptionColumns {
        subscription_id: row.get(at)?,
        tenant: row.get(at + 1)?,
        last_watermark: row.get(at + 2)?,
        last_notification_at: row.get(at + 3)?,
        state: row.get(at + 4)?,
        state_reason: row.get(at + 5)?,
        updated_at: row.get(at + 6)?,
        mailbox: row.get(at + 7)?,
        replay_from: row.get(at + 8)?,
    })
}

fn subscription_record(c: SubscriptionColumns) -> Result<SubscriptionRecord, StoreError> {
    Ok(SubscriptionRecord {
        subscription_id: c.subscription_id,
        tenant: c.tenant,
        last_watermark: c.last_watermark,
        last_notification_at: c
            .last_notification_at
            .as_deref()
            .map(parse_utc)
            .transpose()?,
        state: subscription_state_column(&c.state)?,
        state_reason: c.state_reason,
        updated_at: parse_utc(&c.updated_at)?,
        mailbox: c.mailbox,
        replay_from: c.replay_from,
    })
}

fn commit_batch(
    connection: &mut Connection,
    batch: &[IngestRequest],
    unknown: UnknownSubscriptions,
) -> Result<Vec<IngestOutcome>, StoreError> {
    let context = |e: rusqlite::Error| sqlite_error("storing notifications", e);
    let now = OffsetDateTime::now_utc();
    let now_text = format_utc(now);
    // IMMEDIATE takes the write lock up front: a lock held elsewhere fails the commit here,
    // before anything is written, after BUSY_TIMEOUT.
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(context)?;

    let keys = plan::subscription_keys(batch);
    let mut known = HashMap::new();
    let mut registered = HashSet::new();
    {
        let mut load = tx
            .prepare_cached(&format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE subscription_id = ?1"
            ))
            .map_err(context)?;
        let mut register = tx
            .prepare_cached(
                "INSERT INTO subscriptions (subscription_id, tenant, state, updated_at)
                 VALUES (?1, ?2, 'active', ?3)",
            )
            .map_err(context)?;
        // The IMMEDIATE transaction holds the only write lock, so "not found, then insert"
        // cannot race another writer.
        for (id, tenant) in &keys {
            match load
                .query_row([id], subscription_tuple)
                .optional()
                .map_err(context)?
            {
                Some(tuple) => {
                    known.insert((*id).to_string(), subscription_record(tuple)?);
                }
                None if unknown == UnknownSubscriptions::Accept => {
                    register
                        .execute(params![id, tenant, now_text])
                        .map_err(context)?;
                    registered.insert((*id).to_string());
                    known.insert((*id).to_string(), plan::fresh_record(id, tenant, now));
                }
                None => {}
            }
        }
    }

    let rows = plan::plan_rows(batch, &known, unknown);
    let mut inserted_events = Vec::with_capacity(rows.events.len());
    {
        let mut insert = tx.prepare_cached(INSERT_EVENT).map_err(context)?;
        for row in &rows.events {
            inserted_events.push(insert_event(&mut insert, row).map_err(context)? == 1);
        }
    }
    let mut inserted_incidents = Vec::with_capacity(rows.incidents.len());
    {
        let mut insert = tx.prepare_cached(INSERT_INCIDENT).map_err(context)?;
        for row in &rows.incidents {
            inserted_incidents.push(insert_incident(&mut insert, row).map_err(context)? == 1);
        }
    }

    let settled = plan::settle(
        batch,
        &rows,
        &inserted_events,
        &inserted_incidents,
        &known,
        &registered,
        now,
    );
    {
        let mut insert = tx.prepare_cached(INSERT_INCIDENT).map_err(context)?;
        for row in &settled.gap_incidents {
            insert_incident(&mut insert, row).map_err(context)?;
        }
        let mut update = tx
            .prepare_cached(
                "UPDATE subscriptions SET last_watermark = ?2, last_notification_at = ?3,
                     state = ?4, state_reason = ?5, updated_at = ?6, replay_from = ?7
                 WHERE subscription_id = ?1",
            )
            .map_err(context)?;
        for record in &settled.subscription_updates {
            update
                .execute(params![
                    record.subscription_id,
                    record.last_watermark,
                    record.last_notification_at.map(format_utc),
                    record.state.as_str(),
                    record.state_reason,
                    format_utc(record.updated_at),
                    record.replay_from,
                ])
                .map_err(context)?;
        }
    }
    tx.commit().map_err(context)?;
    Ok(settled.outcomes)
}

const INSERT_EVENT: &str = "INSERT INTO notification_events (
        tenant, subscription_id, previous_watermark, watermark, dedupe_key, position, kind,
        object_kind, object_id, object_change_key, parent_folder_id, parent_folder_change_key,
        old_object_kind, old_object_id, old_object_change_key,
        old_parent_folder_id, old_parent_folder_change_key,
        unread_count, event_time, received_at, request_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
            ?20, ?21)
    ON CONFLICT (subscription_id, dedupe_key) DO NOTHING";

fn insert_event(
    statement: &mut rusqlite::CachedStatement<'_>,
    row: &EventRow<'_>,
) -> rusqlite::Result<usize> {
    statement.execute(params![
        row.tenant,
        row.subscription_id,
        row.previous_watermark,
        row.watermark,
        row.dedupe_key,
        row.position,
        row.kind,
        row.object_kind,
        row.object_id,
        row.object_change_key,
        row.parent_folder_id,
        row.parent_folder_change_key,
        row.old_object_kind,
        row.old_object_id,
        row.old_object_change_key,
        row.old_parent_folder_id,
        row.old_parent_folder_change_key,
        row.unread_count,
        row.event_time,
        format_utc(row.received_at),
        row.request_id,
    ])
}

const INSERT_INCIDENT: &str = "INSERT INTO subscription_events (
        tenant, subscription_id, kind, response_class, response_code, message_text, detail,
        dedupe_key, received_at, request_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
    ON CONFLICT (dedupe_key) DO NOTHING";

fn insert_incident(
    statement: &mut rusqlite::CachedStatement<'_>,
    row: &IncidentRow<'_>,
) -> rusqlite::Result<usize> {
    statement.execute(params![
        row.tenant,
        row.subscription_id,
        row.kind,
        row.response_class,
        row.response_code,
        row.message_text,
        row.detail,
        row.dedupe_key,
        format_utc(row.received_at),
        row.request_id,
    ])
}

const EVENT_COLUMNS: &str =
    "id, tenant, subscription_id, previous_watermark, watermark, dedupe_key,
    position, kind, object_kind, object_id, object_change_key, parent_folder_id,
    parent_folder_change_key, old_object_kind, old_object_id, old_object_change_key,
    old_parent_folder_id, old_parent_folder_change_key, unread_count, event_time, received_at,
    request_id, state, processed_at, attempts, last_error, next_attempt_at";

/// The raw columns of one event row, in `EVENT_COLUMNS` order.
struct EventColumns {
    id: i64,
    tenant: String,
    subscription_id: String,
    previous_watermark: Option<String>,
    watermark: Option<String>,
    dedupe_key: String,
    position: i32,
    kind: String,
    object_kind: Option<String>,
    object_id: Option<String>,
    object_change_key: Option<String>,
    parent_folder_id: Option<String>,
    parent_folder_change_key: Option<String>,
    old_object_kind: Option<String>,
    old_object_id: Option<String>,
    old_object_change_key: Option<String>,
    old_parent_folder_id: Option<String>,
    old_parent_folder_change_key: Option<String>,
    unread_count: Option<i32>,
    event_time: Option<String>,
    received_at: String,
    request_id: Option<String>,
    state: String,
    processed_at: Option<String>,
    attempts: i64,
    last_error: Option<String>,
    next_attempt_at: Option<String>,
}

fn event_columns(row: &Row<'_>) -> rusqlite::Result<EventColumns> {
    Ok(EventColumns {
        id: row.get(0)?,
        tenant: row.get(1)?,
        subscription_id: row.get(2)?,
        previous_watermark: row.get(3)?,
        watermark: row.get(4)?,
        dedupe_key: row.get(5)?,
        position: row.get(6)?,
        kind: row.get(7)?,
        object_kind: row.get(8)?,
        object_id: row.get(9)?,
        object_change_key: row.get(10)?,
        parent_folder_id: row.get(11)?,
        parent_folder_change_key: row.get(12)?,
        old_object_kind: row.get(13)?,
        old_object_id: row.get(14)?,
        old_object_change_key: row.get(15)?,
        old_parent_folder_id: row.get(16)?,
        old_parent_folder_change_key: row.get(17)?,
        unread_count: row.get(18)?,
        event_time: row.get(19)?,
        received_at: row.get(20)?,
        request_id: row.get(21)?,
        state: row.get(22)?,
        processed_at: row.get(23)?,
        attempts: row.get(24)?,
        last_error: row.get(25)?,
        next_attempt_at: row.get(26)?,
    })
}

fn stored_event(c: EventColumns) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: c.id,
        tenant: c.tenant,
        subscription_id: c.subscription_id,
        previous_watermark: c.previous_watermark,
        watermark: c.watermark,
        dedupe_key: c.dedupe_key,
        position: c.position,
        kind: event_kind_column(&c.kind)?,
        object: object_id_columns(
            Some(c.object_kind.as_deref().unwrap_or("item")),
            c.object_id,
            c.object_change_key,
            ObjectKind::Item,
        )?,
        parent_folder_id: object_id_columns(
            None,
            c.parent_folder_id,
            c.parent_folder_change_key,
            ObjectKind::Folder,
        )?,
        old_object: object_id_columns(
            Some(c.old_object_kind.as_deref().unwrap_or("item")),
            c.old_object_id,
            c.old_object_change_key,
            ObjectKind::Item,
        )?,
        old_parent_folder_id: object_id_columns(
            None,
            c.old_parent_folder_id,
            c.old_parent_folder_change_key,
            ObjectKind::Folder,
        )?,
        unread_count: c.unread_count,
        event_time: c.event_time,
        received_at: parse_utc(&c.received_at)?,
        request_id: c.request_id,
        state: event_state_column(&c.state)?,
        processed_at: c.processed_at.as_deref().map(parse_utc).transpose()?,
        attempts: u32::try_from(c.attempts).unwrap_or(0),
        last_error: c.last_error,
        next_attempt_at: c.next_attempt_at.as_deref().map(parse_utc).transpose()?,
    })
}

type IncidentTuple = (
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

#[async_trait]
impl EventStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn commit(
        &self,
        batch: &[IngestRequest],
        unknown: UnknownSubscriptions,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let batch = batch.to_vec();
        self.writer
            .call(move |connection| commit_batch(connection, &batch, unknown))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.reader
            .call(|connection| {
                connection
                    .query_row(
                        "SELECT count(*) FROM pushgate_schema_migrations",
                        [],
                        |row| row.get::<_, i64>(0),
                    )
                    .map(|_| ())
                    .map_err(|e| sqlite_error("ping", e))
            })
            .await
    }

    async fn backlog(&self) -> Result<u64, StoreError> {
        self.reader
            .call(|connection| {
                connection
                    .query_row(
                        "SELECT count(*) FROM notification_events WHERE state = 'pending'",
                        [],
                        |row| row.get::<_, i64>(0),
                    )
                    .map(|n| u64::try_from(n).unwrap_or(0))
                    .map_err(|e| sqlite_error("counting the backlog", e))
            })
            .await
    }

    async fn purge_processed_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let cutoff = format_utc(cutoff);
        let mut total = 0u64;
        loop {
            let cutoff = cutoff.clone();
            let deleted = self
                .writer
                .call(move |connection| {
                    connection
                        .execute(
                            "DELETE FROM notification_events WHERE id IN (
                                 SELECT id FROM notification_events
                                 WHERE state = 'processed' AND processed_at < ?1 LIMIT ?2)",
                            params![cutoff, PURGE_CHUNK],
                        )
                        .map_err(|e| sqlite_error("purging processed events", e))
                })
                .await?;
            total += deleted as u64;
            if (deleted as i64) < PURGE_CHUNK {
                return Ok(total);
            }
        }
    }

    async fn events(&self, subscription_id: Option<&str>) -> Result<Vec<StoredEvent>, StoreError> {
        let subscription_id = subscription_id.map(str::to_string);
        self.reader
            .call(move |connection| {
                let context = |e| sqlite_error("listing events", e);
                let mut statement = connection
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM notification_events
                         WHERE ?1 IS NULL OR subscription_id = ?1 ORDER BY id"
                    ))
                    .map_err(context)?;
                let rows = statement
                    .query_map([&subscription_id], event_columns)
                    .map_err(context)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(context)?;
                rows.into_iter().map(stored_event).collect()
            })
            .await
    }

    async fn subscription(
        &self,
        subscription_id: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        let subscription_id = subscription_id.to_string();
        self.reader
            .call(move |connection| {
                connection
                    .query_row(
                        &format!(
                            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE subscription_id = ?1"
                        ),
                        [&subscription_id],
                        subscription_tuple,
                    )
                    .optional()
                    .map_err(|e| sqlite_error("reading a subscription", e))?
                    .map(subscription_record)
                    .transpose()
            })
            .await
    }

    async fn incidents(
        &self,
        subscription_id: Option<&str>,
    ) -> Result<Vec<SubscriptionIncident>, StoreError> {
        let subscription_id = subscription_id.map(str::to_string);
        self.reader
            .call(move |connection| {
                let context = |e| sqlite_error("listing incidents", e);
                let mut statement = connection
                    .prepare_cached(
                        "SELECT id, tenant, subscription_id, kind, response_class, response_code,
                                message_text, detail, received_at, request_id
                         FROM subscription_events
                         WHERE ?1 IS NULL OR subscription_id = ?1 ORDER BY id",
                    )
                    .map_err(context)?;
                let tuples: Vec<IncidentTuple> = statement
                    .query_map([&subscription_id], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                            row.get(6)?,
                            row.get(7)?,
                            row.get(8)?,
                            row.get(9)?,
                        ))
                    })
                    .map_err(context)?
                    .collect::<Result<_, _>>()
                    .map_err(context)?;
                tuples
                    .into_iter()
                    .map(|t| {
                        Ok(SubscriptionIncident {
                            id: t.0,
                            tenant: t.1,
                            subscription_id: t.2,
                            kind: incident_kind_column(&t.3)?,
                            response_class: t.4,
                            response_code: t.5,
                            message_text: t.6,
                            detail: t.7,
                            received_at: parse_utc(&t.8)?,
                            request_id: t.9,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn set_subscription_state(
        &self,
        subscription_id: &str,
        tenant: &str,
        state: SubscriptionState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let (subscription_id, tenant) = (subscription_id.to_string(), tenant.to_string());
        let reason = reason.map(str::to_string);
        self.writer
            .call(move |connection| {
                connection
                    .execute(
                        "INSERT INTO subscriptions (subscription_id, tenant, state, state_reason, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (subscription_id) DO UPDATE SET state = excluded.state,
                             state_reason = excluded.state_reason, updated_at = excluded.updated_at",
                        params![
                            subscription_id,
                            tenant,
                            state.as_str(),
                            reason,
                            format_utc(OffsetDateTime::now_utc())
                        ],
                    )
                    .map(|_| ())
                    .map_err(|e| sqlite_error("setting a subscription's state", e))
            })
            .await
    }

    async fn set_event_state(
        &self,
        ids: &[i64],
        state: EventState,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        let processed_at =
            matches!(state, EventState::Processed | EventState::Failed).then(|| format_utc(at));
        self.writer
            .call(move |connection| {
                let context = |e| sqlite_error("setting events' state", e);
                let tx = connection.transaction().map_err(context)?;
                let mut changed = 0u64;
                {
                    let mut update = tx
                        .prepare_cached(
                            "UPDATE notification_events SET state = ?2, processed_at = ?3 WHERE id = ?1",
                        )
                        .map_err(context)?;
                    for id in &ids {
                        changed += update
                            .execute(params![id, state.as_str(), processed_at])
                            .map_err(context)? as u64;
                    }
                }
                tx.commit().map_err(context)?;
                Ok(changed)
            })
            .await
    }
}
