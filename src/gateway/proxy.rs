//! The pingora `ProxyHttp` glue for admitted notification requests: read the whole body before any
//! upstream is chosen, validate it, then forward it with clean headers and relay the worker's
//! answer. Every decision is made by the pure functions of `rules` and `notification`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use super::access_log::{now_rfc3339, AccessRecord};
use super::reject::{status_text, Reject};
use super::Shared;
use crate::notification;

/// What the listener learned about a request before handing it to pingora: carried to the proxy
/// phases through the session digest, because pingora creates the per-request context itself.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub client: IpAddr,
    pub peer: SocketAddr,
    pub request_id: String,
    /// When the request head was complete.
    pub head_done: Instant,
    pub method: String,
    pub target: String,
    pub tls: Option<String>,
    pub plain_listener: bool,
}

impl Admitted {
    /// Wraps the record in the digest form pingora carries from the connection to the request.
    pub fn into_digest(self) -> Option<ProxyDigest> {
        let marker = ResponseHeader::build(200, Some(0)).ok()?;
        Some(ProxyDigest::new(Box::new(marker), Some(Box::new(self))))
    }

    fn from_session(session: &Session) -> Option<Admitted> {
        session
            .digest()?
            .proxy_digest
            .as_ref()?
            .user_data
            .as_ref()?
            .downcast_ref::<Admitted>()
            .cloned()
    }
}

/// Per-request state across the proxy phases.
#[derive(Default)]
pub struct RequestCtx {
    admitted: Option<Admitted>,
    body_len: usize,
    rejected: Option<Reject>,
    upstream_started: Option<Instant>,
    upstream_finished: Option<Instant>,
    upstream_status: Option<u16>,
    /// Set by `fail_to_proxy`: (status sent, outcome, reason).
    failure: Option<(u16, &'static str, &'static str)>,
}

/// The gateway's proxy logic; one instance serves every admitted request.
pub struct GatewayProxy {
    pub(super) shared: Arc<Shared>,
    pub(super) upstream: SocketAddr,
    /// `Bearer <token>`, read once at start-up.
    pub(super) authorization: String,
    pub(super) upstream_timeout: Duration,
    pub(super) upstream_connect_timeout: Duration,
}

/// Hop-by-hop fields and fields only the gateway may set towards the worker.
const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "expect",
    "authorization",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
    // The answer to Exchange must never be compressed; the worker is asked for identity only.
    "accept-encoding",
];

enum BodyError {
    TooLarge,
    Read(Box<Error>),
}

impl GatewayProxy {
    /// Reads the whole body into pingora's retry buffer (which replays it upstream), enforcing the
    /// size limit while reading, so chunked bodies are bounded too.
    async fn read_body(&self, session: &mut Session) -> std::result::Result<Bytes, BodyError> {
        let max = self.shared.max_body_bytes;
        let mut total = 0usize;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    total += chunk.len();
                    if total > max {
                        return Err(BodyError::TooLarge);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(BodyError::Read(e)),
            }
        }
        if total == 0 {
            return Ok(Bytes::new());
        }
        session
            .as_downstream()
            .get_retry_buffer()
            .filter(|buffer| buffer.len() == total)
            // The buffer holds max_body_bytes (<= 64 KiB) by construction; if pingora ever kept
            // less, refusing is the safe answer.
            .ok_or(BodyError::TooLarge)
    }

    async fn send_rejection(&self, session: &mut Session, ctx: &mut RequestCtx, reject: Reject) {
        ctx.rejected = Some(reject);
        let request_id = ctx
            .admitted
            .as_ref()
            .map(|a| a.request_id.as_str())
            .unwrap_or("-");
        if let Err(e) =
            write_fixed(session, reject.status(), request_id, reject.extra_header()).await
        {
            tracing::debug!(error = %e, "client went away before the rejection was sent");
        }
    }
}

/// Writes a gateway-made answer: fixed text body, no server banner, connection closed after it.
async fn write_fixed(
    session: &mut Session,
    status: u16,
    request_id: &str,
    extra: Option<(&'static str, &'static str)>,
) -> Result<()> {
    let body = status_text(status);
    let mut response = ResponseHeader::build(status, Some(6))?;
    response.insert_header("Content-Type", "text/plain; charset=utf-8")?;
    response.insert_header("Content-Length", body.len().to_string())?;
    response.insert_header("Cache-Control", "no-store")?;
    response.insert_header("X-Content-Type-Options", "nosniff")?;
    response.insert_header("X-Request-Id", request_id)?;
    if let Some((name, value)) = extra {
        response.insert_header(name, value)?;
    }
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // One request per connection, as Exchange uses them; it also bounds what a slow client holds.
        session.set_keepalive(None);
        let Some(admitted) = Admitted::from_session(session) else {
            // Only the gateway's own listener creates sessions, and it always attaches the record.
            return Error::e_explain(ErrorType::InternalError, "session without admission record");
        };
        ctx.admitted = Some(admitted);
        session.as_downstream_mut().enable_retry_buffering();

        let body =
            match tokio::time::timeout(self.shared.body_timeout, self.read_body(session)).await {
                Err(_elapsed) => {
                    self.send_rejection(session, ctx, Reject::BodyTimeout).await;
                    return Ok(true);
                }
                Ok(Err(BodyError::TooLarge)) => {
                    self.send_rejection(session, ctx, Reject::BodyTooLarge)
                        .await;
                    return Ok(true);
                }
                Ok(Err(BodyError::Read(e))) => return Err(e),
                Ok(Ok(body)) => body,
            };
        ctx.body_len = body.len();
        self.shared.metrics.body_bytes.observe(body.len() as f64);

        if let Err(rejection) = notification::validate(&body, &self.shared.limits) {
            let request_id = ctx.admitted.as_ref().map(|a| a.request_id.clone());
            tracing::info!(
                request_id = request_id.as_deref().unwrap_or("-"),
                reason = rejection.reason(),
                detail = %rejection.detail,
                "notification body refused"
            );
            self.send_rejection(
                session,
                ctx,
                Reject::InvalidNotification(rejection.reason()),
            )
            .await;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(self.upstream_connect_timeout);
        peer.options.total_connection_timeout = Some(self.upstream_connect_timeout);
        peer.options.read_timeout = Some(self.upstream_timeout);
        peer.options.write_timeout = Some(self.upstream_timeout);
        // Pooled connections to the worker are reused for a while, not forever.
        peer.options.idle_timeout = Some(Duration::from_secs(30));
        ctx.upstream_started.get_or_insert_with(Instant::now);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Field names listed in Connection are hop-by-hop as well.
        let listed: Vec<String> = upstream_request
            .headers
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        for name in STRIPPED_REQUEST_HEADERS
            .iter()
            .copied()
            .chain(listed.iter().map(String::as_str))
        {
            upstream_request.remove_header(name);
        }
        let Some(admitted) = ctx.admitted.as_ref() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "forwarding without admission record",
            );
        };
        upstream_request.insert_header("Content-Length", ctx.body_len.to_string())?;
        upstream_request.insert_header("X-Forwarded-For", admitted.client.to_string())?;
        upstream_request.insert_header(
            "X-Forwarded-Proto",
            if admitted.plain_listener {
                "http"
            } else {
                "https"
            },
        )?;
        upstream_request.insert_header("X-Request-Id", admitted.request_id.as_str())?;
        upstream_request.insert_header("Authorization", self.authorization.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        // A pooled connection the worker had already closed fails before any answer: sending the
        // buffered body again is safe for notifications (the worker absorbs duplicates), whatever
        // pingora's rule for non-idempotent methods says.
        let mut e = e.more_context(format!("upstream {peer}"));
        if session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // One upstream only: a refused connection will be refused again; Exchange retries later.
        e.set_retry(false);
        e
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        // Every failure is counted, logged once by `logging` (with the request id) and written to
        // the access log; pingora's own error line would say it a second time.
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let (status, outcome, reason) = classify_failure(e);
        ctx.failure = Some((status, outcome, reason));
        ctx.upstream_finished.get_or_insert_with(Instant::now);
        if status > 0 {
            let request_id = ctx
                .admitted
                .as_ref()
                .map(|a| a.request_id.clone())
                .unwrap_or_else(|| "-".into());
            if let Err(write_error) = write_fixed(session, status, &request_id, None).await {
                tracing::debug!(error = %write_error, "client went away before the error answer");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX)
    where
        Self::CTX: Send + Sync,
    {
        let finished = Instant::now();
        let (status, outcome, reason) = if let Some(reject) = ctx.rejected {
            (reject.status(), "rejected", reject.reason())
        } else if let Some(failure) = ctx.failure {
            failure
        } else if let Some(status) = ctx.upstream_status {
            (status, "forwarded", "ok")
        } else if error.is_some() {
            (0, "aborted", "client_closed")
        } else {
            (0, "aborted", "unknown")
        };
        let upstream_ms = ctx.upstream_started.map(|started| {
            let end = ctx.upstream_finished.unwrap_or(finished);
            let seconds = end.duration_since(started).as_secs_f64();
            if outcome == "forwarded" {
                self.shared.metrics.upstream_duration.observe(seconds);
            }
            seconds * 1000.0
        });
        let Some(admitted) = ctx.admitted.as_ref() else {
            self.shared.metrics.count_request(outcome, reason, 0.0);
            return;
        };
        let seconds = finished.duration_since(admitted.head_done).as_secs_f64();
        self.shared.metrics.count_request(outcome, reason, seconds);
        let error_text = error.map(|e| e.to_string()).unwrap_or_default();
        match outcome {
            "forwarded" => {}
            // The worker is unreachable or slow: an operator must look.
            "upstream_error" | "internal_error" => tracing::error!(
                request_id = admitted.request_id.as_str(),
                client = %admitted.client,
                status,
                reason,
                error = error_text,
                "notification not delivered to the worker; Exchange will retry"
            ),
            _ => tracing::info!(
                request_id = admitted.request_id.as_str(),
                client = %admitted.client,
                status,
                outcome,
                reason,
                error = error_text,
                "request not forwarded"
            ),
        }
        self.shared.access_log.write(&AccessRecord {
            time: now_rfc3339(),
            request_id: &admitted.request_id,
            client: Some(admitted.client),
            peer: admitted.peer,
            method: admitted.method.clone(),
            path: admitted.target.clone(),
            status,
            outcome,
            reason,
            bytes_in: ctx.body_len as u64,
            bytes_out: session.as_downstream().body_bytes_sent() as u64,
            duration_ms: seconds * 1000.0,
            upstream_ms,
            tls: admitted.tls.as_deref(),
        });
    }
}

/// Maps a proxying error to (status sent, outcome, reason). Status 0: nothing can be sent.
pub fn classify_failure(e: &Error) -> (u16, &'static str, &'static str) {
    match e.esource() {
        ErrorSource::Upstream => match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                (504, "upstream_error", "upstream_timeout")
            }
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::BindError
            | ErrorType::SocketError => (502, "upstream_error", "upstream_unreachable"),
            _ => (502, "upstream_error", "upstream_failed"),
        },
        ErrorSource::Downstream => match e.etype() {
            ErrorType::ReadTimedout => (408, "rejected", "body_timeout"),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                (0, "aborted", "client_closed")
            }
            _ => (400, "rejected", "malformed_request"),
        },
        ErrorSource::Internal | ErrorSource::Unset => (500, "internal_error", "internal_error"),
    }
}
