//! `pushgate ranges update` and `ranges check` run as cron runs them (the real binary, a real
//! configuration file) against a loopback HTTP server that serves the captured Microsoft feed
//! and broken variants of it. Nothing here connects anywhere but 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use pushgate::allowlist::{parse_ranges_file, read_ranges_file};
use serde_json::Value;

const ENDPOINTS: &[u8] = include_bytes!("fixtures/ranges/endpoints-worldwide.json");
const VERSION_1: &str = "2025043000";
const VERSION_2: &str = "2025053000";
/// Ranges in endpoint sets 1 and 2 of the capture.
const FEED_RANGES: usize = 27;

// ---------------------------------------------------------------------------------------------
// The loopback feed (and, for the proxy test, a plain HTTP proxy: it also answers absolute-form
// request targets).

#[derive(Clone)]
struct Reply {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn json(body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    fn status(status: u16) -> Self {
        Reply {
            status,
            body: b"{}".to_vec(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// The request target as sent: origin-form, or absolute-form through a proxy.
    target: String,
    path: String,
    query: String,
}

struct Feed {
    addr: SocketAddr,
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Feed {
    fn start() -> Feed {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let replies: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let (replies, seen, stop) = (replies.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (replies, seen) = (replies.clone(), seen.clone());
                    std::thread::spawn(move || serve(stream, &replies, &seen));
                }
            })
        };
        Feed {
            addr,
            replies,
            seen,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn reply(&self, path: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(path.to_string(), reply);
    }

    fn version(&self, version: &str) {
        self.reply(
            "/version/Worldwide",
            Reply::json(format!(
                r#"{{"instance":"Worldwide","latest":"{version}"}}"#
            )),
        );
    }

    fn endpoints(&self, reply: Reply) {
        self.reply("/endpoints/Worldwide", reply);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, replies: &Mutex<HashMap<String, Reply>>, seen: &Mutex<Vec<Seen>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("").to_string();
    let target = request_line.next().unwrap_or("").to_string();
    let origin_form = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]).to_string(),
        None => target.clone(),
    };
    let (path, query) = match origin_form.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (origin_form.clone(), String::new()),
    };
    seen.lock().unwrap().push(Seen {
        method,
        target,
        path: path.clone(),
        query,
    });
    let reply = replies
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or_else(|| Reply::status(404));
    // Bounded: the longest delay any test asks for is a few seconds.
    std::thread::sleep(reply.delay);
    let mut response = format!(
        "HTTP/1.1 {} Test\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.write_all(&reply.body);
    let _ = stream.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// Feed variants, built from the capture.

fn sets() -> Vec<Value> {
    serde_json::from_slice(ENDPOINTS).unwrap()
}

fn to_body(sets: &[Value]) -> Vec<u8> {
    serde_json::to_vec_pretty(sets).unwrap()
}

/// The capture with `edit` applied to the `ips` of endpoint sets 1 and 2.
fn with_front_end_ips(edit: impl Fn(&mut Vec<Value>)) -> Vec<u8> {
    let mut sets = sets();
    for set in &mut sets {
        if set["serviceArea"] == "Exchange" && (set["id"] == 1 || set["id"] == 2) {
            edit(set["ips"].as_array_mut().unwrap());
        }
    }
    to_body(&sets)
}

// ---------------------------------------------------------------------------------------------
// One installation: a configuration file, its ranges file and state directory, and a feed.

struct Site {
    dir: tempfile::TempDir,
    feed: Feed,
    config: PathBuf,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Site {
    fn new(ranges_keys: &str) -> Site {
        let feed = Feed::start();
        let base_url = feed.base_url();
        Site::with_base_url(feed, &base_url, ranges_keys)
    }

    fn with_base_url(feed: Feed, base_url: &str, ranges_keys: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pushgate.toml");
        let attempts = if ranges_keys.contains("attempts") {
            ""
        } else {
            "attempts = 3\n"
        };
        std::fs::write(
            &config,
            format!(
                "[gateway]\nranges_file = {:?}\n\n[ranges]\nbase_url = {base_url:?}\nstate_dir = {:?}\n\
                 timeout = \"2s\"\nretry_backoff = \"10ms\"\n{attempts}{ranges_keys}\n",
                dir.path().join("ranges/exchange-online.txt"),
                dir.path().join("state"),
            ),
        )
        .unwrap();
        Site { dir, feed, config }
    }

    fn ranges_file(&self) -> PathBuf {
        self.dir.path().join("ranges/exchange-online.txt")
    }

    fn state(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("state").join(name)).ok()
    }

    fn update(&self, args: &[&str]) -> Run {
        self.run_with(
            &[
                "ranges",
                "update",
                "--config",
                self.config.to_str().unwrap(),
            ],
            args,
            &[],
        )
    }

    fn run_with(&self, base: &[&str], args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pushgate"));
        command.args(base).args(args);
        // The tests decide the proxy and the configuration, not the machine they run on.
        for (key, _) in std::env::vars() {
            let lower = key.to_ascii_lowercase();
            if lower.ends_with("_proxy") || key.starts_with("PUSHGATE__") {
                command.env_remove(&key);
            }
        }
        command.envs(env.iter().copied());
        let output = command.output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Serves the capture at VERSION_1 and runs a first update.
    fn first_update(&self) -> Snapshot {
        self.feed.version(VERSION_1);
        self.feed.endpoints(Reply::json(ENDPOINTS));
        let run = self.update(&[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        self.snapshot()
    }

    fn snapshot(&self) -> Snapshot {
        let path = self.ranges_file();
        Snapshot {
            bytes: std::fs::read(&path).unwrap(),
            modified: std::fs::metadata(&path).unwrap().modified().unwrap(),
            version: self.state("version"),
        }
    }

    /// Runs an update that must change nothing on disk and exit with `code`.
    fn refused(&self, before: &Snapshot, code: i32, args: &[&str]) -> Run {
        let run = self.update(args);
        assert_eq!(
            run.code, code,
            "stdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        assert!(
            run.stdout.is_empty(),
            "nothing on stdout on failure: {}",
            run.stdout
        );
        assert!(run.stderr.contains("left unchanged"), "{}", run.stderr);
        assert_eq!(
            &self.snapshot(),
            before,
            "the old file and recorded version stay as they were"
        );
        let leftovers: Vec<_> = std::fs::read_dir(self.ranges_file().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            1,
            "no temporary file left behind: {leftovers:?}"
        );
        run
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    bytes: Vec<u8>,
    modified: SystemTime,
    version: Option<String>,
}

fn one_line(text: &str) -> &str {
    assert_eq!(text.lines().count(), 1, "exactly one line: {text:?}");
    text.trim_end()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn first_update_writes_the_file_and_records_the_version() {
    let site = Site::new("");
    site.feed.version(VERSION_1);
    site.feed.endpoints(Reply::json(ENDPOINTS));
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let line = one_line(&run.stdout);
    assert!(line.starts_with("updated "), "{line}");
    assert!(line.contains("version 2025043000: 27 ranges"), "{line}");

    let file = read_ranges_file(&site.ranges_file()).unwrap();
    assert_eq!(file.set.len(), FEED_RANGES);
    assert_eq!(file.version(), Some(VERSION_1));
    assert_eq!(file.header.instance.as_deref(), Some("Worldwide"));
    assert_eq!(file.header.count, Some(FEED_RANGES));
    assert!(
        file.set.contains("2603:1026:c02:3097::5".parse().unwrap()),
        "the real capture's source"
    );
    assert!(file.set.contains("40.96.1.1".parse().unwrap()));
    assert!(
        !file.set.contains("40.107.0.1".parse().unwrap()),
        "set 9 (mail protection) is not selected"
    );
    assert_eq!(site.state("version").as_deref(), Some("2025043000\n"));

    let seen = site.feed.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let id = site.state("client-request-id").unwrap();
    let id = id.trim();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    assert_eq!(seen[0].path, "/version/Worldwide");
    assert_eq!(seen[0].query, format!("ClientRequestId={id}"));
    assert_eq!(seen[1].path, "/endpoints/Worldwide");
    assert_eq!(
        seen[1].query,
        format!("ServiceAreas=Exchange&ClientRequestId={id}")
    );
}

#[test]
fn unchanged_version_writes_nothing_and_fetches_no_endpoints() {
    let site = Site::new("");
    let before = site.first_update();
    let id = site.state("client-request-id");
    let state_modified = std::fs::metadata(site.dir.path().join("state/version"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));

    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert!(
        one_line(&run.stdout).ends_with("already current at version 2025043000"),
        "{}",
        run.stdout
    );
    assert_eq!(
        site.snapshot(),
        before,
        "byte for byte, and not even the mtime"
    );
    assert_eq!(
        std::fs::metadata(site.dir.path().join("state/version"))
            .unwrap()
            .modified()
            .unwrap(),
        state_modified
    );
    assert_eq!(
        site.state("client-request-id"),
        id,
        "one client id per machine"
    );
    assert_eq!(site.feed.count("/version/Worldwide"), 2);
    assert_eq!(site.feed.count("/endpoints/Worldwide"), 1);
    let ids: Vec<String> = site.feed.seen().iter().map(|s| s.query.clone()).collect();
    assert!(
        ids.iter()
            .all(|q| q.contains(id.as_deref().unwrap().trim())),
        "{ids:?}"
    );
}

#[test]
fn force_fetches_and_writes_even_when_current() {
    let site = Site::new("");
    let before = site.first_update();
    let run = site.update(&["--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        one_line(&run.stdout).starts_with("updated"),
        "{}",
        run.stdout
    );
    assert_eq!(site.feed.count("/endpoints/Worldwide"), 2);
    let after = site.snapshot();
    assert_ne!(after.modified, before.modified);
    assert_eq!(
        parse_ranges_file(std::str::from_utf8(&after.bytes).unwrap())
            .unwrap()
            .set
            .entries(),
        parse_ranges_file(std::str::from_utf8(&before.bytes).unwrap())
            .unwrap()
            .set
            .entries()
    );
}

#[test]
fn new_version_replaces_the_file() {
    let site = Site::new("");
    site.first_update();
    site.feed.version(VERSION_2);
    site.feed.endpoints(Reply::json(with_front_end_ips(|ips| {
        ips.retain(|ip| ip != "131.253.33.215/32");
        ips.push(Value::from("52.100.0.0/16"));
    })));
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        one_line(&run.stdout).ends_with("version 2025053000: 27 ranges (1 added, 1 removed)"),
        "{}",
        run.stdout
    );
    let file = read_ranges_file(&site.ranges_file()).unwrap();
    assert_eq!(file.version(), Some(VERSION_2));
    assert!(!file.set.contains("131.253.33.215".parse().unwrap()));
    assert_eq!(site.state("version").as_deref(), Some("2025053000\n"));
}

#[test]
fn rate_limit_is_not_retried_and_keeps_the_old_file() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    site.feed.endpoints(Reply {
        headers: vec![("Retry-After".into(), "3600".into())],
        ..Reply::status(429)
    });
    let run = site.refused(&before, 2, &[]);
    assert!(run.stderr.contains("429"), "{}", run.stderr);
    assert!(run.stderr.contains("try again in 3600 s"), "{}", run.stderr);
    assert_eq!(
        site.feed.count("/endpoints/Worldwide"),
        2,
        "one attempt, no retry"
    );

    // The version was not recorded: once the feed answers again, the update happens.
    site.feed.endpoints(Reply::json(ENDPOINTS));
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("updated"), "{}", run.stdout);
    assert_eq!(site.state("version").as_deref(), Some("2025053000\n"));
}

/// Every run leaves its time and exit status in `last-run`, and a run ending 0 (updated or
/// already current) also in `last-success`: what the gateway's `pushgate_ranges_update_*`
/// metrics show, so that monitoring sees a failing updater while its old list is in force.
#[test]
fn runs_are_recorded_for_monitoring() {
    let parse_run = |text: Option<String>| -> (i64, i32) {
        let text = text.expect("last-run written");
        let (at, status) = text.trim().split_once(' ').expect("two fields");
        (at.parse().unwrap(), status.parse().unwrap())
    };
    let now = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let site = Site::new("");
    let start = now();
    let before = site.first_update();
    let (at, status) = parse_run(site.state("last-run"));
    assert_eq!(status, 0);
    assert!(at >= start && at <= now(), "{at} not within the run");
    let success = site.state("last-success").expect("last-success written");
    assert_eq!(success.trim(), at.to_string());

    // The feed refuses: exit 2, recorded; the last success stays.
    site.feed.version(VERSION_2);
    site.feed.endpoints(Reply::status(429));
    site.refused(&before, 2, &[]);
    let (_, status) = parse_run(site.state("last-run"));
    assert_eq!(status, 2);
    assert_eq!(
        site.state("last-success").as_deref(),
        Some(success.as_str())
    );

    // Already current is a success too, though nothing else is written.
    site.feed.version(VERSION_1);
    std::thread::sleep(Duration::from_millis(1100));
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (at, status) = parse_run(site.state("last-run"));
    assert_eq!(status, 0);
    assert_eq!(
        site.state("last-success").map(|s| s.trim().to_string()),
        Some(at.to_string())
    );
    assert_ne!(
        site.state("last-success").as_deref(),
        Some(success.as_str())
    );
}

#[test]
fn rate_limited_version_call_without_retry_after_says_an_hour() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.reply("/version/Worldwide", Reply::status(429));
    let run = site.refused(&before, 2, &[]);
    assert!(run.stderr.contains("in an hour"), "{}", run.stderr);
    assert_eq!(site.feed.count("/version/Worldwide"), 2);
}

#[test]
fn server_error_is_retried_then_gives_up_keeping_the_old_file() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    site.feed.endpoints(Reply::status(500));
    let run = site.refused(&before, 2, &[]);
    assert!(run.stderr.contains("HTTP 500"), "{}", run.stderr);
    assert!(
        run.stderr.contains("gave up after 3 attempts"),
        "{}",
        run.stderr
    );
    assert_eq!(site.feed.count("/endpoints/Worldwide"), 1 + 3);

    site.feed.endpoints(Reply::json(ENDPOINTS));
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(site.state("version").as_deref(), Some("2025053000\n"));
}

#[test]
fn timeout_keeps_the_old_file() {
    let site = Site::new("attempts = 2\n");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    site.feed.endpoints(Reply {
        delay: Duration::from_secs(4),
        ..Reply::json(ENDPOINTS)
    });
    let run = site.refused(&before, 2, &[]);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    assert!(
        run.stderr.contains("gave up after 2 attempts"),
        "{}",
        run.stderr
    );
}

#[test]
fn unreachable_feed_exits_2() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let site = Site::with_base_url(Feed::start(), &format!("http://{closed}"), "");
    let run = site.update(&[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("gave up after 3 attempts"),
        "{}",
        run.stderr
    );
    assert!(!site.ranges_file().exists());
    assert_eq!(site.state("version"), None);
}

#[test]
fn malformed_json_keeps_the_old_file() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    site.feed
        .endpoints(Reply::json(&ENDPOINTS[..ENDPOINTS.len() / 2]));
    let run = site.refused(&before, 2, &[]);
    assert!(
        run.stderr.contains("bad answer: endpoints answer"),
        "{}",
        run.stderr
    );
    assert_eq!(
        site.feed.count("/endpoints/Worldwide"),
        2,
        "a bad answer is not retried"
    );

    site.feed.endpoints(Reply::json("<html>maintenance</html>"));
    site.refused(&before, 2, &[]);
    site.feed.version("2025053000\"");
    site.refused(&before, 2, &[]);
}

#[test]
fn missing_required_field_keeps_the_old_file() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    let mut sets = sets();
    sets[0].as_object_mut().unwrap().remove("serviceArea");
    site.feed.endpoints(Reply::json(to_body(&sets)));
    let run = site.refused(&before, 2, &[]);
    assert!(run.stderr.contains("serviceArea"), "{}", run.stderr);
}

#[test]
fn empty_answer_is_retried_and_keeps_the_old_file() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    site.feed.endpoints(Reply::json(""));
    let run = site.refused(&before, 2, &[]);
    assert!(run.stderr.contains("empty answer"), "{}", run.stderr);
    assert_eq!(site.feed.count("/endpoints/Worldwide"), 1 + 3);
}

#[test]
fn empty_selection_is_refused_with_3() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    site.feed
        .endpoints(Reply::json(with_front_end_ips(|ips| ips.clear())));
    let run = site.refused(&before, 3, &[]);
    assert!(run.stderr.contains("selection is empty"), "{}", run.stderr);
    // --force does not override it.
    site.refused(&before, 3, &["--force"]);

    let mut without = sets();
    without.retain(|s| !(s["id"] == 1 || s["id"] == 2));
    site.feed.endpoints(Reply::json(to_body(&without)));
    site.refused(&before, 3, &[]);
    site.feed.endpoints(Reply::json("[]"));
    site.refused(&before, 3, &[]);
}

#[test]
fn half_shrink_is_refused_unless_forced() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    // 40.96.0.0/13 holds 524,288 of the 989,190 IPv4 addresses in sets 1 and 2: a 53% shrink.
    site.feed.endpoints(Reply::json(with_front_end_ips(|ips| {
        ips.retain(|ip| ip != "40.96.0.0/13")
    })));
    let run = site.refused(&before, 3, &[]);
    assert!(
        run.stderr.contains("drops 53.0% of the IPv4 addresses"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--force"), "{}", run.stderr);

    let run = site.update(&["--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        one_line(&run.stdout).contains("26 ranges (0 added, 1 removed)"),
        "{}",
        run.stdout
    );
    let file = read_ranges_file(&site.ranges_file()).unwrap();
    assert!(!file.set.contains("40.96.0.1".parse().unwrap()));
    assert_eq!(site.state("version").as_deref(), Some("2025053000\n"));
}

#[test]
fn ipv6_shrink_is_judged_on_its_own() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    site.feed.endpoints(Reply::json(with_front_end_ips(|ips| {
        ips.retain(|ip| !ip.as_str().unwrap().starts_with("2603:10"));
    })));
    let run = site.refused(&before, 3, &[]);
    assert!(
        run.stderr.contains("of the IPv6 addresses"),
        "{}",
        run.stderr
    );
}

#[test]
fn small_shrink_within_the_limit_is_accepted() {
    let site = Site::new("");
    site.first_update();
    site.feed.version(VERSION_2);
    // 132.245.0.0/16 is 6.6% of the IPv4 addresses: under the default 20%.
    site.feed.endpoints(Reply::json(with_front_end_ips(|ips| {
        ips.retain(|ip| ip != "132.245.0.0/16")
    })));
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read_ranges_file(&site.ranges_file()).unwrap().set.len(), 26);
}

#[test]
fn absurdly_broad_prefix_is_refused_even_with_force() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    site.feed.endpoints(Reply::json(with_front_end_ips(|ips| {
        ips.push(Value::from("32.0.0.0/4"))
    })));
    let run = site.refused(&before, 3, &[]);
    assert!(
        run.stderr.contains("32.0.0.0/4 is broader than /8"),
        "{}",
        run.stderr
    );
    site.refused(&before, 3, &["--force"]);

    site.feed.endpoints(Reply::json(with_front_end_ips(|ips| {
        ips.push(Value::from("2000::/12"))
    })));
    let run = site.refused(&before, 3, &[]);
    assert!(
        run.stderr.contains("2000::/12 is broader than /16"),
        "{}",
        run.stderr
    );
}

#[test]
fn unparsable_cidr_is_refused() {
    let site = Site::new("");
    let before = site.first_update();
    site.feed.version(VERSION_2);
    site.feed.endpoints(Reply::json(with_front_end_ips(|ips| {
        ips.push(Value::from("40.96.0.0/33"))
    })));
    let run = site.refused(&before, 3, &[]);
    assert!(
        run.stderr.contains("\"40.96.0.0/33\", which is not a CIDR"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_keys_other_service_areas_and_spaced_ports_are_tolerated() {
    let site = Site::new("");
    let mut sets = sets();
    assert!(
        sets.iter().any(|s| s["serviceArea"] == "MEM"),
        "the capture has the MEM area"
    );
    for set in &mut sets {
        let set = set.as_object_mut().unwrap();
        set.insert(
            "someFutureKey".into(),
            serde_json::json!({"nested": [1, "two", null]}),
        );
        set.insert("tcpPorts".into(), Value::from("80, 443 ,  25"));
    }
    sets.push(serde_json::json!({
        "id": 999, "serviceArea": "Copilot", "serviceAreaDisplayName": "New",
        "ips": ["1.0.0.0/8"], "category": "Optimize", "required": true, "expressRoute": false
    }));
    site.feed.version(VERSION_1);
    site.feed.endpoints(Reply::json(to_body(&sets)));
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let file = read_ranges_file(&site.ranges_file()).unwrap();
    assert_eq!(file.set.len(), FEED_RANGES);
    assert!(!file.set.contains("1.2.3.4".parse().unwrap()));
}

#[test]
fn operator_ranges_are_added_and_excluded_and_a_changed_selection_rebuilds() {
    let site = Site::new("");
    site.first_update();
    // Same feed version, new operator ranges: the list must be rebuilt, not called current.
    let config = std::fs::read_to_string(&site.config).unwrap()
        + "extra_ranges = [\"198.51.100.0/24\", \"2001:db8::1\"]\nexclude_ranges = [\"40.96.0.0/16\"]\n";
    std::fs::write(&site.config, config).unwrap();
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        one_line(&run.stdout).starts_with("updated"),
        "{}",
        run.stdout
    );
    let file = read_ranges_file(&site.ranges_file()).unwrap();
    assert!(file.set.contains("198.51.100.7".parse().unwrap()));
    assert!(file.set.contains("2001:db8::1".parse().unwrap()));
    assert!(!file.set.contains("40.96.5.5".parse().unwrap()), "excluded");
    assert!(
        file.set.contains("40.97.0.1".parse().unwrap()),
        "the rest of 40.96.0.0/13 stays"
    );
    let run = site.update(&[]);
    assert!(run.stdout.contains("already current"), "{}", run.stdout);
}

#[test]
fn deleted_ranges_file_is_rebuilt() {
    let site = Site::new("");
    site.first_update();
    std::fs::remove_file(site.ranges_file()).unwrap();
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("updated"), "{}", run.stdout);
    assert_eq!(
        read_ranges_file(&site.ranges_file()).unwrap().set.len(),
        FEED_RANGES
    );
}

#[test]
fn from_file_needs_no_network() {
    let site = Site::new("");
    let saved = site.dir.path().join("endpoints.json");
    std::fs::write(&saved, ENDPOINTS).unwrap();
    let args = [
        "--from-file",
        saved.to_str().unwrap(),
        "--version",
        VERSION_1,
    ];
    let run = site.update(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("updated"), "{}", run.stdout);
    let file = read_ranges_file(&site.ranges_file()).unwrap();
    assert_eq!(file.version(), Some(VERSION_1));
    assert_eq!(file.header.source.as_deref(), saved.to_str());
    assert!(site.feed.seen().is_empty(), "no request at all");
    assert_eq!(site.state("client-request-id"), None);

    let run = site.update(&args);
    assert!(run.stdout.contains("already current"), "{}", run.stdout);

    std::fs::write(&saved, b"[{").unwrap();
    let before = site.snapshot();
    site.refused(
        &before,
        2,
        &[
            "--from-file",
            saved.to_str().unwrap(),
            "--version",
            VERSION_2,
        ],
    );
    let run = site.update(&[
        "--from-file",
        saved.to_str().unwrap(),
        "--version",
        "2025\n0",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(site.feed.seen().is_empty());
}

#[test]
fn verbose_prints_the_steps_then_the_line() {
    let site = Site::new("");
    site.feed.version(VERSION_1);
    site.feed.endpoints(Reply::json(ENDPOINTS));
    let run = site.update(&["--verbose"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines.len() > 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("selected 27 ranges from endpoint sets 1, 2")),
        "{lines:?}"
    );
    assert!(lines.last().unwrap().starts_with("updated"), "{lines:?}");
}

#[test]
fn http_proxy_from_the_environment_is_used() {
    // The proxy is the loopback feed itself (it answers absolute-form targets); the base URL
    // points at a closed port, so only a request through the proxy can succeed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let feed = Feed::start();
    let proxy = feed.base_url();
    let site = Site::with_base_url(feed, &format!("http://{closed}"), "");
    site.feed.version(VERSION_1);
    site.feed.endpoints(Reply::json(ENDPOINTS));
    let base = [
        "ranges",
        "update",
        "--config",
        site.config.to_str().unwrap(),
    ];
    let run = site.run_with(&base, &[], &[("HTTP_PROXY", proxy.as_str())]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let seen = site.feed.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.method, "GET");
        assert!(
            request.target.starts_with(&format!("http://{closed}/")),
            "absolute-form target through the proxy: {}",
            request.target
        );
    }
}

#[test]
fn https_proxy_from_the_environment_is_asked_for_a_tunnel() {
    // No TLS server on loopback carries a publicly trusted certificate, so the tunnel cannot
    // complete here; what is tested is that an https base URL goes to HTTPS_PROXY as a CONNECT
    // for the feed's host, never directly.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let feed = Feed::start();
    let proxy = feed.base_url();
    let site = Site::with_base_url(feed, &format!("https://{closed}"), "attempts = 1\n");
    let base = [
        "ranges",
        "update",
        "--config",
        site.config.to_str().unwrap(),
    ];
    let run = site.run_with(&base, &[], &[("HTTPS_PROXY", proxy.as_str())]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let seen = site.feed.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "CONNECT");
    assert_eq!(seen[0].target, closed.to_string());
}

/// Cron pipes stdout into `logger`; if that reader is gone when the status line is written the
/// write fails with EPIPE, and a plain `println!` would panic (exit 101) after a good update.
#[test]
fn a_vanished_stdout_reader_does_not_turn_success_into_a_crash() {
    let site = Site::new("");
    site.feed.version(VERSION_1);
    site.feed.endpoints(Reply::json(ENDPOINTS));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "ranges",
            "update",
            "--config",
            site.config.to_str().unwrap(),
        ])
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the child gets to print (it fetches twice first).
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        read_ranges_file(&site.ranges_file()).unwrap().set.len(),
        FEED_RANGES
    );
}

#[test]
fn configuration_error_exits_1() {
    let site = Site::new("max_shrink_percent = 150.0\n");
    let run = site.update(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("ranges.max_shrink_percent"),
        "{}",
        run.stderr
    );
    assert!(site.feed.seen().is_empty());
}

#[test]
fn check_says_whether_and_by_which_range() {
    let site = Site::new("");
    site.first_update();
    let config = site.config.to_str().unwrap();
    let check =
        |address: &str| site.run_with(&["ranges", "check", address, "--config", config], &[], &[]);

    let run = check("2603:1026:c02:3097::5");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        one_line(&run.stdout).contains("admitted by 2603:1026::/36"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("version 2025043000"), "{}", run.stdout);

    let run = check("::ffff:40.96.1.2");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("admitted by 40.96.0.0/13"),
        "{}",
        run.stdout
    );

    let run = check("127.0.0.1");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        one_line(&run.stdout).contains("is not admitted"),
        "{}",
        run.stdout
    );

    let run = check("40.96.0.0/13");
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("is not an IPv4 or IPv6 address"),
        "{}",
        run.stderr
    );

    std::fs::write(site.ranges_file(), "# count: 1\n").unwrap();
    let run = check("40.96.1.2");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no ranges listed"), "{}", run.stderr);
}

#[test]
fn a_damaged_current_file_is_repaired_with_a_warning() {
    let site = Site::new("");
    std::fs::create_dir_all(site.ranges_file().parent().unwrap()).unwrap();
    std::fs::write(site.ranges_file(), "# count: 5\n10.0.0.0/8\n").unwrap();
    site.feed.version(VERSION_1);
    site.feed.endpoints(Reply::json(ENDPOINTS));
    let run = site.update(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("warning"), "{}", run.stderr);
    assert_eq!(
        read_ranges_file(&site.ranges_file()).unwrap().set.len(),
        FEED_RANGES
    );
}

/// Keeps the helper honest: the paths the binary is given are the ones the tests read.
#[test]
fn site_paths_are_inside_the_temporary_directory() {
    let site = Site::new("");
    let text = std::fs::read_to_string(&site.config).unwrap();
    assert!(text.contains(site.ranges_file().to_str().unwrap()));
    assert!(Path::new(&site.config).starts_with(site.dir.path()));
}
