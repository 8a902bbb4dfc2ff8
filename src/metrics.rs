//! Metric helpers shared by the gateway and the worker: the text exposition, the small HTTP
//! listener that serves `/metrics` and `/healthz` apart from the public listener, build info.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
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

/// The health check behind `/healthz`: `Ok` for 200, `Err(reason)` for 503 with the reason as body.
pub type HealthCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Registry,
    health: HealthCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = render_registry(&registry);
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
                let check = health();
                async move {
                    match check.await {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
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
