//! Durable acknowledgements through the real worker (in-process, loopback HTTP, real database):
//!
//! 1. Throughput: 32 closed-loop senders on keep-alive connections; criterion reports
//!    notifications (= acknowledgements after commit) per second.
//! 2. Latency: an open-loop sender paced at 1,000 notifications/s for a bounded run, each on a
//!    new connection (as Exchange delivers); latency is measured from the scheduled send time,
//!    so a stalled worker cannot hide queueing (no coordinated omission). Prints p50/p99/max.
//!
//! SQLite (temp file, WAL, synchronous FULL) and PostgreSQL (fresh schema in database `test`,
//! skipped when unreachable). Every notification carries two events, like Exchange's usual
//! item + folder pair. Run: `cargo bench --bench worker_ingest` (release).
//! `PUSHGATE_BENCH_PACED_SECS` (default 10) sets the paced run's length.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

#[path = "../tests/worker_support/mod.rs"]
mod worker_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use worker_support::*;

const SENDERS: usize = 32;
const PER_SENDER_PER_ITER: usize = 10;
const PACED_RATE: u64 = 1_000;
const PACED_SUBSCRIPTIONS: usize = 2_000;

/// Per-subscription watermark counters, so every notification continues its chain.
struct Chains {
    next: Vec<AtomicUsize>,
}

impl Chains {
    fn new(count: usize) -> Arc<Chains> {
        Arc::new(Chains {
            next: (0..count).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    fn body(&self, prefix: &str, index: usize) -> String {
        let n = self.next[index].fetch_add(2, Ordering::Relaxed);
        let subscription = format!("{prefix}{index:05}");
        body(
            &subscription,
            &watermark(&subscription, n),
            &[
                watermark(&subscription, n + 1),
                watermark(&subscription, n + 2),
            ],
        )
    }
}

async fn closed_loop(addr: SocketAddr, chains: Arc<Chains>, per_sender: usize) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(SENDERS);
    for sender in 0..SENDERS {
        let chains = chains.clone();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr).await.expect("connect");
            for _ in 0..per_sender {
                let body = chains.body("TPUT", sender);
                let answer = connection
                    .post(LEGACY_PATH, Some(TOKEN), body, &[])
                    .await
                    .expect("answer");
                assert_eq!(answer.status, 200, "{:?}", answer.body);
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
    started.elapsed()
}

struct Latencies {
    sorted: Vec<Duration>,
    failures: usize,
    achieved_rate: f64,
}

impl Latencies {
    fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }
}

async fn paced(addr: SocketAddr, chains: Arc<Chains>, seconds: u64) -> Latencies {
    let total = (PACED_RATE * seconds) as usize;
    let period = Duration::from_nanos(1_000_000_000 / PACED_RATE);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let scheduled = started + period * i as u32;
        tokio::time::sleep_until(scheduled).await;
        let chains = chains.clone();
        tasks.push(tokio::spawn(async move {
            let body = chains.body("PACE", i % PACED_SUBSCRIPTIONS);
            let ok = matches!(post(addr, LEGACY_PATH, body).await, Ok(a) if a.status == 200);
            (ok, scheduled.elapsed())
        }));
    }
    let mut sorted = Vec::with_capacity(total);
    let mut failures = 0;
    for task in tasks {
        let (ok, latency) = task.await.expect("paced sender");
        if ok {
            sorted.push(latency);
        } else {
            failures += 1;
        }
    }
    let achieved_rate = total as f64 / started.elapsed().as_secs_f64();
    sorted.sort_unstable();
    Latencies {
        sorted,
        failures,
        achieved_rate,
    }
}

fn bench_backend(
    criterion: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    db: &TestDb,
    paced_secs: u64,
) {
    let handle = runtime
        .block_on(pushgate::worker::start(db.config()))
        .expect("worker starts");
    let addr = handle.listen_addr;

    let chains = Chains::new(SENDERS);
    let mut group = criterion.benchmark_group(format!("worker_ingest/{name}"));
    group.throughput(Throughput::Elements((SENDERS * PER_SENDER_PER_ITER) as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("durable_acks_32_senders", |b| {
        b.iter_custom(|iters| {
            let per_sender = PER_SENDER_PER_ITER * iters as usize;
            runtime.block_on(closed_loop(addr, chains.clone(), per_sender))
        })
    });
    group.finish();

    let latencies = runtime.block_on(paced(addr, Chains::new(PACED_SUBSCRIPTIONS), paced_secs));
    let line = format!(
        "worker_ingest/{name}/paced_1000_per_s: {} acknowledged in {paced_secs} s \
         (achieved {:.0}/s, {} failed): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        latencies.sorted.len(),
        latencies.achieved_rate,
        latencies.failures,
        latencies.percentile(50.0).as_secs_f64() * 1e3,
        latencies.percentile(99.0).as_secs_f64() * 1e3,
        latencies.percentile(99.9).as_secs_f64() * 1e3,
        latencies.percentile(100.0).as_secs_f64() * 1e3,
    );
    println!("{line}");
    let metrics = runtime
        .block_on(get(handle.metrics_addr, "/metrics"))
        .map(|a| String::from_utf8_lossy(&a.body).to_string())
        .unwrap_or_default();
    for wanted in [
        "pushgate_worker_commit_batch_size_sum",
        "pushgate_worker_commit_batch_size_count",
        "pushgate_worker_commit_duration_seconds_sum",
        "pushgate_worker_commit_duration_seconds_count",
        "pushgate_worker_notifications_total{result=\"stored\"}",
    ] {
        if let Some(found) = metrics.lines().find(|l| l.starts_with(wanted)) {
            println!("worker_ingest/{name}: {found}");
        }
    }
    runtime.block_on(handle.shutdown()).expect("shutdown");
}

fn main() {
    let paced_secs = std::env::var("PUSHGATE_BENCH_PACED_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10u64)
        .clamp(1, 120);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut criterion = Criterion::default().configure_from_args();

    let sqlite = TestDb::sqlite();
    bench_backend(&mut criterion, &runtime, "sqlite", &sqlite, paced_secs);

    match runtime.block_on(TestDb::postgres("worker_ingest bench")) {
        Some(postgres) => {
            bench_backend(&mut criterion, &runtime, "postgres", &postgres, paced_secs);
            drop(postgres);
        }
        None => println!("worker_ingest/postgres: skipped (no PostgreSQL server reachable)"),
    }
    criterion.final_summary();
}
