//! The notification endpoint: glue between HTTP and the rules, the validator and the group
//! committer. Order of checks: path (404), method (405), gateway token (401), tenant (400),
//! size (413), validation (400); then store, and only after the commit the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use time::OffsetDateTime;

use super::metrics::WorkerMetrics;
use super::rules::{self, RotatingToken};
use crate::notification::{self, Limits, SubscriptionStatus};
use crate::store::{GroupCommitter, IngestOutcome, IngestRequest, IngestResult, Store, StoreError};

/// Largest body accepted, the same ceiling the gateway buffers.
pub const MAX_BODY_BYTES: usize = crate::config::MAX_BODY_BYTES_CEILING;

pub(crate) struct IngestState {
    /// The gateway's token, replaced when its file changes (see [`IngestState::reread_token`]).
    pub token: arc_swap::ArcSwap<RotatingToken>,
    /// `gateway_token_file`, looked at every second and whenever a presented token fails.
    pub token_file: std::sync::Mutex<crate::token_file::TokenFile>,
    /// How long the token before a change stays valid.
    pub token_grace: Duration,
    /// The notification paths (`[gateway] paths`).
    pub paths: Vec<String>,
    pub limits: Limits,
    pub committer: GroupCommitter,
    pub metrics: Arc<WorkerMetrics>,
    /// Longest a request waits for its commit before it is answered 503.
    pub answer_timeout: Duration,
    pub store: Arc<dyn Store>,
    /// Longest a notification for an unknown subscription waits for running Subscribe calls
    /// to settle (zero when this worker subscribes nothing).
    pub unknown_hold: Duration,
}

impl IngestState {
    /// Looks at the token file and takes a new token from it; true when it did. A stat, and a
    /// read of a one-line file when it changed: cheap enough to do on a request that failed.
    pub(crate) fn reread_token(&self) -> bool {
        use crate::token_file::TokenCheck;
        let check = self
            .token_file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check();
        match check {
            TokenCheck::Unchanged => false,
            TokenCheck::Rotated(token) => {
                let rotated = self
                    .token
                    .load()
                    .rotated(&token, Instant::now(), self.token_grace);
                self.token.store(Arc::new(rotated));
                tracing::info!(
                    grace = %humantime::format_duration(self.token_grace),
                    "gateway token file changed; the previous token stays valid for the grace period"
                );
                true
            }
            TokenCheck::Refused(e) => {
                tracing::error!(error = %e, "new gateway token refused; the current one stays in use");
                false
            }
        }
    }

    /// The gateway's token check. A token that fails makes the worker look at its file at once,
    /// so a gateway that switched first (both reading one file) is not refused meanwhile.
    fn gateway_token_ok(&self, authorization: Option<&[u8]>) -> bool {
        self.token.load().verify(authorization, Instant::now())
            || (self.reread_token() && self.token.load().verify(authorization, Instant::now()))
    }
}

/// Looks at the gateway's token file every second until shutdown.
pub(crate) async fn watch_token_file(
    state: Arc<IngestState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(crate::token_file::CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        state.reread_token();
    }
}

/// How often a held notification looks again.
const HOLD_POLL: Duration = Duration::from_millis(20);

pub(crate) async fn handle(State(state): State<Arc<IngestState>>, request: Request) -> Response {
    let started = Instant::now();
    let (result, response, reached_store) = ingest(&state, request).await;
    state
        .metrics
        .request_finished(result, reached_store.then(|| started.elapsed()));
    response
}

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

/// The `SendNotificationResult` answer: exactly the envelope bytes, never compressed.
fn envelope(status: SubscriptionStatus) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(notification::envelope::RESULT_CONTENT_TYPE),
        )],
        Body::from(notification::result_envelope(status)),
    )
        .into_response()
}

/// Returns the metric label, the answer, and whether the request got as far as the store.
async fn ingest(state: &IngestState, request: Request) -> (&'static str, Response, bool) {
    let (parts, body) = request.into_parts();
    if !rules::is_notification_path(parts.uri.path(), &state.paths) {
        return (
            "not_found",
            plain(StatusCode::NOT_FOUND, "not found"),
            false,
        );
    }
    if parts.method != Method::POST {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only POST");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return ("not_found", response, false);
    }
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !state.gateway_token_ok(authorization) {
        tracing::warn!(
            path = parts.uri.path(),
            token_present = authorization.is_some(),
            "notification refused: not the gateway's token"
        );
        let mut response = plain(StatusCode::UNAUTHORIZED, "gateway token required");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return ("unauthorized", response, false);
    }
    let tenant = match rules::tenant(parts.uri.query()) {
        Ok(tenant) => tenant,
        Err(problem) => {
            return (
                "invalid",
                plain(StatusCode::BAD_REQUEST, &problem.to_string()),
                false,
            )
        }
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return (
            "too_large",
            plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
            false,
        );
    }
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return (
                "too_large",
                plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
                false,
            )
        }
        Err(error) => {
            tracing::debug!(%error, "notification body unreadable");
            return (
                "invalid",
                plain(StatusCode::BAD_REQUEST, "body unreadable"),
                false,
            );
        }
    };
    let forwarded_for = parts
        .headers
        .get("x-forwarded-for")
        .map(|v| rules::loggable(v.as_bytes()));
    let request_id =
        rules::request_id(parts.headers.get("x-request-id").map(HeaderValue::as_bytes));

    // Defence in depth: the gateway validated this body already.
    let parsed = match notification::parse(&body, &state.limits) {
        Ok(parsed) => parsed,
        Err(rejection) => {
            tracing::warn!(
                %rejection,
                request_id = request_id.as_deref(),
                forwarded_for = forwarded_for.as_deref(),
                "notification refused by the validator"
            );
            let text = format!("invalid notification: {}", rejection.reason());
            return ("invalid", plain(StatusCode::BAD_REQUEST, &text), false);
        }
    };
    if let Err(problem) = rules::check_storable(&parsed) {
        tracing::warn!(%problem, request_id = request_id.as_deref(), "notification cannot be stored");
        let text = format!("invalid notification: {problem}");
        return ("invalid", plain(StatusCode::BAD_REQUEST, &text), false);
    }

    let ingest_request = IngestRequest {
        tenant,
        request_id: request_id.clone(),
        received_at: OffsetDateTime::now_utc(),
        notification: parsed,
    };
    let stored = tokio::time::timeout(
        state.answer_timeout,
        store_holding_unknown(state, ingest_request),
    )
    .await
    .map(|result| result.and_then(|held| held.ok_or(Held)));
    match stored {
        Ok(Err(HoldError::Held)) => {
            tracing::info!(
                request_id = request_id.as_deref(),
                "notification for a subscription being made: answered 503, Exchange retries"
            );
            let response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "subscription not yet known, retry later",
            );
            ("unavailable", response, true)
        }
        Ok(Ok(outcome)) => {
            state.metrics.outcome(&outcome);
            for (subscription_id, flag) in &outcome.flagged {
                tracing::warn!(
                    subscription_id = rules::loggable(subscription_id.as_bytes()),
                    state = flag.as_str(),
                    request_id = request_id.as_deref(),
                    "subscription flagged"
                );
            }
            if outcome.result == IngestResult::Unsubscribe {
                tracing::info!(
                    request_id = request_id.as_deref(),
                    forwarded_for = forwarded_for.as_deref(),
                    "unwanted subscription answered Unsubscribe; nothing stored"
                );
            }
            tracing::debug!(
                result = outcome.result.as_str(),
                stored = outcome.stored_events.len(),
                duplicates = outcome.duplicate_events,
                request_id = request_id.as_deref(),
                forwarded_for = forwarded_for.as_deref(),
                "notification stored"
            );
            (outcome.result.as_str(), envelope(outcome.status), true)
        }
        Ok(Err(HoldError::Store(error))) => {
            tracing::warn!(%error, request_id = request_id.as_deref(), "notification not stored; answered 503");
            let response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later",
            );
            ("unavailable", response, true)
        }
        Err(_) => {
            tracing::warn!(
                request_id = request_id.as_deref(),
                timeout = ?state.answer_timeout,
                "commit did not finish in time; answered 503"
            );
            let response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage too slow, retry later",
            );
            ("unavailable", response, true)
        }
    }
}

/// Why a notification got no answer from the store.
enum HoldError {
    Store(StoreError),
    /// It names a subscription nobody knows while a Subscribe call is still running.
    Held,
}

use HoldError::Held;

impl From<StoreError> for HoldError {
    fn from(error: StoreError) -> Self {
        HoldError::Store(error)
    }
}

/// Stores the notification. One naming a subscription id nobody asked for would be answered
/// Unsubscribe, but while one of the worker's own Subscribe calls runs it may be that call's
/// subscription, delivered before the answer was stored: answering Unsubscribe would kill it.
/// So it is held (bounded) until no call runs, then submitted again; `None` when calls still run
/// after the bound (the caller answers 503 and Exchange retries).
async fn store_holding_unknown(
    state: &IngestState,
    request: IngestRequest,
) -> Result<Option<IngestOutcome>, HoldError> {
    let outcome = state.committer.submit(request.clone()).await?;
    if outcome.unknown.is_empty() || state.unknown_hold.is_zero() {
        return Ok(Some(outcome));
    }
    let deadline = tokio::time::Instant::now() + state.unknown_hold;
    let mut outcome = outcome;
    loop {
        if !state
            .store
            .subscribe_in_flight(OffsetDateTime::now_utc())
            .await?
        {
            // Settled: ask again, now that the call's subscription (if it was one) is stored.
            outcome = state.committer.submit(request.clone()).await?;
            return Ok(Some(outcome));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(if outcome.unknown.is_empty() {
                Some(outcome)
            } else {
                None
            });
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
}
