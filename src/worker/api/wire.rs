//! The API's wire conventions as pure functions: the error shape, reading a JSON object body
//! (size, media type, known fields only), list pagination (`limit`, opaque `cursor`), and times
//! in RFC 3339 UTC.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// `limit` when none is given, and the most a page holds.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// An API refusal: `{"error": CODE, "field": NAME or null, "message": TEXT}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// 400 naming the field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some(field),
            message,
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", None, message)
    }

    /// 503: the database did not answer. The detail goes to the log, not to the client.
    pub fn unavailable(error: &crate::store::StoreError) -> Self {
        tracing::warn!(%error, "API request failed on the store");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            None,
            "storage unavailable, retry later",
        )
    }

    pub fn body(&self) -> Value {
        json!({"error": self.code, "field": self.field, "message": self.message})
    }

    /// The response, with a log line saying why (client mistakes at INFO).
    pub fn into_response_with_log(self) -> Response {
        if self.status.is_client_error() && self.status != StatusCode::UNAUTHORIZED {
            tracing::info!(
                status = self.status.as_u16(),
                error = self.code,
                field = self.field.as_deref(),
                message = %self.message,
                "API request refused"
            );
        }
        json_response(self.status, &self.body())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with_log()
    }
}

pub fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub async fn not_found() -> Response {
    ApiError::not_found("no such API resource").into_response()
}

pub async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
        "method not allowed on this resource",
    )
    .into_response()
}

/// Reads a request body as a JSON object whose keys are all in `known` (an empty body is an
/// empty object). Refuses other media types (415), oversized bodies (413), syntax errors and
/// unknown fields (400).
pub fn json_object(
    headers: &HeaderMap,
    body: &Bytes,
    known: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
            format!("bodies are at most {MAX_BODY_BYTES} bytes"),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if media_type.as_deref() != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
            "send Content-Type: application/json",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
            format!("body is not JSON: {e}"),
        )
    })?;
    let Value::Object(object) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
            "body must be a JSON object",
        ));
    };
    if let Some(unknown) = object.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_field",
            Some(unknown),
            format!("unknown field; known: {}", known.join(", ")),
        ));
    }
    Ok(object)
}

/// A required field that must be a boolean.
pub fn required_bool(object: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    match object.get(field) {
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(ApiError::invalid(field, "must be true or false")),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_field",
            Some(field),
            "is required",
        )),
    }
}

/// An optional field that must be a string when present (`null` counts as absent).
pub fn optional_str<'a>(
    object: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::invalid(field, "must be a string")),
    }
}

/// `?limit=` and `?cursor=` of a list request, plus the other parameters a list knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    /// The last key of the previous page.
    pub after: Option<String>,
}

/// Reads `limit` and `cursor` (and refuses parameters not in `known`, which lists the others).
pub fn page(
    query: Option<&str>,
    known: &[&str],
) -> Result<(Page, Vec<(String, String)>), ApiError> {
    let mut limit = DEFAULT_LIMIT;
    let mut after = None;
    let mut others = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid("limit", format!("must be 1 to {MAX_LIMIT}"))
                    })?;
            }
            "cursor" => {
                after =
                    Some(decode_cursor(&value).ok_or_else(|| {
                        ApiError::invalid("cursor", "is not a cursor this API gave")
                    })?);
            }
            other if known.contains(&other) => others.push((key.into_owned(), value.into_owned())),
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_field",
                    Some(other),
                    "unknown query parameter",
                ))
            }
        }
    }
    Ok((Page { limit, after }, others))
}

/// An opaque cursor for the key a page ended on (hex, so it survives any URL handling).
pub fn encode_cursor(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_cursor(cursor: &str) -> Option<String> {
    if cursor.is_empty() || cursor.len() % 2 != 0 || cursor.len() > 2048 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// `{"items": [...], "next": CURSOR or null}`: `next` only when the page is full.
pub fn list_body(items: Vec<Value>, last_key: Option<&str>, page: &Page) -> Value {
    let next = (items.len() == page.limit)
        .then_some(last_key)
        .flatten()
        .map(encode_cursor);
    json!({"items": items, "next": next})
}

/// RFC 3339 in UTC with `Z`.
pub fn utc(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers
    }

    #[test]
    fn bodies_must_be_small_json_objects_with_known_fields() {
        let h = json_headers();
        let ok = json_object(&h, &Bytes::from_static(br#"{"sync": true}"#), &["sync"]).unwrap();
        assert_eq!(ok.get("sync"), Some(&Value::Bool(true)));
        assert!(json_object(&h, &Bytes::from_static(b"  "), &["sync"])
            .unwrap()
            .is_empty());
        let unknown =
            json_object(&h, &Bytes::from_static(br#"{"sync":1,"x":2}"#), &["sync"]).unwrap_err();
        assert_eq!(
            (unknown.code, unknown.field.as_deref()),
            ("unknown_field", Some("x"))
        );
        let not_json = json_object(&h, &Bytes::from_static(b"{"), &["sync"]).unwrap_err();
        assert_eq!(not_json.code, "invalid_json");
        let array = json_object(&h, &Bytes::from_static(b"[]"), &["sync"]).unwrap_err();
        assert_eq!(array.code, "invalid_json");
        let big = Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]);
        assert_eq!(
            json_object(&h, &big, &[]).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let text = json_object(&HeaderMap::new(), &Bytes::from_static(b"{}"), &[]).unwrap_err();
        assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn fields_have_types() {
        let object: Map<String, Value> =
            serde_json::from_str(r#"{"a": true, "b": "x", "c": 1, "d": null}"#).unwrap();
        assert!(required_bool(&object, "a").unwrap());
        assert_eq!(
            required_bool(&object, "c").unwrap_err().field.as_deref(),
            Some("c")
        );
        assert_eq!(
            required_bool(&object, "z").unwrap_err().code,
            "missing_field"
        );
        assert_eq!(optional_str(&object, "b").unwrap(), Some("x"));
        assert_eq!(optional_str(&object, "d").unwrap(), None);
        assert!(optional_str(&object, "c").is_err());
    }

    #[test]
    fn pages_and_cursors() {
        let (page, others) = page(Some("limit=5&cursor=616263&state=active"), &["state"]).unwrap();
        assert_eq!(page.limit, 5);
        assert_eq!(page.after.as_deref(), Some("abc"));
        assert_eq!(others, vec![("state".to_string(), "active".to_string())]);
        assert_eq!(super::page(None, &[]).unwrap().0.limit, DEFAULT_LIMIT);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "cursor=zz",
            "cursor=6",
            "other=1",
        ] {
            assert!(super::page(Some(bad), &[]).is_err(), "{bad}");
        }
        assert_eq!(
            decode_cursor(&encode_cursor("room@contoso.com")).as_deref(),
            Some("room@contoso.com")
        );
        let full = Page {
            limit: 2,
            after: None,
        };
        let body = list_body(vec![json!(1), json!(2)], Some("b"), &full);
        assert_eq!(body["next"], json!(encode_cursor("b")));
        let body = list_body(vec![json!(1)], Some("a"), &full);
        assert_eq!(body["next"], Value::Null);
    }

    #[test]
    fn times_are_utc_with_z() {
        let t = time::macros::datetime!(2026-12-01 11:00 +01:00);
        assert_eq!(utc(t), "2026-12-01T10:00:00Z");
    }
}
