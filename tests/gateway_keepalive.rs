//! Keep-alive for trusted proxies: a load balancer that pools its connections sends request after
//! request on one connection (pipelined in one write, or later), each checked on its own (client
//! address included), bounded in requests and idle time; every other source keeps one request per
//! connection. Every refusal proves that nothing of the refused request, nor of anything after it
//! on a closed connection, reached the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pushgate::exchange_sim::client::{self, notification_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

fn valid(n: usize) -> Vec<u8> {
    let names = [
        "status-event.xml",
        "exo-capture.xml",
        "created-calendar-item.xml",
    ];
    fixture(names[n % names.len()])
}

/// The upstream received exactly these bodies, in order, as checked, and not one byte more.
fn assert_upstream_saw_exactly(h: &Harness, bodies: &[Vec<u8>], what: &str) {
    let seen = h.upstream.requests();
    let seen_bodies: Vec<&[u8]> = seen.iter().map(|r| r.body.as_slice()).collect();
    let expected: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    assert_eq!(seen_bodies, expected, "{what}: the bodies the upstream got");
    let wire: usize = seen.iter().map(Recorded::wire_size).sum();
    assert_eq!(
        h.upstream.bytes(),
        wire,
        "{what}: bytes reached the upstream beyond the forwarded requests"
    );
}

fn connection_field(answer: &client::RawResponse) -> String {
    answer
        .header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase()
}

async fn assert_closed<S: tokio::io::AsyncRead + Unpin + ?Sized>(
    reader: &mut AnswerReader,
    stream: &mut S,
    what: &str,
) {
    assert!(
        reader.next(stream).await.is_none(),
        "{what}: the gateway closes, answering nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_one_write_are_each_checked_and_forwarded() {
    let h = Harness::start().await;
    let mut stream = client::connect(&h.target(PROXY)).await.unwrap();
    let clients = [
        "40.92.0.1",
        "40.92.0.2",
        "2603:1026:c02:3097::5",
        "40.93.1.1",
    ];
    let mut bytes = Vec::new();
    let mut bodies = Vec::new();
    for (n, client) in clients.iter().enumerate() {
        bytes.extend_from_slice(&balancer_request(client, &valid(n)));
        bodies.push(valid(n));
    }
    stream.write_all(&bytes).await.unwrap();
    let mut reader = AnswerReader::default();
    for n in 0..clients.len() {
        let Some(answer) = reader.next(&mut stream).await else {
            panic!(
                "no answer {n}: {}",
                std::fs::read_to_string(h.dir.path().join("access.log")).unwrap_or_default()
            );
        };
        assert_eq!(answer.status, 200, "request {n}");
        assert_eq!(
            answer.body,
            ok_envelope(),
            "request {n}: the worker's answer"
        );
        assert_eq!(connection_field(&answer), "keep-alive", "request {n}");
    }
    assert!(reader.leftover().is_empty());
    let seen = h.upstream.requests();
    let forwarded_for: Vec<&str> = seen
        .iter()
        .map(|r| r.header("x-forwarded-for").unwrap())
        .collect();
    assert_eq!(
        forwarded_for, clients,
        "each request speaks for its own client"
    );
    assert_upstream_saw_exactly(&h, &bodies, "four pipelined notifications");
    h.wait_metric("pushgate_gateway_keepalive_requests_total", 3.0)
        .await;
    h.wait_metric("pushgate_gateway_connections_accepted_total", 1.0)
        .await;
    // The same connection still serves a request sent later.
    stream
        .write_all(&balancer_request("40.92.0.9", &valid(0)))
        .await
        .unwrap();
    let answer = reader.next(&mut stream).await.expect("a fifth answer");
    assert_eq!(answer.status, 200);
    bodies.push(valid(0));
    assert_upstream_saw_exactly(&h, &bodies, "a request sent later");
    h.stop().await;
}

/// Issue 10's rule for bytes after a body, under keep-alive: the next request is either forwarded
/// and answered, or nothing of it reaches the worker, whenever it arrives (with the previous
/// request, a little later, or while the worker answers the previous one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_next_request_is_forwarded_and_answered_in_every_timing() {
    const ROUNDS: u64 = 8;
    let h = Harness::start().await;
    let gate = Arc::new(Semaphore::new(0));
    h.upstream.set_behaviour(Behaviour::Hold(gate.clone()));
    let mut bodies = Vec::new();
    for round in 0..ROUNDS {
        for timing in 0..3 {
            let case = format!("round {round}, timing {timing}");
            let first = balancer_request("40.92.0.1", &valid(0));
            let next = balancer_request("40.92.0.2", &valid(1));
            let mut stream = client::connect(&h.target(PROXY)).await.unwrap();
            let before = h.upstream.requests().len();
            match timing {
                0 => {
                    gate.add_permits(2);
                    stream.write_all(&[first, next].concat()).await.unwrap();
                }
                1 => {
                    gate.add_permits(2);
                    stream.write_all(&first).await.unwrap();
                    stream.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(round % 4)).await;
                    stream.write_all(&next).await.unwrap();
                }
                _ => {
                    stream.write_all(&first).await.unwrap();
                    stream.flush().await.unwrap();
                    h.upstream.wait_for_requests(before + 1).await;
                    stream.write_all(&next).await.unwrap();
                    stream.flush().await.unwrap();
                    gate.add_permits(2);
                }
            }
            let mut reader = AnswerReader::default();
            for which in ["first", "next"] {
                let answer = reader.next(&mut stream).await.expect("an answer");
                assert_eq!(answer.status, 200, "{case}: {which}");
                assert_eq!(answer.body, ok_envelope(), "{case}: {which}");
            }
            bodies.push(valid(0));
            bodies.push(valid(1));
            assert_upstream_saw_exactly(&h, &bodies, &case);
        }
    }
    h.stop().await;
}

/// A request refused after its body was read (its end is known) leaves the connection open: the
/// next request is served. Nothing of the refused one reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_in_the_middle_keeps_the_connection() {
    let h = Harness::start().await;
    let invalid = fixture("seed-capture-verbatim.xml");
    let mut stream = client::connect(&h.target(PROXY)).await.unwrap();
    let bytes = [
        balancer_request("40.92.0.1", &valid(0)),
        balancer_request("40.92.0.1", &invalid),
        balancer_request("40.92.0.1", &valid(1)),
    ]
    .concat();
    stream.write_all(&bytes).await.unwrap();
    let mut reader = AnswerReader::default();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let answer = reader.next(&mut stream).await.expect("an answer");
        statuses.push((answer.status, connection_field(&answer)));
    }
    assert_eq!(
        statuses,
        [
            (200, "keep-alive".to_string()),
            (400, "keep-alive".to_string()),
            (200, "keep-alive".to_string())
        ]
    );
    assert_upstream_saw_exactly(&h, &[valid(0), valid(1)], "invalid body in the middle");
    h.wait_metric(
        r#"pushgate_gateway_requests_total{outcome="rejected",reason="xml_not_well_formed"}"#,
        1.0,
    )
    .await;
    h.stop().await;
}

/// A request refused on its head (its end is not known: what follows may be its body) closes
/// the connection: neither it nor anything sent after it reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_head_in_the_middle_closes_and_nothing_after_it_is_forwarded() {
    let body = valid(0);
    let bad_soap_action = String::from_utf8(balancer_request("40.92.0.1", &body))
        .unwrap()
        .replace("SendNotification\"", "GetItem\"")
        .into_bytes();
    let denied_client = balancer_request("203.0.113.5", &body);
    let bad_forwarded_for = balancer_request("not-an-address", &body);
    let smuggled = b"POST /Webservices/SyncNotification.svc?Default HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("SOAPAction of another operation", bad_soap_action, 400),
        ("a client outside the allowlist", denied_client, 403),
        (
            "an X-Forwarded-For that does not parse",
            bad_forwarded_for,
            400,
        ),
        ("Content-Length with Transfer-Encoding", smuggled, 400),
    ];
    for (what, refused, status) in cases {
        for same_write in [true, false] {
            let case = format!("{what}, same write {same_write}");
            let h = Harness::start().await;
            let mut stream = client::connect(&h.target(PROXY)).await.unwrap();
            let mut reader = AnswerReader::default();
            let first = balancer_request("40.92.0.1", &body);
            let after = balancer_request("40.92.0.1", &valid(1));
            if same_write {
                stream
                    .write_all(&[first, refused.clone(), after].concat())
                    .await
                    .unwrap();
            } else {
                stream.write_all(&first).await.unwrap();
                assert_eq!(reader.next(&mut stream).await.unwrap().status, 200);
                stream.write_all(&refused).await.unwrap();
                stream.flush().await.unwrap();
                // The gateway may already have closed: then these bytes go nowhere.
                let _ = stream.write_all(&after).await;
            }
            if same_write {
                let answer = reader.next(&mut stream).await.expect("first answer");
                assert_eq!(answer.status, 200, "{case}");
            }
            let answer = reader.next(&mut stream).await.expect("the refusal");
            assert_eq!(answer.status, status, "{case}");
            assert_eq!(connection_field(&answer), "close", "{case}");
            assert_closed(&mut reader, &mut stream, &case).await;
            assert_upstream_saw_exactly(&h, std::slice::from_ref(&body), &case);
            h.stop().await;
        }
    }
}

/// Bytes after a request that do not make a whole request are read as the start of the next one
/// and refused as such when the client ends its side: never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_bytes_after_a_request_are_refused_as_the_next_request() {
    let h = Harness::start().await;
    for stray in [&b"x"[..], b"\r\n", b"POST /Webservices/SyncNot"] {
        let mut stream = client::connect(&h.target(PROXY)).await.unwrap();
        let mut bytes = balancer_request("40.92.0.1", &valid(0));
        bytes.extend_from_slice(stray);
        stream.write_all(&bytes).await.unwrap();
        let mut reader = AnswerReader::default();
        assert_eq!(reader.next(&mut stream).await.unwrap().status, 200);
        // The client ends its side: the unfinished head is refused.
        stream.shutdown().await.unwrap();
        let answer = reader.next(&mut stream).await.expect("a refusal");
        assert_eq!(answer.status, 400, "{stray:?}");
        assert_closed(&mut reader, &mut stream, "after stray bytes").await;
    }
    assert_upstream_saw_exactly(&h, &[valid(0), valid(0), valid(0)], "stray bytes");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_serves_at_most_keepalive_max_requests() {
    let h = Harness::with(Options {
        keepalive_max_requests: 3,
        ..Options::default()
    })
    .await;
    let mut stream = client::connect(&h.target(PROXY)).await.unwrap();
    let bytes: Vec<u8> = (0..5)
        .flat_map(|n| balancer_request("40.92.0.1", &valid(n)))
        .collect();
    stream.write_all(&bytes).await.unwrap();
    let mut reader = AnswerReader::default();
    let mut fields = Vec::new();
    for _ in 0..3 {
        let answer = reader.next(&mut stream).await.expect("an answer");
        assert_eq!(answer.status, 200);
        fields.push(connection_field(&answer));
    }
    assert_eq!(fields, ["keep-alive", "keep-alive", "close"]);
    assert_closed(&mut reader, &mut stream, "after the third request").await;
    assert_upstream_saw_exactly(
        &h,
        &[valid(0), valid(1), valid(2)],
        "the fourth and fifth requests",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_keepalive_idle_timeout() {
    let h = Harness::with(Options {
        keepalive_idle_timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let mut stream = client::connect(&h.target(PROXY)).await.unwrap();
    stream
        .write_all(&balancer_request("40.92.0.1", &valid(0)))
        .await
        .unwrap();
    let mut reader = AnswerReader::default();
    let answer = reader.next(&mut stream).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(connection_field(&answer), "keep-alive");
    // Nothing more is sent: the gateway closes the idle connection by itself, without an answer.
    assert_closed(&mut reader, &mut stream, "idle").await;
    assert!(
        reader.leftover().is_empty(),
        "no answer to an idle connection"
    );
    assert_upstream_saw_exactly(&h, &[valid(0)], "idle");
    h.wait_metric("pushgate_gateway_connections_active", 0.0)
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_asking_to_close_is_obeyed() {
    let h = Harness::start().await;
    let mut stream = client::connect(&h.target(PROXY)).await.unwrap();
    let closing = String::from_utf8(balancer_request("40.92.0.1", &valid(0)))
        .unwrap()
        .replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1)
        .into_bytes();
    let bytes = [closing, balancer_request("40.92.0.1", &valid(1))].concat();
    stream.write_all(&bytes).await.unwrap();
    let mut reader = AnswerReader::default();
    let answer = reader.next(&mut stream).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(connection_field(&answer), "close");
    assert_closed(&mut reader, &mut stream, "Connection: close").await;
    assert_upstream_saw_exactly(&h, &[valid(0)], "after Connection: close");
    h.stop().await;
}

/// Sources other than trusted proxies keep one request per connection: the answer says `close`
/// and a pipelined request is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sources_keep_one_request_per_connection() {
    let h = Harness::start().await;
    let mut stream = client::connect(&h.target(ALLOWED)).await.unwrap();
    let keep_alive_asked =
        String::from_utf8(notification_request(LEGACY_PATH, "localhost", &valid(0)))
            .unwrap()
            .replace("Connection: close", "Connection: keep-alive")
            .into_bytes();
    let bytes = [keep_alive_asked.clone(), keep_alive_asked].concat();
    stream.write_all(&bytes).await.unwrap();
    let mut reader = AnswerReader::default();
    let answer = reader.next(&mut stream).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(connection_field(&answer), "close");
    assert_closed(&mut reader, &mut stream, "direct source").await;
    assert_upstream_saw_exactly(&h, &[valid(0)], "a direct source's second request");
    h.stop().await;
}

/// On shutdown an idle kept-alive connection is closed at once rather than held for the idle
/// timeout (so shutdown does not wait for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_kept_alive_connections() {
    let h = Harness::start().await;
    let mut stream = client::connect(&h.target(PROXY)).await.unwrap();
    stream
        .write_all(&balancer_request("40.92.0.1", &valid(0)))
        .await
        .unwrap();
    let mut reader = AnswerReader::default();
    assert_eq!(reader.next(&mut stream).await.unwrap().status, 200);
    let stopping = tokio::spawn(h.stop());
    let mut rest = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the idle connection is closed on shutdown");
    assert!(rest.is_empty());
    stopping.await.unwrap();
}
