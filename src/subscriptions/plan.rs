//! The subscription manager's decisions as pure functions: whether a mailbox needs a Subscribe
//! now, with which cause and from which watermark, and what a failed call means for its next
//! attempt. The loop in `manager` only carries them out.

use std::time::Duration;

use time::OffsetDateTime;

use crate::clock::Clock;
use crate::store::{MailboxState, MailboxView, RenewCause, SubscriptionState};

/// Exchange keeps a watermark for 30 days; an older one is refused.
pub const WATERMARK_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a mailbox Exchange refused to subscribe is tried again.
pub const FAILED_RETRY: Duration = Duration::from_secs(3600);
/// First wait after a transient failure; doubles per attempt up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What to do for one mailbox now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribePlan {
    /// `subscribing` for a first subscription, `renewing` for a replacement.
    pub state: MailboxState,
    /// Why a renewal happens (`None` for a first subscription).
    pub cause: Option<RenewCause>,
    /// Subscribe from here, so Exchange replays what was missed; `None`: fresh.
    pub watermark: Option<String>,
    /// Whether this renewal is new (counted in the renewals metric) or a retry of one.
    pub newly_started: bool,
}

/// The watchdog's view of time: StatusFrequency and the worker's clock.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub status_frequency: Duration,
    pub clock: Clock,
    /// When this worker started: a subscription already silent then is renewed with cause
    /// `start`.
    pub started_at: OffsetDateTime,
}

impl Timing {
    /// Silence longer than this means the subscription is gone: 2 x StatusFrequency.
    pub fn silence_limit(&self) -> time::Duration {
        self.clock.time_span(self.status_frequency * 2)
    }
}

/// Decides what `view` needs at `now`; `None`: nothing.
pub fn plan(view: &MailboxView, now: OffsetDateTime, timing: &Timing) -> Option<SubscribePlan> {
    let mailbox = &view.mailbox;
    if !mailbox.sync {
        return None;
    }
    let due = mailbox.next_attempt_at.is_none_or(|at| at <= now);
    match mailbox.state {
        MailboxState::Off => None,
        MailboxState::Subscribing if due => Some(SubscribePlan {
            state: MailboxState::Subscribing,
            cause: None,
            watermark: None,
            newly_started: false,
        }),
        MailboxState::Renewing | MailboxState::Failed if due => {
            // A retry: the mailbox still points at the subscription being replaced.
            let cause = mailbox.renew_cause;
            let state = if mailbox.subscription_id.is_some() || cause.is_some() {
                MailboxState::Renewing
            } else {
                MailboxState::Subscribing
            };
            Some(SubscribePlan {
                state,
                cause,
                watermark: replay_watermark(view, cause, now, timing),
                newly_started: false,
            })
        }
        MailboxState::Active => {
            let cause = active_cause(view, now, timing)?;
            Some(SubscribePlan {
                state: MailboxState::Renewing,
                cause: Some(cause),
                watermark: replay_watermark(view, Some(cause), now, timing),
                newly_started: true,
            })
        }
        _ => None,
    }
}

/// Why an active mailbox needs a new subscription, if it does.
fn active_cause(view: &MailboxView, now: OffsetDateTime, timing: &Timing) -> Option<RenewCause> {
    let Some(subscription) = &view.subscription else {
        return Some(RenewCause::Silence);
    };
    match subscription.state {
        SubscriptionState::ResubscribeNeeded => return Some(RenewCause::ErrorNotification),
        SubscriptionState::ResyncNeeded => return Some(RenewCause::WatermarkGap),
        SubscriptionState::Active | SubscriptionState::Unsubscribed => {}
    }
    let limit = timing.silence_limit();
    let heard = view.last_heard_at()?;
    if heard + limit >= now {
        return None;
    }
    Some(if heard + limit < timing.started_at {
        RenewCause::Start
    } else {
        RenewCause::Silence
    })
}

/// The watermark a renewal subscribes from: the one before a gap, else the last stored; none
/// when Exchange refused it already or it has expired (then the calendar is resynced instead).
fn replay_watermark(
    view: &MailboxView,
    cause: Option<RenewCause>,
    now: OffsetDateTime,
    timing: &Timing,
) -> Option<String> {
    if cause.is_none() || cause == Some(RenewCause::RefusedWatermark) {
        return None;
    }
    let subscription = view.subscription.as_ref()?;
    let watermark = match cause {
        Some(RenewCause::WatermarkGap) => subscription
            .replay_from
            .clone()
            .or_else(|| subscription.last_watermark.clone()),
        _ => subscription.last_watermark.clone(),
    }?;
    let stored_at = view.last_heard_at()?;
    let lifetime = timing.clock.time_span(WATERMARK_LIFETIME);
    (stored_at + lifetime > now).then_some(watermark)
}

/// How a Subscribe call failed, as far as the manager cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeFailure {
    /// `ErrorInvalidWatermark`: subscribe fresh at once and resync the calendar.
    InvalidWatermark(String),
    /// `ErrorServerBusy`: everyone waits for the hint.
    ServerBusy { message: String, back_off: Duration },
    /// Exchange will not subscribe this mailbox as things stand (no such mailbox, impersonation
    /// denied, EWS switched off, credentials refused): `failed`, retried hourly.
    Refused(String),
    /// Anything else: retried with back-off, honouring a hint.
    Transient {
        message: String,
        back_off: Option<Duration>,
    },
}

impl SubscribeFailure {
    pub fn message(&self) -> &str {
        match self {
            SubscribeFailure::InvalidWatermark(message)
            | SubscribeFailure::ServerBusy { message, .. }
            | SubscribeFailure::Refused(message)
            | SubscribeFailure::Transient { message, .. } => message,
        }
    }
}

/// When to try again after `failure`, the `attempts`-th failure in a row (1 for the first), and
/// whether the mailbox goes to `failed`. `jitter` in [0, 1) spreads retries of many mailboxes.
pub fn retry_after(
    failure: &SubscribeFailure,
    attempts: u32,
    clock: &Clock,
    jitter: f64,
) -> (Duration, bool) {
    match failure {
        SubscribeFailure::Refused(_) => (clock.span(FAILED_RETRY), true),
        SubscribeFailure::ServerBusy { back_off, .. } => (*back_off, false),
        SubscribeFailure::InvalidWatermark(_) | SubscribeFailure::Transient { .. } => {
            let exponent = attempts.saturating_sub(1).min(16);
            let nominal = FIRST_BACKOFF
                .saturating_mul(1u32 << exponent)
                .min(MAX_BACKOFF);
            // Up to a quarter more, so mailboxes that failed together do not retry together.
            let spread = nominal.mul_f64(1.0 + 0.25 * jitter.clamp(0.0, 1.0));
            let wait = clock.span(spread);
            match failure {
                SubscribeFailure::Transient {
                    back_off: Some(hint),
                    ..
                } => (wait.max(*hint), false),
                _ => (wait, false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MailboxRecord, SubscriptionRecord};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);

    fn timing() -> Timing {
        Timing {
            status_frequency: Duration::from_secs(5 * 60),
            clock: Clock::real(),
            started_at: NOW - time::Duration::minutes(1),
        }
    }

    fn view(state: MailboxState, heard_minutes_ago: Option<i64>) -> MailboxView {
        let subscription = SubscriptionRecord {
            subscription_id: "S1".into(),
            tenant: "default".into(),
            last_watermark: Some("W9".into()),
            last_notification_at: heard_minutes_ago.map(|m| NOW - time::Duration::minutes(m)),
            state: SubscriptionState::Active,
            state_reason: None,
            updated_at: NOW,
            mailbox: Some("room@contoso.com".into()),
            replay_from: None,
        };
        MailboxView {
            mailbox: MailboxRecord {
                address: "room@contoso.com".into(),
                tenant: "default".into(),
                sync: true,
                state,
                subscription_id: Some("S1".into()),
                last_error: None,
                renew_cause: None,
                attempts: 0,
                next_attempt_at: None,
                subscribed_at: Some(NOW - time::Duration::hours(5)),
                resync_requested_at: None,
                lease_owner: None,
                lease_until: None,
                created_at: NOW - time::Duration::days(1),
                updated_at: NOW,
            },
            subscription: Some(subscription),
        }
    }

    #[test]
    fn a_heartbeat_within_twice_status_frequency_keeps_the_subscription() {
        assert_eq!(
            plan(&view(MailboxState::Active, Some(9)), NOW, &timing()),
            None
        );
    }

    #[test]
    fn silence_renews_from_the_last_watermark() {
        let plan = plan(&view(MailboxState::Active, Some(11)), NOW, &timing()).unwrap();
        assert_eq!(plan.state, MailboxState::Renewing);
        assert_eq!(plan.cause, Some(RenewCause::Silence));
        assert_eq!(plan.watermark.as_deref(), Some("W9"));
        assert!(plan.newly_started);
    }

    #[test]
    fn silence_already_there_at_start_is_counted_as_start() {
        let plan = plan(&view(MailboxState::Active, Some(60)), NOW, &timing()).unwrap();
        assert_eq!(plan.cause, Some(RenewCause::Start));
        assert_eq!(plan.watermark.as_deref(), Some("W9"));
    }

    #[test]
    fn flags_from_ingest_renew_at_once() {
        let mut errored = view(MailboxState::Active, Some(1));
        errored.subscription.as_mut().unwrap().state = SubscriptionState::ResubscribeNeeded;
        let p = plan(&errored, NOW, &timing()).unwrap();
        assert_eq!(p.cause, Some(RenewCause::ErrorNotification));
        assert_eq!(p.watermark.as_deref(), Some("W9"));

        let mut gap = view(MailboxState::Active, Some(1));
        let subscription = gap.subscription.as_mut().unwrap();
        subscription.state = SubscriptionState::ResyncNeeded;
        subscription.replay_from = Some("W5".into());
        let p = plan(&gap, NOW, &timing()).unwrap();
        assert_eq!(p.cause, Some(RenewCause::WatermarkGap));
        assert_eq!(p.watermark.as_deref(), Some("W5"), "from before the gap");
    }

    #[test]
    fn an_expired_watermark_gives_a_fresh_subscription() {
        let mut old = view(MailboxState::Active, Some(31 * 24 * 60));
        old.mailbox.subscribed_at = Some(NOW - time::Duration::days(40));
        let p = plan(&old, NOW, &timing()).unwrap();
        assert_eq!(p.watermark, None);
    }

    #[test]
    fn first_subscriptions_and_retries_wait_for_their_time() {
        let mut new = view(MailboxState::Subscribing, None);
        new.subscription = None;
        new.mailbox.subscription_id = None;
        new.mailbox.next_attempt_at = Some(NOW + time::Duration::seconds(5));
        assert_eq!(plan(&new, NOW, &timing()), None);
        new.mailbox.next_attempt_at = Some(NOW);
        let p = plan(&new, NOW, &timing()).unwrap();
        assert_eq!(
            (p.state, p.cause, p.watermark),
            (MailboxState::Subscribing, None, None)
        );

        let mut retry = view(MailboxState::Renewing, Some(20));
        retry.mailbox.renew_cause = Some(RenewCause::Silence);
        retry.mailbox.next_attempt_at = Some(NOW);
        let p = plan(&retry, NOW, &timing()).unwrap();
        assert_eq!(p.cause, Some(RenewCause::Silence));
        assert_eq!(p.watermark.as_deref(), Some("W9"));
        assert!(!p.newly_started);

        retry.mailbox.renew_cause = Some(RenewCause::RefusedWatermark);
        assert_eq!(plan(&retry, NOW, &timing()).unwrap().watermark, None);

        let mut off = view(MailboxState::Off, Some(20));
        off.mailbox.sync = false;
        assert_eq!(plan(&off, NOW, &timing()), None);
    }

    #[test]
    fn the_scaled_clock_shrinks_the_watchdog() {
        let fast = Timing {
            clock: Clock::scaled(0.001),
            ..timing()
        };
        // 2 x 5 min at 1/1000 is 600 ms.
        let mut v = view(MailboxState::Active, None);
        v.subscription.as_mut().unwrap().last_notification_at =
            Some(NOW - time::Duration::milliseconds(500));
        assert_eq!(plan(&v, NOW, &fast), None);
        v.subscription.as_mut().unwrap().last_notification_at =
            Some(NOW - time::Duration::milliseconds(700));
        assert!(plan(&v, NOW, &fast).is_some());
    }

    #[test]
    fn retries_back_off_and_refusals_wait_an_hour() {
        let clock = Clock::real();
        let transient = SubscribeFailure::Transient {
            message: "timeout".into(),
            back_off: None,
        };
        assert_eq!(
            retry_after(&transient, 1, &clock, 0.0),
            (FIRST_BACKOFF, false)
        );
        assert_eq!(
            retry_after(&transient, 3, &clock, 0.0),
            (FIRST_BACKOFF * 4, false)
        );
        assert_eq!(
            retry_after(&transient, 40, &clock, 0.0),
            (MAX_BACKOFF, false)
        );
        let (jittered, _) = retry_after(&transient, 1, &clock, 0.99);
        assert!(jittered > FIRST_BACKOFF && jittered <= FIRST_BACKOFF.mul_f64(1.25));
        let hinted = SubscribeFailure::Transient {
            message: "429".into(),
            back_off: Some(Duration::from_secs(120)),
        };
        assert_eq!(
            retry_after(&hinted, 1, &clock, 0.0).0,
            Duration::from_secs(120)
        );
        let refused = SubscribeFailure::Refused("ErrorNonExistentMailbox".into());
        assert_eq!(retry_after(&refused, 1, &clock, 0.0), (FAILED_RETRY, true));
        assert_eq!(
            retry_after(&refused, 1, &Clock::scaled(0.001), 0.0),
            (Duration::from_millis(3600), true)
        );
        let busy = SubscribeFailure::ServerBusy {
            message: "busy".into(),
            back_off: Duration::from_millis(5000),
        };
        assert_eq!(
            retry_after(&busy, 1, &clock, 0.0),
            (Duration::from_millis(5000), false)
        );
    }
}
