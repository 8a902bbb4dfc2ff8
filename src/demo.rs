//! `pushgate demo`: the whole product on loopback in one command. Throw-away certificate, token,
//! ranges file and SQLite database; the real worker and the real gateway in front of it; the
//! reference notifications played as Exchange sends them (with retries), a simulated mailbox,
//! a worker outage, hostile requests; a report, and a non-zero exit if any expectation fails.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Config, UnknownSubscriptions};
use crate::exchange_sim::client::{self, notification_request, RawResponse, Target};
use crate::exchange_sim::push::{self, AttemptOutcome, Endpoint, RetryPolicy, SimSubscription};
use crate::notification::{self, EventKind, Limits};

/// Plays Exchange Online: inside the demo's allowlist.
const EXCHANGE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A source outside the allowlist.
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const PATH: &str = "/Webservices/SyncNotification.svc?Default";
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The reference notifications, embedded so the demo runs from the binary alone.
const FIXTURES: &[(&str, &[u8], bool)] = &[
    (
        "exo-capture.xml",
        include_bytes!("../tests/fixtures/notifications/exo-capture.xml"),
        true,
    ),
    (
        "status-event.xml",
        include_bytes!("../tests/fixtures/notifications/status-event.xml"),
        true,
    ),
    (
        "created-calendar-item.xml",
        include_bytes!("../tests/fixtures/notifications/created-calendar-item.xml"),
        true,
    ),
    (
        "moved-to-deleted-items.xml",
        include_bytes!("../tests/fixtures/notifications/moved-to-deleted-items.xml"),
        true,
    ),
    (
        "deleted-event.xml",
        include_bytes!("../tests/fixtures/notifications/deleted-event.xml"),
        true,
    ),
    (
        "other-prefixes.xml",
        include_bytes!("../tests/fixtures/notifications/other-prefixes.xml"),
        true,
    ),
    (
        "error-no-notification.xml",
        include_bytes!("../tests/fixtures/notifications/error-no-notification.xml"),
        true,
    ),
    (
        "seed-capture-verbatim.xml",
        include_bytes!("../tests/fixtures/notifications/seed-capture-verbatim.xml"),
        false,
    ),
];

const SHIPPED_RANGES: &str = include_str!("../ranges/exchange-online.txt");

/// One expectation and whether it held.
struct Check {
    what: String,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Report {
    text: String,
    checks: Vec<Check>,
    latencies: Vec<Duration>,
}

impl Report {
    fn line(&mut self, line: impl AsRef<str>) {
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }

    fn check(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>) -> bool {
        let check = Check {
            what: what.into(),
            ok,
            detail: detail.into(),
        };
        let mark = if check.ok { "ok " } else { "FAIL" };
        let _ = writeln!(self.text, "   [{mark}] {} {}", check.what, check.detail);
        self.checks.push(check);
        ok
    }
}

/// The files and addresses of one demo run.
struct Stage {
    config: Config,
    ca_pem: String,
    gateway: Option<crate::gateway::GatewayHandle>,
    worker: Option<crate::worker::WorkerHandle>,
    worker_addr: SocketAddr,
}

impl Stage {
    fn target(&self, from: IpAddr) -> anyhow::Result<Target> {
        let addr = self
            .gateway
            .as_ref()
            .and_then(|g| g.tls_addr)
            .context("gateway not running")?;
        Ok(Target::tls(addr, &self.ca_pem, "localhost")?.from(from))
    }

    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            target: self.target(EXCHANGE)?,
            path_and_query: PATH.into(),
            host: "localhost".into(),
        })
    }

    async fn send(&self, from: IpAddr, request: &[u8]) -> std::io::Result<RawResponse> {
        let target = self
            .target(from)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        client::exchange(&target, request, ANSWER_TIMEOUT).await
    }

    async fn worker_metric(&self, sample: &str) -> f64 {
        let Some(worker) = self.worker.as_ref() else {
            return 0.0;
        };
        metric(worker.metrics_addr, sample).await
    }

    async fn gateway_metrics(&self) -> String {
        match self.gateway.as_ref() {
            Some(gateway) => metrics_text(gateway.metrics_addr).await,
            None => String::new(),
        }
    }
}

async fn metrics_text(addr: SocketAddr) -> String {
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    match client::exchange(&Target::plain(addr), request, ANSWER_TIMEOUT).await {
        Ok(response) => String::from_utf8_lossy(&response.body).into_owned(),
        Err(_) => String::new(),
    }
}

async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    metric_in(&metrics_text(addr).await, sample)
}

fn metric_in(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(name, _)| *name == sample || (sample.ends_with('{') && name.starts_with(sample)))
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// `pushgate demo`.
pub fn run(keep: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let dir = tempfile::Builder::new()
        .prefix("pushgate-demo-")
        .tempdir()
        .context("creating the demo directory")?;
    // The parts log as in production, into the demo directory; the report is what is printed.
    crate::telemetry::init_to_file("info", &dir.path().join("pushgate.log"))
        .context("opening the demo log")?;
    let report = runtime.block_on(play(dir.path()))?;
    print!("{}", report.text);
    let failed: Vec<&Check> = report.checks.iter().filter(|c| !c.ok).collect();
    if keep {
        let kept = dir.keep();
        println!(
            "\nFiles kept in {} (pushgate.log, access.log, database, certificate).",
            kept.display()
        );
    }
    if failed.is_empty() {
        println!("\nAll {} expectations met.", report.checks.len());
        Ok(())
    } else {
        for check in &failed {
            println!("FAILED: {} {}", check.what, check.detail);
        }
        anyhow::bail!(
            "{} of {} expectations failed",
            failed.len(),
            report.checks.len()
        )
    }
}

fn demo_config(dir: &Path) -> anyhow::Result<(Config, String)> {
    let (cert, key) =
        crate::gateway::tls::self_signed(&["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .context("generating the demo certificate")?;
    std::fs::write(dir.join("cert.pem"), &cert)?;
    std::fs::write(dir.join("key.pem"), &key)?;
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(dir.join("token"), format!("{token}\n"))?;
    // The shipped Microsoft list plus the loopback address that plays Exchange Online.
    let mut ranges = String::from(
        "# source: pushgate demo (shipped Exchange Online list + loopback)\n# version: demo\n",
    );
    for line in SHIPPED_RANGES.lines() {
        let line = line.trim();
        if !line.is_empty() && !line.starts_with('#') {
            ranges.push_str(line);
            ranges.push('\n');
        }
    }
    ranges.push_str(&format!("{EXCHANGE}/32\n"));
    std::fs::write(dir.join("ranges.txt"), ranges)?;

    let mut config = Config::default();
    let g = &mut config.gateway;
    g.listen = "127.0.0.1:0".into();
    g.metrics_listen = "127.0.0.1:0".into();
    g.tls_cert = dir.join("cert.pem");
    g.tls_key = dir.join("key.pem");
    g.ranges_file = dir.join("ranges.txt");
    g.upstream_token_file = dir.join("token");
    g.access_log = dir.join("access.log").display().to_string();
    g.header_timeout = Duration::from_secs(2);
    g.upstream_timeout = Duration::from_secs(10);
    let w = &mut config.worker;
    w.listen = "127.0.0.1:0".into();
    w.metrics_listen = "127.0.0.1:0".into();
    w.database_url = format!("sqlite://{}", dir.join("pushgate.db").display());
    w.gateway_token_file = dir.join("token");
    w.unknown_subscriptions = UnknownSubscriptions::Accept;
    Ok((config, cert))
}

async fn play(dir: &Path) -> anyhow::Result<Report> {
    let (mut config, ca_pem) = demo_config(dir)?;
    let worker = crate::worker::start(config.clone())
        .await
        .context("starting the worker")?;
    let worker_addr = worker.listen_addr;
    config.gateway.upstream = format!("http://{worker_addr}");
    // A restarted worker must come back on the address the gateway forwards to.
    config.worker.listen = worker_addr.to_string();
    let gateway = crate::gateway::start(&config)
        .await
        .context("starting the gateway")?;
    let mut stage = Stage {
        config,
        ca_pem,
        gateway: Some(gateway),
        worker: Some(worker),
        worker_addr,
    };
    let mut report = Report::default();
    report.line("pushgate demo: the gateway and the worker on loopback, Exchange simulated");
    if let Some(gateway) = &stage.gateway {
        report.line(format!(
            "  gateway  https://{} (allowlist: the shipped Exchange Online list + {EXCHANGE})",
            gateway.tls_addr.map(|a| a.to_string()).unwrap_or_default()
        ));
    }
    report.line(format!(
        "  worker   http://{worker_addr} (SQLite {})",
        dir.join("pushgate.db").display()
    ));

    let outcome = async {
        reference_notifications(&stage, &mut report).await?;
        simulated_mailbox(&stage, &mut report).await?;
        worker_outage(&mut stage, &mut report).await?;
        hostile_requests(&stage, &mut report).await?;
        summary(&stage, &mut report).await
    }
    .await;
    if let Some(gateway) = stage.gateway.take() {
        gateway.shutdown().await;
    }
    if let Some(worker) = stage.worker.take() {
        worker.shutdown().await?;
    }
    outcome?;
    Ok(report)
}

/// Phase 1: every reference notification as Exchange Online sends it, and its retry.
async fn reference_notifications(stage: &Stage, report: &mut Report) -> anyhow::Result<()> {
    report.line(
        "\n1. Reference notifications, each sent twice (Exchange resends the identical body)",
    );
    let limits = Limits::default();
    for (name, body, valid) in FIXTURES {
        let request = notification_request(PATH, "localhost", body);
        let duplicates_before = stage
            .worker_metric("pushgate_worker_duplicates_total")
            .await;
        let started = Instant::now();
        let first = stage.send(EXCHANGE, &request).await;
        report.latencies.push(started.elapsed());
        let first = match first {
            Ok(response) => response,
            Err(e) => {
                report.check(format!("{name}: answered"), false, e.to_string());
                continue;
            }
        };
        if *valid {
            let events = notification::parse(body, &limits)
                .map(|n| n.events().count())
                .unwrap_or(0);
            let accepted = matches!(
                push::judge(first.status, &first.body),
                AttemptOutcome::Accepted(_)
            );
            report.check(
                format!("{name}: accepted"),
                accepted
                    && first.body
                        == notification::result_envelope(notification::SubscriptionStatus::Ok),
                format!(
                    "({} {} events, answer {} bytes)",
                    first.status,
                    events,
                    first.body.len()
                ),
            );
            let retry = stage.send(EXCHANGE, &request).await;
            let duplicates = stage
                .worker_metric("pushgate_worker_duplicates_total")
                .await
                - duplicates_before;
            let retried_ok = retry.as_ref().is_ok_and(|r| r.status == 200);
            report.check(
                format!("{name}: retry absorbed"),
                retried_ok && (events == 0 || duplicates >= events as f64),
                format!("({duplicates} duplicate events not stored again)"),
            );
        } else {
            report.check(
                format!("{name}: refused"),
                first.status == 400,
                format!(
                    "({} {}, never forwarded)",
                    first.status,
                    String::from_utf8_lossy(&first.body).trim()
                ),
            );
        }
    }
    Ok(())
}

/// Phase 2: a mailbox with more events than fit in one notification.
async fn simulated_mailbox(stage: &Stage, report: &mut Report) -> anyhow::Result<()> {
    report.line("\n2. A simulated mailbox: 120 calendar changes and a heartbeat, one notification in flight");
    let mut mailbox = SimSubscription::new("demo-mailbox-room-4711");
    for i in 0..120 {
        let kind = match i % 3 {
            0 => EventKind::Created,
            1 => EventKind::Modified,
            _ => EventKind::Deleted,
        };
        mailbox.item_event(
            kind,
            &format!("AAMkAGRlbW8taXRlbS0{i:04}"),
            "2026-11-22T09:00:00Z",
        );
    }
    mailbox.heartbeat();
    let policy = RetryPolicy::new(30).compressed(0.01);
    let run = push::drain(&mut mailbox, &stage.endpoint()?, &policy).await;
    report.check(
        "121 events in 3 notifications of at most 50",
        run.notifications == 3 && run.events_sent == 121 && !run.dropped,
        format!(
            "({} notifications, {} events)",
            run.notifications, run.events_sent
        ),
    );
    for delivery in &run.deliveries {
        if let Some(attempt) = delivery.attempts.last() {
            report.latencies.push(attempt.latency);
        }
    }
    let stored = stored_events(stage, "demo-mailbox-room-4711").await?;
    report.check(
        "every event of the mailbox stored once",
        stored == 121,
        format!("({stored} rows)"),
    );
    Ok(())
}

async fn stored_events(stage: &Stage, subscription: &str) -> anyhow::Result<usize> {
    let store = crate::store::open(&stage.config.worker.database_url)
        .await
        .context("opening the demo database")?;
    Ok(store.events(Some(subscription)).await?.len())
}

/// Phase 3: the worker goes away; Exchange's retries carry the notification over the gap.
async fn worker_outage(stage: &mut Stage, report: &mut Report) -> anyhow::Result<()> {
    report.line("\n3. Worker outage: the worker stops, Exchange retries (30 s, 60 s, 120 s ... compressed 100x)");
    if let Some(worker) = stage.worker.take() {
        worker.shutdown().await?;
    }
    let mut mailbox = SimSubscription::new("demo-mailbox-room-0815");
    for i in 0..10 {
        mailbox.item_event(
            EventKind::Modified,
            &format!("AAMkAGRlbW8tb3V0YWdlLQ{i:04}"),
            "2026-11-22T09:30:00Z",
        );
    }
    let endpoint = stage.endpoint()?;
    let policy = RetryPolicy::new(30).compressed(0.01);
    let delivery = tokio::spawn(async move { push::drain(&mut mailbox, &endpoint, &policy).await });
    // The worker comes back after about 1.5 s (2.5 min on Exchange's clock).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut config = stage.config.clone();
    config.worker.listen = stage.worker_addr.to_string();
    stage.worker = Some(
        crate::worker::start(config)
            .await
            .context("restarting the worker")?,
    );
    let run = delivery.await.context("delivery task")?;
    let attempts: Vec<String> = run
        .deliveries
        .first()
        .map(|d| {
            d.attempts
                .iter()
                .map(|a| match &a.outcome {
                    AttemptOutcome::Accepted(_) => format!("{}s: accepted", a.at.as_secs()),
                    AttemptOutcome::Failed(why) => format!("{}s: {why}", a.at.as_secs()),
                })
                .collect()
        })
        .unwrap_or_default();
    report.line(format!(
        "   attempts on Exchange's clock: {}",
        attempts.join("; ")
    ));
    let retried = run
        .deliveries
        .first()
        .is_some_and(|d| d.attempts.len() > 1 && d.accepted.is_some());
    report.check(
        "delivered after the outage by Exchange's retries",
        retried && !run.dropped,
        format!(
            "({} attempts)",
            run.deliveries.first().map_or(0, |d| d.attempts.len())
        ),
    );
    let stored = stored_events(stage, "demo-mailbox-room-0815").await?;
    report.check(
        "nothing lost",
        stored == 10,
        format!("({stored} of 10 events stored)"),
    );
    Ok(())
}

/// Phase 4: requests the gateway must refuse; the worker must see none of them.
async fn hostile_requests(stage: &Stage, report: &mut Report) -> anyhow::Result<()> {
    report.line("\n4. Hostile requests (none may reach the worker)");
    let before = stage
        .worker_metric("pushgate_worker_notifications_total{")
        .await;
    let valid = FIXTURES[0].1;
    let with = |from: &str, to: &str| -> Vec<u8> {
        String::from_utf8_lossy(&notification_request(PATH, "localhost", valid))
            .replacen(from, to, 1)
            .into_bytes()
    };
    let schema_violation = String::from_utf8_lossy(valid).replacen(
        "<t:TimeStamp>2020-12-03T11:03:50Z</t:TimeStamp>",
        "",
        1,
    );
    let billion_laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>&lol3;</s:Body></s:Envelope>"#;
    let truncated = &valid[..valid.len() / 2];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("wrong method (PUT)", with("POST ", "PUT "), 405),
        ("wrong path", with(PATH, "/owa/auth/logon.aspx"), 404),
        (
            "wrong SOAPAction",
            with("/SendNotification", "/GetItem"),
            400,
        ),
        (
            "wrong content type",
            with("text/xml; charset=utf-8", "application/json"),
            415,
        ),
        (
            "compressed body",
            with("Accept: text/xml", "Content-Encoding: gzip"),
            415,
        ),
        (
            "oversize (10 MB declared)",
            with(
                &format!("Content-Length: {}", valid.len()),
                "Content-Length: 10485760",
            ),
            413,
        ),
        (
            "malformed XML (truncated)",
            notification_request(PATH, "localhost", truncated),
            400,
        ),
        (
            "schema violation (TimeStamp missing)",
            notification_request(PATH, "localhost", schema_violation.as_bytes()),
            400,
        ),
        (
            "DTD entity bomb",
            notification_request(PATH, "localhost", billion_laughs.as_bytes()),
            400,
        ),
        (
            "request smuggling (Content-Length + Transfer-Encoding)",
            with("Connection: close", "Transfer-Encoding: chunked"),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let answer = stage.send(EXCHANGE, &request).await;
        let got = answer.as_ref().map(|r| r.status).unwrap_or(0);
        report.check(what, got == status, format!("({got})"));
    }
    let denied = stage
        .send(STRANGER, &notification_request(PATH, "localhost", valid))
        .await;
    report.check(
        "source outside the allowlist",
        denied.is_err(),
        "(connection closed before TLS)".to_string(),
    );
    let slow = slow_header(stage).await;
    report.check(
        "slow header (slowloris)",
        slow,
        "(cut off after header_timeout)".to_string(),
    );
    let after = stage
        .worker_metric("pushgate_worker_notifications_total{")
        .await;
    report.check(
        "the worker saw none of them",
        (after - before).abs() < f64::EPSILON,
        format!("({} notifications reached the worker)", after - before),
    );
    Ok(())
}

/// Sends a request head one byte every 250 ms; true when the gateway hangs up in time.
async fn slow_header(stage: &Stage) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(target) = stage.target(EXCHANGE) else {
        return false;
    };
    let Ok(mut stream) = client::connect(&target).await else {
        return false;
    };
    let started = Instant::now();
    for byte in b"POST /Webservices/SyncNotification.svc HTTP/1.1\r\nHost: localhost\r\n" {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if started.elapsed() > stage.config.gateway.header_timeout + Duration::from_secs(3) {
            return false;
        }
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    ) && started.elapsed() < stage.config.gateway.header_timeout + Duration::from_secs(3)
}

/// The numbers: what the gateway accepted and refused, what the worker stored.
async fn summary(stage: &Stage, report: &mut Report) -> anyhow::Result<()> {
    report.line("\n5. Summary");
    let gateway = stage.gateway_metrics().await;
    let mut by_reason: Vec<(String, f64)> = gateway
        .lines()
        .filter(|l| l.starts_with("pushgate_gateway_requests_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((
                labels
                    .trim_start_matches("pushgate_gateway_requests_total")
                    .to_string(),
                value.parse().ok()?,
            ))
        })
        // Series the gateway creates at 0 for its alerts say nothing here.
        .filter(|(_, value): &(String, f64)| *value != 0.0)
        .collect();
    by_reason.sort_by(|a, b| a.0.cmp(&b.0));
    report.line("   gateway requests by outcome and reason:");
    for (labels, value) in &by_reason {
        report.line(format!("     {value:>5} {labels}"));
    }
    let refused_connections = metric_in(&gateway, "pushgate_gateway_connections_rejected_total{");
    report.line(format!(
        "   connections refused before TLS: {refused_connections}"
    ));
    let store = crate::store::open(&stage.config.worker.database_url).await?;
    let rows = store.events(None).await?.len();
    let stored = stage
        .worker_metric("pushgate_worker_events_stored_total{")
        .await;
    let duplicates = stage
        .worker_metric("pushgate_worker_duplicates_total")
        .await;
    report.line(format!(
        "   worker: {rows} event rows in the table; since the restart {stored} stored, {duplicates} duplicates absorbed"
    ));
    let incidents = store.incidents(None).await?.len();
    report.line(format!(
        "   subscription incidents recorded (resync/resubscribe marks): {incidents}"
    ));
    let mut latencies = report.latencies.clone();
    latencies.sort();
    if !latencies.is_empty() {
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        report.line(format!(
            "   latency per accepted notification (new TLS connection, validation, durable commit): \
             p50 {:.1} ms, p99 {:.1} ms over {}",
            at(0.5).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
            latencies.len()
        ));
    }
    Ok(())
}
