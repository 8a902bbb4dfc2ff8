//! The EWS client's transport against real loopback sockets: what it puts on the wire, the
//! `allow_http` rule, request timeouts, the bound on requests in flight, retries for reads and
//! none for writes, credentials (bearer file re-read, OAuth renewal after a 401), TLS with an
//! extra CA, metrics. The server here answers canned HTTP; Exchange's behaviour is the
//! simulator's business.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushgate::ews::{
    AuthSettings, DeleteType, EwsClient, EwsError, EwsMetrics, EwsSettings, ItemId,
    NewCalendarItem, PushSubscriptionRequest, RetryPolicy, Secret,
};
use time::macros::datetime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const ROOM: &str = "room1@contoso.com";
/// Bounds each test: a hung client fails the test instead of hanging the suite.
const TEST_LIMIT: Duration = Duration::from_secs(30);

const GET_FOLDER_OK: &str = r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetFolderResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders><t:CalendarFolder><t:FolderId Id="CALENDAR-ID" ChangeKey="AgAA"/></t:CalendarFolder></m:Folders></m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>"#;

/// One request as the server received it.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

#[derive(Clone)]
enum Reply {
    Answer {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
        hold: Duration,
    },
    /// Read the request, then never answer.
    Silence,
}

fn ok(body: &str) -> Reply {
    Reply::Answer {
        status: 200,
        headers: Vec::new(),
        body: body.to_string(),
        hold: Duration::ZERO,
    }
}

fn status(status: u16, headers: Vec<(&'static str, String)>) -> Reply {
    Reply::Answer {
        status,
        headers,
        body: String::new(),
        hold: Duration::ZERO,
    }
}

type Handler = Arc<dyn Fn(usize, &Received) -> Reply + Send + Sync>;

/// A loopback HTTP/1.1 server, one request per connection, that records what it receives and
/// how many requests it held at once.
struct Server {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Server {
    async fn start(handler: Handler) -> Server {
        Self::start_with_tls(handler, None).await
    }

    async fn start_with_tls(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (r, f, m) = (received.clone(), in_flight.clone(), max_in_flight.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, r, f, m, tls) = (
                    handler.clone(),
                    r.clone(),
                    f.clone(),
                    m.clone(),
                    tls.clone(),
                );
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, handler, r, f, m).await;
                            }
                        }
                        None => serve(stream, handler, r, f, m).await,
                    }
                });
            }
        });
        Server {
            addr,
            received,
            max_in_flight,
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/EWS/Exchange.asmx", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: Handler,
    received: Arc<Mutex<Vec<Received>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let request = Received {
        head,
        body: String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned(),
    };
    let index = {
        let mut all = received.lock().unwrap();
        all.push(request.clone());
        all.len() - 1
    };
    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    max_in_flight.fetch_max(now, Ordering::SeqCst);
    let reply = handler(index, &request);
    match reply {
        Reply::Silence => {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            // Keep the connection open and say nothing until the client gives up.
            let _ = stream.read(&mut chunk).await;
        }
        Reply::Answer {
            status,
            headers,
            body,
            hold,
        } => {
            tokio::time::sleep(hold).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut response = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                response.push_str(&format!("{name}: {value}\r\n"));
            }
            response.push_str("\r\n");
            response.push_str(&body);
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    }
}

fn token_file(dir: &tempfile::TempDir, token: &str) -> std::path::PathBuf {
    let path = dir.path().join("token");
    let staging = dir.path().join("token.new");
    std::fs::write(&staging, format!("{token}\n")).unwrap();
    std::fs::rename(&staging, &path).unwrap();
    path
}

/// Plain-HTTP settings with a bearer token file, fast retries.
fn settings(url: &str, dir: &tempfile::TempDir) -> EwsSettings {
    let mut settings = EwsSettings::new(
        url,
        AuthSettings::Bearer {
            token_file: token_file(dir, "token-one"),
        },
    )
    .unwrap();
    settings.allow_http = true;
    settings.timeout = Duration::from_secs(10);
    settings.retry = RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(1),
    };
    settings
}

fn new_item() -> NewCalendarItem {
    NewCalendarItem {
        subject: "Board meeting".into(),
        start: datetime!(2026-05-06 08:00 UTC),
        end: datetime!(2026-05-06 09:00 UTC),
        location: None,
        reservation_id: "res-1".into(),
    }
}

async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, future)
        .await
        .expect("the client call finished")
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed_and_then_logged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Arc::new(|_, _| ok(GET_FOLDER_OK))).await;
    let mut refused = settings(&server.url("http"), &dir);
    refused.allow_http = false;
    let err = EwsClient::new(refused).err().expect("http:// refused");
    assert!(matches!(err, EwsError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("allow_http"), "{err}");

    // Allowed: a WARN line at start says credentials travel in clear.
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || LogSink(sink.clone()))
        .finish();
    let client = tracing::subscriber::with_default(subscriber, || {
        EwsClient::new(settings(&server.url("http"), &dir))
    })
    .unwrap();
    let logged = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("WARN") && logged.contains("travel in clear"),
        "{logged}"
    );
    assert_eq!(
        bounded(client.calendar_folder_id(ROOM)).await.unwrap(),
        "CALENDAR-ID"
    );
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_request_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Arc::new(|_, _| ok(GET_FOLDER_OK))).await;
    let client = EwsClient::new(settings(&server.url("http"), &dir)).unwrap();
    bounded(client.calendar_folder_id(ROOM)).await.unwrap();
    let request = &server.received()[0];
    assert!(request.head.starts_with("POST /EWS/Exchange.asmx HTTP/1.1"));
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("text/xml; charset=utf-8")
    );
    assert_eq!(request.header("x-anchormailbox").as_deref(), Some(ROOM));
    assert_eq!(
        request.header("authorization").as_deref(),
        Some("Bearer token-one")
    );
    assert!(request.body.contains("<t:RequestServerVersion xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\" Version=\"Exchange2013\"/>"));
    assert!(request
        .body
        .contains("<t:SmtpAddress>room1@contoso.com</t:SmtpAddress>"));
    assert!(request.body.contains("<soap:Body><m:GetFolder "));

    // Delegate access: no impersonation header, no anchor; the folder names the mailbox.
    let mut delegate = settings(&server.url("http"), &dir);
    delegate.impersonation = false;
    let client = EwsClient::new(delegate).unwrap();
    bounded(client.calendar_folder_id(ROOM)).await.unwrap();
    let request = &server.received()[1];
    assert_eq!(request.header("x-anchormailbox"), None);
    assert!(!request.body.contains("ExchangeImpersonation"));
    assert!(request
        .body
        .contains("<t:EmailAddress>room1@contoso.com</t:EmailAddress>"));
}

#[tokio::test]
async fn a_silent_server_times_out_and_a_write_is_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Arc::new(|_, _| Reply::Silence)).await;
    let mut settings = settings(&server.url("http"), &dir);
    settings.timeout = Duration::from_millis(300);
    settings.retry.attempts = 2;
    let client = EwsClient::new(settings).unwrap();

    let err = bounded(client.create_calendar_item(
        ROOM,
        &new_item(),
        &pushgate::ews::ReservationProperty::new("R"),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            EwsError::Timeout {
                request_sent: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.outcome_unknown() && err.is_transient());
    assert_eq!(server.received().len(), 1, "a write is never repeated");

    // A read is tried again within its bounds, then gives up with the timeout.
    let err = bounded(client.calendar_folder_id(ROOM)).await.unwrap_err();
    assert_eq!(err.code(), "timeout");
    assert_eq!(
        server.received().len(),
        3,
        "one write, then two read attempts"
    );
}

#[tokio::test]
async fn nothing_listening_means_nothing_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    // Bind, learn the port, close: connections to it are refused.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = settings(&format!("http://{addr}/EWS/Exchange.asmx"), &dir);
    settings.retry.attempts = 1;
    let client = EwsClient::new(settings).unwrap();
    let err = bounded(client.delete_calendar_item(ROOM, &ItemId::new("A"), DeleteType::HardDelete))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EwsError::Transport {
                request_sent: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.outcome_unknown());
}

#[tokio::test]
async fn requests_in_flight_stay_within_max_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Arc::new(|_, _| Reply::Answer {
        status: 200,
        headers: Vec::new(),
        body: GET_FOLDER_OK.into(),
        hold: Duration::from_millis(100),
    }))
    .await;
    let mut settings = settings(&server.url("http"), &dir);
    settings.max_concurrency = 2;
    let client = EwsClient::new(settings).unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.calendar_folder_id(ROOM).await })
        })
        .collect();
    for call in calls {
        assert_eq!(bounded(call).await.unwrap().unwrap(), "CALENDAR-ID");
    }
    assert_eq!(server.received().len(), 8);
    let max = server.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "{max} requests in flight at once");
}

#[tokio::test]
async fn reads_retry_transient_failures_writes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    // Every other request: 503 with Retry-After 0, then the answer.
    let server = Server::start(Arc::new(|index, _| {
        if index % 2 == 0 {
            status(503, vec![("Retry-After", "0".into())])
        } else {
            ok(GET_FOLDER_OK)
        }
    }))
    .await;
    let registry = prometheus::Registry::new();
    let metrics = EwsMetrics::register(&registry).unwrap();
    let client =
        EwsClient::with_metrics(settings(&server.url("http"), &dir), Some(metrics)).unwrap();
    assert_eq!(
        bounded(client.calendar_folder_id(ROOM)).await.unwrap(),
        "CALENDAR-ID"
    );
    assert_eq!(server.received().len(), 2);

    let request = PushSubscriptionRequest {
        watermark: None,
        status_frequency_minutes: 5,
        url: "https://gateway.example/api/webhooks/exchange".into(),
    };
    let err = bounded(client.subscribe(ROOM, &request)).await.unwrap_err();
    assert_eq!(err.code(), "http_503");
    assert_eq!(err.back_off(), Some(Duration::ZERO));
    assert!(err.is_transient() && !err.outcome_unknown());
    assert_eq!(
        server.received().len(),
        3,
        "Subscribe is a write: sent once"
    );

    let text = String::from_utf8(pushgate::metrics::render_registry(&registry)).unwrap();
    for line in [
        "pushgate_ews_requests_total{operation=\"GetFolder\",result=\"http_503\"} 1",
        "pushgate_ews_requests_total{operation=\"GetFolder\",result=\"ok\"} 1",
        "pushgate_ews_requests_total{operation=\"Subscribe\",result=\"http_503\"} 1",
        "pushgate_ews_request_duration_seconds_count{operation=\"GetFolder\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test]
async fn a_back_off_hint_beyond_the_bound_is_left_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Arc::new(|_, _| {
        status(503, vec![("Retry-After", "3600".into())])
    }))
    .await;
    let client = EwsClient::new(settings(&server.url("http"), &dir)).unwrap();
    let err = bounded(client.calendar_folder_id(ROOM)).await.unwrap_err();
    assert_eq!(err.back_off(), Some(Duration::from_secs(3600)));
    assert_eq!(server.received().len(), 1, "not retried against the hint");
}

#[tokio::test]
async fn the_bearer_token_file_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Arc::new(|_, _| ok(GET_FOLDER_OK))).await;
    let client = EwsClient::new(settings(&server.url("http"), &dir)).unwrap();
    bounded(client.calendar_folder_id(ROOM)).await.unwrap();
    token_file(&dir, "token-two");
    bounded(client.calendar_folder_id(ROOM)).await.unwrap();
    let tokens: Vec<_> = server
        .received()
        .iter()
        .map(|r| r.header("authorization").unwrap())
        .collect();
    assert_eq!(tokens, ["Bearer token-one", "Bearer token-two"]);
}

#[tokio::test]
async fn an_oauth_token_is_cached_and_renewed_once_after_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let token_server = Server::start(Arc::new(move |_, request| {
        assert!(request.body.contains("grant_type=client_credentials"));
        assert!(request.body.contains("client_secret=s%3Dcret"));
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::Answer {
            status: 200,
            headers: vec![("Content-Type", "application/json".into())],
            body: format!(
                r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"oauth-{n}"}}"#
            ),
            hold: Duration::ZERO,
        }
    }))
    .await;
    // Exchange refuses the first token (as after a revocation), accepts the next ones.
    let ews = Server::start(Arc::new(|_, request| {
        if request.header("authorization").as_deref() == Some("Bearer oauth-1") {
            status(401, Vec::new())
        } else {
            ok(GET_FOLDER_OK)
        }
    }))
    .await;
    let mut first = settings(&ews.url("http"), &dir);
    first.auth = AuthSettings::OAuth2 {
        token_url: format!("http://{}/tenant/oauth2/v2.0/token", token_server.addr)
            .parse()
            .unwrap(),
        client_id: "app-id".into(),
        client_secret: Secret::new("s=cret"),
        scope: "https://outlook.office365.com/.default".into(),
    };
    let client = EwsClient::new(first).unwrap();
    assert_eq!(
        bounded(client.calendar_folder_id(ROOM)).await.unwrap(),
        "CALENDAR-ID"
    );
    assert_eq!(
        issued.load(Ordering::SeqCst),
        2,
        "renewed once after the 401"
    );
    bounded(client.calendar_folder_id(ROOM)).await.unwrap();
    assert_eq!(
        issued.load(Ordering::SeqCst),
        2,
        "the renewed token is cached"
    );
    let used: Vec<_> = ews
        .received()
        .iter()
        .map(|r| r.header("authorization").unwrap())
        .collect();
    assert_eq!(used, ["Bearer oauth-1", "Bearer oauth-2", "Bearer oauth-2"]);

    // A token Exchange keeps refusing: one renewal, then the 401 stands, even for a write.
    let refusing = Server::start(Arc::new(|_, _| status(401, Vec::new()))).await;
    let mut second = settings(&refusing.url("http"), &dir);
    second.auth = AuthSettings::OAuth2 {
        token_url: format!("http://{}/t", token_server.addr).parse().unwrap(),
        client_id: "app-id".into(),
        client_secret: Secret::new("s=cret"),
        scope: "https://outlook.office365.com/.default".into(),
    };
    let client = EwsClient::new(second).unwrap();
    let err = bounded(client.create_calendar_item(
        ROOM,
        &new_item(),
        &pushgate::ews::ReservationProperty::new("R"),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, EwsError::Unauthorized { .. }), "{err:?}");
    assert!(!err.is_transient() && !err.outcome_unknown());
    assert_eq!(refusing.received().len(), 2);
}

#[tokio::test]
async fn tls_trusts_the_extra_ca_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) =
        pushgate::gateway::tls::self_signed(&["localhost"], &["127.0.0.1".parse().unwrap()])
            .unwrap();
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let server = Server::start_with_tls(Arc::new(|_, _| ok(GET_FOLDER_OK)), Some(acceptor)).await;

    let mut trusted = settings(&server.url("https"), &dir);
    trusted.allow_http = false;
    trusted.system_roots = false;
    trusted.extra_ca_pem = Some(cert_pem.into_bytes());
    let client = EwsClient::new(trusted.clone()).unwrap();
    assert_eq!(
        bounded(client.calendar_folder_id(ROOM)).await.unwrap(),
        "CALENDAR-ID"
    );

    // The system roots do not know this CA: the handshake fails before anything is sent.
    let mut untrusted = trusted;
    untrusted.system_roots = true;
    untrusted.extra_ca_pem = None;
    untrusted.retry.attempts = 1;
    match EwsClient::new(untrusted) {
        Ok(client) => {
            let err = bounded(client.calendar_folder_id(ROOM)).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    EwsError::Transport {
                        request_sent: false,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        // A machine without a system CA bundle refuses to build an https client at all.
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "no system roots here: {err}");
            assert!(matches!(err, EwsError::Config(_)), "{err:?}");
        }
    }
    assert_eq!(server.received().len(), 1);
}

/// A GetItem answer with one message per `t:ItemId` in the request, in order: `busy_once` is
/// ErrorServerBusy the first time it is asked for, `gone` is ErrorItemNotFound.
fn get_item_answer(request: &Received, busy_once: &Mutex<bool>, gone: &str) -> Reply {
    let ids: Vec<&str> = request
        .body
        .split("<t:ItemId Id=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let mut messages = String::new();
    for id in ids {
        let busy = id == "X5" && std::mem::replace(&mut *busy_once.lock().unwrap(), false);
        if busy {
            messages.push_str(r#"<m:GetItemResponseMessage ResponseClass="Error"><m:MessageText>busy</m:MessageText><m:ResponseCode>ErrorServerBusy</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:MessageXml><t:Value Name="BackOffMilliseconds">20</t:Value></m:MessageXml><m:Items/></m:GetItemResponseMessage>"#);
        } else if id == gone {
            messages.push_str(r#"<m:GetItemResponseMessage ResponseClass="Error"><m:MessageText>The specified object was not found in the store.</m:MessageText><m:ResponseCode>ErrorItemNotFound</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Items/></m:GetItemResponseMessage>"#);
        } else {
            messages.push_str(&format!(r#"<m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items><t:CalendarItem><t:ItemId Id="{id}" ChangeKey="CK-{id}"/><t:Subject>Subject {id}</t:Subject><t:Start>2026-05-06T08:00:00Z</t:Start><t:End>2026-05-06T09:00:00Z</t:End><t:IsCancelled>false</t:IsCancelled></t:CalendarItem></m:Items></m:GetItemResponseMessage>"#));
        }
    }
    ok(&format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>{messages}</m:ResponseMessages></m:GetItemResponse></s:Body></s:Envelope>"#
    ))
}

#[tokio::test]
async fn get_item_batches_by_ten_and_asks_again_for_what_was_not_processed() {
    let dir = tempfile::tempdir().unwrap();
    let busy_once = Arc::new(Mutex::new(true));
    let flag = busy_once.clone();
    let server = Server::start(Arc::new(move |_, request| {
        get_item_answer(request, &flag, "X7")
    }))
    .await;
    let client = EwsClient::new(settings(&server.url("http"), &dir)).unwrap();
    let ids: Vec<ItemId> = (0..12).map(|i| ItemId::new(format!("X{i}"))).collect();
    let property = pushgate::ews::ReservationProperty::new("R");
    let results = bounded(client.get_calendar_items(ROOM, &ids, &property))
        .await
        .unwrap();
    assert_eq!(results.len(), 12);
    for (i, result) in results.iter().enumerate() {
        if i == 7 {
            assert!(result.as_ref().unwrap_err().is_item_not_found());
        } else {
            let item = result.as_ref().unwrap();
            assert_eq!(
                item.item_id,
                ItemId::with_change_key(format!("X{i}"), format!("CK-X{i}"))
            );
            assert_eq!(
                item.subject.as_deref(),
                Some(format!("Subject X{i}").as_str())
            );
        }
    }
    let sent: Vec<usize> = server
        .received()
        .iter()
        .map(|r| r.body.matches("<t:ItemId ").count())
        .collect();
    assert_eq!(
        sent,
        [10, 1, 2],
        "a batch of ten, the busy one again, the rest"
    );
    assert!(server.received()[1].body.contains("<t:ItemId Id=\"X5\"/>"));
}
