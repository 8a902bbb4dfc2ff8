//! The HTTP side of the update: the version and endpoints methods, with timeouts and bounded
//! retries. The proxy comes from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`), as reqwest reads it by default: DMZ hosts often reach the internet only so.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use uuid::Uuid;

use super::feed::parse_version_answer;
use super::FeedError;
use crate::config::RangesConfig;

/// The endpoints answer for Exchange is about 40 KB; anything far larger is not the feed.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Connecting never gets longer than this, even with a long overall timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking client of the endpoints web service (the cron command has nothing else to do).
#[derive(Debug)]
pub struct FeedClient {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: Url,
    attempts: u32,
    backoff: Duration,
}

impl FeedClient {
    pub fn new(config: &RangesConfig) -> Result<Self, FeedError> {
        let base = Url::parse(&config.base_url).map_err(|e| {
            FeedError::Client(format!("`ranges.base_url` {:?}: {e}", config.base_url))
        })?;
        if base.cannot_be_a_base() {
            return Err(FeedError::Client(format!(
                "`ranges.base_url` {:?} cannot hold a path",
                config.base_url
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(MAX_CONNECT_TIMEOUT))
            .user_agent(concat!("pushgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FeedError::Client(error_chain(&e)))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FeedError::Client(format!("starting the runtime: {e}")))?;
        Ok(Self {
            runtime,
            http,
            base,
            attempts: config.attempts.max(1),
            backoff: config.retry_backoff,
        })
    }

    /// `GET {base}/version/{instance}?ClientRequestId=...`: the latest version of the instance.
    pub fn latest_version(&self, instance: &str, client_id: Uuid) -> Result<String, FeedError> {
        let url = self.method_url(
            "version",
            instance,
            &[("ClientRequestId", &client_id.to_string())],
        );
        let body = self.get(url)?;
        parse_version_answer(&body, instance)
    }

    /// `GET {base}/endpoints/{instance}?ServiceAreas=Exchange&ClientRequestId=...`: the raw answer.
    pub fn endpoints(&self, instance: &str, client_id: Uuid) -> Result<Vec<u8>, FeedError> {
        let url = self.method_url(
            "endpoints",
            instance,
            &[
                ("ServiceAreas", "Exchange"),
                ("ClientRequestId", &client_id.to_string()),
            ],
        );
        self.get(url)
    }

    /// The endpoints URL as written into the ranges file's header (no client id).
    pub fn endpoints_source(&self, instance: &str) -> String {
        self.method_url("endpoints", instance, &[("ServiceAreas", "Exchange")])
            .to_string()
    }

    fn method_url(&self, method: &str, instance: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(method).push(instance);
        }
        url.set_query(None);
        url.query_pairs_mut().extend_pairs(query);
        url
    }

    fn get(&self, url: Url) -> Result<Vec<u8>, FeedError> {
        self.runtime.block_on(async {
            let mut attempt = 1;
            loop {
                match self.get_once(&url).await {
                    Ok(body) => return Ok(body),
                    Err(error) if !error.is_transient() => return Err(error),
                    Err(error) if attempt >= self.attempts => {
                        return Err(FeedError::GaveUp {
                            attempts: attempt,
                            last: Box::new(error),
                        })
                    }
                    Err(_) => {
                        let factor = 2u32.saturating_pow(attempt - 1);
                        tokio::time::sleep(self.backoff.saturating_mul(factor)).await;
                        attempt += 1;
                    }
                }
            }
        })
    }

    async fn get_once(&self, url: &Url) -> Result<Vec<u8>, FeedError> {
        let shown = shown_url(url);
        let unreachable = |e: reqwest::Error| FeedError::Unreachable {
            url: shown.clone(),
            detail: error_chain(&e),
        };
        let mut response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let when = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map_or_else(
                    || "in an hour (Microsoft's advice)".to_string(),
                    |v| match v.trim().parse::<u64>() {
                        Ok(seconds) => format!("in {seconds} s (Retry-After)"),
                        Err(_) => format!("after {} (Retry-After)", v.trim()),
                    },
                );
            return Err(FeedError::RateLimited { url: shown, when });
        }
        if !status.is_success() {
            return Err(FeedError::Status {
                url: shown,
                status: status.as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(FeedError::TooLarge {
                    url: shown,
                    limit: MAX_ANSWER_BYTES,
                });
            }
            body.extend_from_slice(&chunk);
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(FeedError::Empty { url: shown });
        }
        Ok(body)
    }
}

/// The URL without its query, for messages.
fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

/// reqwest's own message names only the outermost layer ("error sending request"); the cause
/// (refused, timed out, certificate) is in the source chain.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
