//! The mailbox half of the PostgreSQL store: every change is one transaction that locks the row
//! (`SELECT ... FOR UPDATE`), applies the shared rule from `store::mailboxes` and writes the row
//! back, so replicas sharing the table serialise on each mailbox.

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio_postgres::{Row, Transaction};

use super::{column, pg_error, subscription_record_at, PostgresStore};
use crate::store::mailboxes::{
    apply_begin, apply_finish, apply_put, BeginSubscribe, FinishOutcome, Lease, MailboxCalendar,
    MailboxRecord, MailboxStore, MailboxSummary, MailboxView, PutMailbox, PutOutcome, RenewCause,
    ResyncRequest, SubscribeOutcome, RETIRED_REASON,
};
use crate::store::{StoreError, SubscriptionRecord};

macro_rules! view_select {
    () => {
        concat!(
            "SELECT m.address, m.tenant, m.sync, m.state, m.subscription_id, m.last_error,
                m.renew_cause, m.attempts, ",
            "m.next_attempt_at",
            ", ",
            "m.subscribed_at",
            ", ",
            "m.resync_requested_at",
            ", m.lease_owner, ",
            "m.lease_until",
            ", ",
            "m.created_at",
            ", ",
            "m.updated_at",
            ", s.subscription_id, s.tenant, s.last_watermark, ",
            "s.last_notification_at",
            ", s.state, s.state_reason, ",
            "s.updated_at",
            ", s.mailbox, s.replay_from
             FROM mailboxes m LEFT JOIN subscriptions s ON s.subscription_id = m.subscription_id"
        )
    };
}

const VIEW_SELECT: &str = view_select!();

/// Column where the subscription's columns start in [`VIEW_SELECT`].
const SUBSCRIPTION_AT: usize = 15;

fn instant(row: &Row, index: usize) -> Result<Option<OffsetDateTime>, StoreError> {
    column(row, index)
}

fn view(row: &Row) -> Result<MailboxView, StoreError> {
    let state: String = column(row, 3)?;
    let renew_cause: Option<String> = column(row, 6)?;
    let attempts: i32 = column(row, 7)?;
    let created_at: OffsetDateTime = column(row, 13)?;
    let updated_at: OffsetDateTime = column(row, 14)?;
    let mailbox = MailboxRecord {
        address: column(row, 0)?,
        tenant: column(row, 1)?,
        sync: column(row, 2)?,
        state: crate::store::mailbox_state_column(&state)?,
        subscription_id: column(row, 4)?,
        last_error: column(row, 5)?,
        renew_cause: renew_cause
            .as_deref()
            .map(crate::store::renew_cause_column)
            .transpose()?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: instant(row, 8)?,
        subscribed_at: instant(row, 9)?,
        resync_requested_at: instant(row, 10)?,
        lease_owner: column(row, 11)?,
        lease_until: instant(row, 12)?,
        created_at,
        updated_at,
    };
    let joined: Option<String> = column(row, SUBSCRIPTION_AT)?;
    let subscription = match joined {
        Some(_) => Some(subscription_record_at(row, SUBSCRIPTION_AT)?),
        None => None,
    };
    Ok(MailboxView {
        mailbox,
        subscription,
    })
}

async fn load_view(
    tx: &Transaction<'_>,
    address: &str,
    lock: bool,
) -> Result<Option<MailboxView>, StoreError> {
    let sql = if lock {
        format!("{VIEW_SELECT} WHERE m.address = $1 FOR UPDATE OF m")
    } else {
        format!("{VIEW_SELECT} WHERE m.address = $1")
    };
    tx.query_opt(&sql, &[&address])
        .await
        .map_err(|e| pg_error("reading a mailbox", e))?
        .as_ref()
        .map(view)
        .transpose()
}

async fn write_mailbox(tx: &Transaction<'_>, record: &MailboxRecord) -> Result<(), StoreError> {
    let attempts = i32::try_from(record.attempts).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO mailboxes (address, tenant, sync, state, subscription_id, last_error,
             renew_cause, attempts, next_attempt_at, subscribed_at, resync_requested_at,
             lease_owner, lease_until, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::timestamptz, $10::timestamptz,
             $11::timestamptz, $12, $13::timestamptz, $14::timestamptz,
             $15::timestamptz)
         ON CONFLICT (address) DO UPDATE SET tenant = excluded.tenant, sync = excluded.sync,
             state = excluded.state, subscription_id = excluded.subscription_id,
             last_error = excluded.last_error, renew_cause = excluded.renew_cause,
             attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at,
             subscribed_at = excluded.subscribed_at,
             resync_requested_at = excluded.resync_requested_at,
             lease_owner = excluded.lease_owner, lease_until = excluded.lease_until,
             updated_at = excluded.updated_at",
        &[
            &record.address,
            &record.tenant,
            &record.sync,
            &record.state.as_str(),
            &record.subscription_id,
            &record.last_error,
            &record.renew_cause.map(RenewCause::as_str),
            &attempts,
            &record.next_attempt_at,
            &record.subscribed_at,
            &record.resync_requested_at,
            &record.lease_owner,
            &record.lease_until,
            &record.created_at,
            &record.updated_at,
        ],
    )
    .await
    .map(|_| ())
    .map_err(|e| pg_error("writing a mailbox", e))
}

/// Marks a subscription the worker no longer wants: its next notification gets `Unsubscribe`.
async fn retire(
    tx: &Transaction<'_>,
    subscription_id: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE subscriptions SET state = 'unsubscribed', state_reason = $2,
             updated_at = $3::timestamptz
         WHERE subscription_id = $1",
        &[&subscription_id, &RETIRED_REASON, &now],
    )
    .await
    .map(|_| ())
    .map_err(|e| pg_error("retiring a subscription", e))
}

/// Stores a subscription the worker just made, keeping what ingest stored of it already.
async fn upsert_subscription(
    tx: &Transaction<'_>,
    record: &SubscriptionRecord,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO subscriptions (subscription_id, tenant, last_watermark, last_notification_at,
             state, state_reason, updated_at, mailbox, replay_from)
         VALUES ($1, $2, $3, $4::timestamptz, $5, $6, $7::timestamptz, $8, $9)
         ON CONFLICT (subscription_id) DO UPDATE SET tenant = excluded.tenant,
             last_watermark = coalesce(subscriptions.last_watermark, excluded.last_watermark),
             state = excluded.state, state_reason = excluded.state_reason,
             updated_at = excluded.updated_at, mailbox = excluded.mailbox",
        &[
            &record.subscription_id,
            &record.tenant,
            &record.last_watermark,
            &record.last_notification_at,
            &record.state.as_str(),
            &record.state_reason,
            &record.updated_at,
            &record.mailbox,
            &record.replay_from,
        ],
    )
    .await
    .map(|_| ())
    .map_err(|e| pg_error("storing a subscription", e))
}

pub(super) fn begin_error(e: tokio_postgres::Error) -> StoreError {
    pg_error("opening a transaction", e)
}

pub(super) fn commit_error(e: tokio_postgres::Error) -> StoreError {
    pg_error("committing", e)
}

#[async_trait]
impl MailboxStore for PostgresStore {
    async fn put_mailboxes(
        &self,
        requests: &[PutMailbox],
        now: OffsetDateTime,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let mut requests = requests.to_vec();
        // Rows locked in address order, so replicas putting overlapping lists cannot deadlock.
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|&a, &b| requests[a].address.cmp(&requests[b].address));
        let sorted: Vec<PutMailbox> = order.iter().map(|&i| requests[i].clone()).collect();
        requests.clear();
        self.with_aux(|c| {
            Box::pin(async move {
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let mut outcomes: Vec<Option<PutOutcome>> = vec![None; sorted.len()];
                for (slot, request) in order.iter().zip(&sorted) {
                    // Two replicas creating the same mailbox: the second waits on the first's
                    // insert, then finds the row.
                    tx.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1))",
                        &[&request.address],
                    )
                    .await
                    .map_err(|e| pg_error("locking a mailbox", e))?;
                    let existing = load_view(&tx, &request.address, true)
                        .await?
                        .map(|v| v.mailbox);
                    let (record, created, retired) = apply_put(existing, request, now);
                    write_mailbox(&tx, &record).await?;
                    if let Some(id) = retired {
                        retire(&tx, &id, now).await?;
                    }
                    let view = load_view(&tx, &record.address, false)
                        .await?
                        .ok_or_else(|| {
                            StoreError::Unavailable(
                                "mailbox vanished inside its transaction".into(),
                            )
                        })?;
                    outcomes[*slot] = Some(PutOutcome { view, created });
                }
                tx.commit().await.map_err(commit_error)?;
                Ok(outcomes.into_iter().flatten().collect())
            })
        })
        .await
    }

    async fn mailbox(&self, address: &str) -> Result<Option<MailboxView>, StoreError> {
        let address = address.to_string();
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .query_opt(&format!("{VIEW_SELECT} WHERE m.address = $1"), &[&address])
                    .await
                    .map_err(|e| pg_error("reading a mailbox", e))?
                    .as_ref()
                    .map(view)
                    .transpose()
            })
        })
        .await
    }

    async fn mailboxes(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MailboxView>, StoreError> {
        let after = after.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_aux(|c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        &format!(
                            "{VIEW_SELECT} WHERE $1::text IS NULL OR m.address > $1
                             ORDER BY m.address LIMIT $2"
                        ),
                        &[&after, &limit],
                    )
                    .await
                    .map_err(|e| pg_error("listing mailboxes", e))?;
                rows.iter().map(view).collect()
            })
        })
        .await
    }

    async fn delete_mailbox(&self, address: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let address = address.to_string();
        self.with_aux(|c| {
            Box::pin(async move {
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let Some(existing) = load_view(&tx, &address, true).await? else {
                    return Ok(false);
                };
                if let Some(id) = &existing.mailbox.subscription_id {
                    retire(&tx, id, now).await?;
                }
                tx.execute("DELETE FROM mailboxes WHERE address = $1", &[&address])
                    .await
                    .map_err(|e| pg_error("deleting a mailbox", e))?;
                tx.commit().await.map_err(commit_error)?;
                Ok(true)
            })
        })
        .await
    }

    async fn due_mailboxes(
        &self,
        now: OffsetDateTime,
        silent_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<MailboxView>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_aux(|c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        &format!(
                            "{VIEW_SELECT}
                             WHERE m.sync AND (m.lease_until IS NULL
                                               OR m.lease_until <= $1::timestamptz)
                               AND ((m.state IN ('subscribing', 'renewing', 'failed')
                                     AND (m.next_attempt_at IS NULL
                                          OR m.next_attempt_at <= $1::timestamptz))
                                 OR (m.state = 'active'
                                     AND (s.subscription_id IS NULL
                                          OR s.state IN ('resync_needed', 'resubscribe_needed')
                                          OR coalesce(s.last_notification_at, m.subscribed_at)
                                             < $2::timestamptz)))
                             ORDER BY coalesce(m.next_attempt_at, s.last_notification_at,
                                               m.subscribed_at)
                             LIMIT $3"
                        ),
                        &[&now, &silent_before, &limit],
                    )
                    .await
                    .map_err(|e| pg_error("finding mailboxes to subscribe", e))?;
                rows.iter().map(view).collect()
            })
        })
        .await
    }

    async fn begin_subscribes(
        &self,
        begins: &[BeginSubscribe],
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<Vec<MailboxView>, StoreError> {
        let mut begins = begins.to_vec();
        begins.sort_by(|a, b| a.address.cmp(&b.address));
        let lease = lease.clone();
        self.with_aux(|c| {
            Box::pin(async move {
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let mut taken = Vec::with_capacity(begins.len());
                for begin in &begins {
                    let Some(existing) = load_view(&tx, &begin.address, true).await? else {
                        continue;
                    };
                    let Some(record) =
                        apply_begin(existing.mailbox, &lease, begin.state, begin.cause, now)
                    else {
                        continue;
                    };
                    write_mailbox(&tx, &record).await?;
                    if let Some(view) = load_view(&tx, &begin.address, false).await? {
                        taken.push(view);
                    }
                }
                tx.commit().await.map_err(commit_error)?;
                Ok(taken)
            })
        })
        .await
    }

    async fn finish_subscribes(
        &self,
        results: &[(String, SubscribeOutcome)],
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<Vec<FinishOutcome>, StoreError> {
        let (results, lease) = (results.to_vec(), lease.clone());
        // Rows locked in address order, so replicas cannot deadlock.
        let mut order: Vec<usize> = (0..results.len()).collect();
        order.sort_by(|&a, &b| results[a].0.cmp(&results[b].0));
        self.with_aux(|c| {
            Box::pin(async move {
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let mut outcomes = vec![FinishOutcome::Abandoned; results.len()];
                for &index in &order {
                    let (address, outcome) = &results[index];
                    let existing = load_view(&tx, address, true).await?.map(|v| v.mailbox);
                    let plan = apply_finish(existing, &lease, outcome, now);
                    if let Some(subscription) = &plan.new_subscription {
                        upsert_subscription(&tx, subscription).await?;
                    }
                    if let Some(id) = &plan.retire {
                        retire(&tx, id, now).await?;
                    }
                    if let Some(record) = &plan.mailbox {
                        write_mailbox(&tx, record).await?;
                    }
                    outcomes[index] = plan.outcome;
                }
                tx.commit().await.map_err(commit_error)?;
                Ok(outcomes)
            })
        })
        .await
    }

    async fn release_leases(&self, addresses: &[String], lease: &Lease) -> Result<(), StoreError> {
        let (addresses, owner) = (addresses.to_vec(), lease.owner.clone());
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE mailboxes SET lease_owner = NULL, lease_until = NULL
                         WHERE address = ANY($1::text[]) AND lease_owner = $2",
                        &[&addresses, &owner],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| pg_error("releasing leases", e))
            })
        })
        .await
    }

    async fn subscribe_in_flight(&self, now: OffsetDateTime) -> Result<bool, StoreError> {
        self.with_aux(|c| {
            Box::pin(async move {
                let row = c
                    .client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM mailboxes
                             WHERE state IN ('subscribing', 'renewing')
                               AND lease_until > $1::timestamptz)",
                        &[&now],
                    )
                    .await
                    .map_err(|e| pg_error("looking for running Subscribe calls", e))?;
                column(&row, 0)
            })
        })
        .await
    }

    async fn mailbox_summary(&self) -> Result<MailboxSummary, StoreError> {
        self.with_aux(|c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query("SELECT state, count(*) FROM mailboxes GROUP BY state", &[])
                    .await
                    .map_err(|e| pg_error("counting mailboxes", e))?;
                let mut by_state = Vec::with_capacity(rows.len());
                for row in &rows {
                    let state: String = column(row, 0)?;
                    let count: i64 = column(row, 1)?;
                    by_state.push((
                        crate::store::mailbox_state_column(&state)?,
                        u64::try_from(count).unwrap_or(0),
                    ));
                }
                let row = c
                    .client
                    .query_one(
                        concat!(
                            "SELECT ",
                            "min(coalesce(s.last_notification_at, m.subscribed_at))",
                            " FROM mailboxes m LEFT JOIN subscriptions s
                                ON s.subscription_id = m.subscription_id
                              WHERE m.state = 'active'"
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error("counting mailboxes", e))?;
                Ok(MailboxSummary {
                    by_state,
                    oldest_heard_at: instant(&row, 0)?,
                })
            })
        })
        .await
    }

    async fn mailbox_calendar(&self, address: &str) -> Result<Option<MailboxCalendar>, StoreError> {
        let address = address.to_string();
        self.with_aux(|c| {
            Box::pin(async move {
                let row = c
                    .client
                    .query_opt(
                        concat!(
                            "SELECT address, calendar_folder_id, ",
                            "resync_requested_at",
                            ", ",
                            "resynced_at",
                            " FROM mailboxes WHERE address = $1"
                        ),
                        &[&address],
                    )
                    .await
                    .map_err(|e| pg_error("reading a mailbox's calendar state", e))?;
                row.map(|row| {
                    Ok(MailboxCalendar {
                        address: column(&row, 0)?,
                        calendar_folder_id: column(&row, 1)?,
                        resync_requested_at: instant(&row, 2)?,
                        resynced_at: instant(&row, 3)?,
                    })
                })
                .transpose()
            })
        })
        .await
    }

    async fn set_calendar_folder_id(
        &self,
        address: &str,
        folder_id: &str,
    ) -> Result<bool, StoreError> {
        let (address, folder_id) = (address.to_string(), folder_id.to_string());
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE mailboxes SET calendar_folder_id = $2 WHERE address = $1",
                        &[&address, &folder_id],
                    )
                    .await
                    .map(|changed| changed > 0)
                    .map_err(|e| pg_error("storing a calendar folder id", e))
            })
        })
        .await
    }

    async fn request_resync(&self, address: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let address = address.to_string();
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE mailboxes SET resync_requested_at = $2::timestamptz
                         WHERE address = $1",
                        &[&address, &now],
                    )
                    .await
                    .map(|changed| changed > 0)
                    .map_err(|e| pg_error("requesting a resync", e))
            })
        })
        .await
    }

    async fn take_resyncs(
        &self,
        now: OffsetDateTime,
        lease: &Lease,
        limit: usize,
    ) -> Result<Vec<ResyncRequest>, StoreError> {
        let lease = lease.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_aux(|c| {
            Box::pin(async move {
                let context = |e| pg_error("taking resync requests", e);
                let tx = c.client.transaction().await.map_err(begin_error)?;
                // SKIP LOCKED: a request another replica is taking is left to it; one taken and
                // committed meanwhile fails the re-checked resync_until and is skipped too.
                let rows = tx
                    .query(
                        concat!(
                            "SELECT address, tenant, ",
                            "resync_requested_at",
                            ", calendar_folder_id FROM mailboxes
                             WHERE resync_requested_at IS NOT NULL AND sync AND state = 'active'
                               AND (resync_until IS NULL OR resync_until <= $1::timestamptz)
                             ORDER BY resync_requested_at LIMIT $2
                             FOR UPDATE SKIP LOCKED"
                        ),
                        &[&now, &limit],
                    )
                    .await
                    .map_err(context)?;
                let mut taken = Vec::with_capacity(rows.len());
                for row in &rows {
                    let requested_at: OffsetDateTime = column(row, 2)?;
                    taken.push(ResyncRequest {
                        address: column(row, 0)?,
                        tenant: column(row, 1)?,
                        requested_at,
                        calendar_folder_id: column(row, 3)?,
                    });
                }
                let addresses: Vec<&str> = taken.iter().map(|t| t.address.as_str()).collect();
                tx.execute(
                    "UPDATE mailboxes SET resync_owner = $2, resync_until = $3::timestamptz
                     WHERE address = ANY($1::text[])",
                    &[&addresses, &lease.owner, &lease.until],
                )
                .await
                .map_err(context)?;
                tx.commit().await.map_err(commit_error)?;
                Ok(taken)
            })
        })
        .await
    }

    async fn finish_resync(
        &self,
        address: &str,
        requested_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let address = address.to_string();
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE mailboxes SET resync_requested_at = CASE
                                 WHEN resync_requested_at <= $2::timestamptz THEN NULL
                                 ELSE resync_requested_at END,
                             resynced_at = $3::timestamptz,
                             resync_owner = NULL, resync_until = NULL
                         WHERE address = $1",
                        &[&address, &requested_at, &now],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| pg_error("finishing a resync", e))
            })
        })
        .await
    }

    async fn defer_resync(
        &self,
        address: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let (address, owner) = (address.to_string(), owner.to_string());
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE mailboxes SET resync_until = $3::timestamptz
                         WHERE address = $1 AND resync_owner = $2",
                        &[&address, &owner, &until],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| pg_error("deferring a resync", e))
            })
        })
        .await
    }
}
