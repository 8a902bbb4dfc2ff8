//! Test harness shared by the integration tests: a throw-away PKI, a real counting upstream, and
//! the real gateway started in-process on loopback with ephemeral ports.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pushgate::config::Config;
use pushgate::exchange_sim::client::{self, RawResponse, Target};
use pushgate::gateway::{self, GatewayHandle};
use pushgate::notification::{result_envelope, SubscriptionStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// A source inside the allowlist.
pub const ALLOWED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A source outside the allowlist.
pub const DENIED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// An administrators' network (probe_ranges).
pub const PROBE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
/// A trusted load balancer.
pub const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));

pub const LEGACY_PATH: &str = "/Webservices/SyncNotification.svc?Default";
pub const TOKEN: &str = "test-gateway-token-0123456789";
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The ranges file the harness starts with: loopback 127.0.0.2 plus real Exchange Online ranges
/// (only ever named in headers, never connected to).
pub const TEST_RANGES: &str = "# source: test harness\n# version: test-1\n127.0.0.2/32\n::1/128\n40.92.0.0/15\n2603:1026::/36\n";

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/notifications")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every fixture with the verdict `../shared/fixtures/README.md` lists for the gateway.
pub const FIXTURE_VERDICTS: &[(&str, bool)] = &[
    ("exo-capture.xml", true),
    ("seed-capture-verbatim.xml", false),
    ("status-event.xml", true),
    ("created-calendar-item.xml", true),
    ("moved-to-deleted-items.xml", true),
    ("deleted-event.xml", true),
    ("other-prefixes.xml", true),
    ("error-no-notification.xml", true),
];

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// HTTP/1.x minor version of the request line.
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Bytes of the request as written on the wire (request line, fields, empty line, body).
    pub fn wire_size(&self) -> usize {
        let line = format!(
            "{} {} HTTP/1.{}\r\n",
            self.method, self.target, self.version
        );
        let fields: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + 2 + value.len() + 2)
            .sum();
        line.len() + fields + 2 + self.body.len()
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// How the upstream answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with the OK envelope.
    Ok,
    /// Wait this long before answering OK.
    Delay(Duration),
    /// Close the connection without answering.
    Hangup,
    /// Record the request, then answer OK only once a permit of this gate is available (each
    /// answer takes one): lets a test act while the worker holds a request.
    Hold(Arc<Semaphore>),
    /// Answer OK (a kept-alive answer), then close the connection, as a worker that drops idle
    /// connections does.
    OkThenClose,
    /// Answer with exactly these bytes, head and body as the test wrote them.
    Raw(Arc<Vec<u8>>),
}

/// A real HTTP/1.1 server that records everything it receives, down to accepted connections, so
/// a test can prove that a refused request never reached it.
#[derive(Clone)]
pub struct CountingUpstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl CountingUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = CountingUpstream {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            bytes: Arc::default(),
            requests: Arc::default(),
            behaviour: Arc::new(Mutex::new(Behaviour::Ok)),
        };
        let server = upstream.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                server.connections.fetch_add(1, Ordering::SeqCst);
                let server = server.clone();
                tokio::spawn(async move { server.serve(stream).await });
            }
        });
        upstream
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    async fn serve(&self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            // Read one request head.
            let (head_len, recorded, length) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut request = httparse::Request::new(&mut headers);
                if let Ok(httparse::Status::Complete(head_len)) = request.parse(&buf) {
                    let headers: Vec<(String, String)> = request
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let length = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let recorded = Recorded {
                        method: request.method.unwrap_or_default().to_string(),
                        target: request.path.unwrap_or_default().to_string(),
                        version: request.version.unwrap_or(9),
                        headers,
                        body: Vec::new(),
                    };
                    break (head_len, recorded, length);
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        self.bytes.fetch_add(n, Ordering::SeqCst);
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            };
            while buf.len() < head_len + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        self.bytes.fetch_add(n, Ordering::SeqCst);
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
            let mut recorded = recorded;
            recorded.body = buf[head_len..head_len + length].to_vec();
            buf.drain(..head_len + length);
            self.requests.lock().unwrap().push(recorded);

            let behaviour = self.behaviour.lock().unwrap().clone();
            match &behaviour {
                Behaviour::Hangup => return,
                Behaviour::Delay(delay) => tokio::time::sleep(*delay).await,
                Behaviour::Hold(gate) => match gate.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_closed) => return,
                },
                Behaviour::Raw(answer) => {
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    continue;
                }
                Behaviour::Ok | Behaviour::OkThenClose => {}
            }
            let body = result_envelope(SubscriptionStatus::Ok);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if stream.write_all(head.as_bytes()).await.is_err()
                || stream.write_all(body).await.is_err()
                || matches!(behaviour, Behaviour::OkThenClose)
            {
                return;
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until the upstream has recorded `count` requests.
    pub async fn wait_for_requests(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.requests().len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "upstream never saw {count} requests ({} so far)",
                self.requests().len()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Asserts the upstream saw nothing at all: no connection, no byte, no request.
    pub fn assert_untouched(&self, what: &str) {
        assert_eq!(self.connections(), 0, "{what}: upstream got a connection");
        assert_eq!(self.bytes(), 0, "{what}: upstream got bytes");
        assert!(self.requests().is_empty(), "{what}: upstream got a request");
    }
}

/// Knobs for a harness gateway.
#[derive(Clone)]
pub struct Options {
    pub plain_listener: bool,
    pub listen: String,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub upstream_timeout: Duration,
    pub proxy_protocol: bool,
    pub max_body_bytes: usize,
    pub tls_reload_interval: Duration,
    pub ranges_reload_interval: Duration,
    /// Point the gateway at this upstream instead of a counting one (e.g. a real worker).
    pub upstream: Option<String>,
    /// Off (0) unless a test is about it: most suites send more than Exchange would from one
    /// address.
    pub rate_limit_per_source: u32,
    pub rate_limit_burst: u32,
    pub max_connections_per_source: usize,
    pub keepalive_max_requests: u32,
    pub keepalive_idle_timeout: Duration,
    /// Access log destination; `None`: `access.log` in the harness directory.
    pub access_log: Option<String>,
    /// Serve connections on this many threads of their own, as `pushgate gateway` does; 0: on
    /// the test's runtime.
    pub serving_threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            plain_listener: false,
            listen: "127.0.0.1:0".into(),
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(10),
            proxy_protocol: false,
            max_body_bytes: 65_536,
            tls_reload_interval: Duration::from_millis(200),
            ranges_reload_interval: Duration::from_millis(100),
            upstream: None,
            rate_limit_per_source: 0,
            rate_limit_burst: 1,
            max_connections_per_source: 256,
            keepalive_max_requests: 1000,
            keepalive_idle_timeout: Duration::from_secs(75),
            access_log: None,
            serving_threads: 0,
        }
    }
}

/// A running gateway in front of a counting upstream, with its files in a temporary directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub gateway: Option<GatewayHandle>,
    serving: Option<gateway::ServingThreads>,
    pub upstream: CountingUpstream,
    pub ca_pem: String,
    pub config: Config,
}

pub fn write_pki(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (cert, key) = pushgate::gateway::tls::self_signed(
        &["localhost"],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST), "::1".parse().unwrap()],
    )
    .unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    (cert_path, key_path, cert)
}

impl Harness {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path, ca_pem) = write_pki(dir.path());
        let ranges = dir.path().join("ranges.txt");
        std::fs::write(&ranges, TEST_RANGES).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let upstream = CountingUpstream::start().await;

        let mut config = Config::default();
        let g = &mut config.gateway;
        g.listen = options.listen.clone();
        g.plain_listen = if options.plain_listener {
            "127.0.0.1:0".into()
        } else {
            String::new()
        };
        g.metrics_listen = "127.0.0.1:0".into();
        g.tls_cert = cert_path;
        g.tls_key = key_path;
        g.tls_reload_interval = options.tls_reload_interval;
        g.ranges_file = ranges;
        g.ranges_reload_interval = options.ranges_reload_interval;
        g.upstream = options
            .upstream
            .clone()
            .unwrap_or_else(|| format!("http://{}", upstream.addr));
        g.upstream_token_file = token;
        g.upstream_timeout = options.upstream_timeout;
        g.trusted_proxies = vec![PROXY.to_string()];
        g.probe_ranges = vec![PROBE.to_string()];
        g.proxy_protocol = options.proxy_protocol;
        g.header_timeout = options.header_timeout;
        g.body_timeout = options.body_timeout;
        g.max_body_bytes = options.max_body_bytes;
        g.access_log = options
            .access_log
            .clone()
            .unwrap_or_else(|| dir.path().join("access.log").display().to_string());
        g.rate_limit_per_source = options.rate_limit_per_source;
        g.rate_limit_burst = options.rate_limit_burst;
        g.max_connections_per_source = options.max_connections_per_source;
        g.keepalive_max_requests = options.keepalive_max_requests;
        g.keepalive_idle_timeout = options.keepalive_idle_timeout;
        g.shutdown_grace = Duration::from_secs(2);
        // The ranges updater's records, which the gateway shows: in the test's own directory.
        config.ranges.state_dir = dir.path().join("ranges-state");
        config.check().expect("harness configuration is valid");

        let serving = (options.serving_threads > 0).then(|| {
            gateway::ServingThreads::start(options.serving_threads).expect("serving threads start")
        });
        let gateway = match &serving {
            Some(serving) => gateway::start_on(&config, serving.handles()).await,
            None => gateway::start(&config).await,
        }
        .expect("gateway starts");
        Harness {
            dir,
            gateway: Some(gateway),
            serving,
            upstream,
            ca_pem,
            config,
        }
    }

    pub fn gateway(&self) -> &GatewayHandle {
        self.gateway.as_ref().expect("gateway running")
    }

    pub fn tls_addr(&self) -> SocketAddr {
        self.gateway().tls_addr.expect("TLS listener")
    }

    /// TLS target from `from`.
    pub fn target(&self, from: IpAddr) -> Target {
        Target::tls(self.tls_addr(), &self.ca_pem, "localhost")
            .unwrap()
            .from(from)
    }

    pub fn plain_target(&self, from: IpAddr) -> Target {
        Target::plain(self.gateway().plain_addr.expect("plain listener")).from(from)
    }

    /// Sends raw request bytes over TLS from `from`.
    pub async fn send(&self, from: IpAddr, request: &[u8]) -> std::io::Result<RawResponse> {
        client::exchange(&self.target(from), request, TIMEOUT).await
    }

    /// POSTs `body` as Exchange does, from an allowed source.
    pub async fn post(&self, body: &[u8]) -> RawResponse {
        self.send(
            ALLOWED,
            &client::notification_request(LEGACY_PATH, "localhost", body),
        )
        .await
        .expect("gateway answers")
    }

    pub fn ranges_path(&self) -> &Path {
        &self.config.gateway.ranges_file
    }

    /// The access log once it holds `needle` (it is written when a request finishes, which can
    /// be just after the client read its answer); panics after 10 s.
    pub async fn access_log_with(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log =
                std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "access log never held {needle}: {log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The access log once it holds at least `count` lines (lines reach the file from a writer
    /// thread, a little after their requests end); panics after 10 s.
    pub async fn access_log_lines(&self, count: usize) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log =
                std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
            if log.lines().count() >= count {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "access log never held {count} lines: {log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The gateway's metrics text.
    pub async fn metrics(&self) -> String {
        let target = Target::plain(self.gateway().metrics_addr);
        let response = client::exchange(
            &target,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            TIMEOUT,
        )
        .await
        .unwrap();
        String::from_utf8(response.body).unwrap()
    }

    /// Waits (up to 10 s) until a sample has exactly `expected`, then asserts it. Counters are
    /// updated when the gateway finishes a request, which can be just after the client has read
    /// the whole answer.
    pub async fn wait_metric(&self, sample: &str, expected: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(sample).await;
            if value == expected || tokio::time::Instant::now() > deadline {
                assert_eq!(value, expected, "{sample}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Value of one sample line, e.g. `pushgate_gateway_requests_total{outcome="rejected",reason="not_found"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
        if let Some(serving) = self.serving.take() {
            tokio::task::spawn_blocking(move || serving.stop())
                .await
                .unwrap();
        }
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}

/// The answer Exchange must get for an accepted notification.
pub fn ok_envelope() -> &'static [u8] {
    result_envelope(SubscriptionStatus::Ok)
}

/// Log lines written by the code under test, captured as JSON once per test binary.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static CAPTURED_LOG: OnceLock<CapturedLog> = OnceLock::new();

/// Starts capturing the log (INFO and above) of everything in this test binary; call it before
/// the requests whose log lines a test inspects.
pub fn capture_logs() {
    CAPTURED_LOG.get_or_init(|| {
        let log = CapturedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        log
    });
}

/// Captured log lines that contain `needle` (e.g. a request id), as parsed JSON objects.
pub fn log_lines_with(needle: &str) -> Vec<serde_json::Value> {
    let Some(log) = CAPTURED_LOG.get() else {
        panic!("capture_logs() was not called");
    };
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| line.contains(needle))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Waits (up to 10 s) until the log holds a line with `needle`, then returns every such line.
pub async fn wait_for_log_lines(needle: &str) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log_lines_with(needle);
        if !lines.is_empty() {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line with {needle}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sum of every sample of a counter family whose labels contain `labels`, e.g.
/// `pushgate_gateway_requests_total` with `outcome="internal_error"`.
pub fn metric_sum(text: &str, family: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(family) && line.contains(labels))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Reads everything the gateway sends until it closes the connection (at most `TIMEOUT`).
pub async fn read_to_close<S: tokio::io::AsyncRead + Unpin + ?Sized>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    out
}

/// A notification as a pooling load balancer forwards it: no `Connection: close`, and the client
/// it speaks for in `X-Forwarded-For`.
pub fn balancer_request(client: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\n\
         SOAPAction: \"{}\"\r\nX-Forwarded-For: {client}\r\nContent-Length: {}\r\n\r\n",
        pushgate::exchange_sim::client::SEND_NOTIFICATION_ACTION,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Reads answers one after another off one connection, keeping whatever arrived after an answer
/// for the next one (answers to pipelined requests can come in one read).
#[derive(Default)]
pub struct AnswerReader {
    buf: Vec<u8>,
}

impl AnswerReader {
    /// The next answer (framed by `Content-Length`), or `None` when the connection closed first
    /// (nothing, or an unfinished answer, left).
    pub async fn next<S: tokio::io::AsyncRead + Unpin + ?Sized>(
        &mut self,
        stream: &mut S,
    ) -> Option<RawResponse> {
        let mut chunk = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = response.parse(&self.buf) {
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let status = response.code.unwrap_or(0);
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .expect("every gateway answer has a Content-Length");
                if self.buf.len() >= head_len + length {
                    let body = self.buf[head_len..head_len + length].to_vec();
                    self.buf.drain(..head_len + length);
                    return Some(RawResponse {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let read = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk)).await;
            match read.expect("the gateway answers or closes in time") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether bytes were left over after the answers read so far.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}
