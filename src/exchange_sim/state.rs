//! Everything the simulator holds, behind one lock: the mailboxes, the subscriptions, the bad-day
//! switches, issued tokens and what observation reports (calls, deliveries). Never held across
//! an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::store::Store;
use super::subscriptions::Subscription;

/// Deliveries and calls kept for observation (oldest dropped first).
const LOG_LIMIT: usize = 200_000;

/// The bad-day switches.
#[derive(Debug, Default)]
pub struct Faults {
    pub busy_until: Option<Instant>,
    pub busy_back_off: Duration,
    pub stall_until: Option<Instant>,
    pub ews_disabled: bool,
    /// The next CreateItem is carried out but answered only after this long.
    pub answer_next_create_after: Option<Duration>,
    pub latency: Duration,
}

impl Faults {
    pub fn busy(&self, now: Instant) -> Option<Duration> {
        self.busy_until
            .filter(|until| now < *until)
            .map(|_| self.busy_back_off)
    }

    pub fn stalled_until(&self, now: Instant) -> Option<Instant> {
        self.stall_until.filter(|until| now < *until)
    }
}

/// A running delivery task.
pub struct Task {
    pub handle: JoinHandle<()>,
    pub wake: Arc<Notify>,
}

/// One EWS call, as observation reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallRecord {
    /// `Subscribe`, `GetItem`... or `unknown` when the body could not be read.
    pub operation: String,
    /// The mailbox acted for, when it was known.
    pub mailbox: Option<String>,
    /// `NoError`, the first error ResponseCode of the answer, `fault:<code>`, `http_401`,
    /// `http_403`, `http_415`, `stalled`.
    pub outcome: String,
    /// Milliseconds since the simulator started.
    pub at_ms: u64,
}

/// Calls per operation and per mailbox and operation (every call that passed authentication,
/// whatever its outcome), and refused authentications.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    pub by_operation: BTreeMap<String, u64>,
    pub by_mailbox: BTreeMap<String, BTreeMap<String, u64>>,
    /// Calls whose outcome was `NoError`, per operation.
    pub succeeded: BTreeMap<String, u64>,
    pub unauthorized: u64,
}

impl CallCounts {
    pub fn operation(&self, operation: &str) -> u64 {
        self.by_operation.get(operation).copied().unwrap_or(0)
    }

    pub fn for_mailbox(&self, mailbox: &str, operation: &str) -> u64 {
        self.by_mailbox
            .get(&super::store::mailbox_key(mailbox))
            .and_then(|ops| ops.get(operation))
            .copied()
            .unwrap_or(0)
    }

    pub fn succeeded(&self, operation: &str) -> u64 {
        self.succeeded.get(operation).copied().unwrap_or(0)
    }

    /// CreateItem, UpdateItem and DeleteItem calls.
    pub fn writes(&self) -> u64 {
        ["CreateItem", "UpdateItem", "DeleteItem"]
            .iter()
            .map(|op| self.operation(op))
            .sum()
    }
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    pub subscription_id: String,
    pub mailbox: String,
    /// The notification's number within its subscription (1, 2, ...); retries share it.
    pub notification: u64,
    /// 1 for the first attempt, 2 for the first resend...
    pub attempt: u32,
    /// `events`, `status` or `error`.
    pub kind: String,
    pub events: usize,
    pub body_bytes: usize,
    /// First 16 hex digits of the body's SHA-256: retries carry the same.
    pub body_digest: String,
    /// `OK`, `Unsubscribe` or `failed: <why>`.
    pub outcome: String,
    /// Milliseconds since the simulator started, when the attempt began.
    pub at_ms: u64,
    pub latency_ms: u64,
}

/// A subscription as observation reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionInfo {
    pub id: String,
    pub mailbox: String,
    pub url: String,
    pub status_frequency_minutes: u32,
    pub alive: bool,
    /// Why it ended: `unsubscribed`, `delivery_failed`, `dropped`, `error_notification`.
    pub ended: Option<String>,
    pub notifications_sent: u64,
    pub notifications_accepted: u64,
    pub notifications_failed: u64,
    pub attempts: u64,
    pub attempts_failed: u64,
    pub events_sent: u64,
    pub last_watermark: String,
}

impl From<&Subscription> for SubscriptionInfo {
    fn from(s: &Subscription) -> Self {
        SubscriptionInfo {
            id: s.id.clone(),
            mailbox: s.mailbox.clone(),
            url: s.url.clone(),
            status_frequency_minutes: s.status_frequency_minutes,
            alive: s.is_alive(),
            ended: s.ended.map(|e| e.as_str().to_string()),
            notifications_sent: s.notifications_sent,
            notifications_accepted: s.notifications_accepted,
            notifications_failed: s.notifications_failed,
            attempts: s.attempts,
            attempts_failed: s.attempts_failed,
            events_sent: s.events_sent,
            last_watermark: s.last_watermark.clone(),
        }
    }
}

/// Issued OAuth tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    pub issued: HashMap<String, Instant>,
    pub count: u64,
}

pub struct State {
    pub store: Store,
    /// Every subscription ever made, ended ones included (observation reports why they ended).
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Subscription ids per mailbox key, for the per-mailbox limit.
    pub subscriptions_by_mailbox: HashMap<String, Vec<String>>,
    pub tasks: HashMap<String, Task>,
    /// Per mailbox: the head of its event log, for the delivery tasks to wait on.
    pub heads: HashMap<String, watch::Sender<u64>>,
    pub faults: Faults,
    pub tokens: Tokens,
    pub calls: VecDeque<CallRecord>,
    pub counts: CallCounts,
    pub deliveries: VecDeque<DeliveryRecord>,
    pub next_subscription: u64,
    pub next_nonce: u32,
    pub random: u64,
    pub started: Instant,
    pub started_wall: SystemTime,
}

impl State {
    pub fn new(seed: u64, latency: Duration) -> State {
        State {
            store: Store::new(seed),
            subscriptions: BTreeMap::new(),
            subscriptions_by_mailbox: HashMap::new(),
            tasks: HashMap::new(),
            heads: HashMap::new(),
            faults: Faults {
                latency,
                ..Faults::default()
            },
            tokens: Tokens::default(),
            calls: VecDeque::new(),
            counts: CallCounts::default(),
            deliveries: VecDeque::new(),
            next_subscription: 0,
            next_nonce: 0,
            random: seed | 1,
            started: Instant::now(),
            started_wall: SystemTime::now(),
        }
    }

    /// A pseudo-random number (ids, tokens); seeded, so runs with a seed repeat.
    pub fn random(&mut self) -> u64 {
        // splitmix64
        self.random = self.random.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.random;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn nonce(&mut self) -> u32 {
        self.next_nonce = self.next_nonce.wrapping_add(1).max(1);
        self.next_nonce
    }

    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Adds a mailbox and its event-log watch.
    pub fn add_mailbox(&mut self, address: &str) -> bool {
        if !self.store.add_mailbox(address) {
            return false;
        }
        let (sender, _) = watch::channel(0);
        self.heads
            .insert(super::store::mailbox_key(address), sender);
        true
    }

    /// Wakes the delivery tasks of a mailbox after its log grew.
    pub fn publish(&self, address: &str) {
        let key = super::store::mailbox_key(address);
        if let (Some(sender), Some(mailbox)) = (self.heads.get(&key), self.store.mailbox(&key)) {
            sender.send_replace(mailbox.head());
        }
    }

    pub fn record_call(&mut self, operation: &str, mailbox: Option<&str>, outcome: &str) {
        let record = CallRecord {
            operation: operation.to_string(),
            mailbox: mailbox.map(super::store::mailbox_key),
            outcome: outcome.to_string(),
            at_ms: self.elapsed_ms(),
        };
        *self
            .counts
            .by_operation
            .entry(record.operation.clone())
            .or_insert(0) += 1;
        if let Some(mailbox) = &record.mailbox {
            *self
                .counts
                .by_mailbox
                .entry(mailbox.clone())
                .or_default()
                .entry(record.operation.clone())
                .or_insert(0) += 1;
        }
        if outcome == "NoError" {
            *self
                .counts
                .succeeded
                .entry(record.operation.clone())
                .or_insert(0) += 1;
        }
        if self.calls.len() >= LOG_LIMIT {
            self.calls.pop_front();
        }
        self.calls.push_back(record);
    }

    pub fn record_delivery(&mut self, record: DeliveryRecord) {
        if self.deliveries.len() >= LOG_LIMIT {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(record);
    }

    pub fn add_subscription(&mut self, subscription: Subscription) {
        let ids = self
            .subscriptions_by_mailbox
            .entry(subscription.mailbox.clone())
            .or_default();
        // Forget ended ones here, so a mailbox renewed over a long run keeps a short list.
        ids.retain(|id| {
            self.subscriptions
                .get(id)
                .is_some_and(Subscription::is_alive)
        });
        ids.push(subscription.id.clone());
        self.subscriptions
            .insert(subscription.id.clone(), subscription);
    }

    /// Alive subscriptions of a mailbox.
    pub fn alive_subscriptions(&self, mailbox: &str) -> usize {
        let key = super::store::mailbox_key(mailbox);
        self.subscriptions_by_mailbox.get(&key).map_or(0, |ids| {
            ids.iter()
                .filter(|id| {
                    self.subscriptions
                        .get(*id)
                        .is_some_and(Subscription::is_alive)
                })
                .count()
        })
    }
}
