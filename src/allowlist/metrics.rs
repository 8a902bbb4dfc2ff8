//! Prometheus metrics of the loaded allowlist.

use prometheus::{Gauge, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

/// Label value of `pushgate_allowlist_version` for a file whose header names no version.
pub const UNKNOWN_VERSION: &str = "unknown";

/// The allowlist's metrics. Clones share the same series.
#[derive(Debug, Clone)]
pub struct AllowlistMetrics {
    entries: IntGauge,
    version: IntGaugeVec,
    loaded_timestamp: Gauge,
    reload_failures: IntCounter,
    reloads: IntCounter,
}

impl AllowlistMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self::unregistered()?;
        registry.register(Box::new(metrics.entries.clone()))?;
        registry.register(Box::new(metrics.version.clone()))?;
        registry.register(Box::new(metrics.loaded_timestamp.clone()))?;
        registry.register(Box::new(metrics.reload_failures.clone()))?;
        registry.register(Box::new(metrics.reloads.clone()))?;
        Ok(metrics)
    }

    /// Metrics that are counted but exported nowhere (tools that load a list once).
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        Ok(Self {
            entries: IntGauge::new(
                "pushgate_allowlist_entries",
                "Ranges listed in the loaded allowlist file.",
            )?,
            version: IntGaugeVec::new(
                Opts::new(
                    "pushgate_allowlist_version",
                    "Feed version of the loaded allowlist (always 1; the version is the label).",
                ),
                &["version"],
            )?,
            loaded_timestamp: Gauge::new(
                "pushgate_allowlist_loaded_timestamp_seconds",
                "Unix time the loaded allowlist was read.",
            )?,
            reload_failures: IntCounter::new(
                "pushgate_allowlist_reload_failures_total",
                "Changed ranges files that were refused (unreadable, unparsable or empty); the old set stayed.",
            )?,
            reloads: IntCounter::new(
                "pushgate_allowlist_reloads_total",
                "Ranges files swapped in after start-up.",
            )?,
        })
    }

    /// Records a newly swapped-in list. `previous_version` is the label to retire.
    pub(crate) fn record_loaded(
        &self,
        entries: usize,
        version: Option<&str>,
        previous_version: Option<&str>,
        loaded_at_unix: f64,
    ) {
        let version = version.unwrap_or(UNKNOWN_VERSION);
        if let Some(previous) = previous_version {
            if previous != version {
                // The series may be absent when an earlier swap already retired it.
                let _ = self.version.remove_label_values(&[previous]);
            }
        }
        self.version.with_label_values(&[version]).set(1);
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.loaded_timestamp.set(loaded_at_unix);
    }

    pub(crate) fn record_reload(&self) {
        self.reloads.inc();
    }

    pub(crate) fn record_failure(&self) {
        self.reload_failures.inc();
    }

    /// Value of `pushgate_allowlist_reload_failures_total`.
    pub fn reload_failures_total(&self) -> u64 {
        self.reload_failures.get()
    }

    /// Value of `pushgate_allowlist_reloads_total`.
    pub fn reloads_total(&self) -> u64 {
        self.reloads.get()
    }
}
