//! The same cases against every store: SQLite (a temp file) and PostgreSQL (a fresh schema in
//! database `test`; skipped with a printed reason when no server answers).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod worker_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pushgate::notification::{EventKind, SubscriptionStatus};
use pushgate::store::UnknownSubscriptions;
use pushgate::store::{
    self, EventState, FinishOutcome, GroupCommitOptions, GroupCommitter, IncidentKind,
    IngestResult, Lease, MailboxState, PutMailbox, RenewCause, StoreError, SubscribeOutcome,
    SubscriptionState,
};
use time::OffsetDateTime;
use worker_support::*;

use UnknownSubscriptions::{Accept, Unsubscribe};

/// One database for one test case.
enum Db {
    Sqlite(tempfile::TempDir, String),
    Postgres(PgSchema),
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = sqlite_url(dir.path());
        Db::Sqlite(dir, url)
    }

    fn url(&self) -> &str {
        match self {
            Db::Sqlite(_, url) => url,
            Db::Postgres(schema) => &schema.url,
        }
    }

    async fn open(&self) -> Arc<dyn store::Store> {
        store::open(self.url()).await.expect("open store")
    }

    /// Runs SQL on a connection of its own, beside the store's.
    async fn raw(&self, sqlite: &str, postgres: &str) {
        match self {
            Db::Sqlite(dir, _) => {
                let connection =
                    rusqlite::Connection::open(dir.path().join("pushgate.db")).expect("open");
                connection.execute_batch(sqlite).expect("raw SQLite");
            }
            Db::Postgres(schema) => {
                schema
                    .client()
                    .await
                    .batch_execute(postgres)
                    .await
                    .expect("raw PostgreSQL");
            }
        }
    }
}

/// One test per case and backend. `runtime` is the test's tokio runtime: `multi_thread` for real
/// parallelism, `current_thread` where a case needs the committer to run only when the test
/// task waits (so that what the test queues forms one batch, deterministically).
macro_rules! conformance {
    ($sqlite:ident, $postgres:ident, $runtime:meta; $($case:ident),* $(,)?) => {
        mod $sqlite {
            $(
                #[$runtime]
                async fn $case() {
                    let db = super::Db::sqlite();
                    super::$case(&db).await;
                }
            )*
        }
        mod $postgres {
            $(
                #[$runtime]
                async fn $case() {
                    let Some(schema) = super::PgSchema::create(stringify!($case)).await else {
                        return;
                    };
                    let db = super::Db::Postgres(schema);
                    super::$case(&db).await;
                }
            )*
        }
    };
}

conformance!(
    sqlite, postgres, tokio::test(flavor = "multi_thread", worker_threads = 2);
    stores_every_field_of_every_event_kind,
    identical_notification_is_stored_once,
    identical_members_of_one_commit_are_stored_once,
    event_without_watermark_dedupes_on_content,
    watermark_chain_and_gap,
    error_notification_is_recorded_and_flags_resubscribe,
    unknown_subscriptions_policy,
    retention_purges_only_old_processed_events,
    concurrent_group_commits_store_everything_once,
    two_stores_on_one_database_store_each_event_once,
    reopen_keeps_data,
    a_database_of_an_older_pushgate_is_migrated_and_keeps_its_rows,
    a_database_of_a_newer_pushgate_is_refused,
    mailbox_sync_on_and_off,
    mailboxes_list_in_pages,
    subscribe_lifecycle_replaces_the_old_subscription,
    due_mailboxes_follow_the_watchdog,
    a_lease_keeps_other_workers_out,
);

conformance!(
    sqlite_one_thread, postgres_one_thread, tokio::test(flavor = "current_thread");
    failed_commit_writes_nothing_and_spares_the_others,
);

// Reservations, their outbox and the sync step's event claims: more cases of the same kind, in a
// file of their own (after the macro, which it uses).
#[path = "store_conformance/reservations.rs"]
mod reservations;
#[path = "store_conformance/sync_step.rs"]
mod sync_step;

/// Records every commit the group committer runs: (notifications, succeeded).
#[derive(Default)]
struct Commits(std::sync::Mutex<Vec<(usize, bool)>>);

impl store::BatchObserver for Commits {
    fn batch_committed(&self, size: usize, _elapsed: Duration, ok: bool) {
        self.0.lock().unwrap().push((size, ok));
    }
}

async fn stores_every_field_of_every_event_kind(db: &Db) {
    let store = db.open().await;
    let mut events: Vec<_> = EventKind::ALL
        .into_iter()
        .enumerate()
        .map(|(i, kind)| event(kind, Some(&format!("W{i}"))))
        .collect();
    // Odd but legal values: no change key, a folder as the object, a negative unread count.
    events[0].object.as_mut().unwrap().change_key = None;
    events[1].object = Some(folder("AAMkFolderAsObject"));
    events[3].unread_count = Some(-7);
    let notification = notification("S-fields", Some("W-prev"), events.clone());
    let mut req = request(notification);
    req.tenant = "tenant-a".to_string();
    let outcome = &store
        .commit(std::slice::from_ref(&req), Accept)
        .await
        .expect("commit")[0];
    assert_eq!(outcome.status, SubscriptionStatus::Ok);
    assert_eq!(outcome.result, IngestResult::Stored);
    assert_eq!(outcome.stored_events, EventKind::ALL.to_vec());
    assert_eq!(outcome.duplicate_events, 0);
    assert_eq!(outcome.registered, vec!["S-fields".to_string()]);

    let stored = store.events(None).await.expect("events");
    assert_eq!(stored.len(), events.len());
    for (position, (row, event)) in stored.iter().zip(&events).enumerate() {
        assert_eq!(&row.to_event(), event);
        assert_eq!(row.position as usize, position);
        assert_eq!(row.tenant, "tenant-a");
        assert_eq!(row.subscription_id, "S-fields");
        assert_eq!(row.previous_watermark.as_deref(), Some("W-prev"));
        assert_eq!(row.dedupe_key, event.watermark.clone().unwrap());
        assert_eq!(row.received_at, req.received_at);
        assert_eq!(row.request_id, req.request_id);
        assert_eq!(row.state, EventState::Pending);
        assert_eq!(row.processed_at, None);
    }
    assert!(
        stored.windows(2).all(|w| w[0].id < w[1].id),
        "ids grow in insertion order"
    );

    let subscription = store
        .subscription("S-fields")
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(subscription.tenant, "tenant-a");
    assert_eq!(subscription.state, SubscriptionState::Active);
    assert_eq!(subscription.last_watermark.as_deref(), Some("W7"));
    assert_eq!(subscription.last_notification_at, Some(req.received_at));
    assert_eq!(store.backlog().await.unwrap(), 8);
    store.ping().await.expect("ping");
}

async fn identical_notification_is_stored_once(db: &Db) {
    let store = db.open().await;
    let req = request(notification(
        "S-dup",
        Some("W0"),
        vec![
            event(EventKind::Created, Some("W1")),
            event(EventKind::Modified, Some("W2")),
        ],
    ));
    let first = store
        .commit(std::slice::from_ref(&req), Accept)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.result, IngestResult::Stored);
    for _ in 0..4 {
        let again = store
            .commit(std::slice::from_ref(&req), Accept)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(again.status, SubscriptionStatus::Ok);
        assert_eq!(again.result, IngestResult::Duplicate);
        assert_eq!(again.duplicate_events, 2);
        assert!(again.stored_events.is_empty());
    }
    assert_eq!(store.events(Some("S-dup")).await.unwrap().len(), 2);
    assert!(store.incidents(None).await.unwrap().is_empty());
}

async fn identical_members_of_one_commit_are_stored_once(db: &Db) {
    let store = db.open().await;
    let req = request(notification(
        "S-same",
        None,
        vec![event(EventKind::Created, Some("W1"))],
    ));
    let batch = vec![req.clone(), req.clone(), req.clone(), req.clone(), req];
    let outcomes = store.commit(&batch, Accept).await.unwrap();
    let results: Vec<_> = outcomes.iter().map(|o| o.result).collect();
    assert_eq!(
        results,
        [
            IngestResult::Stored,
            IngestResult::Duplicate,
            IngestResult::Duplicate,
            IngestResult::Duplicate,
            IngestResult::Duplicate
        ]
    );
    assert_eq!(store.events(None).await.unwrap().len(), 1);
}

async fn event_without_watermark_dedupes_on_content(db: &Db) {
    let store = db.open().await;
    let events = vec![
        event(EventKind::Status, None),
        event(EventKind::Created, None),
    ];
    let req = request(notification("S-nowm", Some("P1"), events.clone()));
    let first = store
        .commit(std::slice::from_ref(&req), Accept)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.result, IngestResult::Stored);
    let again = store.commit(&[req], Accept).await.unwrap().remove(0);
    assert_eq!(again.result, IngestResult::Duplicate);
    // Same events after another previous watermark are other events.
    let later = request(notification("S-nowm", Some("P2"), events));
    let later = store.commit(&[later], Accept).await.unwrap().remove(0);
    assert_eq!(later.result, IngestResult::Stored);
    let stored = store.events(Some("S-nowm")).await.unwrap();
    assert_eq!(stored.len(), 4);
    assert!(stored
        .iter()
        .all(|e| e.watermark.is_none() && e.dedupe_key.starts_with('~')));
}

async fn watermark_chain_and_gap(db: &Db) {
    let store = db.open().await;
    let step = |prev: &str, next: &str| {
        request(notification(
            "S-chain",
            Some(prev),
            vec![event(EventKind::Modified, Some(next))],
        ))
    };
    let first = step("W0", "W1");
    for req in [first.clone(), step("W1", "W2"), step("W2", "W3")] {
        let outcome = store.commit(&[req], Accept).await.unwrap().remove(0);
        assert_eq!(outcome.result, IngestResult::Stored);
        assert!(outcome.flagged.is_empty());
    }
    // A late retry of the first: all present, so the old PreviousWatermark is not a gap.
    let retry = store.commit(&[first], Accept).await.unwrap().remove(0);
    assert_eq!(retry.result, IngestResult::Duplicate);
    let record = store.subscription("S-chain").await.unwrap().unwrap();
    assert_eq!(record.state, SubscriptionState::Active);
    assert_eq!(record.last_watermark.as_deref(), Some("W3"));

    // W4 never arrived: the next notification's PreviousWatermark is W5.
    let gap = store
        .commit(&[step("W5", "W6")], Accept)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        gap.result,
        IngestResult::Stored,
        "events are kept, not thrown away"
    );
    assert_eq!(
        gap.flagged,
        vec![("S-chain".to_string(), SubscriptionState::ResyncNeeded)]
    );
    let record = store.subscription("S-chain").await.unwrap().unwrap();
    assert_eq!(record.state, SubscriptionState::ResyncNeeded);
    assert_eq!(record.last_watermark.as_deref(), Some("W6"));
    assert_eq!(
        record.replay_from.as_deref(),
        Some("W3"),
        "a renewal replays from the last watermark before the gap"
    );
    assert!(record.state_reason.unwrap().contains("W5"));
    let incidents = store.incidents(Some("S-chain")).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].kind, IncidentKind::WatermarkGap);
    assert!(incidents[0].detail.as_deref().unwrap().contains("W3"));
    assert_eq!(store.events(Some("S-chain")).await.unwrap().len(), 4);

    // The flag stays until the sync step clears it; a second gap is recorded too.
    let second = store
        .commit(&[step("W9", "W10")], Accept)
        .await
        .unwrap()
        .remove(0);
    assert!(second.flagged.is_empty(), "already flagged");
    assert_eq!(store.incidents(Some("S-chain")).await.unwrap().len(), 2);
}

async fn error_notification_is_recorded_and_flags_resubscribe(db: &Db) {
    let store = db.open().await;
    let ok = request(notification(
        "S-err",
        None,
        vec![event(EventKind::Created, Some("W1"))],
    ));
    store.commit(&[ok], Accept).await.unwrap();
    let error = request(error_notification(Some("S-err")));
    let outcome = store
        .commit(std::slice::from_ref(&error), Accept)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(outcome.status, SubscriptionStatus::Ok);
    assert_eq!(outcome.result, IngestResult::Stored);
    assert_eq!(
        outcome.flagged,
        vec![("S-err".to_string(), SubscriptionState::ResubscribeNeeded)]
    );
    let record = store.subscription("S-err").await.unwrap().unwrap();
    assert_eq!(record.state, SubscriptionState::ResubscribeNeeded);
    assert!(record
        .state_reason
        .unwrap()
        .contains("ErrorReadEventsFailed"));
    assert_eq!(record.last_watermark.as_deref(), Some("W1"));
    let incidents = store.incidents(Some("S-err")).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].kind, IncidentKind::Error);
    assert_eq!(
        incidents[0].response_code.as_deref(),
        Some("ErrorReadEventsFailed")
    );
    assert_eq!(incidents[0].response_class.as_deref(), Some("Error"));
    assert_eq!(incidents[0].request_id, error.request_id);

    let again = store.commit(&[error], Accept).await.unwrap().remove(0);
    assert_eq!(again.result, IngestResult::Duplicate);
    assert_eq!(store.incidents(None).await.unwrap().len(), 1);

    // An error naming no subscription is still recorded.
    let anonymous = store
        .commit(&[request(error_notification(None))], Accept)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(anonymous.result, IngestResult::Stored);
    let all = store.incidents(None).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].subscription_id, None);
}

async fn unknown_subscriptions_policy(db: &Db) {
    let store = db.open().await;
    let unknown = request(notification(
        "S-unknown",
        None,
        vec![event(EventKind::Created, Some("W1"))],
    ));
    let outcome = store
        .commit(std::slice::from_ref(&unknown), Unsubscribe)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(outcome.status, SubscriptionStatus::Unsubscribe);
    assert_eq!(outcome.result, IngestResult::Unsubscribe);
    assert!(store.events(None).await.unwrap().is_empty());
    assert!(store.subscription("S-unknown").await.unwrap().is_none());
    let error = store
        .commit(
            &[request(error_notification(Some("S-unknown")))],
            Unsubscribe,
        )
        .await
        .unwrap()
        .remove(0);
    assert_eq!(error.status, SubscriptionStatus::Unsubscribe);
    assert!(store.incidents(None).await.unwrap().is_empty());

    // Registered by the subscription manager: accepted.
    store
        .set_subscription_state("S-unknown", "default", SubscriptionState::Active, None)
        .await
        .unwrap();
    let outcome = store
        .commit(std::slice::from_ref(&unknown), Unsubscribe)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(outcome.status, SubscriptionStatus::Ok);
    assert_eq!(outcome.result, IngestResult::Stored);
    assert!(outcome.registered.is_empty());

    // Unsubscribed by the manager: refused in either mode, nothing stored.
    store
        .set_subscription_state(
            "S-unknown",
            "default",
            SubscriptionState::Unsubscribed,
            Some("mailbox left sync"),
        )
        .await
        .unwrap();
    let next = request(notification(
        "S-unknown",
        Some("W1"),
        vec![event(EventKind::Modified, Some("W2"))],
    ));
    for mode in [Accept, Unsubscribe] {
        let outcome = store
            .commit(std::slice::from_ref(&next), mode)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(outcome.status, SubscriptionStatus::Unsubscribe);
    }
    assert_eq!(store.events(None).await.unwrap().len(), 1);
    let record = store.subscription("S-unknown").await.unwrap().unwrap();
    assert_eq!(record.state, SubscriptionState::Unsubscribed);
    assert_eq!(record.state_reason.as_deref(), Some("mailbox left sync"));

    // Accept mode registers on first sight.
    let fresh = request(notification(
        "S-fresh",
        None,
        vec![event(EventKind::Created, Some("W1"))],
    ));
    let outcome = store.commit(&[fresh], Accept).await.unwrap().remove(0);
    assert_eq!(outcome.status, SubscriptionStatus::Ok);
    assert_eq!(outcome.registered, vec!["S-fresh".to_string()]);
    assert!(store.subscription("S-fresh").await.unwrap().is_some());
}

async fn failed_commit_writes_nothing_and_spares_the_others(db: &Db) {
    let store = db.open().await;
    // A real refusal by the database, half-way through a transaction: a trigger that rejects
    // DeletedEvents, set up on a connection of its own.
    db.raw(
        "CREATE TRIGGER refuse_deleted BEFORE INSERT ON notification_events
         WHEN NEW.kind = 'deleted' BEGIN SELECT RAISE(ABORT, 'deleted events refused'); END;",
        "CREATE FUNCTION refuse_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.kind = 'deleted' THEN RAISE EXCEPTION 'deleted events refused'; END IF;
         RETURN NEW; END $$;
         CREATE TRIGGER refuse_deleted BEFORE INSERT ON notification_events
         FOR EACH ROW EXECUTE FUNCTION refuse_deleted();",
    )
    .await;
    let good = |s: &str| {
        request(notification(
            s,
            None,
            vec![event(EventKind::Created, Some("W1"))],
        ))
    };
    let poison = request(notification(
        "S-poison",
        None,
        vec![
            event(EventKind::Created, Some("P1")),
            event(EventKind::Deleted, Some("P2")),
        ],
    ));
    let batch = [good("S-a"), poison.clone(), good("S-b")];
    let error = store
        .commit(&batch, Accept)
        .await
        .expect_err("trigger refuses");
    assert!(matches!(error, StoreError::Rejected(_)), "{error}");
    assert!(
        store.events(None).await.unwrap().is_empty(),
        "nothing half-written"
    );
    assert!(store.subscription("S-a").await.unwrap().is_none());

    // Through the group committer: the three share a batch (this test's runtime runs the
    // committer only once all three are queued), the batch fails, and its innocent members are
    // committed alone.
    let commits = Arc::new(Commits::default());
    let (committer, task) = GroupCommitter::spawn(
        store.clone(),
        GroupCommitOptions {
            wait: Duration::from_millis(200),
            max: 16,
            unknown: Accept,
        },
        Some(commits.clone()),
    );
    let (a, p, b) = tokio::join!(
        committer.submit(good("S-a")),
        committer.submit(poison),
        committer.submit(good("S-b"))
    );
    assert_eq!(a.unwrap().result, IngestResult::Stored);
    assert!(matches!(p, Err(StoreError::Rejected(_))), "{p:?}");
    assert_eq!(b.unwrap().result, IngestResult::Stored);
    assert_eq!(
        *commits.0.lock().unwrap(),
        vec![(3, false), (1, true), (1, false), (1, true)],
        "one failed group commit, then each member alone"
    );
    let stored: HashSet<String> = store
        .events(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.subscription_id)
        .collect();
    assert_eq!(
        stored,
        HashSet::from(["S-a".to_string(), "S-b".to_string()])
    );
    assert!(store.events(Some("S-poison")).await.unwrap().is_empty());
    drop(committer);
    task.await.unwrap();
}

async fn retention_purges_only_old_processed_events(db: &Db) {
    let store = db.open().await;
    let events: Vec<_> = (0..6)
        .map(|i| event(EventKind::Modified, Some(&format!("W{i}"))))
        .collect();
    store
        .commit(&[request(notification("S-ret", None, events))], Accept)
        .await
        .unwrap();
    let ids: Vec<i64> = store
        .events(None)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let now = OffsetDateTime::now_utc();
    let old = now - time::Duration::days(31);
    let changed = store
        .set_event_state(&ids[0..2], EventState::Processed, old)
        .await
        .unwrap();
    assert_eq!(changed, 2);
    store
        .set_event_state(&ids[2..3], EventState::Processed, now)
        .await
        .unwrap();
    store
        .set_event_state(&ids[3..4], EventState::Failed, old)
        .await
        .unwrap();
    store
        .set_event_state(&ids[4..5], EventState::Processing, old)
        .await
        .unwrap();
    assert_eq!(store.backlog().await.unwrap(), 1);

    let cutoff = now - time::Duration::days(30);
    assert_eq!(store.purge_processed_before(cutoff).await.unwrap(), 2);
    assert_eq!(store.purge_processed_before(cutoff).await.unwrap(), 0);
    let left: Vec<(i64, EventState)> = store
        .events(None)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.id, e.state))
        .collect();
    assert_eq!(
        left,
        vec![
            (ids[2], EventState::Processed),
            (ids[3], EventState::Failed),
            (ids[4], EventState::Processing),
            (ids[5], EventState::Pending),
        ]
    );
    let processed = store.events(None).await.unwrap();
    assert_eq!(
        processed[0].processed_at.map(|t| t.unix_timestamp()),
        Some(now.unix_timestamp())
    );
    assert_eq!(processed[2].processed_at, None);
}

/// 32 tasks, each one subscription with a chain of notifications, through one group committer.
async fn concurrent_group_commits_store_everything_once(db: &Db) {
    const SENDERS: usize = 32;
    const EACH: usize = 20;
    let store = db.open().await;
    let commits = Arc::new(Commits::default());
    let (committer, task) = GroupCommitter::spawn(
        store.clone(),
        GroupCommitOptions {
            wait: Duration::from_millis(2),
            max: 256,
            unknown: Accept,
        },
        Some(commits.clone()),
    );
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let committer = committer.clone();
        senders.push(tokio::spawn(async move {
            let subscription = format!("S-conc-{s}");
            for n in 0..EACH {
                let req = request(notification(
                    &subscription,
                    Some(&watermark(&subscription, 2 * n)),
                    vec![
                        event(
                            EventKind::Modified,
                            Some(&watermark(&subscription, 2 * n + 1)),
                        ),
                        event(
                            EventKind::Modified,
                            Some(&watermark(&subscription, 2 * n + 2)),
                        ),
                    ],
                ));
                let outcome = committer.submit(req).await.expect("commit");
                assert_eq!(outcome.result, IngestResult::Stored);
                assert!(outcome.flagged.is_empty(), "{:?}", outcome.flagged);
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    drop(committer);
    task.await.unwrap();
    let stored = store.events(None).await.unwrap();
    assert_eq!(stored.len(), SENDERS * EACH * 2);
    let keys: HashSet<(String, String)> = stored
        .iter()
        .map(|e| (e.subscription_id.clone(), e.dedupe_key.clone()))
        .collect();
    assert_eq!(keys.len(), stored.len());
    for s in 0..SENDERS {
        let subscription = format!("S-conc-{s}");
        let record = store.subscription(&subscription).await.unwrap().unwrap();
        assert_eq!(record.state, SubscriptionState::Active);
        assert_eq!(
            record.last_watermark,
            Some(watermark(&subscription, 2 * EACH))
        );
    }
    let commits = commits.0.lock().unwrap();
    assert!(commits.iter().all(|&(_, ok)| ok));
    let sizes: Vec<usize> = commits.iter().map(|&(size, _)| size).collect();
    assert_eq!(sizes.iter().sum::<usize>(), SENDERS * EACH);
    assert!(
        sizes.iter().any(|&size| size > 1),
        "concurrent notifications shared no commit: {sizes:?}"
    );
}

/// Two stores (as two worker replicas would open) receive the same notifications at once.
async fn two_stores_on_one_database_store_each_event_once(db: &Db) {
    let first = db.open().await;
    let second = db.open().await;
    let options = GroupCommitOptions {
        wait: Duration::from_millis(1),
        max: 64,
        unknown: Accept,
    };
    let (a, task_a) = GroupCommitter::spawn(first.clone(), options, None);
    let (b, task_b) = GroupCommitter::spawn(second, options, None);
    let mut tasks = Vec::new();
    for s in 0..8 {
        for replica in [a.clone(), b.clone()] {
            tasks.push(tokio::spawn(async move {
                let subscription = format!("S-rep-{s}");
                let mut results = Vec::new();
                for n in 0..10 {
                    let req = request(notification(
                        &subscription,
                        Some(&watermark(&subscription, n)),
                        vec![event(
                            EventKind::Created,
                            Some(&watermark(&subscription, n + 1)),
                        )],
                    ));
                    results.push(replica.submit(req).await.expect("commit").result);
                }
                results
            }));
        }
    }
    let mut stored = 0;
    for task in tasks {
        for result in task.await.unwrap() {
            assert_ne!(result, IngestResult::Unsubscribe);
            stored += usize::from(result == IngestResult::Stored);
        }
    }
    assert_eq!(
        stored,
        8 * 10,
        "each notification stored by exactly one replica"
    );
    assert_eq!(first.events(None).await.unwrap().len(), 8 * 10);
    drop((a, b));
    task_a.await.unwrap();
    task_b.await.unwrap();
}

async fn reopen_keeps_data(db: &Db) {
    let store = db.open().await;
    store
        .commit(
            &[request(notification(
                "S-keep",
                None,
                vec![event(EventKind::Created, Some("W1"))],
            ))],
            Accept,
        )
        .await
        .unwrap();
    drop(store);
    let reopened = db.open().await;
    assert_eq!(reopened.events(None).await.unwrap().len(), 1);
    assert!(reopened.subscription("S-keep").await.unwrap().is_some());
}

/// A database left at schema version 1 by an older pushgate, with an event and its
/// subscription in it (timestamps as that version stored them), is migrated on open and keeps
/// its rows: the event reads back with its instant, and the chain goes on from its watermark.
async fn a_database_of_an_older_pushgate_is_migrated_and_keeps_its_rows(db: &Db) {
    let rows = "INSERT INTO subscriptions (subscription_id, tenant, last_watermark,
                    last_notification_at, state, updated_at)
                VALUES ('S-old', 'default', 'W-old', '2026-11-20T07:15:02.123456Z', 'active',
                    '2026-11-20T07:15:02.123456Z');
                INSERT INTO notification_events (tenant, subscription_id, watermark, dedupe_key,
                    position, kind, received_at)
                VALUES ('default', 'S-old', 'W-old', 'W-old', 0, 'created',
                    '2026-11-20T07:15:02.123456Z');";
    db.raw(
        &format!(
            "CREATE TABLE pushgate_schema_migrations (
                 version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL);
             {}
             INSERT INTO pushgate_schema_migrations VALUES (1, 'events', '2026-11-20T07:00:00.000000Z');
             {rows}",
            include_str!("../migrations/sqlite/0001_events.sql")
        ),
        &format!(
            "CREATE TABLE pushgate_schema_migrations (
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             {}
             INSERT INTO pushgate_schema_migrations (version, name) VALUES (1, 'events');
             {rows}",
            include_str!("../migrations/postgres/0001_events.sql")
        ),
    )
    .await;
    let store = db.open().await;
    let old = store.events(Some("S-old")).await.unwrap();
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(old[0].watermark.as_deref(), Some("W-old"));
    assert_eq!(old[0].kind, EventKind::Created);
    assert_eq!(
        old[0].received_at,
        time::macros::datetime!(2026-11-20 07:15:02.123456 UTC)
    );
    let subscription = store.subscription("S-old").await.unwrap().unwrap();
    assert_eq!(
        subscription.last_notification_at,
        Some(time::macros::datetime!(2026-11-20 07:15:02.123456 UTC))
    );
    // The next notification continues the stored chain: no gap, nothing flagged.
    let next = store
        .commit(
            &[request(notification(
                "S-old",
                Some("W-old"),
                vec![event(EventKind::Modified, Some("W-new"))],
            ))],
            Accept,
        )
        .await
        .unwrap()
        .remove(0);
    assert_eq!(next.result, IngestResult::Stored);
    assert!(next.flagged.is_empty(), "{:?}", next.flagged);
    assert_eq!(store.events(Some("S-old")).await.unwrap().len(), 2);
    // The later migrations' tables are there and work.
    store
        .put_mailbox(&put("room@contoso.com", true), OffsetDateTime::now_utc())
        .await
        .unwrap();
}

/// A database whose schema is newer than this pushgate knows is not touched.
async fn a_database_of_a_newer_pushgate_is_refused(db: &Db) {
    drop(db.open().await);
    db.raw(
        "INSERT INTO pushgate_schema_migrations VALUES (99, 'future', '2030-01-01T00:00:00.000000Z')",
        "INSERT INTO pushgate_schema_migrations (version, name) VALUES (99, 'future')",
    )
    .await;
    match store::open(db.url()).await {
        Err(StoreError::Migration {
            version, detail, ..
        }) => {
            assert_eq!(version, 99);
            assert!(detail.contains("newer pushgate"), "{detail}");
        }
        Err(other) => panic!("expected a migration refusal, got {other}"),
        Ok(_) => panic!("a database from a newer pushgate was opened"),
    }
}

#[tokio::test]
async fn database_urls_that_cannot_keep_data_are_refused() {
    for url in [
        "sqlite://",
        "sqlite://:memory:",
        "mysql://x",
        "data/pushgate.db",
    ] {
        let error = store::open(url).await.err().expect("refused");
        assert!(matches!(error, StoreError::Config(_)), "{url}: {error}");
    }
}

fn put(address: &str, sync: bool) -> PutMailbox {
    PutMailbox {
        address: address.into(),
        tenant: None,
        sync,
    }
}

fn lease(owner: &str, now: OffsetDateTime) -> Lease {
    Lease {
        owner: owner.into(),
        until: now + time::Duration::minutes(2),
    }
}

fn subscribed(id: &str, watermark: &str) -> SubscribeOutcome {
    SubscribeOutcome::Subscribed {
        subscription_id: id.into(),
        watermark: watermark.into(),
        resync: false,
    }
}

/// Subscribes `address` (sync on) as the subscription manager would, with `id`.
async fn subscribe(store: &dyn store::Store, address: &str, id: &str, now: OffsetDateTime) {
    store.put_mailbox(&put(address, true), now).await.unwrap();
    let lease = lease("w1", now);
    store
        .begin_subscribe(address, &lease, MailboxState::Subscribing, None, now)
        .await
        .unwrap()
        .expect("leased");
    let outcome = store
        .finish_subscribe(address, &lease, &subscribed(id, &format!("{id}-W0")), now)
        .await
        .unwrap();
    assert_eq!(outcome, FinishOutcome::Recorded);
}

async fn mailbox_sync_on_and_off(db: &Db) {
    let store = db.open().await;
    let now = OffsetDateTime::now_utc();
    let created = store
        .put_mailbox(&put("room1@contoso.com", true), now)
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.view.mailbox.state, MailboxState::Subscribing);
    assert_eq!(created.view.mailbox.tenant, "default");
    let again = store
        .put_mailbox(&put("room1@contoso.com", true), now)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.view, created.view, "idempotent");

    subscribe(&*store, "room1@contoso.com", "S-room1", now).await;
    let view = store.mailbox("room1@contoso.com").await.unwrap().unwrap();
    assert_eq!(view.mailbox.state, MailboxState::Active);
    assert_eq!(view.mailbox.subscription_id.as_deref(), Some("S-room1"));
    let subscription = view.subscription.expect("joined");
    assert_eq!(subscription.last_watermark.as_deref(), Some("S-room1-W0"));
    assert_eq!(subscription.mailbox.as_deref(), Some("room1@contoso.com"));

    // Its notifications are stored while it is current...
    let ok = request(notification(
        "S-room1",
        Some("S-room1-W0"),
        vec![event(EventKind::Created, Some("S-room1-W1"))],
    ));
    let outcome = store.commit(&[ok], Unsubscribe).await.unwrap().remove(0);
    assert_eq!(outcome.result, IngestResult::Stored);
    let view = store.mailbox("room1@contoso.com").await.unwrap().unwrap();
    assert!(view.subscription.unwrap().last_notification_at.is_some());

    // ...and answered Unsubscribe once sync is off, with nothing stored.
    let off = store
        .put_mailbox(&put("room1@contoso.com", false), now)
        .await
        .unwrap();
    assert_eq!(off.view.mailbox.state, MailboxState::Off);
    assert_eq!(off.view.mailbox.subscription_id, None);
    let record = store.subscription("S-room1").await.unwrap().unwrap();
    assert_eq!(record.state, SubscriptionState::Unsubscribed);
    let late = request(notification(
        "S-room1",
        Some("S-room1-W1"),
        vec![event(EventKind::Modified, Some("S-room1-W2"))],
    ));
    let outcome = store.commit(&[late], Unsubscribe).await.unwrap().remove(0);
    assert_eq!(outcome.result, IngestResult::Unsubscribe);
    assert!(outcome.unknown.is_empty(), "known, just unwanted");
    assert_eq!(store.events(Some("S-room1")).await.unwrap().len(), 1);

    // An id nobody asked for is reported as unknown (the worker may hold it).
    let stranger = request(notification(
        "S-stranger",
        Some("X0"),
        vec![event(EventKind::Modified, Some("X1"))],
    ));
    let outcome = store
        .commit(&[stranger], Unsubscribe)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(outcome.result, IngestResult::Unsubscribe);
    assert_eq!(outcome.unknown, vec!["S-stranger".to_string()]);

    assert!(store
        .delete_mailbox("room1@contoso.com", now)
        .await
        .unwrap());
    assert!(!store
        .delete_mailbox("room1@contoso.com", now)
        .await
        .unwrap());
    assert!(store.mailbox("room1@contoso.com").await.unwrap().is_none());
}

async fn mailboxes_list_in_pages(db: &Db) {
    let store = db.open().await;
    let now = OffsetDateTime::now_utc();
    for i in (0..25).rev() {
        store
            .put_mailbox(&put(&format!("room{i:02}@contoso.com"), i % 2 == 0), now)
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.mailboxes(after.as_deref(), 10).await.unwrap();
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|v| v.mailbox.address.clone());
        seen.extend(page.into_iter().map(|v| v.mailbox.address));
    }
    let expected: Vec<String> = (0..25).map(|i| format!("room{i:02}@contoso.com")).collect();
    assert_eq!(seen, expected);
    let summary = store.mailbox_summary().await.unwrap();
    let count = |state| {
        summary
            .by_state
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count(MailboxState::Subscribing), 13);
    assert_eq!(count(MailboxState::Off), 12);
}

async fn subscribe_lifecycle_replaces_the_old_subscription(db: &Db) {
    let store = db.open().await;
    let now = OffsetDateTime::now_utc();
    subscribe(&*store, "room1@contoso.com", "S-1", now).await;

    // A renewal that fails transiently keeps the old subscription and waits.
    let lease = lease("w1", now);
    let view = store
        .begin_subscribe(
            "room1@contoso.com",
            &lease,
            MailboxState::Renewing,
            Some(RenewCause::Silence),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.mailbox.state, MailboxState::Renewing);
    assert!(store.subscribe_in_flight(now).await.unwrap());
    let retry_at = now + time::Duration::seconds(30);
    store
        .finish_subscribe(
            "room1@contoso.com",
            &lease,
            &SubscribeOutcome::Failed {
                error: "ErrorServerBusy".into(),
                next_attempt_at: retry_at,
                failed: false,
                cause: None,
            },
            now,
        )
        .await
        .unwrap();
    assert!(!store.subscribe_in_flight(now).await.unwrap());
    let view = store.mailbox("room1@contoso.com").await.unwrap().unwrap();
    assert_eq!(view.mailbox.state, MailboxState::Renewing);
    assert_eq!(view.mailbox.renew_cause, Some(RenewCause::Silence));
    assert_eq!(view.mailbox.attempts, 1);
    assert_eq!(view.mailbox.last_error.as_deref(), Some("ErrorServerBusy"));
    assert_eq!(view.mailbox.subscription_id.as_deref(), Some("S-1"));

    // The retry succeeds: S-2 is current, S-1 unwanted.
    store
        .begin_subscribe(
            "room1@contoso.com",
            &lease,
            MailboxState::Renewing,
            None,
            retry_at,
        )
        .await
        .unwrap()
        .unwrap();
    store
        .finish_subscribe(
            "room1@contoso.com",
            &lease,
            &SubscribeOutcome::Subscribed {
                subscription_id: "S-2".into(),
                watermark: "S-2-W0".into(),
                resync: true,
            },
            retry_at,
        )
        .await
        .unwrap();
    let view = store.mailbox("room1@contoso.com").await.unwrap().unwrap();
    assert_eq!(view.mailbox.state, MailboxState::Active);
    assert_eq!(view.mailbox.subscription_id.as_deref(), Some("S-2"));
    assert_eq!(view.mailbox.attempts, 0);
    assert_eq!(view.mailbox.last_error, None);
    assert!(view.mailbox.resync_requested_at.is_some());
    let old = store.subscription("S-1").await.unwrap().unwrap();
    assert_eq!(old.state, SubscriptionState::Unsubscribed);

    // A subscription finished after sync was switched off is stored as unwanted.
    store
        .begin_subscribe(
            "room1@contoso.com",
            &lease,
            MailboxState::Renewing,
            None,
            retry_at,
        )
        .await
        .unwrap()
        .unwrap();
    store
        .put_mailbox(&put("room1@contoso.com", false), retry_at)
        .await
        .unwrap();
    let outcome = store
        .finish_subscribe(
            "room1@contoso.com",
            &lease,
            &subscribed("S-3", "S-3-W0"),
            retry_at,
        )
        .await
        .unwrap();
    assert_eq!(outcome, FinishOutcome::Abandoned);
    let late = store.subscription("S-3").await.unwrap().unwrap();
    assert_eq!(late.state, SubscriptionState::Unsubscribed);
    let view = store.mailbox("room1@contoso.com").await.unwrap().unwrap();
    assert_eq!(view.mailbox.state, MailboxState::Off);
}

async fn due_mailboxes_follow_the_watchdog(db: &Db) {
    let store = db.open().await;
    let now = OffsetDateTime::now_utc();
    let minute = time::Duration::minutes(1);
    let addresses = |views: Vec<store::MailboxView>| -> HashSet<String> {
        views.into_iter().map(|v| v.mailbox.address).collect()
    };
    store
        .put_mailbox(&put("new@contoso.com", true), now)
        .await
        .unwrap();
    store
        .put_mailbox(&put("off@contoso.com", false), now)
        .await
        .unwrap();
    subscribe(&*store, "fresh@contoso.com", "S-fresh", now).await;
    subscribe(&*store, "errored@contoso.com", "S-err", now).await;
    let due = addresses(
        store
            .due_mailboxes(now, now - 10 * minute, 100)
            .await
            .unwrap(),
    );
    assert_eq!(due, HashSet::from(["new@contoso.com".to_string()]));

    // An Error notification flags its subscription: due at once.
    store
        .commit(&[request(error_notification(Some("S-err")))], Unsubscribe)
        .await
        .unwrap();
    let due = addresses(
        store
            .due_mailboxes(now, now - 10 * minute, 100)
            .await
            .unwrap(),
    );
    assert!(due.contains("errored@contoso.com"));
    assert!(!due.contains("fresh@contoso.com"));

    // Silence: nothing heard since before the cutoff.
    let later = now + 20 * minute;
    let due = addresses(
        store
            .due_mailboxes(later, later - 10 * minute, 100)
            .await
            .unwrap(),
    );
    assert!(due.contains("fresh@contoso.com"));
    assert!(!due.contains("off@contoso.com"));
    // A heartbeat resets the silence.
    let heartbeat = request(notification(
        "S-fresh",
        Some("S-fresh-W0"),
        vec![event(EventKind::Status, Some("S-fresh-W1"))],
    ));
    store.commit(&[heartbeat], Unsubscribe).await.unwrap();
    let cutoff = OffsetDateTime::now_utc() - minute;
    let due = addresses(store.due_mailboxes(now, cutoff, 100).await.unwrap());
    assert!(!due.contains("fresh@contoso.com"));

    // A failed mailbox waits for its retry time.
    let lease = lease("w1", now);
    store
        .begin_subscribe(
            "new@contoso.com",
            &lease,
            MailboxState::Subscribing,
            None,
            now,
        )
        .await
        .unwrap()
        .unwrap();
    store
        .finish_subscribe(
            "new@contoso.com",
            &lease,
            &SubscribeOutcome::Failed {
                error: "ErrorNonExistentMailbox".into(),
                next_attempt_at: now + 60 * minute,
                failed: true,
                cause: None,
            },
            now,
        )
        .await
        .unwrap();
    let due = addresses(
        store
            .due_mailboxes(now, now - 10 * minute, 100)
            .await
            .unwrap(),
    );
    assert!(!due.contains("new@contoso.com"));
    let due = addresses(
        store
            .due_mailboxes(now + 61 * minute, now - 10 * minute, 100)
            .await
            .unwrap(),
    );
    assert!(due.contains("new@contoso.com"));
    assert_eq!(
        store.due_mailboxes(now, now, 1).await.unwrap().len(),
        1,
        "limit"
    );
}

async fn a_lease_keeps_other_workers_out(db: &Db) {
    let store = db.open().await;
    let now = OffsetDateTime::now_utc();
    store
        .put_mailbox(&put("room1@contoso.com", true), now)
        .await
        .unwrap();
    let a = lease("worker-a", now);
    let b = lease("worker-b", now);
    assert!(store
        .begin_subscribe(
            "room1@contoso.com",
            &a,
            MailboxState::Subscribing,
            None,
            now
        )
        .await
        .unwrap()
        .is_some());
    assert!(store
        .begin_subscribe(
            "room1@contoso.com",
            &b,
            MailboxState::Subscribing,
            None,
            now
        )
        .await
        .unwrap()
        .is_none());
    assert!(
        store.due_mailboxes(now, now, 10).await.unwrap().is_empty(),
        "a leased mailbox is not due"
    );
    // Worker b cannot record a result under a's lease: its subscription is unwanted.
    let outcome = store
        .finish_subscribe("room1@contoso.com", &b, &subscribed("S-b", "W"), now)
        .await
        .unwrap();
    assert_eq!(outcome, FinishOutcome::Abandoned);
    // The lease expires (worker a died): b takes over.
    let later = now + time::Duration::minutes(3);
    let b_later = lease("worker-b", later);
    assert!(store
        .begin_subscribe(
            "room1@contoso.com",
            &b_later,
            MailboxState::Subscribing,
            None,
            later
        )
        .await
        .unwrap()
        .is_some());
}
