//! The store methods the sync step added: noting a CreateItem before it is sent, and listing the
//! events still waiting (included by `store_conformance.rs`, whose macro and helpers it uses).

use pushgate::notification::EventKind;
use pushgate::store::{self, ChangeSource, ItemLink, Lease, NewReservation, OutboxRetry};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::{event, notification, put, request, subscribe, watermark, Accept, Db, PgSchema};

conformance!(
    sqlite, postgres, tokio::test(flavor = "multi_thread", worker_threads = 2);
    a_noted_create_makes_every_open_row_look_for_the_item,
    pending_events_list_what_waits_in_order,
);

const T0: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);

fn booking(id: &str) -> NewReservation {
    let start = datetime!(2026-12-02 08:00 UTC);
    NewReservation {
        id: id.into(),
        tenant: None,
        mailbox: "room1@contoso.com".into(),
        resource: "Room 1".into(),
        subject: "Planning".into(),
        start,
        end: start + Duration::hours(1),
        source: ChangeSource::Web,
    }
}

async fn a_noted_create_makes_every_open_row_look_for_the_item(db: &Db) {
    let store = db.open().await;
    store
        .put_mailbox(&put("room1@contoso.com", true), T0)
        .await
        .unwrap();
    store
        .create_reservation(&booking("res-a"), T0)
        .await
        .unwrap();
    assert!(!store.outbox_rows("res-a").await.unwrap()[0].create_outcome_unknown);
    assert!(store.note_create_attempt("res-a", T0).await.unwrap());
    // A later change's row, written before the answer came, looks for the item too.
    store
        .change_reservation(
            "res-a",
            &store::ReservationChange {
                subject: Some("Later".into()),
                ..Default::default()
            },
            ChangeSource::Web,
            T0,
        )
        .await
        .unwrap();
    store.note_create_attempt("res-a", T0).await.unwrap();
    let rows = store.outbox_rows("res-a").await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.create_outcome_unknown));
    let lease = Lease {
        owner: "w1".into(),
        until: T0 + Duration::minutes(2),
    };
    let claimed = store.claim_outbox(T0, 10, &lease).await.unwrap();
    assert!(claimed[0].row.create_outcome_unknown, "the claim says so");
    // A definite failure clears it again; a finished write leaves nothing open.
    store
        .retry_outbox(
            claimed[0].row.id,
            &OutboxRetry {
                error: "HTTP 503".into(),
                next_attempt_at: T0,
                create_outcome_unknown: false,
                failed: false,
            },
            T0,
        )
        .await
        .unwrap();
    assert!(store
        .outbox_rows("res-a")
        .await
        .unwrap()
        .iter()
        .all(|r| !r.create_outcome_unknown));
    let link = ItemLink {
        item_id: "AAMk1".into(),
        change_key: Some("CK1".into()),
    };
    store
        .finish_outbox("res-a", 2, Some(&link), T0)
        .await
        .unwrap();
    assert!(
        !store.note_create_attempt("res-a", T0).await.unwrap(),
        "no open row"
    );
    assert!(!store.note_create_attempt("res-unknown", T0).await.unwrap());
}

async fn pending_events_list_what_waits_in_order(db: &Db) {
    let store = db.open().await;
    subscribe(&*store, "room1@contoso.com", "S1", T0).await;
    let notify = request(notification(
        "S1",
        Some(&watermark("S1", 0)),
        (1..=4)
            .map(|n| event(EventKind::Modified, Some(&watermark("S1", n))))
            .collect(),
    ));
    store.commit(&[notify], Accept).await.unwrap();
    let all: Vec<i64> = store
        .events(Some("S1"))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(all.len(), 4);
    store.finish_events(&all[..1], T0).await.unwrap();
    store
        .retry_event(
            all[1],
            "nobody",
            "GetItem: ErrorAccessDenied",
            T0 + Duration::minutes(1),
        )
        .await
        .unwrap();
    store
        .dead_letter(all[3], "nobody", "poison", T0)
        .await
        .unwrap();
    let pending = store.pending_events(None, 10).await.unwrap();
    let ids: Vec<i64> = pending.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        all[1..3].to_vec(),
        "processed and dead ones are not waiting"
    );
    assert_eq!(pending[0].attempts, 1);
    assert_eq!(
        pending[0].last_error.as_deref(),
        Some("GetItem: ErrorAccessDenied")
    );
    let after = store.pending_events(Some(all[1]), 10).await.unwrap();
    assert_eq!(after.iter().map(|e| e.id).collect::<Vec<_>>(), [all[2]]);
    assert_eq!(store.pending_events(None, 1).await.unwrap().len(), 1);
}
