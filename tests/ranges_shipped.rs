//! The shipped ranges list: what it admits, and that the updater still builds exactly it from
//! the captured feed it came from.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use std::path::{Path, PathBuf};
use std::process::Command;

use pushgate::allowlist::read_ranges_file;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ranges/exchange-online.txt")
}

#[test]
fn shipped_list_holds_the_exchange_online_front_ends() {
    let file = read_ranges_file(&shipped()).unwrap();
    assert_eq!(file.version(), Some("2025043000"));
    assert_eq!(file.header.instance.as_deref(), Some("Worldwide"));
    assert_eq!(file.set.len(), 27);
    assert!(
        file.set.contains("2603:1026:c02:3097::5".parse().unwrap()),
        "the real capture's source"
    );
    assert!(file.set.contains("40.96.0.1".parse().unwrap()));
    assert!(file.set.contains("::ffff:52.96.10.20".parse().unwrap()));
    for outside in ["127.0.0.1", "::1", "10.0.0.1", "40.107.0.1", "8.8.8.8"] {
        assert!(!file.set.contains(outside.parse().unwrap()), "{outside}");
    }
}

#[test]
fn shipped_list_is_what_the_updater_builds_from_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pushgate.toml");
    let rebuilt = dir.path().join("exchange-online.txt");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nranges_file = {rebuilt:?}\n[ranges]\nstate_dir = {:?}\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let capture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ranges/endpoints-worldwide.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_pushgate"));
    command
        .args(["ranges", "update", "--config", config.to_str().unwrap()])
        .args([
            "--from-file",
            capture.to_str().unwrap(),
            "--version",
            "2025043000",
        ]);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("PUSHGATE__")) {
        command.env_remove(key);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let rebuilt = read_ranges_file(&rebuilt).unwrap();
    let shipped = read_ranges_file(&shipped()).unwrap();
    assert_eq!(rebuilt.set.entries(), shipped.set.entries());
    assert_eq!(rebuilt.header.version, shipped.header.version);
    assert_eq!(rebuilt.header.count, shipped.header.count);
}
