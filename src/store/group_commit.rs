//! Group commit: concurrent notifications share one transaction, so durable throughput is not one
//! fsync per request. One committer task per store takes the first waiting notification, gathers
//! more for at most `wait` (or until `max`), commits them together and then answers each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::UnknownSubscriptions;
use super::{EventStore, IngestOutcome, IngestRequest, StoreError};

/// Tuning of the committer (from `[worker]`).
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitOptions {
    /// Longest the first notification of a batch waits for company.
    pub wait: Duration,
    /// Most notifications in one transaction.
    pub max: usize,
    pub unknown: UnknownSubscriptions,
}

/// Told about every commit the committer runs (metrics live with the caller).
pub trait BatchObserver: Send + Sync {
    fn batch_committed(&self, size: usize, elapsed: Duration, ok: bool);
}

/// Turns of the runtime without a new arrival after which a batch stops waiting for company.
const QUIET_YIELDS: u32 = 16;

struct Job {
    /// When the request was queued: a batch never waits past its first member's `queued + wait`.
    queued: tokio::time::Instant,
    request: IngestRequest,
    reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

/// The way in to the committer. Cloneable; when every clone is dropped, the committer commits
/// what it holds and ends.
#[derive(Clone)]
pub struct GroupCommitter {
    sender: mpsc::Sender<Job>,
}

impl GroupCommitter {
    /// Starts the committer task for `store`; the returned handle ends after the last
    /// `GroupCommitter` clone is dropped and the queue is drained.
    pub fn spawn(
        store: Arc<dyn EventStore>,
        options: GroupCommitOptions,
        observer: Option<Arc<dyn BatchObserver>>,
    ) -> (GroupCommitter, JoinHandle<()>) {
        let max = options.max.max(1);
        // Room for a few batches: beyond that, senders wait (backpressure), they are not refused.
        let (sender, receiver) = mpsc::channel(max.saturating_mul(4).max(64));
        let task = tokio::spawn(run(store, options, max, receiver, observer));
        (GroupCommitter { sender }, task)
    }

    /// Queues `request` and waits until its batch is committed (or failed).
    pub async fn submit(&self, request: IngestRequest) -> Result<IngestOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job {
                queued: tokio::time::Instant::now(),
                request,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(
    store: Arc<dyn EventStore>,
    options: GroupCommitOptions,
    max: usize,
    mut receiver: mpsc::Receiver<Job>,
    observer: Option<Arc<dyn BatchObserver>>,
) {
    while let Some(first) = receiver.recv().await {
        // The first member waits at most `wait` in all, counted from when it was queued: under
        // load, notifications that queued up during the previous commit go at once, with
        // whatever else is already waiting; an idle worker waits briefly for company.
        let deadline = first.queued + options.wait;
        let mut jobs = vec![first];
        let mut quiet_yields = 0;
        while jobs.len() < max {
            match receiver.try_recv() {
                Ok(job) => {
                    jobs.push(job);
                    quiet_yields = 0;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Company comes from requests the runtime is working on right now: give
                    // them a few turns. Once several turns bring nobody, stop waiting; the
                    // deadline bounds the wait in any case.
                    if quiet_yields >= QUIET_YIELDS || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    quiet_yields += 1;
                    tokio::task::yield_now().await;
                }
            }
        }
        commit_jobs(&store, options.unknown, jobs, observer.as_deref()).await;
    }
}

async fn commit_jobs(
    store: &Arc<dyn EventStore>,
    unknown: UnknownSubscriptions,
    jobs: Vec<Job>,
    observer: Option<&dyn BatchObserver>,
) {
    let (requests, replies): (Vec<IngestRequest>, Vec<_>) =
        jobs.into_iter().map(|job| (job.request, job.reply)).unzip();
    let requests = Arc::new(requests);
    let started = Instant::now();
    let result = commit_isolated(store, requests.clone(), unknown).await;
    if let Some(observer) = observer {
        observer.batch_committed(requests.len(), started.elapsed(), result.is_ok());
    }
    match result {
        Ok(outcomes) if outcomes.len() == requests.len() => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Ok(outcomes) => {
            // A store that answers for a different number of notifications is broken; nothing
            // may be acknowledged on its word.
            tracing::error!(
                batch = requests.len(),
                outcomes = outcomes.len(),
                "store returned the wrong number of outcomes"
            );
            for reply in replies {
                let _ = reply.send(Err(StoreError::Unavailable(
                    "store returned the wrong number of outcomes".to_string(),
                )));
            }
        }
        Err(StoreError::Rejected(reason)) if requests.len() > 1 => {
            // One member's data failed the whole transaction; nothing was written. Commit each
            // member alone so the others are not held hostage by it.
            tracing::warn!(
                batch = requests.len(),
                %reason,
                "group commit refused by the database; committing its members one by one"
            );
            for (request, reply) in requests.iter().zip(replies) {
                let single = Arc::new(vec![request.clone()]);
                let started = Instant::now();
                let result = commit_isolated(store, single, unknown).await;
                if let Some(observer) = observer {
                    observer.batch_committed(1, started.elapsed(), result.is_ok());
                }
                let answer = result.and_then(|mut outcomes| {
                    outcomes.pop().ok_or_else(|| {
                        StoreError::Unavailable("store returned no outcome".to_string())
                    })
                });
                let _ = reply.send(answer);
            }
        }
        Err(error) => {
            let text = error.to_string();
            tracing::warn!(batch = requests.len(), error = %text, "group commit failed");
            let mut error = Some(error);
            for reply in replies {
                // Every member gets the failure; the first the original error, the rest a copy.
                let member_error = error.take().unwrap_or_else(|| copy_error(&text));
                let _ = reply.send(Err(member_error));
            }
        }
    }
}

/// Runs one commit in a task of its own, so that a panic in a store fails that batch (answered
/// 503) instead of ending the committer and with it every later commit.
async fn commit_isolated(
    store: &Arc<dyn EventStore>,
    requests: Arc<Vec<IngestRequest>>,
    unknown: UnknownSubscriptions,
) -> Result<Vec<IngestOutcome>, StoreError> {
    let store = store.clone();
    tokio::spawn(async move { store.commit(&requests, unknown).await })
        .await
        .unwrap_or_else(|join_error| {
            tracing::error!(error = %join_error, "a group commit panicked");
            Err(StoreError::Unavailable(format!(
                "group commit failed: {join_error}"
            )))
        })
}

fn copy_error(text: &str) -> StoreError {
    StoreError::Unavailable(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::{Notification, SubscriptionStatus};
    use crate::store::{
        EventState, SqliteStore, StoredEvent, SubscriptionIncident, SubscriptionRecord,
        SubscriptionState,
    };
    use async_trait::async_trait;
    use time::OffsetDateTime;

    /// A real SQLite store whose commit panics for tenant `panic`: a stand-in for a bug.
    struct PanickyStore(SqliteStore);

    #[async_trait]
    impl EventStore for PanickyStore {
        fn backend(&self) -> &'static str {
            "panicky"
        }
        async fn commit(
            &self,
            batch: &[IngestRequest],
            unknown: UnknownSubscriptions,
        ) -> Result<Vec<IngestOutcome>, StoreError> {
            assert!(batch.iter().all(|r| r.tenant != "panic"), "injected bug");
            self.0.commit(batch, unknown).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.0.ping().await
        }
        async fn backlog(&self) -> Result<u64, StoreError> {
            self.0.backlog().await
        }
        async fn purge_processed_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
            self.0.purge_processed_before(cutoff).await
        }
        async fn events(&self, id: Option<&str>) -> Result<Vec<StoredEvent>, StoreError> {
            self.0.events(id).await
        }
        async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRecord>, StoreError> {
            self.0.subscription(id).await
        }
        async fn incidents(
            &self,
            id: Option<&str>,
        ) -> Result<Vec<SubscriptionIncident>, StoreError> {
            self.0.incidents(id).await
        }
        async fn set_subscription_state(
            &self,
            id: &str,
            tenant: &str,
            state: SubscriptionState,
            reason: Option<&str>,
        ) -> Result<(), StoreError> {
            self.0
                .set_subscription_state(id, tenant, state, reason)
                .await
        }
        async fn set_event_state(
            &self,
            ids: &[i64],
            state: EventState,
            at: OffsetDateTime,
        ) -> Result<u64, StoreError> {
            self.0.set_event_state(ids, state, at).await
        }
    }

    fn request(tenant: &str) -> IngestRequest {
        IngestRequest {
            tenant: tenant.to_string(),
            request_id: None,
            received_at: OffsetDateTime::now_utc(),
            notification: Notification::default(),
        }
    }

    #[tokio::test]
    async fn a_panicking_commit_fails_its_batch_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("p.db")).await.unwrap();
        let store: Arc<dyn EventStore> = Arc::new(PanickyStore(store));
        let options = GroupCommitOptions {
            wait: Duration::ZERO,
            max: 8,
            unknown: UnknownSubscriptions::Accept,
        };
        let (committer, task) = GroupCommitter::spawn(store, options, None);
        let failed = committer.submit(request("panic")).await;
        assert!(
            matches!(failed, Err(StoreError::Unavailable(_))),
            "{failed:?}"
        );
        let next = committer
            .submit(request("default"))
            .await
            .expect("committer lives on");
        assert_eq!(next.status, SubscriptionStatus::Ok);
        drop(committer);
        task.await.unwrap();
    }
}
