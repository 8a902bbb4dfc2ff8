//! Tests that need something this machine may lack (PostgreSQL, its server binaries, `xmllint`,
//! the EWS schema) say so instead of passing quietly: without
//! `PUSHGATE_REQUIRE_ALL=1` a test that cannot run prints `SKIPPED: <test>: <why>` straight to
//! stderr (libtest captures only the print macros) and adds a line to this `cargo test` run's
//! skip log, which `tests/zz_skip_summary.rs` counts at the end; with it, the test fails.
//!
//! Std only, so the library's unit tests include this file too (`crate::test_skip`).
#![allow(dead_code)] // each test crate uses a different part

use std::fmt::Display;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// `1` turns every skip into a failure (`.ci/run` sets it).
pub const REQUIRE_ALL: &str = "PUSHGATE_REQUIRE_ALL";
/// Where the EWS schema is, when not in `../shared/ews-schema`.
pub const SCHEMA_DIR: &str = "PUSHGATE_EWS_SCHEMA_DIR";

/// Directory of the skip logs, under the cargo target directory.
const LOG_DIR: &str = "pushgate-skips";

/// Whether `PUSHGATE_REQUIRE_ALL=1`.
pub fn require_all() -> bool {
    flag(REQUIRE_ALL)
}

/// Whether the environment variable `name` is `1`.
pub fn flag(name: &str) -> bool {
    std::env::var(name).as_deref() == Ok("1")
}

/// The test cannot run: with `PUSHGATE_REQUIRE_ALL=1` this fails it (panics), otherwise it says
/// `SKIPPED` where a person sees it and records the skip. The caller returns right after.
#[track_caller]
pub fn skip(why: impl Display) {
    skip_as("?", why);
}

/// [`skip`], naming the test `fallback` where the thread does not name it (a bench, a thread of
/// the test's own).
#[track_caller]
pub fn skip_as(fallback: &str, why: impl Display) {
    let test = current_test().unwrap_or_else(|| fallback.to_string());
    if require_all() {
        panic!("{test} cannot run: {why} ({REQUIRE_ALL}=1 makes a missing dependency a failure)");
    }
    let line = format!("SKIPPED: {test}: {why}");
    // Not eprintln!: libtest would swallow it for a passing test.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    record(&format!("{}: {test}: {why}", test_binary()));
}

/// The test binary's name without cargo's hash: `worker_api`, `pushgate` (unit tests).
fn test_binary() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|stem| stem.to_string_lossy().to_string())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
        _ => stem,
    }
}

/// `error` and its causes, `: `-separated (many errors name only their own layer).
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let more = current.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = current.source();
    }
    text
}

/// libtest runs each test on a thread named after it.
fn current_test() -> Option<String> {
    std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(str::to_string)
}

/// The EWS schema directory (`PUSHGATE_EWS_SCHEMA_DIR`, else `../shared/ews-schema` beside the
/// project) when it holds every file in `files`; otherwise skips and gives `None`.
#[track_caller]
pub fn ews_schema(files: &[&str]) -> Option<PathBuf> {
    let dir = std::env::var_os(SCHEMA_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_dir().join("ews-schema"));
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|file| !dir.join(file).is_file())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    skip(format!(
        "the EWS schema is missing {} in {} (set {SCHEMA_DIR} or provide ../shared/ews-schema)",
        missing.join(", "),
        dir.display()
    ));
    None
}

/// The Exchange examples directory `../shared/ews-examples` when it holds `file`; otherwise
/// skips and gives `None`.
#[track_caller]
pub fn ews_example(file: &str) -> Option<PathBuf> {
    let path = shared_dir().join("ews-examples").join(file);
    if path.is_file() {
        return Some(path);
    }
    skip(format!("{} is missing", path.display()));
    None
}

/// Whether `xmllint` runs here; skips when it does not.
#[track_caller]
pub fn xmllint() -> bool {
    match std::process::Command::new("xmllint")
        .arg("--version")
        .output()
    {
        Ok(output) if output.status.success() => true,
        Ok(output) => {
            skip(format!(
                "`xmllint --version` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
            false
        }
        Err(error) => {
            skip(format!(
                "xmllint is not installed ({error}; Debian: apt-get install libxml2-utils)"
            ));
            false
        }
    }
}

/// Whether a connection error means "nothing listens there" (refused, or no such socket file),
/// the one failure that counts as a missing server. Everything else — a wrong password, an
/// unknown database, TLS demanded, a timeout — is a broken setup and must fail the test.
pub fn nothing_listens(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            );
        }
        cause = current.source();
    }
    false
}

fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

// ---------------------------------------------------------------------------------------------
// The skip log: one file per `cargo test` run, named after the cargo process (the parent of every
// test binary it runs), so concurrent runs in other shells keep their own counts.

/// This run's key: the parent's pid and, where `/proc` tells it, its start time (pids are reused).
pub fn run_key_of(pid: u32) -> String {
    let started = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Field 22 (starttime); the command name (field 2) may hold spaces, so count from
            // after its closing parenthesis, where field 3 starts.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(19).map(str::to_string)
        })
        .unwrap_or_else(|| "0".to_string());
    format!("{pid}-{started}")
}

/// The skip log of the `cargo test` run this process belongs to.
pub fn run_log() -> PathBuf {
    log_dir().join(format!(
        "{}.log",
        run_key_of(std::os::unix::process::parent_id())
    ))
}

/// `<target>/pushgate-skips`: the target directory is the nearest ancestor of this executable
/// that holds cargo's `CACHEDIR.TAG`.
pub fn log_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    target.join(LOG_DIR)
}

fn record(line: &str) {
    let path = run_log();
    let written = std::fs::create_dir_all(log_dir()).and_then(|()| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        // One write per line: concurrent tests append whole lines.
        file.write_all(format!("{line}\n").as_bytes())
    });
    if let Err(error) = written {
        let _ = writeln!(
            std::io::stderr().lock(),
            "(could not record the skip in {}: {error})",
            path.display()
        );
    }
}

/// The skips recorded in this run (for the summary), and the log they came from.
pub fn recorded() -> (Vec<String>, PathBuf) {
    let path = run_log();
    let lines = std::fs::read_to_string(&path)
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default();
    (lines, path)
}

/// Removes the logs of runs whose cargo process is gone (a run stopped before its summary).
pub fn remove_stale_logs() {
    let Ok(entries) = std::fs::read_dir(log_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(key) = name.strip_suffix(".log") else {
            continue;
        };
        let alive = key
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| run_key_of(pid) == key);
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
