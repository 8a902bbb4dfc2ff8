//! One task per subscription delivers its notifications (PROTOCOL.md §4): one in flight at a
//! time, each on a new connection (the raw client in `client.rs`), the identical body resent
//! after 30 s then doubling waits until the next wait would exceed StatusFrequency, after which
//! the subscription is dropped silently; a StatusEvent after StatusFrequency of quiet (and a first
//! one `first_status_after` Subscribe); `Unsubscribe` ends it. Waits run on Exchange's clock
//! scaled by `time_scale`; the answer timeout is real time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use super::client::Target;
use super::handle::Shared;
use super::push::{self, AttemptOutcome, Endpoint, RetryPolicy};
use super::state::{DeliveryRecord, State, Task};
use super::subscriptions::{self, CallbackUrl, Ended, Prepared, PreparedKind};
use crate::notification::{write::notification_xml, SubscriptionStatus};

/// Starts the delivery task of a new subscription (called with the state locked, before the
/// Subscribe answer is written: the first notification may overtake the answer).
pub fn spawn(shared: &Arc<Shared>, state: &mut State, id: &str) {
    let Some(subscription) = state.subscriptions.get(id) else {
        return;
    };
    let Some(head) = state.heads.get(&subscription.mailbox) else {
        return;
    };
    let head = head.subscribe();
    let wake = Arc::new(Notify::new());
    let handle = tokio::spawn(run(shared.clone(), id.to_string(), head, wake.clone()));
    state.tasks.insert(id.to_string(), Task { handle, wake });
}

enum Step {
    Gone,
    Wait,
    Send(Box<Prepared>),
}

/// What to do next, decided under the lock.
fn next_step(state: &mut State, id: &str, heartbeat_due: bool) -> Step {
    let nonce = state.nonce();
    let State {
        subscriptions,
        store,
        ..
    } = state;
    let Some(subscription) = subscriptions.get_mut(id) else {
        return Step::Gone;
    };
    if !subscription.is_alive() {
        return Step::Gone;
    }
    if subscription.error_requested {
        return Step::Send(Box::new(subscriptions::error_notification(subscription)));
    }
    let Some(mailbox) = store.mailbox(&subscription.mailbox) else {
        return Step::Gone;
    };
    match subscriptions::next_events(subscription, mailbox) {
        Ok(prepared) => Step::Send(Box::new(prepared)),
        Err(head) => {
            // Nothing this subscription sees up to the head: skip those entries for good.
            subscription.cursor = head;
            if heartbeat_due {
                Step::Send(Box::new(subscriptions::status(
                    subscription,
                    mailbox,
                    head,
                    nonce,
                )))
            } else {
                Step::Wait
            }
        }
    }
}

fn endpoint(shared: &Shared, callback: &CallbackUrl) -> Result<Endpoint, String> {
    if !callback.addr.ip().is_loopback() {
        return Err(format!("refusing to deliver to {}", callback.addr));
    }
    let mut target = if callback.https {
        let name = ServerName::try_from(callback.host.clone())
            .map_err(|e| format!("server name {}: {e}", callback.host))?;
        Target {
            addr: callback.addr,
            tls: Some((shared.push_connector.clone(), name)),
            bind: None,
            preamble: None,
        }
    } else {
        Target::plain(callback.addr)
    };
    if let Some(source) = shared.options.push_source {
        target = target.from(source);
    }
    Ok(Endpoint {
        target,
        path_and_query: callback.path_and_query.clone(),
        host: callback.authority.clone(),
    })
}

async fn run(shared: Arc<Shared>, id: String, mut head: watch::Receiver<u64>, wake: Arc<Notify>) {
    let setup = {
        let state = shared.lock();
        state.subscriptions.get(&id).map(|s| {
            (
                s.callback.clone(),
                s.status_frequency_minutes,
                s.mailbox.clone(),
            )
        })
    };
    let Some((callback, status_frequency, mailbox)) = setup else {
        return;
    };
    let endpoint = endpoint(&shared, &callback);
    let policy = RetryPolicy {
        answer_timeout: shared.options.answer_timeout,
        ..RetryPolicy::new(status_frequency).compressed(shared.options.time_scale)
    };
    let heartbeat = shared
        .options
        .scaled(Duration::from_secs(60 * u64::from(status_frequency)));
    let mut deadline = Instant::now() + shared.options.scaled(shared.options.first_status_after);
    let mut sequence = 0u64;
    loop {
        head.borrow_and_update();
        let step = {
            let mut state = shared.lock();
            next_step(&mut state, &id, Instant::now() >= deadline)
        };
        let prepared = match step {
            Step::Gone => return,
            Step::Wait => {
                tokio::select! {
                    changed = head.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                    _ = wake.notified() => {}
                }
                continue;
            }
            Step::Send(prepared) => prepared,
        };
        sequence += 1;
        let body = notification_xml(&prepared.notification);
        let delivery = Delivery {
            shared: &shared,
            id: &id,
            mailbox: &mailbox,
            sequence,
            prepared: &prepared,
        };
        let accepted = delivery.deliver(&endpoint, body.as_bytes(), &policy).await;
        if !settle(&shared, &id, &prepared, accepted) {
            return;
        }
        deadline = Instant::now() + heartbeat;
    }
}

struct Delivery<'a> {
    shared: &'a Shared,
    id: &'a str,
    mailbox: &'a str,
    sequence: u64,
    prepared: &'a Prepared,
}

impl Delivery<'_> {
    /// The identical body until it is accepted or the retry schedule runs out.
    async fn deliver(
        &self,
        endpoint: &Result<Endpoint, String>,
        body: &[u8],
        policy: &RetryPolicy,
    ) -> Option<SubscriptionStatus> {
        let digest = Sha256::digest(body);
        let digest: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let mut waits = policy.retry_waits().into_iter();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started_ms = self.shared.lock().elapsed_ms();
            let (outcome, latency) = match endpoint {
                Ok(endpoint) => push::attempt(endpoint, body, policy).await,
                Err(why) => (AttemptOutcome::Failed(why.clone()), Duration::ZERO),
            };
            self.record(attempt, &digest, body.len(), &outcome, started_ms, latency);
            if let AttemptOutcome::Accepted(status) = outcome {
                return Some(status);
            }
            let wait = waits.next()?;
            tokio::time::sleep(wait.mul_f64(policy.time_scale.max(0.0))).await;
        }
    }

    fn record(
        &self,
        attempt: u32,
        digest: &str,
        bytes: usize,
        outcome: &AttemptOutcome,
        at_ms: u64,
        latency: Duration,
    ) {
        let mut state = self.shared.lock();
        if let Some(subscription) = state.subscriptions.get_mut(self.id) {
            subscription.attempts += 1;
            if attempt == 1 {
                subscription.notifications_sent += 1;
            }
            if matches!(outcome, AttemptOutcome::Failed(_)) {
                subscription.attempts_failed += 1;
            }
        }
        let kind = match self.prepared.kind {
            PreparedKind::Events => "events",
            PreparedKind::Status => "status",
            PreparedKind::Error => "error",
        };
        state.record_delivery(DeliveryRecord {
            subscription_id: self.id.to_string(),
            mailbox: self.mailbox.to_string(),
            notification: self.sequence,
            attempt,
            kind: kind.into(),
            events: self.prepared.events,
            body_bytes: bytes,
            body_digest: digest.to_string(),
            outcome: match outcome {
                AttemptOutcome::Accepted(status) => status.as_str().to_string(),
                AttemptOutcome::Failed(why) => format!("failed: {why}"),
            },
            at_ms,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        });
    }
}

/// Applies the fate of a notification; false when the subscription ended.
fn settle(
    shared: &Shared,
    id: &str,
    prepared: &Prepared,
    accepted: Option<SubscriptionStatus>,
) -> bool {
    let mut state = shared.lock();
    let Some(subscription) = state.subscriptions.get_mut(id) else {
        return false;
    };
    if !subscription.is_alive() {
        return false;
    }
    let ended = match (prepared.kind, accepted) {
        // Exchange drops the subscription after an Error notification, whatever the answer.
        (PreparedKind::Error, answer) => {
            if answer.is_some() {
                subscription.notifications_accepted += 1;
            } else {
                subscription.notifications_failed += 1;
            }
            Some(Ended::ErrorNotification)
        }
        (_, Some(status)) => {
            subscription.notifications_accepted += 1;
            subscription.cursor = prepared.cursor;
            subscription.last_watermark = prepared.last_watermark.clone();
            if prepared.kind == PreparedKind::Events {
                subscription.events_sent += prepared.events as u64;
            }
            (status == SubscriptionStatus::Unsubscribe).then_some(Ended::Unsubscribed)
        }
        (_, None) => {
            subscription.notifications_failed += 1;
            Some(Ended::DeliveryFailed)
        }
    };
    match ended {
        Some(reason) => {
            subscription.ended = Some(reason);
            state.tasks.remove(id);
            false
        }
        None => true,
    }
}
