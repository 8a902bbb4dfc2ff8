//! The client's settings: `[ews]` turned into checked values at the edge, secret files read once
//! (the bearer token file is read again whenever it changes, by `auth`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;

use super::error::EwsError;
use crate::config::{EwsAuth, EwsConfig, EWS_SERVER_VERSIONS};

/// A secret read from a file. Its `Debug` never shows it, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSettings {
    /// Client credentials grant against `token_url`; the token is cached and renewed before it
    /// expires, and once more after a 401.
    OAuth2 {
        token_url: Url,
        client_id: String,
        client_secret: Secret,
        scope: String,
    },
    Basic {
        username: String,
        password: Secret,
    },
    /// The token file is checked (modification time, size, inode) before each request and read
    /// again when it changed.
    Bearer {
        token_file: PathBuf,
    },
}

/// How reads (GetItem, FindItem, GetFolder) are retried after transient failures. Writes never
/// are. Not in `[ews]`: these bounds are the client's contract, tests shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first wait; each further wait doubles, with jitter (half to full).
    pub base_delay: Duration,
    /// No wait is longer. A back-off hint above it is not waited out here: the read fails with
    /// the hint, for the caller to honour.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EwsSettings {
    pub url: Url,
    pub auth: AuthSettings,
    /// `RequestServerVersion/@Version`.
    pub server_version: String,
    /// ExchangeImpersonation header plus X-AnchorMailbox; false: delegate access.
    pub impersonation: bool,
    /// Trust the operating system's root certificates.
    pub system_roots: bool,
    /// PEM certificates trusted in addition (`ca_file`, or a simulator's CA in tests).
    pub extra_ca_pem: Option<Vec<u8>>,
    pub allow_http: bool,
    /// Per attempt, from sending the request to the end of the answer.
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub retry: RetryPolicy,
}

impl EwsSettings {
    /// Settings with `[ews]`'s defaults for everything but the URL and the credentials.
    pub fn new(url: &str, auth: AuthSettings) -> Result<Self, EwsError> {
        let defaults = EwsConfig::default();
        Ok(EwsSettings {
            url: parse_url("url", url)?,
            auth,
            server_version: defaults.server_version,
            impersonation: defaults.impersonation,
            system_roots: true,
            extra_ca_pem: None,
            allow_http: defaults.allow_http,
            timeout: defaults.timeout,
            max_concurrency: defaults.max_concurrency,
            retry: RetryPolicy::default(),
        })
    }

    /// `[ews]` at the edge: reads the secret and CA files. `None` when no EWS is configured
    /// (empty `url`).
    pub fn from_config(config: &EwsConfig) -> Result<Option<Self>, EwsError> {
        if !config.is_enabled() {
            return Ok(None);
        }
        config
            .check()
            .map_err(|e| EwsError::Config(e.to_string()))?;
        let auth = match config.auth {
            EwsAuth::Oauth2 => AuthSettings::OAuth2 {
                token_url: parse_url("token_url", &config.token_url)?,
                client_id: config.client_id.trim().to_string(),
                client_secret: read_secret_file("client_secret_file", &config.client_secret_file)?,
                scope: config.scope.trim().to_string(),
            },
            EwsAuth::Basic => AuthSettings::Basic {
                username: config.username.clone(),
                password: read_secret_file("password_file", &config.password_file)?,
            },
            EwsAuth::Bearer => AuthSettings::Bearer {
                token_file: config.token_file.clone(),
            },
        };
        let extra_ca_pem = if config.ca_file.as_os_str().is_empty() {
            None
        } else {
            Some(std::fs::read(&config.ca_file).map_err(|e| {
                EwsError::Config(format!("`ews.ca_file` {}: {e}", config.ca_file.display()))
            })?)
        };
        let settings = EwsSettings {
            url: parse_url("url", &config.url)?,
            auth,
            server_version: config.server_version.clone(),
            impersonation: config.impersonation,
            system_roots: true,
            extra_ca_pem,
            allow_http: config.allow_http,
            timeout: config.timeout,
            max_concurrency: config.max_concurrency,
            retry: RetryPolicy::default(),
        };
        settings.check()?;
        Ok(Some(settings))
    }

    /// What must hold however the settings were made; `EwsClient::new` checks it again.
    pub fn check(&self) -> Result<(), EwsError> {
        check_scheme("ews.url", &self.url, self.allow_http)?;
        if let AuthSettings::OAuth2 { token_url, .. } = &self.auth {
            check_scheme("ews.token_url", token_url, self.allow_http)?;
        }
        if !EWS_SERVER_VERSIONS.contains(&self.server_version.as_str()) {
            return Err(EwsError::Config(format!(
                "`ews.server_version` {:?} is not an Exchange version the schema knows",
                self.server_version
            )));
        }
        if self.timeout.is_zero() {
            return Err(EwsError::Config(
                "`ews.timeout` must be longer than zero".into(),
            ));
        }
        if self.max_concurrency == 0 {
            return Err(EwsError::Config(
                "`ews.max_concurrency` must be at least 1".into(),
            ));
        }
        if self.retry.attempts == 0 {
            return Err(EwsError::Config(
                "read retry attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

fn parse_url(key: &str, value: &str) -> Result<Url, EwsError> {
    Url::parse(value.trim()).map_err(|e| EwsError::Config(format!("`ews.{key}` is not a URL: {e}")))
}

fn check_scheme(key: &str, url: &Url, allow_http: bool) -> Result<(), EwsError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(EwsError::Config(format!(
            "`{key}` is plain http://, which would send credentials in clear; use https:// or set ews.allow_http = true (test setups only)"
        ))),
        other => Err(EwsError::Config(format!(
            "`{key}` scheme {other:?} is not http(s)"
        ))),
    }
}

/// A password or client secret: the file's content without its final line break (a secret may
/// hold spaces or non-ASCII, so nothing else is trimmed). Never empty.
pub fn read_secret_file(key: &str, path: &Path) -> Result<Secret, EwsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EwsError::Config(format!("`ews.{key}` {}: {e}", path.display())))?;
    let secret = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(EwsError::Config(format!(
            "`ews.{key}` {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_url_means_no_settings() {
        assert_eq!(EwsSettings::from_config(&EwsConfig::default()), Ok(None));
    }

    #[test]
    fn secrets_are_read_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret with space\n").unwrap();
        let config = EwsConfig {
            url: "https://outlook.office365.com/EWS/Exchange.asmx".into(),
            token_url: "https://login.example/t/oauth2/v2.0/token".into(),
            client_id: "app".into(),
            client_secret_file: secret.clone(),
            ..EwsConfig::default()
        };
        let settings = EwsSettings::from_config(&config).unwrap().unwrap();
        match &settings.auth {
            AuthSettings::OAuth2 { client_secret, .. } => {
                assert_eq!(client_secret.expose(), "s3cret with space")
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{settings:?}").contains("s3cret"));

        std::fs::write(&secret, "\n").unwrap();
        let err = EwsSettings::from_config(&config).unwrap_err().to_string();
        assert!(
            err.contains("client_secret_file") && err.contains("empty"),
            "{err}"
        );
        let missing = EwsConfig {
            client_secret_file: dir.path().join("missing"),
            ..config
        };
        let err = EwsSettings::from_config(&missing).unwrap_err().to_string();
        assert!(err.contains("client_secret_file"), "{err}");
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let auth = AuthSettings::Bearer {
            token_file: "t".into(),
        };
        let mut settings = EwsSettings::new("http://127.0.0.1:1/EWS/Exchange.asmx", auth).unwrap();
        let err = settings.check().unwrap_err().to_string();
        assert!(err.contains("allow_http"), "{err}");
        settings.allow_http = true;
        settings.check().unwrap();
    }
}
