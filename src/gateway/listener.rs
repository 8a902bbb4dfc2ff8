//! The gateway's own accept loop. Per connection: the source filter before anything is read, the
//! PROXY header from trusted balancers, the TLS handshake under a deadline, then the request head
//! read under a total deadline and checked by the rules. Only admitted notification requests are
//! handed to pingora (with the head bytes already read); everything else is answered here.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::HttpServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::http::v1::server::HttpSession as H1Session;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::access_log::{now_rfc3339, AccessRecord};
use super::client::{canonical, resolve_client};
use super::proxy::{Admitted, GatewayProxy};
use super::proxy_protocol::{read_header, ProxiedPeer};
use super::reject::{status_text, Reject};
use super::rules::{self, Head, Route};
use super::Shared;

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
    proxy: Arc<HttpProxy<GatewayProxy>>,
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
        shared.metrics.connections_accepted.inc();
        let shared = shared.clone();
        let proxy = proxy.clone();
        let tls = spec.tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            shared.metrics.connections_active.inc();
            serve_connection(tcp, peer, class, tls, &shared, &proxy, &shutdown).await;
            shared.metrics.connections_active.dec();
        });
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    class: PeerClass,
    tls: Option<Arc<Acceptor>>,
    shared: &Arc<Shared>,
    proxy: &Arc<HttpProxy<GatewayProxy>>,
    shutdown: &watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let fd = tcp.as_raw_fd();
    let mut l4 = L4Stream::from(tcp);
    l4.set_socket_digest(SocketDigest::from_raw_fd(fd));

    let deadline = Instant::now() + shared.handshake_timeout;
    // The address the connection speaks for, as far as the transport can tell.
    let source = if shared.proxy_protocol && class == PeerClass::TrustedProxy {
        match proxied_source(&mut l4, peer, deadline, shared).await {
            Some(source) => source,
            None => return,
        }
    } else {
        peer.ip()
    };
    let Some(mut stream) = handshake(l4, tls, peer, deadline, shared).await else {
        return;
    };
    // rustls names versions `TLSv1_3`; operators read `TLSv1.3`.
    let tls_version = stream.get_ssl_digest().map(|d| d.version.replace('_', "."));
    let plain_listener = tls_version.is_none();

    let mut buf = BytesMut::with_capacity(2048);
    let head_deadline = Instant::now() + shared.header_timeout;
    let decision = match tokio::time::timeout_at(
        head_deadline.into(),
        read_and_decide(&mut stream, &mut buf, source, class, shared),
    )
    .await
    {
        Ok(Ok(decision)) => decision,
        Ok(Err(HeadFailure::ClosedEarly)) => return,
        Ok(Err(HeadFailure::Io(e))) => {
            tracing::debug!(%peer, error = %e, "reading request head");
            return;
        }
        // The head did not even parse: answered like any refusal, without a route.
        Ok(Err(HeadFailure::Refused(reject))) => Decision {
            method: String::new(),
            target: String::new(),
            client: Some(source),
            outcome: Err(reject),
        },
        Err(_elapsed) => {
            shared
                .metrics
                .count_request("rejected", "header_timeout", 0.0);
            shared.connection_log.note("header_timeout", peer);
            return;
        }
    };
    let head_done = Instant::now();
    let request_id = new_request_id();

    let client = match (&decision.outcome, decision.client) {
        (Ok(Route::Notification(head)), Some(client)) => {
            if head.expect_continue
                && stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                return;
            }
            client
        }
        _ => {
            finish_direct(
                &mut stream,
                &decision,
                peer,
                &request_id,
                tls_version.as_deref(),
                shared,
            )
            .await;
            return;
        }
    };

    let admitted = Admitted {
        client,
        peer,
        request_id,
        head_done,
        method: decision.method,
        target: decision.target,
        tls: tls_version,
        plain_listener,
    };
    let mut h1 = H1Session::new(stream);
    // pingora parses the head again from these bytes (plus whatever body bytes came with them).
    h1.set_pipelined_prefix(buf);
    let mut session = ServerSession::H1(h1);
    if let (Some(digest), Some(record)) = (session.digest_mut(), admitted.into_digest()) {
        digest.proxy_digest = Some(Arc::new(record));
    }
    let _reusable = proxy.process_new_http(session, shutdown).await;
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
}

enum HeadFailure {
    /// The peer closed before sending a byte (port checks, health probes of the balancer).
    ClosedEarly,
    Io(std::io::Error),
    Refused(Reject),
}

/// Reads until the head is complete and applies the rules to it.
async fn read_and_decide(
    stream: &mut Stream,
    buf: &mut BytesMut,
    source: IpAddr,
    class: PeerClass,
    shared: &Shared,
) -> Result<Decision, HeadFailure> {
    loop {
        let n = stream.read_buf(buf).await.map_err(HeadFailure::Io)?;
        if n == 0 {
            return if buf.is_empty() {
                Err(HeadFailure::ClosedEarly)
            } else {
                Err(HeadFailure::Refused(Reject::MalformedRequest))
            };
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                if head_len > MAX_HEAD_BYTES {
                    return Err(HeadFailure::Refused(Reject::HeaderTooLarge));
                }
                return Ok(decide(&request, source, class, shared));
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
                return Err(HeadFailure::Refused(Reject::UnsupportedVersion))
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

fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

const CONFIRMATION_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Exchange notification endpoint</title></head><body><h1>Exchange notification endpoint</h1>\
<p>This address receives Exchange push notifications (EWS SendNotification, HTTP POST). \
It is reachable.</p></body></html>\n";

/// An answer the gateway gives itself, with what the metrics and the log say about it.
struct DirectAnswer {
    status: u16,
    content_type: &'static str,
    body: &'static str,
    head_only: bool,
    extra: Option<(&'static str, &'static str)>,
    outcome: &'static str,
    reason: &'static str,
}

impl DirectAnswer {
    const TEXT: &'static str = "text/plain; charset=utf-8";

    /// `None` for notifications, which pingora forwards.
    fn for_decision(outcome: &Result<Route, Reject>, shared: &Shared) -> Option<Self> {
        let answer = match outcome {
            Err(reject) => DirectAnswer {
                status: reject.status(),
                content_type: Self::TEXT,
                body: reject.body(),
                head_only: false,
                extra: reject.extra_header(),
                outcome: "rejected",
                reason: reject.reason(),
            },
            Ok(Route::Health { head_only }) if shared.healthy() => DirectAnswer {
                status: 200,
                content_type: Self::TEXT,
                body: "ok\n",
                head_only: *head_only,
                extra: None,
                outcome: "served",
                reason: "healthz",
            },
            Ok(Route::Health { head_only }) => DirectAnswer {
                status: 503,
                content_type: Self::TEXT,
                body: status_text(503),
                head_only: *head_only,
                extra: None,
                outcome: "served",
                reason: "healthz_unavailable",
            },
            Ok(Route::ConfirmationPage { head_only }) => DirectAnswer {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: CONFIRMATION_PAGE,
                head_only: *head_only,
                extra: None,
                outcome: "served",
                reason: "confirmation_page",
            },
            Ok(Route::Notification(_)) => return None,
        };
        Some(answer)
    }
}

/// Answers a request the gateway handles itself (refusal, confirmation page, health check),
/// then writes the access log line and closes gently.
async fn finish_direct(
    stream: &mut Stream,
    decision: &Decision,
    peer: SocketAddr,
    request_id: &str,
    tls: Option<&str>,
    shared: &Shared,
) {
    let started = Instant::now();
    let Some(answer) = DirectAnswer::for_decision(&decision.outcome, shared) else {
        return;
    };
    let DirectAnswer {
        status,
        content_type,
        body,
        head_only,
        extra,
        outcome,
        reason,
    } = answer;
    if outcome == "rejected" {
        tracing::info!(
            request_id,
            %peer,
            client = ?decision.client,
            status,
            reason,
            "request refused"
        );
    }
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'\r\nX-Request-Id: {request_id}\r\nConnection: close\r\n",
        status_text(status).trim_end(),
        httpdate_now(),
        body.len(),
    );
    if let Some((name, value)) = extra {
        response.push_str(name);
        response.push_str(": ");
        response.push_str(value);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    let mut bytes_out = 0u64;
    let mut write_result = stream.write_all(response.as_bytes()).await;
    if write_result.is_ok() && !head_only {
        write_result = stream.write_all(body.as_bytes()).await;
        bytes_out = body.len() as u64;
    }
    if write_result.is_ok() {
        let _ = stream.flush().await;
    }
    let seconds = started.elapsed().as_secs_f64();
    shared.metrics.count_request(outcome, reason, seconds);
    shared.access_log.write(&AccessRecord {
        time: now_rfc3339(),
        request_id,
        client: decision.client,
        peer,
        method: decision.method.clone(),
        path: decision.target.clone(),
        status,
        outcome,
        reason,
        bytes_in: 0,
        bytes_out,
        duration_ms: seconds * 1000.0,
        upstream_ms: None,
        tls,
    });
    linger(stream).await;
}

/// Half-closes, then drains what the client is still sending (bounded), so a refusal sent before
/// the client finished its body is read instead of lost to a reset.
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

fn httpdate_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    now.format(&format).unwrap_or_default()
}
