//! The gateway under steady load while its ranges file is replaced 50 times: no request fails
//! because of a swap, broken files in between are refused and counted, and a denied address
//! becomes admitted once its range appears.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pushgate::exchange_sim::client::{self, notification_request};

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for(h: &Harness, sample: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.metric(sample).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_fail_nothing() {
    let h = Arc::new(
        Harness::with(Options {
            ranges_reload_interval: Duration::from_millis(25),
            ..Options::default()
        })
        .await,
    );
    let body = Arc::new(fixture("exo-capture.xml"));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (h, body, stop, sent) = (h.clone(), body.clone(), stop.clone(), sent.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            // Bounded in count as well as by the swapper's end.
            for _ in 0..5_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let request = notification_request(LEGACY_PATH, "localhost", &body);
                match h.send(ALLOWED, &request).await {
                    Ok(response) if response.status == 200 => {}
                    Ok(response) => failures.push(format!("status {}", response.status)),
                    Err(e) => failures.push(e.to_string()),
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }

    let health = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert!(
        h.send(DENIED, health).await.is_err(),
        "127.0.0.3 starts out denied"
    );
    let mut refused = 0.0;
    for round in 1..=50 {
        let mut text =
            format!("# version: swap-{round}\n127.0.0.2/32\n40.92.0.0/15\n2603:1026::/36\n");
        for filler in 0..round {
            text.push_str(&format!("10.{round}.{filler}.0/24\n"));
        }
        if round >= 25 {
            text.push_str("127.0.0.3/32\n");
        }
        if round % 10 == 5 {
            // A broken list lands first; it must be refused while the good one stays in force.
            write_atomically(
                h.ranges_path(),
                "# version: broken\n127.0.0.2/32\nnot-a-cidr\n",
            );
            refused += 1.0;
            wait_for(&h, "pushgate_allowlist_reload_failures_total", refused).await;
        }
        write_atomically(h.ranges_path(), &text);
        wait_for(
            &h,
            &format!(r#"pushgate_allowlist_version{{version="swap-{round}"}}"#),
            1.0,
        )
        .await;
        if round == 25 {
            let response = h
                .send(DENIED, health)
                .await
                .expect("admitted once its range appears");
            assert_eq!(response.status, 200);
        }
    }
    // Let the load run a little past the last swap, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.unwrap());
    }
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        sent >= 50,
        "load was running during the swaps ({sent} requests)"
    );
    assert_eq!(h.upstream.requests().len(), sent);
    assert!(h.metric("pushgate_allowlist_reloads_total").await >= 50.0);
    assert_eq!(h.metric("pushgate_allowlist_entries").await, 4.0 + 50.0);
    let target = h.target(DENIED);
    let request = notification_request(LEGACY_PATH, "localhost", &body);
    assert_eq!(
        client::exchange(&target, &request, TIMEOUT)
            .await
            .unwrap()
            .status,
        200
    );
    if let Ok(h) = Arc::try_unwrap(h) {
        h.stop().await;
    }
}
