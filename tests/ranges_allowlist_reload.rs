//! The allowlist's hot reload with real files and real loopback connections: a tiny TCP
//! acceptor admits or refuses each connection by its source address, as the gateway's
//! connection filter does, while the ranges file is replaced 50 times underneath it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use pushgate::allowlist::{
    spawn_reloader, Allowlist, AllowlistError, AllowlistMetrics, ReloadOutcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Always admitted: every version of the file lists it.
const STEADY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Denied until version 40 lists it.
const LATE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const REPLACEMENTS: u32 = 50;
const LATE_FROM: u32 = 40;

fn list(version: u32) -> String {
    let mut entries = vec![format!("{STEADY}/32"), "2603:1026::/36".to_string()];
    // Vary the length so every version differs in size as well as content.
    for i in 0..version % 7 {
        entries.push(format!("198.51.{i}.0/24"));
    }
    if version >= LATE_FROM {
        entries.push(format!("{LATE}/32"));
    }
    format!(
        "# version: {version}\n# count: {}\n\n{}\n",
        entries.len(),
        entries.join("\n")
    )
}

/// Replaces the file the way `ranges update` does: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Accepts loopback connections and answers one byte: `1` admitted, `0` refused.
async fn start_acceptor(allowlist: Allowlist) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let admitted = allowlist.current().set.contains(peer.ip());
            tokio::spawn(async move {
                let _ = stream.write_all(if admitted { b"1" } else { b"0" }).await;
            });
        }
    });
    addr
}

async fn admitted_from(source: Ipv4Addr, server: SocketAddr) -> bool {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.unwrap();
    answer[0] == b'1'
}

fn version_series(registry: &Registry) -> Vec<(String, f64)> {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == "pushgate_allowlist_version")
        .flat_map(|family| family.get_metric().iter())
        .map(|metric| {
            (
                metric.get_label()[0].value().to_string(),
                metric.get_gauge().get_value(),
            )
        })
        .collect()
}

fn gauge(registry: &Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|family| family.name() == name)
        .map(|family| family.get_metric()[0].get_gauge().get_value())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_replacements_under_load_fail_nothing_and_admit_the_new_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exchange-online.txt");
    replace(&path, &list(0));
    let registry = Registry::new();
    let metrics = AllowlistMetrics::register(&registry).unwrap();
    let allowlist = Allowlist::load(&path, metrics).unwrap();
    let (stop_reloader, stopped) = tokio::sync::oneshot::channel::<()>();
    let reloader = spawn_reloader(allowlist.clone(), Duration::from_millis(5), async {
        let _ = stopped.await;
    });
    let server = start_acceptor(allowlist.clone()).await;
    assert!(admitted_from(STEADY, server).await);
    assert!(
        !admitted_from(LATE, server).await,
        "denied before its range is listed"
    );

    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let lookups = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..3 {
        // Real connections from an address every version admits; bounded in count.
        let (done, failures, connections) = (done.clone(), failures.clone(), connections.clone());
        load.push(tokio::spawn(async move {
            for _ in 0..3_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                if !admitted_from(STEADY, server).await {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                connections.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }));
    }
    for _ in 0..2 {
        // In-process readers holding a snapshot across a yield, as a request does: the list
        // they hold must stay whole and consistent however many swaps happen meanwhile.
        let (done, failures, lookups, allowlist) = (
            done.clone(),
            failures.clone(),
            lookups.clone(),
            allowlist.clone(),
        );
        load.push(tokio::spawn(async move {
            for _ in 0..2_000_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let held = allowlist.snapshot();
                tokio::task::yield_now().await;
                let consistent = held.set.contains(IpAddr::V4(STEADY))
                    && held.header.count == Some(held.set.len())
                    && held.set.contains("::ffff:127.0.0.2".parse().unwrap());
                if !consistent {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                lookups.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let mut refused = 0;
    for version in 1..=REPLACEMENTS {
        if version == 20 || version == 30 {
            // A broken file, then an empty one, in the middle of the run: refused and counted,
            // the previous list stays in force.
            let broken = if version == 20 {
                "# version: broken\n127.0.0.2/32\n10.0.0.0/33\n"
            } else {
                ""
            };
            replace(&path, broken);
            refused += 1;
            let metrics = allowlist.metrics().clone();
            wait_until("the refusal", || metrics.reload_failures_total() == refused).await;
            assert_eq!(
                allowlist.current().version(),
                Some((version - 1).to_string().as_str())
            );
        }
        replace(&path, &list(version));
        let expected = version.to_string();
        wait_until(&format!("version {version}"), || {
            allowlist.current().version() == Some(expected.as_str())
        })
        .await;
        if version == LATE_FROM {
            assert!(
                admitted_from(LATE, server).await,
                "admitted once its range appears"
            );
        }
    }
    done.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    eprintln!(
        "{REPLACEMENTS} replacements under {} connections and {} held-snapshot lookups",
        connections.load(Ordering::Relaxed),
        lookups.load(Ordering::Relaxed)
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed because of a swap"
    );
    assert!(
        connections.load(Ordering::Relaxed) > 50,
        "the load ran during the swaps"
    );
    assert!(lookups.load(Ordering::Relaxed) > 50);
    assert!(admitted_from(LATE, server).await);
    let metrics = allowlist.metrics();
    assert_eq!(metrics.reloads_total(), u64::from(REPLACEMENTS));
    assert_eq!(metrics.reload_failures_total(), 2);
    assert_eq!(
        version_series(&registry),
        vec![("50".to_string(), 1.0)],
        "old labels retired"
    );
    assert_eq!(
        gauge(&registry, "pushgate_allowlist_entries"),
        allowlist.current().set.len() as f64
    );
    assert!(gauge(&registry, "pushgate_allowlist_loaded_timestamp_seconds") > 1.0e9);

    stop_reloader.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), reloader)
        .await
        .unwrap()
        .unwrap();
}

fn loaded(path: &Path) -> (Allowlist, Registry) {
    let registry = Registry::new();
    let allowlist = Allowlist::load(path, AllowlistMetrics::register(&registry).unwrap()).unwrap();
    (allowlist, registry)
}

#[test]
fn start_up_fails_without_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranges.txt");
    let metrics = || AllowlistMetrics::unregistered().unwrap();
    let err = Allowlist::load(&path, metrics()).unwrap_err();
    assert!(matches!(err, AllowlistError::Io { .. }), "{err}");
    std::fs::write(&path, "# only comments\n").unwrap();
    let err = Allowlist::load(&path, metrics()).unwrap_err().to_string();
    assert!(err.contains("no ranges listed"), "{err}");
    std::fs::write(&path, "10.0.0.0/8\nnot-a-range\n").unwrap();
    let err = Allowlist::load(&path, metrics()).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn a_refused_file_is_counted_once_and_a_fixed_one_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranges.txt");
    replace(&path, &list(1));
    let (allowlist, _registry) = loaded(&path);
    assert_eq!(
        allowlist.reload_if_changed().unwrap(),
        ReloadOutcome::Unchanged
    );

    replace(&path, "# version: 2\n# count: 3\n127.0.0.2/32\n");
    assert!(allowlist.reload_if_changed().is_err());
    assert_eq!(
        allowlist.reload_if_changed().unwrap(),
        ReloadOutcome::Unchanged,
        "reported once"
    );
    assert_eq!(allowlist.metrics().reload_failures_total(), 1);
    assert_eq!(allowlist.current().version(), Some("1"));

    std::fs::remove_file(&path).unwrap();
    let err = allowlist.reload_if_changed().unwrap_err();
    assert!(matches!(err, AllowlistError::Io { .. }), "{err}");
    assert_eq!(
        allowlist.reload_if_changed().unwrap(),
        ReloadOutcome::Unchanged
    );
    assert_eq!(allowlist.metrics().reload_failures_total(), 2);
    assert!(
        allowlist.current().set.contains(IpAddr::V4(STEADY)),
        "the old list still admits"
    );

    replace(&path, &list(3));
    let outcome = allowlist.reload_if_changed().unwrap();
    assert!(
        matches!(outcome, ReloadOutcome::Reloaded { ref version, .. } if version.as_deref() == Some("3"))
    );
    assert_eq!(allowlist.metrics().reloads_total(), 1);
}

#[test]
fn an_in_place_edit_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranges.txt");
    std::fs::write(&path, "10.0.0.0/8\n").unwrap();
    let (allowlist, registry) = loaded(&path);
    assert_eq!(
        version_series(&registry),
        vec![("unknown".to_string(), 1.0)]
    );
    // An editor that truncates and rewrites the same inode.
    std::fs::write(&path, "# version: hand-1\n10.0.0.0/8\n192.0.2.0/24\n").unwrap();
    assert!(matches!(
        allowlist.reload_if_changed().unwrap(),
        ReloadOutcome::Reloaded { entries: 2, .. }
    ));
    assert!(allowlist
        .current()
        .set
        .contains("192.0.2.9".parse().unwrap()));
    assert_eq!(version_series(&registry), vec![("hand-1".to_string(), 1.0)]);
}

#[test]
fn a_request_holding_the_old_list_keeps_it_across_a_swap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranges.txt");
    replace(&path, &list(1));
    let (allowlist, _registry) = loaded(&path);
    let held = allowlist.snapshot();
    replace(&path, "# version: 2\n192.0.2.0/24\n");
    assert!(matches!(
        allowlist.reload_if_changed(),
        Ok(ReloadOutcome::Reloaded { .. })
    ));
    assert!(
        held.set.contains(IpAddr::V4(STEADY)),
        "the held list is unchanged"
    );
    assert_eq!(held.version(), Some("1"));
    assert!(
        !allowlist.current().set.contains(IpAddr::V4(STEADY)),
        "new connections see the new list"
    );
}
