//! Metric helpers shared by the gateway and the worker: the text exposition, the small HTTP
//! listener that serves `/metrics` and `/healthz` apart from the public listener, build info.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// `pushgate_build_info{version, part}` = 1, registered by each part.
pub fn build_info(part: &str) -> prometheus::Result<IntGaugeVec> {
    let info = IntGaugeVec::new(
        Opts::new(
            "pushgate_build_info",
            "pushgate version running (always 1).",
        ),
        &["version", "part"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), part])
        .set(1);
    Ok(info)
}

/// Prometheus text format of a registry; an encoding failure yields what was encoded so far.
pub fn render_registry(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8192);
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::error!(error = %e, "encoding metrics");
    }
    out
}

/// Serves `GET /metrics` and `GET /healthz` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Registry,
    healthy: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let metrics_registry = registry.clone();
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = render_registry(&metrics_registry);
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let ok = healthy();
                async move {
                    if ok {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n")
                    }
                }
            }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds a metrics listener; separate so callers learn the bound address before serving.
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
