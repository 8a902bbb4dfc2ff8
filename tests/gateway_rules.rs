//! Every request rule of the gateway, accepted and refused, through real TLS on loopback in front
//! of a real counting upstream. Each refusal also proves the upstream never saw the request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod common;

use common::*;
use pushgate::exchange_sim::client::{notification_request, SEND_NOTIFICATION_ACTION};

fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn exchange_headers(length: usize) -> Vec<(&'static str, String)> {
    vec![
        ("Host", "localhost".into()),
        ("Content-Type", "text/xml; charset=utf-8".into()),
        ("SOAPAction", SEND_NOTIFICATION_ACTION.into()),
        ("Content-Length", length.to_string()),
    ]
}

fn build(method: &str, target: &str, headers: &[(&'static str, String)], body: &[u8]) -> Vec<u8> {
    let borrowed: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    request(method, target, &borrowed, body)
}

fn replace(
    headers: &[(&'static str, String)],
    name: &'static str,
    value: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut out: Vec<_> = headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
        .cloned()
        .collect();
    if let Some(value) = value {
        out.push((name, value.to_string()));
    }
    out
}

/// Sends `bytes` from an allowed source and asserts the status and that nothing reached upstream.
async fn expect_refused(h: &Harness, bytes: &[u8], status: u16, what: &str) {
    let response = h
        .send(ALLOWED, bytes)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        response.status,
        status,
        "{what}: body {:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert!(response.header("server").is_none(), "{what}: server banner");
    assert!(response.body.len() < 64, "{what}: short fixed body");
    h.upstream.assert_untouched(what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_notification_is_forwarded_and_answer_relayed() {
    let h = Harness::start().await;
    let body = fixture("exo-capture.xml");
    let response = h.post(&body).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body,
        ok_envelope(),
        "worker's answer relayed unchanged"
    );
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 1);
    let forwarded = &seen[0];
    assert_eq!(forwarded.method, "POST");
    assert_eq!(forwarded.target, LEGACY_PATH, "path and query unchanged");
    assert_eq!(forwarded.body, body, "body unchanged");
    assert_eq!(
        forwarded.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(forwarded.header("x-forwarded-for"), Some("127.0.0.2"));
    assert_eq!(
        forwarded.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(
        forwarded.header("soapaction"),
        Some(SEND_NOTIFICATION_ACTION)
    );
    assert!(forwarded
        .header("x-request-id")
        .is_some_and(|id| id.len() == 32));
    assert!(
        forwarded.header("accept-encoding").is_none(),
        "answer must never be compressed"
    );
    assert!(
        forwarded.header("connection").is_none(),
        "hop-by-hop dropped"
    );
    let log = h.access_log_with("\"outcome\":\"forwarded\"").await;
    assert!(!log.contains("SubscriptionId"), "the body is never logged");
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="forwarded",reason="ok"}"#,
        1.0,
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_notification_is_forwarded_with_a_length() {
    let h = Harness::start().await;
    let body = fixture("status-event.xml");
    let mut chunked = Vec::new();
    for piece in body.chunks(300) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let headers = replace(&exchange_headers(0), "Content-Length", None);
    let headers = replace(&headers, "Transfer-Encoding", Some("chunked"));
    let response = h
        .send(
            ALLOWED,
            &build("POST", "/api/webhooks/exchange", &headers, &chunked),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body);
    assert!(seen[0].header("transfer-encoding").is_none());
    assert_eq!(
        seen[0].header("content-length"),
        Some(body.len().to_string().as_str())
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_each_have_their_status() {
    let body = fixture("exo-capture.xml");
    let base = exchange_headers(body.len());
    let quoted_action = format!("\"{SEND_NOTIFICATION_ACTION}\"");
    // Accepted variants first (each on a fresh harness so counts stay exact).
    for (what, headers) in [
        (
            "quoted SOAPAction",
            replace(&base, "SOAPAction", Some(&quoted_action)),
        ),
        ("lower-case soapaction name", {
            let h = replace(&base, "SOAPAction", None);
            let mut h = h;
            h.push(("soapaction", SEND_NOTIFICATION_ACTION.into()));
            h
        }),
        (
            "content type without charset",
            replace(&base, "Content-Type", Some("text/xml")),
        ),
        (
            "identity encoding",
            replace(&base, "Content-Encoding", Some("identity")),
        ),
    ] {
        let h = Harness::start().await;
        let response = h
            .send(ALLOWED, &build("POST", LEGACY_PATH, &headers, &body))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{what}");
        assert_eq!(h.upstream.requests().len(), 1, "{what}");
        h.stop().await;
    }

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unknown path", build("POST", "/owa/", &base, &body), 404),
        (
            "encoded path",
            build("POST", "/Webservices%2FSyncNotification.svc", &base, &body),
            404,
        ),
        (
            "dot segment",
            build(
                "POST",
                "/x/../Webservices/SyncNotification.svc",
                &base,
                &body,
            ),
            404,
        ),
        (
            "trailing slash",
            build("POST", "/api/webhooks/exchange/", &base, &body),
            404,
        ),
        (
            "bad tenant",
            build(
                "POST",
                "/Webservices/SyncNotification.svc?a%20b",
                &base,
                &body,
            ),
            400,
        ),
        (
            "long tenant",
            build(
                "POST",
                &format!("/api/webhooks/exchange?tenant={}", "a".repeat(65)),
                &base,
                &body,
            ),
            400,
        ),
        ("PUT", build("PUT", LEGACY_PATH, &base, &body), 405),
        ("DELETE", build("DELETE", LEGACY_PATH, &base, &[]), 405),
        (
            "missing SOAPAction",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "SOAPAction", None),
                &body,
            ),
            400,
        ),
        (
            "other SOAPAction",
            build(
                "POST",
                LEGACY_PATH,
                &replace(
                    &base,
                    "SOAPAction",
                    Some("http://schemas.microsoft.com/exchange/services/2006/messages/GetItem"),
                ),
                &body,
            ),
            400,
        ),
        (
            "JSON content type",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "Content-Type", Some("application/json")),
                &body,
            ),
            415,
        ),
        (
            "latin-1 charset",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "Content-Type", Some("text/xml; charset=iso-8859-1")),
                &body,
            ),
            415,
        ),
        (
            "missing content type",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "Content-Type", None),
                &body,
            ),
            415,
        ),
        (
            "gzip body",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "Content-Encoding", Some("gzip")),
                &body,
            ),
            415,
        ),
        (
            "declared 10 MB",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "Content-Length", Some("10485760")),
                &[],
            ),
            413,
        ),
        (
            "no host",
            build("POST", LEGACY_PATH, &replace(&base, "Host", None), &body),
            400,
        ),
        (
            "h2c upgrade",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "Upgrade", Some("h2c")),
                &body,
            ),
            400,
        ),
    ];
    for (what, bytes, status) in cases {
        let h = Harness::start().await;
        expect_refused(&h, &bytes, status, what).await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_lists_the_allowed_methods() {
    let h = Harness::start().await;
    let response = h
        .send(
            ALLOWED,
            &request("OPTIONS", LEGACY_PATH, &[("Host", "localhost")], b""),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST, GET, HEAD"));
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="method_not_allowed"}"#,
        1.0,
    )
    .await;
    h.access_log_with("\"reason\":\"method_not_allowed\"").await;
    h.upstream.assert_untouched("OPTIONS");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_page_and_health_are_served_locally() {
    let h = Harness::start().await;
    for path in [
        "/Webservices/SyncNotification.svc",
        "/WEBSERVICES/syncnotification.svc?Default",
        "/api/webhooks/exchange",
    ] {
        let response = h
            .send(
                ALLOWED,
                &request("GET", path, &[("Host", "localhost")], b""),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{path}");
        assert!(response
            .header("content-type")
            .unwrap()
            .starts_with("text/html"));
        assert!(String::from_utf8_lossy(&response.body).contains("Exchange"));
    }
    let head = h
        .send(
            ALLOWED,
            &request("HEAD", LEGACY_PATH, &[("Host", "localhost")], b""),
        )
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let health = h
        .send(
            ALLOWED,
            &request("GET", "/healthz", &[("Host", "localhost")], b""),
        )
        .await
        .unwrap();
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok\n"[..]));
    h.upstream.assert_untouched("pages");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_networks_may_look_but_never_post() {
    let h = Harness::start().await;
    let page = h
        .send(
            PROBE,
            &request("GET", LEGACY_PATH, &[("Host", "localhost")], b""),
        )
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    let health = h
        .send(
            PROBE,
            &request("GET", "/healthz", &[("Host", "localhost")], b""),
        )
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    let body = fixture("exo-capture.xml");
    let post = h
        .send(
            PROBE,
            &notification_request(LEGACY_PATH, "localhost", &body),
        )
        .await
        .unwrap();
    assert_eq!(post.status, 403);
    h.upstream.assert_untouched("probe POST");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_serves_the_same_rules() {
    let h = Harness::with(Options {
        plain_listener: true,
        ..Options::default()
    })
    .await;
    let target = h.plain_target(ALLOWED);
    let response = pushgate::exchange_sim::client::exchange(
        &target,
        &request("GET", "/nowhere", &[("Host", "localhost")], b""),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 404);
    h.upstream.assert_untouched("plain 404");
    let body = fixture("status-event.xml");
    let response = pushgate::exchange_sim::client::exchange(
        &target,
        &notification_request(LEGACY_PATH, "localhost", &body),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        h.upstream.requests()[0].header("x-forwarded-proto"),
        Some("http")
    );
    h.stop().await;
}

fn field_names(response: &pushgate::exchange_sim::client::RawResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .headers
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    names.sort();
    names
}

/// Head-stage refusals, body-stage refusals, the gateway's pages and its 502: one writer, the same
/// header fields (405 adds `Allow`), a body that is the status text, no banner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_direct_answer_has_the_same_fields() {
    use tokio::io::AsyncWriteExt;
    let body = fixture("exo-capture.xml");
    let base = exchange_headers(body.len());
    let chunked_headers = replace(
        &replace(&base, "Content-Length", None),
        "Transfer-Encoding",
        Some("chunked"),
    );
    let h = Harness::with(Options {
        body_timeout: std::time::Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let mut answers = Vec::new();
    for (what, request, status) in [
        (
            "head: SOAPAction",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "SOAPAction", Some("x")),
                &body,
            ),
            400,
        ),
        ("head: path", build("POST", "/owa/", &base, &body), 404),
        (
            "head: media type",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "Content-Type", Some("application/json")),
                &body,
            ),
            415,
        ),
        (
            "head: declared size",
            build(
                "POST",
                LEGACY_PATH,
                &replace(&base, "Content-Length", Some("10485760")),
                &[],
            ),
            413,
        ),
        (
            "body: not well-formed",
            notification_request(
                LEGACY_PATH,
                "localhost",
                &fixture("seed-capture-verbatim.xml"),
            ),
            400,
        ),
        (
            "body: chunk framing",
            build(
                "POST",
                LEGACY_PATH,
                &chunked_headers,
                b"-5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        ),
        (
            "body: chunked too large",
            build("POST", LEGACY_PATH, &chunked_headers, b"fffff\r\nhello"),
            413,
        ),
        (
            "page: health",
            request("GET", "/healthz", &[("Host", "localhost")], b""),
            200,
        ),
    ] {
        let response = h.send(ALLOWED, &request).await.unwrap();
        assert_eq!(response.status, status, "{what}");
        answers.push((what, response));
    }
    // Body stage, timed out.
    let mut stream = pushgate::exchange_sim::client::connect(&h.target(ALLOWED))
        .await
        .unwrap();
    stream
        .write_all(&build("POST", LEGACY_PATH, &base, &body[..10]))
        .await
        .unwrap();
    let timed_out = pushgate::exchange_sim::client::read_response(&mut stream)
        .await
        .unwrap();
    assert_eq!(timed_out.status, 408);
    answers.push(("body: timeout", timed_out));
    h.upstream.assert_untouched("direct answers");
    h.stop().await;

    // The worker unreachable: the proxy stage answers 502.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let h = Harness::with(Options {
        upstream: Some(format!("http://{}", reserved.local_addr().unwrap())),
        ..Options::default()
    })
    .await;
    let unreachable = h.post(&body).await;
    assert_eq!(unreachable.status, 502);
    answers.push(("proxy: worker unreachable", unreachable));
    h.stop().await;

    let reference = field_names(&answers[0].1);
    assert!(reference.contains(&"content-security-policy".to_string()));
    assert!(reference.contains(&"x-request-id".to_string()));
    for (what, response) in &answers {
        assert_eq!(field_names(response), reference, "{what}");
        assert!(response.header("server").is_none(), "{what}");
        if what.starts_with("page") {
            continue;
        }
        let text = String::from_utf8_lossy(&response.body);
        assert!(
            [
                "Bad Request\n",
                "Not Found\n",
                "Unsupported Media Type\n",
                "Payload Too Large\n",
                "Request Timeout\n",
                "Bad Gateway\n"
            ]
            .contains(&text.as_ref()),
            "{what}: body {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_errors_have_their_status() {
    let h = Harness::start().await;
    let body = fixture("status-event.xml");
    let exchange = notification_request(LEGACY_PATH, "localhost", &body);
    let two_spaces =
        String::from_utf8(exchange.clone())
            .unwrap()
            .replacen(" HTTP/1.1", "  HTTP/1.1", 1);
    expect_refused(
        &h,
        two_spaces.as_bytes(),
        400,
        "two spaces before the version",
    )
    .await;
    let garbled =
        String::from_utf8(exchange.clone())
            .unwrap()
            .replacen(" HTTP/1.1", " HTTP/1.1x", 1);
    expect_refused(&h, garbled.as_bytes(), 400, "garbled version").await;
    let two_spaces_after_method = String::from_utf8(exchange)
        .unwrap()
        .replacen("POST ", "POST  ", 1);
    expect_refused(
        &h,
        two_spaces_after_method.as_bytes(),
        400,
        "two spaces after the method",
    )
    .await;
    expect_refused(
        &h,
        b"GET /healthz HTTP/2.0\r\nHost: localhost\r\n\r\n",
        505,
        "another version",
    )
    .await;
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="malformed_request"}"#,
        3.0,
    )
    .await;
    h.stop().await;
}

/// Sends raw bytes and returns everything the gateway wrote until it closed.
async fn raw_exchange(h: &Harness, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = pushgate::exchange_sim::client::connect(&h.target(ALLOWED))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_http_1_1_gets_100_continue() {
    let h = Harness::start().await;
    let body = fixture("status-event.xml");
    let with_expect = |version: &str| -> Vec<u8> {
        let mut headers = exchange_headers(body.len());
        headers.push(("Expect", "100-continue".into()));
        String::from_utf8(build("POST", LEGACY_PATH, &headers, &body))
            .unwrap()
            .replacen("HTTP/1.1", version, 1)
            .into_bytes()
    };
    let http11 = raw_exchange(&h, &with_expect("HTTP/1.1")).await;
    assert!(
        http11.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
        "{http11}"
    );
    let http10 = raw_exchange(&h, &with_expect("HTTP/1.0")).await;
    assert!(
        !http10.contains(" 100 "),
        "HTTP/1.0 has no interim answer: {http10}"
    );
    assert!(http10.starts_with("HTTP/1.1 200"), "{http10}");
    assert_eq!(h.upstream.requests().len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_without_host_reaches_the_worker_as_valid_http_1_1() {
    let h = Harness::start().await;
    let body = fixture("status-event.xml");
    let headers = replace(&exchange_headers(body.len()), "Host", None);
    let request = String::from_utf8(build("POST", LEGACY_PATH, &headers, &body))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let response = h.send(ALLOWED, request.as_bytes()).await.unwrap();
    assert_eq!(response.status, 200);
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, 1, "forwarded as HTTP/1.1");
    assert_eq!(seen[0].header_count("host"), 1);
    assert_eq!(
        seen[0].header("host"),
        Some(h.upstream.addr.to_string().as_str())
    );
    assert_eq!(seen[0].body, body);
    h.stop().await;
}

/// A body just under the limit, declared or chunked, reaches the worker whole (pingora reads the
/// rebuilt request in several reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_near_the_limit_is_forwarded_whole() {
    let h = Harness::start().await;
    let text = String::from_utf8(fixture("exo-capture.xml")).unwrap();
    // Whitespace after the XML declaration keeps the document valid.
    let filler = 65_536 - text.len() - 1;
    let body = text.replacen("?>", &format!("?>{}", "\n".repeat(filler)), 1);
    assert_eq!(body.len(), 65_535);
    let response = h.post(body.as_bytes()).await;
    assert_eq!(response.status, 200);
    let mut chunked = Vec::new();
    for piece in body.as_bytes().chunks(7_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let headers = replace(&exchange_headers(0), "Content-Length", None);
    let headers = replace(&headers, "Transfer-Encoding", Some("chunked"));
    let response = h
        .send(ALLOWED, &build("POST", LEGACY_PATH, &headers, &chunked))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 2);
    for forwarded in &seen {
        assert_eq!(forwarded.body, body.as_bytes());
        assert_eq!(forwarded.header("content-length"), Some("65535"));
    }
    h.stop().await;
}
