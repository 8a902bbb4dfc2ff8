//! Processes B–F: reservations that follow their calendar items, and items that follow their
//! reservations. Owns the decisions (pure, `decide`), the event loop (`events`), the outbox of web
//! changes (`outbox`) and the calendar resync (`resync`); the echo and conflict rules are below.

pub mod admin;
pub mod decide;
mod events;
mod metrics;
mod outbox;
mod resync;
mod settle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::clock::Clock;
use crate::config::SyncConfig;
use crate::ews::{EwsClient, EwsError, ReservationProperty};
use crate::store::{Store, StoreError};

pub use metrics::SyncMetrics;

/// How the sync step runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The extended property that carries the reservation id on the item.
    pub property: ReservationProperty,
    /// Failed attempts after which an event is a dead letter and a write is given up.
    pub max_attempts: u32,
    pub resync_past_days: u32,
    pub resync_future_days: u32,
    /// The worker's clock: back-offs and polls take their spans from it.
    pub clock: Clock,
    /// Identifies this worker's claims and leases.
    pub owner: String,
    /// How long a claim on events or outbox rows lasts: longer than their processing can take
    /// (a few EWS calls with their timeouts), so another worker takes over only from one that
    /// died.
    pub lease: Duration,
    /// Subscriptions claimed (and worked on at once) per round.
    pub max_subscriptions: usize,
    /// Events per subscription per claim.
    pub max_events: usize,
    /// Outbox rows claimed (and written at once) per round.
    pub outbox_batch: usize,
}

impl SyncOptions {
    /// `[sync]` with the worker's clock; `ews_timeout` bounds one EWS call.
    pub fn from_config(
        config: &SyncConfig,
        clock: Clock,
        owner: String,
        ews_timeout: Duration,
    ) -> Self {
        Self {
            property: ReservationProperty::new(config.reservation_property.clone()),
            max_attempts: config.max_attempts.max(1),
            resync_past_days: config.resync_past_days,
            resync_future_days: config.resync_future_days,
            lease: lease_for(&clock, ews_timeout),
            clock,
            owner,
            max_subscriptions: 16,
            max_events: 50,
            outbox_batch: 16,
        }
    }
}

/// A claim outlives a group's processing: two GetItem rounds, each with the client's read
/// retries (three attempts and their waits), take a few EWS timeouts at most.
fn lease_for(clock: &Clock, ews_timeout: Duration) -> Duration {
    clock
        .span(Duration::from_secs(600))
        .max(ews_timeout.saturating_mul(12))
}

/// The sync step of one worker: three loops over one store and one EWS client.
///
/// The echo rule: every write stores the ChangeKey Exchange answered, so the notification our own
/// write causes finds that ChangeKey (or no difference) and writes nothing; nothing the event loop
/// decides ever queues a write. The conflict rule: a reservation with a web change not yet
/// written keeps its fields against Outlook's (the web change's write follows), but a deletion or
/// cancellation in Exchange always cancels it.
#[derive(Clone)]
pub struct SyncStep {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub ews: EwsClient,
    pub options: SyncOptions,
    pub metrics: Option<Arc<SyncMetrics>>,
    /// Woken when ingest stored events.
    pub events_wake: Arc<Notify>,
    /// Woken when the API (or a resync) queued a calendar write.
    pub outbox_wake: Arc<Notify>,
    /// Calendar folder ids by mailbox: asked once (GetFolder), kept in the store and here.
    folders: Mutex<HashMap<String, String>>,
}

impl SyncStep {
    pub fn new(
        store: Arc<dyn Store>,
        ews: EwsClient,
        options: SyncOptions,
        metrics: Option<Arc<SyncMetrics>>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                ews,
                options,
                metrics,
                events_wake: Arc::new(Notify::new()),
                outbox_wake: Arc::new(Notify::new()),
                folders: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Notify this after new events are stored.
    pub fn events_wake(&self) -> Arc<Notify> {
        self.shared.events_wake.clone()
    }

    /// Notify this after an outbox row is written.
    pub fn outbox_wake(&self) -> Arc<Notify> {
        self.shared.outbox_wake.clone()
    }

    /// Runs the event loop, the outbox loop and the resync loop until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        tracing::info!(
            property = %self.shared.options.property.name,
            max_attempts = self.shared.options.max_attempts,
            "sync step started"
        );
        tokio::join!(
            events::run(self.shared.clone(), shutdown.clone()),
            outbox::run(self.shared.clone(), shutdown.clone()),
            resync::run(self.shared.clone(), shutdown.clone()),
            refresh_gauges(self.shared.clone(), shutdown),
        );
        tracing::info!("sync step stopped");
    }
}

impl Shared {
    /// The mailbox calendar's own folder id: from memory, the store, or GetFolder (then kept).
    pub async fn calendar_folder_id(&self, mailbox: &str) -> Result<String, StepError> {
        if let Some(id) = self
            .folders
            .lock()
            .ok()
            .and_then(|folders| folders.get(mailbox).cloned())
        {
            return Ok(id);
        }
        let stored = self
            .store
            .mailbox_calendar(mailbox)
            .await?
            .and_then(|calendar| calendar.calendar_folder_id);
        let id = match stored {
            Some(id) => id,
            None => {
                let id = self.ews.calendar_folder_id(mailbox).await?;
                self.store.set_calendar_folder_id(mailbox, &id).await?;
                id
            }
        };
        if let Ok(mut folders) = self.folders.lock() {
            folders.insert(mailbox.to_string(), id.clone());
        }
        Ok(id)
    }

    /// How long to wait before attempt `attempts + 1` (`attempts` failures so far, at least 1).
    pub fn retry_delay(&self, attempts: u32, hint: Option<Duration>) -> Duration {
        retry_delay(&self.options.clock, attempts, hint, rand::random())
    }

    /// When the loops look again on their own, if nothing wakes them: often on a compressed
    /// clock, every few seconds in production.
    pub fn poll_interval(&self) -> Duration {
        self.options
            .clock
            .span(Duration::from_secs(5))
            .clamp(Duration::from_millis(10), Duration::from_secs(5))
    }
}

/// First wait after a failure, and the longest (nominal, before the clock's scale).
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(15 * 60);

/// Doubling from 5 s to 15 min (nominal) with up to a quarter more (`jitter` in [0, 1)), and
/// never shorter than the wait Exchange asked for (`hint`, real time).
pub fn retry_delay(clock: &Clock, attempts: u32, hint: Option<Duration>, jitter: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(16);
    let nominal = FIRST_RETRY.saturating_mul(1u32 << exponent).min(MAX_RETRY);
    let wait = clock.span(nominal.mul_f64(1.0 + 0.25 * jitter.clamp(0.0, 1.0)));
    match hint {
        Some(hint) => wait.max(hint),
        None => wait,
    }
}

/// Why an event, a write or a resync did not get through this time.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("EWS: {0}")]
    Ews(#[from] EwsError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl StepError {
    /// The wait Exchange asked for, if it did.
    pub fn back_off(&self) -> Option<Duration> {
        match self {
            StepError::Ews(e) => e.back_off(),
            _ => None,
        }
    }

    /// Exchange or the database is unavailable for everyone (throttling, timeouts, 5xx, EWS
    /// switched off, credentials refused, the database down): nothing wrong with this event or
    /// write. Such failures are retried with back-off but never make a dead letter or a given-up
    /// write, so an outage of any length loses nothing and needs no replay.
    pub fn is_outage(&self) -> bool {
        match self {
            StepError::Ews(e) => {
                e.is_transient()
                    || matches!(
                        e,
                        EwsError::EwsDisabled
                            | EwsError::Unauthorized { .. }
                            | EwsError::Token { .. }
                    )
            }
            StepError::Store(e) => matches!(e, StoreError::Unavailable(_) | StoreError::Closed),
            StepError::Other(_) => false,
        }
    }
}

/// Refreshes the dead-letter and outbox gauges.
async fn refresh_gauges(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(metrics) = shared.metrics.clone() else {
        return;
    };
    let interval = shared.poll_interval().max(Duration::from_millis(100));
    while !*shutdown.borrow() {
        match shared.store.sync_backlog().await {
            Ok(backlog) => metrics.set_backlog(&backlog),
            Err(error) => tracing::debug!(%error, "sync gauges not refreshed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_within_bounds_and_honour_exchange() {
        let clock = Clock::real();
        assert_eq!(retry_delay(&clock, 1, None, 0.0), Duration::from_secs(5));
        assert_eq!(retry_delay(&clock, 2, None, 0.0), Duration::from_secs(10));
        assert_eq!(retry_delay(&clock, 30, None, 0.0), MAX_RETRY);
        assert_eq!(
            retry_delay(&clock, 1, None, 1.0),
            Duration::from_millis(6250)
        );
        assert_eq!(
            retry_delay(&clock, 1, Some(Duration::from_secs(60)), 0.0),
            Duration::from_secs(60)
        );
        let fast = Clock::scaled(0.01);
        assert_eq!(retry_delay(&fast, 1, None, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn outages_are_told_from_failures_of_one_item() {
        use crate::ews::ResponseCode;
        let outage = [
            StepError::Ews(EwsError::EwsDisabled),
            StepError::Ews(EwsError::Http {
                status: 503,
                retry_after: None,
            }),
            StepError::Ews(EwsError::Timeout {
                after: Duration::from_secs(30),
                request_sent: true,
            }),
            StepError::Ews(EwsError::ResponseCode {
                code: ResponseCode::ServerBusy,
                message: String::new(),
                back_off: None,
            }),
            StepError::Store(StoreError::Unavailable("down".into())),
        ];
        assert!(outage.iter().all(StepError::is_outage));
        let poison = [
            StepError::Ews(EwsError::ResponseCode {
                code: ResponseCode::Other("ErrorAccessDenied".into()),
                message: String::new(),
                back_off: None,
            }),
            StepError::Ews(EwsError::Malformed {
                status: 200,
                detail: "x".into(),
            }),
            StepError::Store(StoreError::Rejected("check".into())),
            StepError::Other("kept changing".into()),
        ];
        assert!(!poison.iter().any(StepError::is_outage));
    }

    #[test]
    fn leases_outlive_a_few_ews_calls() {
        assert_eq!(
            lease_for(&Clock::real(), Duration::from_secs(30)),
            Duration::from_secs(600)
        );
        assert_eq!(
            lease_for(&Clock::scaled(0.01), Duration::from_secs(5)),
            Duration::from_secs(60)
        );
    }
}
