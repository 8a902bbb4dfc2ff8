//! Reservations and the outbox on PostgreSQL: every change is one transaction that locks the
//! reservation row (`SELECT ... FOR UPDATE`), applies the shared rule from `store::reservations`
//! and writes the row and its outbox row back together. Replicas claim outbox rows with
//! `FOR UPDATE SKIP LOCKED`, so no two hold the same reservation's write.

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Transaction};

use super::mailboxes::{begin_error, commit_error};
use super::{column, pg_error, PostgresStore};
use crate::store::mailboxes::{truncate, Lease};
use crate::store::reservations::{
    apply_cancel, apply_change, apply_create, apply_exchange_rule, apply_finish, apply_requeue,
    apply_retry, check_mailbox, list_conditions, ApplyResult, ChangeSource, ExchangeOutcome,
    ItemLink, MailboxGate, NewReservation, OutboxClaim, OutboxInsert, OutboxRetry, OutboxRow,
    Planned, Reservation, ReservationChange, ReservationCursor, ReservationError,
    ReservationFilter, ReservationStore, ReservationWrite, SyncBacklog,
};
use crate::store::{
    change_source_column, last_change_column, outbox_state_column, reservation_status_column,
    sync_state_column, StoreError,
};

/// The columns of a [`Reservation`], `write_pending` derived from the outbox.
const RESERVATION_SELECT: &str = concat!(
    "SELECT r.id, r.tenant, r.mailbox, r.resource, r.subject, ",
    "r.start_at",
    ", ",
    "r.end_at",
    ", r.status, r.source, r.item_id, r.change_key, r.sync_state, r.version, r.last_change,
        r.last_error, ",
    "r.created_at",
    ", ",
    "r.updated_at",
    ", EXISTS (SELECT 1 FROM outbox o WHERE o.reservation_id = r.id AND o.state = 'pending')
     FROM reservations r"
);

fn reservation(row: &Row) -> Result<Reservation, StoreError> {
    let text = |index| -> Result<String, StoreError> { column(row, index) };
    Ok(Reservation {
        id: column(row, 0)?,
        tenant: column(row, 1)?,
        mailbox: column(row, 2)?,
        resource: column(row, 3)?,
        subject: column(row, 4)?,
        start: column::<OffsetDateTime>(row, 5)?,
        end: column::<OffsetDateTime>(row, 6)?,
        status: reservation_status_column(&text(7)?)?,
        source: change_source_column(&text(8)?)?,
        item_id: column(row, 9)?,
        change_key: column(row, 10)?,
        sync_state: sync_state_column(&text(11)?)?,
        version: column(row, 12)?,
        last_change: last_change_column(&text(13)?)?,
        last_error: column(row, 14)?,
        created_at: column::<OffsetDateTime>(row, 15)?,
        updated_at: column::<OffsetDateTime>(row, 16)?,
        write_pending: column(row, 17)?,
    })
}

async fn load_reservation(
    client: &(impl GenericClient + Sync),
    id: &str,
    lock: bool,
) -> Result<Option<Reservation>, StoreError> {
    let sql = if lock {
        format!("{RESERVATION_SELECT} WHERE r.id = $1 FOR UPDATE OF r")
    } else {
        format!("{RESERVATION_SELECT} WHERE r.id = $1")
    };
    client
        .query_opt(&sql, &[&id])
        .await
        .map_err(|e| pg_error("reading a reservation", e))?
        .as_ref()
        .map(reservation)
        .transpose()
}

/// Inserts a new reservation (an id already taken fails: ids are never reused).
async fn insert_reservation(tx: &Transaction<'_>, r: &Reservation) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO reservations (id, tenant, mailbox, resource, subject, start_at, end_at,
             status, source, item_id, change_key, sync_state, version, last_change, last_error,
             created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $7::timestamptz, $8, $9, $10,
             $11, $12, $13, $14, $15, $16::timestamptz, $17::timestamptz)",
        &[
            &r.id,
            &r.tenant,
            &r.mailbox,
            &r.resource,
            &r.subject,
            &r.start,
            &r.end,
            &r.status.as_str(),
            &r.source.as_str(),
            &r.item_id,
            &r.change_key,
            &r.sync_state.as_str(),
            &r.version,
            &r.last_change.as_str(),
            &r.last_error,
            &r.created_at,
            &r.updated_at,
        ],
    )
    .await
    .map(|_| ())
    .map_err(|e| pg_error("writing a new reservation", e))
}

/// Writes back what may change of a stored reservation (id, tenant, mailbox, source and
/// creation time never change).
async fn write_reservation(tx: &Transaction<'_>, r: &Reservation) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE reservations SET resource = $2, subject = $3, start_at = $4::timestamptz,
             end_at = $5::timestamptz, status = $6, item_id = $7, change_key = $8,
             sync_state = $9, version = $10, last_change = $11, last_error = $12,
             updated_at = $13::timestamptz
         WHERE id = $1",
        &[
            &r.id,
            &r.resource,
            &r.subject,
            &r.start,
            &r.end,
            &r.status.as_str(),
            &r.item_id,
            &r.change_key,
            &r.sync_state.as_str(),
            &r.version,
            &r.last_change.as_str(),
            &r.last_error,
            &r.updated_at,
        ],
    )
    .await
    .map(|_| ())
    .map_err(|e| pg_error("writing a reservation", e))
}

async fn insert_outbox(
    tx: &Transaction<'_>,
    reservation_id: &str,
    row: OutboxInsert,
    now: OffsetDateTime,
) -> Result<i64, StoreError> {
    let inserted = tx
        .query_one(
            "INSERT INTO outbox (reservation_id, version, state, next_attempt_at,
                 create_outcome_unknown, created_at, updated_at)
             VALUES ($1, $2, 'pending', $3::timestamptz, $4, $3::timestamptz,
                 $3::timestamptz)
             RETURNING id",
            &[
                &reservation_id,
                &row.version,
                &now,
                &row.create_outcome_unknown,
            ],
        )
        .await
        .map_err(|e| pg_error("queueing a calendar write", e))?;
    column(&inserted, 0)
}

/// Writes what a rule planned: the row (inserted when `new`) when it changed, and its outbox row.
async fn write_planned(
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
        insert_reservation(tx, &planned.reservation).await?;
    } else {
        write_reservation(tx, &planned.reservation).await?;
    }
    let outbox_id = match planned.outbox {
        Some(row) => Some(insert_outbox(tx, &planned.reservation.id, row, now).await?),
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
        concat!(
            "SELECT o.id, o.reservation_id, o.version, o.state, o.attempts, ",
            "o.next_attempt_at",
            ", {unknown}, o.last_error, o.lease_owner, ",
            "o.lease_until",
            ", ",
            "o.created_at",
            ", ",
            "o.updated_at",
            " FROM outbox o"
        ),
        unknown = unknown
    )
}

/// In a claim: any row of the reservation not yet done may say a CreateItem may have happened.
const CLAIMED_UNKNOWN: &str =
    "EXISTS (SELECT 1 FROM outbox f WHERE f.reservation_id = o.reservation_id
        AND f.state <> 'done' AND f.create_outcome_unknown)";

fn outbox_row(row: &Row) -> Result<OutboxRow, StoreError> {
    let text = |index| -> Result<String, StoreError> { column(row, index) };
    let attempts: i32 = column(row, 4)?;
    let lease_until: Option<OffsetDateTime> = column(row, 9)?;
    Ok(OutboxRow {
        id: column(row, 0)?,
        reservation_id: column(row, 1)?,
        version: column(row, 2)?,
        state: outbox_state_column(&text(3)?)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: column::<OffsetDateTime>(row, 5)?,
        create_outcome_unknown: column(row, 6)?,
        last_error: column(row, 7)?,
        lease_owner: column(row, 8)?,
        lease_until,
        created_at: column::<OffsetDateTime>(row, 10)?,
        updated_at: column::<OffsetDateTime>(row, 11)?,
    })
}

#[async_trait]
impl ReservationStore for PostgresStore {
    async fn create_reservation(
        &self,
        new: &NewReservation,
        now: OffsetDateTime,
    ) -> Result<ReservationWrite, ReservationError> {
        let new = new.clone();
        self.with_aux(|c| {
            Box::pin(async move {
                let tx = c.client.transaction().await.map_err(begin_error)?;
                // FOR SHARE: the mailbox cannot be switched off or forgotten until this
                // reservation is committed.
                let mailbox = tx
                    .query_opt(
                        "SELECT tenant, sync FROM mailboxes WHERE address = $1 FOR SHARE",
                        &[&new.mailbox],
                    )
                    .await
                    .map_err(|e| pg_error("reading a reservation's mailbox", e))?
                    .map(|row| -> Result<MailboxGate, StoreError> {
                        Ok(MailboxGate {
                            tenant: column(&row, 0)?,
                            sync: column(&row, 1)?,
                        })
                    })
                    .transpose()?;
                let tenant = match check_mailbox(mailbox, new.tenant.as_deref()) {
                    Ok(tenant) => tenant,
                    Err(refused) => return Ok(Err(refused)),
                };
                let written =
                    write_planned(&tx, apply_create(&new, tenant, now), true, now).await?;
                tx.commit().await.map_err(commit_error)?;
                Ok(Ok(written))
            })
        })
        .await?
    }

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, StoreError> {
        let id = id.to_string();
        self.with_aux(|c| Box::pin(async move { load_reservation(&c.client, &id, false).await }))
            .await
    }

    async fn reservations(
        &self,
        filter: &ReservationFilter,
        after: Option<&ReservationCursor>,
        limit: usize,
    ) -> Result<Vec<Reservation>, StoreError> {
        let (conditions, values) = list_conditions(
            filter,
            after,
            |n| format!("${n}::text"),
            // The filter builder is shared with SQLite and binds every value as text (its
            // fixed-width UTC form), which PostgreSQL casts here.
            |n| format!("${n}::text::timestamptz"),
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_aux(|c| {
            Box::pin(async move {
                let sql = format!(
                    "{RESERVATION_SELECT} WHERE {conditions} ORDER BY r.start_at, r.id LIMIT ${}",
                    values.len() + 1
                );
                let mut parameters: Vec<&(dyn ToSql + Sync)> =
                    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                parameters.push(&limit);
                let rows = c
                    .client
                    .query(&sql, &parameters)
                    .await
                    .map_err(|e| pg_error("listing reservations", e))?;
                rows.iter().map(reservation).collect()
            })
        })
        .await
    }

    async fn reservation_by_item(
        &self,
        mailbox: &str,
        item_id: &str,
    ) -> Result<Option<Reservation>, StoreError> {
        let (mailbox, item_id) = (mailbox.to_string(), item_id.to_string());
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .query_opt(
                        &format!("{RESERVATION_SELECT} WHERE r.mailbox = $1 AND r.item_id = $2"),
                        &[&mailbox, &item_id],
                    )
                    .await
                    .map_err(|e| pg_error("finding a reservation by item", e))?
                    .as_ref()
                    .map(reservation)
                    .transpose()
            })
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
        self.with_aux(|c| {
            Box::pin(async move {
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let Some(current) = load_reservation(&tx, &id, true).await? else {
                    return Ok(Err(ReservationError::NotFound));
                };
                let planned = match apply_change(current, &change, source, now) {
                    Ok(planned) => planned,
                    Err(refused) => return Ok(Err(refused)),
                };
                let written = write_planned(&tx, planned, false, now).await?;
                tx.commit().await.map_err(commit_error)?;
                Ok(Ok(written))
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
        self.with_aux(|c| {
            Box::pin(async move {
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let Some(current) = load_reservation(&tx, &id, true).await? else {
                    return Ok(Err(ReservationError::NotFound));
                };
                let written =
                    write_planned(&tx, apply_cancel(current, source, now), false, now).await?;
                tx.commit().await.map_err(commit_error)?;
                Ok(Ok(written))
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
        self.with_aux(|c| {
            Box::pin(async move {
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let Some(current) = load_reservation(&tx, &outcome.reservation_id, true).await?
                else {
                    return Ok(ApplyResult::NotFound);
                };
                let result = apply_exchange_rule(current, &outcome, now);
                if let ApplyResult::Applied { reservation, .. } = &result {
                    write_reservation(&tx, reservation).await?;
                    tx.commit().await.map_err(commit_error)?;
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
        self.with_aux(|c| {
            Box::pin(async move {
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let Some(current) = load_reservation(&tx, &id, true).await? else {
                    return Ok(None);
                };
                let Some(planned) = apply_requeue(current, now) else {
                    return Ok(None);
                };
                let written = write_planned(&tx, planned, false, now).await?;
                tx.commit().await.map_err(commit_error)?;
                Ok(written.outbox_id)
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
        self.with_aux(|c| {
            Box::pin(async move {
                let context = |e| pg_error("claiming calendar writes", e);
                let tx = c.client.transaction().await.map_err(begin_error)?;
                // The oldest pending row of each reservation stands for all of them. SKIP LOCKED
                // passes over rows another replica is claiming; a row claimed and committed
                // meanwhile is re-checked on its new version (lease_until), so it is skipped too.
                let rows = tx
                    .query(
                        "SELECT o.id FROM outbox o
                         WHERE o.state = 'pending'
                           AND o.next_attempt_at <= $1::timestamptz
                           AND (o.lease_until IS NULL OR o.lease_until <= $1::timestamptz)
                           AND o.id = (SELECT min(p.id) FROM outbox p
                                       WHERE p.reservation_id = o.reservation_id
                                         AND p.state = 'pending')
                           AND NOT EXISTS (SELECT 1 FROM outbox l
                                           WHERE l.reservation_id = o.reservation_id
                                             AND l.state = 'pending'
                                             AND l.lease_until > $1::timestamptz)
                         ORDER BY o.id LIMIT $2
                         FOR UPDATE OF o SKIP LOCKED",
                        &[&now, &limit],
                    )
                    .await
                    .map_err(context)?;
                let ids = rows
                    .iter()
                    .map(|row| column::<i64>(row, 0))
                    .collect::<Result<Vec<_>, _>>()?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                tx.execute(
                    "UPDATE outbox SET lease_owner = $2, lease_until = $3::timestamptz,
                         updated_at = $4::timestamptz
                     WHERE id = ANY($1::int8[])",
                    &[&ids, &lease.owner, &lease.until, &now],
                )
                .await
                .map_err(context)?;
                let rows = tx
                    .query(
                        &format!(
                            "{} WHERE o.id = ANY($1::int8[]) ORDER BY o.id",
                            outbox_select(CLAIMED_UNKNOWN)
                        ),
                        &[&ids],
                    )
                    .await
                    .map_err(context)?;
                let mut claims = Vec::with_capacity(rows.len());
                for row in &rows {
                    let row = outbox_row(row)?;
                    let reservation = load_reservation(&tx, &row.reservation_id, false)
                        .await?
                        .ok_or_else(|| StoreError::Corrupt {
                            column: "outbox.reservation_id",
                            value: row.reservation_id.clone(),
                        })?;
                    claims.push(OutboxClaim { row, reservation });
                }
                tx.commit().await.map_err(commit_error)?;
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
        self.with_aux(|c| {
            Box::pin(async move {
                let context = |e| pg_error("finishing a calendar write", e);
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let Some(current) = load_reservation(&tx, &reservation_id, true).await? else {
                    return Ok(None);
                };
                tx.execute(
                    "UPDATE outbox SET state = 'done', lease_owner = NULL, lease_until = NULL,
                         updated_at = $3::timestamptz
                     WHERE reservation_id = $1 AND state IN ('pending', 'failed')
                       AND version <= $2",
                    &[&reservation_id, &written_version, &now],
                )
                .await
                .map_err(context)?;
                let later_pending: bool = column(
                    &tx.query_one(
                        "SELECT EXISTS (SELECT 1 FROM outbox
                             WHERE reservation_id = $1 AND state = 'pending')",
                        &[&reservation_id],
                    )
                    .await
                    .map_err(context)?,
                    0,
                )?;
                let next = apply_finish(current, item.as_ref(), later_pending, now);
                write_reservation(&tx, &next).await?;
                tx.commit().await.map_err(commit_error)?;
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
        self.with_aux(|c| {
            Box::pin(async move {
                let context = |e| pg_error("recording a failed calendar write", e);
                let tx = c.client.transaction().await.map_err(begin_error)?;
                let Some(row) = tx
                    .query_opt(
                        "SELECT reservation_id FROM outbox WHERE id = $1 AND state = 'pending'",
                        &[&row_id],
                    )
                    .await
                    .map_err(context)?
                else {
                    return Ok(false);
                };
                let reservation_id: String = column(&row, 0)?;
                // The reservation row first, as every other writer locks it first.
                let current = load_reservation(&tx, &reservation_id, true).await?;
                let now_text = now;
                let changed = tx
                    .execute(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                             next_attempt_at = $3::timestamptz, state = $4,
                             lease_owner = NULL, lease_until = NULL,
                             updated_at = $5::timestamptz
                         WHERE id = $1 AND state = 'pending'",
                        &[
                            &row_id,
                            &truncate(&retry.error),
                            &retry.next_attempt_at,
                            &if retry.failed { "failed" } else { "pending" },
                            &now_text,
                        ],
                    )
                    .await
                    .map_err(context)?;
                if changed == 0 {
                    // Finished by another write between the two statements.
                    return Ok(false);
                }
                // What a lost CreateItem answer means holds for the reservation, whichever of
                // its rows is written next.
                tx.execute(
                    "UPDATE outbox SET create_outcome_unknown = $2
                     WHERE reservation_id = $1 AND state <> 'done'",
                    &[&reservation_id, &retry.create_outcome_unknown],
                )
                .await
                .map_err(context)?;
                if let Some(current) = current {
                    write_reservation(&tx, &apply_retry(current, &retry, now)).await?;
                }
                tx.commit().await.map_err(commit_error)?;
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
        self.with_aux(|c| {
            Box::pin(async move {
                c.client
                    .execute(
                        "UPDATE outbox SET create_outcome_unknown = true,
                             updated_at = $2::timestamptz
                         WHERE reservation_id = $1 AND state <> 'done'",
                        &[&reservation_id, &now],
                    )
                    .await
                    .map(|changed| changed > 0)
                    .map_err(|e| pg_error("noting a CreateItem", e))
            })
        })
        .await
    }

    async fn outbox_rows(&self, reservation_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        let reservation_id = reservation_id.to_string();
        self.with_aux(|c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        &format!(
                            "{} WHERE o.reservation_id = $1 ORDER BY o.id",
                            outbox_select("o.create_outcome_unknown")
                        ),
                        &[&reservation_id],
                    )
                    .await
                    .map_err(|e| pg_error("listing outbox rows", e))?;
                rows.iter().map(outbox_row).collect()
            })
        })
        .await
    }

    async fn sync_backlog(&self) -> Result<SyncBacklog, StoreError> {
        self.with_aux(|c| {
            Box::pin(async move {
                let row = c
                    .client
                    .query_one(
                        "SELECT
                             (SELECT count(*) FROM notification_events WHERE state = 'pending'),
                             (SELECT count(*) FROM notification_events WHERE state = 'failed'),
                             (SELECT count(*) FROM outbox WHERE state = 'pending'),
                             (SELECT count(*) FROM outbox WHERE state = 'failed')",
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error("counting the sync backlog", e))?;
                let n = |index| -> Result<u64, StoreError> {
                    Ok(u64::try_from(column::<i64>(&row, index)?).unwrap_or(0))
                };
                Ok(SyncBacklog {
                    events_pending: n(0)?,
                    events_dead: n(1)?,
                    outbox_pending: n(2)?,
                    outbox_failed: n(3)?,
                })
            })
        })
        .await
    }
}
