//! EWS request metrics, registered in a registry the caller passes in. One observation per HTTP
//! request sent to Exchange (a retried read counts each attempt, so throttling shows).

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::error::EwsError;
use super::model::Operation;

#[derive(Clone)]
pub struct EwsMetrics {
    duration: HistogramVec,
    requests: IntCounterVec,
}

impl EwsMetrics {
    /// `pushgate_ews_request_duration_seconds{operation}` and
    /// `pushgate_ews_requests_total{operation,result}` (result `ok` or the error's code).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "pushgate_ews_request_duration_seconds",
                "Time from sending an EWS request to reading its answer.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["operation"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "pushgate_ews_requests_total",
                "EWS requests by operation and result (ok, or the EWS ResponseCode, http_NNN, timeout, ...).",
            ),
            &["operation", "result"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        Ok(EwsMetrics { duration, requests })
    }

    pub(crate) fn record(&self, operation: Operation, elapsed: Duration, error: Option<&EwsError>) {
        self.duration
            .with_label_values(&[operation.name()])
            .observe(elapsed.as_secs_f64());
        let result = error.map_or("ok", EwsError::code);
        self.requests
            .with_label_values(&[operation.name(), result])
            .inc();
    }
}
