//! Typed configuration for every part of pushgate: one TOML file, overridable key by key from the
//! environment (`PUSHGATE__<SECTION>__<KEY>`), checked once into a validated form before anything
//! starts. A bad configuration stops start-up with one line naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The largest body the gateway will ever buffer: pingora replays at most 64 KiB of a buffered body.
pub const MAX_BODY_BYTES_CEILING: usize = 65_536;

/// Environment prefix; `PUSHGATE__GATEWAY__LISTEN` overrides `[gateway] listen`.
pub const ENV_PREFIX: &str = "PUSHGATE__";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub validator: ValidatorConfig,
    pub ranges: RangesConfig,
    pub worker: WorkerConfig,
    pub subscriptions: SubscriptionsConfig,
    pub ews: EwsConfig,
    pub sync: SyncConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// TLS listener, the one Exchange connects to. Empty: no TLS listener (then `plain_listen`
    /// must be set, for setups where a load balancer terminates TLS).
    pub listen: String,
    /// Optional plain-HTTP listener for on-premises setups where a load balancer terminates TLS.
    /// Empty: off.
    pub plain_listen: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// How often the certificate and key files are checked for a renewal.
    #[serde(with = "humantime_serde")]
    pub tls_reload_interval: Duration,
    pub ranges_file: PathBuf,
    /// How often the ranges file is checked for a new version.
    #[serde(with = "humantime_serde")]
    pub ranges_reload_interval: Duration,
    /// Where valid notifications go: `http://host:port` (the worker).
    pub upstream: String,
    pub upstream_token_file: PathBuf,
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    pub metrics_listen: String,
    /// Notification paths, compared on the raw request path. The legacy IIS path is matched
    /// case-insensitively, every other path exactly.
    pub paths: Vec<String>,
    pub max_body_bytes: usize,
    /// Load balancers whose PROXY protocol header or `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Expect a PROXY protocol (v1 or v2) header on TLS connections from trusted proxies.
    pub proxy_protocol: bool,
    /// Administrators' networks: may open the confirmation page and `/healthz`, never POST.
    pub probe_ranges: Vec<String>,
    /// Whole request header must arrive within this time after the connection is ready.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Whole request body must arrive within this time after the header.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// TLS handshake (and PROXY header) must complete within this time after accept.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel backlog.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Access log destination: `stdout`, `off`, or a file path (JSON lines, appended).
    pub access_log: String,
    /// Serving threads of the gateway, each a single-threaded runtime; 0 means one per core.
    pub threads: usize,
    /// Requests served on one connection from a `trusted_proxies` address (a pooling load
    /// balancer); 1 turns keep-alive off. Every other source gets one request per connection.
    pub keepalive_max_requests: u32,
    /// A kept-alive connection with no new request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_idle_timeout: Duration,
    /// Requests per second admitted from one client address (token bucket, refill rate); 0: off.
    pub rate_limit_per_source: u32,
    /// Requests one client address may send at once above the rate (bucket size).
    pub rate_limit_burst: u32,
    /// Connections open at once from one source address (the peer, or the client a PROXY header
    /// names); further ones are closed before TLS. 0: off.
    pub max_connections_per_source: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".into(),
            plain_listen: String::new(),
            tls_cert: "config/tls/cert.pem".into(),
            tls_key: "config/tls/key.pem".into(),
            tls_reload_interval: Duration::from_secs(5),
            ranges_file: "ranges/exchange-online.txt".into(),
            ranges_reload_interval: Duration::from_secs(2),
            upstream: "http://127.0.0.1:8080".into(),
            upstream_token_file: "config/upstream.token".into(),
            upstream_timeout: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(5),
            metrics_listen: "127.0.0.1:9464".into(),
            paths: crate::endpoint::DEFAULT_PATHS
                .iter()
                .map(|path| path.to_string())
                .collect(),
            max_body_bytes: MAX_BODY_BYTES_CEILING,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            probe_ranges: Vec::new(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(10),
            access_log: "stdout".into(),
            threads: 0,
            keepalive_max_requests: 1000,
            keepalive_idle_timeout: Duration::from_secs(75),
            rate_limit_per_source: 200,
            rate_limit_burst: 1000,
            max_connections_per_source: 256,
        }
    }
}

/// Bounds of the notification validator's hostile-input rules. The defaults are far above anything
/// Exchange sends (depth 9, names under 40 bytes, ids under 200 bytes, 50 events).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorConfig {
    pub max_depth: usize,
    pub max_name_bytes: usize,
    pub max_attribute_bytes: usize,
    pub max_attributes: usize,
    pub max_text_bytes: usize,
    pub max_events: usize,
    pub max_response_messages: usize,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        let limits = crate::notification::Limits::default();
        Self {
            max_depth: limits.max_depth,
            max_name_bytes: limits.max_name_bytes,
            max_attribute_bytes: limits.max_attribute_bytes,
            max_attributes: limits.max_attributes,
            max_text_bytes: limits.max_text_bytes,
            max_events: limits.max_events,
            max_response_messages: limits.max_response_messages,
        }
    }
}

/// The validator's own type, from `[validator]` (configuration becomes each part's types here, at
/// the edge).
impl From<&ValidatorConfig> for crate::notification::Limits {
    fn from(c: &ValidatorConfig) -> Self {
        crate::notification::Limits {
            max_depth: c.max_depth,
            max_name_bytes: c.max_name_bytes,
            max_attribute_bytes: c.max_attribute_bytes,
            max_attributes: c.max_attributes,
            max_text_bytes: c.max_text_bytes,
            max_events: c.max_events,
            max_response_messages: c.max_response_messages,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RangesConfig {
    /// Root of the Microsoft 365 endpoints web service.
    pub base_url: String,
    /// `Worldwide`, `USGovDoD`, `USGovGCCHigh` or `China`.
    pub instance: String,
    /// Endpoint set ids to admit (1 and 2 are the Exchange Online front ends).
    pub endpoint_sets: Vec<u32>,
    /// Also admit every set of these categories (`Optimize`, `Allow`, `Default`).
    pub categories: Vec<String>,
    /// Also admit every set marked `required`.
    pub include_required: bool,
    pub extra_ranges: Vec<String>,
    pub exclude_ranges: Vec<String>,
    /// Refuse a new list that admits this many percent fewer addresses than the current file.
    pub max_shrink_percent: f64,
    /// Refuse IPv4 prefixes shorter than this.
    pub min_prefix_v4: u8,
    /// Refuse IPv6 prefixes shorter than this.
    pub min_prefix_v6: u8,
    /// Keeps the client request id and the last version written.
    pub state_dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts for transient failures (timeouts, resets, 5xx), with exponential backoff.
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
}

impl Default for RangesConfig {
    fn default() -> Self {
        Self {
            base_url: "https://endpoints.office.com".into(),
            instance: "Worldwide".into(),
            endpoint_sets: vec![1, 2],
            categories: Vec::new(),
            include_required: false,
            extra_ranges: Vec::new(),
            exclude_ranges: Vec::new(),
            max_shrink_percent: 20.0,
            min_prefix_v4: 8,
            min_prefix_v6: 16,
            state_dir: "data/ranges-state".into(),
            timeout: Duration::from_secs(30),
            attempts: 3,
            retry_backoff: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSubscriptions {
    /// Store events of subscriptions the worker does not know and answer OK.
    Accept,
    /// Answer `Unsubscribe` to subscriptions the worker does not know.
    Unsubscribe,
}

#[cfg(feature = "worker")]
impl From<UnknownSubscriptions> for crate::store::UnknownSubscriptions {
    fn from(policy: UnknownSubscriptions) -> Self {
        match policy {
            UnknownSubscriptions::Accept => crate::store::UnknownSubscriptions::Accept,
            UnknownSubscriptions::Unsubscribe => crate::store::UnknownSubscriptions::Unsubscribe,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub listen: String,
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    pub gateway_token_file: PathBuf,
    /// Notification paths the worker serves; empty: the same as `[gateway] paths` (one file for
    /// both parts usually).
    pub paths: Vec<String>,
    pub metrics_listen: String,
    pub retention_days: u32,
    pub unknown_subscriptions: UnknownSubscriptions,
    /// Bearer token of the REST API (`/api/v1/...`). Empty: the API is off.
    pub api_token_file: PathBuf,
    /// Speed of the worker's own clock (watchdog, renewals, back-off): 1.0 is real time, 0.001
    /// makes Exchange's minutes pass in milliseconds. For tests and the demo only.
    pub time_scale: f64,
    /// Longest a notification waits for others to share its commit.
    #[serde(with = "humantime_serde")]
    pub group_commit_wait: Duration,
    /// Most notifications in one commit.
    pub group_commit_max: usize,
    /// After `gateway_token_file` changes, the previous token is still accepted this long, so
    /// gateway and worker need not pick the new one up at the same instant.
    #[serde(with = "humantime_serde")]
    pub token_grace: Duration,
    /// Names this worker among the replicas sharing a database; its claims and leases carry it,
    /// so that after a crash the restarted worker takes back what its previous run held at once
    /// instead of waiting for the leases to expire. Empty: the host name and the listen port.
    pub instance: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://data/pushgate.db".into(),
            gateway_token_file: "config/upstream.token".into(),
            paths: Vec::new(),
            metrics_listen: "127.0.0.1:9465".into(),
            retention_days: 30,
            unknown_subscriptions: UnknownSubscriptions::Unsubscribe,
            api_token_file: PathBuf::new(),
            time_scale: 1.0,
            group_commit_wait: Duration::from_millis(2),
            group_commit_max: 256,
            token_grace: Duration::from_secs(300),
            instance: String::new(),
        }
    }
}

/// Process A: the push subscription the worker keeps on every synced mailbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionsConfig {
    /// The callback URL Exchange posts to, used as is (rule 1). Environment:
    /// `ExchangePushNotificationEndpointUrl`.
    pub endpoint_url: String,
    /// Without `endpoint_url`: `{idp_root_url}/Webservices/SyncNotification.svc?{tenant}` (rule 2)
    /// instead of `{idp_root_url}/api/webhooks/exchange` (rule 3). Environment:
    /// `ExchangePushNotificationUseLegacyEndpoint`.
    pub use_legacy_endpoint: bool,
    /// The public root URL the gateway is reached at. Environment: `IdpRootUrl`.
    pub idp_root_url: String,
    /// Minutes between Exchange's heartbeats on a quiet subscription (1 to 1440). Silence for
    /// twice this long renews the subscription.
    pub status_frequency: u32,
    /// Most Subscribe calls per second, all mailboxes together.
    pub subscribe_rate: u32,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        Self {
            endpoint_url: String::new(),
            use_legacy_endpoint: false,
            idp_root_url: String::new(),
            status_frequency: 5,
            subscribe_rate: 20,
        }
    }
}

/// The product's own environment names for the callback URL, and the keys they set. They win
/// over the file and over the `PUSHGATE__SUBSCRIPTIONS__*` form.
pub const PRODUCT_ENV_NAMES: [(&str, &str); 3] = [
    ("ExchangePushNotificationEndpointUrl", "endpoint_url"),
    (
        "ExchangePushNotificationUseLegacyEndpoint",
        "use_legacy_endpoint",
    ),
    ("IdpRootUrl", "idp_root_url"),
];
/// How the worker authenticates to Exchange Web Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EwsAuth {
    /// OAuth 2.0 client credentials (Exchange Online app-only access).
    Oauth2,
    /// User name and password (on-premises Exchange).
    Basic,
    /// A bearer token from a file that something else keeps fresh.
    Bearer,
}

/// `[sync]`: keeping reservations and their calendar items in step (processes B-F).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Name of the extended property (set PublicStrings, type String) that carries the
    /// reservation id on the calendar item.
    pub reservation_property: String,
    /// Failed attempts after which an event is parked as a dead letter and a calendar write is
    /// given up.
    pub max_attempts: u32,
    /// How far back a resynchronisation reads the calendar, in days.
    pub resync_past_days: u32,
    /// How far ahead a resynchronisation reads the calendar, in days.
    pub resync_future_days: u32,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            reservation_property: "AppointmentOid".to_string(),
            max_attempts: 10,
            resync_past_days: 7,
            resync_future_days: 365,
        }
    }
}

/// Longest resync window either way, in days: five years, as far as a reservation may lie.
pub const MAX_RESYNC_DAYS: u32 = 5 * 365 + 1;

impl SyncConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        let property = &self.reservation_property;
        if property.trim().is_empty()
            || property.chars().count() > 255
            || property.chars().any(char::is_control)
        {
            return Err(ConfigError::key(
                "sync.reservation_property",
                "must be 1 to 255 characters without control characters",
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::key("sync.max_attempts", "must be at least 1"));
        }
        if self.resync_past_days > MAX_RESYNC_DAYS {
            return Err(ConfigError::key(
                "sync.resync_past_days",
                format!(
                    "must be 0 to {MAX_RESYNC_DAYS} (five years, as far as a reservation may lie)"
                ),
            ));
        }
        if !(1..=MAX_RESYNC_DAYS).contains(&self.resync_future_days) {
            return Err(ConfigError::key(
                "sync.resync_future_days",
                format!(
                    "must be 1 to {MAX_RESYNC_DAYS} (five years, as far as a reservation may lie)"
                ),
            ));
        }
        Ok(())
    }
}

/// `[ews]`: the worker's connection to Exchange Web Services (connection 2). An empty `url` means
/// no EWS is configured: the worker then only stores what the gateway forwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EwsConfig {
    /// `https://host/EWS/Exchange.asmx`; empty: no EWS.
    pub url: String,
    pub auth: EwsAuth,
    /// OAuth 2.0 token endpoint (`auth = "oauth2"`).
    pub token_url: String,
    pub client_id: String,
    pub client_secret_file: PathBuf,
    pub scope: String,
    /// `auth = "basic"`.
    pub username: String,
    pub password_file: PathBuf,
    /// `auth = "bearer"`: read again whenever the file changes.
    pub token_file: PathBuf,
    /// `RequestServerVersion`, one of the schema's ExchangeVersionType values.
    pub server_version: String,
    /// Act for each mailbox with the ExchangeImpersonation header; false: delegate access.
    pub impersonation: bool,
    /// Extra PEM certificates trusted besides the system roots; empty: none.
    pub ca_file: PathBuf,
    /// Allow `http://` URLs (credentials then travel in clear).
    pub allow_http: bool,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests in flight at once, across all mailboxes.
    pub max_concurrency: usize,
}

/// Exchange Online's app-only scope.
pub const EWS_DEFAULT_SCOPE: &str = "https://outlook.office365.com/.default";

/// The schema's `ExchangeVersionType` values (types.xsd), the only ones `RequestServerVersion`
/// accepts.
pub const EWS_SERVER_VERSIONS: &[&str] = &crate::notification::EXCHANGE_VERSIONS;

impl Default for EwsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            auth: EwsAuth::Oauth2,
            token_url: String::new(),
            client_id: String::new(),
            client_secret_file: PathBuf::new(),
            scope: EWS_DEFAULT_SCOPE.into(),
            username: String::new(),
            password_file: PathBuf::new(),
            token_file: PathBuf::new(),
            server_version: "Exchange2013".into(),
            impersonation: true,
            ca_file: PathBuf::new(),
            allow_http: false,
            timeout: Duration::from_secs(30),
            max_concurrency: 8,
        }
    }
}

impl EwsConfig {
    /// Whether EWS is configured at all (an empty `url` means ingest only).
    pub fn is_enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The `[ews]` checks; the auth-specific keys only matter once `url` is set.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !EWS_SERVER_VERSIONS.contains(&self.server_version.as_str()) {
            return Err(ConfigError::key(
                "ews.server_version",
                format!(
                    "{:?} is not an Exchange version the schema knows (e.g. Exchange2013, Exchange2016, V2018_01_08)",
                    self.server_version
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::key("ews.timeout", "must be longer than zero"));
        }
        if self.max_concurrency == 0 {
            return Err(ConfigError::key(
                "ews.max_concurrency",
                "must be at least 1",
            ));
        }
        if !self.is_enabled() {
            return Ok(());
        }
        check_ews_url("ews.url", &self.url, self.allow_http)?;
        let required_path = |key: &str, value: &Path| {
            if value.as_os_str().is_empty() {
                Err(ConfigError::key(
                    key,
                    format!("is required with ews.auth = \"{}\"", self.auth_name()),
                ))
            } else {
                Ok(())
            }
        };
        let required_text = |key: &str, value: &str| {
            if value.trim().is_empty() {
                Err(ConfigError::key(
                    key,
                    format!("is required with ews.auth = \"{}\"", self.auth_name()),
                ))
            } else {
                Ok(())
            }
        };
        match self.auth {
            EwsAuth::Oauth2 => {
                required_text("ews.token_url", &self.token_url)?;
                check_ews_url("ews.token_url", &self.token_url, self.allow_http)?;
                required_text("ews.client_id", &self.client_id)?;
                required_path("ews.client_secret_file", &self.client_secret_file)?;
                required_text("ews.scope", &self.scope)?;
            }
            EwsAuth::Basic => {
                required_text("ews.username", &self.username)?;
                if self.username.contains(':') {
                    return Err(ConfigError::key(
                        "ews.username",
                        "must not contain `:` (basic authentication cannot carry it)",
                    ));
                }
                required_path("ews.password_file", &self.password_file)?;
            }
            EwsAuth::Bearer => required_path("ews.token_file", &self.token_file)?,
        }
        Ok(())
    }

    fn auth_name(&self) -> &'static str {
        match self.auth {
            EwsAuth::Oauth2 => "oauth2",
            EwsAuth::Basic => "basic",
            EwsAuth::Bearer => "bearer",
        }
    }
}

/// An absolute `https://` URL with a host, or `http://` when `allow_http` is set.
fn check_ews_url(key: &str, value: &str, allow_http: bool) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| ConfigError::key(key, format!("{value:?} is not a URL: {e}")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::key(key, format!("{value:?} has no host")));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(ConfigError::key(
            key,
            "is plain http://, which sends credentials in clear; use https:// or set ews.allow_http = true (test setups only)",
        )),
        other => Err(ConfigError::key(
            key,
            format!("scheme {other:?} is not http(s)"),
        )),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// `json` or `text`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "json".into(),
        }
    }
}

/// A configuration problem, worded for the one line start-up prints before it stops.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn key(key: &str, problem: impl std::fmt::Display) -> Self {
        ConfigError(format!("`{key}`: {problem}"))
    }
}

impl Config {
    /// Reads `path` (when given), applies `PUSHGATE__*` overrides, then the product's own
    /// environment names ([`PRODUCT_ENV_NAMES`]), and checks every key.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = Self::load_unchecked(path, Env::prefixed(ENV_PREFIX).split("__"))?;
        config.apply_product_env(|name| std::env::var(name).ok())?;
        config.check()?;
        Ok(config)
    }

    /// Same as [`Config::load`] with the `PUSHGATE__*` provider given and no product names, so
    /// tests need not touch the process environment.
    pub fn load_with_env(path: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let config = Self::load_unchecked(path, env)?;
        config.check()?;
        Ok(config)
    }

    /// Applies the product's environment names (`lookup` reads one variable), each winning over
    /// what the file and `PUSHGATE__*` said.
    pub fn apply_product_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for (name, key) in PRODUCT_ENV_NAMES {
            let Some(value) = lookup(name) else { continue };
            let s = &mut self.subscriptions;
            match key {
                "endpoint_url" => s.endpoint_url = value.trim().to_string(),
                "idp_root_url" => s.idp_root_url = value.trim().to_string(),
                _ => {
                    s.use_legacy_endpoint = match value.trim().to_ascii_lowercase().as_str() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" | "" => false,
                        _ => {
                            return Err(ConfigError(format!(
                                "`subscriptions.{key}`: {value:?} is not true or false \
                                 (in environment variable {name})"
                            )))
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn load_unchecked(path: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(env.map(|key| key.as_str().to_ascii_lowercase().into()));
        figment.extract().map_err(|e| ConfigError(one_line(&e)))
    }

    /// Parses a TOML document (no environment): for tests and `pushgate config check`.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError(one_line(&e)))?;
        config.check()?;
        Ok(config)
    }

    /// Semantic checks that serde cannot express. Each names the key it refuses.
    pub fn check(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        if g.listen.is_empty() && g.plain_listen.is_empty() {
            return Err(ConfigError::key(
                "gateway.listen",
                "is empty and so is gateway.plain_listen: the gateway would listen nowhere",
            ));
        }
        if !g.listen.is_empty() {
            check_socket_addr("gateway.listen", &g.listen)?;
        }
        if !g.plain_listen.is_empty() {
            check_socket_addr("gateway.plain_listen", &g.plain_listen)?;
        }
        check_socket_addr("gateway.metrics_listen", &g.metrics_listen)?;
        check_upstream_url("gateway.upstream", &g.upstream)?;
        if g.max_body_bytes == 0 || g.max_body_bytes > MAX_BODY_BYTES_CEILING {
            return Err(ConfigError::key(
                "gateway.max_body_bytes",
                format!("must be between 1 and {MAX_BODY_BYTES_CEILING}"),
            ));
        }
        if g.paths.is_empty() {
            return Err(ConfigError::key("gateway.paths", "needs at least one path"));
        }
        check_paths("gateway.paths", &g.paths)?;
        check_paths("worker.paths", &self.worker.paths)?;
        if !self.worker.instance.is_empty() && !is_instance_name(&self.worker.instance) {
            return Err(ConfigError::key(
                "worker.instance",
                format!("must be 1 to {MAX_INSTANCE_CHARS} characters of A-Z a-z 0-9 _ . : -"),
            ));
        }
        check_cidrs("gateway.trusted_proxies", &g.trusted_proxies)?;
        check_cidrs("gateway.probe_ranges", &g.probe_ranges)?;
        for (key, value) in [
            ("gateway.upstream_timeout", g.upstream_timeout),
            (
                "gateway.upstream_connect_timeout",
                g.upstream_connect_timeout,
            ),
            ("gateway.header_timeout", g.header_timeout),
            ("gateway.body_timeout", g.body_timeout),
            ("gateway.handshake_timeout", g.handshake_timeout),
            ("gateway.tls_reload_interval", g.tls_reload_interval),
            ("gateway.ranges_reload_interval", g.ranges_reload_interval),
            ("gateway.keepalive_idle_timeout", g.keepalive_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::key(key, "must be longer than zero"));
            }
        }
        if g.upstream_timeout >= Duration::from_secs(60) {
            return Err(ConfigError::key(
                "gateway.upstream_timeout",
                "must stay below Exchange's 60 s, or Exchange gives up before the gateway answers",
            ));
        }
        if g.max_connections == 0 {
            return Err(ConfigError::key(
                "gateway.max_connections",
                "must be at least 1",
            ));
        }
        if g.keepalive_max_requests == 0 {
            return Err(ConfigError::key(
                "gateway.keepalive_max_requests",
                "must be at least 1 (1: one request per connection)",
            ));
        }
        if g.rate_limit_per_source > 0 && g.rate_limit_burst == 0 {
            return Err(ConfigError::key(
                "gateway.rate_limit_burst",
                "must be at least 1 while gateway.rate_limit_per_source is on",
            ));
        }

        let v = &self.validator;
        for (key, value) in [
            ("validator.max_depth", v.max_depth),
            ("validator.max_name_bytes", v.max_name_bytes),
            ("validator.max_attribute_bytes", v.max_attribute_bytes),
            ("validator.max_attributes", v.max_attributes),
            ("validator.max_text_bytes", v.max_text_bytes),
            ("validator.max_events", v.max_events),
            ("validator.max_response_messages", v.max_response_messages),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        if v.max_depth < 9 {
            return Err(ConfigError::key(
                "validator.max_depth",
                "must be at least 9, the depth of every real notification",
            ));
        }

        let r = &self.ranges;
        if !["Worldwide", "USGovDoD", "USGovGCCHigh", "China"].contains(&r.instance.as_str()) {
            return Err(ConfigError::key(
                "ranges.instance",
                "must be one of Worldwide, USGovDoD, USGovGCCHigh, China",
            ));
        }
        if !(r.base_url.starts_with("https://") || r.base_url.starts_with("http://")) {
            return Err(ConfigError::key(
                "ranges.base_url",
                "must be an http(s) URL",
            ));
        }
        check_cidrs("ranges.extra_ranges", &r.extra_ranges)?;
        check_cidrs("ranges.exclude_ranges", &r.exclude_ranges)?;
        if !(0.0..=100.0).contains(&r.max_shrink_percent) {
            return Err(ConfigError::key(
                "ranges.max_shrink_percent",
                "must be between 0 and 100",
            ));
        }
        if r.min_prefix_v4 > 32 {
            return Err(ConfigError::key(
                "ranges.min_prefix_v4",
                "must be at most 32",
            ));
        }
        if r.min_prefix_v6 > 128 {
            return Err(ConfigError::key(
                "ranges.min_prefix_v6",
                "must be at most 128",
            ));
        }
        if r.attempts == 0 {
            return Err(ConfigError::key("ranges.attempts", "must be at least 1"));
        }
        if r.timeout.is_zero() {
            return Err(ConfigError::key(
                "ranges.timeout",
                "must be longer than zero",
            ));
        }

        let w = &self.worker;
        check_socket_addr("worker.listen", &w.listen)?;
        check_socket_addr("worker.metrics_listen", &w.metrics_listen)?;
        if !(w.database_url.starts_with("sqlite://")
            || w.database_url.starts_with("postgres://")
            || w.database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::key(
                "worker.database_url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if w.group_commit_max == 0 {
            return Err(ConfigError::key(
                "worker.group_commit_max",
                "must be at least 1",
            ));
        }
        if !(w.time_scale > 0.0 && w.time_scale <= 1.0) {
            return Err(ConfigError::key(
                "worker.time_scale",
                "must be above 0 and at most 1 (1 is real time)",
            ));
        }

        let s = &self.subscriptions;
        if !(1..=1440).contains(&s.status_frequency) {
            return Err(ConfigError::key(
                "subscriptions.status_frequency",
                "must be 1 to 1440 minutes, as Exchange accepts",
            ));
        }
        if s.subscribe_rate == 0 {
            return Err(ConfigError::key(
                "subscriptions.subscribe_rate",
                "must be at least 1 per second",
            ));
        }

        self.ews.check()?;
        self.sync.check()?;
        // A worker that subscribes must be able to tell Exchange where to post.
        #[cfg(feature = "worker")]
        if self.ews.is_enabled()
            || !self.subscriptions.endpoint_url.is_empty()
            || !self.subscriptions.idp_root_url.is_empty()
        {
            let s = &self.subscriptions;
            crate::subscriptions::CallbackUrl::from_config(s)
                .map_err(|e| ConfigError::key(e.key, e.problem))?;
        }

        if !["json", "text"].contains(&self.log.format.as_str()) {
            return Err(ConfigError::key("log.format", "must be json or text"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::key(
                "log.level",
                "is not a valid level or filter",
            ));
        }
        Ok(())
    }
}

fn one_line(error: &figment::Error) -> String {
    // figment's own wording carries its profile and an upper-case key for environment values;
    // say instead which key, what is wrong, and where the value came from.
    let key = error
        .path
        .iter()
        .map(|part| part.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".");
    let metadata = error.metadata.as_ref();
    let origin = match metadata.and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
        _ if metadata.is_some_and(|m| m.name.contains("environment")) => format!(
            " (in environment variable {ENV_PREFIX}{})",
            key.to_ascii_uppercase().replace('.', "__")
        ),
        _ => String::new(),
    };
    let problem = error.kind.to_string().replace('\n', " ");
    if key.is_empty() {
        format!("{problem}{origin}")
    } else {
        format!("`{key}`: {problem}{origin}")
    }
}

fn check_paths(key: &str, paths: &[String]) -> Result<(), ConfigError> {
    for path in paths {
        if !is_plain_path(path) {
            return Err(ConfigError::key(
                key,
                format!(
                    "{path:?} must start with `/` and hold no query, percent-encoding or dot segment"
                ),
            ));
        }
    }
    Ok(())
}

/// Longest `[worker] instance`.
const MAX_INSTANCE_CHARS: usize = 100;

fn is_instance_name(name: &str) -> bool {
    (1..=MAX_INSTANCE_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

impl WorkerConfig {
    /// The name of this worker among replicas: `instance`, or the host name and the listen port
    /// (two replicas on one host listen on different ports). Host names outside the allowed
    /// characters are reduced to them.
    pub fn instance_name(&self) -> String {
        if !self.instance.is_empty() {
            return self.instance.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            .take(64)
            .collect();
        let port = self
            .listen
            .parse::<SocketAddr>()
            .map_or(0, |addr| addr.port());
        let host = if host.is_empty() { "worker" } else { &host };
        format!("{host}:{port}")
    }

    /// The notification paths the worker serves: its own, or the gateway's when it names none.
    pub fn notification_paths<'a>(&'a self, gateway: &'a GatewayConfig) -> &'a [String] {
        if self.paths.is_empty() {
            &gateway.paths
        } else {
            &self.paths
        }
    }
}

fn check_socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse::<SocketAddr>()
        .map_err(|_| ConfigError::key(key, format!("{value:?} is not an address:port")))
}

fn check_upstream_url(key: &str, value: &str) -> Result<(), ConfigError> {
    parse_upstream(value)
        .map(|_| ())
        .map_err(|e| ConfigError::key(key, e))
}

/// A path fit for `[gateway] paths`: absolute, no query or fragment, no percent-encoding, no dot
/// segments, no backslash, nothing outside visible ASCII. Requests are matched against these on
/// the raw request target, so a configured path must be one a request could spell literally.
pub fn is_plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#' | b'\\'))
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

/// The upstream the gateway forwards to, from `[gateway] upstream` (`http://host:port`, where host
/// is an IP address: the gateway never resolves names on the request path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamAddr {
    pub addr: SocketAddr,
}

/// Parses `http://IP:PORT` (an optional trailing `/` is allowed; nothing else after the port).
pub fn parse_upstream(value: &str) -> Result<UpstreamAddr, String> {
    let rest = value.strip_prefix("http://").ok_or_else(|| {
        format!("{value:?} must start with http:// (the worker link is plain HTTP on the intranet)")
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let addr = rest
        .parse::<SocketAddr>()
        .map_err(|_| format!("{value:?} must be http://IP:PORT, e.g. http://127.0.0.1:8080"))?;
    Ok(UpstreamAddr { addr })
}

/// Parses a list of CIDRs or single addresses (a bare address is its own /32 or /128).
pub fn parse_cidrs(values: &[String]) -> Result<Vec<IpNet>, String> {
    values
        .iter()
        .map(|value| parse_cidr(value).ok_or_else(|| format!("{value:?} is not a CIDR or address")))
        .collect()
}

/// One CIDR or bare address.
pub fn parse_cidr(value: &str) -> Option<IpNet> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .ok()
        .or_else(|| value.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn check_cidrs(key: &str, values: &[String]) -> Result<(), ConfigError> {
    parse_cidrs(values)
        .map(|_| ())
        .map_err(|e| ConfigError::key(key, e))
}

/// Reads a bearer token file: one line, surrounding whitespace ignored, never empty.
pub fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError(format!(
            "token file {} must hold one line of printable ASCII",
            path.display()
        )));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default()
            .check()
            .expect("defaults pass their own checks");
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../config/pushgate.example.toml");
        let config = Config::from_toml_str(text).expect("example config parses");
        // Every key documented, with exactly the default value.
        let documented = toml::to_string(&config).unwrap();
        let defaults = toml::to_string(&Config::default()).unwrap();
        assert_eq!(documented, defaults);
        let example: toml::Table = text.parse().unwrap();
        let default_table: toml::Table = defaults.parse().unwrap();
        for (section, keys) in &default_table {
            let documented_keys = example[section].as_table().unwrap();
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    documented_keys.contains_key(key),
                    "{section}.{key} is not documented"
                );
            }
        }
    }

    #[test]
    fn sync_keys_are_checked_and_named() {
        let sync: SyncConfig = Config::from_toml_str(
            "[sync]\nreservation_property = \"BookingId\"\nmax_attempts = 3\n",
        )
        .unwrap()
        .sync;
        assert_eq!(sync.reservation_property, "BookingId");
        assert_eq!(sync.max_attempts, 3);
        assert_eq!(sync.resync_future_days, 365);
        for (text, key) in [
            ("reservation_property = \"\"", "sync.reservation_property"),
            (
                "reservation_property = \"a\\nb\"",
                "sync.reservation_property",
            ),
            ("max_attempts = 0", "sync.max_attempts"),
            ("resync_past_days = 5000", "sync.resync_past_days"),
            ("resync_future_days = 0", "sync.resync_future_days"),
            ("resync_future_days = 1827", "sync.resync_future_days"),
            ("batch = 3", "batch"),
        ] {
            let err = Config::from_toml_str(&format!("[sync]\n{text}\n")).unwrap_err();
            let err = err.to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[gateway]\nlisten_port = 1\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn body_limit_above_ceiling_is_refused() {
        let err = Config::from_toml_str("[gateway]\nmax_body_bytes = 70000\n").unwrap_err();
        assert!(err.to_string().contains("gateway.max_body_bytes"), "{err}");
    }

    #[test]
    fn bad_type_names_the_key() {
        let err = Config::from_toml_str("[gateway]\nmax_body_bytes = \"big\"\n").unwrap_err();
        assert!(err.to_string().contains("gateway.max_body_bytes"), "{err}");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error type
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("p.toml", "[gateway]\nlisten = \"127.0.0.1:1000\"\n")?;
            jail.set_env("PUSHGATE__GATEWAY__LISTEN", "127.0.0.1:2000");
            jail.set_env(
                "PUSHGATE__GATEWAY__TRUSTED_PROXIES",
                "[\"10.0.0.1\", \"10.0.0.0/8\"]",
            );
            jail.set_env("PUSHGATE__WORKER__RETENTION_DAYS", "7");
            let config = Config::load(Some(Path::new("p.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.gateway.listen, "127.0.0.1:2000");
            assert_eq!(config.gateway.trusted_proxies.len(), 2);
            assert_eq!(config.worker.retention_days, 7);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn bad_environment_value_names_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PUSHGATE__GATEWAY__LISTEN", "not-an-address");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("gateway.listen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn ews_keys_are_checked_once_a_url_is_set() {
        let url = "[ews]\nurl = \"https://outlook.office365.com/EWS/Exchange.asmx\"\n";
        let err = Config::from_toml_str(url).unwrap_err().to_string();
        assert!(
            err.contains("`ews.token_url`") && err.contains("oauth2"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let oauth = format!(
            "{url}token_url = \"https://login.microsoftonline.com/t/oauth2/v2.0/token\"\nclient_id = \"app\"\nclient_secret_file = \"secret\"\n"
        );
        let err = Config::from_toml_str(&oauth).unwrap_err().to_string();
        assert!(
            err.contains("`subscriptions.idp_root_url`"),
            "a callback URL is needed: {err}"
        );
        let oauth =
            format!("{oauth}[subscriptions]\nidp_root_url = \"https://push.contoso.com\"\n");
        let config = Config::from_toml_str(&oauth).unwrap();
        assert!(config.ews.is_enabled());
        assert_eq!(config.ews.scope, EWS_DEFAULT_SCOPE);

        let basic = format!("{url}auth = \"basic\"\nusername = \"svc\"\n");
        let err = Config::from_toml_str(&basic).unwrap_err().to_string();
        assert!(err.contains("`ews.password_file`"), "{err}");
        let bearer = format!("{url}auth = \"bearer\"\n");
        let err = Config::from_toml_str(&bearer).unwrap_err().to_string();
        assert!(err.contains("`ews.token_file`"), "{err}");

        let plain = "[ews]\nurl = \"http://exchange.corp/EWS/Exchange.asmx\"\nauth = \"bearer\"\ntoken_file = \"t\"\n";
        let err = Config::from_toml_str(plain).unwrap_err().to_string();
        assert!(
            err.contains("`ews.url`") && err.contains("allow_http"),
            "{err}"
        );
        Config::from_toml_str(&format!(
            "{plain}allow_http = true\n[subscriptions]\nidp_root_url = \"https://push.contoso.com\"\n"
        ))
        .unwrap();

        let err = Config::from_toml_str("[ews]\nserver_version = \"Exchange2099\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`ews.server_version`"), "{err}");
        let err = Config::from_toml_str("[ews]\nmax_concurrency = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`ews.max_concurrency`"), "{err}");
        let err = Config::from_toml_str("[ews]\nauth = \"ntlm\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ews.auth"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn ews_from_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PUSHGATE__EWS__URL", "http://127.0.0.1:9/EWS/Exchange.asmx");
            jail.set_env("PUSHGATE__EWS__AUTH", "bearer");
            jail.set_env("PUSHGATE__EWS__TOKEN_FILE", "/run/secrets/ews");
            jail.set_env("PUSHGATE__EWS__ALLOW_HTTP", "true");
            jail.set_env("PUSHGATE__EWS__TIMEOUT", "5s");
            jail.set_env("IdpRootUrl", "https://push.contoso.com");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.ews.auth, EwsAuth::Bearer);
            assert!(config.ews.allow_http);
            assert_eq!(config.ews.timeout, Duration::from_secs(5));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_products_environment_names_win() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "p.toml",
                "[subscriptions]\nendpoint_url = \"https://file.contoso.com/x\"\n",
            )?;
            jail.set_env(
                "PUSHGATE__SUBSCRIPTIONS__IDP_ROOT_URL",
                "https://prefixed.contoso.com",
            );
            jail.set_env("IdpRootUrl", "https://product.contoso.com");
            jail.set_env("ExchangePushNotificationEndpointUrl", "");
            jail.set_env("ExchangePushNotificationUseLegacyEndpoint", "True");
            let config = Config::load(Some(Path::new("p.toml"))).map_err(|e| e.to_string())?;
            let s = &config.subscriptions;
            assert_eq!(s.idp_root_url, "https://product.contoso.com");
            assert_eq!(
                s.endpoint_url, "",
                "an empty product variable clears the file's value"
            );
            assert!(s.use_legacy_endpoint);
            let url = crate::subscriptions::CallbackUrl::from_config(s).unwrap();
            assert_eq!(
                url.for_tenant("Default"),
                "https://product.contoso.com/Webservices/SyncNotification.svc?Default"
            );
            jail.set_env("ExchangePushNotificationUseLegacyEndpoint", "perhaps");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("subscriptions.use_legacy_endpoint")
                    && err.contains("ExchangePushNotificationUseLegacyEndpoint"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn plain_paths() {
        assert!(is_plain_path("/Webservices/SyncNotification.svc"));
        assert!(is_plain_path("/api/webhooks/exchange"));
        for bad in [
            "", "/", "api", "/a/../b", "/a/./b", "/a%2Fb", "/a?b", "/a\\b", "/a b",
        ] {
            assert!(!is_plain_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:8080").map(|u| u.addr.port()),
            Ok(8080)
        );
        assert!(parse_upstream("http://[::1]:8080/").is_ok());
        assert!(parse_upstream("https://127.0.0.1:8080").is_err());
        assert!(parse_upstream("http://worker:8080").is_err());
        assert!(parse_upstream("http://127.0.0.1:8080/path").is_err());
    }

    #[test]
    fn bare_address_is_a_host_cidr() {
        assert_eq!(parse_cidr("10.1.2.3").map(|n| n.prefix_len()), Some(32));
        assert_eq!(
            parse_cidr("2603:1026::/36").map(|n| n.prefix_len()),
            Some(36)
        );
        assert!(parse_cidr("10.1.2.3/33").is_none());
    }
}
