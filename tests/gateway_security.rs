//! Hostile inputs against the real gateway on loopback: entity bombs, deep nesting, huge and slow
//! bodies, slowloris heads, request smuggling shapes, forged forwarding headers, denied sources,
//! PROXY protocol. Every refusal also proves the upstream never saw the request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pushgate::exchange_sim::client::{
    self, notification_request, Target, SEND_NOTIFICATION_ACTION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

fn post_head(length: usize) -> String {
    format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\n\
         SOAPAction: {SEND_NOTIFICATION_ACTION}\r\nContent-Length: {length}\r\n\r\n"
    )
}

async fn refused_body(h: &Harness, body: &[u8], what: &str) -> u16 {
    let response = h
        .send(
            ALLOWED,
            &notification_request(LEGACY_PATH, "localhost", body),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    h.upstream.assert_untouched(what);
    response.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billion_laughs_is_refused_without_expansion() {
    let h = Harness::start().await;
    let bomb = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<soap11:Envelope xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/"><soap11:Body>&lol9;</soap11:Body></soap11:Envelope>"#;
    let started = Instant::now();
    assert_eq!(refused_body(&h, bomb, "billion laughs").await, 400);
    assert!(started.elapsed() < Duration::from_secs(5));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_entity_is_refused() {
    let h = Harness::start().await;
    let xxe = br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><soap11:Envelope xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/"><soap11:Body>&x;</soap11:Body></soap11:Envelope>"#;
    assert_eq!(refused_body(&h, xxe, "external entity").await, 400);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_deep_nesting_is_refused() {
    let h = Harness::start().await;
    let mut deep = b"<?xml version=\"1.0\"?>".to_vec();
    for _ in 0..10_000 {
        deep.extend_from_slice(b"<a>");
    }
    assert!(deep.len() < 65_536);
    assert_eq!(refused_body(&h, &deep, "deep nesting").await, 400);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_bodies_are_refused_declared_or_chunked() {
    let h = Harness::start().await;
    // Declared: refused from the head, before any body byte is read.
    let declared = post_head(10 * 1024 * 1024);
    let response = h.send(ALLOWED, declared.as_bytes()).await.unwrap();
    assert_eq!(response.status, 413);

    // Chunked: refused while reading, once the limit is passed. The client keeps sending in the
    // background as a real one would; the answer arrives anyway.
    let head = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n\
         SOAPAction: {SEND_NOTIFICATION_ACTION}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let stream = client::connect(&h.target(ALLOWED)).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'<'; 64 * 1024];
        for _ in 0..160 {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(&chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        std::io::Result::Ok(())
    });
    let response = tokio::time::timeout(TIMEOUT, client::read_response(&mut reader))
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(response.status, 413);
    sender.abort();
    h.upstream.assert_untouched("10 MB bodies");
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="body_too_large"}"#,
        2.0,
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_head_is_cut_off() {
    let h = Harness::with(Options {
        header_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let mut stream = client::connect(&h.target(ALLOWED)).await.unwrap();
    let head = post_head(100);
    let started = Instant::now();
    let mut closed_after = None;
    // One byte every 100 ms would take 10+ s for this head; the gateway must hang up at ~1 s.
    for byte in head.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    if closed_after.is_none() {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection must be closed"
        );
        closed_after = Some(started.elapsed());
    }
    let closed_after = closed_after.unwrap();
    assert!(
        closed_after < Duration::from_secs(4),
        "cut off after {closed_after:?}"
    );
    // The header timeout fires inside the gateway at about 1 s, whatever the client notices later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="header_timeout"}"#,
        1.0,
    )
    .await;
    h.access_log_with(r#""reason":"header_timeout""#).await;
    h.upstream.assert_untouched("slowloris");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_gets_408() {
    let h = Harness::with(Options {
        body_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let body = fixture("exo-capture.xml");
    let mut stream = client::connect(&h.target(ALLOWED)).await.unwrap();
    stream
        .write_all(post_head(body.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body[..100]).await.unwrap();
    // ...and the rest never comes.
    let response = tokio::time::timeout(TIMEOUT, client::read_response(&mut stream))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status, 408);
    h.upstream.assert_untouched("slow body");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_shapes_are_refused() {
    let body = fixture("status-event.xml");
    let te_cl = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: {SEND_NOTIFICATION_ACTION}\r\n\
         Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"
    );
    let cl_cl = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: {SEND_NOTIFICATION_ACTION}\r\n\
         Content-Length: {0}\r\nContent-Length: {0}\r\n\r\n",
        body.len()
    );
    let cl_list = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: {SEND_NOTIFICATION_ACTION}\r\n\
         Content-Length: {0}, {0}\r\n\r\n",
        body.len()
    );
    let te_obfuscated = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: {SEND_NOTIFICATION_ACTION}\r\n\
         Transfer-Encoding: xchunked\r\n\r\n"
    );
    let te_space_before_colon = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: {SEND_NOTIFICATION_ACTION}\r\n\
         Transfer-Encoding : chunked\r\n\r\n"
    );
    let te_folded = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: {SEND_NOTIFICATION_ACTION}\r\n\
         Transfer-Encoding: identity\r\n chunked\r\n\r\n"
    );
    let te_http10 = format!(
        "POST {LEGACY_PATH} HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: {SEND_NOTIFICATION_ACTION}\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let te_gzip_chunked = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: {SEND_NOTIFICATION_ACTION}\r\n\
         Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    );
    let cl_plus = format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: {SEND_NOTIFICATION_ACTION}\r\n\
         Content-Length: +{}\r\n\r\n",
        body.len()
    );
    let bare_lf = format!(
        "POST {LEGACY_PATH} HTTP/1.1\nHost: localhost\nContent-Type: text/xml\nSOAPAction: {SEND_NOTIFICATION_ACTION}\n\
         Content-Length: 0\nTransfer-Encoding: chunked\n\n"
    );
    for (what, bytes) in [
        ("CL.TE", te_cl),
        ("CL.CL", cl_cl),
        ("CL list", cl_list),
        ("TE obfuscated", te_obfuscated),
        ("TE space before colon", te_space_before_colon),
        ("TE folded", te_folded),
        ("TE on HTTP/1.0", te_http10),
        ("TE gzip, chunked", te_gzip_chunked),
        ("CL with sign", cl_plus),
        ("bare LF with CL and TE", bare_lf),
    ] {
        let h = Harness::start().await;
        let response = h
            .send(ALLOWED, bytes.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status, 400, "{what}");
        assert!(response.header("server").is_none(), "{what}: banner");
        h.upstream.assert_untouched(what);
        h.stop().await;
    }
}

/// When the client's extra bytes leave, relative to its request.
#[derive(Debug, Clone, Copy)]
enum Timing {
    /// In the same write as the request.
    SameWrite,
    /// A few milliseconds after the request (0 to 3 ms, varied by iteration).
    Later(u64),
    /// Once the worker has the request and before it answers.
    WhileTheWorkerAnswers,
}

/// Extra bytes a client may send after a complete notification on its one-request connection.
fn extras() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("trailing CRLF", b"\r\n".to_vec()),
        ("one stray byte", b"x".to_vec()),
        (
            "pipelined notification",
            notification_request(
                "/api/webhooks/exchange",
                "localhost",
                &fixture("created-calendar-item.xml"),
            ),
        ),
        (
            "pipelined health check",
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
    ]
}

/// Bytes of a recorded request as written on the wire (request line, fields, empty line, body).
fn wire_size(request: &Recorded) -> usize {
    let line = format!(
        "{} {} HTTP/1.{}\r\n",
        request.method, request.target, request.version
    );
    let fields: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.len() + 2 + value.len() + 2)
        .sum();
    line.len() + fields + 2 + request.body.len()
}

async fn send_with_extra(
    h: &Harness,
    request: &[u8],
    extra: &[u8],
    timing: Timing,
    gate: &Semaphore,
    forwarded_before: usize,
) -> client::RawResponse {
    let mut stream = client::connect(&h.target(ALLOWED)).await.unwrap();
    match timing {
        Timing::SameWrite => {
            gate.add_permits(1);
            let mut bytes = request.to_vec();
            bytes.extend_from_slice(extra);
            stream.write_all(&bytes).await.unwrap();
        }
        Timing::Later(ms) => {
            gate.add_permits(1);
            stream.write_all(request).await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            // The gateway may already have answered and closed: that is fine.
            let _ = stream.write_all(extra).await;
            let _ = stream.flush().await;
        }
        Timing::WhileTheWorkerAnswers => {
            stream.write_all(request).await.unwrap();
            stream.flush().await.unwrap();
            h.upstream.wait_for_requests(forwarded_before + 1).await;
            stream.write_all(extra).await.unwrap();
            stream.flush().await.unwrap();
            gate.add_permits(1);
        }
    }
    tokio::time::timeout(TIMEOUT, client::read_response(&mut stream))
        .await
        .expect("answer in time")
        .expect("an answer")
}

/// Bytes after the declared body are not part of the request: whenever they arrive, the
/// notification is forwarded once, exactly as checked, and answered with the worker's answer; the
/// extra bytes never reach the worker, and the log and metrics say "forwarded".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_body_never_change_what_the_worker_and_the_log_see() {
    const ROUNDS: u64 = 6;
    let h = Harness::start().await;
    let gate = Arc::new(Semaphore::new(0));
    h.upstream.set_behaviour(Behaviour::Hold(gate.clone()));
    let body = fixture("status-event.xml");
    let request = notification_request(LEGACY_PATH, "localhost", &body);
    let mut sent = 0usize;
    let mut forwarded_bytes = 0usize;
    for round in 0..ROUNDS {
        for (what, extra) in extras() {
            for timing in [
                Timing::SameWrite,
                Timing::Later(round % 4),
                Timing::WhileTheWorkerAnswers,
            ] {
                let case = format!("{what}, {timing:?}, round {round}");
                let response = send_with_extra(&h, &request, &extra, timing, &gate, sent).await;
                sent += 1;
                assert_eq!(response.status, 200, "{case}");
                assert_eq!(response.body, ok_envelope(), "{case}: the worker's answer");
                let seen = h.upstream.requests();
                assert_eq!(seen.len(), sent, "{case}: forwarded exactly once");
                let last = &seen[sent - 1];
                assert_eq!(last.target, LEGACY_PATH, "{case}");
                assert_eq!(
                    last.body, body,
                    "{case}: the body as declared, nothing more"
                );
                // Every byte the upstream read is accounted for by the requests it recorded: no
                // extra byte reached it on any connection.
                forwarded_bytes += wire_size(last);
                assert_eq!(
                    h.upstream.bytes(),
                    forwarded_bytes,
                    "{case}: bytes reached the upstream beyond the request"
                );
            }
        }
    }
    let total = sent as f64;
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="forwarded",reason="ok"}"#,
        total,
    )
    .await;
    let metrics = h.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "pushgate_gateway_requests_total",
            r#"outcome="rejected""#
        ),
        0.0,
        "nothing counted as refused"
    );
    let log = h.access_log_lines(sent).await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), sent, "one access-log line per request");
    assert!(
        lines
            .iter()
            .all(|line| line["outcome"] == "forwarded" && line["status"] == 200),
        "{log}"
    );
    h.stop().await;
}

/// A refused notification followed by extra bytes, whenever they arrive: refused, and nothing of
/// it reaches the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_bytes_after_it_reaches_nothing() {
    const ROUNDS: u64 = 6;
    let h = Harness::start().await;
    let not_well_formed = fixture("seed-capture-verbatim.xml");
    let request = notification_request(LEGACY_PATH, "localhost", &not_well_formed);
    let valid_next = notification_request(LEGACY_PATH, "localhost", &fixture("status-event.xml"));
    let mut sent = 0.0;
    for round in 0..ROUNDS {
        for extra in [&b"\r\n"[..], b"x", &valid_next] {
            for later in [None, Some(round % 4)] {
                let mut stream = client::connect(&h.target(ALLOWED)).await.unwrap();
                match later {
                    None => {
                        let mut bytes = request.clone();
                        bytes.extend_from_slice(extra);
                        stream.write_all(&bytes).await.unwrap();
                    }
                    Some(ms) => {
                        stream.write_all(&request).await.unwrap();
                        stream.flush().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        let _ = stream.write_all(extra).await;
                    }
                }
                let response = client::read_response(&mut stream).await.unwrap();
                sent += 1.0;
                assert_eq!(response.status, 400, "round {round}, later {later:?}");
                h.upstream
                    .assert_untouched(&format!("refused with extra bytes, round {round}"));
            }
        }
    }
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="xml_not_well_formed"}"#,
        sent,
    )
    .await;
    h.upstream.assert_untouched("refused with extra bytes");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_smuggled_after_the_body_never_reaches_upstream() {
    let h = Harness::start().await;
    let body = fixture("status-event.xml");
    let mut bytes = notification_request(LEGACY_PATH, "localhost", &body);
    bytes.extend_from_slice(
        b"POST /api/webhooks/exchange HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    );
    let response = h.send(ALLOWED, &bytes).await.unwrap();
    assert_eq!(response.status, 200);
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 1, "only the first request is forwarded");
    assert_eq!(seen[0].body, body);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_heads() {
    let h = Harness::start().await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(h.send(ALLOWED, big.as_bytes()).await.unwrap().status, 431);
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\n{many}\r\n");
    assert_eq!(h.send(ALLOWED, many.as_bytes()).await.unwrap().status, 431);
    assert_eq!(
        h.send(ALLOWED, b"\x00\x01\x02garbage\r\n\r\n")
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        h.send(ALLOWED, b"GET /healthz HTTP/2.0\r\n\r\n")
            .await
            .unwrap()
            .status,
        505
    );
    h.upstream.assert_untouched("garbage heads");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_source_is_closed_before_tls() {
    let h = Harness::start().await;
    let body = fixture("exo-capture.xml");
    let result = h
        .send(
            DENIED,
            &notification_request(LEGACY_PATH, "localhost", &body),
        )
        .await;
    assert!(
        result.is_err(),
        "no TLS session for an unlisted source: {result:?}"
    );
    // Also with a forged X-Forwarded-For naming a Microsoft address.
    let mut forged = notification_request(LEGACY_PATH, "localhost", &body);
    forged.splice(0..0, Vec::new());
    let forged = String::from_utf8(forged).unwrap().replacen(
        "\r\n",
        "\r\nX-Forwarded-For: 40.92.0.1\r\n",
        1,
    );
    assert!(h.send(DENIED, forged.as_bytes()).await.is_err());
    h.wait_metric(
        r#"pushgate_gateway_connections_rejected_total{reason="source_not_allowed"}"#,
        2.0,
    )
    .await;
    h.upstream.assert_untouched("denied source");
    h.stop().await;
}

fn with_forwarded_for(request: Vec<u8>, value: &str) -> Vec<u8> {
    String::from_utf8(request)
        .unwrap()
        .replacen("\r\n", &format!("\r\nX-Forwarded-For: {value}\r\n"), 1)
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_untrusted_peers_is_never_believed() {
    let body = fixture("exo-capture.xml");
    // A probe network claiming to forward for Microsoft still may not post.
    let h = Harness::start().await;
    let forged = with_forwarded_for(
        notification_request(LEGACY_PATH, "localhost", &body),
        "40.92.0.1",
    );
    assert_eq!(h.send(PROBE, &forged).await.unwrap().status, 403);
    h.upstream.assert_untouched("forged XFF from probe");
    // An allowed peer's own claim is replaced by its real address.
    let forged = with_forwarded_for(
        notification_request(LEGACY_PATH, "localhost", &body),
        "203.0.113.7",
    );
    assert_eq!(h.send(ALLOWED, &forged).await.unwrap().status, 200);
    let seen = h.upstream.requests();
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.2"));
    assert_eq!(seen[0].header_count("x-forwarded-for"), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_rightmost_untrusted_hop_decides() {
    let body = fixture("exo-capture.xml");
    let cases: [(&str, Option<&str>); 4] = [
        ("40.92.0.1", Some("40.92.0.1")),
        // Whatever a client prepends, the balancer's own append is what counts.
        ("203.0.113.5, 40.92.0.1", Some("40.92.0.1")),
        ("40.92.0.1, 203.0.113.5", None),
        ("2603:1026:c02:3097::5", Some("2603:1026:c02:3097::5")),
    ];
    for (xff, admitted_as) in cases {
        let h = Harness::start().await;
        let request =
            with_forwarded_for(notification_request(LEGACY_PATH, "localhost", &body), xff);
        let response = h.send(PROXY, &request).await.unwrap();
        match admitted_as {
            Some(client) => {
                assert_eq!(response.status, 200, "{xff}");
                assert_eq!(
                    h.upstream.requests()[0].header("x-forwarded-for"),
                    Some(client)
                );
            }
            None => {
                assert_eq!(response.status, 403, "{xff}");
                h.upstream.assert_untouched(xff);
            }
        }
        h.stop().await;
    }
    // A malformed chain from the balancer is refused.
    let h = Harness::start().await;
    let request = with_forwarded_for(
        notification_request(LEGACY_PATH, "localhost", &body),
        "not-an-address",
    );
    assert_eq!(h.send(PROXY, &request).await.unwrap().status, 400);
    h.upstream.assert_untouched("malformed XFF");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_names_the_client_before_tls() {
    let body = fixture("exo-capture.xml");
    let h = Harness::with(Options {
        proxy_protocol: true,
        ..Options::default()
    })
    .await;
    let request = notification_request(LEGACY_PATH, "localhost", &body);
    // v1 naming a Microsoft address: admitted, and forwarded as that client.
    let target = h
        .target(PROXY)
        .with_preamble(b"PROXY TCP4 40.92.0.1 127.0.0.1 51000 443\r\n");
    let response = client::exchange(&target, &request, TIMEOUT).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        h.upstream.requests()[0].header("x-forwarded-for"),
        Some("40.92.0.1")
    );
    // v2 naming an IPv6 Exchange front end.
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2603:1026:c02:3097::5]:51000"
                .parse::<std::net::SocketAddr>()
                .unwrap(),
            "[::1]:443".parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let response = client::exchange(&h.target(PROXY).with_preamble(&v2), &request, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    // An unlisted client named by the balancer: closed before TLS.
    let target = h
        .target(PROXY)
        .with_preamble(b"PROXY TCP4 203.0.113.5 127.0.0.1 51000 443\r\n");
    assert!(client::exchange(&target, &request, TIMEOUT).await.is_err());
    // No PROXY header from the balancer: closed.
    assert!(client::exchange(&h.target(PROXY), &request, TIMEOUT)
        .await
        .is_err());
    assert_eq!(h.upstream.requests().len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_listener_matches_v4_mapped_peers() {
    let h = Harness::with(Options {
        listen: "[::]:0".into(),
        ..Options::default()
    })
    .await;
    let port = h.tls_addr().port();
    let v4 = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    let v6 = std::net::SocketAddr::new("::1".parse().unwrap(), port);
    let health = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let allowed = Target::tls(v4, &h.ca_pem, "localhost")
        .unwrap()
        .from(ALLOWED);
    assert_eq!(
        client::exchange(&allowed, health, TIMEOUT)
            .await
            .unwrap()
            .status,
        200
    );
    let denied = Target::tls(v4, &h.ca_pem, "localhost")
        .unwrap()
        .from(DENIED);
    assert!(client::exchange(&denied, health, TIMEOUT).await.is_err());
    let six = Target::tls(v6, &h.ca_pem, "localhost")
        .unwrap()
        .from("::1".parse::<IpAddr>().unwrap());
    assert_eq!(
        client::exchange(&six, health, TIMEOUT)
            .await
            .unwrap()
            .status,
        200
    );
    h.stop().await;
}

fn chunked_head() -> String {
    format!(
        "POST {LEGACY_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\n\
         SOAPAction: {SEND_NOTIFICATION_ACTION}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
}

/// Asserts the request id's log lines are at INFO or WARN (never ERROR) and name `reason`.
async fn logged_as_client_fault(request_id: &str, reason: &str, what: &str) {
    let lines = wait_for_log_lines(request_id).await;
    for line in &lines {
        let level = line["level"].as_str().unwrap_or_default();
        assert!(
            level == "INFO" || level == "WARN",
            "{what}: logged at {level}: {line}"
        );
    }
    assert!(
        lines.iter().any(|line| line["fields"]["reason"] == reason),
        "{what}: no log line with reason {reason}: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_framing_is_a_client_fault() {
    capture_logs();
    let body = fixture("status-event.xml");
    let head = chunked_head();
    let size = format!("{:x}", body.len());
    let framed = |prefix: &str, data: &[u8], suffix: &str| -> Vec<u8> {
        let mut out = head.clone().into_bytes();
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(suffix.as_bytes());
        out
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "chunk size that overflows",
            framed("1ffffffffffffffff\r\n", &body, "\r\n0\r\n\r\n"),
        ),
        (
            "negative chunk size",
            framed(&format!("-{size}\r\n"), &body, "\r\n0\r\n\r\n"),
        ),
        (
            "hex-prefixed chunk size",
            framed(&format!("0x{size}\r\n"), &body, "\r\n0\r\n\r\n"),
        ),
        (
            "chunk longer than its size",
            framed("10\r\n", &body, "\r\n0\r\n\r\n"),
        ),
        (
            "LF-only chunk lines",
            framed(&format!("{size}\n"), &body, "\n0\n\n"),
        ),
        (
            "chunk extension",
            framed(&format!("{size};ext=1\r\n"), &body, "\r\n0\r\n\r\n"),
        ),
        (
            "trailer field",
            framed(
                &format!("{size}\r\n"),
                &body,
                "\r\n0\r\nX-Trailer: 1\r\n\r\n",
            ),
        ),
    ];
    let h = Harness::start().await;
    for (what, bytes) in &cases {
        let response = h.send(ALLOWED, bytes).await.unwrap();
        assert_eq!(response.status, 400, "{what}");
        assert_eq!(response.body, b"Bad Request\n", "{what}");
        let request_id = response.header("x-request-id").unwrap().to_string();
        logged_as_client_fault(&request_id, "bad_chunked_body", what).await;
        h.upstream.assert_untouched(what);
    }
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="bad_chunked_body"}"#,
        cases.len() as f64,
    )
    .await;
    let metrics = h.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "pushgate_gateway_requests_total",
            r#"outcome="internal_error""#
        ),
        0.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_body_is_not_an_internal_error() {
    capture_logs();
    let h = Harness::start().await;
    let body = fixture("exo-capture.xml");
    let half = &body[..body.len() / 2];

    // Half-closed after part of the body: the client can still read the answer.
    let mut length_framed = post_head(body.len()).into_bytes();
    length_framed.extend_from_slice(half);
    let mut chunked = chunked_head().into_bytes();
    chunked.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    chunked.extend_from_slice(half);
    for (what, bytes) in [("declared length", &length_framed), ("chunked", &chunked)] {
        let mut stream = client::connect(&h.target(ALLOWED)).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream.shutdown().await.unwrap();
        let response = client::read_response(&mut stream).await.unwrap();
        assert_eq!(response.status, 400, "{what}");
        let request_id = response.header("x-request-id").unwrap().to_string();
        logged_as_client_fault(&request_id, "incomplete_body", what).await;
    }
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="incomplete_body"}"#,
        2.0,
    )
    .await;

    // Gone for good (no TLS close_notify, no reading): counted as a client that went away.
    for round in 0..5 {
        let mut stream = client::connect(&h.target(ALLOWED)).await.unwrap();
        stream.write_all(&length_framed).await.unwrap();
        stream.flush().await.unwrap();
        drop(stream);
        let gone = 2.0 + f64::from(round) + 1.0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = h.metrics().await;
            let counted = metric_sum(
                &metrics,
                "pushgate_gateway_requests_total",
                r#"reason="incomplete_body""#,
            ) + metric_sum(
                &metrics,
                "pushgate_gateway_requests_total",
                r#"reason="client_closed""#,
            );
            if counted == gone {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {counted} of {gone} counted: {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let metrics = h.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "pushgate_gateway_requests_total",
            r#"outcome="internal_error""#
        ),
        0.0,
        "{metrics}"
    );
    // The log capture spans this test binary; none of its tests provokes a gateway fault.
    let errors: Vec<_> = log_lines_with("\"level\":\"ERROR\"");
    assert!(
        errors.is_empty(),
        "ERROR lines for client faults: {errors:?}"
    );
    h.upstream.assert_untouched("client leaving mid-body");
    h.stop().await;
}

/// Inserts raw header lines right after the request line.
fn with_header_lines(request: Vec<u8>, lines: &[u8]) -> Vec<u8> {
    let line_end = request.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut out = request[..line_end].to_vec();
    out.extend_from_slice(lines);
    out.extend_from_slice(&request[line_end..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_strip_checked_fields() {
    let body = fixture("exo-capture.xml");
    let h = Harness::start().await;
    for value in [
        "SOAPAction, Content-Type",
        "close, SOAPAction",
        "Content-Length",
        "Host",
        "X-Forwarded-For",
        "TE",
    ] {
        // `notification_request` says `Connection: close`; this one says more.
        let request = String::from_utf8(notification_request(LEGACY_PATH, "localhost", &body))
            .unwrap()
            .replacen("Connection: close", &format!("Connection: {value}"), 1);
        let response = h.send(ALLOWED, request.as_bytes()).await.unwrap();
        assert_eq!(response.status, 400, "{value}");
        h.upstream.assert_untouched(value);
    }
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="bad_connection"}"#,
        6.0,
    )
    .await;
    // The options a client may send leave every checked field in place.
    for value in ["close", "keep-alive", "Keep-Alive, close"] {
        let request = String::from_utf8(notification_request(LEGACY_PATH, "localhost", &body))
            .unwrap()
            .replacen("Connection: close", &format!("Connection: {value}"), 1);
        assert_eq!(
            h.send(ALLOWED, request.as_bytes()).await.unwrap().status,
            200
        );
        let seen = h.upstream.requests();
        let last = seen.last().unwrap();
        assert_eq!(last.header("soapaction"), Some(SEND_NOTIFICATION_ACTION));
        assert_eq!(last.header("content-type"), Some("text/xml; charset=utf-8"));
    }
    h.stop().await;
}

/// The worker receives exactly the allowlisted fields: the checked ones as checked, the
/// gateway's own, and nothing else the client sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowlisted_fields_reach_the_worker() {
    let body = fixture("exo-capture.xml");
    let h = Harness::start().await;
    let extra: &[u8] = b"Cookie: session=1\r\nX-HTTP-Method-Override: DELETE\r\n\
        X_Forwarded_For: 203.0.113.9\r\nX-Forwarded-For: 203.0.113.8\r\nForwarded: for=203.0.113.7\r\n\
        X-Forwarded-Host: evil.example\r\nX-Real-IP: 203.0.113.6\r\nX-Request-Id: chosen-by-client\r\n\
        Authorization: Bearer forged\r\nProxy-Authorization: Basic eA==\r\nUser-Agent: ExchangeServicesClient/15\r\n\
        CallerData: abc\r\nVia: 1.1 somewhere\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
        X-Latin: caf\xe9\r\nX-Obs: \x80\xff\r\n";
    let request = with_header_lines(
        notification_request(LEGACY_PATH, "gateway.example.com", &body),
        extra,
    );
    let response = h.send(ALLOWED, &request).await.unwrap();
    assert_eq!(response.status, 200);
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 1);
    let forwarded = &seen[0];
    let names: Vec<String> = forwarded
        .headers
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    assert_eq!(
        names,
        [
            "host",
            "content-type",
            "soapaction",
            "content-length",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-request-id",
            "authorization"
        ],
        "{:?}",
        forwarded.headers
    );
    assert_eq!(forwarded.version, 1, "HTTP/1.1 to the worker");
    assert_eq!(
        forwarded.header("host"),
        Some(h.upstream.addr.to_string().as_str()),
        "the worker's own address, not the client's Host"
    );
    assert_eq!(forwarded.header("x-forwarded-for"), Some("127.0.0.2"));
    assert_eq!(forwarded.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        forwarded.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_ne!(forwarded.header("x-request-id"), Some("chosen-by-client"));
    assert_eq!(forwarded.body, body);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_heads_are_refused() {
    let body = fixture("status-event.xml");
    let h = Harness::start().await;
    let crlf = notification_request(LEGACY_PATH, "localhost", &body);
    let head_end = crlf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let all_lf = String::from_utf8_lossy(&crlf[..head_end]).replace("\r\n", "\n");
    let one_lf = String::from_utf8_lossy(&crlf[..head_end]).replacen("\r\n", "\n", 2);
    for (what, head) in [("every line", all_lf), ("one line", one_lf)] {
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        let response = h.send(ALLOWED, &request).await.unwrap();
        assert_eq!(response.status, 400, "{what}");
        h.upstream.assert_untouched(what);
    }
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="bare_lf"}"#,
        2.0,
    )
    .await;
    h.stop().await;
}
