//! PostgreSQL backend, for several worker replicas sharing one set of tables. A batch locks its
//! subscriptions (`SELECT ... FOR UPDATE`, in id order, so replicas cannot deadlock), inserts its
//! rows in one statement per table (`ON CONFLICT DO NOTHING ... RETURNING` tells which were new)
//! and commits once. Connections are re-established after any failure.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, Row, Statement};

use self::connect::PgTarget;
use super::migrations;
use super::plan::{self, IncidentRow};
use super::UnknownSubscriptions;
use super::{
    event_kind_column, event_state_column, incident_kind_column, object_id_columns,
    subscription_state_column, EventState, EventStore, IngestOutcome, IngestRequest, StoreError,
    StoredEvent, SubscriptionIncident, SubscriptionRecord, SubscriptionState,
};
use crate::notification::ObjectKind;

/// Key of the advisory lock taken while migrating, so that replicas starting together migrate
/// once ("pushgate" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7075_7368_6761_7465;

/// A commit that has not finished by then is abandoned (its connection dropped, so the server
/// rolls it back) and answered 503: Exchange retries, and the gateway does not time out first.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Used when `database_url` sets no `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const PURGE_CHUNK: i64 = 5_000;

mod claims;
pub mod connect;
mod mailboxes;
mod reservations;

const SUBSCRIPTION_SELECT: &str = concat!(
    "SELECT subscription_id, tenant, last_watermark, ",
    "last_notification_at",
    ", state, state_reason, ",
    "updated_at",
    ", mailbox, replay_from FROM subscriptions"
);

const EVENT_SELECT: &str = concat!(
    "SELECT id, tenant, subscription_id, previous_watermark, watermark, dedupe_key, position, kind,
        object_kind, object_id, object_change_key, parent_folder_id, parent_folder_change_key,
        old_object_kind, old_object_id, old_object_change_key, old_parent_folder_id,
        old_parent_folder_change_key, unread_count, event_time, ",
    "received_at",
    ", request_id, state, ",
    "processed_at",
    ", attempts, last_error, ",
    "next_attempt_at",
    " FROM notification_events"
);

const INCIDENT_SELECT: &str = concat!(
    "SELECT id, tenant, subscription_id, kind, response_class, response_code, message_text, detail, ",
    "received_at",
    ", request_id FROM subscription_events"
);

const REGISTER: &str = "INSERT INTO subscriptions (subscription_id, tenant, state, updated_at)
    SELECT id, tenant, 'active', $3::timestamptz
    FROM UNNEST($1::text[], $2::text[]) AS u(id, tenant) ORDER BY id
    ON CONFLICT (subscription_id) DO NOTHING
    RETURNING subscription_id";

const INSERT_EVENTS: &str = "INSERT INTO notification_events (
        tenant, subscription_id, previous_watermark, watermark, dedupe_key, position, kind,
        object_kind, object_id, object_change_key, parent_folder_id, parent_folder_change_key,
        old_object_kind, old_object_id, old_object_change_key,
        old_parent_folder_id, old_parent_folder_change_key,
        unread_count, event_time, received_at, request_id)
    SELECT tenant, subscription_id, previous_watermark, watermark, dedupe_key, position, kind,
        object_kind, object_id, object_change_key, parent_folder_id, parent_folder_change_key,
        old_object_kind, old_object_id, old_object_change_key,
        old_parent_folder_id, old_parent_folder_change_key,
        unread_count, event_time, received_at, request_id
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[],
                $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                $14::text[], $15::text[], $16::text[], $17::text[], $18::int4[], $19::text[],
                $20::timestamptz[], $21::text[])
      WITH ORDINALITY AS u(tenant, subscription_id, previous_watermark, watermark, dedupe_key,
        position, kind, object_kind, object_id, object_change_key, parent_folder_id,
        parent_folder_change_key, old_object_kind, old_object_id, old_object_change_key,
        old_parent_folder_id, old_parent_folder_change_key, unread_count, event_time,
        received_at, request_id, ordinal)
    ORDER BY ordinal
    ON CONFLICT (subscription_id, dedupe_key) DO NOTHING
    RETURNING subscription_id, dedupe_key";

const INSERT_INCIDENTS: &str = "INSERT INTO subscription_events (
        tenant, subscription_id, kind, response_class, response_code, message_text, detail,
        dedupe_key, received_at, request_id)
    SELECT tenant, subscription_id, kind, response_class, response_code, message_text, detail,
        dedupe_key, received_at, request_id
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::timestamptz[], $10::text[])
      WITH ORDINALITY AS u(tenant, subscription_id, kind, response_class, response_code,
        message_text, detail, dedupe_key, received_at, request_id, ordinal)
    ORDER BY ordinal
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING dedupe_key";

const UPDATE_SUBSCRIPTIONS: &str = "UPDATE subscriptions AS s SET
        last_watermark = u.last_watermark,
        last_notification_at = u.last_notification_at,
        state = u.state, state_reason = u.state_reason, updated_at = u.updated_at,
        replay_from = u.replay_from
    FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                $6::timestamptz[], $7::text[])
      AS u(subscription_id, last_watermark, last_notification_at, state, state_reason, updated_at,
           replay_from)
    WHERE s.subscription_id = u.subscription_id";

/// Statements prepared once per connection.
struct Statements {
    register: Statement,
    load: Statement,
    insert_events: Statement,
    insert_incidents: Statement,
    update_subscriptions: Statement,
}

struct Connection {
    client: Client,
    statements: Statements,
}

impl Connection {
    async fn open(target: &PgTarget) -> Result<Self, StoreError> {
        let client = target.connect().await?;
        let prepare = |sql: String| {
            let client = &client;
            async move {
                client
                    .prepare(&sql)
                    .await
                    .map_err(|e| pg_error("preparing statements", e))
            }
        };
        let statements = Statements {
            register: prepare(REGISTER.to_string()).await?,
            load: prepare(format!(
                "{SUBSCRIPTION_SELECT} WHERE subscription_id = ANY($1::text[])
                 ORDER BY subscription_id FOR UPDATE"
            ))
            .await?,
            insert_events: prepare(INSERT_EVENTS.to_string()).await?,
            insert_incidents: prepare(INSERT_INCIDENTS.to_string()).await?,
            update_subscriptions: prepare(UPDATE_SUBSCRIPTIONS.to_string()).await?,
        };
        Ok(Self { client, statements })
    }
}

/// Data errors (class 22 data exception, 23 integrity, 54 program limit, P0 raised by a
/// function) reject the data; everything else (connection, shutdown, lock, resources) is
/// "try again later".
fn pg_error(context: &str, error: tokio_postgres::Error) -> StoreError {
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        let text = format!("{context}: {db}");
        return if ["22", "23", "54", "P0"]
            .iter()
            .any(|class| code.starts_with(class))
        {
            StoreError::Rejected(text)
        } else {
            StoreError::Unavailable(text)
        };
    }
    let mut text = format!("{context}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    StoreError::Unavailable(text)
}

fn column<T>(row: &Row, index: usize) -> Result<T, StoreError>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    row.try_get(index).map_err(|e| StoreError::Corrupt {
        column: "postgres column",
        value: format!("#{index}: {e}"),
    })
}

fn subscription_record(row: &Row) -> Result<SubscriptionRecord, StoreError> {
    subscription_record_at(row, 0)
}

/// The subscription columns of [`SUBSCRIPTION_SELECT`] starting at column `at` (joins put them
/// after others).
fn subscription_record_at(row: &Row, at: usize) -> Result<SubscriptionRecord, StoreError> {
    let last_at: Option<OffsetDateTime> = column(row, at + 3)?;
    let state: String = column(row, at + 4)?;
    let updated_at: OffsetDateTime = column(row, at + 6)?;
    Ok(SubscriptionRecord {
        subscription_id: column(row, at)?,
        tenant: column(row, at + 1)?,
        last_watermark: column(row, at + 2)?,
        last_notification_at: last_at,
        state: subscription_state_column(&state)?,
        state_reason: column(row, at + 5)?,
        updated_at,
        mailbox: column(row, at + 7)?,
        replay_from: column(row, at + 8)?,
    })
}

fn stored_event(row: &Row) -> Result<StoredEvent, StoreError> {
    let kind: String = column(row, 7)?;
    let object_kind: Option<String> = column(row, 8)?;
    let old_object_kind: Option<String> = column(row, 13)?;
    let received_at: OffsetDateTime = column(row, 20)?;
    let state: String = column(row, 22)?;
    let processed_at: Option<OffsetDateTime> = column(row, 23)?;
    let attempts: i32 = column(row, 24)?;
    let next_attempt_at: Option<OffsetDateTime> = column(row, 26)?;
    Ok(StoredEvent {
        id: column(row, 0)?,
        tenant: column(row, 1)?,
        subscription_id: column(row, 2)?,
        previous_watermark: column(row, 3)?,
        watermark: column(row, 4)?,
        dedupe_key: column(row, 5)?,
        position: column(row, 6)?,
        kind: event_kind_column(&kind)?,
        object: object_id_columns(
            Some(object_kind.as_deref().unwrap_or("item")),
            column(row, 9)?,
            column(row, 10)?,
            ObjectKind::Item,
        )?,
        parent_folder_id: object_id_columns(
            None,
            column(row, 11)?,
            column(row, 12)?,
            ObjectKind::Folder,
        )?,
        old_object: object_id_columns(
            Some(old_object_kind.as_deref().unwrap_or("item")),
            column(row, 14)?,
            column(row, 15)?,
            ObjectKind::Item,
        )?,
        old_parent_folder_id: object_id_columns(
            None,
            column(row, 16)?,
            column(row, 17)?,
            ObjectKind::Folder,
        )?,
        unread_count: column(row, 18)?,
        event_time: column(row, 19)?,
        received_at,
        request_id: column(row, 21)?,
        state: event_state_column(&state)?,
        processed_at,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_error: column(row, 25)?,
        next_attempt_at,
    })
}

/// Connections for everything but ingest's commits. The sync step works on up to 16
/// subscriptions and 16 outbox rows at once, besides the API, the subscription manager and the
/// resync; with one connection each of their statements waited for every other's, and a worker
/// on PostgreSQL fell behind at 100 Outlook changes/s (benches/sync_latency.rs). Concurrent work
/// on several connections is what several replicas do already: the claims and version guards are
/// made for it.
const AUX_CONNECTIONS: usize = 4;

/// The PostgreSQL store: one connection for commits (the group committer serialises them), a few
/// for everything else.
pub struct PostgresStore {
    target: PgTarget,
    ingest: Mutex<Option<Connection>>,
    /// `AUX_CONNECTIONS` slots, opened on first use (the first at start); a permit of `aux_free`
    /// is held while a slot is used, so a holder always finds one unlocked.
    aux: Vec<Mutex<Option<Connection>>>,
    aux_free: tokio::sync::Semaphore,
}

impl PostgresStore {
    /// Connects, runs the migrations, and keeps the connection for auxiliary work. Fails when
    /// the server cannot be reached: a worker that cannot store must not start answering.
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
        let mut target = PgTarget::parse(database_url)?;
        let config = target.config_mut();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("pushgate-worker");
        }
        let mut client = target.connect().await?;
        migrate(&mut client).await?;
        drop(client);
        let first = Connection::open(&target).await?;
        let mut aux = vec![Mutex::new(Some(first))];
        aux.extend((1..AUX_CONNECTIONS).map(|_| Mutex::new(None)));
        Ok(Self {
            target,
            ingest: Mutex::new(None),
            aux,
            aux_free: tokio::sync::Semaphore::new(AUX_CONNECTIONS),
        })
    }

    /// The slot's connection, re-established when missing or closed.
    async fn connected<'a>(
        &self,
        slot: &'a Mutex<Option<Connection>>,
    ) -> Result<MutexGuard<'a, Option<Connection>>, StoreError> {
        let mut guard = slot.lock().await;
        self.reopen_if_closed(&mut guard).await?;
        Ok(guard)
    }

    async fn reopen_if_closed(
        &self,
        guard: &mut MutexGuard<'_, Option<Connection>>,
    ) -> Result<(), StoreError> {
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            **guard = None;
            **guard = Some(Connection::open(&self.target).await?);
        }
        Ok(())
    }

    /// Runs `work` on the auxiliary connection, dropping the connection after a failure that
    /// is not about the data.
    async fn with_aux<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(
            &'c mut Connection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'c>,
        >,
    {
        let _permit = self
            .aux_free
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        // With a permit, at most `AUX_CONNECTIONS - 1` others hold a slot: one is unlocked.
        let Some(mut guard) = self.aux.iter().find_map(|slot| slot.try_lock().ok()) else {
            return Err(StoreError::Closed);
        };
        self.reopen_if_closed(&mut guard).await?;
        let Some(connection) = guard.as_mut() else {
            return Err(StoreError::Closed);
        };
        let result = match tokio::time::timeout(COMMIT_TIMEOUT, work(connection)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from PostgreSQL within {COMMIT_TIMEOUT:?}"
            ))),
        };
        if matches!(result, Err(StoreError::Unavailable(_))) {
            *guard = None;
        }
        result
    }
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let context = |e| pg_error("migrating", e);
    let tx = client.transaction().await.map_err(context)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(context)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS pushgate_schema_migrations (
             version BIGINT PRIMARY KEY, name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(context)?;
    let newest: Option<i64> = tx
        .query_one("SELECT max(version) FROM pushgate_schema_migrations", &[])
        .await
        .map_err(context)?
        .try_get(0)
        .map_err(context)?;
    for migration in migrations::pending(migrations::POSTGRES, newest)? {
        tx.batch_execute(migration.sql)
            .await
            .map_err(|e| StoreError::Migration {
                version: migration.version,
                name: migration.name,
                detail: match pg_error("", e) {
                    StoreError::Rejected(text) | StoreError::Unavailable(text) => text,
                    other => other.to_string(),
                },
            })?;
        tx.execute(
            "INSERT INTO pushgate_schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(context)?;
    }
    tx.commit().await.map_err(context)
}

/// One group commit in three round trips: tokio-postgres pipelines requests whose futures are
/// polled together, and the server runs them in order. An error anywhere aborts the transaction
/// (a `COMMIT` after a failed statement only rolls back), and the caller drops the connection.
async fn commit_batch(
    connection: &Connection,
    batch: &[IngestRequest],
    unknown: UnknownSubscriptions,
) -> Result<Vec<IngestOutcome>, StoreError> {
    let context = |e| pg_error("storing notifications", e);
    let client = &connection.client;
    let statements = &connection.statements;
    let now = OffsetDateTime::now_utc();
    let keys = plan::subscription_keys(batch);
    let ids: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let tenants: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let register = unknown == UnknownSubscriptions::Accept && !ids.is_empty();

    // Round trip 1: open, register unknown subscriptions (accept mode), lock the batch's rows.
    let (_, registered_rows, loaded_rows) = tokio::try_join!(
        client.batch_execute("BEGIN"),
        async {
            if register {
                client
                    .query(&statements.register, &[&ids, &tenants, &now])
                    .await
            } else {
                Ok(Vec::new())
            }
        },
        async {
            if ids.is_empty() {
                Ok(Vec::new())
            } else {
                client.query(&statements.load, &[&ids]).await
            }
        },
    )
    .map_err(context)?;
    let mut registered = HashSet::new();
    for row in &registered_rows {
        registered.insert(column::<String>(row, 0)?);
    }
    let mut known = HashMap::new();
    for row in &loaded_rows {
        let record = subscription_record(row)?;
        known.insert(record.subscription_id.clone(), record);
    }

    // Round trip 2: the rows, learning which were new.
    let rows = plan::plan_rows(batch, &known, unknown);
    let (inserted_events, inserted_incidents) = tokio::try_join!(
        insert_events(client, &statements.insert_events, &rows.events),
        insert_incidents(client, &statements.insert_incidents, &rows.incidents),
    )?;

    // Round trip 3: bookkeeping, then COMMIT.
    let settled = plan::settle(
        batch,
        &rows,
        &inserted_events,
        &inserted_incidents,
        &known,
        &registered,
        now,
    );
    let updates = &settled.subscription_updates;
    let id: Vec<&str> = updates.iter().map(|r| r.subscription_id.as_str()).collect();
    let last_watermark: Vec<Option<&str>> = updates
        .iter()
        .map(|r| r.last_watermark.as_deref())
        .collect();
    let last_at: Vec<Option<OffsetDateTime>> =
        updates.iter().map(|r| r.last_notification_at).collect();
    let state: Vec<&str> = updates.iter().map(|r| r.state.as_str()).collect();
    let reason: Vec<Option<&str>> = updates.iter().map(|r| r.state_reason.as_deref()).collect();
    let updated_at: Vec<OffsetDateTime> = updates.iter().map(|r| r.updated_at).collect();
    let replay_from: Vec<Option<&str>> = updates.iter().map(|r| r.replay_from.as_deref()).collect();
    tokio::try_join!(
        insert_incidents(client, &statements.insert_incidents, &settled.gap_incidents),
        async {
            if updates.is_empty() {
                return Ok(0);
            }
            client
                .execute(
                    &statements.update_subscriptions,
                    &[
                        &id,
                        &last_watermark,
                        &last_at,
                        &state,
                        &reason,
                        &updated_at,
                        &replay_from,
                    ],
                )
                .await
                .map_err(context)
        },
        async { client.batch_execute("COMMIT").await.map_err(context) },
    )?;
    Ok(settled.outcomes)
}

/// Inserts events; returns, per row, whether it was new.
async fn insert_events(
    client: &Client,
    statement: &Statement,
    e: &[plan::EventRow<'_>],
) -> Result<Vec<bool>, StoreError> {
    if e.is_empty() {
        return Ok(Vec::new());
    }
    let tenant: Vec<&str> = e.iter().map(|r| r.tenant).collect();
    let subscription_id: Vec<&str> = e.iter().map(|r| r.subscription_id).collect();
    let previous_watermark: Vec<Option<&str>> = e.iter().map(|r| r.previous_watermark).collect();
    let watermark: Vec<Option<&str>> = e.iter().map(|r| r.watermark).collect();
    let dedupe_key: Vec<&str> = e.iter().map(|r| r.dedupe_key.as_str()).collect();
    let position: Vec<i32> = e.iter().map(|r| r.position).collect();
    let kind: Vec<&str> = e.iter().map(|r| r.kind).collect();
    let object_kind: Vec<Option<&str>> = e.iter().map(|r| r.object_kind).collect();
    let object_id: Vec<Option<&str>> = e.iter().map(|r| r.object_id).collect();
    let object_change_key: Vec<Option<&str>> = e.iter().map(|r| r.object_change_key).collect();
    let parent_folder_id: Vec<Option<&str>> = e.iter().map(|r| r.parent_folder_id).collect();
    let parent_change_key: Vec<Option<&str>> =
        e.iter().map(|r| r.parent_folder_change_key).collect();
    let old_object_kind: Vec<Option<&str>> = e.iter().map(|r| r.old_object_kind).collect();
    let old_object_id: Vec<Option<&str>> = e.iter().map(|r| r.old_object_id).collect();
    let old_object_change_key: Vec<Option<&str>> =
        e.iter().map(|r| r.old_object_change_key).collect();
    let old_parent_folder_id: Vec<Option<&str>> =
        e.iter().map(|r| r.old_parent_folder_id).collect();
    let old_parent_change_key: Vec<Option<&str>> =
        e.iter().map(|r| r.old_parent_folder_change_key).collect();
    let unread_count: Vec<Option<i32>> = e.iter().map(|r| r.unread_count).collect();
    let event_time: Vec<Option<&str>> = e.iter().map(|r| r.event_time).collect();
    let received_at: Vec<OffsetDateTime> = e.iter().map(|r| r.received_at).collect();
    let request_id: Vec<Option<&str>> = e.iter().map(|r| r.request_id).collect();
    let returned = client
        .query(
            statement,
            &[
                &tenant,
                &subscription_id,
                &previous_watermark,
                &watermark,
                &dedupe_key,
                &position,
                &kind,
                &object_kind,
                &object_id,
                &object_change_key,
                &parent_folder_id,
                &parent_change_key,
                &old_object_kind,
                &old_object_id,
                &old_object_change_key,
                &old_parent_folder_id,
                &old_parent_change_key,
                &unread_count,
                &event_time,
                &received_at,
                &request_id,
            ],
        )
        .await
        .map_err(|e| pg_error("storing events", e))?;
    let mut new_keys = HashSet::with_capacity(returned.len());
    for row in &returned {
        new_keys.insert((column::<String>(row, 0)?, column::<String>(row, 1)?));
    }
    Ok(e.iter()
        .map(|row| new_keys.contains(&(row.subscription_id.to_string(), row.dedupe_key.clone())))
        .collect())
}

/// Inserts incidents; returns, per row, whether it was new.
async fn insert_incidents(
    client: &Client,
    statement: &Statement,
    rows: &[IncidentRow<'_>],
) -> Result<Vec<bool>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let tenant: Vec<&str> = rows.iter().map(|r| r.tenant).collect();
    let subscription_id: Vec<Option<&str>> = rows.iter().map(|r| r.subscription_id).collect();
    let kind: Vec<&str> = rows.iter().map(|r| r.kind).collect();
    let response_class: Vec<Option<&str>> = rows.iter().map(|r| r.response_class).collect();
    let response_code: Vec<Option<&str>> = rows.iter().map(|r| r.response_code).collect();
    let message_text: Vec<Option<&str>> = rows.iter().map(|r| r.message_text).collect();
    let detail: Vec<Option<&str>> = rows.iter().map(|r| r.detail.as_deref()).collect();
    let dedupe_key: Vec<&str> = rows.iter().map(|r| r.dedupe_key.as_str()).collect();
    let received_at: Vec<OffsetDateTime> = rows.iter().map(|r| r.received_at).collect();
    let request_id: Vec<Option<&str>> = rows.iter().map(|r| r.request_id).collect();
    let returned = client
        .query(
            statement,
            &[
                &tenant,
                &subscription_id,
                &kind,
                &response_class,
                &response_code,
                &message_text,
                &detail,
                &dedupe_key,
                &received_at,
                &request_id,
            ],
        )
        .await
        .map_err(|e| pg_error("recording subscription incidents", e))?;
    let mut new_keys = HashSet::with_capacity(returned.len());
    for row in &returned {
        new_keys.insert(column::<String>(row, 0)?);
    }
    Ok(rows
        .iter()
        .map(|row| new_keys.contains(&row.dedupe_key))
        .collect())
}

#[async_trait]
impl EventStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn commit(
        &self,
        batch: &[IngestRequest],
        unknown: UnknownSubscriptions,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let mut guard = self.connected(&self.ingest).await?;
        let Some(connection) = guard.as_ref() else {
            return Err(StoreError::Closed);
        };
        let result =
            match tokio::time::timeout(COMMIT_TIMEOUT, commit_batch(connection, batch, unknown))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "commit not finished within {COMMIT_TIMEOUT:?}"
                ))),
            };
        if result.is_err() {
            // A connection whose transaction may still be open is not reused: dropping it makes
            // the server roll back whatever was open.
            *guard = None;
        }
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .simple_query("SELECT 1")
                    .await
                    .map(|_| ())
                    .map_err(|e| pg_error("ping", e))
            })
        })
        .await
    }

    async fn backlog(&self) -> Result<u64, StoreError> {
        self.with_aux(|c| {
            Box::pin(async move {
                let row = c
                    .client
                    .query_one(
                        "SELECT count(*) FROM notification_events WHERE state = 'pending'",
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error("counting the backlog", e))?;
                let count: i64 = column(&row, 0)?;
                Ok(u64::try_from(count).unwrap_or(0))
            })
        })
        .await
    }

    async fn purge_processed_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            let deleted = self
                .with_aux(|c| {
                    Box::pin(async move {
                        c.client
                            .execute(
                                "DELETE FROM notification_events WHERE id IN (
                                     SELECT id FROM notification_events
                                     WHERE state = 'processed' AND processed_at < $1::timestamptz
                                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                                &[&cutoff, &PURGE_CHUNK],
                            )
                            .await
                            .map_err(|e| pg_error("purging processed events", e))
                    })
                })
                .await?;
            total += deleted;
            if (deleted as i64) < PURGE_CHUNK {
                return Ok(total);
            }
        }
    }

    async fn events(&self, subscription_id: Option<&str>) -> Result<Vec<StoredEvent>, StoreError> {
        let subscription_id = subscription_id.map(str::to_string);
        self.with_aux(|c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        &format!(
                            "{EVENT_SELECT} WHERE $1::text IS NULL OR subscription_id = $1 ORDER BY id"
                        ),
                        &[&subscription_id],
                    )
                    .await
                    .map_err(|e| pg_error("listing events", e))?;
                rows.iter().map(stored_event).collect()
            })
        })
        .await
    }

    async fn subscription(
        &self,
        subscription_id: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        let subscription_id = subscription_id.to_string();
        self.with_aux(|c| {
            Box::pin(async move {
                let row = c
                    .client
                    .query_opt(
                        &format!("{SUBSCRIPTION_SELECT} WHERE subscription_id = $1"),
                        &[&subscription_id],
                    )
                    .await
                    .map_err(|e| pg_error("reading a subscription", e))?;
                row.as_ref().map(subscription_record).transpose()
            })
        })
        .await
    }

    async fn incidents(
        &self,
        subscription_id: Option<&str>,
    ) -> Result<Vec<SubscriptionIncident>, StoreError> {
        let subscription_id = subscription_id.map(str::to_string);
        self.with_aux(|c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        &format!(
                            "{INCIDENT_SELECT} WHERE $1::text IS NULL OR subscription_id = $1 ORDER BY id"
                        ),
                        &[&subscription_id],
                    )
                    .await
                    .map_err(|e| pg_error("listing incidents", e))?;
                rows.iter()
                    .map(|row| {
                        let kind: String = column(row, 3)?;
                        let received_at: OffsetDateTime = column(row, 8)?;
                        Ok(SubscriptionIncident {
                            id: column(row, 0)?,
                            tenant: column(row, 1)?,
                            subscription_id: column(row, 2)?,
                            kind: incident_kind_column(&kind)?,
                            response_class: column(row, 4)?,
                            response_code: column(row, 5)?,
                            message_text: column(row, 6)?,
                            detail: column(row, 7)?,
                            received_at,
                            request_id: column(row, 9)?,
                        })
                    })
                    .collect()
            })
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
        let now = OffsetDateTime::now_utc();
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "INSERT INTO subscriptions (subscription_id, tenant, state, state_reason, updated_at)
                         VALUES ($1, $2, $3, $4, $5::timestamptz)
                         ON CONFLICT (subscription_id) DO UPDATE SET state = excluded.state,
                             state_reason = excluded.state_reason, updated_at = excluded.updated_at",
                        &[&subscription_id, &tenant, &state.as_str(), &reason, &now],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| pg_error("setting a subscription's state", e))
            })
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
        let processed_at = matches!(state, EventState::Processed | EventState::Failed).then(|| at);
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE notification_events SET state = $2, processed_at = $3::timestamptz
                         WHERE id = ANY($1::int8[])",
                        &[&ids, &state.as_str(), &processed_at],
                    )
                    .await
                    .map_err(|e| pg_error("setting events' state", e))
            })
        })
        .await
    }
}
