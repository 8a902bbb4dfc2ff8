//! The gateway's own accept loop. Per connection: the source filter before anything is read, the
//! PROXY header from trusted balancers, the TLS handshake under a deadline, the request head read
//! under a total deadline and checked by the rules, then the body read under its own deadline,
//! exactly as long as the head announced, and checked by the validator. Every refusal is answered
//! here. Only a notification that passed every check is forwarded, as a request rebuilt from the
//! checked parts, on the serving runtime's pool of connections to the worker (`upstream`).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BufMut, BytesMut};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::access_log::{now_rfc3339, AccessRecord};
use super::body::{ChunkedDecoder, ChunkedError, Progress};
use super::client::{canonical, resolve_client};
use super::forward::{self, CheckedRequest, GatewayFields};
use super::limits::SourceAtLimit;
use super::proxy_protocol::{read_header, ProxiedPeer};
use super::reject::{http_date_now, DirectAnswer, Reject};
use super::rules::{self, BodyFraming, Head, Route};
use super::upstream::WorkerPool;
use super::Shared;
use crate::notification;

/// Largest request head read; Exchange sends about 400 bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields read.
const MAX_HEADERS: usize = 64;
/// After answering a refusal, unread request bytes are drained this long (at most) so the client
/// sees the answer instead of a connection reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// How a connection's source is admitted: is the peer a load balancer whose PROXY header or
/// `X-Forwarded-For` is believed? Every other admitted peer speaks for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerClass {
    TrustedProxy,
    /// In the allowlist, or an administrators' network (which may only look).
    Direct,
}

/// The source filter: decides on the peer address alone, before TLS, through pingora's
/// `ConnectionFilter` interface.
#[derive(Debug, Clone)]
pub struct SourceFilter {
    shared: Arc<Shared>,
}

impl SourceFilter {
    /// Trusted proxies, the allowlist and the probe networks may connect; nobody else.
    pub fn admits(&self, ip: IpAddr) -> bool {
        // Each list looks `::ffff:a.b.c.d` up as IPv4 itself.
        self.shared.trusted.contains(ip)
            || self.shared.admits(ip)
            || self.shared.probes.contains(ip)
    }
}

#[async_trait]
impl ConnectionFilter for SourceFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        addr.is_some_and(|addr| self.admits(addr.ip()))
    }
}

/// One listening socket and how it speaks.
pub struct ListenerSpec {
    pub listener: TcpListener,
    /// `None`: the plain-HTTP listener.
    pub tls: Option<Arc<Acceptor>>,
}

/// Accepts connections until `shutdown` turns true. Each connection holds a permit of
/// `connections` for its lifetime, so at most that many are served at once.
pub async fn accept_loop(
    spec: ListenerSpec,
    shared: Arc<Shared>,
    pool: Arc<WorkerPool>,
    connections: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let filter = SourceFilter {
        shared: shared.clone(),
    };
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => return,
            },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = spec.listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !filter.should_accept(Some(&peer)).await {
            shared
                .metrics
                .connections_rejected
                .with_label_values(&["source_not_allowed"])
                .inc();
            shared.connection_log.note("source_not_allowed", peer);
            // Reset rather than a graceful close: nothing is owed to an unlisted source. A zero
            // linger never blocks on drop (the deprecation is about non-zero values).
            #[allow(deprecated)]
            let _ = tcp.set_linger(Some(Duration::ZERO));
            drop(tcp);
            continue;
        }
        // The short trusted-proxy list is scanned again rather than the allowlist looked up twice.
        let class = if shared.trusted.contains(peer.ip()) {
            PeerClass::TrustedProxy
        } else {
            PeerClass::Direct
        };
        // A balancer speaks for many clients: its connections are counted per client once a
        // PROXY header names one, and otherwise only by `max_connections`.
        let slot = match class {
            PeerClass::TrustedProxy => None,
            PeerClass::Direct => match shared.source_limits.open_connection(peer.ip()) {
                Ok(slot) => slot,
                Err(SourceAtLimit) => {
                    refuse_at_connection_limit(tcp, peer, &shared);
                    continue;
                }
            },
        };
        shared.metrics.connections_accepted.inc();
        let shared = shared.clone();
        let pool = pool.clone();
        let tls = spec.tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            shared.metrics.connections_active.inc();
            serve_connection(tcp, peer, class, tls, &shared, &pool, &shutdown).await;
            shared.metrics.connections_active.dec();
        });
        // One connection per turn, as nginx without `multi_accept`: the connections this runtime
        // already serves run before it takes another, so a busy runtime leaves the next ones to
        // an idle one instead of queueing handshakes behind each other.
        tokio::task::yield_now().await;
    }
}

/// Resets a connection from a source that already holds `max_connections_per_source`: before
/// TLS, like an unlisted source, so it costs the gateway no handshake.
fn refuse_at_connection_limit(tcp: TcpStream, peer: SocketAddr, shared: &Shared) {
    shared
        .metrics
        .connections_rejected
        .with_label_values(&["source_connection_limit"])
        .inc();
    shared.connection_log.note("source_connection_limit", peer);
    #[allow(deprecated)]
    let _ = tcp.set_linger(Some(Duration::ZERO));
    drop(tcp);
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    class: PeerClass,
    tls: Option<Arc<Acceptor>>,
    shared: &Arc<Shared>,
    pool: &Arc<WorkerPool>,
    shutdown: &watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let fd = tcp.as_raw_fd();
    let mut l4 = L4Stream::from(tcp);
    l4.set_socket_digest(SocketDigest::from_raw_fd(fd));

    let deadline = Instant::now() + shared.handshake_timeout;
    // The address the connection speaks for, as far as the transport can tell.
    // Held for the life of the connection when a PROXY header names the client.
    let mut _proxied_slot = None;
    let source = if shared.proxy_protocol && class == PeerClass::TrustedProxy {
        let Some(source) = proxied_source(&mut l4, peer, deadline, shared).await else {
            return;
        };
        if source != peer.ip() {
            // The client the balancer named holds its share of connections, as if direct.
            match shared.source_limits.open_connection(source) {
                Ok(slot) => _proxied_slot = slot,
                Err(SourceAtLimit) => {
                    shared
                        .metrics
                        .connections_rejected
                        .with_label_values(&["source_connection_limit"])
                        .inc();
                    shared
                        .connection_log
                        .note("source_connection_limit", SocketAddr::new(source, 0));
                    return;
                }
            }
        }
        source
    } else {
        peer.ip()
    };
    let Some(mut stream) = handshake(l4, tls, peer, deadline, shared).await else {
        return;
    };
    // rustls names versions `TLSv1_3`; operators read `TLSv1.3`.
    let tls_version = stream.get_ssl_digest().map(|d| d.version.replace('_', "."));

    let connection = Connection {
        peer,
        source,
        class,
        tls: tls_version,
    };
    // One request per connection, as Exchange uses them: whatever a client sends after its
    // request is never read as a request. A trusted proxy (a balancer pooling its connections)
    // may send up to `keepalive_max_requests`, one after another: the next request is read only
    // once the previous one is answered, and passes every rule on its own.
    let max_requests = match class {
        PeerClass::TrustedProxy => shared.keepalive_max_requests.max(1),
        PeerClass::Direct => 1,
    };
    let mut buf = BytesMut::new();
    let mut served = 0u32;
    loop {
        served += 1;
        if served > 1 {
            shared.metrics.keepalive_requests.inc();
        }
        let may_keep_alive = served < max_requests && !*shutdown.borrow();
        let Some(answered) =
            serve_request(stream, buf, &connection, may_keep_alive, shared, pool).await
        else {
            return;
        };
        stream = answered.stream;
        let Some(next) = answered.next else {
            // `linger` discards whatever the client still sends.
            linger(&mut stream).await;
            return;
        };
        buf = next;
        if buf.is_empty() {
            match wait_for_next_request(&mut stream, &mut buf, shared, shutdown).await {
                NextRequest::Arrived => {}
                NextRequest::Closed => return,
                NextRequest::Idle => {
                    let _ = stream.shutdown().await;
                    return;
                }
            }
        }
    }
}

/// How a kept-alive connection's wait for its next request ended.
enum NextRequest {
    /// Bytes of the next request are in the buffer.
    Arrived,
    /// The client closed (or broke) the connection.
    Closed,
    /// Nothing within `keepalive_idle_timeout`, or the gateway is shutting down.
    Idle,
}

async fn wait_for_next_request(
    stream: &mut Stream,
    buf: &mut BytesMut,
    shared: &Shared,
    shutdown: &watch::Receiver<bool>,
) -> NextRequest {
    let mut shutdown = shutdown.clone();
    tokio::select! {
        read = tokio::time::timeout(shared.keepalive_idle_timeout, stream.read_buf(buf)) => match read {
            Ok(Ok(0)) | Ok(Err(_)) => NextRequest::Closed,
            Ok(Ok(_)) => NextRequest::Arrived,
            Err(_elapsed) => NextRequest::Idle,
        },
        _ = shutdown.changed() => NextRequest::Idle,
    }
}

/// What the transport established about a connection, for every request on it.
struct Connection {
    peer: SocketAddr,
    /// The address the connection speaks for, as far as the transport can tell (PROXY header).
    source: IpAddr,
    class: PeerClass,
    /// Negotiated TLS version, `None` on the plain listener.
    tls: Option<String>,
}

/// A request that was answered: the connection, and whether it carries another request.
struct Answered {
    stream: Stream,
    /// `Some` only when the answer kept the connection open (`Connection: keep-alive`) for a next
    /// request, which then starts with these bytes, read after the end of this one. That needs
    /// the request's end to be known because its body was read as framed: after a refused head or
    /// an unfinished body, the bytes that follow may be that request's own body, and the
    /// connection carries nothing more.
    next: Option<BytesMut>,
}

/// Reads one request (starting with the bytes already in `buf`), checks it, and answers it: the
/// gateway itself for refusals and its pages, the worker (through the pool) for a notification
/// that passed every check. Reads stop exactly at the end of the request. `may_keep_alive`: the
/// connection may carry another request after this one (a trusted proxy's, below its request
/// bound); the answer keeps it open only if, besides, the request's end is known and the client
/// did not ask to close. `None` when nobody is left to answer.
async fn serve_request(
    mut stream: Stream,
    mut buf: BytesMut,
    connection: &Connection,
    may_keep_alive: bool,
    shared: &Arc<Shared>,
    pool: &Arc<WorkerPool>,
) -> Option<Answered> {
    let peer = connection.peer;
    let head_deadline = Instant::now() + shared.header_timeout;
    let (decision, head_len) = match tokio::time::timeout_at(
        head_deadline.into(),
        read_and_decide(
            &mut stream,
            &mut buf,
            connection.source,
            connection.class,
            shared,
        ),
    )
    .await
    {
        Ok(Ok(decided)) => decided,
        Ok(Err(HeadFailure::ClosedEarly)) => return None,
        Ok(Err(HeadFailure::Io(e))) => {
            tracing::debug!(%peer, error = %e, "reading request head");
            return None;
        }
        // The head did not even parse: answered like any refusal, without a route.
        Ok(Err(HeadFailure::Refused(reject))) => (
            Decision {
                method: String::new(),
                target: String::new(),
                client: Some(connection.source),
                outcome: Err(reject),
                wants_close: true,
            },
            buf.len(),
        ),
        Err(_elapsed) => {
            // Not answered (a slow client is cut off), but counted, logged (rate-limited, as a
            // scan of slow connections could flood the log) and written to the access log.
            shared.connection_log.note("header_timeout", peer);
            let seen = Seen {
                peer,
                client: Some(connection.source),
                method: "",
                target: "",
                request_id: new_request_id(),
                tls: connection.tls.as_deref(),
                head_done: Instant::now(),
            };
            let reply = Reply {
                answer: None,
                outcome: "rejected",
                reason: "header_timeout",
                detail: None,
            };
            finish_direct(&mut stream, &seen, reply, 0, shared).await;
            return None;
        }
    };
    let _head = buf.split_to(head_len);
    let seen = Seen {
        peer,
        client: decision.client,
        method: &decision.method,
        target: &decision.target,
        request_id: new_request_id(),
        tls: connection.tls.as_deref(),
        head_done: Instant::now(),
    };
    let answered = |stream, next| Some(Answered { stream, next });
    // Whether a request whose end is known leaves the connection open for the next one.
    let keep_alive = may_keep_alive && !decision.wants_close;

    let (head, client) = match (&decision.outcome, decision.client) {
        (Ok(Route::Notification(head)), Some(client)) => (head.clone(), client),
        (outcome, _) => {
            let reply = Reply::for_decision(outcome, shared);
            finish_direct(&mut stream, &seen, reply, 0, shared).await;
            return answered(stream, None);
        }
    };
    if head.expect_continue
        && stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        let reply = Reply::gone("client went away before its body was read");
        finish_direct(&mut stream, &seen, reply, 0, shared).await;
        return None;
    }

    let body_deadline = seen.head_done + shared.body_timeout;
    let read = tokio::time::timeout_at(
        body_deadline.into(),
        read_body(&mut stream, &mut buf, head.framing, shared.max_body_bytes),
    )
    .await;
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(BodyFailure::Refused(reject, detail))) => {
            finish_direct(
                &mut stream,
                &seen,
                Reply::refused(reject, detail),
                0,
                shared,
            )
            .await;
            return answered(stream, None);
        }
        Ok(Err(BodyFailure::Gone(e))) => {
            let reply = Reply::gone(format!("reading the body: {e}"));
            finish_direct(&mut stream, &seen, reply, 0, shared).await;
            return None;
        }
        Err(_elapsed) => {
            let reply = Reply::refused(Reject::BodyTimeout, None);
            finish_direct(&mut stream, &seen, reply, 0, shared).await;
            return answered(stream, None);
        }
    };
    let bytes_in = body.len() as u64;
    shared.metrics.body_bytes.observe(body.len() as f64);
    if let Err(rejection) = notification::validate(&body, &shared.limits) {
        let reject = Reject::InvalidNotification(rejection.reason());
        let mut reply = Reply::refused(reject, Some(rejection.detail));
        if let Some(answer) = reply.answer.as_mut() {
            answer.keep_alive = keep_alive;
        }
        finish_direct(&mut stream, &seen, reply, bytes_in, shared).await;
        return answered(stream, keep_alive.then_some(buf));
    }

    let checked = CheckedRequest {
        head,
        body_len: body.len(),
    };
    let delivered = deliver(
        &mut stream,
        &seen,
        client,
        &checked,
        &body,
        keep_alive,
        pool,
        shared,
    )
    .await;
    match delivered {
        Delivered::Answered { kept } => answered(stream, kept.then_some(buf)),
        Delivered::ClientGone => None,
    }
}

/// How forwarding an admitted notification ended for the client's connection.
enum Delivered {
    /// An answer was written (the worker's, or 502/504); `kept`: the connection stays open.
    Answered { kept: bool },
    /// The client went away while its answer was written.
    ClientGone,
}

/// Forwards an admitted notification to the worker and writes the answer back: the worker's,
/// relayed, or 502/504 when it could not be reached or did not answer in time. Counts and logs it
/// like every other request.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    stream: &mut Stream,
    seen: &Seen<'_>,
    client: IpAddr,
    checked: &CheckedRequest,
    body: &[u8],
    keep_alive: bool,
    pool: &WorkerPool,
    shared: &Shared,
) -> Delivered {
    let authorization = shared.authorization.load();
    let request = forward::upstream_request(
        checked,
        &GatewayFields {
            upstream_host: &shared.upstream_host,
            client,
            tls: seen.tls.is_some(),
            request_id: &seen.request_id,
            authorization: &authorization,
        },
        body,
    );
    let upstream_started = Instant::now();
    let forwarded = pool.forward(&request).await;
    let upstream_seconds = upstream_started.elapsed().as_secs_f64();
    drop(request);
    let date = http_date_now();
    // (the bytes for the client, status, outcome, reason, length of the body in those bytes)
    let (answer, status, outcome, mut reason, body_len) = match &forwarded {
        Ok(answer) => {
            shared.metrics.upstream_duration.observe(upstream_seconds);
            let bytes = forward::relayed_answer(answer, &seen.request_id, &date, keep_alive);
            (bytes, answer.status, "forwarded", "ok", answer.body.len())
        }
        Err(e) => {
            let (status, reason) = e.status_and_reason();
            // The worker is unreachable or slow: an operator must look.
            tracing::error!(
                request_id = seen.request_id.as_str(),
                client = %client,
                status,
                reason,
                error = %e,
                "notification not delivered to the worker; Exchange will retry"
            );
            let direct = DirectAnswer::status(status);
            let bytes = direct.wire(&seen.request_id, &date);
            (
                bytes.into(),
                status,
                "upstream_error",
                reason,
                direct.sent_body().len(),
            )
        }
    };
    let kept = keep_alive && forwarded.is_ok();
    let written = async {
        stream.write_all(&answer).await?;
        stream.flush().await
    }
    .await;
    let bytes_out = if written.is_ok() { body_len as u64 } else { 0 };
    if let (Err(e), Ok(_)) = (&written, &forwarded) {
        // Delivered all the same: the worker has the notification.
        reason = "client_closed";
        tracing::info!(
            request_id = seen.request_id.as_str(),
            client = %client,
            status,
            error = %e,
            "the worker answered, but the client went away before the answer reached it"
        );
    }
    seen.record(
        shared,
        Ended {
            client: Some(client),
            status,
            outcome,
            reason,
            bytes_in: checked.body_len as u64,
            bytes_out,
            upstream_ms: Some(upstream_seconds * 1000.0),
        },
    );
    if written.is_err() {
        Delivered::ClientGone
    } else {
        Delivered::Answered { kept }
    }
}

/// Reads a trusted balancer's PROXY header; the client it names (or the balancer itself for
/// `LOCAL`), `None` when the connection must be closed.
async fn proxied_source(
    l4: &mut L4Stream,
    peer: SocketAddr,
    deadline: Instant,
    shared: &Shared,
) -> Option<IpAddr> {
    let refuse = |reason: &'static str, detail: &str| {
        shared
            .metrics
            .connections_rejected
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(%peer, detail, "connection from trusted proxy refused");
    };
    match tokio::time::timeout_at(deadline.into(), read_header(&mut *l4)).await {
        Ok(Ok((proxied, leftover))) => {
            l4.rewind(&leftover);
            let ProxiedPeer::Client(client) = proxied else {
                return Some(peer.ip());
            };
            if shared.admits(client.ip()) || shared.probes.contains(client.ip()) {
                return Some(client.ip());
            }
            shared
                .metrics
                .connections_rejected
                .with_label_values(&["source_not_allowed"])
                .inc();
            shared.connection_log.note("source_not_allowed", client);
            None
        }
        Ok(Err(e)) => {
            refuse("proxy_protocol", &e.to_string());
            None
        }
        Err(_elapsed) => {
            refuse("proxy_protocol", "no PROXY header in time");
            None
        }
    }
}

/// Completes the TLS handshake (or takes the plain stream as is) before the deadline.
async fn handshake(
    l4: L4Stream,
    tls: Option<Arc<Acceptor>>,
    peer: SocketAddr,
    deadline: Instant,
    shared: &Shared,
) -> Option<Stream> {
    let Some(acceptor) = tls else {
        return Some(Box::new(l4));
    };
    let failure = match tokio::time::timeout_at(deadline.into(), acceptor.tls_handshake(l4)).await {
        Ok(Ok(tls_stream)) => return Some(Box::new(tls_stream)),
        Ok(Err(e)) => ("error", e.to_string()),
        Err(_elapsed) => ("timeout", "deadline passed".to_string()),
    };
    shared
        .metrics
        .tls_handshake_failures
        .with_label_values(&[failure.0])
        .inc();
    tracing::debug!(%peer, reason = failure.0, detail = failure.1, "TLS handshake failed");
    None
}

/// What the head said: the route (or refusal) and what the log needs.
struct Decision {
    method: String,
    target: String,
    client: Option<IpAddr>,
    outcome: Result<Route, Reject>,
    /// `Connection: close`, or HTTP/1.0 without `keep-alive`.
    wants_close: bool,
}

enum HeadFailure {
    /// The peer closed before sending a byte (port checks, health probes of the balancer).
    ClosedEarly,
    Io(std::io::Error),
    Refused(Reject),
}

/// Reads until the head is complete and applies the rules to it; the decision and the length of
/// the head in `buf` (what follows it is body, or more).
async fn read_and_decide(
    stream: &mut Stream,
    buf: &mut BytesMut,
    source: IpAddr,
    class: PeerClass,
    shared: &Shared,
) -> Result<(Decision, usize), HeadFailure> {
    // A kept-alive connection may already hold the whole next request (pipelined): look at what
    // is there before waiting for more.
    let mut read_first = buf.is_empty();
    loop {
        if read_first {
            let n = stream.read_buf(buf).await.map_err(HeadFailure::Io)?;
            if n == 0 {
                return if buf.is_empty() {
                    Err(HeadFailure::ClosedEarly)
                } else {
                    Err(HeadFailure::Refused(Reject::MalformedRequest))
                };
            }
        }
        read_first = true;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                if head_len > MAX_HEAD_BYTES {
                    return Err(HeadFailure::Refused(Reject::HeaderTooLarge));
                }
                rules::check_line_endings(&buf[..head_len]).map_err(HeadFailure::Refused)?;
                return Ok((decide(&request, source, class, shared), head_len));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(HeadFailure::Refused(Reject::HeaderTooLarge));
                }
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadFailure::Refused(Reject::HeaderTooLarge))
            }
            Err(httparse::Error::Version) => {
                return Err(HeadFailure::Refused(rules::version_refusal(buf)))
            }
            Err(_) => return Err(HeadFailure::Refused(Reject::MalformedRequest)),
        }
    }
}

/// Source admission, then the rules: unadmitted clients learn nothing about paths or methods.
fn decide(
    request: &httparse::Request<'_, '_>,
    source: IpAddr,
    class: PeerClass,
    shared: &Shared,
) -> Decision {
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default().as_bytes();
    let (method_logged, target_logged) = AccessRecord::method_and_target(method, target);
    let head = Head {
        method,
        target,
        minor_version: request.version.unwrap_or(1),
        headers: request.headers,
    };
    let forwarded = rules::find_all(&head, "x-forwarded-for");
    let client = if class == PeerClass::TrustedProxy && !shared.proxy_protocol {
        resolve_client(source, forwarded, &shared.trusted)
    } else {
        // A PROXY header already named the client, or the peer is not a trusted proxy: any
        // X-Forwarded-For it sent is ignored (and replaced when forwarding).
        Ok(canonical(source))
    };
    let outcome = client.and_then(|client| admit(client, &head, shared));
    Decision {
        method: method_logged,
        target: target_logged,
        client: client.ok(),
        outcome,
        wants_close: rules::client_wants_close(&head),
    }
}

fn admit(client: IpAddr, head: &Head<'_>, shared: &Shared) -> Result<Route, Reject> {
    let allowlisted = shared.admits(client);
    let probe = shared.probes.contains(client);
    // A trusted proxy speaking for itself (no forwarded client): its health checks may look.
    let balancer = shared.trusted.contains(client);
    if !allowlisted && !probe && !balancer {
        return Err(Reject::SourceNotAllowed);
    }
    if !shared.source_limits.admit_request(client, Instant::now()) {
        return Err(Reject::RateLimited);
    }
    let route = rules::route(head, &shared.rules)?;
    if !allowlisted && !route.open_to_probes() {
        return Err(if probe {
            Reject::ProbeCannotPost
        } else {
            Reject::SourceNotAllowed
        });
    }
    Ok(route)
}

/// 128 random bits as 32 hex digits, like a UUID without its dashes. From the thread's own
/// generator (seeded once from the system), so no system call per request.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

const CONFIRMATION_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Exchange notification endpoint</title></head><body><h1>Exchange notification endpoint</h1>\
<p>This address receives Exchange push notifications (EWS SendNotification, HTTP POST). \
It is reachable.</p></body></html>\n";

/// What the log and the access log say about a request, whoever answers it.
struct Seen<'a> {
    peer: SocketAddr,
    client: Option<IpAddr>,
    method: &'a str,
    target: &'a str,
    request_id: String,
    tls: Option<&'a str>,
    /// When the head was complete: durations count from here.
    head_done: Instant,
}

/// How a request ended, for its count in the metrics and its access log line.
struct Ended<'a> {
    client: Option<IpAddr>,
    status: u16,
    outcome: &'a str,
    reason: &'a str,
    bytes_in: u64,
    bytes_out: u64,
    upstream_ms: Option<f64>,
}

impl Seen<'_> {
    /// Counts the request and writes its access log line; durations end now.
    fn record(&self, shared: &Shared, ended: Ended<'_>) {
        let seconds = self.head_done.elapsed().as_secs_f64();
        shared
            .metrics
            .count_request(ended.outcome, ended.reason, seconds);
        shared.access_log.write(&AccessRecord {
            time: now_rfc3339(),
            request_id: &self.request_id,
            client: ended.client,
            peer: self.peer,
            method: self.method,
            path: self.target,
            status: ended.status,
            outcome: ended.outcome,
            reason: ended.reason,
            bytes_in: ended.bytes_in,
            bytes_out: ended.bytes_out,
            duration_ms: seconds * 1000.0,
            upstream_ms: ended.upstream_ms,
            tls: self.tls,
        });
    }
}

/// How the listener ends a request itself: the answer it writes (none when the client is gone),
/// and what the metrics and logs say.
struct Reply {
    answer: Option<DirectAnswer>,
    outcome: &'static str,
    reason: &'static str,
    detail: Option<String>,
}

impl Reply {
    fn refused(reject: Reject, detail: Option<String>) -> Self {
        Reply {
            answer: Some(DirectAnswer::refusal(reject)),
            outcome: "rejected",
            reason: reject.reason(),
            detail,
        }
    }

    /// The client reset or broke the connection: nobody is left to answer.
    fn gone(detail: impl Into<String>) -> Self {
        Reply {
            answer: None,
            outcome: "aborted",
            reason: "client_closed",
            detail: Some(detail.into()),
        }
    }

    fn served(answer: DirectAnswer, reason: &'static str) -> Self {
        Reply {
            answer: Some(answer),
            outcome: "served",
            reason,
            detail: None,
        }
    }

    /// The reply to a head the gateway answers itself; notifications never get here.
    fn for_decision(outcome: &Result<Route, Reject>, shared: &Shared) -> Self {
        match outcome {
            Err(reject) => Reply::refused(*reject, None),
            Ok(Route::Health { head_only }) if shared.healthy() => Reply::served(
                DirectAnswer {
                    body: "ok\n",
                    head_only: *head_only,
                    ..DirectAnswer::status(200)
                },
                "healthz",
            ),
            Ok(Route::Health { head_only }) => Reply::served(
                DirectAnswer {
                    head_only: *head_only,
                    ..DirectAnswer::status(503)
                },
                "healthz_unavailable",
            ),
            Ok(Route::ConfirmationPage { head_only }) => Reply::served(
                DirectAnswer {
                    content_type: "text/html; charset=utf-8",
                    body: CONFIRMATION_PAGE,
                    head_only: *head_only,
                    ..DirectAnswer::status(200)
                },
                "confirmation_page",
            ),
            // `decide` names the client of every admitted route; without one this is a gateway bug.
            Ok(Route::Notification(_)) => {
                tracing::error!("admitted notification without a client address");
                Reply {
                    answer: Some(DirectAnswer::status(500)),
                    outcome: "internal_error",
                    reason: "internal_error",
                    detail: None,
                }
            }
        }
    }
}

/// Ends a request the gateway handles itself (refusal, confirmation page, health check, a client
/// that went away): writes the answer, counts it and logs it.
async fn finish_direct(
    stream: &mut Stream,
    seen: &Seen<'_>,
    reply: Reply,
    bytes_in: u64,
    shared: &Shared,
) {
    let Reply {
        answer,
        outcome,
        reason,
        detail,
    } = reply;
    let status = answer.map_or(0, |a| a.status);
    match outcome {
        // A header timeout: cut off unanswered, logged by the rate-limited connection log.
        "rejected" if answer.is_none() => {}
        "rejected" => tracing::info!(
            request_id = seen.request_id.as_str(),
            peer = %seen.peer,
            client = ?seen.client,
            status,
            reason,
            detail = detail.as_deref().unwrap_or(""),
            "request refused"
        ),
        "aborted" => tracing::info!(
            request_id = seen.request_id.as_str(),
            peer = %seen.peer,
            client = ?seen.client,
            reason,
            detail = detail.as_deref().unwrap_or(""),
            "client went away; nothing forwarded"
        ),
        _ => {}
    }
    let mut bytes_out = 0u64;
    if let Some(answer) = answer {
        let bytes = answer.wire(&seen.request_id, &http_date_now());
        let written = stream.write_all(&bytes).await;
        if written.is_ok() {
            bytes_out = answer.sent_body().len() as u64;
            let _ = stream.flush().await;
        }
    }
    seen.record(
        shared,
        Ended {
            client: seen.client,
            status,
            outcome,
            reason,
            bytes_in,
            bytes_out,
            upstream_ms: None,
        },
    );
}

/// Why the body of an admitted notification was not read whole.
enum BodyFailure {
    /// The client's fault, answered with this refusal; the detail goes to the log line.
    Refused(Reject, Option<String>),
    /// The connection broke (reset): nobody to answer.
    Gone(std::io::Error),
}

/// Reads exactly the body the head announced, starting with what `buf` already holds, and
/// nothing after it: on return `buf` holds only bytes the client sent after the body.
async fn read_body(
    stream: &mut Stream,
    buf: &mut BytesMut,
    framing: BodyFraming,
    max_body: usize,
) -> Result<Vec<u8>, BodyFailure> {
    match framing {
        BodyFraming::Length(length) => {
            // The rules refused any length above `max_body` with the head.
            let length = usize::try_from(length)
                .ok()
                .filter(|&length| length <= max_body)
                .ok_or(BodyFailure::Refused(Reject::BodyTooLarge, None))?;
            let mut body = Vec::with_capacity(length);
            let from_head = buf.len().min(length);
            body.extend_from_slice(&buf.split_to(from_head));
            while body.len() < length {
                // Straight into the body's own spare room, and never more than the body still
                // owes: bytes after it stay unread.
                let owed = length - body.len();
                let n = stream
                    .read_buf(&mut (&mut body).limit(owed))
                    .await
                    .map_err(BodyFailure::Gone)?;
                if n == 0 {
                    return Err(BodyFailure::Refused(Reject::IncompleteBody, None));
                }
            }
            Ok(body)
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new(max_body);
            let mut body = Vec::new();
            loop {
                if !buf.is_empty() {
                    match decoder.feed(buf, &mut body) {
                        Ok(Progress::Done { consumed }) => {
                            buf.advance(consumed);
                            return Ok(body);
                        }
                        Ok(Progress::NeedMore) => buf.clear(),
                        Err(ChunkedError::TooLarge) => {
                            return Err(BodyFailure::Refused(Reject::BodyTooLarge, None))
                        }
                        Err(ChunkedError::Malformed(fault)) => {
                            return Err(BodyFailure::Refused(
                                Reject::BadChunkedBody,
                                Some(fault.to_string()),
                            ))
                        }
                    }
                }
                buf.reserve(8192);
                let n = stream.read_buf(buf).await.map_err(BodyFailure::Gone)?;
                if n == 0 {
                    return Err(BodyFailure::Refused(Reject::IncompleteBody, None));
                }
            }
        }
    }
}

/// Half-closes, then drains what the client is still sending (bounded), so an answer sent before
/// the client finished sending is read instead of lost to a reset.
async fn linger(stream: &mut Stream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut scratch = [0u8; 8192];
        let mut drained = 0usize;
        while drained < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
