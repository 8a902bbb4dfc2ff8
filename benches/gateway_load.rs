//! The load client and upstream stub of `scripts/bench-gateway.sh`, the side-by-side benchmark of
//! pushgate's gateway and nginx. Used the same way for both sides, so both get the same TLS terms:
//! `full` opens a new connection per request and forgets every TLS session (a full handshake each
//! time), `resume` opens a new connection per request and resumes TLS sessions whenever the server
//! allows, `keepalive` sends request after request on pooled connections, as a load balancer does.
//! Every run is bounded in seconds; every address is on loopback.
//!
//! ```text
//! gateway_load stub ADDR
//! gateway_load run  --addr A --ca PEM --mode full|resume|keepalive --body FILE [--path P]
//!                   [--concurrency N] [--seconds S] [--warmup S] [--from IP] [--forwarded-for IP]
//!                   [--pids P,P,...] [--threads N]
//! gateway_load hold --addr A --ca PEM --connections N [--seconds S] [--from IP] [--pids P,...]
//! ```
//! `run` prints one JSON line: requests, errors, requests/s, p50/p99 in ms, and the CPU seconds the
//! processes in `--pids` spent during the measured window. `hold` opens N TLS connections, keeps
//! them open, and prints the resident memory of `--pids` with all of them open.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool may panic on setup failures

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

const SOAP_ACTION: &str =
    "\"http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification\"";
/// Longest any one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("stub") => stub(args.get(1).map_or("127.0.0.1:18080", String::as_str)),
        Some("run") => run(&options(&args[1..])),
        Some("hold") => hold(&options(&args[1..])),
        // `cargo bench` runs every bench target with `--bench`: this one is driven by the script.
        _ => println!("gateway_load: run by scripts/bench-gateway.sh (see the module docs)"),
    }
}

fn options(args: &[String]) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut iter = args.iter();
    while let Some(key) = iter.next() {
        let key = key.trim_start_matches("--").to_string();
        let value = iter.next().cloned().unwrap_or_default();
        map.insert(key, value);
    }
    map
}

fn get<'a>(options: &'a HashMap<String, String>, key: &str, default: &'a str) -> &'a str {
    options.get(key).map_or(default, String::as_str)
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The upstream stub: answers every request 200 with Exchange's expected envelope, keep-alive.

const ENVELOPE: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><m:SendNotificationResult xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\"><m:SubscriptionStatus>OK</m:SubscriptionStatus></m:SendNotificationResult></soap:Body></soap:Envelope>";

fn stub(addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback(), "the stub listens on loopback only");
    runtime(1).block_on(async move {
        let listener = TcpListener::bind(addr).await.unwrap();
        eprintln!("stub listening on {addr}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_stub(stream));
        }
    });
}

async fn serve_stub(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{ENVELOPE}",
        ENVELOPE.len()
    );
    let mut buf = Vec::with_capacity(8192);
    loop {
        let Some((head_len, body_len, close)) = read_head(&mut stream, &mut buf, false).await
        else {
            return;
        };
        while buf.len() < head_len + body_len {
            if read_more(&mut stream, &mut buf).await.is_none() {
                return;
            }
        }
        buf.drain(..head_len + body_len);
        if stream.write_all(answer.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(n)
        }
    }
}

/// Reads until a request head (or, with `response`, an answer head) is complete: its length, the
/// declared body length, and whether the connection closes after it. `None` when the peer closed
/// or sent something that does not parse.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    response: bool,
) -> Option<(usize, usize, bool)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let facts = if response {
            let mut answer = httparse::Response::new(&mut headers);
            match answer.parse(buf).ok()? {
                httparse::Status::Complete(head_len) => Some(head_facts(head_len, answer.headers)?),
                httparse::Status::Partial => None,
            }
        } else {
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(buf).ok()? {
                httparse::Status::Complete(head_len) => {
                    Some(head_facts(head_len, request.headers)?)
                }
                httparse::Status::Partial => None,
            }
        };
        if facts.is_some() {
            return facts;
        }
        read_more(stream, buf).await?;
    }
}

fn head_facts(head_len: usize, headers: &[httparse::Header<'_>]) -> Option<(usize, usize, bool)> {
    let mut length = 0;
    let mut close = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()?
                .trim()
                .parse()
                .ok()?;
        }
        if header.name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    Some((head_len, length, close))
}

// ---------------------------------------------------------------------------------------------
// The load client.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Resume,
    KeepAlive,
}

struct Plan {
    addr: SocketAddr,
    from: Option<IpAddr>,
    connector: TlsConnector,
    name: ServerName<'static>,
    request: Vec<u8>,
    mode: Mode,
}

fn connector(ca: &Path, resumption: bool) -> TlsConnector {
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert: CertificateDer<'static> = cert.unwrap();
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = if resumption {
        rustls::client::Resumption::in_memory_sessions(4096)
    } else {
        // Forgets every session: each connection pays a full handshake.
        rustls::client::Resumption::disabled()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

fn plan(options: &HashMap<String, String>) -> Plan {
    let addr: SocketAddr = get(options, "addr", "127.0.0.1:8443").parse().unwrap();
    let from: Option<IpAddr> = options.get("from").map(|ip| ip.parse().unwrap());
    assert!(
        addr.ip().is_loopback() && from.is_none_or(|ip| ip.is_loopback()),
        "loopback only"
    );
    let mode = match get(options, "mode", "full") {
        "full" => Mode::Full,
        "resume" => Mode::Resume,
        "keepalive" => Mode::KeepAlive,
        other => panic!("unknown mode {other}"),
    };
    let path = get(options, "path", "/Webservices/SyncNotification.svc?Default");
    let body = std::fs::read(get(
        options,
        "body",
        "tests/fixtures/notifications/exo-capture.xml",
    ))
    .unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nSOAPAction: {SOAP_ACTION}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(client) = options.get("forwarded-for") {
        request.push_str(&format!("X-Forwarded-For: {client}\r\n"));
    }
    if mode != Mode::KeepAlive {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(&body);
    Plan {
        addr,
        from,
        connector: connector(
            Path::new(get(options, "ca", "cert.pem")),
            mode != Mode::Full,
        ),
        name: ServerName::try_from(get(options, "name", "localhost").to_string()).unwrap(),
        request,
        mode,
    }
}

async fn connect(plan: &Plan) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let socket = if plan.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(from) = plan.from {
        socket.bind(SocketAddr::new(from, 0))?;
    }
    let tcp = socket.connect(plan.addr).await?;
    tcp.set_nodelay(true)?;
    plan.connector.connect(plan.name.clone(), tcp).await
}

/// Sends the request and reads the answer: `Ok(close)` for a 200, whether the server closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    stream.write_all(request).await?;
    stream.flush().await?;
    buf.clear();
    let (head_len, body_len, close) = read_head(stream, buf, true)
        .await
        .ok_or_else(|| std::io::Error::other("no answer"))?;
    let ok = buf.starts_with(b"HTTP/1.1 200 ");
    while buf.len() < head_len + body_len {
        read_more(stream, buf)
            .await
            .ok_or_else(|| std::io::Error::other("answer cut short"))?;
    }
    if !ok {
        return Err(std::io::Error::other(format!(
            "status line {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(15)])
        )));
    }
    Ok(close)
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    handshakes: u64,
    resumed: u64,
}

async fn worker(plan: Arc<Plan>, measure_from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(8192);
    let mut kept = None;
    while Instant::now() < until {
        let started = Instant::now();
        // (handshakes, resumed) of this request, counted once it is known to be measured.
        let mut handshakes = (0u64, 0u64);
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut stream = match kept.take() {
                Some(stream) => stream,
                None => {
                    let stream = connect(&plan).await?;
                    let kind = stream.get_ref().1.handshake_kind();
                    handshakes.0 += 1;
                    handshakes.1 += u64::from(kind == Some(rustls::HandshakeKind::Resumed));
                    stream
                }
            };
            let close = exchange(&mut stream, &plan.request, &mut buf).await?;
            if plan.mode == Mode::KeepAlive && !close {
                kept = Some(stream);
            }
            std::io::Result::Ok(())
        })
        .await;
        if started < measure_from {
            continue;
        }
        tally.handshakes += handshakes.0;
        tally.resumed += handshakes.1;
        match outcome {
            Ok(Ok(())) => tally
                .latencies_us
                .push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
            Ok(Err(e)) => {
                tally.errors += 1;
                if tally.errors <= 3 {
                    eprintln!("request failed: {e}");
                }
            }
            Err(_elapsed) => tally.errors += 1,
        }
    }
    tally
}

/// User plus system CPU seconds of these processes (all their threads) so far.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // Linux reports these in USER_HZ, which is 100 on every architecture it runs on.
    const TICKS_PER_SECOND: f64 = 100.0;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start at ") ".
            let rest = &stat[stat.rfind(") ")? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS_PER_SECOND)
        })
        .sum()
}

fn resident_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn pids(options: &HashMap<String, String>) -> Vec<u32> {
    get(options, "pids", "")
        .split(',')
        .filter(|pid| !pid.is_empty())
        .map(|pid| pid.parse().unwrap())
        .collect()
}

fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * q).round() as usize]) / 1000.0
}

fn run(options: &HashMap<String, String>) {
    let plan = Arc::new(plan(options));
    let concurrency: usize = get(options, "concurrency", "32").parse().unwrap();
    let seconds: f64 = get(options, "seconds", "10").parse().unwrap();
    let warmup: f64 = get(options, "warmup", "2").parse().unwrap();
    assert!(seconds <= 120.0 && warmup <= 30.0, "runs are bounded");
    let threads: usize = get(options, "threads", "2").parse().unwrap();
    let pids = pids(options);
    let tallies = runtime(threads).block_on(async {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(warmup);
        let until = measure_from + Duration::from_secs_f64(seconds);
        let cpu_at_start = Arc::new(AtomicU64::new(0));
        let sampled = Arc::new(AtomicBool::new(false));
        {
            let (pids, cpu_at_start, sampled) =
                (pids.clone(), cpu_at_start.clone(), sampled.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(measure_from.into()).await;
                cpu_at_start.store(cpu_seconds(&pids).to_bits(), Ordering::SeqCst);
                sampled.store(true, Ordering::SeqCst);
            });
        }
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| tokio::spawn(worker(plan.clone(), measure_from, until)))
            .collect();
        let mut tallies = Vec::new();
        for task in tasks {
            tallies.push(task.await.unwrap());
        }
        let cpu_end = cpu_seconds(&pids);
        let cpu_start = f64::from_bits(cpu_at_start.load(Ordering::SeqCst));
        assert!(sampled.load(Ordering::SeqCst));
        (
            tallies,
            cpu_end - cpu_start,
            measure_from.elapsed().as_secs_f64(),
        )
    });
    let (tallies, cpu, elapsed) = tallies;
    let mut latencies: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let handshakes: u64 = tallies.iter().map(|t| t.handshakes).sum();
    let resumed: u64 = tallies.iter().map(|t| t.resumed).sum();
    let requests = latencies.len() as f64;
    println!(
        "{{\"mode\":\"{:?}\",\"concurrency\":{concurrency},\"requests\":{},\"errors\":{errors},\"seconds\":{elapsed:.2},\"rps\":{:.1},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"cpu_s\":{cpu:.2},\"cpu_s_per_1000\":{:.3},\"handshakes\":{handshakes},\"resumed\":{resumed}}}",
        plan.mode,
        latencies.len(),
        requests / elapsed,
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99),
        if requests > 0.0 { cpu / requests * 1000.0 } else { 0.0 },
    );
}

fn hold(options: &HashMap<String, String>) {
    let plan = Arc::new(plan(options));
    let connections: usize = get(options, "connections", "1000").parse().unwrap();
    let seconds: f64 = get(options, "seconds", "3").parse().unwrap();
    assert!(connections <= 10_000 && seconds <= 30.0, "bounded");
    let pids = pids(options);
    runtime(2).block_on(async {
        let before = resident_kib(&pids);
        let mut open = Vec::with_capacity(connections);
        let mut failed = 0;
        for _ in 0..connections {
            match tokio::time::timeout(REQUEST_TIMEOUT, connect(&plan)).await {
                Ok(Ok(stream)) => open.push(stream),
                _ => failed += 1,
            }
        }
        // Let the server settle with every connection open, then look.
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let with_open = resident_kib(&pids);
        println!(
            "{{\"connections_open\":{},\"failed\":{failed},\"rss_kib_before\":{before},\"rss_kib_open\":{with_open}}}",
            open.len()
        );
        drop(open);
    });
}
