//! The Prometheus kit against the running product: every `pushgate_*` metric named in
//! `config/prometheus/` (alerting rules and scrape configuration) must be exposed by the part
//! whose rules name it, as a real gateway and a real worker (with EWS, so its subscription and
//! sync metrics are registered) expose them on loopback. A renamed or removed metric fails
//! here rather than leaving an alert that can never fire.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod common;
mod exchange_support;
mod worker_support;

use std::collections::BTreeSet;
use std::path::Path;

use exchange_support::{Stack, StackOptions};
use worker_support::TestDb;

const RULES: &str = "config/prometheus/pushgate.rules.yml";
const SCRAPE: &str = "config/prometheus/prometheus.yml";
const GATEWAY_JOB: &str = "pushgate-gateway";
const WORKER_JOB: &str = "pushgate-worker";

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Every identifier `pushgate_...` in `text` (metric names: letters, digits, underscores).
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("pushgate_") {
        let start = from + offset;
        let mut end = start;
        while end < bytes.len() && is_name(bytes[end]) {
            end += 1;
        }
        // Only where an identifier starts, not inside a longer one.
        if start == 0 || !is_name(bytes[start - 1]) {
            names.insert(text[start..end].to_string());
        }
        from = end;
    }
    names
}

/// The rule groups of a rule file: (group name, its text), split at `  - name: `.
fn rule_groups(text: &str) -> Vec<(String, String)> {
    let mut groups: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("  - name: ") {
            groups.push((name.trim().to_string(), String::new()));
        } else if let Some((_, body)) = groups.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    groups
}

/// Metric names a `/metrics` answer exposes: families (`# TYPE` lines) and samples (with the
/// `_bucket`, `_sum`, `_count` of histograms).
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_string());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

fn missing(wanted: &BTreeSet<String>, exposed: &BTreeSet<String>) -> Vec<String> {
    wanted
        .iter()
        .filter(|name| !exposed.contains(*name))
        .cloned()
        .collect()
}

#[test]
fn the_name_scanner_finds_names_and_only_names() {
    let names = metric_names(
        "expr: rate(pushgate_a_total{x=\"y\"}[5m]) > on (job) pushgate_b\n\
         # the pushgate-gateway job; pushgate events list; not_pushgate_c\n",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["pushgate_a_total".to_string(), "pushgate_b".to_string()]
    );
    let groups = rule_groups("groups:\n  - name: one\n    rules:\n      - expr: pushgate_x\n  - name: two\n    rules: []\n");
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].0, "one");
    assert!(groups[0].1.contains("pushgate_x"));
    assert!(!groups[1].1.contains("pushgate_x"));
}

/// The operator reads what an alert means and what to do in the README's alert table.
#[test]
fn every_alert_has_its_row_in_the_readme() {
    let rules = read(RULES);
    let readme = read("README.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let missing: Vec<&&str> = alerts
        .iter()
        .filter(|alert| !readme.contains(&format!("\n| `{alert}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts without a README row: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_kit_names_is_exposed_by_its_part() {
    let rules = read(RULES);
    let scrape = read(SCRAPE);

    // The scrape jobs are the ones the rules' groups and `job` matchers name, on the default
    // metrics ports of each part.
    let config = pushgate::config::Config::default();
    let port = |listen: &str| listen.rsplit_once(':').unwrap().1.to_string();
    for (job, listen) in [
        (GATEWAY_JOB, &config.gateway.metrics_listen),
        (WORKER_JOB, &config.worker.metrics_listen),
    ] {
        let section = scrape
            .split("- job_name: ")
            .find(|s| s.starts_with(job))
            .unwrap_or_else(|| panic!("{SCRAPE} has no job {job}"));
        assert!(
            section.contains(&format!(":{}\n", port(listen))),
            "{SCRAPE}: job {job} does not scrape the default port of {listen}"
        );
        assert!(rules.contains(job), "{RULES} never names the job {job}");
    }

    let groups = rule_groups(&rules);
    let group = |name: &str| -> BTreeSet<String> {
        let (_, text) = groups
            .iter()
            .find(|(group, _)| group == name)
            .unwrap_or_else(|| panic!("{RULES} has no group {name}"));
        metric_names(text)
    };
    let gateway_names = group(GATEWAY_JOB);
    let worker_names = group(WORKER_JOB);
    assert!(gateway_names.len() >= 5, "{gateway_names:?}");
    assert!(worker_names.len() >= 5, "{worker_names:?}");
    let every_name: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&scrape))
        .collect();

    let stack = Stack::start(TestDb::sqlite(), StackOptions::default()).await;
    let gateway_text = stack.gateway.as_ref().expect("gateway").metrics().await;
    let answer = worker_support::get(stack.worker().metrics_addr, "/metrics")
        .await
        .expect("worker metrics answer");
    assert_eq!(answer.status, 200);
    let worker_text = String::from_utf8(answer.body.to_vec()).expect("metrics are UTF-8");
    let from_gateway = exposed(&gateway_text);
    let from_worker = exposed(&worker_text);
    stack.stop().await;

    // The scan is not vacuous: the parts expose what a scrape of them shows.
    assert!(from_gateway.contains("pushgate_gateway_tls_certificate_expiry_timestamp_seconds"));
    assert!(from_worker.contains("pushgate_worker_backlog_events"));

    let gateway_missing = missing(&gateway_names, &from_gateway);
    assert!(
        gateway_missing.is_empty(),
        "rules of group {GATEWAY_JOB} name metrics the gateway does not expose: {gateway_missing:?}\n{gateway_text}"
    );
    let worker_missing = missing(&worker_names, &from_worker);
    assert!(
        worker_missing.is_empty(),
        "rules of group {WORKER_JOB} name metrics the worker does not expose: {worker_missing:?}\n{worker_text}"
    );
    let both: BTreeSet<String> = from_gateway.union(&from_worker).cloned().collect();
    let nowhere = missing(&every_name, &both);
    assert!(
        nowhere.is_empty(),
        "{RULES} or {SCRAPE} name metrics neither part exposes: {nowhere:?}"
    );
}
