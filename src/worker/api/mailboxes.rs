//! `/api/v1/mailboxes`: switch sync on or off per mailbox, read where its subscription stands,
//! forget it. Pure rules for addresses and bodies; handlers are glue over the store.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::wire::{self, ApiError};
use super::ApiState;
use crate::store::{MailboxView, PutMailbox};

/// Longest SMTP address (RFC 5321 path limit).
pub const MAX_ADDRESS_CHARS: usize = 254;

/// A mailbox address as the API takes it: `local@domain`, ASCII, no spaces or specials that
/// need quoting; compared case-insensitively, so stored lower-cased.
pub fn mailbox_address(raw: &str) -> Result<String, ApiError> {
    let refuse = |why: &str| ApiError::invalid("address", format!("{why}: expected local@domain"));
    if raw.is_empty() || raw.len() > MAX_ADDRESS_CHARS {
        return Err(refuse(&format!(
            "must be 3 to {MAX_ADDRESS_CHARS} characters"
        )));
    }
    let Some((local, domain)) = raw.split_once('@') else {
        return Err(refuse("has no @"));
    };
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+=?^_`{|}~.-".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    if !local_ok {
        return Err(refuse("local part holds characters an address cannot"));
    }
    let domain_ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !domain_ok {
        return Err(refuse("domain is not a host name"));
    }
    Ok(raw.to_ascii_lowercase())
}

/// The body of `PUT /api/v1/mailboxes/{address}`: `{"tenant"?, "sync"}`.
pub fn put_request(
    address: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<PutMailbox, ApiError> {
    let address = mailbox_address(address)?;
    let object = wire::json_object(headers, body, &["tenant", "sync"])?;
    let sync = wire::required_bool(&object, "sync")?;
    let tenant = wire::optional_str(&object, "tenant")?
        .map(|tenant| {
            if crate::endpoint::is_tenant_name(tenant.as_bytes()) {
                Ok(tenant.to_string())
            } else {
                Err(ApiError::invalid(
                    "tenant",
                    "must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
                ))
            }
        })
        .transpose()?;
    Ok(PutMailbox {
        address,
        tenant,
        sync,
    })
}

/// A mailbox as JSON.
pub fn mailbox_json(view: &MailboxView) -> Value {
    let m = &view.mailbox;
    json!({
        "address": m.address,
        "tenant": m.tenant,
        "sync": m.sync,
        "state": m.state.as_str(),
        "subscription_id": m.subscription_id,
        "last_notification_at": view
            .subscription
            .as_ref()
            .and_then(|s| s.last_notification_at)
            .map(wire::utc),
        "last_error": m.last_error,
        "next_attempt_at": m.next_attempt_at.filter(|_| m.sync).map(wire::utc),
    })
}

pub(super) async fn put(
    State(state): State<Arc<ApiState>>,
    Path(address): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match put_request(&address, &headers, &body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    match state
        .store
        .put_mailbox(&request, OffsetDateTime::now_utc())
        .await
    {
        Ok(outcome) => {
            tracing::info!(
                mailbox = %request.address,
                sync = request.sync,
                created = outcome.created,
                state = outcome.view.mailbox.state.as_str(),
                "mailbox put"
            );
            if request.sync {
                if let Some(manager) = &state.manager {
                    manager.wake();
                }
            }
            let status = if outcome.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            wire::json_response(status, &mailbox_json(&outcome.view))
        }
        Err(error) => ApiError::unavailable(&error).into_response(),
    }
}

pub(super) async fn get(
    State(state): State<Arc<ApiState>>,
    Path(address): Path<String>,
) -> Response {
    let address = match mailbox_address(&address) {
        Ok(address) => address,
        Err(error) => return error.into_response(),
    };
    match state.store.mailbox(&address).await {
        Ok(Some(view)) => wire::json_response(StatusCode::OK, &mailbox_json(&view)),
        Ok(None) => ApiError::not_found("no such mailbox").into_response(),
        Err(error) => ApiError::unavailable(&error).into_response(),
    }
}

pub(super) async fn delete(
    State(state): State<Arc<ApiState>>,
    Path(address): Path<String>,
) -> Response {
    let address = match mailbox_address(&address) {
        Ok(address) => address,
        Err(error) => return error.into_response(),
    };
    match state
        .store
        .delete_mailbox(&address, OffsetDateTime::now_utc())
        .await
    {
        Ok(true) => {
            tracing::info!(mailbox = %address, "mailbox forgotten");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => ApiError::not_found("no such mailbox").into_response(),
        Err(error) => ApiError::unavailable(&error).into_response(),
    }
}

pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let (page, _) = match wire::page(query.as_deref(), &[]) {
        Ok(page) => page,
        Err(error) => return error.into_response(),
    };
    match state
        .store
        .mailboxes(page.after.as_deref(), page.limit)
        .await
    {
        Ok(views) => {
            let last = views.last().map(|v| v.mailbox.address.clone());
            let items = views.iter().map(mailbox_json).collect();
            wire::json_response(
                StatusCode::OK,
                &wire::list_body(items, last.as_deref(), &page),
            )
        }
        Err(error) => ApiError::unavailable(&error).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, HeaderValue};

    #[test]
    fn addresses_are_checked_and_lower_cased() {
        assert_eq!(
            mailbox_address("Room.1+x@Contoso.COM").unwrap(),
            "room.1+x@contoso.com"
        );
        assert!(mailbox_address("o'brien@contoso.com").is_ok());
        for bad in [
            "",
            "room",
            "@contoso.com",
            "room@",
            "room@@contoso.com",
            "ro om@contoso.com",
            "room@contoso..com",
            "room@-contoso.com",
            "room/x@contoso.com",
            ".room@contoso.com",
            "räum@contoso.com",
            "room@contoso.com\n",
        ] {
            let error = mailbox_address(bad).unwrap_err();
            assert_eq!(error.field.as_deref(), Some("address"), "{bad:?}");
        }
        assert!(mailbox_address(&format!("{}@contoso.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn put_bodies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let body = |text: &'static str| Bytes::from_static(text.as_bytes());
        let request = put_request(
            "Room@Contoso.com",
            &headers,
            &body(r#"{"sync": true, "tenant": "Fab"}"#),
        )
        .unwrap();
        assert_eq!(request.address, "room@contoso.com");
        assert_eq!(request.tenant.as_deref(), Some("Fab"));
        assert!(request.sync);
        let missing = put_request("r@c.com", &headers, &body("{}")).unwrap_err();
        assert_eq!(
            (missing.code, missing.field.as_deref()),
            ("missing_field", Some("sync"))
        );
        let bad_tenant = put_request(
            "r@c.com",
            &headers,
            &body(r#"{"sync": true, "tenant": "a b"}"#),
        )
        .unwrap_err();
        assert_eq!(bad_tenant.field.as_deref(), Some("tenant"));
        let unknown =
            put_request("r@c.com", &headers, &body(r#"{"sync": true, "mode": 1}"#)).unwrap_err();
        assert_eq!(unknown.field.as_deref(), Some("mode"));
    }
}
