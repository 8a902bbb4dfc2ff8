//! The worker's Prometheus metrics (one registry per worker, so several workers can live in one
//! process, as tests and benches do) and the metrics listener with `/metrics` and `/healthz`.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::notification::EventKind;
use crate::store::{BatchObserver, EventStore, IngestOutcome, SubscriptionState};

/// How long `/healthz` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Every value of the `result` label of `pushgate_worker_notifications_total`.
pub const RESULTS: [&str; 8] = [
    "stored",
    "duplicate",
    "unsubscribe",
    "invalid",
    "unauthorized",
    "too_large",
    "unavailable",
    "not_found",
];

pub struct WorkerMetrics {
    registry: Registry,
    notifications: IntCounterVec,
    events_stored: IntCounterVec,
    duplicates: IntCounter,
    ingest_duration: Histogram,
    commit_batch_size: Histogram,
    commit_duration: Histogram,
    commit_failures: IntCounter,
    backlog: IntGauge,
    subscriptions_flagged: IntCounterVec,
    subscriptions_registered: IntCounter,
    purged: IntCounter,
}

impl WorkerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let notifications = IntCounterVec::new(
            Opts::new(
                "pushgate_worker_notifications_total",
                "Requests on the notification paths, by how they ended",
            ),
            &["result"],
        )?;
        let events_stored = IntCounterVec::new(
            Opts::new(
                "pushgate_worker_events_stored_total",
                "Events newly stored, by kind",
            ),
            &["kind"],
        )?;
        let duplicates = IntCounter::new(
            "pushgate_worker_duplicates_total",
            "Events received again after they were stored (retries), not stored twice",
        )?;
        let ingest_duration = Histogram::with_opts(
            HistogramOpts::new(
                "pushgate_worker_ingest_duration_seconds",
                "From request head to answer, for notifications that reached the store",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0,
                2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let commit_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "pushgate_worker_commit_batch_size",
                "Notifications sharing one database transaction",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )?;
        let commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "pushgate_worker_commit_duration_seconds",
                "Duration of one group commit (transaction including its sync to disk)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0, 5.0,
            ]),
        )?;
        let commit_failures = IntCounter::new(
            "pushgate_worker_commit_failures_total",
            "Group commits the database refused or could not complete",
        )?;
        let backlog = IntGauge::new(
            "pushgate_worker_backlog_events",
            "Stored events still pending for the sync step (refreshed periodically)",
        )?;
        let subscriptions_flagged = IntCounterVec::new(
            Opts::new(
                "pushgate_worker_subscriptions_flagged_total",
                "Subscriptions marked for resynchronisation or resubscription",
            ),
            &["state"],
        )?;
        let subscriptions_registered = IntCounter::new(
            "pushgate_worker_subscriptions_registered_total",
            "Unknown subscriptions registered on first sight (unknown_subscriptions = accept)",
        )?;
        let purged = IntCounter::new(
            "pushgate_worker_events_purged_total",
            "Processed events deleted by retention",
        )?;
        registry.register(Box::new(notifications.clone()))?;
        registry.register(Box::new(events_stored.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(ingest_duration.clone()))?;
        registry.register(Box::new(commit_batch_size.clone()))?;
        registry.register(Box::new(commit_duration.clone()))?;
        registry.register(Box::new(commit_failures.clone()))?;
        registry.register(Box::new(backlog.clone()))?;
        registry.register(Box::new(subscriptions_flagged.clone()))?;
        registry.register(Box::new(subscriptions_registered.clone()))?;
        registry.register(Box::new(purged.clone()))?;
        registry.register(Box::new(crate::metrics::build_info("worker")?))?;
        // Every label value exists from the start, so dashboards see zeros, not gaps.
        for result in RESULTS {
            notifications.with_label_values(&[result]);
        }
        for kind in EventKind::ALL {
            events_stored.with_label_values(&[kind.as_str()]);
        }
        for state in [
            SubscriptionState::ResyncNeeded,
            SubscriptionState::ResubscribeNeeded,
        ] {
            subscriptions_flagged.with_label_values(&[state.as_str()]);
        }
        Ok(Self {
            registry,
            notifications,
            events_stored,
            duplicates,
            ingest_duration,
            commit_batch_size,
            commit_duration,
            commit_failures,
            backlog,
            subscriptions_flagged,
            subscriptions_registered,
            purged,
        })
    }

    /// One request on a notification path ended with `result` (one of [`RESULTS`]).
    pub fn request_finished(&self, result: &'static str, elapsed: Option<Duration>) {
        self.notifications.with_label_values(&[result]).inc();
        if let Some(elapsed) = elapsed {
            self.ingest_duration.observe(elapsed.as_secs_f64());
        }
    }

    pub fn outcome(&self, outcome: &IngestOutcome) {
        for kind in &outcome.stored_events {
            self.events_stored.with_label_values(&[kind.as_str()]).inc();
        }
        self.duplicates.inc_by(outcome.duplicate_events as u64);
        for (_, state) in &outcome.flagged {
            self.subscriptions_flagged
                .with_label_values(&[state.as_str()])
                .inc();
        }
        self.subscriptions_registered
            .inc_by(outcome.registered.len() as u64);
    }

    pub fn set_backlog(&self, events: u64) {
        self.backlog.set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    pub fn purged(&self, events: u64) {
        self.purged.inc_by(events);
    }

    /// The registry `/metrics` serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl BatchObserver for WorkerMetrics {
    fn batch_committed(&self, size: usize, elapsed: Duration, ok: bool) {
        self.commit_batch_size.observe(size as f64);
        self.commit_duration.observe(elapsed.as_secs_f64());
        if !ok {
            self.commit_failures.inc();
        }
    }
}

/// `/healthz`: 200 when the database answers within two seconds, else 503 saying why.
pub fn database_health(store: Arc<dyn EventStore>) -> crate::metrics::HealthCheck {
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            match tokio::time::timeout(HEALTH_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "health check: database unreachable");
                    Err("database unreachable".to_string())
                }
                Err(_) => Err("database did not answer in time".to_string()),
            }
        })
    })
}
