//! Crash: the real `pushgate worker` process is killed with SIGKILL several times while eight
//! clients send notifications (retrying like Exchange: the identical body until it gets a 200),
//! and restarted on the same database. Afterwards every notification that got a 200 has all its
//! events in the table; none has only part of them; and the watermark chains show no gap.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod worker_support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushgate::store::SubscriptionState;
use tokio::process::{Child, Command};
use worker_support::*;

const CLIENTS: usize = 8;
const KILLS: usize = 4;
const EVENTS_PER_NOTIFICATION: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_sqlite() {
    crash_harness(&TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_postgres() {
    let Some(db) = TestDb::postgres("sigkill_loses_nothing_acknowledged_postgres").await else {
        return;
    };
    crash_harness(&db).await;
}

struct Ports {
    listen: u16,
    metrics: u16,
}

fn write_config(db: &TestDb, ports: &Ports) -> std::path::PathBuf {
    let config = worker_config(db.dir(), &db.url());
    let text = format!(
        "[worker]\nlisten = \"127.0.0.1:{}\"\nmetrics_listen = \"127.0.0.1:{}\"\n\
         database_url = \"{}\"\ngateway_token_file = \"{}\"\n\
         unknown_subscriptions = \"accept\"\n\n[log]\nlevel = \"warn\"\nformat = \"text\"\n",
        ports.listen,
        ports.metrics,
        config.worker.database_url,
        config.worker.gateway_token_file.display(),
    );
    let path = db.dir().join("pushgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn spawn_worker(config: &Path, log: &Path, ports: &Ports) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["worker", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker");
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], ports.metrics));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = get(metrics, "/healthz").await {
            if answer.status == 200 {
                return child;
            }
        }
        assert!(Instant::now() < deadline, "worker did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a client learned about one notification.
struct Sent {
    subscription: String,
    watermarks: Vec<String>,
    acknowledged: bool,
}

async fn client(index: usize, addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let subscription = format!("CRASH{index}");
    let mut sent = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let watermarks: Vec<String> = (1..=EVENTS_PER_NOTIFICATION)
            .map(|i| watermark(&subscription, n + i))
            .collect();
        let body = body(&subscription, &watermark(&subscription, n), &watermarks);
        let mut record = Sent {
            subscription: subscription.clone(),
            watermarks,
            acknowledged: false,
        };
        // Like Exchange: the identical body again until it is acknowledged.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match post(addr, LEGACY_PATH, body.clone()).await {
                Ok(answer) if answer.status == 200 => {
                    record.acknowledged = true;
                    break;
                }
                _ if stop.load(Ordering::Relaxed) => break,
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        let acknowledged = record.acknowledged;
        sent.push(record);
        if !acknowledged {
            break;
        }
        n += EVENTS_PER_NOTIFICATION;
    }
    sent
}

async fn crash_harness(db: &TestDb) {
    let ports = Ports {
        listen: free_port(),
        metrics: free_port(),
    };
    let config = write_config(db, &ports);
    let log = db.dir().join("worker.log");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports.listen));
    let mut worker = spawn_worker(&config, &log, &ports).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(i, addr, stop.clone())))
        .collect();
    for kill in 0..KILLS {
        let pause = 200 + rand::random::<u64>() % 400;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        worker.kill().await.expect("SIGKILL the worker");
        eprintln!("kill {kill}: worker killed after {pause} ms");
        tokio::time::sleep(Duration::from_millis(50)).await;
        worker = spawn_worker(&config, &log, &ports).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.unwrap());
    }
    worker.kill().await.expect("final SIGKILL");

    let acknowledged = sent.iter().filter(|s| s.acknowledged).count();
    eprintln!(
        "{} notifications sent, {acknowledged} acknowledged, {KILLS} kills",
        sent.len()
    );
    assert!(
        acknowledged >= CLIENTS * 5,
        "the harness got some work done: {acknowledged}"
    );

    let store = db.inspect().await;
    let rows = store.events(None).await.unwrap();
    let stored: HashSet<(String, String)> = rows
        .iter()
        .map(|row| (row.subscription_id.clone(), row.watermark.clone().unwrap()))
        .collect();
    assert_eq!(stored.len(), rows.len(), "no event twice");
    let mut accounted = 0;
    for notification in &sent {
        let present = notification
            .watermarks
            .iter()
            .filter(|w| stored.contains(&(notification.subscription.clone(), (*w).clone())))
            .count();
        if notification.acknowledged {
            assert_eq!(
                present,
                notification.watermarks.len(),
                "acknowledged notification lost events: {} {:?}",
                notification.subscription,
                notification.watermarks
            );
        } else {
            assert!(
                present == 0 || present == notification.watermarks.len(),
                "partially stored: {} {:?}",
                notification.subscription,
                notification.watermarks
            );
        }
        accounted += present;
    }
    assert_eq!(accounted, rows.len(), "nothing stored that nobody sent");
    let mut per_subscription: HashMap<&str, usize> = HashMap::new();
    for notification in sent.iter().filter(|s| s.acknowledged) {
        *per_subscription
            .entry(&notification.subscription)
            .or_default() += 1;
    }
    for subscription in per_subscription.keys() {
        let record = store
            .subscription(subscription)
            .await
            .unwrap()
            .expect("registered");
        assert_eq!(
            record.state,
            SubscriptionState::Active,
            "{subscription}: no gap after crashes"
        );
    }
}

/// SIGTERM (what systemd sends) is a graceful stop: the process exits 0 and everything it
/// acknowledged is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully() {
    let db = TestDb::sqlite();
    let ports = Ports {
        listen: free_port(),
        metrics: free_port(),
    };
    let config = write_config(&db, &ports);
    let mut worker = spawn_worker(&config, &db.dir().join("worker.log"), &ports).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports.listen));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(client(0, addr, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = worker.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("worker exits after SIGTERM")
        .expect("exit status");
    stop.store(true, Ordering::Relaxed);
    assert!(exit.success(), "graceful exit: {exit}");
    let sent = sender.await.unwrap();
    let store = db.inspect().await;
    let stored: HashSet<String> = store
        .events(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.watermark.unwrap())
        .collect();
    let acknowledged: Vec<&Sent> = sent.iter().filter(|s| s.acknowledged).collect();
    assert!(!acknowledged.is_empty());
    for notification in acknowledged {
        for watermark in &notification.watermarks {
            assert!(
                stored.contains(watermark),
                "acknowledged but missing: {watermark}"
            );
        }
    }
}
