//! The EWS client: one reqwest client (rustls, system roots plus `ca_file`), a global bound on
//! requests in flight, credentials per request, retries for reads only. Thin glue around the
//! pure writers (`write`) and readers (`read`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Url;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::auth::{Authorization, Credentials};
use super::error::EwsError;
use super::metrics::EwsMetrics;
use super::model::{
    CalendarItem, CalendarItemChanges, CalendarView, CalendarViewPage, DeleteType, ItemId, Mailbox,
    NewCalendarItem, Operation, PushSubscriptionRequest, ReservationProperty, SubscribeResult,
};
use super::read;
use super::settings::{AuthSettings, EwsSettings, RetryPolicy};
use super::write::{self, SoapHeader};
use super::xml::Element;

/// Answers larger than this are refused: a 1,000-item FindItem answer is about 1 MiB.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// Ids per GetItem request (EWS.md §2: keep batches to about 10 items).
const GET_ITEM_BATCH: usize = 10;
/// Connecting (TCP and TLS) gets at most this long, within the request timeout.
const CONNECT_TIMEOUT_CAP: Duration = Duration::from_secs(10);

/// Cheap to clone: every clone shares the connection pool, the token cache and the bound on
/// requests in flight.
#[derive(Clone)]
pub struct EwsClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    url: Url,
    credentials: Credentials,
    server_version: String,
    impersonation: bool,
    timeout: Duration,
    permits: Semaphore,
    retry: RetryPolicy,
    metrics: Option<EwsMetrics>,
}

impl EwsClient {
    pub fn new(settings: EwsSettings) -> Result<EwsClient, EwsError> {
        Self::with_metrics(settings, None)
    }

    /// As `new`, recording each request in `metrics`.
    pub fn with_metrics(
        settings: EwsSettings,
        metrics: Option<EwsMetrics>,
    ) -> Result<EwsClient, EwsError> {
        settings.check()?;
        if settings.url.username() != "" || settings.url.password().is_some() {
            return Err(EwsError::Config(
                "`ews.url` must not carry credentials; use ews.auth".into(),
            ));
        }
        let tls = tls_config(&settings)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(CONNECT_TIMEOUT_CAP))
            // A redirect would carry our credentials elsewhere; EWS has no business redirecting.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!settings.allow_http)
            .pool_max_idle_per_host(settings.max_concurrency)
            .user_agent(concat!("pushgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EwsError::Config(format!("HTTP client: {}", error_chain(&e))))?;
        let mut plain = Vec::new();
        if settings.url.scheme() == "http" {
            plain.push(("ews.url", &settings.url));
        }
        if let AuthSettings::OAuth2 { token_url, .. } = &settings.auth {
            if token_url.scheme() == "http" {
                plain.push(("ews.token_url", token_url));
            }
        }
        for (key, url) in plain {
            tracing::warn!(
                key,
                host = url.host_str().unwrap_or(""),
                "plain http:// allowed by ews.allow_http: credentials and calendar data travel in clear"
            );
        }
        Ok(EwsClient {
            inner: Arc::new(Inner {
                credentials: Credentials::new(&settings.auth, settings.timeout),
                http,
                url: settings.url,
                server_version: settings.server_version,
                impersonation: settings.impersonation,
                timeout: settings.timeout,
                permits: Semaphore::new(settings.max_concurrency),
                retry: settings.retry,
                metrics,
            }),
        })
    }

    /// Push subscription on the mailbox's calendar folder. A write: never repeated here.
    pub async fn subscribe(
        &self,
        mailbox: &str,
        request: &PushSubscriptionRequest,
    ) -> Result<SubscribeResult, EwsError> {
        let body = write::subscribe(self.mailbox(mailbox), request)?;
        self.inner
            .exchange(Operation::Subscribe, mailbox, &body, &read::read_subscribe)
            .await
    }

    /// One result per id, in request order (Exchange answers one message per id): a gone item
    /// is `Err(ErrorItemNotFound)` in its place. The outer error is a failure of a whole
    /// request. Sent in batches of 10; items Exchange did not process (Warning, ErrorServerBusy)
    /// are asked for again within the retry bounds.
    pub async fn get_calendar_items(
        &self,
        mailbox: &str,
        ids: &[ItemId],
        property: &ReservationProperty,
    ) -> Result<Vec<Result<CalendarItem, EwsError>>, EwsError> {
        write::check_mailbox(mailbox)?;
        let mut results = Vec::with_capacity(ids.len());
        for batch in ids.chunks(GET_ITEM_BATCH) {
            results.extend(self.inner.get_item_batch(mailbox, batch, property).await?);
        }
        Ok(results)
    }

    /// Creates a calendar item (no invitations sent) and returns its id. A write: on an error
    /// whose `outcome_unknown()` is true the item may exist; look for its reservation property
    /// before creating it again.
    pub async fn create_calendar_item(
        &self,
        mailbox: &str,
        item: &NewCalendarItem,
        property: &ReservationProperty,
    ) -> Result<ItemId, EwsError> {
        let body = write::create_item(self.mailbox(mailbox), item, property)?;
        self.inner
            .exchange(
                Operation::CreateItem,
                mailbox,
                &body,
                &read::read_create_item,
            )
            .await
    }

    /// Updates an item and returns its new id and change key. With a change key in `id` the
    /// update fails with ErrorIrresolvableConflict when the item changed since (NeverOverwrite);
    /// without one it overwrites (AlwaysOverwrite).
    pub async fn update_calendar_item(
        &self,
        mailbox: &str,
        id: &ItemId,
        changes: &CalendarItemChanges,
        property: &ReservationProperty,
    ) -> Result<ItemId, EwsError> {
        write::check_mailbox(mailbox)?;
        let body = write::update_item(id, changes, property)?;
        self.inner
            .exchange(
                Operation::UpdateItem,
                mailbox,
                &body,
                &read::read_update_item,
            )
            .await
    }

    /// Deletes an item (no cancellations sent). ErrorItemNotFound is returned as the error it
    /// is; a caller repeating a delete may take `is_item_not_found()` as done.
    pub async fn delete_calendar_item(
        &self,
        mailbox: &str,
        id: &ItemId,
        delete_type: DeleteType,
    ) -> Result<(), EwsError> {
        write::check_mailbox(mailbox)?;
        let body = write::delete_item(id, delete_type)?;
        self.inner
            .exchange(
                Operation::DeleteItem,
                mailbox,
                &body,
                &read::read_delete_item,
            )
            .await
    }

    /// The calendar items in a window, occurrences expanded. A truncated page says
    /// `includes_last_item_in_range: false`: split the window and ask again.
    pub async fn find_calendar_items(
        &self,
        mailbox: &str,
        view: &CalendarView,
        property: &ReservationProperty,
    ) -> Result<CalendarViewPage, EwsError> {
        let body = write::find_item(self.mailbox(mailbox), view, property)?;
        self.inner
            .read_with_retry(Operation::FindItem, mailbox, &body, &|response| {
                read::read_find_item(response, property)
            })
            .await
    }

    /// The mailbox calendar's own FolderId (GetFolder, DistinguishedFolderId calendar, IdOnly):
    /// the sync step needs it to tell a move out of the calendar from a move into it.
    pub async fn calendar_folder_id(&self, mailbox: &str) -> Result<String, EwsError> {
        let body = write::get_folder(self.mailbox(mailbox))?;
        self.inner
            .read_with_retry(Operation::GetFolder, mailbox, &body, &read::read_get_folder)
            .await
    }

    fn mailbox<'a>(&self, address: &'a str) -> Mailbox<'a> {
        Mailbox {
            address,
            impersonation: self.inner.impersonation,
        }
    }
}

type Reader<'r, T> = dyn Fn(&Element) -> Result<T, EwsError> + Sync + 'r;

impl Inner {
    /// A read: transient failures are tried again with jittered exponential back-off, within
    /// `RetryPolicy`; a back-off hint longer than the policy allows ends the retries.
    async fn read_with_retry<T>(
        &self,
        operation: Operation,
        mailbox: &str,
        body: &str,
        read: &Reader<'_, T>,
    ) -> Result<T, EwsError> {
        let mut failures = 0u32;
        loop {
            match self.exchange(operation, mailbox, body, read).await {
                Err(e) if e.is_transient() => {
                    failures += 1;
                    let Some(wait) = self.next_wait(failures, e.back_off()) else {
                        return Err(e);
                    };
                    tracing::debug!(
                        operation = operation.name(),
                        error = %e,
                        wait_ms = wait.as_millis() as u64,
                        "EWS read failed; trying again"
                    );
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    async fn get_item_batch(
        &self,
        mailbox: &str,
        ids: &[ItemId],
        property: &ReservationProperty,
    ) -> Result<Vec<Result<CalendarItem, EwsError>>, EwsError> {
        let mut results: Vec<Option<Result<CalendarItem, EwsError>>> = vec![None; ids.len()];
        let mut pending: Vec<usize> = (0..ids.len()).collect();
        let mut failures = 0u32;
        while !pending.is_empty() {
            let batch: Vec<ItemId> = pending.iter().map(|&i| ids[i].clone()).collect();
            let body = write::get_item(&batch, property)?;
            let expected = batch.len();
            let read = |response: &Element| read::read_get_item(response, property, expected);
            let (retry, hint) = match self
                .exchange(Operation::GetItem, mailbox, &body, &read)
                .await
            {
                Ok(items) => {
                    let mut retry = Vec::new();
                    let mut hint: Option<Duration> = None;
                    for (&index, item) in pending.iter().zip(items) {
                        if let Err(e) = &item {
                            if e.is_transient() {
                                hint = hint.max(e.back_off());
                                retry.push(index);
                            }
                        }
                        results[index] = Some(item);
                    }
                    (retry, hint)
                }
                Err(e) if e.is_transient() => {
                    failures += 1;
                    let Some(wait) = self.next_wait(failures, e.back_off()) else {
                        return Err(e);
                    };
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if retry.is_empty() {
                break;
            }
            failures += 1;
            let Some(wait) = self.next_wait(failures, hint) else {
                break; // the transient per-item errors stay in place for the caller
            };
            tokio::time::sleep(wait).await;
            pending = retry;
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(EwsError::malformed(200, "no answer for this id"))))
            .collect())
    }

    fn next_wait(&self, failures: u32, hint: Option<Duration>) -> Option<Duration> {
        retry_wait(&self.retry, failures, hint, rand::random::<f64>())
    }

    /// One call: a request, and once more with a renewed OAuth token after a 401 (a 401 means
    /// Exchange did not process it, so this is safe for writes too).
    async fn exchange<T>(
        &self,
        operation: Operation,
        mailbox: &str,
        body: &str,
        read: &Reader<'_, T>,
    ) -> Result<T, EwsError> {
        let header = SoapHeader {
            server_version: &self.server_version,
            impersonate: self.impersonation.then_some(mailbox),
        };
        let envelope = write::envelope(&header, body);
        let authorization = self.credentials.authorization(&self.http).await?;
        match self
            .attempt(operation, mailbox, &envelope, &authorization, read)
            .await
        {
            Err(EwsError::Unauthorized { .. })
                if self.credentials.refused(&authorization).await =>
            {
                let renewed = self.credentials.authorization(&self.http).await?;
                self.attempt(operation, mailbox, &envelope, &renewed, read)
                    .await
                    .map_err(|e| match e {
                        EwsError::Unauthorized { .. } => EwsError::Unauthorized {
                            detail: "refused again with a renewed OAuth token: check the app's \
                                     full_access_as_app permission and admin consent"
                                .into(),
                        },
                        other => other,
                    })
            }
            Err(EwsError::Unauthorized { .. }) => Err(EwsError::Unauthorized {
                detail: match authorization {
                    Authorization::Basic { .. } => "check ews.username and ews.password_file",
                    Authorization::Bearer(_) => "check the token in ews.token_file",
                }
                .into(),
            }),
            other => other,
        }
    }

    /// One HTTP request within the bound on requests in flight, its answer read, recorded.
    async fn attempt<T>(
        &self,
        operation: Operation,
        mailbox: &str,
        envelope: &str,
        authorization: &Authorization,
        read: &Reader<'_, T>,
    ) -> Result<T, EwsError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| EwsError::Config("the EWS client is closed".into()))?;
        let started = Instant::now();
        let answer = self.post(mailbox, envelope, authorization).await;
        drop(permit);
        let elapsed = started.elapsed();
        let result = answer.and_then(|(status, retry_after, body)| {
            read::read_answer(operation, status, retry_after, &body).and_then(|r| read(&r))
        });
        if let Some(metrics) = &self.metrics {
            metrics.record(operation, elapsed, result.as_ref().err());
        }
        match &result {
            Ok(_) => tracing::debug!(
                operation = operation.name(),
                mailbox,
                elapsed_ms = elapsed.as_millis() as u64,
                "EWS request"
            ),
            Err(e) => tracing::debug!(
                operation = operation.name(),
                mailbox,
                elapsed_ms = elapsed.as_millis() as u64,
                code = e.code(),
                error = %e,
                "EWS request failed"
            ),
        }
        result
    }

    async fn post(
        &self,
        mailbox: &str,
        envelope: &str,
        authorization: &Authorization,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), EwsError> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header(ACCEPT, "text/xml")
            .body(envelope.to_owned());
        if self.impersonation {
            // Routes the request to the impersonated mailbox's server; mandatory with
            // impersonation in Exchange Online.
            request = request.header("X-AnchorMailbox", mailbox);
        }
        request = authorization.apply(request);
        let mut response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&e, false))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| read::parse_retry_after(v, SystemTime::now()));
        let too_large = || {
            EwsError::malformed(
                status,
                format!("answer larger than {} MiB", MAX_ANSWER_BYTES >> 20),
            )
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e, true))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, retry_after, body))
    }

    /// Whether the request may have reached Exchange: not when connecting failed.
    fn transport_error(&self, error: &reqwest::Error, answer_started: bool) -> EwsError {
        let request_sent = answer_started || !error.is_connect();
        if error.is_timeout() {
            EwsError::Timeout {
                after: self.timeout,
                request_sent,
            }
        } else if error.is_builder() {
            EwsError::InvalidRequest(error_chain(error))
        } else {
            EwsError::Transport {
                detail: error_chain(error),
                request_sent,
            }
        }
    }
}

/// The wait before the next try of a read after `failures` failures, or `None` to give up:
/// attempts used up, or Exchange asked for a longer pause than the policy allows (the error
/// then carries the hint to the caller). Exponential from `base_delay`, capped at `max_delay`,
/// jittered between half and all of it (`jitter` in 0..1) so that many readers throttled at
/// once do not come back at once; never shorter than the hint.
pub(crate) fn retry_wait(
    policy: &RetryPolicy,
    failures: u32,
    hint: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    if failures == 0 || failures >= policy.attempts {
        return None;
    }
    let exponent = (failures - 1).min(20);
    let ceiling = policy
        .base_delay
        .saturating_mul(1u32 << exponent)
        .min(policy.max_delay);
    let jittered = ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    match hint {
        Some(hint) if hint > policy.max_delay => None,
        Some(hint) => Some(hint.max(jittered)),
        None => Some(jittered),
    }
}

/// The roots the client trusts: the system's (unless switched off) plus the extra PEM.
fn tls_config(settings: &EwsSettings) -> Result<rustls::ClientConfig, EwsError> {
    let mut roots = rustls::RootCertStore::empty();
    if settings.system_roots {
        match rustls_native_certs::load_native_certs() {
            Ok(certs) => {
                let (_, ignored) = roots.add_parsable_certificates(certs);
                if ignored > 0 {
                    tracing::debug!(ignored, "system root certificates rustls cannot use");
                }
            }
            Err(e) => tracing::warn!(error = %e, "loading the system root certificates"),
        }
    }
    if let Some(pem) = &settings.extra_ca_pem {
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EwsError::Config(format!("`ews.ca_file` is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(EwsError::Config(
                "`ews.ca_file` holds no certificate".into(),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| EwsError::Config(format!("`ews.ca_file`: {e}")))?;
        }
    }
    if roots.is_empty() && settings.url.scheme() == "https" {
        return Err(EwsError::Config(
            "no trusted root certificates: install the system's CA bundle or set ews.ca_file"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EwsError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An error and its causes on one line (reqwest's own Display stops at the outermost).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_jitter_and_respect_hints() {
        let policy = RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(
            retry_wait(&policy, 1, None, 1.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            retry_wait(&policy, 1, None, 0.0),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            retry_wait(&policy, 3, None, 1.0),
            Some(Duration::from_millis(400))
        );
        // Capped at max_delay.
        assert_eq!(
            retry_wait(&policy, 4, None, 1.0),
            Some(Duration::from_millis(800))
        );
        let capped = RetryPolicy {
            attempts: 10,
            ..policy
        };
        assert_eq!(
            retry_wait(&capped, 9, None, 1.0),
            Some(Duration::from_secs(1))
        );
        // Attempts used up.
        assert_eq!(retry_wait(&policy, 5, None, 0.5), None);
        // A hint is never undercut, and one beyond the cap ends the retries.
        assert_eq!(
            retry_wait(&policy, 1, Some(Duration::from_millis(700)), 1.0),
            Some(Duration::from_millis(700))
        );
        assert_eq!(
            retry_wait(&policy, 1, Some(Duration::from_secs(300)), 1.0),
            None
        );
    }
}
