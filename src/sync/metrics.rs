//! The sync step's metrics, registered in the worker's registry: events by outcome, the lag from
//! an event's arrival to its processing, calendar writes by operation and cause, reservations
//! changed by cause, dead letters and the outbox depth.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use super::decide::{CHANGE_CAUSES, DECISION_OUTCOMES};
use crate::store::SyncBacklog;

/// Outcomes of events besides the decisions': no item to look at (heartbeats, folder events),
/// a failed attempt (retried), a dead letter.
pub const OTHER_OUTCOMES: [&str; 3] = ["no_item_work", "failed", "dead"];

/// Every `(operation, cause)` of `pushgate_sync_ews_writes_total`.
pub const WRITES: [(&str, &str); 6] = [
    ("CreateItem", "web_create"),
    ("UpdateItem", "web_change"),
    ("UpdateItem", "conflict_retry"),
    ("UpdateItem", "found_item_repair"),
    ("DeleteItem", "web_cancel"),
    ("DeleteItem", "found_item_cancel"),
];

pub struct SyncMetrics {
    events: IntCounterVec,
    lag: Histogram,
    writes: IntCounterVec,
    changed: IntCounterVec,
    dead_letters: IntGauge,
    outbox_depth: IntGauge,
    resyncs: IntCounterVec,
}

impl SyncMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "pushgate_sync_events_total",
                "Stored events the sync step handled, by outcome",
            ),
            &["outcome"],
        )?;
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "pushgate_sync_lag_seconds",
                "From an event's arrival at the worker to the end of its processing",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "pushgate_sync_ews_writes_total",
                "Calendar writes sent to Exchange, by operation and cause",
            ),
            &["operation", "cause"],
        )?;
        let changed = IntCounterVec::new(
            Opts::new(
                "pushgate_reservations_changed_total",
                "Reservations the sync step changed from what Exchange showed, by cause",
            ),
            &["cause"],
        )?;
        let dead_letters = IntGauge::new(
            "pushgate_sync_dead_letters",
            "Events parked as dead letters (pushgate events list --dead)",
        )?;
        let outbox_depth = IntGauge::new(
            "pushgate_sync_outbox_depth",
            "Calendar writes waiting in the outbox (given-up ones not counted)",
        )?;
        let resyncs = IntCounterVec::new(
            Opts::new(
                "pushgate_sync_resyncs_total",
                "Calendar resynchronisations, by result",
            ),
            &["result"],
        )?;
        for outcome in DECISION_OUTCOMES.iter().chain(OTHER_OUTCOMES.iter()) {
            events.with_label_values(&[outcome]);
        }
        for (operation, cause) in WRITES {
            writes.with_label_values(&[operation, cause]);
        }
        for cause in CHANGE_CAUSES {
            changed.with_label_values(&[cause]);
        }
        for result in ["ok", "failed"] {
            resyncs.with_label_values(&[result]);
        }
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(changed.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(outbox_depth.clone()))?;
        registry.register(Box::new(resyncs.clone()))?;
        Ok(Self {
            events,
            lag,
            writes,
            changed,
            dead_letters,
            outbox_depth,
            resyncs,
        })
    }

    pub fn event(&self, outcome: &str) {
        self.events.with_label_values(&[outcome]).inc();
    }

    pub fn lag(&self, seconds: f64) {
        self.lag.observe(seconds.max(0.0));
    }

    pub fn write(&self, operation: &str, cause: &str) {
        self.writes.with_label_values(&[operation, cause]).inc();
    }

    pub fn changed(&self, cause: &str) {
        self.changed.with_label_values(&[cause]).inc();
    }

    pub fn resync(&self, ok: bool) {
        self.resyncs
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn set_backlog(&self, backlog: &SyncBacklog) {
        self.dead_letters
            .set(i64::try_from(backlog.events_dead).unwrap_or(i64::MAX));
        self.outbox_depth
            .set(i64::try_from(backlog.outbox_pending).unwrap_or(i64::MAX));
    }
}
