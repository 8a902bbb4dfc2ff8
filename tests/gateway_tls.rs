//! TLS of the gateway: protocol versions, and a certificate replaced on disk while connections are
//! open (new handshakes get the new one, open connections carry on, a broken pair is refused).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pushgate::exchange_sim::client::{self, notification_request, Target};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

async fn wait_for_metric(h: &Harness, sample: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if h.metric(sample).await >= value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} never reached {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn connector_with_versions(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_are_both_served() {
    let h = Harness::start().await;
    for (label, versions) in [
        ("TLS1.2", &[&rustls::version::TLS12][..]),
        ("TLS1.3", &[&rustls::version::TLS13][..]),
    ] {
        let target = Target {
            addr: h.tls_addr(),
            tls: Some((
                connector_with_versions(&h.ca_pem, versions),
                ServerName::try_from("localhost").unwrap(),
            )),
            bind: Some(ALLOWED),
            preamble: None,
        };
        let response = client::exchange(&target, HEALTH, TIMEOUT).await.unwrap();
        assert_eq!(response.status, 200, "{label}");
    }
    // Both health checks are logged with the TLS version they used.
    let log = h.access_log_with("\"tls\":\"TLSv1.2\"").await;
    let log = if log.contains("\"tls\":\"TLSv1.3\"") {
        log
    } else {
        h.access_log_with("\"tls\":\"TLSv1.3\"").await
    };
    assert_eq!(log.lines().count(), 2, "{log}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swapped_on_disk_while_connections_are_open() {
    let h = Harness::start().await;
    let old_pem = h.ca_pem.clone();
    let body = fixture("status-event.xml");
    let request = notification_request(LEGACY_PATH, "localhost", &body);

    // A connection opened with the old certificate, request half sent.
    let mut open = client::connect(&h.target(ALLOWED)).await.unwrap();
    open.write_all(&request[..40]).await.unwrap();

    // Renew: a new key pair lands on disk (key first, then certificate, as renewal tools do).
    let replacement = tempfile::tempdir().unwrap();
    let (new_cert, new_key, new_pem) = write_pki(replacement.path());
    std::fs::copy(&new_key, &h.config.gateway.tls_key).unwrap();
    std::fs::copy(&new_cert, &h.config.gateway.tls_cert).unwrap();
    wait_for_metric(
        &h,
        r#"pushgate_gateway_tls_reloads_total{result="reloaded"}"#,
        1.0,
    )
    .await;

    // New handshakes present the new certificate: trusting only the new one works...
    let with_new = Target::tls(h.tls_addr(), &new_pem, "localhost")
        .unwrap()
        .from(ALLOWED);
    assert_eq!(
        client::exchange(&with_new, HEALTH, TIMEOUT)
            .await
            .unwrap()
            .status,
        200
    );
    // ...and a client that trusts only the old one no longer completes a handshake.
    let with_old = Target::tls(h.tls_addr(), &old_pem, "localhost")
        .unwrap()
        .from(ALLOWED);
    assert!(client::exchange(&with_old, HEALTH, TIMEOUT).await.is_err());

    // The connection opened before the swap finishes its request normally.
    open.write_all(&request[40..]).await.unwrap();
    let response = tokio::time::timeout(TIMEOUT, client::read_response(&mut open))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, ok_envelope());

    // A broken renewal (garbage certificate) is refused; the current certificate keeps serving.
    std::fs::write(
        &h.config.gateway.tls_cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    wait_for_metric(
        &h,
        r#"pushgate_gateway_tls_reloads_total{result="refused"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        client::exchange(&with_new, HEALTH, TIMEOUT)
            .await
            .unwrap()
            .status,
        200
    );
    // A certificate that does not match the key on disk is refused too.
    let other = tempfile::tempdir().unwrap();
    let (other_cert, _, _) = write_pki(other.path());
    std::fs::copy(&other_cert, &h.config.gateway.tls_cert).unwrap();
    wait_for_metric(
        &h,
        r#"pushgate_gateway_tls_reloads_total{result="refused"}"#,
        2.0,
    )
    .await;
    assert_eq!(
        client::exchange(&with_new, HEALTH, TIMEOUT)
            .await
            .unwrap()
            .status,
        200
    );
    h.stop().await;
}

/// Resumption is allowed: a client that keeps its session resumes every later handshake
/// (stateless tickets, so no server cache can run out under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_handshakes_resume_the_session() {
    use tokio::io::AsyncReadExt;
    let h = Harness::start().await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut h.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut kinds = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::new(ALLOWED, 0)).unwrap();
        let tcp = socket.connect(h.tls_addr()).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        tls.write_all(HEALTH).await.unwrap();
        // Reading the answer to the end also reads the session tickets sent after the handshake.
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut answer)).await;
        assert!(answer.starts_with(b"HTTP/1.1 200 "));
    }
    assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full));
    assert!(
        kinds[1..]
            .iter()
            .all(|kind| *kind == Some(rustls::HandshakeKind::Resumed)),
        "{kinds:?}"
    );
    h.stop().await;
}
