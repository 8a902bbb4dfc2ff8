//! The mailbox half of the SQLite store: every change is one IMMEDIATE transaction that loads
//! the row, applies the shared rule from `store::mailboxes` and writes the row back.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use time::OffsetDateTime;

use super::{sqlite_error, subscription_columns_at, subscription_record, SqliteStore};
use crate::store::mailboxes::{
    apply_begin, apply_finish, apply_put, BeginSubscribe, FinishOutcome, Lease, MailboxCalendar,
    MailboxRecord, MailboxStore, MailboxSummary, MailboxView, PutMailbox, PutOutcome, RenewCause,
    ResyncRequest, SubscribeOutcome, RETIRED_REASON,
};
use crate::store::timefmt::{format_utc, parse_utc};
use crate::store::{StoreError, SubscriptionRecord};

const VIEW_SELECT: &str = "SELECT m.address, m.tenant, m.sync, m.state, m.subscription_id,
        m.last_error, m.renew_cause, m.attempts, m.next_attempt_at, m.subscribed_at,
        m.resync_requested_at, m.lease_owner, m.lease_until, m.created_at, m.updated_at,
        s.subscription_id, s.tenant, s.last_watermark, s.last_notification_at, s.state,
        s.state_reason, s.updated_at, s.mailbox, s.replay_from
    FROM mailboxes m LEFT JOIN subscriptions s ON s.subscription_id = m.subscription_id";

/// Column where the subscription's columns start in [`VIEW_SELECT`].
const SUBSCRIPTION_AT: usize = 15;

/// A `mailboxes` row (and its subscription) as SQLite gives it, before parsing.
struct ViewColumns {
    address: String,
    tenant: String,
    sync: bool,
    state: String,
    subscription_id: Option<String>,
    last_error: Option<String>,
    renew_cause: Option<String>,
    attempts: i64,
    next_attempt_at: Option<String>,
    subscribed_at: Option<String>,
    resync_requested_at: Option<String>,
    lease_owner: Option<String>,
    lease_until: Option<String>,
    created_at: String,
    updated_at: String,
    subscription: Option<super::SubscriptionColumns>,
}

fn view_columns(row: &Row<'_>) -> rusqlite::Result<ViewColumns> {
    let joined: Option<String> = row.get(SUBSCRIPTION_AT)?;
    Ok(ViewColumns {
        address: row.get(0)?,
        tenant: row.get(1)?,
        sync: row.get(2)?,
        state: row.get(3)?,
        subscription_id: row.get(4)?,
        last_error: row.get(5)?,
        renew_cause: row.get(6)?,
        attempts: row.get(7)?,
        next_attempt_at: row.get(8)?,
        subscribed_at: row.get(9)?,
        resync_requested_at: row.get(10)?,
        lease_owner: row.get(11)?,
        lease_until: row.get(12)?,
        created_at: row.get(13)?,
        updated_at: row.get(14)?,
        subscription: match joined {
            Some(_) => Some(subscription_columns_at(row, SUBSCRIPTION_AT)?),
            None => None,
        },
    })
}

fn instant(text: Option<String>) -> Result<Option<OffsetDateTime>, StoreError> {
    text.as_deref().map(parse_utc).transpose()
}

fn view(c: ViewColumns) -> Result<MailboxView, StoreError> {
    let mailbox = MailboxRecord {
        address: c.address,
        tenant: c.tenant,
        sync: c.sync,
        state: crate::store::mailbox_state_column(&c.state)?,
        subscription_id: c.subscription_id,
        last_error: c.last_error,
        renew_cause: c
            .renew_cause
            .as_deref()
            .map(crate::store::renew_cause_column)
            .transpose()?,
        attempts: u32::try_from(c.attempts).unwrap_or(u32::MAX),
        next_attempt_at: instant(c.next_attempt_at)?,
        subscribed_at: instant(c.subscribed_at)?,
        resync_requested_at: instant(c.resync_requested_at)?,
        lease_owner: c.lease_owner,
        lease_until: instant(c.lease_until)?,
        created_at: parse_utc(&c.created_at)?,
        updated_at: parse_utc(&c.updated_at)?,
    };
    let subscription = c.subscription.map(subscription_record).transpose()?;
    Ok(MailboxView {
        mailbox,
        subscription,
    })
}

fn load_view(connection: &Connection, address: &str) -> Result<Option<MailboxView>, StoreError> {
    connection
        .query_row(
            &format!("{VIEW_SELECT} WHERE m.address = ?1"),
            [address],
            view_columns,
        )
        .optional()
        .map_err(|e| sqlite_error("reading a mailbox", e))?
        .map(view)
        .transpose()
}

fn write_mailbox(tx: &Transaction<'_>, record: &MailboxRecord) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO mailboxes (address, tenant, sync, state, subscription_id, last_error,
             renew_cause, attempts, next_attempt_at, subscribed_at, resync_requested_at,
             lease_owner, lease_until, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (address) DO UPDATE SET tenant = excluded.tenant, sync = excluded.sync,
             state = excluded.state, subscription_id = excluded.subscription_id,
             last_error = excluded.last_error, renew_cause = excluded.renew_cause,
             attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at,
             subscribed_at = excluded.subscribed_at,
             resync_requested_at = excluded.resync_requested_at,
             lease_owner = excluded.lease_owner, lease_until = excluded.lease_until,
             updated_at = excluded.updated_at",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            record.address,
            record.tenant,
            record.sync,
            record.state.as_str(),
            record.subscription_id,
            record.last_error,
            record.renew_cause.map(RenewCause::as_str),
            i64::from(record.attempts),
            record.next_attempt_at.map(format_utc),
            record.subscribed_at.map(format_utc),
            record.resync_requested_at.map(format_utc),
            record.lease_owner,
            record.lease_until.map(format_utc),
            format_utc(record.created_at),
            format_utc(record.updated_at),
        ])
    })
    .map(|_| ())
    .map_err(|e| sqlite_error("writing a mailbox", e))
}

/// Marks a subscription the worker no longer wants: its next notification gets `Unsubscribe`.
fn retire(
    tx: &Transaction<'_>,
    subscription_id: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE subscriptions SET state = 'unsubscribed', state_reason = ?2, updated_at = ?3
         WHERE subscription_id = ?1",
        params![subscription_id, RETIRED_REASON, format_utc(now)],
    )
    .map(|_| ())
    .map_err(|e| sqlite_error("retiring a subscription", e))
}

/// Stores a subscription the worker just made. A notification may have registered it already
/// (accept mode): what ingest stored of it (watermark, last heard) is kept.
fn upsert_subscription(
    tx: &Transaction<'_>,
    record: &SubscriptionRecord,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO subscriptions (subscription_id, tenant, last_watermark, last_notification_at,
             state, state_reason, updated_at, mailbox, replay_from)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (subscription_id) DO UPDATE SET tenant = excluded.tenant,
             last_watermark = coalesce(subscriptions.last_watermark, excluded.last_watermark),
             state = excluded.state, state_reason = excluded.state_reason,
             updated_at = excluded.updated_at, mailbox = excluded.mailbox",
        params![
            record.subscription_id,
            record.tenant,
            record.last_watermark,
            record.last_notification_at.map(format_utc),
            record.state.as_str(),
            record.state_reason,
            format_utc(record.updated_at),
            record.mailbox,
            record.replay_from,
        ],
    )
    .map(|_| ())
    .map_err(|e| sqlite_error("storing a subscription", e))
}

fn load_record(tx: &Transaction<'_>, address: &str) -> Result<Option<MailboxRecord>, StoreError> {
    Ok(load_view(tx, address)?.map(|v| v.mailbox))
}

/// Runs `work` in one IMMEDIATE transaction on the writer and commits it.
pub(super) fn in_transaction<R>(
    connection: &mut Connection,
    what: &str,
    work: impl FnOnce(&Transaction<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sqlite_error(what, e))?;
    let result = work(&tx)?;
    tx.commit().map_err(|e| sqlite_error(what, e))?;
    Ok(result)
}

#[async_trait]
impl MailboxStore for SqliteStore {
    async fn put_mailboxes(
        &self,
        requests: &[PutMailbox],
        now: OffsetDateTime,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let requests = requests.to_vec();
        self.writer
            .call(move |connection| {
                in_transaction(connection, "putting mailboxes", |tx| {
                    let mut outcomes = Vec::with_capacity(requests.len());
                    for request in &requests {
                        let existing = load_record(tx, &request.address)?;
                        let (record, created, retired) = apply_put(existing, request, now);
                        write_mailbox(tx, &record)?;
                        if let Some(id) = retired {
                            retire(tx, &id, now)?;
                        }
                        let view = load_view(tx, &record.address)?.ok_or_else(|| {
                            StoreError::Unavailable(
                                "mailbox vanished inside its transaction".into(),
                            )
                        })?;
                        outcomes.push(PutOutcome { view, created });
                    }
                    Ok(outcomes)
                })
            })
            .await
    }

    async fn mailbox(&self, address: &str) -> Result<Option<MailboxView>, StoreError> {
        let address = address.to_string();
        self.reader
            .call(move |connection| load_view(connection, &address))
            .await
    }

    async fn mailboxes(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MailboxView>, StoreError> {
        let after = after.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.reader
            .call(move |connection| {
                let context = |e| sqlite_error("listing mailboxes", e);
                let mut statement = connection
                    .prepare_cached(&format!(
                        "{VIEW_SELECT} WHERE ?1 IS NULL OR m.address > ?1 ORDER BY m.address LIMIT ?2"
                    ))
                    .map_err(context)?;
                let rows = statement
                    .query_map(params![after, limit], view_columns)
                    .map_err(context)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(context)?;
                rows.into_iter().map(view).collect()
            })
            .await
    }

    async fn delete_mailbox(&self, address: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let address = address.to_string();
        self.writer
            .call(move |connection| {
                in_transaction(connection, "deleting a mailbox", |tx| {
                    let Some(record) = load_record(tx, &address)? else {
                        return Ok(false);
                    };
                    if let Some(id) = &record.subscription_id {
                        retire(tx, id, now)?;
                    }
                    tx.execute("DELETE FROM mailboxes WHERE address = ?1", [&address])
                        .map_err(|e| sqlite_error("deleting a mailbox", e))?;
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
        let (now, silent_before) = (format_utc(now), format_utc(silent_before));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.reader
            .call(move |connection| {
                let context = |e| sqlite_error("finding mailboxes to subscribe", e);
                let mut statement = connection
                    .prepare_cached(&format!(
                        "{VIEW_SELECT}
                         WHERE m.sync = 1 AND (m.lease_until IS NULL OR m.lease_until <= ?1)
                           AND ((m.state IN ('subscribing', 'renewing', 'failed')
                                 AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= ?1))
                             OR (m.state = 'active'
                                 AND (s.subscription_id IS NULL
                                      OR s.state IN ('resync_needed', 'resubscribe_needed')
                                      OR coalesce(s.last_notification_at, m.subscribed_at) < ?2)))
                         ORDER BY coalesce(m.next_attempt_at, s.last_notification_at, m.subscribed_at)
                         LIMIT ?3"
                    ))
                    .map_err(context)?;
                let rows = statement
                    .query_map(params![now, silent_before, limit], view_columns)
                    .map_err(context)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(context)?;
                rows.into_iter().map(view).collect()
            })
            .await
    }

    async fn begin_subscribes(
        &self,
        begins: &[BeginSubscribe],
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<Vec<MailboxView>, StoreError> {
        let (begins, lease) = (begins.to_vec(), lease.clone());
        self.writer
            .call(move |connection| {
                in_transaction(connection, "leasing mailboxes", |tx| {
                    let mut taken = Vec::with_capacity(begins.len());
                    for begin in &begins {
                        let Some(record) = load_record(tx, &begin.address)? else {
                            continue;
                        };
                        let Some(record) =
                            apply_begin(record, &lease, begin.state, begin.cause, now)
                        else {
                            continue;
                        };
                        write_mailbox(tx, &record)?;
                        if let Some(view) = load_view(tx, &begin.address)? {
                            taken.push(view);
                        }
                    }
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
        self.writer
            .call(move |connection| {
                in_transaction(connection, "recording Subscribe results", |tx| {
                    let mut outcomes = Vec::with_capacity(results.len());
                    for (address, outcome) in &results {
                        let existing = load_record(tx, address)?;
                        let plan = apply_finish(existing, &lease, outcome, now);
                        if let Some(subscription) = &plan.new_subscription {
                            upsert_subscription(tx, subscription)?;
                        }
                        if let Some(id) = &plan.retire {
                            retire(tx, id, now)?;
                        }
                        if let Some(record) = &plan.mailbox {
                            write_mailbox(tx, record)?;
                        }
                        outcomes.push(plan.outcome);
                    }
                    Ok(outcomes)
                })
            })
            .await
    }

    async fn release_leases(&self, addresses: &[String], lease: &Lease) -> Result<(), StoreError> {
        let (addresses, owner) = (addresses.to_vec(), lease.owner.clone());
        self.writer
            .call(move |connection| {
                in_transaction(connection, "releasing leases", |tx| {
                    let mut release = tx
                        .prepare_cached(
                            "UPDATE mailboxes SET lease_owner = NULL, lease_until = NULL
                             WHERE address = ?1 AND lease_owner = ?2",
                        )
                        .map_err(|e| sqlite_error("releasing leases", e))?;
                    for address in &addresses {
                        release
                            .execute(params![address, owner])
                            .map_err(|e| sqlite_error("releasing leases", e))?;
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn subscribe_in_flight(&self, now: OffsetDateTime) -> Result<bool, StoreError> {
        let now = format_utc(now);
        self.reader
            .call(move |connection| {
                connection
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM mailboxes
                             WHERE state IN ('subscribing', 'renewing') AND lease_until > ?1)",
                        [&now],
                        |row| row.get::<_, bool>(0),
                    )
                    .map_err(|e| sqlite_error("looking for running Subscribe calls", e))
            })
            .await
    }

    async fn mailbox_summary(&self) -> Result<MailboxSummary, StoreError> {
        self.reader
            .call(|connection| {
                let context = |e| sqlite_error("counting mailboxes", e);
                let mut statement = connection
                    .prepare_cached("SELECT state, count(*) FROM mailboxes GROUP BY state")
                    .map_err(context)?;
                let counts = statement
                    .query_map([], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                    })
                    .map_err(context)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(context)?;
                let mut by_state = Vec::with_capacity(counts.len());
                for (state, count) in counts {
                    by_state.push((
                        crate::store::mailbox_state_column(&state)?,
                        u64::try_from(count).unwrap_or(0),
                    ));
                }
                let oldest: Option<String> = connection
                    .query_row(
                        "SELECT min(coalesce(s.last_notification_at, m.subscribed_at))
                         FROM mailboxes m LEFT JOIN subscriptions s
                           ON s.subscription_id = m.subscription_id
                         WHERE m.state = 'active'",
                        [],
                        |row| row.get(0),
                    )
                    .map_err(context)?;
                Ok(MailboxSummary {
                    by_state,
                    oldest_heard_at: instant(oldest)?,
                })
            })
            .await
    }

    async fn mailbox_calendar(&self, address: &str) -> Result<Option<MailboxCalendar>, StoreError> {
        let address = address.to_string();
        self.reader
            .call(move |connection| {
                let row: Option<(String, Option<String>, Option<String>, Option<String>)> =
                    connection
                        .query_row(
                            "SELECT address, calendar_folder_id, resync_requested_at, resynced_at
                             FROM mailboxes WHERE address = ?1",
                            [&address],
                            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                        )
                        .optional()
                        .map_err(|e| sqlite_error("reading a mailbox's calendar state", e))?;
                row.map(|(address, folder, requested, resynced)| {
                    Ok(MailboxCalendar {
                        address,
                        calendar_folder_id: folder,
                        resync_requested_at: instant(requested)?,
                        resynced_at: instant(resynced)?,
                    })
                })
                .transpose()
            })
            .await
    }

    async fn set_calendar_folder_id(
        &self,
        address: &str,
        folder_id: &str,
    ) -> Result<bool, StoreError> {
        let (address, folder_id) = (address.to_string(), folder_id.to_string());
        self.writer
            .call(move |connection| {
                connection
                    .execute(
                        "UPDATE mailboxes SET calendar_folder_id = ?2 WHERE address = ?1",
                        params![address, folder_id],
                    )
                    .map(|changed| changed > 0)
                    .map_err(|e| sqlite_error("storing a calendar folder id", e))
            })
            .await
    }

    async fn request_resync(&self, address: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let address = address.to_string();
        self.writer
            .call(move |connection| {
                connection
                    .execute(
                        "UPDATE mailboxes SET resync_requested_at = ?2 WHERE address = ?1",
                        params![address, format_utc(now)],
                    )
                    .map(|changed| changed > 0)
                    .map_err(|e| sqlite_error("requesting a resync", e))
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
        self.writer
            .call(move |connection| {
                in_transaction(connection, "taking resync requests", |tx| {
                    let context = |e| sqlite_error("taking resync requests", e);
                    let rows: Vec<(String, String, String, Option<String>)> = tx
                        .prepare_cached(
                            "SELECT address, tenant, resync_requested_at, calendar_folder_id
                             FROM mailboxes
                             WHERE resync_requested_at IS NOT NULL AND sync = 1
                               AND state = 'active'
                               AND (resync_until IS NULL OR resync_until <= ?1)
                             ORDER BY resync_requested_at LIMIT ?2",
                        )
                        .and_then(|mut statement| {
                            statement
                                .query_map(params![format_utc(now), limit], |row| {
                                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                                })?
                                .collect::<Result<_, _>>()
                        })
                        .map_err(context)?;
                    let mut taken = Vec::with_capacity(rows.len());
                    for (address, tenant, requested_at, calendar_folder_id) in rows {
                        tx.execute(
                            "UPDATE mailboxes SET resync_owner = ?2, resync_until = ?3
                             WHERE address = ?1",
                            params![address, lease.owner, format_utc(lease.until)],
                        )
                        .map_err(context)?;
                        taken.push(ResyncRequest {
                            address,
                            tenant,
                            requested_at: parse_utc(&requested_at)?,
                            calendar_folder_id,
                        });
                    }
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
        self.writer
            .call(move |connection| {
                connection
                    .execute(
                        "UPDATE mailboxes SET resync_requested_at = CASE
                                 WHEN resync_requested_at <= ?2 THEN NULL
                                 ELSE resync_requested_at END,
                             resynced_at = ?3, resync_owner = NULL, resync_until = NULL
                         WHERE address = ?1",
                        params![address, format_utc(requested_at), format_utc(now)],
                    )
                    .map(|_| ())
                    .map_err(|e| sqlite_error("finishing a resync", e))
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
        self.writer
            .call(move |connection| {
                connection
                    .execute(
                        "UPDATE mailboxes SET resync_until = ?3
                         WHERE address = ?1 AND resync_owner = ?2",
                        params![address, owner, format_utc(until)],
                    )
                    .map(|_| ())
                    .map_err(|e| sqlite_error("deferring a resync", e))
            })
            .await
    }
}
