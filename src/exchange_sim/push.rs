//! Push delivery as Exchange does it (PROTOCOL.md §3–4): one notification in flight per
//! subscription, at most 50 events per notification (`MoreEvents` on all but the last), a
//! StatusEvent heartbeat, the identical body resent after 30 s then at doubling intervals until the
//! next wait would exceed StatusFrequency, and answers judged strictly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::client::{self, Target};
use crate::notification::envelope::{read_result, RESULT_MAX_BYTES};
use crate::notification::write::notification_xml;
use crate::notification::{
    Event, EventKind, Notification, NotificationContent, ObjectId, ObjectKind, ResponseClass,
    ResponseMessage, SubscriptionStatus,
};

/// Exchange puts at most this many events in one notification.
pub const MAX_EVENTS_PER_NOTIFICATION: usize = 50;
/// First wait after a failed delivery.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// Exchange counts an answer slower than this as failed.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where notifications go.
#[derive(Clone)]
pub struct Endpoint {
    pub target: Target,
    /// Path and query as registered at Subscribe, e.g. `/Webservices/SyncNotification.svc?Default`.
    pub path_and_query: String,
    pub host: String,
}

/// Exchange's retry rule for one subscription, with an optional time compression so demos and
/// tests need not wait half an hour (`time_scale` 0.001 turns 30 s into 30 ms).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub status_frequency: Duration,
    pub time_scale: f64,
    pub answer_timeout: Duration,
}

impl RetryPolicy {
    pub fn new(status_frequency_minutes: u32) -> Self {
        Self {
            status_frequency: Duration::from_secs(60 * u64::from(status_frequency_minutes)),
            time_scale: 1.0,
            answer_timeout: ANSWER_TIMEOUT,
        }
    }

    pub fn compressed(mut self, time_scale: f64) -> Self {
        self.time_scale = time_scale;
        self
    }

    /// The waits before each resend, on Exchange's clock: 30 s, then doubling, while a wait does
    /// not exceed StatusFrequency. StatusFrequency 1 gives 2 resends (3 attempts over ~90 s),
    /// the default 30 gives 6 resends (7 attempts over ~32 min).
    pub fn retry_waits(&self) -> Vec<Duration> {
        let mut waits = Vec::new();
        let mut wait = FIRST_RETRY;
        while wait <= self.status_frequency {
            waits.push(wait);
            wait *= 2;
        }
        waits
    }

    fn scaled(&self, wait: Duration) -> Duration {
        wait.mul_f64(self.time_scale)
    }
}

/// How one attempt went, judged as Exchange judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Accepted(SubscriptionStatus),
    /// Status >= 400, empty or oversized or unreadable answer, timeout, connection failure.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub outcome: AttemptOutcome,
    pub latency: Duration,
    /// When the attempt started, from the first attempt, on Exchange's (uncompressed) clock.
    pub at: Duration,
}

/// The fate of one notification.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub attempts: Vec<Attempt>,
    /// `Some(status)` once accepted; `None`: Exchange gave up and dropped the subscription.
    pub accepted: Option<SubscriptionStatus>,
}

/// Judges an HTTP answer by PROTOCOL.md §3.
pub fn judge(status: u16, body: &[u8]) -> AttemptOutcome {
    if !(200..300).contains(&status) {
        return AttemptOutcome::Failed(format!("status {status}"));
    }
    if body.is_empty() {
        return AttemptOutcome::Failed("empty answer".into());
    }
    if body.len() >= RESULT_MAX_BYTES {
        return AttemptOutcome::Failed(format!("answer of {} bytes", body.len()));
    }
    match read_result(body) {
        Some(status) => AttemptOutcome::Accepted(status),
        None => AttemptOutcome::Failed("not a SendNotificationResult".into()),
    }
}

/// One attempt: a new TLS connection, the request, the answer.
pub async fn attempt(
    endpoint: &Endpoint,
    body: &[u8],
    policy: &RetryPolicy,
) -> (AttemptOutcome, Duration) {
    let request = client::notification_request(&endpoint.path_and_query, &endpoint.host, body);
    let started = Instant::now();
    let outcome = match client::exchange(&endpoint.target, &request, policy.answer_timeout).await {
        Ok(response) => judge(response.status, &response.body),
        Err(e) => AttemptOutcome::Failed(e.to_string()),
    };
    (outcome, started.elapsed())
}

/// Delivers one body with Exchange's retries: the identical bytes every time.
pub async fn deliver(endpoint: &Endpoint, body: &[u8], policy: &RetryPolicy) -> Delivery {
    let mut attempts = Vec::new();
    let mut clock = Duration::ZERO;
    let mut waits = policy.retry_waits().into_iter();
    loop {
        let (outcome, latency) = attempt(endpoint, body, policy).await;
        attempts.push(Attempt {
            outcome: outcome.clone(),
            latency,
            at: clock,
        });
        if let AttemptOutcome::Accepted(status) = outcome {
            return Delivery {
                attempts,
                accepted: Some(status),
            };
        }
        let Some(wait) = waits.next() else {
            return Delivery {
                attempts,
                accepted: None,
            };
        };
        tokio::time::sleep(policy.scaled(wait)).await;
        clock += wait;
    }
}

/// A mailbox subscription on the simulated Exchange: it numbers watermarks, queues events and
/// cuts them into notifications of at most 50.
#[derive(Debug, Clone)]
pub struct SimSubscription {
    pub id: String,
    counter: u64,
    /// The watermark of the last event sent; the next notification's PreviousWatermark.
    last_watermark: String,
    pending: VecDeque<Event>,
}

impl SimSubscription {
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        let last_watermark = watermark_for(&id, 0);
        Self {
            id,
            counter: 0,
            last_watermark,
            pending: VecDeque::new(),
        }
    }

    fn next_watermark(&mut self) -> String {
        self.counter += 1;
        watermark_for(&self.id, self.counter)
    }

    /// Queues a calendar item event (created, modified, deleted...).
    pub fn item_event(&mut self, kind: EventKind, item: &str, timestamp: &str) {
        let watermark = self.next_watermark();
        let mut event = Event {
            watermark: Some(watermark),
            timestamp: Some(timestamp.to_string()),
            object: Some(ObjectId {
                kind: ObjectKind::Item,
                id: item.to_string(),
                change_key: Some("DwAAAA==".into()),
            }),
            parent_folder_id: Some(ObjectId {
                kind: ObjectKind::Folder,
                id: format!("{}-calendar", self.id),
                change_key: Some("AQAAAA==".into()),
            }),
            ..Event::bare(kind)
        };
        if kind.has_old_ids() {
            event.old_object = event.object.clone();
            event.old_parent_folder_id = event.parent_folder_id.clone();
        }
        self.pending.push_back(event);
    }

    /// Queues a heartbeat (StatusEvent); its watermark advances too.
    pub fn heartbeat(&mut self) {
        let watermark = self.next_watermark();
        self.pending.push_back(Event {
            watermark: Some(watermark),
            ..Event::bare(EventKind::Status)
        });
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next notification: up to 50 queued events, `MoreEvents` when more remain.
    pub fn next_notification(&mut self) -> Option<Notification> {
        if self.pending.is_empty() {
            return None;
        }
        let take = self.pending.len().min(MAX_EVENTS_PER_NOTIFICATION);
        let events: Vec<Event> = self.pending.drain(..take).collect();
        let previous = std::mem::take(&mut self.last_watermark);
        self.last_watermark = events
            .last()
            .and_then(|e| e.watermark.clone())
            .unwrap_or_else(|| previous.clone());
        Some(Notification {
            response_messages: vec![ResponseMessage {
                response_class: ResponseClass::Success,
                response_code: Some("NoError".into()),
                message_text: None,
                subscription_id: Some(self.id.clone()),
                notification: Some(NotificationContent {
                    previous_watermark: Some(previous),
                    more_events: !self.pending.is_empty(),
                    events,
                }),
            }],
        })
    }
}

fn watermark_for(subscription: &str, counter: u64) -> String {
    // Opaque to the listener, like Exchange's base64 watermarks; unique per subscription.
    let tag: u32 = subscription.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    format!("AQAAA{tag:08X}{counter:016X}=")
}

/// What happened to a subscription's queue.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionRun {
    pub notifications: usize,
    pub events_sent: usize,
    pub deliveries: Vec<Delivery>,
    /// Exchange gave up on a notification and dropped the subscription.
    pub dropped: bool,
    /// The listener answered Unsubscribe.
    pub unsubscribed: bool,
}

/// Sends the whole queue, one notification in flight: the next one only after the previous was
/// accepted (or the subscription dropped).
pub async fn drain(
    subscription: &mut SimSubscription,
    endpoint: &Endpoint,
    policy: &RetryPolicy,
) -> SubscriptionRun {
    let mut run = SubscriptionRun::default();
    while let Some(notification) = subscription.next_notification() {
        let events = notification.events().count();
        let body = notification_xml(&notification);
        let delivery = deliver(endpoint, body.as_bytes(), policy).await;
        run.notifications += 1;
        run.events_sent += events;
        let accepted = delivery.accepted;
        run.deliveries.push(delivery);
        match accepted {
            Some(SubscriptionStatus::Ok) => {}
            Some(SubscriptionStatus::Unsubscribe) => {
                run.unsubscribed = true;
                break;
            }
            None => {
                run.dropped = true;
                break;
            }
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_matches_exchange() {
        let one = RetryPolicy::new(1).retry_waits();
        assert_eq!(one, vec![Duration::from_secs(30), Duration::from_secs(60)]);
        let thirty = RetryPolicy::new(30).retry_waits();
        assert_eq!(thirty.len(), 6, "7 attempts in all");
        let total: Duration = thirty.iter().sum();
        assert_eq!(total, Duration::from_secs(30 + 60 + 120 + 240 + 480 + 960));
        assert!(total > Duration::from_secs(31 * 60) && total < Duration::from_secs(33 * 60));
    }

    #[test]
    fn answers_are_judged_strictly() {
        let ok = crate::notification::result_envelope(SubscriptionStatus::Ok);
        assert_eq!(
            judge(200, ok),
            AttemptOutcome::Accepted(SubscriptionStatus::Ok)
        );
        assert!(matches!(judge(202, b""), AttemptOutcome::Failed(_)));
        assert!(matches!(judge(500, ok), AttemptOutcome::Failed(_)));
        assert!(matches!(
            judge(200, &[b' '; 1024]),
            AttemptOutcome::Failed(_)
        ));
    }

    #[test]
    fn batches_of_fifty_with_more_events() {
        let mut sub = SimSubscription::new("sub-1");
        for i in 0..120 {
            sub.item_event(
                EventKind::Modified,
                &format!("item-{i}"),
                "2026-11-22T10:00:00Z",
            );
        }
        let mut previous_last: Option<String> = None;
        let mut sizes = Vec::new();
        while let Some(n) = sub.next_notification() {
            let content = n.response_messages[0].notification.clone().unwrap();
            sizes.push((content.events.len(), content.more_events));
            if let Some(previous_last) = &previous_last {
                assert_eq!(content.previous_watermark.as_ref(), Some(previous_last));
            }
            previous_last = content.events.last().unwrap().watermark.clone();
        }
        assert_eq!(sizes, vec![(50, true), (50, true), (20, false)]);
    }

    #[test]
    fn watermarks_are_unique_per_subscription() {
        let mut a = SimSubscription::new("a");
        let mut b = SimSubscription::new("b");
        a.heartbeat();
        b.heartbeat();
        let wa = a
            .next_notification()
            .unwrap()
            .events()
            .next()
            .unwrap()
            .watermark
            .clone();
        let wb = b
            .next_notification()
            .unwrap()
            .events()
            .next()
            .unwrap()
            .watermark
            .clone();
        assert_ne!(wa, wb);
    }
}
