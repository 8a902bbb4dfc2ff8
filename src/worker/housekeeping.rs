//! Background jobs of the worker: refresh the backlog gauge (a count, so not per request) and
//! purge processed events older than `retention_days`.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::{interval, MissedTickBehavior};

use super::metrics::WorkerMetrics;
use crate::store::EventStore;

pub(crate) struct Schedule {
    pub backlog_interval: Duration,
    pub retention_interval: Duration,
    /// 0 keeps processed events forever.
    pub retention_days: u32,
}

/// Runs both jobs (each first at start) until `shutdown` turns true.
pub(crate) async fn run(
    store: Arc<dyn EventStore>,
    metrics: Arc<WorkerMetrics>,
    schedule: Schedule,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backlog_tick = interval(schedule.backlog_interval.max(Duration::from_millis(10)));
    backlog_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut retention_tick = interval(schedule.retention_interval.max(Duration::from_millis(10)));
    retention_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = backlog_tick.tick() => match store.backlog().await {
                Ok(events) => metrics.set_backlog(events),
                Err(error) => tracing::warn!(%error, "backlog not refreshed"),
            },
            _ = retention_tick.tick(), if schedule.retention_days > 0 => {
                let cutoff = OffsetDateTime::now_utc()
                    - time::Duration::days(i64::from(schedule.retention_days));
                match store.purge_processed_before(cutoff).await {
                    Ok(0) => {}
                    Ok(purged) => {
                        metrics.purged(purged);
                        tracing::info!(purged, retention_days = schedule.retention_days, "processed events purged");
                    }
                    Err(error) => tracing::warn!(%error, "retention purge failed; next try at the next interval"),
                }
            }
        }
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across the other branches' awaits.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
