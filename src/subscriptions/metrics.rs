//! The subscription manager's metrics, registered in the worker's registry: mailboxes by state,
//! Subscribe calls by result, renewals by cause, and the silence of the most silent subscription.

use prometheus::{Gauge, IntCounterVec, IntGaugeVec, Opts, Registry};
use time::OffsetDateTime;

use crate::store::{MailboxState, MailboxSummary, RenewCause};

/// Every value of `pushgate_subscribe_calls_total{result}`.
pub const CALL_RESULTS: [&str; 5] = [
    "ok",
    "invalid_watermark",
    "server_busy",
    "refused",
    "transient",
];

pub struct SubscriptionMetrics {
    mailboxes: IntGaugeVec,
    calls: IntCounterVec,
    renewals: IntCounterVec,
    max_silence: Gauge,
}

impl SubscriptionMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let mailboxes = IntGaugeVec::new(
            Opts::new("pushgate_mailboxes", "Mailboxes by subscription state"),
            &["state"],
        )?;
        let calls = IntCounterVec::new(
            Opts::new(
                "pushgate_subscribe_calls_total",
                "Subscribe calls to Exchange, by result",
            ),
            &["result"],
        )?;
        let renewals = IntCounterVec::new(
            Opts::new(
                "pushgate_subscription_renewals_total",
                "Subscriptions replaced, by cause",
            ),
            &["cause"],
        )?;
        let max_silence = Gauge::new(
            "pushgate_subscription_max_silence_seconds",
            "Seconds since the most silent active subscription was last heard from",
        )?;
        for state in MailboxState::ALL {
            mailboxes.with_label_values(&[state.as_str()]).set(0);
        }
        for result in CALL_RESULTS {
            calls.with_label_values(&[result]);
        }
        for cause in RenewCause::ALL {
            renewals.with_label_values(&[cause.as_str()]);
        }
        registry.register(Box::new(mailboxes.clone()))?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(renewals.clone()))?;
        registry.register(Box::new(max_silence.clone()))?;
        Ok(Self {
            mailboxes,
            calls,
            renewals,
            max_silence,
        })
    }

    pub fn subscribe_call(&self, result: &str) {
        self.calls.with_label_values(&[result]).inc();
    }

    pub fn renewal(&self, cause: RenewCause) {
        self.renewals.with_label_values(&[cause.as_str()]).inc();
    }

    pub fn set_summary(&self, summary: &MailboxSummary, now: OffsetDateTime) {
        for state in MailboxState::ALL {
            let count = summary
                .by_state
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.mailboxes
                .with_label_values(&[state.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let silence = summary
            .oldest_heard_at
            .map_or(0.0, |heard| (now - heard).as_seconds_f64().max(0.0));
        self.max_silence.set(silence);
    }
}
