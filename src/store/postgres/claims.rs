//! Event claims on PostgreSQL, safe for several replicas sharing the event table. A claim locks
//! the candidate subscriptions' rows with `FOR UPDATE SKIP LOCKED`, then, in a statement of its
//! own (a fresh snapshot: every claim committed before the lock was granted is visible), checks
//! again that each is unclaimed and marks its events. A replica that claimed a subscription held
//! its row lock until its claim was committed, so no two claims on a subscription can both pass
//! the check.

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;

use super::mailboxes::{begin_error, commit_error};
use super::{column, pg_error, stored_event, PostgresStore, EVENT_SELECT};
use crate::store::claims::{
    release_previous_run_sql, ClaimedEvents, EventClaims, RELEASE_PREVIOUS_RUN,
};
use crate::store::mailboxes::{truncate, Lease};
use crate::store::{EventState, StoreError, StoredEvent};

/// Subscriptions whose oldest pending event is due and none of whose pending events is claimed,
/// oldest waiting first; `$1` now, `$2` limit, `$3` optional subscription ids to keep to.
const FREE_SUBSCRIPTIONS: &str = "SELECT h.subscription_id FROM (
        SELECT subscription_id, min(id) AS head, max(claimed_until) AS claimed_until
        FROM notification_events
        WHERE state = 'pending' AND ($3::text[] IS NULL OR subscription_id = ANY($3::text[]))
        GROUP BY subscription_id) h
    JOIN notification_events e ON e.id = h.head
    WHERE (e.next_attempt_at IS NULL OR e.next_attempt_at <= $1::timestamptz)
      AND (h.claimed_until IS NULL OR h.claimed_until <= $1::timestamptz)
    ORDER BY h.head LIMIT $2";

/// Releases `owner`'s claims on a subscription's pending events.
const RELEASE_SUBSCRIPTION: &str = "UPDATE notification_events
    SET claimed_by = NULL, claimed_until = NULL
    WHERE subscription_id = $1 AND state = 'pending' AND claimed_by = $2";

#[async_trait]
impl EventClaims for PostgresStore {
    async fn claim_events(
        &self,
        now: OffsetDateTime,
        lease: &Lease,
        max_subscriptions: usize,
        max_events: usize,
    ) -> Result<Vec<ClaimedEvents>, StoreError> {
        let lease = lease.clone();
        let wanted = i64::try_from(max_subscriptions).unwrap_or(i64::MAX);
        let max_events = i64::try_from(max_events).unwrap_or(i64::MAX);
        self.with_aux(|c| {
            Box::pin(async move {
                let context = |e| pg_error("claiming events", e);
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let no_ids: Option<Vec<String>> = None;
                // Twice as many candidates as wanted: some may be locked by another replica.
                let candidates: Vec<String> = tx
                    .query(
                        FREE_SUBSCRIPTIONS,
                        &[&now, &wanted.saturating_mul(2), &no_ids],
                    )
                    .await
                    .map_err(context)?
                    .iter()
                    .map(|row| column(row, 0))
                    .collect::<Result<_, _>>()?;
                if candidates.is_empty() {
                    return Ok(Vec::new());
                }
                let locked: Vec<String> = tx
                    .query(
                        "SELECT subscription_id FROM subscriptions
                         WHERE subscription_id = ANY($1::text[])
                         FOR UPDATE SKIP LOCKED",
                        &[&candidates],
                    )
                    .await
                    .map_err(context)?
                    .iter()
                    .map(|row| column(row, 0))
                    .collect::<Result<_, _>>()?;
                if locked.is_empty() {
                    return Ok(Vec::new());
                }
                // The check again, on what is committed now that the rows are ours.
                let free: Vec<String> = tx
                    .query(FREE_SUBSCRIPTIONS, &[&now, &wanted, &Some(locked)])
                    .await
                    .map_err(context)?
                    .iter()
                    .map(|row| column(row, 0))
                    .collect::<Result<_, _>>()?;
                if free.is_empty() {
                    return Ok(Vec::new());
                }
                let claimed_ids: Vec<i64> = tx
                    .query(
                        "UPDATE notification_events SET claimed_by = $3,
                             claimed_until = $4::timestamptz
                         WHERE id IN (
                             SELECT id FROM (
                                 SELECT id, row_number() OVER (
                                     PARTITION BY subscription_id ORDER BY id) AS rank
                                 FROM notification_events
                                 WHERE state = 'pending' AND subscription_id = ANY($1::text[])
                             ) ranked WHERE rank <= $2)
                         RETURNING id",
                        &[&free, &max_events, &lease.owner, &lease.until],
                    )
                    .await
                    .map_err(context)?
                    .iter()
                    .map(|row| column(row, 0))
                    .collect::<Result<_, _>>()?;
                let events = tx
                    .query(
                        &format!("{EVENT_SELECT} WHERE id = ANY($1::int8[]) ORDER BY id"),
                        &[&claimed_ids],
                    )
                    .await
                    .map_err(context)?
                    .iter()
                    .map(stored_event)
                    .collect::<Result<Vec<_>, _>>()?;
                let owners = tx
                    .query(
                        "SELECT subscription_id, tenant, mailbox FROM subscriptions
                         WHERE subscription_id = ANY($1::text[])",
                        &[&free],
                    )
                    .await
                    .map_err(context)?;
                tx.commit().await.map_err(commit_error)?;
                let mut claimed = Vec::with_capacity(free.len());
                for subscription_id in free {
                    let owner = owners
                        .iter()
                        .find(|row| column::<String>(row, 0).is_ok_and(|id| id == subscription_id));
                    let (tenant, mailbox) = match owner {
                        Some(row) => (column(row, 1)?, column(row, 2)?),
                        None => (String::new(), None),
                    };
                    let events: Vec<StoredEvent> = events
                        .iter()
                        .filter(|e| e.subscription_id == subscription_id)
                        .cloned()
                        .collect();
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
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE notification_events SET state = 'processed',
                             processed_at = $2::timestamptz,
                             claimed_by = NULL, claimed_until = NULL
                         WHERE id = ANY($1::int8[]) AND state = 'pending'",
                        &[&ids, &now],
                    )
                    .await
                    .map_err(|e| pg_error("finishing events", e))
            })
        })
        .await
    }

    async fn release_events(&self, ids: &[i64], owner: &str) -> Result<u64, StoreError> {
        let (ids, owner) = (ids.to_vec(), owner.to_string());
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE notification_events SET claimed_by = NULL, claimed_until = NULL
                         WHERE id = ANY($1::int8[]) AND claimed_by = $2 AND state = 'pending'",
                        &[&ids, &owner],
                    )
                    .await
                    .map_err(|e| pg_error("releasing events", e))
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
            "UPDATE notification_events SET attempts = attempts + 1, last_error = $2,
                 next_attempt_at = $3::timestamptz
             WHERE id = $1 AND state = 'pending'
             RETURNING subscription_id",
            vec![
                Box::new(id),
                Box::new(truncate(error)),
                Box::new(next_attempt_at),
            ],
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
            "UPDATE notification_events SET state = 'failed',
                 processed_at = $2::timestamptz, attempts = attempts + 1,
                 last_error = $3, next_attempt_at = NULL,
                 claimed_by = NULL, claimed_until = NULL
             WHERE id = $1 AND state = 'pending'
             RETURNING subscription_id",
            vec![Box::new(id), Box::new(now), Box::new(truncate(error))],
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
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE notification_events SET state = 'pending', processed_at = NULL,
                             attempts = 0, next_attempt_at = NULL, claimed_by = NULL,
                             claimed_until = NULL
                         WHERE id = $1 AND state = 'failed'",
                        &[&id],
                    )
                    .await
                    .map(|changed| changed > 0)
                    .map_err(|e| pg_error("replaying a dead letter", e))
            })
        })
        .await
    }

    async fn release_leases_of_previous_run(&self, owner_prefix: &str) -> Result<u64, StoreError> {
        let owner_prefix = owner_prefix.to_string();
        self.with_aux(|c| {
            Box::pin(async move {
                let mut released = 0u64;
                for table in RELEASE_PREVIOUS_RUN {
                    released += c
                        .client
                        .execute(
                            &release_previous_run_sql(table, "$1::text"),
                            &[&owner_prefix],
                        )
                        .await
                        .map_err(|e| pg_error("releasing a previous run's leases", e))?;
                }
                Ok(released)
            })
        })
        .await
    }
}

impl PostgresStore {
    /// Runs `update` (on a pending event, `RETURNING subscription_id`) and, when it changed the
    /// event, releases `owner`'s claims on that subscription, in one transaction. Whether the
    /// event was still pending.
    async fn settle_and_release(
        &self,
        context: &'static str,
        update: &'static str,
        parameters: Vec<Box<dyn ToSql + Send + Sync>>,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        self.with_aux(|c| {
            Box::pin(async move {
                let context = |e| pg_error(context, e);
                let parameters: Vec<&(dyn ToSql + Sync)> = parameters
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let Some(row) = tx.query_opt(update, &parameters).await.map_err(context)? else {
                    return Ok(false);
                };
                let subscription_id: String = column(&row, 0)?;
                tx.execute(RELEASE_SUBSCRIPTION, &[&subscription_id, &owner])
                    .await
                    .map_err(context)?;
                tx.commit().await.map_err(commit_error)?;
                Ok(true)
            })
        })
        .await
    }

    /// A page of the events in `state`, by id. The state is written into the SQL (it is one of
    /// the enum's own words) so that the planner can use the partial indexes on it.
    async fn events_in_state(
        &self,
        state: EventState,
        after: Option<i64>,
        limit: usize,
        context: &'static str,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "{EVENT_SELECT} WHERE state = '{}' AND ($1::int8 IS NULL OR id > $1) ORDER BY id LIMIT $2",
            state.as_str()
        );
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .query(&sql, &[&after, &limit])
                    .await
                    .map_err(|e| pg_error(context, e))?
                    .iter()
                    .map(stored_event)
                    .collect()
            })
        })
        .await
    }
}
