//! Reservations and the outbox on SQLite: every change is one IMMEDIATE transaction on the one
//! writer that loads the row, applies the shared rule from `store::reservations` and writes the
//! row and its outbox row back together. One writer means claims need no row locks.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use time::OffsetDateTime;

use super::mailboxes::in_transaction;
use super::{sqlite_error, SqliteStore};
use crate::store::mailboxes::Lease;
use crate::store::reservations::{
    apply_cancel, apply_change, apply_create, apply_exchange_rule, apply_finish, apply_requeue,
    apply_retry, check_mailbox, list_conditions, ApplyResult, ChangeSource, ExchangeOutcome,
    ItemLink, MailboxGate, NewReservation, OutboxClaim, OutboxInsert, OutboxRetry, OutboxRow,
    Planned, Reservation, ReservationChange, ReservationCursor, ReservationError,
    ReservationFilter, ReservationStore, ReservationWrite, SyncBacklog,
};
use crate::store::timefmt::{format_utc, parse_utc};
use crate::store::{
    change_source_column, last_change_column, outbox_state_column, reservation_status_column,
    sync_state_column, StoreError,
};

/// The columns of a [`Reservation`], `write_pending` derived from the outbox.
const RESERVATION_SELECT: &str = "SELECT r.id, r.tenant, r.mailbox, r.resource, r.subject,
        r.start_at, r.end_at, r.status, r.source, r.item_id, r.change_key, r.sync_state,
        r.version, r.last_change, r.last_error, r.created_at, r.updated_at,
        EXISTS (SELECT 1 FROM outbox o WHERE o.reservation_id = r.id AND o.state = 'pending')
    FROM reservations r";

/// A `reservations` row as SQLite gives it, before its text columns are parsed.
struct ReservationColumns {
    id: String,
    tenant: String,
    mailbox: String,
    resource: String,
    subject: String,
    start_at: String,
    end_at: String,
    status: String,
    source: String,
    item_id: Option<String>,
    change_key: Option<String>,
    sync_state: String,
    version: i64,
    last_change: String,
    last_error: Option<String>,
    created_at: String,
    updated_at: String,
    write_pending: bool,
}

fn reservation_columns(row: &Row<'_>) -> rusqlite::Result<ReservationColumns> {
    Ok(ReservationColumns {
        id: row.get(0)?,
        tenant: row.get(1)?,
        mailbox: row.get(2)?,
        resource: row.get(3)?,
        subject: row.get(4)?,
        start_at: row.get(5)?,
        end_at: row.get(6)?,
        status: row.get(7)?,
        source: row.get(8)?,
        item_id: row.get(9)?,
        change_key: row.get(10)?,
        sync_state: row.get(11)?,
        version: row.get(12)?,
        last_change: row.get(13)?,
        last_error: row.get(14)?,
        created_at: row.get(15)?,
        updated_at: row.get(16)?,
        write_pending: row.get(17)?,
    })
}

fn reservation(c: ReservationColumns) -> Result<Reservation, StoreError> {
    Ok(Reservation {
        id: c.id,
        tenant: c.tenant,
        mailbox: c.mailbox,
        resource: c.resource,
        subject: c.subject,
        start: parse_utc(&c.start_at)?,
        end: parse_utc(&c.end_at)?,
        status: reservation_status_column(&c.status)?,
        source: change_source_column(&c.source)?,
        item_id: c.item_id,
        change_key: c.change_key,
        sync_state: sync_state_column(&c.sync_state)?,
        version: c.version,
        last_change: last_change_column(&c.last_change)?,
        last_error: c.last_error,
        created_at: parse_utc(&c.created_at)?,
        updated_at: parse_utc(&c.updated_at)?,
        write_pending: c.write_pending,
    })
}

fn load_reservation(connection: &Connection, id: &str) -> Result<Option<Reservation>, StoreError> {
    connection
        .prepare_cached(&format!("{RESERVATION_SELECT} WHERE r.id = ?1"))
        .and_then(|mut statement| statement.query_row([id], reservation_columns).optional())
        .map_err(|e| sqlite_error("reading a reservation", e))?
        .map(reservation)
        .transpose()
}

/// Inserts a new reservation (an id already taken fails: ids are never reused).
fn insert_reservation(tx: &Transaction<'_>, r: &Reservation) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO reservations (id, tenant, mailbox, resource, subject, start_at, end_at,
             status, source, item_id, change_key, sync_state, version, last_change, last_error,
             created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            r.id,
            r.tenant,
            r.mailbox,
            r.resource,
            r.subject,
            format_utc(r.start),
            format_utc(r.end),
            r.status.as_str(),
            r.source.as_str(),
            r.item_id,
            r.change_key,
            r.sync_state.as_str(),
            r.version,
            r.last_change.as_str(),
            r.last_error,
            format_utc(r.created_at),
            format_utc(r.updated_at),
        ])
    })
    .map(|_| ())
    .map_err(|e| sqlite_error("writing a new reservation", e))
}

/// Writes back what may change of a stored reservation (id, tenant, mailbox, source and
/// creation time never change).
fn write_reservation(tx: &Transaction<'_>, r: &Reservation) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE reservations SET resource = ?2, subject = ?3, start_at = ?4, end_at = ?5,
             status = ?6, item_id = ?7, change_key = ?8, sync_state = ?9, version = ?10,
             last_change = ?11, last_error = ?12, updated_at = ?13
         WHERE id = ?1",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            r.id,
            r.resource,
            r.subject,
            format_utc(r.start),
            format_utc(r.end),
            r.status.as_str(),
            r.item_id,
            r.change_key,
            r.sync_state.as_str(),
            r.version,
            r.last_change.as_str(),
            r.last_error,
            format_utc(r.updated_at),
        ])
    })
    .map(|_| ())
    .map_err(|e| sqlite_error("writing a reservation", e))
}

fn insert_outbox(
    tx: &Transaction<'_>,
    reservation_id: &str,
    row: OutboxInsert,
    now: OffsetDateTime,
) -> Result<i64, StoreError> {
    let now = format_utc(now);
    tx.prepare_cached(
        "INSERT INTO outbox (reservation_id, version, state, next_attempt_at,
             create_outcome_unknown, created_at, updated_at)
         VALUES (?1, ?2, 'pending', ?3, ?4, ?3, ?3)",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            reservation_id,
            row.version,
            now,
            row.create_outcome_unknown
        ])
    })
    .map_err(|e| sqlite_error("queueing a calendar write", e))?;
    Ok(tx.last_insert_rowid())
}

/// Writes what a rule planned: the row (inserted when `new`) when it changed, and its outbox row.
fn write_planned(
    tx: &Transaction<'_>,
    planned: Planned,
    new: bool,
    now: OffsetDateTime,
) -> Result<ReservationWrite, StoreError> {
    if !planned.changed && planned.outbox.is_none() {
        return Ok(ReservationWrite {
            reservation: planned.reservation,
            outbox_id: None,
            changed: false,
        });
    }
    if new {
        insert_reservation(tx, &planned.reservation)?;
    } else {
        write_reservation(tx, &planned.reservation)?;
    }
    let outbox_id = match planned.outbox {
        Some(row) => Some(insert_outbox(tx, &planned.reservation.id, row, now)?),
        None => None,
    };
    Ok(ReservationWrite {
        reservation: planned.reservation,
        outbox_id,
        changed: planned.changed,
    })
}

/// The columns of an [`OutboxRow`]; `{unknown}` is the expression for `create_outcome_unknown`.
fn outbox_select(unknown: &str) -> String {
    format!(
        "SELECT o.id, o.reservation_id, o.version, o.state, o.attempts, o.next_attempt_at,
            {unknown}, o.last_error, o.lease_owner, o.lease_until, o.created_at, o.updated_at
         FROM outbox o"
    )
}

/// In a claim: any row of the reservation not yet done may say a CreateItem may have happened.
const CLAIMED_UNKNOWN: &str =
    "EXISTS (SELECT 1 FROM outbox f WHERE f.reservation_id = o.reservation_id
        AND f.state <> 'done' AND f.create_outcome_unknown = 1)";

type OutboxTuple = (
    i64,
    String,
    i64,
    String,
    i64,
    String,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
);

fn outbox_tuple(row: &Row<'_>) -> rusqlite::Result<OutboxTuple> {
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
        row.get(10)?,
        row.get(11)?,
    ))
}

fn outbox_row(t: OutboxTuple) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: t.0,
        reservation_id: t.1,
        version: t.2,
        state: outbox_state_column(&t.3)?,
        attempts: u32::try_from(t.4).unwrap_or(0),
        next_attempt_at: parse_utc(&t.5)?,
        create_outcome_unknown: t.6,
        last_error: t.7,
        lease_owner: t.8,
        lease_until: t.9.as_deref().map(parse_utc).transpose()?,
        created_at: parse_utc(&t.10)?,
        updated_at: parse_utc(&t.11)?,
    })
}

fn count(connection: &Connection, sql: &str) -> Result<u64, StoreError> {
    connection
        .query_row(sql, [], |row| row.get::<_, i64>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(|e| sqlite_error("counting the sync backlog", e))
}

#[async_trait]
impl ReservationStore for SqliteStore {
    async fn create_reservation(
        &self,
        new: &NewReservation,
        now: OffsetDateTime,
    ) -> Result<ReservationWrite, ReservationError> {
        let new = new.clone();
        self.writer
            .call(move |connection| {
                in_transaction(connection, "creating a reservation", |tx| {
                    let mailbox = tx
                        .query_row(
                            "SELECT tenant, sync FROM mailboxes WHERE address = ?1",
                            [&new.mailbox],
                            |row| {
                                Ok(MailboxGate {
                                    tenant: row.get(0)?,
                                    sync: row.get(1)?,
                                })
                            },
                        )
                        .optional()
                        .map_err(|e| sqlite_error("reading a reservation's mailbox", e))?;
                    let tenant = match check_mailbox(mailbox, new.tenant.as_deref()) {
                        Ok(tenant) => tenant,
                        Err(refused) => return Ok(Err(refused)),
                    };
                    let planned = apply_create(&new, tenant, now);
                    Ok(Ok(write_planned(tx, planned, true, now)?))
                })
            })
            .await?
    }

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, StoreError> {
        let id = id.to_string();
        self.reader
            .call(move |connection| load_reservation(connection, &id))
            .await
    }

    async fn reservations(
        &self,
        filter: &ReservationFilter,
        after: Option<&ReservationCursor>,
        limit: usize,
    ) -> Result<Vec<Reservation>, StoreError> {
        let (conditions, values) =
            list_conditions(filter, after, |n| format!("?{n}"), |n| format!("?{n}"));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.reader
            .call(move |connection| {
                let context = |e| sqlite_error("listing reservations", e);
                let sql = format!(
                    "{RESERVATION_SELECT} WHERE {conditions} ORDER BY r.start_at, r.id LIMIT ?{}",
                    values.len() + 1
                );
                let mut parameters: Vec<rusqlite::types::Value> =
                    values.into_iter().map(Into::into).collect();
                parameters.push(limit.into());
                let mut statement = connection.prepare_cached(&sql).map_err(context)?;
                let rows = statement
                    .query_map(rusqlite::params_from_iter(parameters), reservation_columns)
                    .map_err(context)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(context)?;
                rows.into_iter().map(reservation).collect()
            })
            .await
    }

    async fn reservation_by_item(
        &self,
        mailbox: &str,
        item_id: &str,
    ) -> Result<Option<Reservation>, StoreError> {
        let (mailbox, item_id) = (mailbox.to_string(), item_id.to_string());
        self.reader
            .call(move |connection| {
                connection
                    .prepare_cached(&format!(
                        "{RESERVATION_SELECT} WHERE r.mailbox = ?1 AND r.item_id = ?2"
                    ))
                    .and_then(|mut statement| {
                        statement
                            .query_row([&mailbox, &item_id], reservation_columns)
                            .optional()
                    })
                    .map_err(|e| sqlite_error("finding a reservation by item", e))?
                    .map(reservation)
                    .transpose()
            })
            .await
    }

    async fn change_reservation(
        &self,
        id: &str,
        change: &ReservationChange,
        source: ChangeSource,
        now: OffsetDateTime,
    ) -> Result<ReservationWrite, ReservationError> {
        let (id, change) = (id.to_string(), change.clone());
        self.writer
            .call(move |connection| {
                in_transaction(connection, "changing a reservation", |tx| {
                    let Some(current) = load_reservation(tx, &id)? else {
                        return Ok(Err(ReservationError::NotFound));
                    };
                    match apply_change(current, &change, source, now) {
                        Ok(planned) => Ok(Ok(write_planned(tx, planned, false, now)?)),
                        Err(refused) => Ok(Err(refused)),
                    }
                })
            })
            .await?
    }

    async fn cancel_reservation(
        &self,
        id: &str,
        source: ChangeSource,
        now: OffsetDateTime,
    ) -> Result<ReservationWrite, ReservationError> {
        let id = id.to_string();
        self.writer
            .call(move |connection| {
                in_transaction(connection, "cancelling a reservation", |tx| {
                    let Some(current) = load_reservation(tx, &id)? else {
                        return Ok(Err(ReservationError::NotFound));
                    };
                    let planned = apply_cancel(current, source, now);
                    Ok(Ok(write_planned(tx, planned, false, now)?))
                })
            })
            .await?
    }

    async fn apply_exchange(
        &self,
        outcome: &ExchangeOutcome,
        now: OffsetDateTime,
    ) -> Result<ApplyResult, StoreError> {
        let outcome = outcome.clone();
        self.writer
            .call(move |connection| {
                in_transaction(connection, "applying Exchange's change", |tx| {
                    let Some(current) = load_reservation(tx, &outcome.reservation_id)? else {
                        return Ok(ApplyResult::NotFound);
                    };
                    let result = apply_exchange_rule(current, &outcome, now);
                    if let ApplyResult::Applied { reservation, .. } = &result {
                        write_reservation(tx, reservation)?;
                    }
                    Ok(result)
                })
            })
            .await
    }

    async fn requeue_reservation(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<i64>, StoreError> {
        let id = id.to_string();
        self.writer
            .call(move |connection| {
                in_transaction(connection, "requeueing a reservation", |tx| {
                    let Some(current) = load_reservation(tx, &id)? else {
                        return Ok(None);
                    };
                    match apply_requeue(current, now) {
                        Some(planned) => Ok(write_planned(tx, planned, false, now)?.outbox_id),
                        None => Ok(None),
                    }
                })
            })
            .await
    }

    async fn claim_outbox(
        &self,
        now: OffsetDateTime,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<OutboxClaim>, StoreError> {
        let lease = lease.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.writer
            .call(move |connection| {
                in_transaction(connection, "claiming calendar writes", |tx| {
                    let context = |e| sqlite_error("claiming calendar writes", e);
                    let now_text = format_utc(now);
                    // The oldest pending row of each reservation stands for all of them: one
                    // write brings the item to the reservation's current state.
                    let ids: Vec<i64> = tx
                        .prepare_cached(
                            "SELECT o.id FROM outbox o
                             WHERE o.state = 'pending' AND o.next_attempt_at <= ?1
                               AND o.id = (SELECT min(p.id) FROM outbox p
                                           WHERE p.reservation_id = o.reservation_id
                                             AND p.state = 'pending')
                               AND NOT EXISTS (SELECT 1 FROM outbox l
                                               WHERE l.reservation_id = o.reservation_id
                                                 AND l.state = 'pending' AND l.lease_until > ?1)
                             ORDER BY o.id LIMIT ?2",
                        )
                        .and_then(|mut statement| {
                            statement
                                .query_map(params![now_text, limit], |row| row.get(0))?
                                .collect::<Result<_, _>>()
                        })
                        .map_err(context)?;
                    let mut claims = Vec::with_capacity(ids.len());
                    for id in ids {
                        tx.prepare_cached(
                            "UPDATE outbox SET lease_owner = ?2, lease_until = ?3, updated_at = ?4
                             WHERE id = ?1",
                        )
                        .and_then(|mut statement| {
                            statement.execute(params![
                                id,
                                lease.owner,
                                format_utc(lease.until),
                                now_text
                            ])
                        })
                        .map_err(context)?;
                        let tuple = tx
                            .prepare_cached(&format!(
                                "{} WHERE o.id = ?1",
                                outbox_select(CLAIMED_UNKNOWN)
                            ))
                            .and_then(|mut statement| statement.query_row([id], outbox_tuple))
                            .map_err(context)?;
                        let row = outbox_row(tuple)?;
                        let reservation =
                            load_reservation(tx, &row.reservation_id)?.ok_or_else(|| {
                                StoreError::Corrupt {
                                    column: "outbox.reservation_id",
                                    value: row.reservation_id.clone(),
                                }
                            })?;
                        claims.push(OutboxClaim { row, reservation });
                    }
                    Ok(claims)
                })
            })
            .await
    }

    async fn finish_outbox(
        &self,
        reservation_id: &str,
        written_version: i64,
        item: Option<&ItemLink>,
        now: OffsetDateTime,
    ) -> Result<Option<Reservation>, StoreError> {
        let (reservation_id, item) = (reservation_id.to_string(), item.cloned());
        self.writer
            .call(move |connection| {
                in_transaction(connection, "finishing a calendar write", |tx| {
                    let context = |e| sqlite_error("finishing a calendar write", e);
                    let Some(current) = load_reservation(tx, &reservation_id)? else {
                        return Ok(None);
                    };
                    tx.execute(
                        "UPDATE outbox SET state = 'done', lease_owner = NULL, lease_until = NULL,
                             updated_at = ?3
                         WHERE reservation_id = ?1 AND state IN ('pending', 'failed')
                           AND version <= ?2",
                        params![reservation_id, written_version, format_utc(now)],
                    )
                    .map_err(context)?;
                    let later_pending: bool = tx
                        .query_row(
                            "SELECT EXISTS (SELECT 1 FROM outbox
                                 WHERE reservation_id = ?1 AND state = 'pending')",
                            [&reservation_id],
                            |row| row.get(0),
                        )
                        .map_err(context)?;
                    let next = apply_finish(current, item.as_ref(), later_pending, now);
                    write_reservation(tx, &next)?;
                    Ok(Some(next))
                })
            })
            .await
    }

    async fn retry_outbox(
        &self,
        row_id: i64,
        retry: &OutboxRetry,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let retry = retry.clone();
        self.writer
            .call(move |connection| {
                in_transaction(connection, "recording a failed calendar write", |tx| {
                    let context = |e| sqlite_error("recording a failed calendar write", e);
                    let reservation_id: Option<String> = tx
                        .query_row(
                            "SELECT reservation_id FROM outbox WHERE id = ?1 AND state = 'pending'",
                            [row_id],
                            |row| row.get(0),
                        )
                        .optional()
                        .map_err(context)?;
                    let Some(reservation_id) = reservation_id else {
                        return Ok(false);
                    };
                    let now_text = format_utc(now);
                    tx.execute(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2,
                             next_attempt_at = ?3, state = ?4, lease_owner = NULL,
                             lease_until = NULL, updated_at = ?5
                         WHERE id = ?1",
                        params![
                            row_id,
                            crate::store::mailboxes::truncate(&retry.error),
                            format_utc(retry.next_attempt_at),
                            if retry.failed { "failed" } else { "pending" },
                            now_text
                        ],
                    )
                    .map_err(context)?;
                    // What a lost CreateItem answer means holds for the reservation, whichever
                    // of its rows is written next.
                    tx.execute(
                        "UPDATE outbox SET create_outcome_unknown = ?2
                         WHERE reservation_id = ?1 AND state <> 'done'",
                        params![reservation_id, retry.create_outcome_unknown],
                    )
                    .map_err(context)?;
                    if let Some(current) = load_reservation(tx, &reservation_id)? {
                        write_reservation(tx, &apply_retry(current, &retry, now))?;
                    }
                    Ok(true)
                })
            })
            .await
    }

    async fn note_create_attempt(
        &self,
        reservation_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let reservation_id = reservation_id.to_string();
        self.writer
            .call(move |connection| {
                connection
                    .execute(
                        "UPDATE outbox SET create_outcome_unknown = 1, updated_at = ?2
                         WHERE reservation_id = ?1 AND state <> 'done'",
                        params![reservation_id, format_utc(now)],
                    )
                    .map(|changed| changed > 0)
                    .map_err(|e| sqlite_error("noting a CreateItem", e))
            })
            .await
    }

    async fn outbox_rows(&self, reservation_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        let reservation_id = reservation_id.to_string();
        self.reader
            .call(move |connection| {
                let context = |e| sqlite_error("listing outbox rows", e);
                let tuples: Vec<OutboxTuple> = connection
                    .prepare_cached(&format!(
                        "{} WHERE o.reservation_id = ?1 ORDER BY o.id",
                        outbox_select("o.create_outcome_unknown")
                    ))
                    .and_then(|mut statement| {
                        statement
                            .query_map([&reservation_id], outbox_tuple)?
                            .collect::<Result<_, _>>()
                    })
                    .map_err(context)?;
                tuples.into_iter().map(outbox_row).collect()
            })
            .await
    }

    async fn sync_backlog(&self) -> Result<SyncBacklog, StoreError> {
        self.reader
            .call(|connection| {
                Ok(SyncBacklog {
                    events_pending: count(
                        connection,
                        "SELECT count(*) FROM notification_events WHERE state = 'pending'",
                    )?,
                    events_dead: count(
                        connection,
                        "SELECT count(*) FROM notification_events WHERE state = 'failed'",
                    )?,
                    outbox_pending: count(
                        connection,
                        "SELECT count(*) FROM outbox WHERE state = 'pending'",
                    )?,
                    outbox_failed: count(
                        connection,
                        "SELECT count(*) FROM outbox WHERE state = 'failed'",
                    )?,
                })
            })
            .await
    }
}
