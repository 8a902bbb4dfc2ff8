//! The loop that keeps every synced mailbox subscribed: it asks the store which mailboxes need a
//! Subscribe (new, retry due, flagged by ingest, silent), decides with `plan`, and calls Exchange
//! within the rate (`subscribe_rate`), the bound on calls in flight, and any ErrorServerBusy pause.
//! A lease in the store keeps one call per mailbox across worker replicas.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use time::OffsetDateTime;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use super::callback::CallbackUrl;
use super::metrics::SubscriptionMetrics;
use super::plan::{self, SubscribeFailure, SubscribePlan, Timing};
use crate::store::{
    FinishOutcome, Lease, MailboxView, RenewCause, Store, StoreError, SubscribeOutcome,
};

/// One push Subscribe on a mailbox's calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub watermark: Option<String>,
    pub status_frequency_minutes: u16,
    pub url: String,
}

/// Exchange's answer to a successful Subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub subscription_id: String,
    pub watermark: String,
}

/// Whoever makes the Subscribe call: the EWS client in production.
#[async_trait]
pub trait Subscriber: Send + Sync {
    async fn subscribe(
        &self,
        mailbox: &str,
        request: &SubscribeRequest,
    ) -> Result<Subscribed, SubscribeFailure>;
}

/// The manager's settings.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub timing: Timing,
    pub callback: CallbackUrl,
    /// Most Subscribe calls per second.
    pub subscribe_rate: u32,
    /// Most Subscribe calls in flight.
    pub max_in_flight: usize,
    /// How long a worker holds a mailbox while its call runs (longer than the call can take).
    pub lease: Duration,
    /// Identifies this worker's leases.
    pub owner: String,
}

/// Mailboxes read per scan.
const SCAN_BATCH: usize = 500;
/// Bounds of the pause between scans when nothing wakes the manager.
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Wait after the store failed, before scanning again.
const STORE_RETRY: Duration = Duration::from_secs(1);

struct Shared {
    store: Arc<dyn Store>,
    subscriber: Arc<dyn Subscriber>,
    options: ManagerOptions,
    limiter: DefaultDirectRateLimiter,
    in_flight: Arc<Semaphore>,
    /// Set by ErrorServerBusy: no call starts before this instant.
    paused_until: Mutex<Option<tokio::time::Instant>>,
    /// Mailboxes whose call this worker has started and not finished: a scan while a call runs
    /// must not start a second one (the store's lease says the same, a moment later).
    running: Mutex<HashSet<String>>,
    wake: Notify,
    metrics: Option<Arc<SubscriptionMetrics>>,
}

/// A handle to wake the manager (after the API switched a mailbox on) and to run it.
#[derive(Clone)]
pub struct SubscriptionManager {
    shared: Arc<Shared>,
}

impl SubscriptionManager {
    pub fn new(
        store: Arc<dyn Store>,
        subscriber: Arc<dyn Subscriber>,
        options: ManagerOptions,
        metrics: Option<Arc<SubscriptionMetrics>>,
    ) -> Self {
        let rate = NonZeroU32::new(options.subscribe_rate).unwrap_or(NonZeroU32::MIN);
        // A burst of one: calls are spaced evenly, so no second ever sees more than the rate.
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::MIN);
        let in_flight = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
        Self {
            shared: Arc::new(Shared {
                store,
                subscriber,
                limiter: RateLimiter::direct(quota),
                in_flight,
                paused_until: Mutex::new(None),
                running: Mutex::new(HashSet::new()),
                wake: Notify::new(),
                metrics,
                options,
            }),
        }
    }

    /// Look at the mailboxes now rather than at the next scan.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Runs until `shutdown` turns true; calls in flight are finished (their answers recorded)
    /// before it returns.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let shared = self.shared;
        let interval = scan_interval(&shared.options.timing);
        let mut calls = JoinSet::new();
        tracing::info!(
            status_frequency_minutes = shared.options.timing.status_frequency.as_secs() / 60,
            subscribe_rate = shared.options.subscribe_rate,
            callback_rule = shared.options.callback.rule.describe(),
            "subscription manager started"
        );
        while !*shutdown.borrow() {
            while calls.try_join_next().is_some() {}
            let pause = match scan(&shared, &mut calls, &mut shutdown).await {
                Ok(()) => interval,
                Err(error) => {
                    tracing::warn!(%error, "subscription manager cannot read the mailboxes; retrying");
                    STORE_RETRY
                }
            };
            refresh_gauges(&shared).await;
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shared.wake.notified() => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        }
        while calls.join_next().await.is_some() {}
        tracing::info!("subscription manager stopped");
    }
}

/// Often enough that silence is noticed promptly on a compressed clock, rarely enough to be
/// idle in production.
fn scan_interval(timing: &Timing) -> Duration {
    timing
        .clock
        .span(timing.status_frequency / 20)
        .clamp(MIN_SCAN_INTERVAL, MAX_SCAN_INTERVAL)
}

/// One pass over the mailboxes that need work; starts their calls within the bounds.
async fn scan(
    shared: &Arc<Shared>,
    calls: &mut JoinSet<()>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let now = OffsetDateTime::now_utc();
    let timing = &shared.options.timing;
    let due = shared
        .store
        .due_mailboxes(now, now - timing.silence_limit(), SCAN_BATCH)
        .await?;
    for view in due {
        if is_running(shared, &view.mailbox.address) {
            continue;
        }
        let Some(plan) = plan::plan(&view, OffsetDateTime::now_utc(), timing) else {
            continue;
        };
        // Bounds first, so a mailbox is leased only when its call can start at once.
        let permit = tokio::select! {
            permit = shared.in_flight.clone().acquire_owned() => permit,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let Ok(permit) = permit else {
            return Ok(());
        };
        tokio::select! {
            _ = wait_for_turn(shared) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        }
        let address = view.mailbox.address.clone();
        if let Ok(mut running) = shared.running.lock() {
            running.insert(address.clone());
        }
        let shared = shared.clone();
        calls.spawn(async move {
            subscribe_one(&shared, view, plan).await;
            if let Ok(mut running) = shared.running.lock() {
                running.remove(&address);
            }
            drop(permit);
        });
    }
    Ok(())
}

fn is_running(shared: &Shared, address: &str) -> bool {
    shared
        .running
        .lock()
        .map(|running| running.contains(address))
        .unwrap_or(false)
}

/// Waits out an ErrorServerBusy pause, then for the rate limiter.
async fn wait_for_turn(shared: &Shared) {
    loop {
        let until = shared.paused_until.lock().ok().and_then(|guard| *guard);
        match until {
            Some(until) if until > tokio::time::Instant::now() => {
                tokio::time::sleep_until(until).await;
            }
            _ => break,
        }
    }
    shared.limiter.until_ready().await;
}

fn pause_everyone(shared: &Shared, back_off: Duration) {
    let until = tokio::time::Instant::now() + back_off;
    if let Ok(mut guard) = shared.paused_until.lock() {
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
        }
    }
}

async fn subscribe_one(shared: &Shared, view: MailboxView, plan: SubscribePlan) {
    let address = view.mailbox.address.clone();
    let now = OffsetDateTime::now_utc();
    let lease = Lease {
        owner: shared.options.owner.clone(),
        until: now
            + time::Duration::try_from(shared.options.lease).unwrap_or(time::Duration::MINUTE),
    };
    let leased = match shared
        .store
        .begin_subscribe(&address, &lease, plan.state, plan.cause, now)
        .await
    {
        Ok(Some(view)) => view,
        Ok(None) => return, // switched off, or another worker has it
        Err(error) => {
            tracing::warn!(%error, mailbox = %address, "cannot lease mailbox for Subscribe");
            return;
        }
    };
    if let (Some(cause), true, Some(metrics)) = (plan.cause, plan.newly_started, &shared.metrics) {
        metrics.renewal(cause);
    }
    let url = shared.options.callback.for_tenant(&leased.mailbox.tenant);
    let frequency = u16::try_from(shared.options.timing.status_frequency.as_secs() / 60)
        .unwrap_or(1440)
        .clamp(1, 1440);
    let request = SubscribeRequest {
        watermark: plan.watermark.clone(),
        status_frequency_minutes: frequency,
        url,
    };
    let mut result = call(shared, &address, &request).await;
    let mut watermark_refused = false;
    if let (Err(SubscribeFailure::InvalidWatermark(message)), Some(_)) =
        (&result, &request.watermark)
    {
        // Exchange no longer has the events after that watermark: a fresh subscription, and the
        // calendar is read again by the sync step.
        tracing::warn!(mailbox = %address, %message, "watermark refused; subscribing fresh");
        watermark_refused = true;
        if let Some(metrics) = &shared.metrics {
            metrics.renewal(RenewCause::RefusedWatermark);
        }
        let fresh = SubscribeRequest {
            watermark: None,
            ..request.clone()
        };
        wait_for_turn(shared).await;
        result = call(shared, &address, &fresh).await;
    }
    let now = OffsetDateTime::now_utc();
    let outcome = match &result {
        Ok(subscribed) => {
            tracing::info!(
                mailbox = %address,
                subscription_id = %subscribed.subscription_id,
                cause = plan.cause.map_or("sync_on", RenewCause::as_str),
                from_watermark = request.watermark.is_some() && !watermark_refused,
                "subscribed"
            );
            SubscribeOutcome::Subscribed {
                subscription_id: subscribed.subscription_id.clone(),
                watermark: subscribed.watermark.clone(),
                // Without a replay, what happened meanwhile must be read from the calendar.
                resync: request.watermark.is_none() || watermark_refused,
            }
        }
        Err(failure) => {
            let attempts = leased.mailbox.attempts.saturating_add(1);
            let (wait, failed) = plan::retry_after(
                failure,
                attempts,
                &shared.options.timing.clock,
                rand::random(),
            );
            if let SubscribeFailure::ServerBusy { back_off, .. } = failure {
                pause_everyone(shared, *back_off);
            }
            if failed {
                tracing::error!(mailbox = %address, error = failure.message(), retry_in = ?wait, "Exchange refused to subscribe the mailbox");
            } else {
                tracing::warn!(mailbox = %address, error = failure.message(), attempts, retry_in = ?wait, "Subscribe failed; will retry");
            }
            SubscribeOutcome::Failed {
                error: failure.message().to_string(),
                next_attempt_at: now
                    + time::Duration::try_from(wait).unwrap_or(time::Duration::HOUR),
                failed,
                // The retry of a renewal whose watermark was refused must be fresh too.
                cause: watermark_refused.then_some(RenewCause::RefusedWatermark),
            }
        }
    };
    match shared
        .store
        .finish_subscribe(&address, &lease, &outcome, now)
        .await
    {
        Ok(FinishOutcome::Recorded) => {}
        Ok(FinishOutcome::Abandoned) => {
            tracing::info!(mailbox = %address, "mailbox changed during Subscribe; its new subscription is unwanted");
        }
        Err(error) => {
            // The lease expires and the mailbox is tried again; a subscription made now is
            // unknown to the store and its notifications get Unsubscribe.
            tracing::warn!(%error, mailbox = %address, "cannot record the Subscribe result");
        }
    }
}

async fn call(
    shared: &Shared,
    address: &str,
    request: &SubscribeRequest,
) -> Result<Subscribed, SubscribeFailure> {
    let result = shared.subscriber.subscribe(address, request).await;
    if let Some(metrics) = &shared.metrics {
        metrics.subscribe_call(match &result {
            Ok(_) => "ok",
            Err(SubscribeFailure::InvalidWatermark(_)) => "invalid_watermark",
            Err(SubscribeFailure::ServerBusy { .. }) => "server_busy",
            Err(SubscribeFailure::Refused(_)) => "refused",
            Err(SubscribeFailure::Transient { .. }) => "transient",
        });
    }
    result
}

async fn refresh_gauges(shared: &Shared) {
    let Some(metrics) = &shared.metrics else {
        return;
    };
    match shared.store.mailbox_summary().await {
        Ok(summary) => metrics.set_summary(&summary, OffsetDateTime::now_utc()),
        Err(error) => tracing::debug!(%error, "mailbox gauges not refreshed"),
    }
}
