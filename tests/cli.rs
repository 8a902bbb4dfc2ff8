//! The `pushgate` binary as operators run it: configuration errors name the key in one line, the
//! gateway starts from a file plus environment overrides, serves, and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pushgate::exchange_sim::client::{self, Target};

fn pushgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pushgate"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_configuration_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, "[gateway]\nmax_body_bytes = 100000\n").unwrap();
    let output = pushgate()
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("gateway.max_body_bytes"), "{stderr}");

    let output = pushgate()
        .args(["config", "check"])
        .env("PUSHGATE__WORKER__RETENTION_DAYS", "forever")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("worker.retention_days"), "{stderr}");
    assert!(
        stderr.contains("PUSHGATE__WORKER__RETENTION_DAYS"),
        "names where it came from: {stderr}"
    );

    let output = pushgate()
        .args(["config", "check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn config_check_prints_the_effective_configuration() {
    let output = pushgate()
        .args(["config", "check"])
        .env("PUSHGATE__GATEWAY__PATHS", "[\"/api/webhooks/exchange\"]")
        .output()
        .unwrap();
    assert!(output.status.success());
    let effective: toml::Table = String::from_utf8(output.stdout).unwrap().parse().unwrap();
    assert_eq!(
        effective["gateway"]["paths"].as_array().unwrap().len(),
        1,
        "the environment override is in effect"
    );
}

#[cfg(feature = "worker")]
#[test]
fn config_check_shows_the_database_password_as_stars() {
    let output = pushgate()
        .args(["config", "check"])
        .env(
            "PUSHGATE__WORKER__DATABASE_URL",
            "postgres://app:Secr3t-pw@db.example.net/pushgate?sslmode=verify-full",
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let effective: toml::Table = String::from_utf8(output.stdout).unwrap().parse().unwrap();
    assert_eq!(
        effective["worker"]["database_url"].as_str(),
        Some("postgres://app:***@db.example.net/pushgate?sslmode=verify-full")
    );
}

#[cfg(feature = "worker")]
#[test]
fn config_check_finds_what_would_stop_the_worker_at_its_database() {
    for (url, expected) in [
        (
            "postgres://app:Secr3t-pw@db.example.net/pushgate?sslmode=verify-everything",
            "sslmode",
        ),
        (
            "postgres://app:Secr3t-pw@db.example.net/pushgate?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "/nonexistent/ca.pem",
        ),
        ("sqlite://", "sqlite:// needs a file path"),
    ] {
        let output = pushgate()
            .args(["config", "check"])
            .env("PUSHGATE__WORKER__DATABASE_URL", url)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{url}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("worker.database_url"), "{stderr}");
        assert!(stderr.contains(expected), "{url}: {stderr}");
        assert!(!stderr.contains("Secr3t-pw"), "no password: {stderr}");
        assert!(output.stdout.is_empty(), "nothing printed as if it were fine");
    }
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    assert_eq!(
        pushgate().arg("--help").output().unwrap().status.code(),
        Some(0)
    );
    assert_eq!(
        pushgate().arg("frobnicate").output().unwrap().status.code(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_process_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_pem) = common::write_pki(dir.path());
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    std::fs::write(dir.path().join("ranges.txt"), "127.0.0.2/32\n").unwrap();
    let (tls_port, metrics_port) = (free_port(), free_port());
    let file = dir.path().join("pushgate.toml");
    std::fs::write(
        &file,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:1\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n\
             ranges_file = {:?}\nupstream_token_file = {:?}\naccess_log = \"off\"\n",
            dir.path().join("ranges.txt"),
            dir.path().join("token"),
        ),
    )
    .unwrap();
    let mut child = pushgate()
        .args(["gateway", "--config"])
        .arg(&file)
        // The environment wins over the file.
        .env("PUSHGATE__GATEWAY__LISTEN", format!("127.0.0.1:{tls_port}"))
        .env(
            "PUSHGATE__GATEWAY__METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let target = Target::tls(
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
        &ca_pem,
        "localhost",
    )
    .unwrap()
    .from(common::ALLOWED);
    let health = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let started = Instant::now();
    let response = loop {
        match client::exchange(&target, health, Duration::from_secs(5)).await {
            Ok(response) => break response,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("gateway did not come up: {e}"),
        }
    };
    assert_eq!(response.status, 200);
    let metrics = client::exchange(
        &Target::plain(format!("127.0.0.1:{metrics_port}").parse().unwrap()),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&metrics.body).contains("pushgate_allowlist_entries 1"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "gateway did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(
        output.0.success(),
        "exit status {:?}: {}",
        output.0,
        output.1
    );
    assert!(output.1.contains("gateway started"), "{}", output.1);
    assert!(output.1.contains("shutting down"), "{}", output.1);
}

#[test]
fn config_check_names_the_callback_url_and_its_rule_from_the_products_environment() {
    let output = pushgate()
        .args(["config", "check"])
        .env("IdpRootUrl", "https://push.contoso.com/")
        .env("ExchangePushNotificationUseLegacyEndpoint", "true")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap();
    assert!(
        line.contains("https://push.contoso.com/Webservices/SyncNotification.svc?default")
            && line.contains("rule 2"),
        "{line}"
    );
    let output = pushgate()
        .args(["config", "check"])
        .env(
            "PUSHGATE__SUBSCRIPTIONS__IDP_ROOT_URL",
            "https://file.contoso.com",
        )
        .env(
            "ExchangePushNotificationEndpointUrl",
            "https://push.contoso.com/hook",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap();
    assert!(
        line.contains("https://push.contoso.com/hook") && line.contains("rule 1"),
        "{line}"
    );
    // With [ews] on, a combination that yields no URL stops with one line naming the key.
    let output = pushgate()
        .args(["config", "check"])
        .env(
            "PUSHGATE__EWS__URL",
            "https://outlook.office365.com/EWS/Exchange.asmx",
        )
        .env("PUSHGATE__EWS__AUTH", "bearer")
        .env("PUSHGATE__EWS__TOKEN_FILE", "/run/secrets/ews")
        .env_remove("IdpRootUrl")
        .env_remove("ExchangePushNotificationEndpointUrl")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("subscriptions.idp_root_url"), "{stderr}");
}

#[test]
fn mailboxes_are_added_listed_and_removed_by_operators() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("p.db").display());
    let list = dir.path().join("rooms.txt");
    std::fs::write(
        &list,
        "# the rooms\nroom2@contoso.com\n\nRoom3@Contoso.com  # big one\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        pushgate()
            .args(args)
            .env("PUSHGATE__WORKER__DATABASE_URL", &database)
            .output()
            .unwrap()
    };
    let added = run(&[
        "mailboxes",
        "add",
        "Room1@Contoso.com",
        "--tenant",
        "Fabrikam",
    ]);
    assert!(added.status.success(), "{added:?}");
    assert_eq!(
        String::from_utf8_lossy(&added.stdout).trim(),
        "room1@contoso.com: added (subscribing)"
    );
    let many = run(&[
        "mailboxes",
        "add",
        "room1@contoso.com",
        "--file",
        list.to_str().unwrap(),
    ]);
    assert!(many.status.success(), "{many:?}");
    assert!(String::from_utf8_lossy(&many.stdout).contains("3 mailboxes: 2 added, 1 already known"));
    // A bad address changes nothing.
    let bad = run(&["mailboxes", "add", "room4@contoso.com", "not an address"]);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
    let listed = run(&["mailboxes", "list", "--json"]);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let addresses: Vec<&str> = rows
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addresses,
        [
            "room1@contoso.com",
            "room2@contoso.com",
            "room3@contoso.com"
        ]
    );
    assert_eq!(rows[0]["tenant"], "Fabrikam", "kept when not given again");
    let removed = run(&["mailboxes", "remove", "ROOM2@contoso.com"]);
    assert!(removed.status.success());
    let again = run(&["mailboxes", "remove", "room2@contoso.com"]);
    assert_eq!(again.status.code(), Some(1));
    let table = run(&["mailboxes", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(text.lines().count(), 3, "header and two mailboxes: {text}");
}
