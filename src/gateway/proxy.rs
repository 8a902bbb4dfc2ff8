//! The pingora `ProxyHttp` glue for admitted notification requests. The listener has read and
//! checked the whole request and hands pingora only the request it rebuilt from the checked parts;
//! here that body is buffered for a retry, the upstream request is written from the forwarding
//! allowlist, and the worker's answer is relayed. Every decision is made by the pure functions of
//! `rules`, `forward` and `reject`.

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
use super::forward::{self, CheckedRequest, GatewayFields};
use super::reject::{http_date_now, DirectAnswer};
use super::Shared;

/// What the listener learned about a request before handing it to pingora: carried to the proxy
/// phases through the session digest, because pingora creates the per-request context itself.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub client: IpAddr,
    pub peer: SocketAddr,
    pub request_id: String,
    /// When the request head was complete.
    pub head_done: Instant,
    /// Method and target as logged (cut to a fixed length).
    pub method: String,
    pub target: String,
    pub tls: Option<String>,
    /// The checked head and body length: all the upstream request is built from.
    pub checked: CheckedRequest,
    /// The client's connection stays open after this answer (trusted proxy, keep-alive).
    pub keep_alive: bool,
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
    upstream_started: Option<Instant>,
    upstream_finished: Option<Instant>,
    upstream_status: Option<u16>,
    /// Set by `fail_to_proxy`: (status sent, outcome, reason).
    failure: Option<(u16, &'static str, &'static str)>,
}

/// The gateway's proxy logic; one copy per serving runtime, each with its own pool of
/// connections to the worker.
#[derive(Clone)]
pub struct GatewayProxy {
    pub(super) shared: Arc<Shared>,
    pub(super) upstream: SocketAddr,
    /// `Bearer <token>`, replaced when the token file changes.
    pub(super) authorization: Arc<arc_swap::ArcSwap<String>>,
    pub(super) upstream_timeout: Duration,
    pub(super) upstream_connect_timeout: Duration,
}

impl GatewayProxy {
    /// Reads the rebuilt body (already in memory) into pingora's retry buffer, which replays it
    /// if a pooled connection to the worker turns out to be closed.
    async fn buffer_body(&self, session: &mut Session, expected: usize) -> Result<()> {
        let mut total = 0usize;
        while let Some(chunk) = session.read_request_body().await? {
            total += chunk.len();
        }
        let buffered = session
            .as_downstream()
            .get_retry_buffer()
            .map_or(0, |buffer| buffer.len());
        if total != expected || (expected > 0 && buffered != expected) {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("rebuilt body of {expected} bytes read as {total}, buffered {buffered}"),
            );
        }
        Ok(())
    }
}

/// Writes a gateway-made answer when forwarding fails, with the fields every direct answer has.
async fn write_fixed(session: &mut Session, status: u16, request_id: &str) -> Result<()> {
    let answer = DirectAnswer::status(status);
    let fields = answer.fields(request_id, &http_date_now());
    let mut response = ResponseHeader::build(status, Some(fields.len()))?;
    // Pingora sets `Date` and `Connection` itself, to the same values.
    for (name, value) in fields {
        response.insert_header(name, value)?;
    }
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from_static(answer.body.as_bytes())), true)
        .await
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let Some(admitted) = Admitted::from_session(session) else {
            // Only the gateway's own listener creates sessions, and it always attaches the record.
            session.set_keepalive(None);
            return Error::e_explain(ErrorType::InternalError, "session without admission record");
        };
        // One request per connection, as Exchange uses them, unless the listener keeps a trusted
        // proxy's connection for its next request; it also bounds what a client holds.
        if !admitted.keep_alive {
            session.set_keepalive(None);
        }
        let expected = admitted.checked.body_len;
        ctx.admitted = Some(admitted);
        session.as_downstream_mut().enable_retry_buffering();
        self.buffer_body(session, expected).await?;
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
        let Some(admitted) = ctx.admitted.as_ref() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "forwarding without admission record",
            );
        };
        // Written from scratch from the allowlist: nothing of the client's head but the checked
        // values, whatever it sent (Connection, Cookie, X_Forwarded_For, ...).
        let authorization = self.authorization.load();
        let fields = forward::upstream_fields(
            &admitted.checked,
            &GatewayFields {
                upstream_host: &self.shared.upstream_host,
                client: admitted.client,
                tls: admitted.tls.is_some(),
                request_id: &admitted.request_id,
                authorization: &authorization,
            },
        );
        let mut rebuilt = RequestHeader::build(
            "POST",
            admitted.checked.head.target.as_bytes(),
            Some(fields.len()),
        )?;
        for (name, value) in fields {
            rebuilt.insert_header(name, value)?;
        }
        *upstream_request = rebuilt;
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
        // Once the worker's answer has started to go out, nothing else can be written.
        if status > 0 && ctx.upstream_status.is_none() {
            let request_id = ctx
                .admitted
                .as_ref()
                .map(|a| a.request_id.clone())
                .unwrap_or_else(|| "-".into());
            if let Err(write_error) = write_fixed(session, status, &request_id).await {
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
        let (status, outcome, reason) = final_outcome(ctx.upstream_status, ctx.failure, error);
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
            "forwarded" if reason == "ok" => {}
            // The worker is unreachable or slow, or the gateway failed: an operator must look.
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
                "the worker answered, but the client went away before the answer reached it"
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
            bytes_in: admitted.checked.body_len as u64,
            bytes_out: session.as_downstream().body_bytes_sent() as u64,
            duration_ms: seconds * 1000.0,
            upstream_ms,
            tls: admitted.tls.as_deref(),
        });
    }
}

/// (status, outcome, reason) of a request pingora handled. Once the worker has answered, the
/// request was delivered whatever happens next: it counts as forwarded, with the worker's status,
/// and `client_closed` when the answer could not be written back.
pub fn final_outcome(
    upstream_status: Option<u16>,
    failure: Option<(u16, &'static str, &'static str)>,
    error: Option<&Error>,
) -> (u16, &'static str, &'static str) {
    match (upstream_status, failure) {
        (Some(status), None) => (status, "forwarded", "ok"),
        (Some(status), Some(_)) => (status, "forwarded", "client_closed"),
        (None, Some(failure)) => failure,
        (None, None) if error.is_some() => (0, "aborted", "client_closed"),
        (None, None) => (0, "internal_error", "no_answer"),
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
        // Pingora never reads the client (the listener lent it a write-only connection), so a
        // downstream error is the client going away while the answer is written.
        ErrorSource::Downstream => (0, "aborted", "client_closed"),
        ErrorSource::Internal | ErrorSource::Unset => (500, "internal_error", "internal_error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_say_what_the_worker_saw() {
        let error = Error::new(ErrorType::WriteError);
        assert_eq!(
            final_outcome(Some(200), None, None),
            (200, "forwarded", "ok")
        );
        assert_eq!(
            final_outcome(
                Some(200),
                Some((0, "aborted", "client_closed")),
                Some(&error)
            ),
            (200, "forwarded", "client_closed")
        );
        assert_eq!(
            final_outcome(
                None,
                Some((502, "upstream_error", "upstream_unreachable")),
                Some(&error)
            ),
            (502, "upstream_error", "upstream_unreachable")
        );
        assert_eq!(
            final_outcome(None, None, Some(&error)),
            (0, "aborted", "client_closed")
        );
    }

    #[test]
    fn failures_are_classified_by_side() {
        let upstream = |etype| classify_failure(&Error::new_up(etype));
        assert_eq!(upstream(ErrorType::ReadTimedout).0, 504);
        assert_eq!(upstream(ErrorType::ConnectRefused).0, 502);
        let downstream = Error::new_down(ErrorType::WriteError);
        assert_eq!(
            classify_failure(&downstream),
            (0, "aborted", "client_closed")
        );
        let internal = Error::new_in(ErrorType::InternalError);
        assert_eq!(classify_failure(&internal).1, "internal_error");
    }
}
