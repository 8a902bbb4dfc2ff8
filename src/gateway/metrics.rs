//! The gateway's Prometheus metrics (served by [`crate::metrics::serve_metrics`] on
//! `[gateway] metrics_listen`, apart from the public listener).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every metric the gateway itself owns (the allowlist registers its own into the same registry).
#[derive(Clone)]
pub struct GatewayMetrics {
    pub registry: Registry,
    /// `outcome`: forwarded, rejected, served, upstream_error, internal_error, aborted; `reason`: why.
    pub requests: IntCounterVec,
    /// Connections closed before TLS, by reason (source_not_allowed, proxy_protocol,
    /// source_connection_limit).
    pub connections_rejected: IntCounterVec,
    pub connections_accepted: IntCounter,
    pub connections_active: IntGauge,
    /// TLS handshakes that failed or timed out, by reason.
    pub tls_handshake_failures: IntCounterVec,
    /// Whole request, from the request head to the last byte of the answer, by outcome.
    pub request_duration: HistogramVec,
    /// From choosing the upstream to the end of its answer.
    pub upstream_duration: Histogram,
    /// Bodies read from clients (forwarded or refused after reading).
    pub body_bytes: Histogram,
    /// Certificate reloads, by result (reloaded, refused).
    pub tls_reloads: IntCounterVec,
    pub tls_certificate_loaded_timestamp: IntGauge,
    /// `notAfter` of the leaf certificate in use, set on every (re)load.
    pub tls_certificate_expiry_timestamp: IntGauge,
    /// Access-log lines lost because the destination did not keep up.
    pub access_log_dropped: IntCounter,
    /// Requests served on connections kept alive (trusted proxies), beyond the first.
    pub keepalive_requests: IntCounter,
}

/// Every value of `pushgate_gateway_tls_reloads_total{result}`.
pub const TLS_RELOAD_RESULTS: [&str; 2] = ["reloaded", "refused"];
/// Every value of `pushgate_gateway_connections_rejected_total{reason}`.
pub const CONNECTION_REJECT_REASONS: [&str; 3] = [
    "source_not_allowed",
    "proxy_protocol",
    "source_connection_limit",
];
/// Every reason of `pushgate_gateway_requests_total{outcome="upstream_error"}`
/// (see `upstream::ForwardError::status_and_reason`).
pub const UPSTREAM_ERROR_REASONS: [&str; 3] = [
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_failed",
];

fn latency_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
}

impl GatewayMetrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "pushgate_gateway_requests_total",
                "Requests by outcome (forwarded, rejected, served, upstream_error, internal_error, aborted) and reason.",
            ),
            &["outcome", "reason"],
        )?;
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "pushgate_gateway_connections_rejected_total",
                "Connections closed before the TLS handshake, by reason.",
            ),
            &["reason"],
        )?;
        let connections_accepted = IntCounter::new(
            "pushgate_gateway_connections_accepted_total",
            "Connections admitted by the source filter.",
        )?;
        let connections_active = IntGauge::new(
            "pushgate_gateway_connections_active",
            "Connections being served now.",
        )?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "pushgate_gateway_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason (error, timeout).",
            ),
            &["reason"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "pushgate_gateway_request_duration_seconds",
                "Time from the complete request head to the end of the answer, by outcome.",
            )
            .buckets(latency_buckets()),
            &["outcome"],
        )?;
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "pushgate_gateway_upstream_duration_seconds",
                "Time the worker took to answer a forwarded notification.",
            )
            .buckets(latency_buckets()),
        )?;
        let body_bytes = Histogram::with_opts(
            HistogramOpts::new(
                "pushgate_gateway_request_body_bytes",
                "Size of request bodies read.",
            )
            .buckets(vec![
                256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
            ]),
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "pushgate_gateway_tls_reloads_total",
                "Certificate file changes seen, by result (reloaded, refused).",
            ),
            &["result"],
        )?;
        let tls_certificate_loaded_timestamp = IntGauge::new(
            "pushgate_gateway_tls_certificate_loaded_timestamp_seconds",
            "When the certificate in use was loaded (Unix time).",
        )?;
        let tls_certificate_expiry_timestamp = IntGauge::new(
            "pushgate_gateway_tls_certificate_expiry_timestamp_seconds",
            "When the certificate in use expires (its notAfter, Unix time).",
        )?;
        let access_log_dropped = IntCounter::new(
            "pushgate_gateway_access_log_dropped_total",
            "Access-log lines dropped because the destination did not keep up.",
        )?;
        let keepalive_requests = IntCounter::new(
            "pushgate_gateway_keepalive_requests_total",
            "Requests read from a connection kept alive after an earlier request (trusted proxies).",
        )?;
        let build_info = crate::metrics::build_info("gateway")?;

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(connections_rejected.clone()))?;
        registry.register(Box::new(connections_accepted.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(body_bytes.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        registry.register(Box::new(tls_certificate_loaded_timestamp.clone()))?;
        registry.register(Box::new(tls_certificate_expiry_timestamp.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        registry.register(Box::new(keepalive_requests.clone()))?;
        registry.register(Box::new(build_info))?;
        // The series the alerting rules watch exist from the start at 0, so that `increase()`
        // sees their first event (a series born at 1 shows no increase) and dashboards no gap.
        for result in TLS_RELOAD_RESULTS {
            tls_reloads.with_label_values(&[result]);
        }
        for reason in CONNECTION_REJECT_REASONS {
            connections_rejected.with_label_values(&[reason]);
        }
        for reason in UPSTREAM_ERROR_REASONS {
            requests.with_label_values(&["upstream_error", reason]);
        }
        Ok(Self {
            registry,
            requests,
            connections_rejected,
            connections_accepted,
            connections_active,
            tls_handshake_failures,
            request_duration,
            upstream_duration,
            body_bytes,
            tls_reloads,
            tls_certificate_loaded_timestamp,
            tls_certificate_expiry_timestamp,
            access_log_dropped,
            keepalive_requests,
        })
    }

    /// Counts one finished request and its duration.
    pub fn count_request(&self, outcome: &str, reason: &str, seconds: f64) {
        self.requests.with_label_values(&[outcome, reason]).inc();
        self.request_duration
            .with_label_values(&[outcome])
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_series_exist_at_zero_from_the_start() {
        let metrics = GatewayMetrics::new().unwrap();
        let text = String::from_utf8(crate::metrics::render_registry(&metrics.registry)).unwrap();
        let mut expected: Vec<String> = TLS_RELOAD_RESULTS
            .iter()
            .map(|r| format!("pushgate_gateway_tls_reloads_total{{result=\"{r}\"}} 0"))
            .collect();
        expected.extend(
            CONNECTION_REJECT_REASONS.iter().map(|r| {
                format!("pushgate_gateway_connections_rejected_total{{reason=\"{r}\"}} 0")
            }),
        );
        expected.extend(UPSTREAM_ERROR_REASONS.iter().map(|r| {
            format!(
                "pushgate_gateway_requests_total{{outcome=\"upstream_error\",reason=\"{r}\"}} 0"
            )
        }));
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
