//! The subscription manager's metrics, registered in the worker's registry: mailboxes by state,
//! Subscribe calls by result, renewals by cause, the silence of the most silent subscription and
//! the StatusFrequency it is judged against.

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
    status_frequency: Gauge,
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
        let status_frequency = Gauge::new(
            "pushgate_subscription_status_frequency_seconds",
            "StatusFrequency asked of Exchange ([subscriptions] status_frequency): a subscription silent for twice this is renewed",
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
        registry.register(Box::new(status_frequency.clone()))?;
        Ok(Self {
            mailboxes,
            calls,
            renewals,
            max_silence,
            status_frequency,
        })
    }

    /// The StatusFrequency in force, so that alerts compare the silence with twice it.
    pub fn set_status_frequency(&self, status_frequency: std::time::Duration) {
        self.status_frequency.set(status_frequency.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(registry: &Registry, name: &str) -> Option<f64> {
        let text = String::from_utf8(crate::metrics::render_registry(registry)).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn silence_and_the_status_frequency_it_is_judged_against() {
        let registry = Registry::new();
        let metrics = SubscriptionMetrics::new(&registry).unwrap();
        metrics.set_status_frequency(std::time::Duration::from_secs(300));
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        metrics.set_summary(
            &MailboxSummary {
                by_state: vec![(MailboxState::Active, 3)],
                oldest_heard_at: Some(now - time::Duration::seconds(700)),
            },
            now,
        );
        assert_eq!(
            value(&registry, "pushgate_subscription_status_frequency_seconds"),
            Some(300.0)
        );
        assert_eq!(
            value(&registry, "pushgate_subscription_max_silence_seconds"),
            Some(700.0)
        );
        metrics.set_summary(&MailboxSummary::default(), now);
        assert_eq!(
            value(&registry, "pushgate_subscription_max_silence_seconds"),
            Some(0.0)
        );
    }
}
