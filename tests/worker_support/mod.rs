//! Shared helpers of the worker and store tests (and the worker bench): a throw-away PostgreSQL
//! schema, notification models and Exchange-style bodies, a small HTTP/1.1 client on real
//! sockets, and worker configurations. Loopback only.
#![allow(dead_code)]

#[path = "../skip/mod.rs"]
pub mod skip;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pushgate::config::{Config, UnknownSubscriptions};
use pushgate::notification::{
    Event, EventKind, Notification, NotificationContent, ObjectId, ObjectKind, ResponseClass,
    ResponseMessage,
};
use pushgate::store::IngestRequest;
use time::OffsetDateTime;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const TOKEN: &str = "test-gateway-token-0123456789";
pub const LEGACY_PATH: &str = "/Webservices/SyncNotification.svc";

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) if config.get_password().is_some() => match url.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((credentials, host)) => {
                    let user = credentials.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{host}")
                }
                None => url.to_string(),
            },
            // key=value form
            None => url
                .split_whitespace()
                .map(|part| {
                    if part.starts_with("password=") {
                        "password=***"
                    } else {
                        part
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        },
        _ => url.to_string(),
    }
}

pub fn postgres_base_url() -> String {
    std::env::var("PUSHGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string())
}

/// A fresh schema in the test database, dropped when this is dropped. `url` points the worker
/// at it through `search_path`.
pub struct PgSchema {
    pub base_url: String,
    pub schema: String,
    pub url: String,
}

impl PgSchema {
    /// `None` (after [`skip::skip`] said why) when nothing listens where the test database
    /// should be. Any other connection error (wrong password, unknown database, TLS demanded,
    /// timeout) fails the test: that is a broken setup, not a missing server.
    pub async fn create(test: &str) -> Option<PgSchema> {
        let base_url = postgres_base_url();
        let client = match pg_connect(&base_url).await {
            Ok(client) => client,
            Err(error) if skip::nothing_listens(&error) => {
                skip::skip_as(
                    test,
                    format!(
                        "no PostgreSQL server at {}: {}",
                        redact(&base_url),
                        skip::with_causes(&error)
                    ),
                );
                return None;
            }
            Err(error) => panic!(
                "PostgreSQL at {} refused the test's connection: {} \
                 (check PUSHGATE_TEST_POSTGRES_URL: user, password, database, TLS)",
                redact(&base_url),
                skip::with_causes(&error)
            ),
        };
        let schema = format!("pushgate_test_{}", rand::random::<u64>());
        if let Err(error) = client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
        {
            panic!("creating schema {schema}: {error}");
        }
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-csearch_path%3D{schema}");
        Some(PgSchema {
            base_url,
            schema,
            url,
        })
    }

    /// A client whose statements run in this schema.
    pub async fn client(&self) -> tokio_postgres::Client {
        pg_connect(&self.url).await.expect("connect to test schema")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let base_url = self.base_url.clone();
        let schema = self.schema.clone();
        // Drop may run inside a runtime: do the clean-up on a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                match pg_connect(&base_url).await {
                    Ok(client) => {
                        if let Err(error) = client
                            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .await
                        {
                            eprintln!("dropping schema {schema}: {error}");
                        }
                    }
                    Err(error) => eprintln!("dropping schema {schema}: {error}"),
                }
            });
        });
        let _ = cleanup.join();
    }
}

pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(3));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

// ---------------------------------------------------------------------------------------------
// Notification models and bodies

pub fn item(id: &str) -> ObjectId {
    ObjectId {
        kind: ObjectKind::Item,
        id: id.to_string(),
        change_key: Some("DwAAAA==".to_string()),
    }
}

pub fn folder(id: &str) -> ObjectId {
    ObjectId {
        kind: ObjectKind::Folder,
        id: id.to_string(),
        change_key: Some("AQAAAA==".to_string()),
    }
}

/// An event of `kind` on an item, with every field its kind allows.
pub fn event(kind: EventKind, watermark: Option<&str>) -> Event {
    if kind == EventKind::Status {
        return Event {
            kind,
            watermark: watermark.map(str::to_string),
            timestamp: None,
            object: None,
            parent_folder_id: None,
            old_object: None,
            old_parent_folder_id: None,
            unread_count: None,
        };
    }
    let tag = watermark.unwrap_or("none");
    Event {
        kind,
        watermark: watermark.map(str::to_string),
        timestamp: Some("2026-11-20T08:15:02Z".to_string()),
        object: Some(item(&format!("AAMkItem-{tag}"))),
        parent_folder_id: Some(folder("AAMkCalendar")),
        old_object: kind
            .has_old_ids()
            .then(|| item(&format!("AAMkOldItem-{tag}"))),
        old_parent_folder_id: kind.has_old_ids().then(|| folder("AAMkOldFolder")),
        unread_count: (kind == EventKind::Modified).then_some(0),
    }
}

pub fn notification(
    subscription: &str,
    previous: Option<&str>,
    events: Vec<Event>,
) -> Notification {
    Notification {
        response_messages: vec![ResponseMessage {
            response_class: ResponseClass::Success,
            response_code: Some("NoError".to_string()),
            message_text: None,
            subscription_id: Some(subscription.to_string()),
            notification: Some(NotificationContent {
                previous_watermark: previous.map(str::to_string),
                more_events: false,
                events,
            }),
        }],
    }
}

pub fn error_notification(subscription: Option<&str>) -> Notification {
    Notification {
        response_messages: vec![ResponseMessage {
            response_class: ResponseClass::Error,
            response_code: Some("ErrorReadEventsFailed".to_string()),
            message_text: Some("The events couldn't be read.".to_string()),
            subscription_id: subscription.map(str::to_string),
            notification: None,
        }],
    }
}

pub fn request(notification: Notification) -> IngestRequest {
    let now = OffsetDateTime::now_utc();
    // The databases keep microseconds; keep the test's value comparable.
    let now = now
        .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .expect("valid nanosecond");
    IngestRequest {
        tenant: "default".to_string(),
        request_id: Some(format!("req-{}", rand::random::<u32>())),
        received_at: now,
        notification,
    }
}

/// Watermark `n` of subscription `s`: base64-looking and unique.
pub fn watermark(subscription: &str, n: usize) -> String {
    format!("AQAAA{subscription}W{n:08}AAAA=")
}

/// An Exchange-style `SendNotification` body (prefixes as Exchange Online uses them) with one
/// Modified (item) + Modified (folder) pair per watermark pair, or a StatusEvent when `events`
/// is empty.
pub fn body(subscription: &str, previous: &str, watermarks: &[String]) -> String {
    let mut events = String::new();
    if watermarks.is_empty() {
        events.push_str("<t:StatusEvent/>");
    }
    for (i, watermark) in watermarks.iter().enumerate() {
        if i % 2 == 0 {
            events.push_str(&format!(
                "<t:ModifiedEvent><t:Watermark>{watermark}</t:Watermark><t:TimeStamp>2026-11-20T08:15:02Z</t:TimeStamp>\
                 <t:ItemId Id=\"AAMkItem{subscription}x{i}\" ChangeKey=\"DwAAAA==\" />\
                 <t:ParentFolderId Id=\"AAMkCalendar{subscription}\" ChangeKey=\"AQAAAA==\" /></t:ModifiedEvent>"
            ));
        } else {
            events.push_str(&format!(
                "<t:ModifiedEvent><t:Watermark>{watermark}</t:Watermark><t:TimeStamp>2026-11-20T08:15:02Z</t:TimeStamp>\
                 <t:FolderId Id=\"AAMkCalendar{subscription}\" ChangeKey=\"AgAAAA==\" />\
                 <t:ParentFolderId Id=\"AAMkRoot{subscription}\" ChangeKey=\"AQAAAA==\" /></t:ModifiedEvent>"
            ));
        }
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap11:Envelope xmlns:soap11=\"http://schemas.xmlsoap.org/soap/envelope/\">\
         <soap11:Header><t:RequestServerVersion xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\" Version=\"Exchange2010\" /></soap11:Header>\
         <soap11:Body><m:SendNotification xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\" xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\">\
         <m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode>\
         <m:Notification><t:SubscriptionId>{subscription}</t:SubscriptionId><t:PreviousWatermark>{previous}</t:PreviousWatermark>\
         <t:MoreEvents>false</t:MoreEvents>{events}</m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages>\
         </m:SendNotification></soap11:Body></soap11:Envelope>"
    )
}

pub fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/notifications")
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// One HTTP/1.1 connection to the worker; requests on it go one after another (keep-alive).
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        assert!(addr.ip().is_loopback(), "tests talk to loopback only");
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, addr })
    }

    pub async fn post(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Answer> {
        let mut builder = http::Request::post(path)
            .header("host", self.addr.to_string())
            .header("content-type", "text/xml; charset=utf-8");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(body.into()))
            .map_err(std::io::Error::other)?;
        self.send(request).await
    }

    pub async fn send(&mut self, request: http::Request<Full<Bytes>>) -> std::io::Result<Answer> {
        self.sender.ready().await.map_err(std::io::Error::other)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// One request on a new connection (as Exchange does it), with the test token.
pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> std::io::Result<Answer> {
    Connection::open(addr)
        .await?
        .post(path, Some(TOKEN), body, &[])
        .await
}

/// An API call on a new connection: `method`, `path`, bearer `token`, JSON `body` (or none).
pub async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Answer> {
    let mut connection = Connection::open(addr).await?;
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .map_err(std::io::Error::other)?;
    connection.send(request).await
}

/// The token of the API in [`worker_config_with_api`].
pub const API_TOKEN: &str = "test-api-token-9876543210";

/// [`worker_config`] with the REST API switched on (token [`API_TOKEN`]).
pub fn worker_config_with_api(dir: &Path, database_url: &str) -> Config {
    let mut config = worker_config(dir, database_url);
    let token_file = dir.join("api.token");
    std::fs::write(&token_file, format!("{API_TOKEN}\n")).expect("write API token file");
    config.worker.api_token_file = token_file;
    config
}

/// GET on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut connection = Connection::open(addr).await?;
    let request = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(std::io::Error::other)?;
    connection.send(request).await
}

// ---------------------------------------------------------------------------------------------
// Worker configuration

/// A configuration for a worker on loopback ports chosen by the OS, storing in `database_url`,
/// with the test token written into `dir`.
pub fn worker_config(dir: &Path, database_url: &str) -> Config {
    let token_file = dir.join("gateway.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token file");
    let mut config = Config::default();
    config.worker.listen = "127.0.0.1:0".to_string();
    config.worker.metrics_listen = "127.0.0.1:0".to_string();
    config.worker.database_url = database_url.to_string();
    config.worker.gateway_token_file = token_file;
    config.worker.unknown_subscriptions = UnknownSubscriptions::Accept;
    config.log.format = "text".to_string();
    config
}

pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("pushgate.db").display())
}

/// A free loopback port (bound, then released: for a child process's configuration).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

// ---------------------------------------------------------------------------------------------
// A database per test, and a worker on it

/// A fresh database: a SQLite file in a temp dir, or a PostgreSQL schema.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(tempfile::TempDir, PgSchema),
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        TestDb::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    /// `None` (after printing why) when PostgreSQL is not reachable.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let schema = PgSchema::create(test).await?;
        Some(TestDb::Postgres(
            tempfile::tempdir().expect("tempdir"),
            schema,
        ))
    }

    pub fn dir(&self) -> &Path {
        match self {
            TestDb::Sqlite(dir) | TestDb::Postgres(dir, _) => dir.path(),
        }
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite(dir) => sqlite_url(dir.path()),
            TestDb::Postgres(_, schema) => schema.url.clone(),
        }
    }

    pub fn config(&self) -> Config {
        worker_config(self.dir(), &self.url())
    }

    /// A store of its own on the same database, to look at what the worker wrote.
    pub async fn inspect(&self) -> std::sync::Arc<dyn pushgate::store::Store> {
        pushgate::store::open(&self.url())
            .await
            .expect("open store for inspection")
    }
}

/// Instantiates `async fn case(db: &TestDb)` once per backend: `mod sqlite`, `mod postgres`.
#[macro_export]
macro_rules! per_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::sqlite();
                    super::$case(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = super::TestDb::postgres(stringify!($case)).await else {
                        return;
                    };
                    super::$case(&db).await;
                }
            )*
        }
    };
}
