//! `pushgate demo`: the whole product on loopback in one command, from the binary alone. Owns the
//! stage (simulated Exchange, real gateway, real worker, throw-away files), the report and its
//! expectations; the scenes are in `processes` (A–F, a lost subscription) and `notifications`.

mod api;
mod notifications;
mod processes;
pub mod wiring;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;
use crate::exchange_sim::client::{self, RawResponse, Target};
use crate::exchange_sim::{SimHandle, Simulator};
use crate::store::Store;
use crate::worker::Tuning;
use wiring::OauthClient;

/// Plays Exchange Online: inside the demo's allowlist; the simulator pushes from it.
const EXCHANGE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A source outside the allowlist.
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// The legacy notification path the reference captures were posted to.
const PATH: &str = "/Webservices/SyncNotification.svc?Default";
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Room mailboxes the simulated Exchange holds and the worker subscribes.
const ROOMS: usize = 24;
/// Exchange's and the worker's clock: one Exchange minute lasts 600 ms.
const TIME_SCALE: f64 = 0.01;
/// Minutes between heartbeats (StatusFrequency): 600 ms here.
const STATUS_FREQUENCY: u32 = 1;
/// Longest any single expectation may take to come true.
const WAIT: Duration = Duration::from_secs(15);
const CLIENT: OauthClient<'static> = OauthClient {
    id: "pushgate-demo",
    secret: "demo-client-secret",
};

const SHIPPED_RANGES: &str = include_str!("../../ranges/exchange-online.txt");

/// One expectation and whether it held.
struct Check {
    what: String,
    ok: bool,
    detail: String,
}

/// Calendar writes the simulated Exchange received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Writes {
    create: u64,
    update: u64,
    delete: u64,
}

impl Writes {
    const NONE: Writes = Writes {
        create: 0,
        update: 0,
        delete: 0,
    };
    const CREATE: Writes = Writes {
        create: 1,
        ..Writes::NONE
    };
    const UPDATE: Writes = Writes {
        update: 1,
        ..Writes::NONE
    };
    const DELETE: Writes = Writes {
        delete: 1,
        ..Writes::NONE
    };

    fn total(self) -> u64 {
        self.create + self.update + self.delete
    }

    fn since(self, before: Writes) -> Writes {
        Writes {
            create: self.create.saturating_sub(before.create),
            update: self.update.saturating_sub(before.update),
            delete: self.delete.saturating_sub(before.delete),
        }
    }
}

impl std::fmt::Display for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.total() == 0 {
            return f.write_str("no write");
        }
        let parts: Vec<String> = [
            (self.create, "CreateItem"),
            (self.update, "UpdateItem"),
            (self.delete, "DeleteItem"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, op)| format!("{n} {op}"))
        .collect();
        f.write_str(&parts.join(", "))
    }
}

#[derive(Default)]
struct Report {
    text: String,
    checks: Vec<Check>,
    latencies: Vec<Duration>,
    /// Reservations found in step with their calendar item after each process, by process.
    reconciled: BTreeMap<&'static str, u32>,
    /// EWS writes counted at the simulator, by what caused them, in the order they happened.
    writes: Vec<(String, Writes)>,
    /// The worker's metrics just before the outage scene stops it (its counters restart).
    worker_before_restart: String,
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

    /// Counts a reservation of `process` that ended in step with its item.
    fn reconciled(&mut self, process: &'static str, in_step: bool) {
        let count = self.reconciled.entry(process).or_default();
        if in_step {
            *count += 1;
        }
    }

    fn writes(&mut self, cause: impl Into<String>, writes: Writes) {
        self.writes.push((cause.into(), writes));
    }

    /// Records `writes` under `cause`, and checks `what`: it `held`, with exactly `expected`.
    fn check_writes(
        &mut self,
        cause: &str,
        what: &str,
        held: bool,
        writes: Writes,
        expected: Writes,
    ) -> bool {
        self.writes(cause, writes);
        self.check(what, held && writes == expected, format!("({writes})"))
    }
}

/// Everything one demo run started, and the files it wrote.
struct Demo {
    config: Config,
    tuning: Tuning,
    ca_pem: String,
    sim: SimHandle,
    gateway: Option<crate::gateway::GatewayHandle>,
    worker: Option<crate::worker::WorkerHandle>,
    worker_addr: SocketAddr,
    store: Arc<dyn Store>,
    api: api::Api,
    rooms: Vec<String>,
}

impl Demo {
    fn target(&self, from: IpAddr) -> anyhow::Result<Target> {
        let addr = self
            .gateway
            .as_ref()
            .and_then(|g| g.tls_addr)
            .context("gateway not running")?;
        Ok(Target::tls(addr, &self.ca_pem, "localhost")?.from(from))
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

    async fn worker_metrics(&self) -> String {
        match self.worker.as_ref() {
            Some(worker) => metrics_text(worker.metrics_addr).await,
            None => String::new(),
        }
    }

    async fn gateway_metrics(&self) -> String {
        match self.gateway.as_ref() {
            Some(gateway) => metrics_text(gateway.metrics_addr).await,
            None => String::new(),
        }
    }

    /// Calendar writes the simulator has received so far, all mailboxes.
    fn writes(&self) -> Writes {
        let counts = self.sim.call_counts();
        Writes {
            create: counts.operation("CreateItem"),
            update: counts.operation("UpdateItem"),
            delete: counts.operation("DeleteItem"),
        }
    }

    /// Waits until no event and no calendar write is waiting or being handled; false when that
    /// did not happen.
    async fn quiet(&self) -> anyhow::Result<bool> {
        let quiet = wait_for(|| async {
            let backlog = self.store.sync_backlog().await?;
            if backlog.events_pending > 0 || backlog.outbox_pending > 0 {
                return Ok(None);
            }
            let events = self.store.events(None).await?;
            Ok((!events
                .iter()
                .any(|e| e.state == crate::store::EventState::Processing))
            .then_some(()))
        })
        .await?;
        Ok(quiet.is_some())
    }

    async fn start_worker(&mut self) -> anyhow::Result<()> {
        let mut config = self.config.clone();
        // A restarted worker must come back on the address the gateway forwards to.
        config.worker.listen = self.worker_addr.to_string();
        self.worker = Some(
            crate::worker::start_with(config, self.tuning.clone())
                .await
                .context("starting the worker")?,
        );
        Ok(())
    }

    async fn stop_worker(&mut self) -> anyhow::Result<()> {
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await.context("stopping the worker")?;
        }
        Ok(())
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

/// The value of `sample`, or the sum over its labels when `sample` ends in `{`.
fn metric_in(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(name, _)| *name == sample || (sample.ends_with('{') && name.starts_with(sample)))
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// Every `name{labels} value` sample of a metric with a non-zero value, labels as printed.
fn labelled_samples(text: &str, name: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}{{");
    let mut samples: Vec<(String, f64)> = text
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| {
            let (labels, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            (value > 0.0).then(|| (labels.trim_start_matches(name).to_string(), value))
        })
        .collect();
    samples.sort_by(|a, b| a.0.cmp(&b.0));
    samples
}

/// [`labelled_samples`] over several scrapes (a restarted part's runs), added up per label.
fn summed_samples(texts: &[String], name: &str) -> Vec<(String, f64)> {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for text in texts {
        for (labels, value) in labelled_samples(text, name) {
            *sums.entry(labels).or_default() += value;
        }
    }
    sums.into_iter().collect()
}

/// `pushgate demo`.
pub fn run(keep: bool) -> anyhow::Result<()> {
    let started = Instant::now();
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
            "\nFiles kept in {} (pushgate.log, access.log, database, certificates).",
            kept.display()
        );
    }
    println!("\nDemo ran {:.1} s.", started.elapsed().as_secs_f64());
    if failed.is_empty() {
        println!("All {} expectations met.", report.checks.len());
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

fn random_token() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The demo's configuration: gateway and worker on loopback, the gateway's certificate (also the
/// CA Exchange's deliveries must chain to) and the REST API's token.
fn demo_config(dir: &Path) -> anyhow::Result<(Config, String, String)> {
    let (cert, key) =
        crate::gateway::tls::self_signed(&["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .context("generating the demo certificate")?;
    std::fs::write(dir.join("cert.pem"), &cert)?;
    std::fs::write(dir.join("key.pem"), &key)?;
    std::fs::write(dir.join("token"), format!("{}\n", random_token()))?;
    let api_token = random_token();
    std::fs::write(dir.join("api.token"), format!("{api_token}\n"))?;
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
    w.metrics_listen = "127.0.0.1:0".into();
    w.database_url = format!("sqlite://{}", dir.join("pushgate.db").display());
    w.gateway_token_file = dir.join("token");
    w.api_token_file = dir.join("api.token");
    // The worker owns its subscriptions: notifications of any other are answered Unsubscribe
    // (the production default, kept explicit here).
    w.unknown_subscriptions = crate::config::UnknownSubscriptions::Unsubscribe;
    w.time_scale = TIME_SCALE;
    config.subscriptions.status_frequency = STATUS_FREQUENCY;
    Ok((config, cert, api_token))
}

/// Starts the parts: the gateway (its upstream the worker's port, chosen first), the simulated
/// Exchange pushing to the gateway from `EXCHANGE`, the worker with `[ews]` at the simulator.
async fn set_up(dir: &Path) -> anyhow::Result<Demo> {
    let (mut config, ca_pem, api_token) = demo_config(dir)?;
    let worker_port = wiring::free_loopback_port().context("choosing the worker's port")?;
    let worker_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), worker_port);
    config.worker.listen = worker_addr.to_string();
    config.gateway.upstream = format!("http://{worker_addr}");
    let gateway = crate::gateway::start(&config)
        .await
        .context("starting the gateway")?;
    let gateway_port = gateway
        .tls_addr
        .context("the gateway has no TLS listener")?
        .port();
    let rooms: Vec<String> = (1..=ROOMS)
        .map(|n| format!("room{n:02}@contoso.com"))
        .collect();
    let sim = Simulator::start(wiring::simulator_options(
        TIME_SCALE,
        Duration::from_secs(5),
        Some(ca_pem.clone()),
        EXCHANGE,
        rooms.clone(),
        &CLIENT,
    ))
    .await
    .context("starting the simulated Exchange")?;
    wiring::point_ews_at(&mut config, &sim, dir, &CLIENT)?;
    config.subscriptions.endpoint_url = wiring::gateway_callback_url(gateway_port);
    config.check().context("the demo's configuration")?;
    let store = crate::store::open(&config.worker.database_url)
        .await
        .context("opening the demo database")?;
    let mut demo = Demo {
        config,
        tuning: wiring::compressed_tuning(),
        ca_pem,
        sim,
        gateway: Some(gateway),
        worker: None,
        worker_addr,
        store,
        api: api::Api::new(worker_addr, &api_token)?,
        rooms,
    };
    if let Err(e) = demo.start_worker().await {
        tear_down(&mut demo).await;
        return Err(e);
    }
    Ok(demo)
}

async fn tear_down(demo: &mut Demo) {
    if let Some(gateway) = demo.gateway.take() {
        gateway.shutdown().await;
    }
    if let Some(worker) = demo.worker.take() {
        if let Err(e) = worker.shutdown().await {
            tracing::warn!(error = %e, "demo: stopping the worker");
        }
    }
    demo.sim.shutdown().await;
}

async fn play(dir: &Path) -> anyhow::Result<Report> {
    let mut demo = set_up(dir).await?;
    let mut report = Report::default();
    report.line("pushgate demo: the gateway and the worker on loopback, Exchange simulated");
    if let Some(gateway) = &demo.gateway {
        report.line(format!(
            "  gateway   https://{} (allowlist: the shipped Exchange Online list + {EXCHANGE})",
            gateway.tls_addr.map(|a| a.to_string()).unwrap_or_default()
        ));
    }
    report.line(format!(
        "  worker    http://{} (SQLite {}), REST API with a bearer token",
        demo.worker_addr,
        dir.join("pushgate.db").display()
    ));
    report.line(format!(
        "  Exchange  simulated EWS at {} (OAuth client credentials), pushing from {EXCHANGE}; \
         its clock and the worker's run {}x fast",
        demo.sim.ews_url(),
        (1.0 / TIME_SCALE).round()
    ));

    // A scene that cannot go on (an API call refused, a part that will not start) is a failed
    // expectation; the scenes after it still run, and the report is printed either way.
    // The gateway alone first (nothing else reaches the worker yet), then the whole chain.
    let scene = notifications::reference_notifications(&demo, &mut report).await;
    scene_ran(&mut report, "1 (reference notifications)", scene);
    let scene = notifications::hostile_requests(&demo, &mut report).await;
    scene_ran(&mut report, "2 (hostile requests)", scene);
    let scene = processes::subscriptions(&demo, &mut report).await;
    scene_ran(&mut report, "3 (subscriptions)", scene);
    let scene = processes::b_to_f(&demo, &mut report).await;
    scene_ran(&mut report, "4 (processes B-F)", scene);
    let scene = processes::lost_subscription(&demo, &mut report).await;
    scene_ran(&mut report, "5 (lost subscription)", scene);
    let scene = notifications::busy_mailbox(&demo, &mut report).await;
    scene_ran(&mut report, "6 (busy room)", scene);
    let scene = notifications::worker_outage(&mut demo, &mut report).await;
    scene_ran(&mut report, "7 (worker outage)", scene);
    let scene = summary(&demo, &mut report).await;
    scene_ran(&mut report, "8 (summary)", scene);
    tear_down(&mut demo).await;
    Ok(report)
}

fn scene_ran(report: &mut Report, scene: &str, outcome: anyhow::Result<()>) {
    if let Err(e) = outcome {
        report.check(
            format!("scene {scene} ran to its end"),
            false,
            format!("({e:#})"),
        );
    }
}

/// Waits (bounded by `WAIT`) until `probe` yields a value.
async fn wait_for<T, F, Fut>(mut probe: F) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await? {
            return Ok(Some(value));
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The numbers: what the gateway accepted and refused, what the worker stored and synced.
async fn summary(demo: &Demo, report: &mut Report) -> anyhow::Result<()> {
    report.line("\n8. Summary");
    let gateway = demo.gateway_metrics().await;
    report.line("   gateway requests by outcome and reason:");
    for (labels, value) in labelled_samples(&gateway, "pushgate_gateway_requests_total") {
        report.line(format!("     {value:>6} {labels}"));
    }
    let refused_connections = metric_in(&gateway, "pushgate_gateway_connections_rejected_total{");
    report.line(format!(
        "   connections refused before TLS: {refused_connections}"
    ));
    let rows = demo.store.events(None).await?.len();
    let runs = [
        report.worker_before_restart.clone(),
        demo.worker_metrics().await,
    ];
    let duplicates: f64 = runs
        .iter()
        .map(|text| metric_in(text, "pushgate_worker_duplicates_total"))
        .sum();
    report.line(format!(
        "   worker (both runs, before and after the outage): {rows} event rows in the table, {duplicates} duplicates absorbed"
    ));
    for (title, name) in [
        (
            "notifications by result",
            "pushgate_worker_notifications_total",
        ),
        (
            "subscriptions it replaced, by cause",
            "pushgate_subscription_renewals_total",
        ),
        (
            "events the sync step handled, by outcome",
            "pushgate_sync_events_total",
        ),
        (
            "reservations it changed from Exchange, by cause",
            "pushgate_reservations_changed_total",
        ),
    ] {
        report.line(format!("   worker: {title}:"));
        for (labels, value) in summed_samples(&runs, name) {
            report.line(format!("     {value:>6} {labels}"));
        }
    }

    report.line("   reservations reconciled per process (reservation and calendar item in step):");
    for (process, count) in &report.reconciled.clone() {
        report.line(format!("     {process:<30} {count}"));
    }
    report.line("   EWS writes per cause (counted by the simulated Exchange):");
    let mut attributed = Writes::default();
    for (cause, writes) in &report.writes.clone() {
        report.line(format!("     {cause:<44} {writes}"));
        attributed = Writes {
            create: attributed.create + writes.create,
            update: attributed.update + writes.update,
            delete: attributed.delete + writes.delete,
        };
    }
    let all = demo.writes();
    report.check(
        "every EWS write has a cause above",
        all == attributed,
        format!("({all} written in all)"),
    );
    let counted = summed_samples(&runs, "pushgate_sync_ews_writes_total");
    report.line("   the worker's own count of its writes (pushgate_sync_ews_writes_total):");
    for (labels, value) in &counted {
        report.line(format!("     {value:>6} {labels}"));
    }
    let worker_total: f64 = counted.iter().map(|(_, value)| value).sum();
    report.check(
        "the worker's count of its writes matches what Exchange received",
        (worker_total - all.total() as f64).abs() < f64::EPSILON,
        format!("({worker_total} counted by the worker)"),
    );
    let calls = demo.sim.call_counts();
    report.line(format!(
        "   EWS calls by operation: {}",
        calls
            .by_operation
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut latencies = report.latencies.clone();
    latencies.sort();
    if !latencies.is_empty() {
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        report.line(format!(
            "   latency per reference notification (new TLS connection, validation, worker's answer): \
             p50 {:.1} ms, p99 {:.1} ms over {}",
            at(0.5).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
            latencies.len()
        ));
    }
    Ok(())
}
