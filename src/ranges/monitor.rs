//! The updater's runs as the gateway shows them: when `pushgate ranges update` last ran, with
//! which exit status, and when it last succeeded (read from the state directory it writes).

use prometheus::{IntGauge, Registry};

use super::state::RunRecord;

/// `pushgate_ranges_update_*` gauges. Clones share the same series.
#[derive(Debug, Clone)]
pub struct UpdaterMetrics {
    last_run: IntGauge,
    last_success: IntGauge,
    last_exit_status: IntGauge,
}

impl UpdaterMetrics {
    /// Creates the gauges and registers them into `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            last_run: IntGauge::new(
                "pushgate_ranges_update_last_run_timestamp_seconds",
                "When `pushgate ranges update` last ran (Unix time; 0: no run recorded in [ranges] state_dir).",
            )?,
            last_success: IntGauge::new(
                "pushgate_ranges_update_last_success_timestamp_seconds",
                "When `pushgate ranges update` last ended with exit status 0, updated or already current (Unix time; 0: never).",
            )?,
            last_exit_status: IntGauge::new(
                "pushgate_ranges_update_last_exit_status",
                "Exit status of the last `pushgate ranges update` (0 ok, 1 other, 2 feed, 3 refused; -1: no run recorded).",
            )?,
        };
        registry.register(Box::new(metrics.last_run.clone()))?;
        registry.register(Box::new(metrics.last_success.clone()))?;
        registry.register(Box::new(metrics.last_exit_status.clone()))?;
        metrics.set(&RunRecord::default());
        Ok(metrics)
    }

    /// Shows `record`; what it lacks reads as 0 (timestamps) or -1 (exit status).
    pub fn set(&self, record: &RunRecord) {
        let (at, status) = record
            .last_run
            .map_or((0, -1), |(at, status)| (at, i64::from(status)));
        self.last_run.set(at);
        self.last_exit_status.set(status);
        self.last_success.set(record.last_success.unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(registry: &Registry, name: &str) -> f64 {
        let text = String::from_utf8(crate::metrics::render_registry(registry)).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn a_record_is_shown_and_its_absence_is_distinct() {
        let registry = Registry::new();
        let metrics = UpdaterMetrics::register(&registry).unwrap();
        assert_eq!(
            value(&registry, "pushgate_ranges_update_last_exit_status"),
            -1.0
        );
        assert_eq!(
            value(
                &registry,
                "pushgate_ranges_update_last_success_timestamp_seconds"
            ),
            0.0
        );
        metrics.set(&RunRecord {
            last_run: Some((1_700_003_600, 2)),
            last_success: Some(1_700_000_000),
        });
        assert_eq!(
            value(
                &registry,
                "pushgate_ranges_update_last_run_timestamp_seconds"
            ),
            1_700_003_600.0
        );
        assert_eq!(
            value(&registry, "pushgate_ranges_update_last_exit_status"),
            2.0
        );
        assert_eq!(
            value(
                &registry,
                "pushgate_ranges_update_last_success_timestamp_seconds"
            ),
            1_700_000_000.0
        );
    }
}
