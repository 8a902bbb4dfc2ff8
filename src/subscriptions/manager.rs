//! The loop that keeps every synced mailbox subscribed: it asks the store which mailboxes need a
//! Subscribe (new, retry due, flagged by ingest, silent), decides with `plan`, and calls Exchange
//! within the rate (`subscribe_rate`), the bound on calls in flight, and any ErrorServerBusy pause.
//! A lease in the store keeps one call per mailbox across worker replicas.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::callback::CallbackUrl;
use super::metrics::SubscriptionMetrics;
use super::plan::{self, SubscribeFailure, SubscribePlan, Timing};
use crate::store::{
    BeginSubscribe, FinishOutcome, Lease, MailboxView, RenewCause, Store, StoreError,
    SubscribeOutcome,
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
    finisher: Finisher,
    wake: Notify,
    metrics: Option<Arc<SubscriptionMetrics>>,
}

/// A handle to wake the manager (after the API switched a mailbox on) and to run it.
#[derive(Clone)]
pub struct SubscriptionManager {
    shared: Arc<Shared>,
    /// Records results; ended by `run` once every call has finished.
    finisher_task: Arc<Mutex<Option<JoinHandle<()>>>>,
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
        let (finisher, finisher_task) = Finisher::spawn(store.clone());
        Self {
            finisher_task: Arc::new(Mutex::new(Some(finisher_task))),
            shared: Arc::new(Shared {
                finisher,
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
                // A full batch: more may be due at once.
                Ok(Scanned::Full) => Duration::ZERO,
                Ok(Scanned::Partial) => interval,
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
        // Every call has waited for its result to be recorded: nothing is left to record.
        if let Some(task) = self.finisher_task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
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

/// One pass over the mailboxes that need work: leases those that need a Subscribe (one
/// transaction), then starts their calls within the bounds. Leases of calls that could not start
/// before shutdown are given back.
async fn scan(
    shared: &Arc<Shared>,
    calls: &mut JoinSet<()>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Scanned, StoreError> {
    let now = OffsetDateTime::now_utc();
    let timing = &shared.options.timing;
    // No more than can start well within the lease at the rate.
    let batch = SCAN_BATCH
        .min(shared.options.subscribe_rate as usize * 30)
        .max(1);
    let due = shared
        .store
        .due_mailboxes(now, now - timing.silence_limit(), batch)
        .await?;
    let scanned = if due.len() == batch {
        Scanned::Full
    } else {
        Scanned::Partial
    };
    let mut plans: HashMap<String, SubscribePlan> = HashMap::new();
    let mut begins = Vec::new();
    for view in &due {
        let address = &view.mailbox.address;
        if is_running(shared, address) {
            continue;
        }
        if let Some(plan) = plan::plan(view, now, timing) {
            begins.push(BeginSubscribe {
                address: address.clone(),
                state: plan.state,
                cause: plan.cause,
            });
            plans.insert(address.clone(), plan);
        }
    }
    if begins.is_empty() {
        return Ok(scanned);
    }
    let lease = Lease {
        owner: shared.options.owner.clone(),
        until: now
            + time::Duration::try_from(shared.options.lease).unwrap_or(time::Duration::MINUTE),
    };
    let taken = shared.store.begin_subscribes(&begins, &lease, now).await?;
    if let Ok(mut running) = shared.running.lock() {
        running.extend(taken.iter().map(|v| v.mailbox.address.clone()));
    }
    let mut taken = taken.into_iter();
    while let Some(view) = taken.next() {
        let address = view.mailbox.address.clone();
        let Some(plan) = plans.remove(&address) else {
            continue;
        };
        let permit = tokio::select! {
            permit = shared.in_flight.clone().acquire_owned() => permit.ok(),
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let started = match permit {
            Some(permit) => tokio::select! {
                _ = wait_for_turn(shared) => Some(permit),
                _ = shutdown.wait_for(|stop| *stop) => None,
            },
            None => None,
        };
        let Some(permit) = started else {
            let unstarted: Vec<String> = std::iter::once(address)
                .chain(taken.map(|v| v.mailbox.address))
                .collect();
            give_back(shared, &unstarted, &lease).await;
            return Ok(Scanned::Partial);
        };
        let shared = shared.clone();
        let lease = lease.clone();
        calls.spawn(async move {
            let outcome = subscribe_one(&shared, &view, &plan).await;
            shared.finisher.record(&address, &lease, outcome).await;
            if let Ok(mut running) = shared.running.lock() {
                running.remove(&address);
            }
            drop(permit);
        });
    }
    Ok(scanned)
}

/// Whether a scan saw as many mailboxes as it may take (more may be waiting).
enum Scanned {
    Full,
    Partial,
}

/// Releases leases of calls that never started.
async fn give_back(shared: &Shared, addresses: &[String], lease: &Lease) {
    if let Err(error) = shared.store.release_leases(addresses, lease).await {
        tracing::warn!(%error, mailboxes = addresses.len(), "leases not given back; they expire");
    }
    if let Ok(mut running) = shared.running.lock() {
        for address in addresses {
            running.remove(address);
        }
    }
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

/// Makes the Subscribe call for a leased mailbox (and, when Exchange refuses the watermark, the
/// fresh one right after), and says what to record.
async fn subscribe_one(
    shared: &Shared,
    view: &MailboxView,
    plan: &SubscribePlan,
) -> SubscribeOutcome {
    let address = &view.mailbox.address;
    if let (Some(cause), true, Some(metrics)) = (plan.cause, plan.newly_started, &shared.metrics) {
        metrics.renewal(cause);
    }
    let url = shared.options.callback.for_tenant(&view.mailbox.tenant);
    let frequency = u16::try_from(shared.options.timing.status_frequency.as_secs() / 60)
        .unwrap_or(1440)
        .clamp(1, 1440);
    let request = SubscribeRequest {
        watermark: plan.watermark.clone(),
        status_frequency_minutes: frequency,
        url,
    };
    let mut result = call(shared, address, &request).await;
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
        result = call(shared, address, &fresh).await;
    }
    let now = OffsetDateTime::now_utc();
    match &result {
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
            let attempts = view.mailbox.attempts.saturating_add(1);
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
    }
}

/// Records Subscribe results: what calls finish at about the same time shares one transaction,
/// so subscribing 10,000 mailboxes is not 10,000 commits.
struct Finisher {
    sender: mpsc::Sender<Finished>,
}

struct Finished {
    address: String,
    lease: Lease,
    outcome: SubscribeOutcome,
    done: oneshot::Sender<()>,
}

/// Results recorded per transaction at most.
const FINISH_BATCH: usize = 256;

impl Finisher {
    fn spawn(store: Arc<dyn Store>) -> (Finisher, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(FINISH_BATCH * 4);
        let task = tokio::spawn(record_results(store, receiver));
        (Finisher { sender }, task)
    }

    /// Queues a result and waits until it is recorded (or could not be: the lease then expires
    /// and the mailbox is tried again).
    async fn record(&self, address: &str, lease: &Lease, outcome: SubscribeOutcome) {
        let (done, recorded) = oneshot::channel();
        let finished = Finished {
            address: address.to_string(),
            lease: lease.clone(),
            outcome,
            done,
        };
        if self.sender.send(finished).await.is_ok() {
            let _ = recorded.await;
        }
    }
}

async fn record_results(store: Arc<dyn Store>, mut receiver: mpsc::Receiver<Finished>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < FINISH_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // One transaction per lease (calls of one scan share it).
        let mut groups: Vec<(Lease, Vec<Finished>)> = Vec::new();
        for finished in batch {
            match groups
                .iter_mut()
                .find(|(lease, _)| *lease == finished.lease)
            {
                Some((_, group)) => group.push(finished),
                None => groups.push((finished.lease.clone(), vec![finished])),
            }
        }
        for (lease, group) in groups {
            let results: Vec<(String, SubscribeOutcome)> = group
                .iter()
                .map(|f| (f.address.clone(), f.outcome.clone()))
                .collect();
            match store
                .finish_subscribes(&results, &lease, OffsetDateTime::now_utc())
                .await
            {
                Ok(outcomes) => {
                    for ((address, _), outcome) in results.iter().zip(outcomes) {
                        if outcome == FinishOutcome::Abandoned {
                            tracing::info!(mailbox = %address, "mailbox changed during Subscribe; its new subscription is unwanted");
                        }
                    }
                }
                Err(error) => {
                    // The leases expire and the mailboxes are tried again; subscriptions made
                    // now are unknown to the store, and their notifications get Unsubscribe.
                    tracing::warn!(%error, results = results.len(), "cannot record Subscribe results");
                }
            }
            for finished in group {
                let _ = finished.done.send(());
            }
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
