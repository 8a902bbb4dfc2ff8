//! PostgreSQL stopped under a running worker: 503 and an unhealthy /healthz while it is down,
//! nothing half-written, and recovery (reconnect) once it is back. The only test in this file,
//! because it stops the server every other PostgreSQL test uses: run test binaries one after
//! another (as `cargo test` does). The server is started again even when the test fails. Runs only
//! with `PUSHGATE_STOP_POSTGRES=1` (`.ci/run` sets it); otherwise it says SKIPPED.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod worker_support;

use std::process::Command;
use std::time::{Duration, Instant};

use pushgate::worker;
use worker_support::*;

/// The local cluster, as `pg_ctlcluster` names it: (version, "main").
fn local_cluster() -> Option<String> {
    let entries = std::fs::read_dir("/etc/postgresql").ok()?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max_by_key(|version| {
            version
                .split('.')
                .map(|part| part.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
}

fn pg_ctlcluster(version: &str, action: &str) -> std::io::Result<std::process::ExitStatus> {
    let mut command = Command::new("pg_ctlcluster");
    command.args(["--skip-systemctl-redirect", version, "main", action]);
    if action == "stop" {
        command.args(["-m", "fast"]);
    }
    command.status()
}

/// Only the local cluster may be stopped, and only when it is the server under test.
fn targets_local_cluster(url: &str) -> bool {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return false;
    };
    let local_host = config.get_hosts().iter().all(|host| match host {
        tokio_postgres::config::Host::Tcp(name) => name == "127.0.0.1" || name == "localhost",
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => false,
    });
    let default_port = config.get_ports().iter().all(|&port| port == 5432);
    local_host && default_port
}

/// Starts the cluster again when dropped, whatever happened in between.
struct RestartGuard {
    version: String,
}

impl Drop for RestartGuard {
    fn drop(&mut self) {
        match pg_ctlcluster(&self.version, "start") {
            Ok(status) if status.success() => {}
            other => eprintln!("restarting PostgreSQL {}: {other:?}", self.version),
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect("127.0.0.1:5432").is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_postgres_answers_503_then_recovers() {
    // Asked first, before touching the database: a developer's plain `cargo test` must never stop
    // a server that other work on the machine is using.
    if !skip::opted_in(
        skip::STOP_POSTGRES,
        "stops and restarts the machine's PostgreSQL cluster",
    ) {
        return;
    }
    if !targets_local_cluster(&postgres_base_url()) {
        skip::skip("the test database is not the local cluster on 127.0.0.1:5432");
        return;
    }
    let Some(version) = local_cluster() else {
        skip::skip("no local PostgreSQL cluster under /etc/postgresql to stop");
        return;
    };
    let Some(db) = TestDb::postgres("stopped_postgres_answers_503_then_recovers").await else {
        return;
    };
    let handle = worker::start(db.config()).await.expect("worker starts");
    let addr = handle.listen_addr;
    let first = body("PGDOWN", &watermark("PGDOWN", 0), &[watermark("PGDOWN", 1)]);
    assert_eq!(post(addr, LEGACY_PATH, first).await.unwrap().status, 200);

    let guard = RestartGuard {
        version: version.clone(),
    };
    let stopped = pg_ctlcluster(&version, "stop").expect("pg_ctlcluster runs");
    assert!(stopped.success(), "pg_ctlcluster stop: {stopped}");

    let during = body(
        "PGDOWN",
        &watermark("PGDOWN", 1),
        &[watermark("PGDOWN", 2), watermark("PGDOWN", 3)],
    );
    for _ in 0..3 {
        let started = Instant::now();
        let answer = post(addr, LEGACY_PATH, during.clone()).await.unwrap();
        assert_eq!(answer.status, 503, "{:?}", answer.body);
        assert!(started.elapsed() < Duration::from_secs(25));
    }
    assert_eq!(
        get(handle.metrics_addr, "/healthz").await.unwrap().status,
        503
    );

    drop(guard); // starts PostgreSQL again and waits for it
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = post(addr, LEGACY_PATH, during.clone()).await.unwrap();
        if answer.status == 200 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(answer.status, 200, "worker reconnects: {:?}", answer.body);
    assert_eq!(
        get(handle.metrics_addr, "/healthz").await.unwrap().status,
        200
    );
    let store = db.inspect().await;
    let watermarks: Vec<String> = store
        .events(Some("PGDOWN"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.watermark.unwrap())
        .collect();
    assert_eq!(
        watermarks,
        [1, 2, 3].map(|n| watermark("PGDOWN", n)),
        "each event once, none lost"
    );
    handle.shutdown().await.unwrap();
}
