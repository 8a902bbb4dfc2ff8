//! Reservations, their outbox and the sync step's event claims, the same cases on every store
//! (included by `store_conformance.rs`, whose `conformance!` macro and helpers it uses).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use pushgate::notification::EventKind;
use pushgate::store::{
    self, ApplyResult, ChangeSource, ExchangeOutcome, ItemFields, ItemLink, LastChange, Lease,
    NewReservation, OutboxRetry, OutboxState, ReservationChange, ReservationCursor,
    ReservationError, ReservationFilter, ReservationStatus, StoreError, SyncState,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::{event, notification, put, request, subscribe, watermark, Accept, Db, PgSchema};

conformance!(
    sqlite, postgres, tokio::test(flavor = "multi_thread", worker_threads = 2);
    reservations_are_created_read_and_listed,
    only_real_changes_count_and_cancel_is_final,
    outbox_rows_are_written_in_the_changes_transaction,
    outbox_claims_one_row_per_reservation_oldest_first,
    exchange_outcomes_link_update_cancel_and_follow_moves,
    event_claims_keep_order_and_exclusivity,
    two_stores_claim_concurrently_each_thing_once_in_order,
    resync_requests_and_the_calendar_folder,
    a_restarted_worker_takes_back_its_previous_runs_leases_only,
);

/// The instant every case starts from (the store takes `now` from its caller).
const T0: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);

fn minutes(n: i64) -> Duration {
    Duration::minutes(n)
}

fn lease(owner: &str, until: OffsetDateTime) -> Lease {
    Lease {
        owner: owner.into(),
        until,
    }
}

/// A reservation of `mailbox` from `start` for an hour.
fn booking(id: &str, mailbox: &str, start: OffsetDateTime, source: ChangeSource) -> NewReservation {
    NewReservation {
        id: id.into(),
        tenant: None,
        mailbox: mailbox.into(),
        resource: "Room 1".into(),
        subject: format!("Meeting {id}"),
        start,
        end: start + Duration::hours(1),
        source,
    }
}

/// Mailboxes `room1` and `room2` with sync on.
async fn rooms(store: &dyn store::Store) {
    for room in ["room1@contoso.com", "room2@contoso.com"] {
        store.put_mailbox(&put(room, true), T0).await.unwrap();
    }
}

async fn create(store: &dyn store::Store, new: NewReservation) -> store::ReservationWrite {
    store.create_reservation(&new, T0).await.expect("created")
}

/// Web bookings `res-a` in room1 and `res-b` in room2, both from `start`.
async fn web_bookings_a_and_b(store: &dyn store::Store, start: OffsetDateTime) {
    create(
        store,
        booking("res-a", "room1@contoso.com", start, ChangeSource::Web),
    )
    .await;
    create(
        store,
        booking("res-b", "room2@contoso.com", start, ChangeSource::Web),
    )
    .await;
}

fn subject(text: &str) -> ReservationChange {
    ReservationChange {
        subject: Some(text.into()),
        ..Default::default()
    }
}

async fn reservations_are_created_read_and_listed(db: &Db) {
    let store = db.open().await;
    rooms(&*store).await;
    let fabrikam = store::PutMailbox {
        address: "room3@contoso.com".into(),
        tenant: Some("fabrikam".into()),
        sync: true,
    };
    store.put_mailbox(&fabrikam, T0).await.unwrap();
    store
        .put_mailbox(&put("off@contoso.com", false), T0)
        .await
        .unwrap();

    let day = datetime!(2026-12-02 08:00 UTC);
    let web = create(
        &*store,
        booking("res-a", "room1@contoso.com", day, ChangeSource::Web),
    )
    .await;
    let r = &web.reservation;
    assert!(web.changed);
    assert!(web.outbox_id.is_some());
    assert_eq!(r.id, "res-a");
    assert_eq!(r.tenant, "default", "the mailbox's tenant");
    assert_eq!(r.status, ReservationStatus::Active);
    assert_eq!(r.source, ChangeSource::Web);
    assert_eq!(r.sync_state, SyncState::Pending);
    assert_eq!(r.version, 1);
    assert_eq!(r.last_change, LastChange::Web);
    assert_eq!((r.created_at, r.updated_at), (T0, T0));
    assert!(r.write_pending);
    assert_eq!(store.reservation("res-a").await.unwrap().as_ref(), Some(r));
    assert_eq!(store.reservation("res-none").await.unwrap(), None);

    // Same start as res-a: (start, id) orders them.
    create(
        &*store,
        booking("res-b", "room1@contoso.com", day, ChangeSource::Addin),
    )
    .await;
    create(
        &*store,
        booking(
            "res-c",
            "room2@contoso.com",
            day + Duration::hours(1),
            ChangeSource::Web,
        ),
    )
    .await;
    create(
        &*store,
        booking(
            "res-d",
            "room1@contoso.com",
            day + Duration::hours(3),
            ChangeSource::Web,
        ),
    )
    .await;
    let in_fabrikam = NewReservation {
        tenant: Some("fabrikam".into()),
        ..booking(
            "res-e",
            "room3@contoso.com",
            day - Duration::hours(1),
            ChangeSource::Addin,
        )
    };
    let e = create(&*store, in_fabrikam).await;
    assert_eq!(e.reservation.tenant, "fabrikam");
    assert_eq!(e.outbox_id, None, "the add-in writes its own item");
    assert!(!e.reservation.write_pending);
    store
        .cancel_reservation("res-d", ChangeSource::Web, T0)
        .await
        .unwrap();

    let ids = |list: Vec<store::Reservation>| list.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = ReservationFilter::default();
    assert_eq!(
        ids(store.reservations(&all, None, 100).await.unwrap()),
        ["res-e", "res-a", "res-b", "res-c", "res-d"]
    );
    // Pages of two, each continuing after the last.
    let mut seen = Vec::new();
    let mut after: Option<ReservationCursor> = None;
    loop {
        let page = store.reservations(&all, after.as_ref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        after = page.last().map(ReservationCursor::after);
        let full = page.len() == 2;
        seen.extend(ids(page));
        if !full {
            break;
        }
    }
    assert_eq!(seen, ["res-e", "res-a", "res-b", "res-c", "res-d"]);

    let room1 = ReservationFilter {
        mailbox: Some("room1@contoso.com".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.reservations(&room1, None, 100).await.unwrap()),
        ["res-a", "res-b", "res-d"]
    );
    let active_room1 = ReservationFilter {
        status: Some(ReservationStatus::Active),
        ..room1.clone()
    };
    assert_eq!(
        ids(store.reservations(&active_room1, None, 100).await.unwrap()),
        ["res-a", "res-b"]
    );
    let cancelled = ReservationFilter {
        status: Some(ReservationStatus::Cancelled),
        ..Default::default()
    };
    assert_eq!(
        ids(store.reservations(&cancelled, None, 100).await.unwrap()),
        ["res-d"]
    );
    // Overlap with [from, to): res-e ends at 08:00 (out), res-c starts at 09:00 (out).
    let window = ReservationFilter {
        from: Some(day),
        to: Some(day + Duration::hours(1)),
        ..Default::default()
    };
    assert_eq!(
        ids(store.reservations(&window, None, 100).await.unwrap()),
        ["res-a", "res-b"]
    );
    let open_ended = ReservationFilter {
        from: Some(day + Duration::minutes(90)),
        ..Default::default()
    };
    assert_eq!(
        ids(store.reservations(&open_ended, None, 100).await.unwrap()),
        ["res-c", "res-d"]
    );
    let in_window = store
        .active_reservations_in(
            "room1@contoso.com",
            day - Duration::days(1),
            day + Duration::days(1),
        )
        .await
        .unwrap();
    assert_eq!(ids(in_window), ["res-a", "res-b"]);

    // Refusals, nothing written.
    let refused = |new: NewReservation| {
        let store = store.clone();
        async move { store.create_reservation(&new, T0).await.unwrap_err() }
    };
    assert!(matches!(
        refused(booking(
            "res-x",
            "nobody@contoso.com",
            day,
            ChangeSource::Web
        ))
        .await,
        ReservationError::UnknownMailbox
    ));
    assert!(matches!(
        refused(booking("res-x", "off@contoso.com", day, ChangeSource::Web)).await,
        ReservationError::SyncOff
    ));
    let wrong_tenant = NewReservation {
        tenant: Some("contoso".into()),
        ..booking("res-x", "room3@contoso.com", day, ChangeSource::Web)
    };
    assert!(matches!(
        refused(wrong_tenant).await,
        ReservationError::TenantMismatch { mailbox_tenant } if mailbox_tenant == "fabrikam"
    ));
    assert!(
        matches!(
            refused(booking(
                "res-a",
                "room2@contoso.com",
                day,
                ChangeSource::Web
            ))
            .await,
            ReservationError::Store(StoreError::Rejected(_))
        ),
        "ids are never reused"
    );
    assert_eq!(store.reservation("res-x").await.unwrap(), None);
    let a = store.reservation("res-a").await.unwrap().unwrap();
    assert_eq!(a.mailbox, "room1@contoso.com", "res-a untouched");
    assert_eq!(store.outbox_rows("res-a").await.unwrap().len(), 1);
}

async fn only_real_changes_count_and_cancel_is_final(db: &Db) {
    let store = db.open().await;
    rooms(&*store).await;
    let start = datetime!(2026-12-02 08:00 UTC);
    let created = create(
        &*store,
        booking("res-1", "room1@contoso.com", start, ChangeSource::Web),
    )
    .await;
    let rows = |store: Arc<dyn store::Store>| async move {
        store
            .outbox_rows("res-1")
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.version)
            .collect::<Vec<_>>()
    };

    // The same values again: no version, no row, not even updated_at.
    let same = ReservationChange {
        subject: Some("Meeting res-1".into()),
        start: Some(start),
        end: Some(start + Duration::hours(1)),
        resource: Some("Room 1".into()),
    };
    let t1 = T0 + minutes(1);
    let unchanged = store
        .change_reservation("res-1", &same, ChangeSource::Web, t1)
        .await
        .unwrap();
    assert!(!unchanged.changed);
    assert_eq!(unchanged.outbox_id, None);
    assert_eq!(unchanged.reservation, created.reservation);
    assert_eq!(rows(store.clone()).await, [1]);

    let changed = store
        .change_reservation("res-1", &subject("Budget"), ChangeSource::Web, t1)
        .await
        .unwrap();
    assert!(changed.changed);
    assert_eq!(changed.reservation.version, 2);
    assert_eq!(changed.reservation.subject, "Budget");
    assert_eq!(changed.reservation.updated_at, t1);
    assert_eq!(changed.reservation.created_at, T0);
    assert_eq!(rows(store.clone()).await, [1, 2]);
    assert_eq!(
        store.reservation("res-1").await.unwrap().unwrap(),
        changed.reservation,
        "what the call answers is what is stored"
    );

    let by_addin = store
        .change_reservation(
            "res-1",
            &ReservationChange {
                end: Some(start + Duration::hours(2)),
                resource: Some("Room 1 (large)".into()),
                ..Default::default()
            },
            ChangeSource::Addin,
            t1,
        )
        .await
        .unwrap();
    assert_eq!(by_addin.reservation.version, 3);
    assert_eq!(by_addin.reservation.last_change, LastChange::Addin);
    assert_eq!(by_addin.outbox_id, None, "Outlook writes the item");
    assert_eq!(rows(store.clone()).await, [1, 2]);

    let window = store
        .change_reservation(
            "res-1",
            &ReservationChange {
                start: Some(start + Duration::hours(2)),
                ..Default::default()
            },
            ChangeSource::Web,
            t1,
        )
        .await
        .unwrap_err();
    assert!(matches!(window, ReservationError::EmptyWindow), "{window}");

    let cancelled = store
        .cancel_reservation("res-1", ChangeSource::Web, t1)
        .await
        .unwrap();
    assert_eq!(cancelled.reservation.status, ReservationStatus::Cancelled);
    assert_eq!(cancelled.reservation.version, 4);
    assert_eq!(rows(store.clone()).await, [1, 2, 4]);
    let twice = store
        .cancel_reservation("res-1", ChangeSource::Web, T0 + minutes(2))
        .await
        .unwrap();
    assert!(!twice.changed);
    assert_eq!(twice.reservation, cancelled.reservation);
    assert_eq!(rows(store.clone()).await, [1, 2, 4]);

    let refused = store
        .change_reservation("res-1", &subject("Back"), ChangeSource::Web, t1)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ReservationError::Cancelled(r) if r.version == 4),
        "{refused}"
    );
    assert!(matches!(
        store
            .change_reservation("res-none", &subject("x"), ChangeSource::Web, t1)
            .await,
        Err(ReservationError::NotFound)
    ));
    assert!(matches!(
        store
            .cancel_reservation("res-none", ChangeSource::Web, t1)
            .await,
        Err(ReservationError::NotFound)
    ));
    assert_eq!(
        store.reservation("res-1").await.unwrap().unwrap().version,
        4
    );
}

async fn outbox_rows_are_written_in_the_changes_transaction(db: &Db) {
    let store = db.open().await;
    rooms(&*store).await;
    let start = datetime!(2026-12-02 08:00 UTC);
    create(
        &*store,
        booking("res-w", "room1@contoso.com", start, ChangeSource::Web),
    )
    .await;
    // The database refuses every further outbox row, half-way through each transaction.
    db.raw(
        "CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox
         BEGIN SELECT RAISE(ABORT, 'outbox refused'); END;",
        "CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'outbox refused'; END $$;
         CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox
         FOR EACH ROW EXECUTE FUNCTION refuse_outbox();",
    )
    .await;
    let error = store
        .create_reservation(
            &booking("res-lost", "room1@contoso.com", start, ChangeSource::Web),
            T0,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReservationError::Store(StoreError::Rejected(_))),
        "{error}"
    );
    assert_eq!(
        store.reservation("res-lost").await.unwrap(),
        None,
        "no reservation without its outbox row"
    );
    let before = store.reservation("res-w").await.unwrap().unwrap();
    for result in [
        store
            .change_reservation("res-w", &subject("Lost"), ChangeSource::Web, T0)
            .await,
        store
            .cancel_reservation("res-w", ChangeSource::Web, T0)
            .await,
    ] {
        assert!(
            matches!(
                result,
                Err(ReservationError::Store(StoreError::Rejected(_)))
            ),
            "{result:?}"
        );
    }
    assert_eq!(
        store.reservation("res-w").await.unwrap().unwrap(),
        before,
        "no change without its outbox row"
    );
    assert_eq!(store.outbox_rows("res-w").await.unwrap().len(), 1);
    // The add-in writes no outbox row, so its changes go through.
    create(
        &*store,
        booking("res-addin", "room1@contoso.com", start, ChangeSource::Addin),
    )
    .await;
    let changed = store
        .change_reservation("res-addin", &subject("Fine"), ChangeSource::Addin, T0)
        .await
        .unwrap();
    assert_eq!(changed.reservation.version, 2);
}

async fn outbox_claims_one_row_per_reservation_oldest_first(db: &Db) {
    let store = db.open().await;
    rooms(&*store).await;
    let start = datetime!(2026-12-02 08:00 UTC);
    web_bookings_a_and_b(&*store, start).await;
    create(
        &*store,
        booking("res-addin", "room1@contoso.com", start, ChangeSource::Addin),
    )
    .await;
    for text in ["Second", "Third"] {
        store
            .change_reservation("res-a", &subject(text), ChangeSource::Web, T0)
            .await
            .unwrap();
    }
    assert_eq!(store.sync_backlog().await.unwrap().outbox_pending, 4);

    let claimed = store
        .claim_outbox(T0, 10, &lease("w1", T0 + minutes(2)))
        .await
        .unwrap();
    let summary: Vec<(&str, i64)> = claimed
        .iter()
        .map(|c| (c.reservation.id.as_str(), c.row.version))
        .collect();
    assert_eq!(
        summary,
        [("res-a", 1), ("res-b", 1)],
        "one row per reservation, its oldest, oldest first"
    );
    let a = &claimed[0];
    assert_eq!(a.reservation.version, 3, "the reservation as it is now");
    assert_eq!(a.row.lease_owner.as_deref(), Some("w1"));
    assert_eq!(a.row.state, OutboxState::Pending);
    assert!(!a.row.create_outcome_unknown);

    // Leased: nobody else gets them until the lease ends.
    assert!(store
        .claim_outbox(T0 + minutes(1), 10, &lease("w2", T0 + minutes(3)))
        .await
        .unwrap()
        .is_empty());
    let taken_over = store
        .claim_outbox(T0 + minutes(2), 10, &lease("w2", T0 + minutes(4)))
        .await
        .unwrap();
    assert_eq!(taken_over.len(), 2, "an expired lease is taken over");

    // res-b's write failed: it waits for its back-off, and the answer may have been lost.
    let retry = OutboxRetry {
        error: "ErrorServerBusy".into(),
        next_attempt_at: T0 + minutes(10),
        create_outcome_unknown: true,
        failed: false,
    };
    assert!(store
        .retry_outbox(taken_over[1].row.id, &retry, T0 + minutes(2))
        .await
        .unwrap());
    let b = store.reservation("res-b").await.unwrap().unwrap();
    assert_eq!(b.sync_state, SyncState::Retrying);
    assert_eq!(b.last_error.as_deref(), Some("ErrorServerBusy"));
    // res-a's write brought the item to version 2 only (a change came while it ran).
    let link = ItemLink {
        item_id: "AAMk-a".into(),
        change_key: Some("CK1".into()),
    };
    let a = store
        .finish_outbox("res-a", 2, Some(&link), T0 + minutes(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.item_id.as_deref(), Some("AAMk-a"));
    assert_eq!(a.change_key.as_deref(), Some("CK1"));
    assert_eq!(a.sync_state, SyncState::Pending, "version 3 still waits");
    assert_eq!(a.version, 3);
    let states: Vec<(i64, OutboxState)> = store
        .outbox_rows("res-a")
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.version, row.state))
        .collect();
    assert_eq!(
        states,
        [
            (1, OutboxState::Done),
            (2, OutboxState::Done),
            (3, OutboxState::Pending)
        ]
    );

    let next = store
        .claim_outbox(T0 + minutes(3), 10, &lease("w1", T0 + minutes(5)))
        .await
        .unwrap();
    let summary: Vec<(&str, i64, u32)> = next
        .iter()
        .map(|c| (c.reservation.id.as_str(), c.row.version, c.row.attempts))
        .collect();
    assert_eq!(summary, [("res-a", 3, 0)], "res-b waits for its back-off");
    let a = store
        .finish_outbox("res-a", 3, None, T0 + minutes(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.sync_state, SyncState::Synced);
    assert!(!a.write_pending);
    assert_eq!(
        a.item_id.as_deref(),
        Some("AAMk-a"),
        "kept when none is given"
    );

    let b = store
        .claim_outbox(T0 + minutes(10), 10, &lease("w1", T0 + minutes(12)))
        .await
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].reservation.id, "res-b");
    assert_eq!(b[0].row.attempts, 1);
    assert!(b[0].row.create_outcome_unknown, "look before creating");
    // Given up.
    let give_up = OutboxRetry {
        failed: true,
        error: "ErrorAccessDenied".into(),
        ..retry.clone()
    };
    assert!(store
        .retry_outbox(b[0].row.id, &give_up, T0 + minutes(10))
        .await
        .unwrap());
    assert!(
        !store
            .retry_outbox(b[0].row.id, &give_up, T0 + minutes(10))
            .await
            .unwrap(),
        "a failed row is not retried again"
    );
    let b_now = store.reservation("res-b").await.unwrap().unwrap();
    assert_eq!(b_now.sync_state, SyncState::Failed);
    assert!(store
        .claim_outbox(T0 + minutes(60), 10, &lease("w1", T0 + minutes(62)))
        .await
        .unwrap()
        .is_empty());
    let backlog = store.sync_backlog().await.unwrap();
    assert_eq!((backlog.outbox_pending, backlog.outbox_failed), (0, 1));

    // A requeue (resync, operator) tries again, still careful about the lost CreateItem.
    let requeued = store
        .requeue_reservation("res-b", T0 + minutes(61))
        .await
        .unwrap();
    assert!(requeued.is_some());
    assert_eq!(
        store
            .requeue_reservation("res-b", T0 + minutes(61))
            .await
            .unwrap(),
        None,
        "one pending row is enough"
    );
    assert_eq!(
        store
            .reservation("res-b")
            .await
            .unwrap()
            .unwrap()
            .sync_state,
        SyncState::Pending
    );
    let again = store
        .claim_outbox(T0 + minutes(61), 10, &lease("w1", T0 + minutes(63)))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(Some(again[0].row.id), requeued);
    assert!(again[0].row.create_outcome_unknown);
    let link = ItemLink {
        item_id: "AAMk-b".into(),
        change_key: Some("CK1".into()),
    };
    store
        .finish_outbox("res-b", 1, Some(&link), T0 + minutes(62))
        .await
        .unwrap();
    assert!(store
        .outbox_rows("res-b")
        .await
        .unwrap()
        .iter()
        .all(|row| row.state == OutboxState::Done));
    let b = store.reservation("res-b").await.unwrap().unwrap();
    assert_eq!(b.sync_state, SyncState::Synced);
    assert_eq!(b.last_error, None);
    assert_eq!(
        store
            .reservation_by_item("room2@contoso.com", "AAMk-b")
            .await
            .unwrap(),
        Some(b)
    );
    assert_eq!(store.sync_backlog().await.unwrap().outbox_pending, 0);
    assert_eq!(
        store.finish_outbox("res-none", 1, None, T0).await.unwrap(),
        None
    );
}

async fn exchange_outcomes_link_update_cancel_and_follow_moves(db: &Db) {
    let store = db.open().await;
    rooms(&*store).await;
    let start = datetime!(2026-12-02 08:00 UTC);
    create(
        &*store,
        booking("res-c", "room1@contoso.com", start, ChangeSource::Addin),
    )
    .await;
    create(
        &*store,
        booking("res-other", "room1@contoso.com", start, ChangeSource::Addin),
    )
    .await;
    let outcome = |version: i64| ExchangeOutcome {
        reservation_id: "res-c".into(),
        expected_version: version,
        item: None,
        fields: ItemFields::default(),
        cancel: false,
    };
    let item = |id: &str, key: &str| {
        Some(ItemLink {
            item_id: id.into(),
            change_key: Some(key.into()),
        })
    };
    let t1 = T0 + minutes(1);

    // C6: the item carries the reservation id; the link is stored, the version stays.
    let linked = match store
        .apply_exchange(
            &ExchangeOutcome {
                item: item("AAMk-1", "CK1"),
                ..outcome(1)
            },
            t1,
        )
        .await
        .unwrap()
    {
        ApplyResult::Applied {
            reservation,
            changed: false,
        } => reservation,
        other => panic!("{other:?}"),
    };
    assert_eq!(linked.version, 1);
    assert_eq!(linked.sync_state, SyncState::Synced);
    assert_eq!(
        store
            .reservation_by_item("room1@contoso.com", "AAMk-1")
            .await
            .unwrap(),
        Some(linked.clone())
    );
    assert_eq!(
        store
            .reservation_by_item("room2@contoso.com", "AAMk-1")
            .await
            .unwrap(),
        None,
        "item ids are per mailbox"
    );
    // The same again: nothing written.
    let again = store
        .apply_exchange(
            &ExchangeOutcome {
                item: item("AAMk-1", "CK1"),
                ..outcome(1)
            },
            T0 + minutes(2),
        )
        .await
        .unwrap();
    assert_eq!(again, ApplyResult::Unchanged(linked.clone()));
    // Decided on an old version: refused, the current row returned.
    let stale = store
        .apply_exchange(
            &ExchangeOutcome {
                cancel: true,
                ..outcome(7)
            },
            t1,
        )
        .await
        .unwrap();
    assert_eq!(stale, ApplyResult::Conflict(linked.clone()));
    // F2: changed in Outlook.
    let t2 = T0 + minutes(2);
    let ApplyResult::Applied {
        reservation: updated,
        changed: true,
    } = store
        .apply_exchange(
            &ExchangeOutcome {
                item: item("AAMk-1", "CK2"),
                fields: ItemFields {
                    subject: Some("Moved in Outlook".into()),
                    start: Some(start + Duration::minutes(30)),
                    end: Some(start + Duration::minutes(90)),
                },
                ..outcome(1)
            },
            t2,
        )
        .await
        .unwrap()
    else {
        panic!("F2 applies");
    };
    assert_eq!(updated.version, 2);
    assert_eq!(updated.last_change, LastChange::Exchange);
    assert_eq!(updated.subject, "Moved in Outlook");
    assert_eq!(updated.start, start + Duration::minutes(30));
    assert_eq!(updated.change_key.as_deref(), Some("CK2"));
    assert_eq!(updated.updated_at, t2);
    assert!(
        store.outbox_rows("res-c").await.unwrap().is_empty(),
        "no write for Exchange's own change"
    );
    // A move within the calendar: followed to the new id, not a change.
    let ApplyResult::Applied {
        reservation: moved,
        changed: false,
    } = store
        .apply_exchange(
            &ExchangeOutcome {
                item: item("AAMk-2", "CK3"),
                ..outcome(2)
            },
            t2,
        )
        .await
        .unwrap()
    else {
        panic!("the move is followed");
    };
    assert_eq!(moved.item_id.as_deref(), Some("AAMk-2"));
    assert_eq!(
        store
            .reservation_by_item("room1@contoso.com", "AAMk-1")
            .await
            .unwrap(),
        None
    );
    // One item, one reservation.
    let clash = store
        .apply_exchange(
            &ExchangeOutcome {
                reservation_id: "res-other".into(),
                item: item("AAMk-2", "CK3"),
                ..outcome(1)
            },
            t2,
        )
        .await;
    assert!(matches!(clash, Err(StoreError::Rejected(_))), "{clash:?}");
    // E/F: gone from the calendar.
    let ApplyResult::Applied {
        reservation: cancelled,
        changed: true,
    } = store
        .apply_exchange(
            &ExchangeOutcome {
                cancel: true,
                ..outcome(2)
            },
            T0 + minutes(3),
        )
        .await
        .unwrap()
    else {
        panic!("cancelled");
    };
    assert_eq!(cancelled.status, ReservationStatus::Cancelled);
    assert_eq!(cancelled.version, 3);
    assert_eq!(cancelled.last_change, LastChange::Exchange);
    // Restored later: never revived.
    let revived = store
        .apply_exchange(
            &ExchangeOutcome {
                fields: ItemFields {
                    subject: Some("Restored".into()),
                    ..Default::default()
                },
                ..outcome(3)
            },
            T0 + minutes(4),
        )
        .await
        .unwrap();
    assert_eq!(revived, ApplyResult::Unchanged(cancelled));
    assert_eq!(
        store
            .apply_exchange(
                &ExchangeOutcome {
                    reservation_id: "res-none".into(),
                    ..outcome(1)
                },
                t1
            )
            .await
            .unwrap(),
        ApplyResult::NotFound
    );
    // Shortened to nothing in Outlook (the calendar allows it): mirrored, and still changeable.
    let zero = store
        .apply_exchange(
            &ExchangeOutcome {
                reservation_id: "res-other".into(),
                fields: ItemFields {
                    end: Some(start),
                    ..Default::default()
                },
                ..outcome(1)
            },
            t1,
        )
        .await
        .unwrap();
    assert!(
        matches!(&zero, ApplyResult::Applied { reservation, changed: true } if reservation.end == start),
        "{zero:?}"
    );
    let renamed = store
        .change_reservation("res-other", &subject("Renamed"), ChangeSource::Web, t1)
        .await
        .unwrap();
    assert_eq!(renamed.reservation.version, 3);
}

async fn event_claims_keep_order_and_exclusivity(db: &Db) {
    let store = db.open().await;
    subscribe(&*store, "room1@contoso.com", "S1", T0).await;
    subscribe(&*store, "room2@contoso.com", "S2", T0).await;
    // S1's events arrive first, then S2's, then one more of S1.
    let notify = |s: &str, from: usize, to: usize| {
        request(notification(
            s,
            Some(&watermark(s, from)),
            (from + 1..=to)
                .map(|n| event(EventKind::Modified, Some(&watermark(s, n))))
                .collect(),
        ))
    };
    for req in [notify("S1", 0, 2), notify("S2", 0, 2), notify("S1", 2, 3)] {
        store.commit(&[req], Accept).await.unwrap();
    }
    let ids_of = |s: &str, events: &[store::StoredEvent]| -> Vec<i64> {
        events
            .iter()
            .filter(|e| e.subscription_id == s)
            .map(|e| e.id)
            .collect()
    };
    let all = store.events(None).await.unwrap();
    let (s1, s2) = (ids_of("S1", &all), ids_of("S2", &all));
    assert_eq!((s1.len(), s2.len()), (3, 2));

    let w1 = lease("w1", T0 + minutes(5));
    let claimed = store.claim_events(T0, &w1, 10, 2).await.unwrap();
    let summary: Vec<(&str, Option<&str>, Vec<i64>)> = claimed
        .iter()
        .map(|c| {
            (
                c.subscription_id.as_str(),
                c.mailbox.as_deref(),
                c.events.iter().map(|e| e.id).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("S1", Some("room1@contoso.com"), s1[..2].to_vec()),
            ("S2", Some("room2@contoso.com"), s2.clone()),
        ],
        "per subscription its oldest events, in order; oldest subscription first"
    );
    assert_eq!(claimed[0].tenant, "default");
    // Everything of S1 and S2 is held: S1's third event does not overtake its first two.
    let w2 = lease("w2", T0 + minutes(5));
    assert!(store
        .claim_events(T0, &w2, 10, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.finish_events(&s1[..1], T0).await.unwrap(), 1);
    assert!(
        store
            .claim_events(T0, &w2, 10, 10)
            .await
            .unwrap()
            .is_empty(),
        "S1's second event is still held"
    );
    assert_eq!(store.finish_events(&s1[1..2], T0).await.unwrap(), 1);
    let third = store.claim_events(T0, &w2, 10, 10).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(ids_of("S1", &third[0].events), s1[2..].to_vec());

    // S2's first event fails: it and S2's second wait for the back-off.
    assert!(store
        .retry_event(s2[0], "w1", "GetItem: ErrorServerBusy", T0 + minutes(10))
        .await
        .unwrap());
    assert!(
        store
            .claim_events(T0 + minutes(1), &w2, 10, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due, and S1 is held by w2"
    );
    let later = store
        .claim_events(T0 + minutes(10), &lease("w2", T0 + minutes(15)), 10, 10)
        .await
        .unwrap();
    let s2_claim = later
        .iter()
        .find(|c| c.subscription_id == "S2")
        .expect("S2 due again");
    assert_eq!(ids_of("S2", &s2_claim.events), s2);
    let head = &s2_claim.events[0];
    assert_eq!(head.attempts, 1);
    assert_eq!(head.last_error.as_deref(), Some("GetItem: ErrorServerBusy"));
    assert_eq!(head.next_attempt_at, Some(T0 + minutes(10)));
    // A poison event is parked; the subscription's next event goes on.
    assert!(store
        .dead_letter(s2[0], "w2", "no such property", T0 + minutes(11))
        .await
        .unwrap());
    assert!(!store
        .dead_letter(s2[0], "w2", "twice", T0 + minutes(11))
        .await
        .unwrap());
    let next = store
        .claim_events(T0 + minutes(11), &lease("w1", T0 + minutes(16)), 10, 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 1, "S1 is still held by w2");
    assert_eq!(ids_of("S2", &next[0].events), s2[1..].to_vec());
    let dead = store.dead_events(None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, s2[0]);
    assert_eq!(dead[0].state, store::EventState::Failed);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].last_error.as_deref(), Some("no such property"));
    assert!(store.dead_events(Some(s2[0]), 10).await.unwrap().is_empty());
    let backlog = store.sync_backlog().await.unwrap();
    assert_eq!((backlog.events_pending, backlog.events_dead), (2, 1));

    // Released (w1 stops): S2 is free at once.
    assert_eq!(
        store.release_events(&s2[1..], "w2").await.unwrap(),
        0,
        "not w2's"
    );
    assert_eq!(store.release_events(&s2[1..], "w1").await.unwrap(), 1);
    // Replayed: pending again, first in its subscription's line.
    assert!(store.replay_event(s2[0]).await.unwrap());
    assert!(!store.replay_event(s2[0]).await.unwrap());
    let replayed = store
        .claim_events(T0 + minutes(12), &lease("w1", T0 + minutes(17)), 10, 10)
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(ids_of("S2", &replayed[0].events), s2);
    assert_eq!(replayed[0].events[0].attempts, 0);
    assert_eq!(replayed[0].events[0].state, store::EventState::Pending);
    // A claim that expires (its worker died) is claimed again: at least once.
    let retaken = store
        .claim_events(T0 + minutes(17), &lease("w3", T0 + minutes(20)), 10, 10)
        .await
        .unwrap();
    let subscriptions: HashSet<&str> = retaken.iter().map(|c| c.subscription_id.as_str()).collect();
    assert_eq!(subscriptions, HashSet::from(["S1", "S2"]));
    assert_eq!(store.backlog().await.unwrap(), 3);
}

async fn two_stores_claim_concurrently_each_thing_once_in_order(db: &Db) {
    const SUBSCRIPTIONS: usize = 8;
    const EVENTS: usize = 25;
    const RESERVATIONS: usize = 20;
    let first = db.open().await;
    let second = db.open().await;
    for s in 0..SUBSCRIPTIONS {
        let id = format!("S-c{s}");
        let events = (1..=EVENTS)
            .map(|n| event(EventKind::Modified, Some(&watermark(&id, n))))
            .collect();
        first
            .commit(&[request(notification(&id, None, events))], Accept)
            .await
            .unwrap();
    }
    rooms(&*first).await;
    for n in 0..RESERVATIONS {
        let start = datetime!(2026-12-02 08:00 UTC) + Duration::hours(n as i64);
        create(
            &*first,
            booking(
                &format!("res-c{n:02}"),
                "room1@contoso.com",
                start,
                ChangeSource::Web,
            ),
        )
        .await;
    }

    #[derive(Default)]
    struct Seen {
        /// Subscriptions some worker holds right now.
        held: HashSet<String>,
        /// Per subscription, the last event id finished.
        last: HashMap<String, i64>,
        claimed: Vec<i64>,
        reservations: Vec<String>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut workers = Vec::new();
    for (name, store) in [("w1", first.clone()), ("w2", second.clone())] {
        let seen = seen.clone();
        workers.push(tokio::spawn(async move {
            let mut idle = 0;
            // Bounded: at most this many rounds, whatever happens.
            // One instant throughout: no lease expires, so every claim is exclusive.
            let now = T0 + minutes(1);
            let lease = lease(name, now + minutes(5));
            for _ in 0..2_000 {
                let events = store.claim_events(now, &lease, 3, 4).await.unwrap();
                let writes = store.claim_outbox(now, 3, &lease).await.unwrap();
                if events.is_empty() && writes.is_empty() {
                    idle += 1;
                    if idle > 20 {
                        return;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for claim in &events {
                    let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
                    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
                    {
                        let mut seen = seen.lock().unwrap();
                        assert!(
                            seen.held.insert(claim.subscription_id.clone()),
                            "{} held by two workers",
                            claim.subscription_id
                        );
                        let last = seen.last.get(&claim.subscription_id).copied().unwrap_or(0);
                        assert!(ids[0] > last, "overtaken: {ids:?} after {last}");
                        seen.claimed.extend(&ids);
                        // Recorded before the claim ends in the database: only then may
                        // another worker take the subscription.
                        seen.last
                            .insert(claim.subscription_id.clone(), ids[ids.len() - 1]);
                        seen.held.remove(&claim.subscription_id);
                    }
                    store.finish_events(&ids, now).await.unwrap();
                }
                for write in &writes {
                    seen.lock()
                        .unwrap()
                        .reservations
                        .push(write.reservation.id.clone());
                    store
                        .finish_outbox(&write.reservation.id, write.row.version, None, now)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut claimed = seen.claimed.clone();
    claimed.sort_unstable();
    let stored = first.events(None).await.unwrap();
    let all: Vec<i64> = stored.iter().map(|e| e.id).collect();
    assert_eq!(claimed, all, "every event claimed exactly once");
    let mut written = seen.reservations.clone();
    written.sort();
    let expected: Vec<String> = (0..RESERVATIONS).map(|n| format!("res-c{n:02}")).collect();
    assert_eq!(written, expected, "every write claimed exactly once");
    assert_eq!(first.backlog().await.unwrap(), 0);
    assert_eq!(first.sync_backlog().await.unwrap().outbox_pending, 0);
    // Each subscription's claims ended on its last event.
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    for event in &stored {
        newest.insert(event.subscription_id.clone(), event.id);
    }
    assert_eq!(newest.len(), SUBSCRIPTIONS);
    assert_eq!(seen.last.into_iter().collect::<BTreeMap<_, _>>(), newest);
}

async fn resync_requests_and_the_calendar_folder(db: &Db) {
    let store = db.open().await;
    subscribe(&*store, "room1@contoso.com", "S1", T0).await;
    store
        .put_mailbox(&put("off@contoso.com", false), T0)
        .await
        .unwrap();
    let calendar = store
        .mailbox_calendar("room1@contoso.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(calendar.calendar_folder_id, None);
    assert_eq!(calendar.resynced_at, None);
    assert!(store
        .set_calendar_folder_id("room1@contoso.com", "AAMkCalendar")
        .await
        .unwrap());
    assert!(!store
        .set_calendar_folder_id("nobody@contoso.com", "x")
        .await
        .unwrap());
    assert_eq!(
        store
            .mailbox_calendar("room1@contoso.com")
            .await
            .unwrap()
            .unwrap()
            .calendar_folder_id
            .as_deref(),
        Some("AAMkCalendar")
    );
    assert_eq!(
        store.mailbox_calendar("nobody@contoso.com").await.unwrap(),
        None
    );

    let t1 = T0 + minutes(1);
    assert!(store.request_resync("room1@contoso.com", t1).await.unwrap());
    assert!(store.request_resync("off@contoso.com", t1).await.unwrap());
    assert!(!store
        .request_resync("nobody@contoso.com", t1)
        .await
        .unwrap());
    let taken = store
        .take_resyncs(t1, &lease("w1", t1 + minutes(10)), 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "sync off: not taken");
    assert_eq!(taken[0].address, "room1@contoso.com");
    assert_eq!(taken[0].requested_at, t1);
    assert_eq!(taken[0].calendar_folder_id.as_deref(), Some("AAMkCalendar"));
    assert!(
        store
            .take_resyncs(t1, &lease("w2", t1 + minutes(10)), 10)
            .await
            .unwrap()
            .is_empty(),
        "held by w1"
    );

    // A new request while w1 reads: finishing the old one leaves the new one.
    let t2 = T0 + minutes(2);
    store.request_resync("room1@contoso.com", t2).await.unwrap();
    store
        .finish_resync("room1@contoso.com", t1, T0 + minutes(3))
        .await
        .unwrap();
    let calendar = store
        .mailbox_calendar("room1@contoso.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(calendar.resync_requested_at, Some(t2));
    assert_eq!(calendar.resynced_at, Some(T0 + minutes(3)));
    let taken = store
        .take_resyncs(T0 + minutes(3), &lease("w2", T0 + minutes(13)), 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].requested_at, t2);
    // It fails: deferred, then taken again after the back-off.
    store
        .defer_resync("room1@contoso.com", "w2", T0 + minutes(20))
        .await
        .unwrap();
    assert!(store
        .take_resyncs(T0 + minutes(15), &lease("w1", T0 + minutes(25)), 10)
        .await
        .unwrap()
        .is_empty());
    let taken = store
        .take_resyncs(T0 + minutes(20), &lease("w1", T0 + minutes(30)), 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    store
        .finish_resync("room1@contoso.com", taken[0].requested_at, T0 + minutes(21))
        .await
        .unwrap();
    let calendar = store
        .mailbox_calendar("room1@contoso.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(calendar.resync_requested_at, None);
    assert!(store
        .take_resyncs(T0 + minutes(40), &lease("w1", T0 + minutes(50)), 10)
        .await
        .unwrap()
        .is_empty());
    // A fresh subscription (process A) asks for one; the folder id is kept across it.
    let view = store.mailbox("room1@contoso.com").await.unwrap().unwrap();
    assert_eq!(view.mailbox.resync_requested_at, None);
    assert_eq!(
        store
            .mailbox_calendar("room1@contoso.com")
            .await
            .unwrap()
            .unwrap()
            .calendar_folder_id
            .as_deref(),
        Some("AAMkCalendar")
    );
}

/// A worker killed with SIGKILL leaves its claims and leases behind; its next run (same instance
/// name) takes them back at once, and leaves another instance's alone, even one whose name the
/// first extends (`host:80` against `host:8080`).
async fn a_restarted_worker_takes_back_its_previous_runs_leases_only(db: &Db) {
    let store = db.open().await;
    subscribe(&*store, "room1@contoso.com", "S1", T0).await;
    subscribe(&*store, "room2@contoso.com", "S2", T0).await;
    for s in ["S1", "S2"] {
        let events = (1..=2)
            .map(|n| event(EventKind::Modified, Some(&watermark(s, n))))
            .collect();
        store
            .commit(
                &[request(notification(s, Some(&watermark(s, 0)), events))],
                Accept,
            )
            .await
            .unwrap();
    }
    let start = datetime!(2026-12-02 08:00 UTC);
    web_bookings_a_and_b(&*store, start).await;
    for address in ["room1@contoso.com", "room2@contoso.com"] {
        assert!(store.request_resync(address, T0).await.unwrap());
    }
    // The dead run of `host:80` holds S1, res-a and room1's resync; the live `host:8080` the rest.
    let dead = lease("host:80/run-1-sync", T0 + minutes(10));
    let live = lease("host:8080/run-7-sync", T0 + minutes(10));
    for (holder, subscription, reservation, mailbox) in [
        (&dead, "S1", "res-a", "room1@contoso.com"),
        (&live, "S2", "res-b", "room2@contoso.com"),
    ] {
        let claimed = store.claim_events(T0, holder, 1, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].subscription_id, subscription);
        let outbox = store.claim_outbox(T0, 1, holder).await.unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].reservation.id, reservation);
        let resyncs = store.take_resyncs(T0, holder, 1).await.unwrap();
        assert_eq!(resyncs.len(), 1);
        assert_eq!(resyncs[0].address, mailbox);
    }
    // And a Subscribe call of the dead run on a third mailbox.
    store
        .put_mailbox(&put("room3@contoso.com", true), T0)
        .await
        .unwrap();
    let subscribing = store::MailboxState::Subscribing;
    let dead_call = lease("host:80/run-1-subscribe", T0 + minutes(10));
    let held = store.begin_subscribe("room3@contoso.com", &dead_call, subscribing, None, T0);
    assert!(held.await.unwrap().is_some());
    let now = T0 + minutes(1);
    let retake = lease("host:80/run-2-subscribe", T0 + minutes(10));
    let again = store.begin_subscribe("room3@contoso.com", &retake, subscribing, None, now);
    assert!(again.await.unwrap().is_none(), "held by the dead run");
    let newcomer = lease("host:80/run-2-sync", T0 + minutes(10));
    assert!(store
        .claim_events(now, &newcomer, 10, 10)
        .await
        .unwrap()
        .is_empty());

    // Two events, one outbox row, one resync hold, one Subscribe lease.
    assert_eq!(
        store
            .release_leases_of_previous_run("host:80/")
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        store
            .release_leases_of_previous_run("host:80/")
            .await
            .unwrap(),
        0
    );
    let again = store.begin_subscribe("room3@contoso.com", &retake, subscribing, None, now);
    assert!(again.await.unwrap().is_some(), "free after the release");
    let events = store.claim_events(now, &newcomer, 10, 10).await.unwrap();
    let subscriptions: Vec<&str> = events.iter().map(|c| c.subscription_id.as_str()).collect();
    assert_eq!(subscriptions, ["S1"], "S2 stays with the live instance");
    assert_eq!(events[0].events.len(), 2);
    let outbox = store.claim_outbox(now, 10, &newcomer).await.unwrap();
    let reservations: Vec<&str> = outbox.iter().map(|c| c.reservation.id.as_str()).collect();
    assert_eq!(reservations, ["res-a"]);
    let resyncs = store.take_resyncs(now, &newcomer, 10).await.unwrap();
    let mailboxes: Vec<&str> = resyncs.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(mailboxes, ["room1@contoso.com"]);
}

/// PostgreSQL: a statement of the store waiting for a row lock (held here by another replica's
/// open transaction) does not hold up the store's other work, which has connections of its own
/// (with one, every API call and sync step waited behind it). No speed is asserted: the bound
/// only turns a wait behind the lock into a failure instead of a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lock_wait_does_not_hold_up_other_work() {
    let Some(schema) = PgSchema::create("postgres_a_lock_wait_does_not_hold_up_other_work").await
    else {
        return;
    };
    // A name of its own, to find this store's lock wait among the server's backends.
    let application = format!("pushgate-lockwait-{}", rand::random::<u32>());
    let store = store::open(&format!("{}&application_name={application}", schema.url))
        .await
        .expect("open store");
    rooms(&*store).await;
    let start = T0 + minutes(60);
    web_bookings_a_and_b(&*store, start).await;

    let other = schema.client().await;
    other
        .batch_execute("BEGIN; SELECT id FROM reservations WHERE id = 'res-a' FOR UPDATE")
        .await
        .unwrap();
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .change_reservation("res-a", &subject("after the lock"), ChangeSource::Web, T0)
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waits: i64 = other
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&application],
            )
            .await
            .unwrap()
            .get(0);
        if waits > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change never waited for the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Below the store's own 20 s statement bound, which would end the wait by itself.
    let bound = std::time::Duration::from_secs(10);
    let read = tokio::time::timeout(bound, store.reservation("res-b"))
        .await
        .expect("a read waited behind another statement's lock wait")
        .unwrap()
        .expect("res-b exists");
    assert_eq!(read.version, 1);
    let changed = tokio::time::timeout(
        bound,
        store.change_reservation("res-b", &subject("meanwhile"), ChangeSource::Web, T0),
    )
    .await
    .expect("a change waited behind another statement's lock wait")
    .unwrap();
    assert_eq!(changed.reservation.version, 2);
    assert!(!waiting.is_finished(), "the lock is still held");

    other.batch_execute("COMMIT").await.unwrap();
    let after = waiting.await.unwrap().unwrap();
    assert_eq!(after.reservation.subject, "after the lock");
    assert_eq!(after.reservation.version, 2);
}
