//! The skip helper itself (`tests/skip/mod.rs`): only "nothing listens" counts as a missing
//! server, a skip fails under `PUSHGATE_REQUIRE_ALL=1`, and otherwise it is printed where libtest
//! does not swallow it and recorded for the run's summary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod worker_support;

use std::io::ErrorKind;
use std::process::Command;

use worker_support::skip;

/// An error that wraps another, as driver errors do.
#[derive(Debug)]
struct Wrapped(std::io::Error);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("error connecting to server")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn only_a_refused_connection_means_nothing_listens() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert!(skip::nothing_listens(&refused));
    assert!(skip::nothing_listens(&Wrapped(refused)));
    let no_socket =
        std::os::unix::net::UnixStream::connect("/nonexistent/.s.PGSQL.5432").unwrap_err();
    assert!(skip::nothing_listens(&Wrapped(no_socket)));

    for kind in [
        ErrorKind::PermissionDenied,
        ErrorKind::TimedOut,
        ErrorKind::ConnectionReset,
        ErrorKind::InvalidData,
    ] {
        let error = Wrapped(std::io::Error::new(kind, "x"));
        assert!(!skip::nothing_listens(&error), "{kind:?}");
    }
    let not_io = "12x".parse::<u32>().unwrap_err();
    assert!(!skip::nothing_listens(&not_io));
    assert_eq!(
        skip::with_causes(&Wrapped(std::io::Error::other("refused"))),
        "error connecting to server: refused"
    );
}

#[tokio::test]
async fn a_server_that_refuses_the_test_is_not_a_missing_server() {
    let base = worker_support::postgres_base_url();
    // Reachable first (else this says SKIPPED): then an unknown database must not look like an
    // absent server.
    match worker_support::pg_connect(&base).await {
        Ok(_) => {}
        Err(error) if skip::nothing_listens(&error) => {
            skip::skip(format!("no PostgreSQL server at {base}"));
            return;
        }
        Err(error) => panic!("PostgreSQL at {base}: {error}"),
    }
    let mut config: tokio_postgres::Config = base.parse().unwrap();
    config.dbname("pushgate_no_such_database");
    let error = match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => panic!("a database that does not exist accepted the connection"),
        Err(error) => error,
    };
    assert!(!skip::nothing_listens(&error), "{error}");
    assert!(
        skip::with_causes(&error).contains("does not exist"),
        "{}",
        skip::with_causes(&error)
    );
}

/// Run only by [`a_skip_fails_under_require_all_and_is_seen_and_counted_otherwise`], in a child
/// process with a chosen environment.
#[test]
#[ignore = "run by a_skip_fails_under_require_all_and_is_seen_and_counted_otherwise"]
fn child_that_skips() {
    skip::skip("the child's reason");
}

#[test]
fn a_skip_fails_under_require_all_and_is_seen_and_counted_otherwise() {
    let child = |require_all: bool| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args(["--ignored", "--exact", "child_that_skips"]);
        if require_all {
            command.env(skip::REQUIRE_ALL, "1");
        } else {
            command.env_remove(skip::REQUIRE_ALL);
        }
        command.output().unwrap()
    };
    // The child's skip log is named after its parent: this process.
    let log = skip::log_dir().join(format!("{}.log", skip::run_key_of(std::process::id())));
    let _ = std::fs::remove_file(&log);

    let failed = child(true);
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert!(!failed.status.success(), "{stdout}");
    assert!(
        stdout.contains("child_that_skips cannot run: the child's reason")
            && stdout.contains("PUSHGATE_REQUIRE_ALL=1"),
        "{stdout}"
    );
    assert!(!log.exists(), "a failure is not recorded as a skip");

    let skipped = child(false);
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "{stderr}");
    // Printed even though the test passed (libtest shows no captured output then).
    assert!(
        stderr.contains("SKIPPED: child_that_skips: the child's reason"),
        "{stderr}"
    );
    let recorded = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert_eq!(
        recorded,
        "skip_rules: child_that_skips: the child's reason\n"
    );
}
