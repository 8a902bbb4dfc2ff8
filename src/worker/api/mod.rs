//! The worker's REST API (`/api/v1/...`) for the booking service and operators: mailboxes and
//! reservations behind its own bearer token (never the gateway's), JSON in and out, one error
//! shape (`{"error", "field", "message"}`), cursor pagination. Handlers are glue over the pure
//! request rules of each resource and the store.

mod mailboxes;
mod reservations;
mod wire;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use super::rules::BearerToken;
use crate::store::Store;
use crate::subscriptions::SubscriptionManager;
pub use mailboxes::{mailbox_address, mailbox_json};
pub use reservations::reservation_json;
pub use wire::{utc, ApiError};

/// What the handlers share.
pub(crate) struct ApiState {
    /// `None`: `[worker] api_token_file` is empty and the API is off.
    pub token: Option<BearerToken>,
    pub store: Arc<dyn Store>,
    /// Woken when a mailbox is switched on, so its Subscribe starts at once.
    pub manager: Option<SubscriptionManager>,
    /// Woken when a web change queued a calendar write, so the sync step's outbox loop writes it
    /// at once instead of at its next poll. `None` while no such loop runs.
    pub outbox_wake: Option<Arc<tokio::sync::Notify>>,
}

/// The routes under `/api`, behind the API token.
pub(crate) fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route(
            "/api/v1/mailboxes",
            get(mailboxes::list).fallback(wire::method_not_allowed),
        )
        .route(
            "/api/v1/mailboxes/{address}",
            get(mailboxes::get)
                .put(mailboxes::put)
                .delete(mailboxes::delete)
                .fallback(wire::method_not_allowed),
        )
        .route(
            "/api/v1/reservations",
            get(reservations::list)
                .post(reservations::create)
                .fallback(wire::method_not_allowed),
        )
        .route(
            "/api/v1/reservations/{id}",
            get(reservations::get)
                .patch(reservations::change)
                .fallback(wire::method_not_allowed),
        )
        .route(
            "/api/v1/reservations/{id}/cancel",
            post(reservations::cancel).fallback(wire::method_not_allowed),
        )
        // Only `/api/v1` is the API's: the notification path `/api/webhooks/exchange` lives
        // beside it and belongs to ingest (and the gateway's token).
        .route("/api/v1/{*rest}", axum::routing::any(wire::not_found))
        .route("/api/v1", axum::routing::any(wire::not_found))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// Every `/api` request needs the API token; the gateway's token opens only the notification
/// paths.
async fn authenticate(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "api_disabled",
            None,
            "the API is off: set [worker] api_token_file",
        )
        .into_response_with_log();
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !token.verify(authorization) {
        tracing::warn!(
            path = request.uri().path(),
            token_present = authorization.is_some(),
            "API request refused: not the API token"
        );
        let mut response = ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
            "an API bearer token is required",
        )
        .into_response_with_log();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}
