//! End-to-end capacity: notifications through the real gateway (a new TLS connection each, as
//! Exchange sends them, full validation) into the real worker (durable SQLite commit) on loopback.
//! Bounded in count and time. Run with `cargo bench --bench end_to_end`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may panic on setup failures

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushgate::config::Config;
use pushgate::exchange_sim::client::{self, notification_request, Target};
use pushgate::exchange_sim::push::SimSubscription;
use pushgate::notification::{notification_xml, EventKind};

const SENDERS: usize = 32;
const PER_SENDER: usize = 60;
const DEADLINE: Duration = Duration::from_secs(120);
const EXCHANGE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        pushgate::gateway::tls::self_signed(&["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    std::fs::write(dir.path().join("token"), "bench-token\n").unwrap();
    std::fs::write(
        dir.path().join("ranges.txt"),
        "# version: bench\n127.0.0.2/32\n",
    )
    .unwrap();

    let mut config = Config::default();
    config.worker.listen = "127.0.0.1:0".into();
    config.worker.metrics_listen = "127.0.0.1:0".into();
    config.worker.database_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    config.worker.gateway_token_file = dir.path().join("token");
    // The bench's subscriptions are its own invention: store them, as the measurement means.
    config.worker.unknown_subscriptions = pushgate::config::UnknownSubscriptions::Accept;
    let worker = pushgate::worker::start(config.clone()).await.unwrap();
    let g = &mut config.gateway;
    g.listen = "127.0.0.1:0".into();
    g.metrics_listen = "127.0.0.1:0".into();
    g.tls_cert = dir.path().join("cert.pem");
    g.tls_key = dir.path().join("key.pem");
    g.ranges_file = dir.path().join("ranges.txt");
    g.upstream_token_file = dir.path().join("token");
    g.upstream = format!("http://{}", worker.listen_addr);
    // All senders play one Exchange address, far faster than Exchange sends from one.
    g.rate_limit_per_source = 0;
    g.access_log = "off".into();
    let gateway = pushgate::gateway::start(&config).await.unwrap();
    let target = Arc::new(
        Target::tls(gateway.tls_addr.unwrap(), &cert, "localhost")
            .unwrap()
            .from(EXCHANGE),
    );

    // Each sender is one subscription: one notification in flight, as Exchange does.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut mailbox = SimSubscription::new(format!("bench-subscription-{sender}"));
            let mut latencies = Vec::with_capacity(PER_SENDER);
            for i in 0..PER_SENDER {
                if started.elapsed() > DEADLINE {
                    break;
                }
                mailbox.item_event(
                    EventKind::Modified,
                    &format!("item-{sender}-{i}"),
                    "2026-11-22T10:00:00Z",
                );
                mailbox.item_event(
                    EventKind::Modified,
                    &format!("folder-{sender}"),
                    "2026-11-22T10:00:00Z",
                );
                let body = notification_xml(&mailbox.next_notification().unwrap());
                let request = notification_request(
                    "/Webservices/SyncNotification.svc?Default",
                    "localhost",
                    body.as_bytes(),
                );
                let sent = Instant::now();
                let response = client::exchange(&target, &request, Duration::from_secs(30))
                    .await
                    .unwrap();
                assert_eq!(response.status, 200);
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "end_to_end: {} notifications (2 events each) from {SENDERS} senders in {:.2} s: {:.0} acknowledged/s; \
         latency p50 {:.1} ms, p99 {:.1} ms (new TLS connection, validation, durable SQLite commit)",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
    );
    gateway.shutdown().await;
    worker.shutdown().await.unwrap();
}
