//! The Exchange simulator as a client and a listener meet it: real sockets, real TLS. Its answers
//! validate against the official EWS schema (xmllint); its checks refuse what Exchange refuses;
//! its calendars follow Exchange's id and change-key rules; its push delivery follows
//! PROTOCOL.md §4 against a loopback receiver written here (batches of 50, one in flight,
//! heartbeats, identical-body retries, drop, Unsubscribe, replay from a watermark, the Error
//! notification). Timing assertions are bounded waits only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod skip;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushgate::exchange_sim::client::{self, RawResponse, Target};
use pushgate::exchange_sim::xml::{self, Element, MESSAGES_NS, SOAP_NS, TYPES_NS};
use pushgate::exchange_sim::{
    ItemSpec, ItemUpdate, PropertySetForm, SimHandle, SimOptions, Simulator,
};
use pushgate::notification::{self, EventKind, Limits, Notification, ResponseClass};
use time::macros::datetime;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "static-test-token";
const ROOM1: &str = "room1@contoso.com";
const ROOM2: &str = "room2@contoso.com";
/// The gateway tests' allowlisted loopback source.
const EXCHANGE_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Setup

fn options() -> SimOptions {
    SimOptions {
        static_tokens: vec![TOKEN.into()],
        mailboxes: vec![ROOM1.into(), ROOM2.into()],
        oauth_clients: vec![("app-id".into(), "app-secret".into())],
        basic: Some(("svc@contoso.com".into(), "secret".into())),
        time_scale: 0.001,
        seed: Some(42),
        ..SimOptions::default()
    }
}

async fn start(options: SimOptions) -> SimHandle {
    Simulator::start(options).await.unwrap()
}

/// A test whose dependency is missing says so; with `PUSHGATE_REQUIRE_ALL=1` it fails.
fn missing(reason: &str) {
    skip::skip(reason);
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < WAIT, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A raw EWS caller: hand-written SOAP, so the simulator is tested without the product's client.

struct Ews {
    target: Target,
    authorization: String,
}

fn ews(sim: &SimHandle) -> Ews {
    let target = match sim.ca_pem() {
        Some(ca) => Target::tls(sim.addr(), ca, "localhost").unwrap(),
        None => Target::plain(sim.addr()),
    };
    Ews {
        target,
        authorization: format!("Bearer {TOKEN}"),
    }
}

fn envelope(impersonate: Option<&str>, body: &str) -> String {
    let impersonation = impersonate
        .map(|m| {
            format!(
                "<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>{m}</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
            )
        })
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="{SOAP_NS}" xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><soap:Header><t:RequestServerVersion Version="Exchange2013"/>{impersonation}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"#
    )
}

impl Ews {
    async fn send(&self, headers: &[(&str, &str)], body: &str) -> RawResponse {
        let mut request = format!(
            "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        client::exchange(&self.target, request.as_bytes(), WAIT)
            .await
            .unwrap()
    }

    /// As the product's client sends it: impersonating `mailbox`, with X-AnchorMailbox.
    async fn raw(&self, mailbox: &str, body: &str) -> RawResponse {
        self.send(
            &[
                ("Content-Type", "text/xml; charset=utf-8"),
                ("Authorization", &self.authorization),
                ("X-AnchorMailbox", mailbox),
            ],
            &envelope(Some(mailbox), body),
        )
        .await
    }

    /// A call that must be answered 200; the answer's root element.
    async fn call(&self, mailbox: &str, body: &str) -> Element {
        let response = self.raw(mailbox, body).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        xml::parse(&response.body).unwrap()
    }
}

/// The response messages of an answer, in order.
fn messages(root: &Element) -> Vec<&Element> {
    let body = root.child(SOAP_NS, "Body").unwrap();
    let response = &body.children[0];
    response
        .child(MESSAGES_NS, "ResponseMessages")
        .unwrap()
        .children
        .iter()
        .collect()
}

fn code(message: &Element) -> String {
    message
        .child(MESSAGES_NS, "ResponseCode")
        .unwrap()
        .text
        .clone()
}

fn find<'a>(element: &'a Element, ns: &str, name: &str) -> Vec<&'a Element> {
    element
        .descendants()
        .into_iter()
        .filter(|e| e.is(ns, name))
        .collect()
}

fn first_text(element: &Element, ns: &str, name: &str) -> Option<String> {
    find(element, ns, name).first().map(|e| e.text.clone())
}

/// `(Id, ChangeKey)` of the first `t:ItemId`.
fn item_id(element: &Element) -> (String, String) {
    let id = find(element, TYPES_NS, "ItemId")[0];
    (
        id.attribute("Id").unwrap().to_string(),
        id.attribute("ChangeKey").unwrap().to_string(),
    )
}

const PROPERTY: &str = r#"<t:ExtendedFieldURI DistinguishedPropertySetId="PublicStrings" PropertyName="AppointmentOid" PropertyType="String"/>"#;

fn create_body(subject: &str, start: &str, end: &str, reservation: Option<&str>) -> String {
    let property = reservation
        .map(|r| {
            format!("<t:ExtendedProperty>{PROPERTY}<t:Value>{r}</t:Value></t:ExtendedProperty>")
        })
        .unwrap_or_default();
    format!(
        r#"<m:CreateItem SendMeetingInvitations="SendToNone"><m:SavedItemFolderId><t:DistinguishedFolderId Id="calendar"/></m:SavedItemFolderId><m:Items><t:CalendarItem><t:Subject>{subject}</t:Subject>{property}<t:Start>{start}</t:Start><t:End>{end}</t:End><t:Location>Room 1</t:Location></t:CalendarItem></m:Items></m:CreateItem>"#
    )
}

fn get_body(ids: &[&str]) -> String {
    let ids: String = ids
        .iter()
        .map(|id| format!(r#"<t:ItemId Id="{id}"/>"#))
        .collect();
    format!(
        r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="calendar:Start"/><t:FieldURI FieldURI="calendar:End"/><t:FieldURI FieldURI="calendar:Location"/><t:FieldURI FieldURI="calendar:IsCancelled"/><t:FieldURI FieldURI="item:LastModifiedTime"/><t:FieldURI FieldURI="item:ParentFolderId"/>{PROPERTY}</t:AdditionalProperties></m:ItemShape><m:ItemIds>{ids}</m:ItemIds></m:GetItem>"#
    )
}

fn update_subject_body(
    id: &str,
    change_key: Option<&str>,
    conflict: &str,
    subject: &str,
) -> String {
    let key = change_key
        .map(|k| format!(r#" ChangeKey="{k}""#))
        .unwrap_or_default();
    format!(
        r#"<m:UpdateItem ConflictResolution="{conflict}" SendMeetingInvitationsOrCancellations="SendToNone"><m:ItemChanges><t:ItemChange><t:ItemId Id="{id}"{key}/><t:Updates><t:SetItemField><t:FieldURI FieldURI="item:Subject"/><t:CalendarItem><t:Subject>{subject}</t:Subject></t:CalendarItem></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#
    )
}

fn delete_body(id: &str, delete_type: &str) -> String {
    format!(
        r#"<m:DeleteItem DeleteType="{delete_type}" SendMeetingCancellations="SendToNone"><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:DeleteItem>"#
    )
}

fn find_body(start: &str, end: &str, max: u32) -> String {
    format!(
        r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="calendar:Start"/><t:FieldURI FieldURI="calendar:End"/></t:AdditionalProperties></m:ItemShape><m:CalendarView MaxEntriesReturned="{max}" StartDate="{start}" EndDate="{end}"/><m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>"#
    )
}

const GET_FOLDER: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>"#;

fn subscribe_body(url: &str, status_frequency: u32, watermark: Option<&str>) -> String {
    let watermark = watermark
        .map(|w| format!("<t:Watermark>{w}</t:Watermark>"))
        .unwrap_or_default();
    format!(
        r#"<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="calendar"/></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType><t:EventType>ModifiedEvent</t:EventType><t:EventType>DeletedEvent</t:EventType><t:EventType>MovedEvent</t:EventType><t:EventType>CopiedEvent</t:EventType></t:EventTypes>{watermark}<t:StatusFrequency>{status_frequency}</t:StatusFrequency><t:URL>{url}</t:URL></m:PushSubscriptionRequest></m:Subscribe>"#
    )
}

/// Subscribes; `(subscription id, watermark)`.
async fn subscribe(
    ews: &Ews,
    mailbox: &str,
    url: &str,
    status_frequency: u32,
    watermark: Option<&str>,
) -> (String, String) {
    let answer = ews
        .call(mailbox, &subscribe_body(url, status_frequency, watermark))
        .await;
    let message = messages(&answer)[0];
    assert_eq!(code(message), "NoError");
    (
        first_text(message, MESSAGES_NS, "SubscriptionId").unwrap(),
        first_text(message, MESSAGES_NS, "Watermark").unwrap(),
    )
}

fn spec(subject: &str, start: OffsetDateTime, hours: i64, reservation: Option<&str>) -> ItemSpec {
    ItemSpec {
        subject: subject.into(),
        start,
        end: start + time::Duration::hours(hours),
        location: Some("Room 1".into()),
        reservation_id: reservation.map(str::to_string),
    }
}

// ---------------------------------------------------------------------------------------------
// A notification receiver: records what arrives, answers as told, counts notifications in flight
// per subscription.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ok,
    Unsubscribe,
    Error500,
    /// Keep the connection open without answering.
    Silence,
}

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    peer: SocketAddr,
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn notification(&self) -> Notification {
        notification::parse(&self.body, &Limits::default()).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Arc<Mutex<Reply>>,
    delay: Arc<Mutex<Duration>>,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::start_with(None).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            script: Arc::default(),
            default: Arc::new(Mutex::new(Reply::Ok)),
            delay: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let server = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let server = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                server.serve(stream, peer).await;
                            }
                        }
                        None => server.serve(stream, peer).await,
                    }
                });
            }
        });
        receiver
    }

    fn url(&self) -> String {
        format!(
            "http://{}/Webservices/SyncNotification.svc?Default",
            self.addr
        )
    }

    fn set_default(&self, reply: Reply) {
        *self.default.lock().unwrap() = reply;
    }

    fn script(&self, replies: &[Reply]) {
        self.script.lock().unwrap().extend(replies.iter().copied());
    }

    fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// What arrived for one subscription, in order.
    fn for_subscription(&self, id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| {
                r.notification().response_messages[0]
                    .subscription_id
                    .as_deref()
                    == Some(id)
            })
            .collect()
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S, peer: SocketAddr) {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 8192];
        let (head_len, request_line, headers, length) = loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buffer.extend_from_slice(&chunk[..n]);
            let mut parsed_headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut parsed_headers);
            if let Ok(httparse::Status::Complete(head_len)) = request.parse(&buffer) {
                let headers: Vec<(String, String)> = request
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let line = format!(
                    "{} {}",
                    request.method.unwrap_or_default(),
                    request.path.unwrap_or_default()
                );
                break (head_len, line, headers, length);
            }
        };
        while buffer.len() < head_len + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buffer[head_len..head_len + length].to_vec();
        let subscription = notification::parse(&body, &Limits::default())
            .ok()
            .and_then(|n| n.response_messages[0].subscription_id.clone())
            .unwrap_or_default();
        {
            let mut in_flight = self.in_flight.lock().unwrap();
            let count = in_flight.entry(subscription.clone()).or_insert(0);
            *count += 1;
            self.max_in_flight.fetch_max(*count, Ordering::SeqCst);
        }
        self.received.lock().unwrap().push(Received {
            at: Instant::now(),
            peer,
            request_line,
            headers,
            body,
        });
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(*self.default.lock().unwrap());
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let answer: Option<(&str, &[u8])> = match reply {
            Reply::Ok => Some((
                "200 OK",
                notification::result_envelope(notification::SubscriptionStatus::Ok),
            )),
            Reply::Unsubscribe => Some((
                "200 OK",
                notification::result_envelope(notification::SubscriptionStatus::Unsubscribe),
            )),
            Reply::Error500 => Some(("500 Internal Server Error", b"busy")),
            Reply::Silence => None,
        };
        match answer {
            Some((status, body)) => {
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body).await;
                let _ = stream.flush().await;
            }
            None => {
                // Until the simulator gives up and closes.
                let _ = stream.read(&mut chunk).await;
            }
        }
        *self
            .in_flight
            .lock()
            .unwrap()
            .entry(subscription)
            .or_insert(1) -= 1;
    }
}

fn content(received: &Received) -> notification::NotificationContent {
    received.notification().response_messages[0]
        .notification
        .clone()
        .unwrap()
}

fn kinds(received: &Received) -> Vec<EventKind> {
    content(received).events.iter().map(|e| e.kind).collect()
}

// ---------------------------------------------------------------------------------------------
// Answers are valid against the official schema.

fn schema_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PUSHGATE_EWS_SCHEMA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/ews-schema"));
    dir.join("messages.xsd").is_file().then_some(dir)
}

fn xmllint_available() -> bool {
    std::process::Command::new("xmllint")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The `m:*Response` element of an answer, as the simulator wrote it.
fn response_element(body: &[u8]) -> String {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let start = text.find("<s:Body>").unwrap() + "<s:Body>".len();
    let end = text.rfind("</s:Body>").unwrap();
    text[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_answer_is_valid_against_the_schema() {
    let Some(schema) = schema_dir() else {
        return missing("no EWS schema (../shared/ews-schema or PUSHGATE_EWS_SCHEMA_DIR)");
    };
    if !xmllint_available() {
        return missing("xmllint not installed (Debian: libxml2-utils)");
    }
    let sim = start(SimOptions {
        max_subscriptions_per_mailbox: 1,
        ..options()
    })
    .await;
    sim.add_mailbox("denied@contoso.com");
    sim.deny_impersonation("denied@contoso.com").unwrap();
    let ews = ews(&sim);
    let receiver = Receiver::start().await;
    let mut answers: Vec<(String, RawResponse)> = Vec::new();
    let mut keep = |what: &str, response: RawResponse| {
        assert_eq!(response.status, 200, "{what}");
        answers.push((what.to_string(), response));
    };

    let created = ews
        .raw(
            ROOM1,
            &create_body(
                "Board",
                "2026-05-06T08:00:00Z",
                "2026-05-06T09:00:00Z",
                Some("res-1"),
            ),
        )
        .await;
    let (id, change_key) = item_id(&xml::parse(&created.body).unwrap());
    keep("CreateItem success", created);
    keep(
        "CreateItem ErrorSendMeetingInvitationsRequired",
        ews.raw(
            ROOM1,
            &create_body("x", "2026-05-06T08:00:00Z", "2026-05-06T09:00:00Z", None)
                .replace(r#" SendMeetingInvitations="SendToNone""#, ""),
        )
        .await,
    );
    keep("GetItem success", ews.raw(ROOM1, &get_body(&[&id])).await);
    sim.fail_next("GetItem", pushgate::exchange_sim::ScriptedFailure::Warning);
    keep(
        "GetItem Warning (batch stopped)",
        ews.raw(ROOM1, &get_body(&[&id])).await,
    );
    sim.fail_next(
        "GetItem",
        pushgate::exchange_sim::ScriptedFailure::Error("ErrorMailboxMoveInProgress".into()),
    );
    keep(
        "GetItem ErrorMailboxMoveInProgress",
        ews.raw(ROOM1, &get_body(&[&id])).await,
    );
    let gone = sim
        .create_item(
            ROOM1,
            spec("Gone", datetime!(2026-05-07 08:00 UTC), 1, None),
        )
        .unwrap()
        .id;
    sim.hard_delete(ROOM1, &gone).unwrap();
    keep(
        "GetItem ErrorItemNotFound and ErrorInvalidIdMalformed",
        ews.raw(
            ROOM1,
            &get_body(&[
                &gone,
                "AAMkAGVkNjQ0ZjRhLWZmZWYtNGE2NC1iMjgzLTkyMjgzYjM0ZjM4ZQ==",
            ]),
        )
        .await,
    );
    sim.create_item(
        ROOM1,
        spec("Second", datetime!(2026-05-08 08:00 UTC), 1, None),
    )
    .unwrap();
    keep(
        "UpdateItem success",
        ews.raw(
            ROOM1,
            &update_subject_body(&id, Some(&change_key), "NeverOverwrite", "Changed"),
        )
        .await,
    );
    keep(
        "UpdateItem ErrorIrresolvableConflict",
        ews.raw(
            ROOM1,
            &update_subject_body(&id, Some(&change_key), "NeverOverwrite", "Again"),
        )
        .await,
    );
    keep(
        "FindItem RootFolder, truncated",
        ews.raw(
            ROOM1,
            &find_body("2026-05-01T00:00:00Z", "2026-06-01T00:00:00Z", 1),
        )
        .await,
    );
    keep(
        "FindItem ErrorCalendarViewRangeTooBig",
        ews.raw(
            ROOM1,
            &find_body("2026-05-01T00:00:00Z", "2029-06-01T00:00:00Z", 10),
        )
        .await,
    );
    keep("GetFolder success", ews.raw(ROOM1, GET_FOLDER).await);
    keep(
        "GetFolder ErrorFolderNotFound",
        ews.raw(ROOM1, &GET_FOLDER.replace("calendar", "inbox"))
            .await,
    );
    keep(
        "Subscribe success",
        ews.raw(ROOM1, &subscribe_body(&receiver.url(), 30, None))
            .await,
    );
    keep(
        "Subscribe ErrorExceededSubscriptionCount",
        ews.raw(ROOM1, &subscribe_body(&receiver.url(), 30, None))
            .await,
    );
    keep(
        "Subscribe ErrorInvalidWatermark",
        ews.raw(
            ROOM2,
            &subscribe_body(
                &receiver.url(),
                30,
                Some("AQAAAOpvG0LURVdOhQkPOWZLPcI8EgAAAAAAAAE="),
            ),
        )
        .await,
    );
    keep(
        "Subscribe ErrorNonExistentMailbox",
        ews.raw(
            "nobody@contoso.com",
            &subscribe_body(&receiver.url(), 30, None),
        )
        .await,
    );
    keep(
        "Subscribe ErrorImpersonateUserDenied",
        ews.raw(
            "denied@contoso.com",
            &subscribe_body(&receiver.url(), 30, None),
        )
        .await,
    );
    keep(
        "DeleteItem success",
        ews.raw(ROOM1, &delete_body(&id, "MoveToDeletedItems"))
            .await,
    );
    keep(
        "DeleteItem ErrorItemNotFound",
        ews.raw(ROOM1, &delete_body(&id, "HardDelete")).await,
    );
    sim.busy_for(Duration::from_secs(60), Duration::from_millis(5000));
    keep(
        "GetItem ErrorServerBusy in-body",
        ews.raw(ROOM1, &get_body(&[&id])).await,
    );
    keep(
        "FindItem ErrorServerBusy in-body",
        ews.raw(
            ROOM1,
            &find_body("2026-05-01T00:00:00Z", "2026-06-01T00:00:00Z", 1),
        )
        .await,
    );
    sim.busy_for(Duration::ZERO, Duration::ZERO);
    // The GUID spelling of PublicStrings.
    let guid_sim = start(SimOptions {
        property_set_form: PropertySetForm::Guid,
        ..options()
    })
    .await;
    let guid_ews = self::ews(&guid_sim);
    let created = guid_ews
        .call(
            ROOM1,
            &create_body(
                "Board",
                "2026-05-06T08:00:00Z",
                "2026-05-06T09:00:00Z",
                Some("res-2"),
            ),
        )
        .await;
    let (guid_id, _) = item_id(&created);
    let guid_answer = guid_ews.raw(ROOM1, &get_body(&[&guid_id])).await;
    assert!(String::from_utf8_lossy(&guid_answer.body)
        .contains(r#"PropertySetId="00020329-0000-0000-C000-000000000046""#));
    keep("GetItem success, PropertySetId form", guid_answer);

    // What each answer must say, besides being valid.
    let codes: Vec<(String, Vec<String>)> = answers
        .iter()
        .map(|(what, response)| {
            let root = xml::parse(&response.body).unwrap();
            (
                what.clone(),
                messages(&root).iter().map(|m| code(m)).collect(),
            )
        })
        .collect();
    let expect = |what: &str, expected: &[&str]| {
        let (_, got) = codes.iter().find(|(w, _)| w == what).unwrap();
        assert_eq!(
            got,
            &expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{what}"
        );
    };
    expect(
        "GetItem ErrorItemNotFound and ErrorInvalidIdMalformed",
        &["ErrorItemNotFound", "ErrorInvalidIdMalformed"],
    );
    expect(
        "Subscribe ErrorExceededSubscriptionCount",
        &["ErrorExceededSubscriptionCount"],
    );
    expect(
        "Subscribe ErrorInvalidWatermark",
        &["ErrorInvalidWatermark"],
    );
    expect(
        "Subscribe ErrorNonExistentMailbox",
        &["ErrorNonExistentMailbox"],
    );
    expect(
        "Subscribe ErrorImpersonateUserDenied",
        &["ErrorImpersonateUserDenied"],
    );
    expect(
        "UpdateItem ErrorIrresolvableConflict",
        &["ErrorIrresolvableConflict"],
    );
    expect(
        "FindItem ErrorCalendarViewRangeTooBig",
        &["ErrorCalendarViewRangeTooBig"],
    );
    expect("GetItem ErrorServerBusy in-body", &["ErrorServerBusy"]);
    expect(
        "CreateItem ErrorSendMeetingInvitationsRequired",
        &["ErrorSendMeetingInvitationsRequired"],
    );
    let busy = &answers
        .iter()
        .find(|(w, _)| w == "GetItem ErrorServerBusy in-body")
        .unwrap()
        .1;
    assert!(String::from_utf8_lossy(&busy.body)
        .contains(r#"<t:Value Name="BackOffMilliseconds">5000</t:Value>"#));
    let not_found = &answers
        .iter()
        .find(|(w, _)| w.starts_with("GetItem ErrorItemNotFound"))
        .unwrap()
        .1;
    assert!(String::from_utf8_lossy(&not_found.body).contains("<m:Items/>"));
    let truncated = &answers
        .iter()
        .find(|(w, _)| w == "FindItem RootFolder, truncated")
        .unwrap()
        .1;
    assert!(String::from_utf8_lossy(&truncated.body)
        .contains(r#"TotalItemsInView="2" IncludesLastItemInRange="false""#));

    // Each m:*Response as a document of its own, validated with xmllint against messages.xsd;
    // and the ServerVersionInfo header against types.xsd.
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (index, (what, response)) in answers.iter().enumerate() {
        let file = dir.path().join(format!("{index:02}.xml"));
        std::fs::write(&file, response_element(&response.body)).unwrap();
        files.push((what.clone(), file));
    }
    let output = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(schema.join("messages.xsd"))
        .args(files.iter().map(|(_, f)| f))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    let names: Vec<String> = files
        .iter()
        .map(|(what, file)| format!("{}: {what}", file.display()))
        .collect();
    assert!(output.status.success(), "{report}\n{}", names.join("\n"));
    assert_eq!(
        report.matches(" validates").count(),
        files.len(),
        "{report}"
    );
    let header = String::from_utf8_lossy(&answers[0].1.body).into_owned();
    let start_at = header.find("<h:ServerVersionInfo").unwrap();
    let end_at = start_at + header[start_at..].find("/>").unwrap() + 2;
    let header_file = dir.path().join("header.xml");
    std::fs::write(&header_file, &header[start_at..end_at]).unwrap();
    let output = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(schema.join("types.xsd"))
        .arg(&header_file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    sim.shutdown().await;
    guid_sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// What Exchange checks before it does anything.

fn fault_code(response: &RawResponse) -> String {
    assert_eq!(
        response.status,
        500,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let root = xml::parse(&response.body).unwrap();
    let fault = find(&root, SOAP_NS, "Fault")[0];
    let code = fault
        .children
        .iter()
        .find(|c| c.name == "faultcode")
        .unwrap();
    // The detail repeats it in the errors namespace.
    let detail = first_text(
        fault,
        "http://schemas.microsoft.com/exchange/services/2006/errors",
        "ResponseCode",
    )
    .unwrap();
    let code = code.text.trim_start_matches("a:").to_string();
    assert_eq!(code, detail);
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_checked_as_exchange_checks_them() {
    let sim = start(options()).await;
    sim.add_mailbox("denied@contoso.com");
    sim.deny_impersonation("denied@contoso.com").unwrap();
    let ews = ews(&sim);
    let body = envelope(Some(ROOM1), GET_FOLDER);
    let xml_type = ("Content-Type", "text/xml; charset=utf-8");
    let anchor = ("X-AnchorMailbox", ROOM1);

    // Authentication.
    let response = ews.send(&[xml_type, anchor], &body).await;
    assert_eq!(response.status, 401);
    assert!(response.header("www-authenticate").is_some());
    let response = ews
        .send(
            &[xml_type, anchor, ("Authorization", "Bearer wrong")],
            &body,
        )
        .await;
    assert_eq!(response.status, 401);
    let bearer = format!("Bearer {TOKEN}");
    let authorized = ("Authorization", bearer.as_str());
    assert_eq!(
        ews.send(&[xml_type, anchor, authorized], &body)
            .await
            .status,
        200
    );
    // Basic credentials act for the user's own mailbox without impersonation... which must exist.
    let basic = format!(
        "Basic {}",
        pushgate::exchange_sim::codec::base64_encode(b"svc@contoso.com:secret")
    );
    let own = ews
        .send(
            &[xml_type, ("Authorization", &basic)],
            &envelope(None, GET_FOLDER),
        )
        .await;
    assert_eq!(
        code(messages(&xml::parse(&own.body).unwrap())[0]),
        "ErrorNonExistentMailbox"
    );
    sim.add_mailbox("svc@contoso.com");
    let own = ews
        .send(
            &[xml_type, ("Authorization", &basic)],
            &envelope(None, GET_FOLDER),
        )
        .await;
    assert_eq!(
        code(messages(&xml::parse(&own.body).unwrap())[0]),
        "NoError"
    );
    // An app token must impersonate.
    let response = ews
        .send(&[xml_type, authorized], &envelope(None, &get_body(&["x"])))
        .await;
    assert_eq!(
        fault_code(&response),
        "ErrorInvalidExchangeImpersonationHeaderData"
    );
    // Impersonation without X-AnchorMailbox, or naming another mailbox.
    let response = ews.send(&[xml_type, authorized], &body).await;
    assert_eq!(fault_code(&response), "ErrorInvalidRequest");
    let response = ews
        .send(&[xml_type, authorized, ("X-AnchorMailbox", ROOM2)], &body)
        .await;
    assert_eq!(fault_code(&response), "ErrorInvalidRequest");
    // Content type.
    let response = ews
        .send(
            &[("Content-Type", "application/json"), authorized, anchor],
            &body,
        )
        .await;
    assert_eq!(response.status, 415);

    // Mailboxes: unknown, not impersonable.
    let answer = ews.call("nobody@contoso.com", GET_FOLDER).await;
    assert_eq!(code(messages(&answer)[0]), "ErrorNonExistentMailbox");
    let answer = ews.call("denied@contoso.com", &get_body(&["a", "b"])).await;
    let codes: Vec<String> = messages(&answer).iter().map(|m| code(m)).collect();
    assert_eq!(
        codes,
        ["ErrorImpersonateUserDenied", "ErrorImpersonateUserDenied"]
    );

    // Schema: element order, exchangelib's m:Watermark, a missing required attribute, bad XML.
    let out_of_order = r#"<m:CreateItem SendMeetingInvitations="SendToNone"><m:Items><t:CalendarItem><t:Subject>x</t:Subject><t:Start>2026-05-06T08:00:00Z</t:Start><t:ExtendedProperty><t:ExtendedFieldURI DistinguishedPropertySetId="PublicStrings" PropertyName="AppointmentOid" PropertyType="String"/><t:Value>r</t:Value></t:ExtendedProperty></t:CalendarItem></m:Items></m:CreateItem>"#;
    let response = ews.raw(ROOM1, out_of_order).await;
    assert_eq!(fault_code(&response), "ErrorSchemaValidation");
    let root = xml::parse(&response.body).unwrap();
    assert_eq!(
        first_text(&root, TYPES_NS, "LineNumber").as_deref(),
        Some("2")
    );
    assert!(first_text(&root, TYPES_NS, "LinePosition").is_some());
    assert!(first_text(&root, TYPES_NS, "Violation")
        .unwrap()
        .contains("invalid child element 'ExtendedProperty'"));
    assert!(sim.items(ROOM1).unwrap().is_empty(), "nothing was created");
    let m_watermark = subscribe_body("http://127.0.0.1:9/", 1, Some("AQAAAA=="))
        .replace("t:Watermark", "m:Watermark");
    assert_eq!(
        fault_code(&ews.raw(ROOM1, &m_watermark).await),
        "ErrorSchemaValidation"
    );
    let no_delete_type = delete_body("x", "HardDelete").replace(r#" DeleteType="HardDelete""#, "");
    assert_eq!(
        fault_code(&ews.raw(ROOM1, &no_delete_type).await),
        "ErrorSchemaValidation"
    );
    let response = ews
        .send(&[xml_type, authorized, anchor], "<soap:Envelope")
        .await;
    assert_eq!(fault_code(&response), "ErrorSchemaValidation");
    let response = ews.raw(ROOM1, "<m:SyncFolderItems/>").await;
    assert_eq!(fault_code(&response), "ErrorInvalidRequest");

    // Calendar items need the meeting attributes: response messages, not faults.
    let created = ews
        .call(
            ROOM1,
            &create_body("x", "2026-05-06T08:00:00Z", "2026-05-06T09:00:00Z", None),
        )
        .await;
    let (id, _) = item_id(&created);
    let answer = ews
        .call(
            ROOM1,
            &create_body("x", "2026-05-06T08:00:00Z", "2026-05-06T09:00:00Z", None)
                .replace(r#" SendMeetingInvitations="SendToNone""#, ""),
        )
        .await;
    assert_eq!(
        code(messages(&answer)[0]),
        "ErrorSendMeetingInvitationsRequired"
    );
    let answer = ews
        .call(
            ROOM1,
            &update_subject_body(&id, None, "AlwaysOverwrite", "y")
                .replace(r#" SendMeetingInvitationsOrCancellations="SendToNone""#, ""),
        )
        .await;
    assert_eq!(
        code(messages(&answer)[0]),
        "ErrorSendMeetingInvitationsOrCancellationsRequired"
    );
    let answer = ews
        .call(
            ROOM1,
            &delete_body(&id, "HardDelete")
                .replace(r#" SendMeetingCancellations="SendToNone""#, ""),
        )
        .await;
    assert_eq!(
        code(messages(&answer)[0]),
        "ErrorSendMeetingCancellationsRequired"
    );
    assert_eq!(
        sim.items(ROOM1).unwrap().len(),
        1,
        "only the first create happened"
    );

    // Exchange Online's EWS switch.
    sim.set_ews_disabled(true);
    assert_eq!(ews.raw(ROOM1, GET_FOLDER).await.status, 403);
    sim.set_ews_disabled(false);
    assert_eq!(ews.raw(ROOM1, GET_FOLDER).await.status, 200);

    let counts = sim.call_counts();
    // The schema fault counts as a CreateItem call, for no mailbox: the body was never read.
    assert_eq!(counts.operation("CreateItem"), 3);
    assert_eq!(counts.for_mailbox(ROOM1, "CreateItem"), 2);
    assert_eq!(counts.succeeded("CreateItem"), 1);
    assert!(counts.unauthorized >= 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_are_issued_and_expire() {
    let sim = start(SimOptions {
        token_lifetime: Duration::from_millis(1500),
        ..options()
    })
    .await;
    let target = Target::tls(sim.addr(), sim.ca_pem().unwrap(), "localhost").unwrap();
    let token_request = |form: &str, path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        )
    };
    let good = "grant_type=client_credentials&client_id=app-id&client_secret=app-secret&scope=https%3A%2F%2Foutlook.office365.com%2F.default";
    let response = client::exchange(
        &target,
        token_request(good, "/contoso.onmicrosoft.com/oauth2/v2.0/token").as_bytes(),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 1);
    let token = answer["access_token"].as_str().unwrap().to_string();
    assert_eq!(sim.tokens_issued(), 1);
    let bad = good.replace("app-secret", "wrong");
    let response = client::exchange(
        &target,
        token_request(&bad, "/oauth2/v2.0/token").as_bytes(),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 401);
    assert!(String::from_utf8_lossy(&response.body).contains("invalid_client"));
    assert_eq!(sim.tokens_issued(), 1);

    let mut ews = ews(&sim);
    ews.authorization = format!("Bearer {token}");
    assert_eq!(ews.raw(ROOM1, GET_FOLDER).await.status, 200);
    // Expired: 401, saying so.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let response = ews.raw(ROOM1, GET_FOLDER).await;
    assert_eq!(response.status, 401);
    assert!(response
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert!(response.header("x-ms-diagnostics").is_some());
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Calendars as Exchange keeps them.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_keep_ids_change_keys_change_moves_renew_ids() {
    let sim = start(options()).await;
    let ews = ews(&sim);
    let created = ews
        .call(
            ROOM1,
            &create_body(
                "Board",
                "2026-05-06T08:00:00+02:00",
                "2026-05-06T09:00:00Z",
                Some("res-1"),
            ),
        )
        .await;
    let (id, key1) = item_id(&created);
    let got = ews.call(ROOM1, &get_body(&[&id])).await;
    let message = messages(&got)[0];
    assert_eq!(
        item_id(message),
        (id.clone(), key1.clone()),
        "GetItem answers the real ChangeKey"
    );
    assert_eq!(
        first_text(message, TYPES_NS, "Subject").as_deref(),
        Some("Board")
    );
    assert_eq!(
        first_text(message, TYPES_NS, "Start").as_deref(),
        Some("2026-05-06T06:00:00Z")
    );
    assert_eq!(
        first_text(message, TYPES_NS, "Value").as_deref(),
        Some("res-1")
    );
    assert_eq!(
        first_text(message, TYPES_NS, "IsCancelled").as_deref(),
        Some("false")
    );
    let calendar = ews.call(ROOM1, GET_FOLDER).await;
    let calendar_id = find(&calendar, TYPES_NS, "FolderId")[0]
        .attribute("Id")
        .unwrap()
        .to_string();
    assert_eq!(
        find(message, TYPES_NS, "ParentFolderId")[0].attribute("Id"),
        Some(calendar_id.as_str())
    );

    // An update: same id, new change key; the old key now conflicts.
    let updated = ews
        .call(
            ROOM1,
            &update_subject_body(&id, Some(&key1), "NeverOverwrite", "Changed"),
        )
        .await;
    let (same_id, key2) = item_id(&updated);
    assert_eq!(same_id, id);
    assert_ne!(key2, key1);
    let conflict = ews
        .call(
            ROOM1,
            &update_subject_body(&id, Some(&key1), "NeverOverwrite", "Lost"),
        )
        .await;
    assert_eq!(code(messages(&conflict)[0]), "ErrorIrresolvableConflict");
    let auto = ews
        .call(
            ROOM1,
            &update_subject_body(&id, None, "AutoResolve", "Lost"),
        )
        .await;
    assert_eq!(code(messages(&auto)[0]), "ErrorChangeKeyRequired");
    // An Outlook-side change also makes a new key.
    let outlook = sim
        .update_item(
            ROOM1,
            &id,
            ItemUpdate {
                location: Some(None),
                ..ItemUpdate::default()
            },
        )
        .unwrap();
    assert_ne!(outlook.change_key, key2);
    let got = ews.call(ROOM1, &get_body(&[&id])).await;
    assert_eq!(item_id(messages(&got)[0]).1, outlook.change_key);
    assert!(
        first_text(&got, TYPES_NS, "Location").is_none(),
        "cleared fields are left out"
    );

    // Delete = move to Deleted Items: a new id there, the old one gone, fields kept.
    let deleted = ews
        .call(ROOM1, &delete_body(&id, "MoveToDeletedItems"))
        .await;
    assert_eq!(code(messages(&deleted)[0]), "NoError");
    let old = ews.call(ROOM1, &get_body(&[&id])).await;
    assert_eq!(code(messages(&old)[0]), "ErrorItemNotFound");
    let items = sim.items(ROOM1).unwrap();
    assert_eq!(items.len(), 1);
    let in_deleted = &items[0];
    assert_eq!(in_deleted.folder, "deleteditems");
    assert_ne!(in_deleted.id, id);
    assert_eq!(in_deleted.subject.as_deref(), Some("Changed"));
    assert_eq!(in_deleted.reservation_id.as_deref(), Some("res-1"));
    let got = ews.call(ROOM1, &get_body(&[&in_deleted.id])).await;
    assert_eq!(code(messages(&got)[0]), "NoError");
    // Restore: back in the calendar under yet another id.
    let restored = sim.restore_item(ROOM1, &in_deleted.id).unwrap();
    assert!(restored != id && restored != in_deleted.id);
    assert_eq!(sim.item(ROOM1, &restored).unwrap().folder, "calendar");
    // Soft delete: into the recoverable items; hard delete: gone.
    let soft = ews.call(ROOM1, &delete_body(&restored, "SoftDelete")).await;
    assert_eq!(code(messages(&soft)[0]), "NoError");
    let dumpster = sim.items(ROOM1).unwrap();
    assert_eq!(dumpster[0].folder, "recoverableitemsdeletions");
    let hard = ews
        .call(ROOM1, &delete_body(&dumpster[0].id, "HardDelete"))
        .await;
    assert_eq!(code(messages(&hard)[0]), "NoError");
    assert!(sim.items(ROOM1).unwrap().is_empty());

    // The other mailbox does not see ROOM1's ids.
    let other = sim
        .create_item(
            ROOM1,
            spec("Mine", datetime!(2026-05-06 10:00 UTC), 1, None),
        )
        .unwrap();
    let answer = ews.call(ROOM2, &get_body(&[&other.id])).await;
    assert_eq!(code(messages(&answer)[0]), "ErrorItemNotFound");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendar_view_filters_truncates_and_limits_its_range() {
    let sim = start(options()).await;
    let ews = ews(&sim);
    let day = datetime!(2026-05-06 00:00 UTC);
    let hour = |h: i64| day + time::Duration::hours(h);
    for (subject, start, hours) in [
        ("a", 6, 2),
        ("b", 9, 1),
        ("c", 10, 1),
        ("d", 11, 1),
        ("e", 14, 1),
    ] {
        sim.create_item(ROOM1, spec(subject, hour(start), hours, None))
            .unwrap();
    }
    // Moved out of the calendar: not in the view.
    let gone = sim
        .create_item(ROOM1, spec("gone", hour(10), 1, None))
        .unwrap();
    sim.move_to_deleted_items(ROOM1, &gone.id).unwrap();
    let subjects = |root: &Element| -> Vec<String> {
        find(root, TYPES_NS, "Subject")
            .iter()
            .map(|e| e.text.clone())
            .collect()
    };
    // End > 08:00 and Start < 12:00: "a" (06-08) ends at 08:00 exactly and is out.
    let answer = ews
        .call(
            ROOM1,
            &find_body("2026-05-06T08:00:00Z", "2026-05-06T12:00:00Z", 100),
        )
        .await;
    assert_eq!(subjects(&answer), ["b", "c", "d"]);
    let root_folder = find(&answer, MESSAGES_NS, "RootFolder")[0];
    assert_eq!(
        root_folder.attribute("IncludesLastItemInRange"),
        Some("true")
    );
    let answer = ews
        .call(
            ROOM1,
            &find_body("2026-05-06T07:59:00Z", "2026-05-06T12:00:00Z", 2),
        )
        .await;
    assert_eq!(subjects(&answer), ["a", "b"]);
    let root_folder = find(&answer, MESSAGES_NS, "RootFolder")[0];
    assert_eq!(
        root_folder.attribute("IncludesLastItemInRange"),
        Some("false")
    );
    let answer = ews
        .call(
            ROOM1,
            &find_body("2026-05-06T00:00:00Z", "2028-05-06T00:00:01Z", 10),
        )
        .await;
    assert_eq!(code(messages(&answer)[0]), "ErrorCalendarViewRangeTooBig");
    let answer = ews
        .call(
            ROOM1,
            &find_body("2026-05-06T00:00:00Z", "2028-05-06T00:00:00Z", 10),
        )
        .await;
    assert_eq!(code(messages(&answer)[0]), "NoError");
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Push delivery.

fn push_options() -> SimOptions {
    SimOptions {
        // 30 s → 30 ms; StatusFrequency 1 → a heartbeat every 60 ms.
        time_scale: 0.001,
        answer_timeout: Duration::from_secs(5),
        ..options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_come_in_fifties_one_notification_in_flight() {
    let sim = start(SimOptions {
        // No heartbeat before the replay has gone out.
        first_status_after: Duration::from_secs(3600),
        ..push_options()
    })
    .await;
    let ews = ews(&sim);
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(20));
    // A watermark at the start of the log, then a restart loses the subscription.
    let (first, start_mark) = subscribe(&ews, ROOM1, &receiver.url(), 1, None).await;
    assert_eq!(sim.drop_all_subscriptions(), 1);
    // 60 creations while nobody listens: 120 events (the item's and the calendar folder's).
    let day = datetime!(2026-05-06 08:00 UTC);
    for i in 0..60 {
        sim.create_item(
            ROOM1,
            spec(&format!("item {i}"), day, 1, Some(&format!("res-{i}"))),
        )
        .unwrap();
    }
    let (second, answered) = subscribe(&ews, ROOM1, &receiver.url(), 1, Some(&start_mark)).await;
    assert_ne!(first, second);
    assert_eq!(
        answered, start_mark,
        "the answer names the position replayed from"
    );
    eventually("three notifications", || {
        receiver.for_subscription(&second).len() >= 3
    })
    .await;
    let got = receiver.for_subscription(&second);
    let shapes: Vec<(usize, bool)> = got[..3]
        .iter()
        .map(|r| (content(r).events.len(), content(r).more_events))
        .collect();
    assert_eq!(shapes, [(50, true), (50, true), (20, false)]);
    let mut previous = start_mark;
    let mut items = 0;
    for notification in &got[..3] {
        let content = content(notification);
        assert_eq!(
            content.previous_watermark.as_ref(),
            Some(&previous),
            "chained"
        );
        for event in &content.events {
            let object = event.object.as_ref().unwrap();
            let marker = object.change_key.as_deref();
            match event.kind {
                EventKind::Created => {
                    items += 1;
                    assert_eq!(marker, Some("DwAAAA=="), "the item marker, not a version");
                }
                EventKind::Modified => assert_eq!(marker, Some("AgAAAA==")),
                other => panic!("unexpected {other:?}"),
            }
        }
        previous = content.events.last().unwrap().watermark.clone().unwrap();
    }
    assert_eq!(items, 60);
    assert!(got.iter().all(|r| r
        .request_line
        .starts_with("POST /Webservices/SyncNotification.svc?Default")));
    assert_eq!(
        receiver.max_in_flight.load(Ordering::SeqCst),
        1,
        "never two in flight"
    );
    // Nothing delivered for the dropped subscription.
    assert!(receiver.for_subscription(&first).is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_when_quiet_their_watermarks_advance() {
    let sim = start(push_options()).await;
    let ews = ews(&sim);
    let receiver = Receiver::start().await;
    let (id, mark) = subscribe(&ews, ROOM1, &receiver.url(), 1, None).await;
    eventually("three heartbeats", || {
        receiver.for_subscription(&id).len() >= 3
    })
    .await;
    let got = receiver.for_subscription(&id);
    let mut previous = mark;
    for heartbeat in &got[..3] {
        assert_eq!(kinds(heartbeat), [EventKind::Status]);
        let content = content(heartbeat);
        assert_eq!(content.previous_watermark.as_ref(), Some(&previous));
        let watermark = content.events[0].watermark.clone().unwrap();
        assert_ne!(watermark, previous, "a heartbeat's watermark advances");
        previous = watermark;
    }
    // A change in between arrives as events, then heartbeats resume.
    let item = sim
        .create_item(ROOM1, spec("x", datetime!(2026-05-06 08:00 UTC), 1, None))
        .unwrap();
    eventually("the change", || {
        receiver
            .for_subscription(&id)
            .iter()
            .any(|r| kinds(r).contains(&EventKind::Created))
    })
    .await;
    let with_event = receiver
        .for_subscription(&id)
        .into_iter()
        .find(|r| kinds(r).contains(&EventKind::Created))
        .unwrap();
    let created = &content(&with_event).events[0];
    assert_eq!(created.object.as_ref().unwrap().id, item.id);
    // The receiver records before it answers: the simulator counts once it read the answer.
    eventually("four accepted", || {
        sim.subscription(&id)
            .is_some_and(|s| s.notifications_accepted >= 4)
    })
    .await;
    let info = sim.subscription(&id).unwrap();
    assert!(info.alive);
    assert_eq!(info.status_frequency_minutes, 1);
    assert_eq!(info.url, receiver.url());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_identically_then_the_subscription_is_dropped() {
    let sim = start(SimOptions {
        // 30 s → 300 ms, 60 s → 600 ms.
        time_scale: 0.01,
        first_status_after: Duration::ZERO,
        ..push_options()
    })
    .await;
    let ews = ews(&sim);
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::Error500);
    let (id, _) = subscribe(&ews, ROOM1, &receiver.url(), 1, None).await;
    eventually("dropped", || {
        sim.subscription(&id).is_some_and(|s| !s.alive)
    })
    .await;
    let info = sim.subscription(&id).unwrap();
    assert_eq!(info.ended.as_deref(), Some("delivery_failed"));
    let got = receiver.for_subscription(&id);
    // StatusFrequency 1: the first attempt, then 30 s and 60 s later; 120 s would exceed it.
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the identical body"
    );
    assert!(got[1].at - got[0].at >= Duration::from_millis(300));
    assert!(got[2].at - got[1].at >= Duration::from_millis(600));
    assert_eq!(info.attempts, 3);
    assert_eq!(info.attempts_failed, 3);
    let deliveries: Vec<_> = sim
        .deliveries()
        .into_iter()
        .filter(|d| d.subscription_id == id)
        .collect();
    assert_eq!(deliveries.len(), 3);
    assert!(deliveries
        .iter()
        .all(|d| d.body_digest == deliveries[0].body_digest && d.notification == 1));
    assert!(deliveries[0].outcome.starts_with("failed: status 500"));
    // Dropped silently: changes no longer go anywhere.
    sim.create_item(ROOM1, spec("x", datetime!(2026-05-06 08:00 UTC), 1, None))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.for_subscription(&id).len(), 3);

    // Two failures, then the listener is back: the third attempt is accepted, nothing lost.
    receiver.set_default(Reply::Ok);
    receiver.script(&[Reply::Error500, Reply::Error500]);
    let (id, _) = subscribe(&ews, ROOM2, &receiver.url(), 1, None).await;
    eventually("accepted on the third attempt", || {
        sim.subscription(&id)
            .is_some_and(|s| s.notifications_accepted >= 1)
    })
    .await;
    let got = receiver.for_subscription(&id);
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(got[1].body, got[2].body);
    assert!(sim.subscription(&id).unwrap().alive);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_notification_is_a_failed_one() {
    let sim = start(SimOptions {
        time_scale: 0.001,
        first_status_after: Duration::ZERO,
        answer_timeout: Duration::from_millis(300),
        ..options()
    })
    .await;
    let ews = ews(&sim);
    let receiver = Receiver::start().await;
    receiver.script(&[Reply::Silence]);
    let (id, _) = subscribe(&ews, ROOM1, &receiver.url(), 1, None).await;
    eventually("resent after the silence", || {
        receiver.for_subscription(&id).len() >= 2
    })
    .await;
    let got = receiver.for_subscription(&id);
    assert_eq!(got[0].body, got[1].body);
    assert!(got[1].at - got[0].at >= Duration::from_millis(300));
    let first = sim
        .deliveries()
        .into_iter()
        .find(|d| d.subscription_id == id)
        .unwrap();
    assert!(
        first.outcome.contains("no answer in time"),
        "{}",
        first.outcome
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_ends_the_subscription() {
    let sim = start(SimOptions {
        first_status_after: Duration::ZERO,
        ..push_options()
    })
    .await;
    let ews = ews(&sim);
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::Unsubscribe);
    let (id, _) = subscribe(&ews, ROOM1, &receiver.url(), 1, None).await;
    eventually("ended", || sim.subscription(&id).is_some_and(|s| !s.alive)).await;
    assert_eq!(
        sim.subscription(&id).unwrap().ended.as_deref(),
        Some("unsubscribed")
    );
    sim.create_item(ROOM1, spec("x", datetime!(2026-05-06 08:00 UTC), 1, None))
        .unwrap();
    // Well past several heartbeat intervals: nothing more was sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.for_subscription(&id).len(), 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_subscriptions_and_a_resubscription_replays_what_was_missed() {
    let sim = start(SimOptions {
        first_status_after: Duration::ZERO,
        ..push_options()
    })
    .await;
    let ews = ews(&sim);
    let receiver = Receiver::start().await;
    let (id, _) = subscribe(&ews, ROOM1, &receiver.url(), 1, None).await;
    let item = sim
        .create_item(
            ROOM1,
            spec("x", datetime!(2026-05-06 08:00 UTC), 1, Some("res-1")),
        )
        .unwrap();
    eventually("the create", || {
        receiver
            .for_subscription(&id)
            .iter()
            .any(|r| kinds(r).contains(&EventKind::Created))
    })
    .await;
    // The last watermark the listener stored.
    let last = receiver
        .for_subscription(&id)
        .last()
        .map(|r| content(r).events.last().unwrap().watermark.clone().unwrap());
    let last = last.unwrap();
    assert!(sim.drop_all_subscriptions() >= 1);
    // A heartbeat already on the wire when the restart came may still land: let it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = receiver.for_subscription(&id).len();
    // Changes while nobody listens: an Outlook delete (move to Deleted Items).
    let moved = sim.move_to_deleted_items(ROOM1, &item.id).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.for_subscription(&id).len(),
        seen,
        "silence after the restart"
    );
    assert_eq!(
        sim.subscription(&id).unwrap().ended.as_deref(),
        Some("dropped")
    );
    // Resubscribe from the stored watermark: the move arrives, with the old id and folder.
    let (renewed, _) = subscribe(&ews, ROOM1, &receiver.url(), 1, Some(&last)).await;
    eventually("the replayed move", || {
        receiver
            .for_subscription(&renewed)
            .iter()
            .any(|r| kinds(r).contains(&EventKind::Moved))
    })
    .await;
    let replay = receiver.for_subscription(&renewed);
    let moved_event = replay
        .iter()
        .flat_map(|r| content(r).events)
        .find(|e| e.kind == EventKind::Moved)
        .unwrap();
    assert_eq!(moved_event.object.as_ref().unwrap().id, moved);
    assert_eq!(moved_event.old_object.as_ref().unwrap().id, item.id);
    assert_eq!(content(&replay[0]).previous_watermark, Some(last.clone()));
    // Watermarks of another mailbox, or expired ones, are refused.
    let answer = ews
        .call(ROOM2, &subscribe_body(&receiver.url(), 1, Some(&last)))
        .await;
    assert_eq!(code(messages(&answer)[0]), "ErrorInvalidWatermark");
    sim.expire_watermarks(ROOM1).unwrap();
    let answer = ews
        .call(ROOM1, &subscribe_body(&receiver.url(), 1, Some(&last)))
        .await;
    assert_eq!(code(messages(&answer)[0]), "ErrorInvalidWatermark");
    let (_, fresh) = subscribe(&ews, ROOM1, &receiver.url(), 1, None).await;
    let answer = ews
        .call(ROOM1, &subscribe_body(&receiver.url(), 1, Some(&fresh)))
        .await;
    assert_eq!(
        code(messages(&answer)[0]),
        "NoError",
        "new watermarks are valid"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_notification_has_no_notification_and_ends_the_subscription() {
    let sim = start(SimOptions {
        first_status_after: Duration::ZERO,
        ..push_options()
    })
    .await;
    let ews = ews(&sim);
    let receiver = Receiver::start().await;
    let (id, _) = subscribe(&ews, ROOM1, &receiver.url(), 1, None).await;
    eventually("a heartbeat", || !receiver.for_subscription(&id).is_empty()).await;
    sim.send_error_notification(&id).unwrap();
    eventually("ended", || sim.subscription(&id).is_some_and(|s| !s.alive)).await;
    assert_eq!(
        sim.subscription(&id).unwrap().ended.as_deref(),
        Some("error_notification")
    );
    let last = receiver.for_subscription(&id).pop().unwrap();
    // The gateway's own validator accepts it (its documented deviation).
    let parsed = notification::validate(&last.body, &Limits::default());
    assert!(parsed.is_ok(), "{parsed:?}");
    let message = &last.notification().response_messages[0];
    assert_eq!(message.response_class, ResponseClass::Error);
    assert_eq!(
        message.response_code.as_deref(),
        Some("ErrorReadEventsFailed")
    );
    assert!(message.notification.is_none());
    assert_eq!(message.subscription_id.as_deref(), Some(id.as_str()));
    let count = receiver.for_subscription(&id).len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.for_subscription(&id).len(),
        count,
        "nothing after it"
    );
    assert!(sim.send_error_notification(&id).is_err());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_notification_may_overtake_the_subscribe_answer() {
    let sim = start(SimOptions {
        first_status_after: Duration::ZERO,
        ..push_options()
    })
    .await;
    let ews = ews(&sim);
    let receiver = Receiver::start().await;
    let (id, mark) = subscribe(&ews, ROOM1, &receiver.url(), 30, None).await;
    eventually("the first StatusEvent", || {
        !receiver.for_subscription(&id).is_empty()
    })
    .await;
    let first = &receiver.for_subscription(&id)[0];
    assert_eq!(kinds(first), [EventKind::Status]);
    assert_eq!(content(first).previous_watermark, Some(mark));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_go_over_tls_from_the_chosen_source_as_exchange_sends_them() {
    let (cert, key) = {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let receiver =
        Receiver::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    let sim = start(SimOptions {
        first_status_after: Duration::ZERO,
        push_ca_pem: Some(cert.pem()),
        push_source: Some(EXCHANGE_SOURCE),
        ..push_options()
    })
    .await;
    let ews = ews(&sim);
    let url = format!(
        "https://localhost:{}/api/webhooks/exchange",
        receiver.addr.port()
    );
    let (id, _) = subscribe(&ews, ROOM1, &url, 1, None).await;
    eventually("a heartbeat over TLS", || {
        !receiver.for_subscription(&id).is_empty()
    })
    .await;
    let got = &receiver.for_subscription(&id)[0];
    assert_eq!(got.peer.ip(), EXCHANGE_SOURCE);
    assert_eq!(got.request_line, "POST /api/webhooks/exchange");
    assert_eq!(got.header("content-type"), Some("text/xml; charset=utf-8"));
    assert_eq!(
        got.header("soapaction"),
        Some("http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification")
    );
    assert_eq!(got.header("connection"), Some("close"));
    assert_eq!(
        got.header("host"),
        Some(format!("localhost:{}", receiver.addr.port()).as_str())
    );
    // A callback that is not loopback is refused at Subscribe.
    let answer = ews
        .call(
            ROOM1,
            &subscribe_body("https://exchange.example.com/notify", 1, None),
        )
        .await;
    assert_eq!(
        code(messages(&answer)[0]),
        "ErrorInvalidPushSubscriptionUrl"
    );
    // Without the CA, the handshake fails: a failed delivery.
    let untrusting = start(SimOptions {
        first_status_after: Duration::ZERO,
        ..push_options()
    })
    .await;
    let (id, _) = subscribe(&self::ews(&untrusting), ROOM1, &url, 1, None).await;
    eventually("a failed attempt", || {
        untrusting
            .deliveries()
            .iter()
            .any(|d| d.subscription_id == id)
    })
    .await;
    assert!(untrusting.deliveries()[0].outcome.starts_with("failed:"));
    untrusting.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_subscriptions_per_mailbox() {
    let sim = start(SimOptions {
        first_status_after: Duration::from_secs(3600),
        ..push_options()
    })
    .await;
    let ews = ews(&sim);
    let url = "http://127.0.0.1:9/unused";
    for _ in 0..20 {
        subscribe(&ews, ROOM1, url, 30, None).await;
    }
    let answer = ews.call(ROOM1, &subscribe_body(url, 30, None)).await;
    assert_eq!(code(messages(&answer)[0]), "ErrorExceededSubscriptionCount");
    subscribe(&ews, ROOM2, url, 30, None).await;
    assert_eq!(sim.drop_all_subscriptions(), 21);
    subscribe(&ews, ROOM1, url, 30, None).await;
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The service's bad day.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_busy_in_body_and_as_fault() {
    let sim = start(options()).await;
    let ews = ews(&sim);
    let item = sim
        .create_item(ROOM1, spec("x", datetime!(2026-05-06 08:00 UTC), 1, None))
        .unwrap();
    sim.busy_for(Duration::from_secs(60), Duration::from_millis(1234));
    let answer = ews.call(ROOM1, &get_body(&[&item.id, &item.id])).await;
    let busy = messages(&answer);
    assert_eq!(busy.len(), 2, "one message per id");
    assert_eq!(code(busy[0]), "ErrorServerBusy");
    let value = find(busy[0], TYPES_NS, "Value")[0];
    assert_eq!(value.attribute("Name"), Some("BackOffMilliseconds"));
    assert_eq!(value.text, "1234");
    let response = ews
        .raw(
            ROOM1,
            &create_body("y", "2026-05-06T08:00:00Z", "2026-05-06T09:00:00Z", None),
        )
        .await;
    assert_eq!(fault_code(&response), "ErrorServerBusy");
    let root = xml::parse(&response.body).unwrap();
    assert_eq!(
        first_text(&root, TYPES_NS, "Value").as_deref(),
        Some("1234")
    );
    assert_eq!(
        sim.items(ROOM1).unwrap().len(),
        1,
        "nothing created while busy"
    );
    sim.busy_for(Duration::ZERO, Duration::ZERO);
    let answer = ews.call(ROOM1, &get_body(&[&item.id])).await;
    assert_eq!(code(messages(&answer)[0]), "NoError");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_and_late_answers() {
    let sim = start(options()).await;
    let ews = ews(&sim);
    let body = envelope(
        Some(ROOM1),
        &create_body(
            "late",
            "2026-05-06T08:00:00Z",
            "2026-05-06T09:00:00Z",
            Some("res-late"),
        ),
    );
    let request = format!(
        "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\nAuthorization: Bearer {TOKEN}\r\nX-AnchorMailbox: {ROOM1}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // A stall: no answer, the connection closes when it ends, nothing is done.
    sim.stall_for(Duration::from_millis(400));
    let started = Instant::now();
    let stalled = client::exchange(&ews.target, request.as_bytes(), WAIT).await;
    assert!(stalled.is_err(), "no answer: {stalled:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(sim.items(ROOM1).unwrap().is_empty());
    assert!(sim.calls().iter().any(|c| c.outcome == "stalled"));
    // A CreateItem that succeeds but answers after the client gave up.
    sim.answer_next_create_after(Duration::from_secs(2));
    let late = client::exchange(&ews.target, request.as_bytes(), Duration::from_millis(300)).await;
    assert!(late.is_err(), "the client timed out");
    let items = sim.items(ROOM1).unwrap();
    assert_eq!(items.len(), 1, "the write happened");
    assert_eq!(items[0].reservation_id.as_deref(), Some("res-late"));
    // Only the next one.
    let on_time = client::exchange(&ews.target, request.as_bytes(), WAIT)
        .await
        .unwrap();
    assert_eq!(on_time.status, 200);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_speaks_json_with_a_token() {
    let sim = start(SimOptions {
        control_token: Some("control-secret".into()),
        ..options()
    })
    .await;
    let target = Target::tls(sim.addr(), sim.ca_pem().unwrap(), "localhost").unwrap();
    let call = |method: &str, path: &str, token: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let send = |request: String| {
        let target = target.clone();
        async move {
            let response = client::exchange(&target, request.as_bytes(), WAIT)
                .await
                .unwrap();
            let value: serde_json::Value =
                serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
            (response.status, value)
        }
    };
    let (status, _) = send(call("GET", "/control/subscriptions", "wrong", "")).await;
    assert_eq!(status, 401);
    let (status, created) = send(call(
        "POST",
        "/control/items/create",
        "control-secret",
        r#"{"mailbox":"room1@contoso.com","subject":"Board","start":"2026-05-06T08:00:00Z","end":"2026-05-06T09:00:00+00:00","reservation_id":"res-9"}"#,
    ))
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["reservation_id"], "res-9");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, moved) = send(call(
        "POST",
        "/control/items/move-to-deleted-items",
        "control-secret",
        &format!(r#"{{"mailbox":"room1@contoso.com","id":"{id}"}}"#),
    ))
    .await;
    assert_eq!(status, 200);
    assert_ne!(moved["id"], id.as_str());
    let (status, items) = send(call(
        "GET",
        "/control/items?mailbox=room1%40contoso.com",
        "control-secret",
        "",
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(items[0]["folder"], "deleteditems");
    let (status, error) = send(call(
        "POST",
        "/control/items/hard-delete",
        "control-secret",
        &format!(r#"{{"mailbox":"room1@contoso.com","id":"{id}"}}"#),
    ))
    .await;
    assert_eq!(status, 404, "{error}");
    let (status, _) = send(call(
        "POST",
        "/control/items/create",
        "control-secret",
        r#"{"mailbox":"room1@contoso.com","subject":"x","start":"yesterday","end":"2026-05-06T09:00:00Z"}"#,
    ))
    .await;
    assert_eq!(status, 400);
    let (status, counts) = send(call("GET", "/control/call-counts", "control-secret", "")).await;
    assert_eq!(status, 200);
    assert!(counts["by_operation"].is_object());
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// `pushgate simulate`

#[test]
fn pushgate_simulate_serves_until_sigterm() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "simulate",
            "--mailbox",
            ROOM1,
            "--bearer-token",
            TOKEN,
            "--control-token",
            "cli-control",
            "--ca-out",
        ])
        .arg(&ca)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut urls = HashMap::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        if let (Some(name), Some("URL"), Some(url)) = (words.next(), words.next(), words.next()) {
            urls.insert(name.to_string(), url.to_string());
        }
        if line.trim_start().starts_with("time scale") {
            break;
        }
    }
    let ews_url = urls["EWS"].clone();
    assert!(ews_url.starts_with("https://127.0.0.1:") && ews_url.ends_with("/EWS/Exchange.asmx"));
    assert!(urls["token"].ends_with("/oauth2/v2.0/token"));
    let addr: SocketAddr = ews_url["https://".len()..ews_url.len() - "/EWS/Exchange.asmx".len()]
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pem = std::fs::read_to_string(&ca).unwrap();
    let response = runtime.block_on(async {
        let target = Target::tls(addr, &pem, "localhost").unwrap();
        let request = "GET /control/items?mailbox=room1%40contoso.com HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer cli-control\r\nConnection: close\r\n\r\n";
        client::exchange(&target, request.as_bytes(), WAIT).await.unwrap()
    });
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"[]");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_serves_the_same_and_only_loopback_is_allowed() {
    let sim = start(SimOptions {
        tls: false,
        ..options()
    })
    .await;
    assert!(sim.ews_url().starts_with("http://127.0.0.1:"));
    assert!(sim.ca_pem().is_none());
    let answer = ews(&sim).call(ROOM1, GET_FOLDER).await;
    assert_eq!(code(messages(&answer)[0]), "NoError");
    sim.shutdown().await;
    let refused = Simulator::start(SimOptions {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..options()
    })
    .await;
    assert!(refused.is_err());
    let refused = Simulator::start(SimOptions {
        push_source: Some("10.0.0.1".parse().unwrap()),
        ..options()
    })
    .await;
    assert!(refused.is_err());
}
