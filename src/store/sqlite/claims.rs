//! Event claims on SQLite: one writer, so a claim is a plain IMMEDIATE transaction that finds the
//! subscriptions whose oldest pending event is due and unclaimed and marks their events claimed.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use time::OffsetDateTime;

use super::mailboxes::in_transaction;
use super::{event_columns, sqlite_error, stored_event, SqliteStore, EVENT_COLUMNS};
use crate::store::claims::{
    release_previous_run_sql, ClaimedEvents, EventClaims, RELEASE_PREVIOUS_RUN,
};
use crate::store::mailboxes::{truncate, Lease};
use crate::store::timefmt::format_utc;
use crate::store::{EventState, StoreError, StoredEvent};

/// Releases `owner`'s claims on a subscription's pending events.
const RELEASE_SUBSCRIPTION: &str = "UPDATE notification_events
    SET claimed_by = NULL, claimed_until = NULL
    WHERE subscription_id = ?1 AND state = 'pending' AND claimed_by = ?2";

#[async_trait]
impl EventClaims for SqliteStore {
    async fn claim_events(
        &self,
        now: OffsetDateTime,
        lease: &Lease,
        max_subscriptions: usize,
        max_events: usize,
    ) -> Result<Vec<ClaimedEvents>, StoreError> {
        let lease = lease.clone();
        let max_subscriptions = i64::try_from(max_subscriptions).unwrap_or(i64::MAX);
        let max_events = i64::try_from(max_events).unwrap_or(i64::MAX);
        self.writer
            .call(move |connection| {
                in_transaction(connection, "claiming events", |tx| {
                    let context = |e| sqlite_error("claiming events", e);
                    let now_text = format_utc(now);
                    let subscriptions: Vec<String> = tx
                        .prepare_cached(
                            "SELECT h.subscription_id FROM (
                                 SELECT subscription_id, min(id) AS head,
                                        max(claimed_until) AS claimed_until
                                 FROM notification_events WHERE state = 'pending'
                                 GROUP BY subscription_id) h
                             JOIN notification_events e ON e.id = h.head
                             WHERE (e.next_attempt_at IS NULL OR e.next_attempt_at <= ?1)
                               AND (h.claimed_until IS NULL OR h.claimed_until <= ?1)
                             ORDER BY h.head LIMIT ?2",
                        )
                        .and_then(|mut statement| {
                            statement
                                .query_map(params![now_text, max_subscriptions], |row| row.get(0))?
                                .collect::<Result<_, _>>()
                        })
                        .map_err(context)?;
                    let mut claimed = Vec::with_capacity(subscriptions.len());
                    for subscription_id in subscriptions {
                        let rows = tx
                            .prepare_cached(&format!(
                                "SELECT {EVENT_COLUMNS} FROM notification_events
                                 WHERE subscription_id = ?1 AND state = 'pending'
                                 ORDER BY id LIMIT ?2"
                            ))
                            .and_then(|mut statement| {
                                statement
                                    .query_map(params![subscription_id, max_events], event_columns)?
                                    .collect::<Result<Vec<_>, _>>()
                            })
                            .map_err(context)?;
                        let events = rows
                            .into_iter()
                            .map(stored_event)
                            .collect::<Result<Vec<_>, _>>()?;
                        {
                            let mut mark = tx
                                .prepare_cached(
                                    "UPDATE notification_events
                                     SET claimed_by = ?2, claimed_until = ?3 WHERE id = ?1",
                                )
                                .map_err(context)?;
                            for event in &events {
                                mark.execute(params![
                                    event.id,
                                    lease.owner,
                                    format_utc(lease.until)
                                ])
                                .map_err(context)?;
                            }
                        }
                        let known: Option<(String, Option<String>)> = tx
                            .query_row(
                                "SELECT tenant, mailbox FROM subscriptions
                                 WHERE subscription_id = ?1",
                                [&subscription_id],
                                |row| Ok((row.get(0)?, row.get(1)?)),
                            )
                            .optional()
                            .map_err(context)?;
                        let (tenant, mailbox) = match known {
                            Some(known) => known,
                            None => (
                                events.first().map(|e| e.tenant.clone()).unwrap_or_default(),
                                None,
                            ),
                        };
                        claimed.push(ClaimedEvents {
                            subscription_id,
                            tenant,
                            mailbox,
                            events,
                        });
                    }
                    Ok(claimed)
                })
            })
            .await
    }

    async fn finish_events(&self, ids: &[i64], now: OffsetDateTime) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.writer
            .call(move |connection| {
                in_transaction(connection, "finishing events", |tx| {
                    let mut finish = tx
                        .prepare_cached(
                            "UPDATE notification_events SET state = 'processed', processed_at = ?2,
                                 claimed_by = NULL, claimed_until = NULL
                             WHERE id = ?1 AND state = 'pending'",
                        )
                        .map_err(|e| sqlite_error("finishing events", e))?;
                    let now = format_utc(now);
                    let mut changed = 0u64;
                    for id in &ids {
                        changed += finish
                            .execute(params![id, now])
                            .map_err(|e| sqlite_error("finishing events", e))?
                            as u64;
                    }
                    Ok(changed)
                })
            })
            .await
    }

    async fn release_events(&self, ids: &[i64], owner: &str) -> Result<u64, StoreError> {
        let (ids, owner) = (ids.to_vec(), owner.to_string());
        self.writer
            .call(move |connection| {
                in_transaction(connection, "releasing events", |tx| {
                    let mut release = tx
                        .prepare_cached(
                            "UPDATE notification_events SET claimed_by = NULL, claimed_until = NULL
                             WHERE id = ?1 AND claimed_by = ?2 AND state = 'pending'",
                        )
                        .map_err(|e| sqlite_error("releasing events", e))?;
                    let mut changed = 0u64;
                    for id in &ids {
                        changed += release
                            .execute(params![id, owner])
                            .map_err(|e| sqlite_error("releasing events", e))?
                            as u64;
                    }
                    Ok(changed)
                })
            })
            .await
    }

    async fn retry_event(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        next_attempt_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.settle_and_release(
            "recording a failed event",
            id,
            "UPDATE notification_events SET attempts = attempts + 1, last_error = ?2,
                 next_attempt_at = ?3
             WHERE id = ?1",
            (id, truncate(error), format_utc(next_attempt_at)),
            owner,
        )
        .await
    }

    async fn dead_letter(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.settle_and_release(
            "parking a dead letter",
            id,
            "UPDATE notification_events SET state = 'failed', processed_at = ?2,
                 attempts = attempts + 1, last_error = ?3, next_attempt_at = NULL,
                 claimed_by = NULL, claimed_until = NULL
             WHERE id = ?1",
            (id, format_utc(now), truncate(error)),
            owner,
        )
        .await
    }

    async fn pending_events(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_in_state(EventState::Pending, after, limit, "listing pending events")
            .await
    }

    async fn dead_events(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_in_state(EventState::Failed, after, limit, "listing dead letters")
            .await
    }

    async fn replay_event(&self, id: i64) -> Result<bool, StoreError> {
        self.writer
            .call(move |connection| {
                connection
                    .execute(
                        "UPDATE notification_events SET state = 'pending', processed_at = NULL,
                             attempts = 0, next_attempt_at = NULL, claimed_by = NULL,
                             claimed_until = NULL
                         WHERE id = ?1 AND state = 'failed'",
                        [id],
                    )
                    .map(|changed| changed > 0)
                    .map_err(|e| sqlite_error("replaying a dead letter", e))
            })
            .await
    }

    async fn release_leases_of_previous_run(&self, owner_prefix: &str) -> Result<u64, StoreError> {
        let owner_prefix = owner_prefix.to_string();
        self.writer
            .call(move |connection| {
                in_transaction(connection, "releasing a previous run's leases", |tx| {
                    let mut released = 0u64;
                    for table in RELEASE_PREVIOUS_RUN {
                        released += tx
                            .execute(
                                &release_previous_run_sql(table, "?1"),
                                params![owner_prefix],
                            )
                            .map_err(|e| sqlite_error("releasing a previous run's leases", e))?
                            as u64;
                    }
                    Ok(released)
                })
            })
            .await
    }
}

impl SqliteStore {
    /// When event `id` is still pending: runs `update` on it (`parameters` start with the id)
    /// and releases `owner`'s claims on its subscription, in one transaction. Whether it was
    /// pending.
    async fn settle_and_release(
        &self,
        context: &'static str,
        id: i64,
        update: &'static str,
        parameters: impl rusqlite::Params + Send + 'static,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        self.writer
            .call(move |connection| {
                in_transaction(connection, context, |tx| {
                    let context = |e| sqlite_error(context, e);
                    let subscription_id: Option<String> = tx
                        .query_row(
                            "SELECT subscription_id FROM notification_events
                             WHERE id = ?1 AND state = 'pending'",
                            [id],
                            |row| row.get(0),
                        )
                        .optional()
                        .map_err(context)?;
                    let Some(subscription_id) = subscription_id else {
                        return Ok(false);
                    };
                    tx.execute(update, parameters).map_err(context)?;
                    tx.execute(RELEASE_SUBSCRIPTION, params![subscription_id, owner])
                        .map_err(context)?;
                    Ok(true)
                })
            })
            .await
    }

    /// A page of the events in `state`, by id. The state is written into the SQL (it is one of
    /// the enum's own words) so that SQLite can use the partial indexes on it.
    async fn events_in_state(
        &self,
        state: EventState,
        after: Option<i64>,
        limit: usize,
        context: &'static str,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM notification_events
             WHERE state = '{}' AND (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2",
            state.as_str()
        );
        self.reader
            .call(move |connection| {
                let rows = connection
                    .prepare_cached(&sql)
                    .and_then(|mut statement| {
                        statement
                            .query_map(params![after, limit], event_columns)?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(|e| sqlite_error(context, e))?;
                rows.into_iter().map(stored_event).collect()
            })
            .await
    }
}
