//! The store reaches PostgreSQL over TLS as `database_url`'s `sslmode` and `sslrootcert` say,
//! against a private server started for each test (tests/private_postgres): its pg_hba.conf has
//! only `hostssl` lines, so every connection that succeeds is encrypted. Failures say what is
//! wrong (TLS refused, certificate not trusted, host name not in it, TLS demanded) and never
//! repeat the password.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod worker_support;

#[path = "private_postgres/mod.rs"]
mod private_postgres;

use std::time::{Duration, Instant};

use private_postgres::{Options, PrivatePostgres, CERT_DNS_NAME, PASSWORD};
use pushgate::notification::EventKind;
use pushgate::store::{self, IngestResult, StoreError, UnknownSubscriptions};
// `skip` is what the fixture reports a missing server binary through.
use worker_support::{event, notification, request, skip};

const TLS: Options = Options { tls: true };

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `?sslmode=...&sslrootcert=<ca>` for `server`.
fn query(mode: &str, ca: Option<&std::path::Path>) -> String {
    match ca {
        Some(ca) => format!("?sslmode={mode}&sslrootcert={}", ca.display()),
        None => format!("?sslmode={mode}"),
    }
}

/// The error `store::open` gives for `url` (the test fails if it opens).
async fn open_error(url: &str) -> String {
    match store::open(url).await {
        Ok(_) => panic!("{} opened, but should have been refused", redact(url)),
        Err(error) => {
            let text = error.to_string();
            eprintln!("{}: {text}", redact(url));
            assert!(
                !text.contains(PASSWORD),
                "the error repeats the password: {text}"
            );
            assert!(
                matches!(error, StoreError::Unavailable(_) | StoreError::Config(_)),
                "{error:?}"
            );
            text
        }
    }
}

fn redact(url: &str) -> String {
    store::redact_database_url(url)
}

/// Whether the session behind `client` is encrypted, as the server sees it.
async fn session_is_encrypted(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

/// Opens the store at `url`, stores one event and reads it back.
async fn store_and_read_an_event(url: &str) {
    let store = store::open(url)
        .await
        .unwrap_or_else(|e| panic!("opening {}: {e}", redact(url)));
    let watermark = format!("W-{}", rand::random::<u32>());
    let req = request(notification(
        "S-tls",
        None,
        vec![event(EventKind::Created, Some(&watermark))],
    ));
    let outcome = store
        .commit(std::slice::from_ref(&req), UnknownSubscriptions::Accept)
        .await
        .expect("commit over TLS")
        .remove(0);
    assert_eq!(outcome.result, IngestResult::Stored);
    let stored = store.events(Some("S-tls")).await.expect("events over TLS");
    assert!(
        stored
            .iter()
            .any(|row| row.watermark.as_deref() == Some(watermark.as_str())),
        "the event just stored is not read back: {stored:?}"
    );
}

#[test]
fn verify_full_with_the_right_ca_opens_migrates_stores_and_reads_an_event() {
    let Some(server) = PrivatePostgres::start(TLS) else {
        return;
    };
    let ca = server.ca_file();
    runtime().block_on(async {
        // By name, by IP address, and by a name with `hostaddr` (no DNS needed): the
        // certificate names all three.
        for url in [
            server.url("localhost", &query("verify-full", Some(&ca))),
            server.url("127.0.0.1", &query("verify-full", Some(&ca))),
            server.url(
                CERT_DNS_NAME,
                &format!("{}&hostaddr=127.0.0.1", query("verify-full", Some(&ca))),
            ),
            // SCRAM bound to the server's certificate (SCRAM-SHA-256-PLUS), or no connection.
            server.url(
                "localhost",
                &format!(
                    "{}&channel_binding=require",
                    query("verify-full", Some(&ca))
                ),
            ),
        ] {
            store_and_read_an_event(&url).await;
            let client = store::connect_postgres(&url)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", redact(&url)));
            assert!(session_is_encrypted(&client).await, "{}", redact(&url));
        }
    });
}

#[test]
fn a_certificate_from_another_ca_does_not_verify() {
    let Some(server) = PrivatePostgres::start(TLS) else {
        return;
    };
    let other = server.other_ca_file();
    runtime().block_on(async {
        for mode in ["verify-full", "verify-ca", "require"] {
            // `require` with a CA file checks the chain, as libpq does.
            let error = open_error(&server.url("localhost", &query(mode, Some(&other)))).await;
            assert!(
                error.contains("does not verify")
                    && error.contains("not issued by a CA in sslrootcert")
                    && error.contains("other-ca.pem"),
                "{mode}: {error}"
            );
        }
        // Without sslrootcert, verify-full trusts the system's roots, which did not issue it.
        let error = open_error(&server.url("localhost", &query("verify-full", None))).await;
        assert!(
            error.contains("not issued by a CA in the system's trusted roots"),
            "{error}"
        );
    });
}

#[test]
fn a_host_name_the_certificate_lacks_fails_verify_full_and_passes_verify_ca() {
    let Some(server) = PrivatePostgres::start(TLS) else {
        return;
    };
    let ca = server.ca_file();
    runtime().block_on(async {
        // The right server (hostaddr), reached under a name its certificate does not carry.
        let wrong_name = |mode: &str| {
            server.url(
                "wrong.pushgate.test",
                &format!("{}&hostaddr=127.0.0.1", query(mode, Some(&ca))),
            )
        };
        let error = open_error(&wrong_name("verify-full")).await;
        assert!(
            error.contains("not valid for the host name") && error.contains("wrong.pushgate.test"),
            "{error}"
        );
        store_and_read_an_event(&wrong_name("verify-ca")).await;
    });
}

#[test]
fn require_encrypts_without_a_ca() {
    let Some(server) = PrivatePostgres::start(TLS) else {
        return;
    };
    runtime().block_on(async {
        for mode in ["require", "prefer"] {
            let url = server.url("localhost", &query(mode, None));
            store_and_read_an_event(&url).await;
            let client = store::connect_postgres(&url).await.expect(mode);
            assert!(session_is_encrypted(&client).await, "{mode}");
        }
    });
}

#[test]
fn disable_is_refused_by_a_server_that_demands_tls() {
    let Some(server) = PrivatePostgres::start(TLS) else {
        return;
    };
    runtime().block_on(async {
        let error = open_error(&server.url("127.0.0.1", &query("disable", None))).await;
        assert!(
            error.contains("only over TLS") && error.contains("sslmode=disable"),
            "{error}"
        );
    });
}

#[test]
fn a_server_without_tls_fails_the_modes_that_need_it_and_serves_prefer_in_the_clear() {
    let Some(server) = PrivatePostgres::start(Options { tls: false }) else {
        return;
    };
    // Any CA file will do: the server never gets as far as showing a certificate.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        rcgen::CertifiedIssuer::self_signed(
            {
                let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                params
            },
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap()
        .pem(),
    )
    .unwrap();
    runtime().block_on(async {
        for (mode, ca) in [
            ("require", None),
            ("verify-ca", Some(ca.as_path())),
            ("verify-full", Some(ca.as_path())),
        ] {
            let error = open_error(&server.url("127.0.0.1", &query(mode, ca))).await;
            assert!(
                error.contains("refused TLS") && error.contains(&format!("sslmode={mode}")),
                "{mode}: {error}"
            );
        }
        // libpq's default: TLS when offered, else in the clear.
        for query in ["", "?sslmode=prefer", "?sslmode=disable"] {
            let url = server.url("127.0.0.1", query);
            store_and_read_an_event(&url).await;
            let client = store::connect_postgres(&url).await.expect(query);
            assert!(!session_is_encrypted(&client).await, "{query}");
        }
    });
}

#[test]
fn reconnects_after_the_server_drops_the_store_also_use_tls() {
    let Some(server) = PrivatePostgres::start(TLS) else {
        return;
    };
    let url = server.url("localhost", &query("verify-full", Some(&server.ca_file())));
    runtime().block_on(async {
        let store = store::open(&url).await.expect("open");
        store.ping().await.expect("first ping");
        let admin = store::connect_postgres(&url)
            .await
            .expect("admin connection");
        let ended: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = 'pushgate-worker'",
                &[],
            )
            .await
            .expect("terminating the store's sessions")
            .get(0);
        assert!(ended >= 1, "the store had no session to end");
        // The first call after the cut may fail (the store learns of it then); within a few
        // calls the store is back, on a new session.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match store.ping().await {
                Ok(()) => break,
                Err(error) if Instant::now() < deadline => {
                    assert!(!error.to_string().contains(PASSWORD), "{error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("the store did not reconnect: {error}"),
            }
        }
        store.backlog().await.expect("a query after reconnecting");
        let sessions: Vec<(bool, bool)> = admin
            .query(
                "SELECT s.ssl, a.backend_start > now() - interval '1 minute'
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'pushgate-worker'",
                &[],
            )
            .await
            .expect("the store's sessions")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        assert!(!sessions.is_empty(), "the store has no session");
        assert!(
            sessions.iter().all(|&(ssl, _)| ssl),
            "a session in the clear: {sessions:?}"
        );
    });
}

#[test]
fn the_mailbox_command_reaches_the_database_over_verify_full() {
    let Some(server) = PrivatePostgres::start(TLS) else {
        return;
    };
    let run = |url: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .args(args)
            .env("PUSHGATE__WORKER__DATABASE_URL", url)
            .output()
            .expect("running pushgate")
    };
    let good = server.url("localhost", &query("verify-full", Some(&server.ca_file())));
    let added = run(&good, &["mailboxes", "add", "room1@contoso.com"]);
    assert!(added.status.success(), "{added:?}");
    let listed = run(&good, &["mailboxes", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("room1@contoso.com"),
        "{listed:?}"
    );
    let bad = server.url(
        "localhost",
        &query("verify-full", Some(&server.other_ca_file())),
    );
    let refused = run(&bad, &["mailboxes", "list"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(stderr.contains("does not verify"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

#[test]
fn a_server_that_never_answers_the_tls_request_is_given_up_on_within_connect_timeout() {
    runtime().block_on(async {
        // Accepts connections and reads, but never says a word.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let url = format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres?sslmode=require&connect_timeout=1"
        );
        // A liveness guard, far above connect_timeout: without the bound the open waits forever.
        let error = tokio::time::timeout(Duration::from_secs(30), open_error(&url))
            .await
            .expect("store::open still waiting after 30 s: connect_timeout does not bound it");
        assert!(
            error.contains("did not complete the connection") && error.contains("connect_timeout"),
            "{error}"
        );
        silent.abort();
    });
}
