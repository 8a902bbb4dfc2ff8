//! Credentials for each request: an OAuth 2.0 client-credentials token (cached, renewed before it
//! expires and once after a 401), basic authentication, or a bearer token file read again when it
//! changes. Secrets go into request headers only, never into logs or errors.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{RequestBuilder, Url};
use tokio::time::Instant;

use super::error::EwsError;
use super::settings::{AuthSettings, Secret};
use crate::filestamp::FileStamp;

/// Renew no later than five minutes before expiry…
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// …and no earlier than at half the token's lifetime (short-lived tokens in tests).
const LONGEST_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What one request carries in its `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Authorization {
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

impl Authorization {
    pub(crate) fn apply(&self, request: RequestBuilder) -> RequestBuilder {
        match self {
            Authorization::Bearer(token) => request.bearer_auth(token.expose()),
            Authorization::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
        }
    }
}

pub(crate) enum Credentials {
    OAuth2(OAuth2),
    Basic { username: String, password: Secret },
    Bearer(BearerFile),
}

impl Credentials {
    pub(crate) fn new(settings: &AuthSettings, timeout: Duration) -> Self {
        match settings {
            AuthSettings::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => Credentials::OAuth2(OAuth2 {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                scope: scope.clone(),
                timeout,
                cache: tokio::sync::Mutex::new(None),
            }),
            AuthSettings::Basic { username, password } => Credentials::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            AuthSettings::Bearer { token_file } => Credentials::Bearer(BearerFile {
                path: token_file.clone(),
                cache: Mutex::new(None),
            }),
        }
    }

    pub(crate) async fn authorization(
        &self,
        http: &reqwest::Client,
    ) -> Result<Authorization, EwsError> {
        match self {
            Credentials::OAuth2(oauth) => oauth.token(http).await.map(Authorization::Bearer),
            Credentials::Basic { username, password } => Ok(Authorization::Basic {
                username: username.clone(),
                password: password.clone(),
            }),
            Credentials::Bearer(file) => file.token().map(Authorization::Bearer),
        }
    }

    /// After a 401 with `used`: drops that token so the next `authorization` fetches a new one.
    /// True when a renewed token may succeed where `used` failed (OAuth only: a basic password or
    /// a token file does not change because Exchange refused it).
    pub(crate) async fn refused(&self, used: &Authorization) -> bool {
        match (self, used) {
            (Credentials::OAuth2(oauth), Authorization::Bearer(token)) => {
                oauth.forget(token).await;
                true
            }
            _ => false,
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    renew_at: Instant,
    expires_at: Instant,
}

pub(crate) struct OAuth2 {
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    scope: String,
    timeout: Duration,
    /// Held while fetching, so concurrent requests wait for one fetch instead of each starting
    /// their own.
    cache: tokio::sync::Mutex<Option<CachedToken>>,
}

impl OAuth2 {
    async fn token(&self, http: &reqwest::Client) -> Result<Secret, EwsError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        if let Some(cached) = cache.as_ref() {
            if now < cached.renew_at {
                return Ok(cached.token.clone());
            }
        }
        match self.fetch(http).await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *cache = Some(fresh);
                Ok(token)
            }
            Err(e) => match cache.as_ref() {
                // Renewal failed early: the old token is still good for a while.
                Some(cached) if now < cached.expires_at => {
                    tracing::warn!(error = %e, "OAuth token renewal failed; using the current token until it expires");
                    Ok(cached.token.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn forget(&self, used: &Secret) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|c| &c.token == used) {
            *cache = None;
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<CachedToken, EwsError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("scope", self.scope.as_str()),
        ];
        let started = Instant::now();
        let response = http
            .post(self.token_url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| EwsError::Token {
                detail: format!(
                    "token endpoint unreachable: {}",
                    super::client::error_chain(&e)
                ),
                transient: true,
            })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| EwsError::Token {
            detail: format!(
                "reading the token answer: {}",
                super::client::error_chain(&e)
            ),
            transient: true,
        })?;
        let (token, lifetime) = read_token_answer(status, &body)?;
        tracing::debug!(lifetime_s = lifetime.as_secs(), "OAuth token obtained");
        Ok(CachedToken {
            token,
            renew_at: started + renew_after(lifetime),
            expires_at: started + lifetime,
        })
    }
}

/// When to renew a token that lives `lifetime`: five minutes before it expires, or a tenth of its
/// lifetime before when that is earlier, but never before half of it.
pub(crate) fn renew_after(lifetime: Duration) -> Duration {
    let margin = RENEW_MARGIN.max(lifetime / 10).min(lifetime / 2);
    lifetime - margin
}

/// The token endpoint's answer: `access_token` and `expires_in` (a number, or a string as
/// Azure AD v1 sends it), or the error it reports (`error`, `error_description`).
pub(crate) fn read_token_answer(status: u16, body: &[u8]) -> Result<(Secret, Duration), EwsError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let text = |key: &str| json.get(key).and_then(|v| v.as_str());
    if status != 200 {
        let mut detail = format!("token endpoint answered HTTP {status}");
        if let Some(error) = text("error") {
            detail.push_str(&format!(": {}", clip(error)));
        }
        if let Some(description) = text("error_description") {
            detail.push_str(&format!(" ({})", clip(description)));
        }
        return Err(EwsError::Token {
            detail,
            transient: status == 429 || status >= 500,
        });
    }
    let token = text("access_token")
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| EwsError::Token {
            detail: "token answer without a usable access_token".into(),
            transient: false,
        })?;
    let lifetime = match json.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .filter(|&s| s > 0)
    .ok_or_else(|| EwsError::Token {
        detail: "token answer without a positive expires_in".into(),
        transient: false,
    })?;
    Ok((
        Secret::new(token),
        Duration::from_secs(lifetime).min(LONGEST_TOKEN_LIFETIME),
    ))
}

fn clip(text: &str) -> String {
    text.chars().take(300).collect()
}

pub(crate) struct BearerFile {
    path: PathBuf,
    cache: Mutex<Option<(FileStamp, Secret)>>,
}

impl BearerFile {
    /// The token, read again when the file's stamp (mtime, size, inode) changed since last time.
    fn token(&self) -> Result<Secret, EwsError> {
        let stamp = FileStamp::of(&self.path).map_err(|e| {
            EwsError::Config(format!("`ews.token_file` {}: {e}", self.path.display()))
        })?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached_stamp, token)) = cache.as_ref() {
            if *cached_stamp == stamp {
                return Ok(token.clone());
            }
        }
        let token = crate::config::read_token_file(&self.path)
            .map(Secret::new)
            .map_err(|e| EwsError::Config(format!("`ews.token_file`: {e}")))?;
        *cache = Some((stamp, token.clone()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(3240)
        );
        assert_eq!(
            renew_after(Duration::from_secs(600)),
            Duration::from_secs(300)
        );
        assert_eq!(renew_after(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(
            renew_after(Duration::from_secs(86400)),
            Duration::from_secs(77760)
        );
    }

    #[test]
    fn token_answers() {
        let (token, lifetime) = read_token_answer(
            200,
            br#"{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ0"}"#,
        )
        .unwrap();
        assert_eq!(token.expose(), "eyJ0");
        assert_eq!(lifetime, Duration::from_secs(3599));
        let (_, lifetime) =
            read_token_answer(200, br#"{"expires_in":"3600","access_token":"x"}"#).unwrap();
        assert_eq!(lifetime, Duration::from_secs(3600));
        let refused = read_token_answer(
            401,
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#,
        )
        .unwrap_err();
        assert!(!refused.is_transient());
        assert!(refused.to_string().contains("invalid_client"), "{refused}");
        assert!(read_token_answer(503, b"<html>")
            .unwrap_err()
            .is_transient());
        assert!(read_token_answer(200, b"garbage").is_err());
        assert!(read_token_answer(200, br#"{"access_token":"a b","expires_in":1}"#).is_err());
        assert!(read_token_answer(200, br#"{"access_token":"ab","expires_in":0}"#).is_err());
    }

    #[test]
    fn bearer_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let file = BearerFile {
            path: path.clone(),
            cache: Mutex::new(None),
        };
        assert_eq!(file.token().unwrap().expose(), "first");
        // An atomic replacement (new inode), as secret managers write.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second-token\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(file.token().unwrap().expose(), "second-token");
        std::fs::remove_file(&path).unwrap();
        assert!(file.token().is_err());
    }
}
