//! `/api/v1/reservations`: the web application and the Outlook add-in book, change and cancel
//! room reservations. Pure rules read and check each request; handlers are glue over the store,
//! which writes the outbox row of a web change in the same transaction as the change.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::mailboxes::mailbox_address;
use super::wire::{self, ApiError, Page};
use super::ApiState;
use crate::store::{
    ChangeSource, NewReservation, Reservation, ReservationChange, ReservationCursor,
    ReservationError, ReservationFilter, ReservationStatus, ReservationWrite,
};

/// Longest subject and resource, in characters.
pub const MAX_TEXT_CHARS: usize = 255;

/// How far from now a reservation's start or end may lie (five years, a leap day included).
pub const MAX_DISTANCE: Duration = Duration::days(5 * 365 + 1);

const CREATE_FIELDS: &[&str] = &[
    "mailbox", "resource", "subject", "start", "end", "source", "tenant",
];
const CHANGE_FIELDS: &[&str] = &["subject", "start", "end", "resource", "source"];
const CANCEL_FIELDS: &[&str] = &["source"];
const LIST_PARAMETERS: &[&str] = &["mailbox", "status", "from", "to"];

fn missing(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "missing_field",
        Some(field),
        "is required",
    )
}

/// A field that must be present (and not null).
fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Value, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(missing(field)),
        Some(value) => Ok(value),
    }
}

fn string<'a>(field: &str, value: &'a Value) -> Result<&'a str, ApiError> {
    value
        .as_str()
        .ok_or_else(|| ApiError::invalid(field, "must be a string"))
}

/// `web` or `addin`.
pub fn source(value: &Value) -> Result<ChangeSource, ApiError> {
    ChangeSource::parse(string("source", value)?)
        .ok_or_else(|| ApiError::invalid("source", "must be web or addin"))
}

/// A subject: at most 255 characters, no control characters (the calendar item carries it as
/// XML text, which cannot hold most of them). Empty is allowed: Outlook allows it, and an item
/// changed in Outlook may bring an empty subject back anyway.
pub fn subject(value: &Value) -> Result<String, ApiError> {
    text("subject", value, true)
}

/// A resource (the item's Location): like a subject, but never empty.
pub fn resource(value: &Value) -> Result<String, ApiError> {
    text("resource", value, false)
}

fn text(field: &str, value: &Value, may_be_empty: bool) -> Result<String, ApiError> {
    let text = string(field, value)?;
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, "must hold no control characters"));
    }
    if !may_be_empty && text.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    Ok(text.to_string())
}

/// An instant of a reservation: RFC 3339 with any offset, whole seconds (calendar items keep no
/// fractions, so a fraction would come back from Exchange as a change), at most five years from
/// `now` either way.
pub fn instant(
    field: &str,
    value: &Value,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, ApiError> {
    let t = parse_rfc3339(field, string(field, value)?)?;
    if t.nanosecond() != 0 {
        return Err(ApiError::invalid(field, "must be whole seconds"));
    }
    if (t - now).abs() > MAX_DISTANCE {
        return Err(ApiError::invalid(field, "must be within five years of now"));
    }
    Ok(t)
}

fn parse_rfc3339(field: &str, text: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        ApiError::invalid(
            field,
            "must be an RFC 3339 date and time, e.g. 2026-12-01T09:00:00Z",
        )
    })
}

fn window_error(field: &str) -> ApiError {
    ApiError::invalid(field, "start must be before end")
}

/// The body of `POST /api/v1/reservations`; `id` is the new reservation's.
pub fn create_request(
    headers: &HeaderMap,
    body: &Bytes,
    now: OffsetDateTime,
    id: String,
) -> Result<NewReservation, ApiError> {
    let object = wire::json_object(headers, body, CREATE_FIELDS)?;
    let mailbox = string("mailbox", required(&object, "mailbox")?)?;
    let mailbox = mailbox_address(mailbox).map_err(|e| ApiError::invalid("mailbox", e.message))?;
    let resource = resource(required(&object, "resource")?)?;
    let subject = subject(required(&object, "subject")?)?;
    let start = instant("start", required(&object, "start")?, now)?;
    let end = instant("end", required(&object, "end")?, now)?;
    let source = source(required(&object, "source")?)?;
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
    if start >= end {
        return Err(window_error("end"));
    }
    Ok(NewReservation {
        id,
        tenant,
        mailbox,
        resource,
        subject,
        start,
        end,
        source,
    })
}

/// The body of `PATCH /api/v1/reservations/{id}`: any of the fields, and who changes them.
pub fn change_request(
    headers: &HeaderMap,
    body: &Bytes,
    now: OffsetDateTime,
) -> Result<(ReservationChange, ChangeSource), ApiError> {
    let object = wire::json_object(headers, body, CHANGE_FIELDS)?;
    let source = source(required(&object, "source")?)?;
    // Present means "set it"; null cannot unset a field every reservation has.
    let given = |field: &str| object.get(field);
    let change = ReservationChange {
        subject: given("subject").map(subject).transpose()?,
        start: given("start")
            .map(|v| instant("start", v, now))
            .transpose()?,
        end: given("end").map(|v| instant("end", v, now)).transpose()?,
        resource: given("resource").map(resource).transpose()?,
    };
    if let (Some(start), Some(end)) = (change.start, change.end) {
        if start >= end {
            return Err(window_error("end"));
        }
    }
    Ok((change, source))
}

/// The body of `POST /api/v1/reservations/{id}/cancel`.
pub fn cancel_request(headers: &HeaderMap, body: &Bytes) -> Result<ChangeSource, ApiError> {
    let object = wire::json_object(headers, body, CANCEL_FIELDS)?;
    source(required(&object, "source")?)
}

/// `GET /api/v1/reservations?mailbox=&status=&from=&to=&limit=&cursor=`.
pub fn list_request(
    query: Option<&str>,
) -> Result<(Page, ReservationFilter, Option<ReservationCursor>), ApiError> {
    let (page, parameters) = wire::page(query, LIST_PARAMETERS)?;
    let mut filter = ReservationFilter::default();
    for (key, value) in &parameters {
        match key.as_str() {
            "mailbox" => {
                filter.mailbox = Some(
                    mailbox_address(value).map_err(|e| ApiError::invalid("mailbox", e.message))?,
                );
            }
            "status" => {
                filter.status =
                    Some(ReservationStatus::parse(value).ok_or_else(|| {
                        ApiError::invalid("status", "must be active or cancelled")
                    })?);
            }
            "from" => filter.from = Some(parse_rfc3339("from", value)?),
            "to" => filter.to = Some(parse_rfc3339("to", value)?),
            _ => {}
        }
    }
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if from >= to {
            return Err(ApiError::invalid("to", "must be after from"));
        }
    }
    let cursor = page
        .after
        .as_deref()
        .map(|key| {
            ReservationCursor::parse(key)
                .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this API gave"))
        })
        .transpose()?;
    Ok((page, filter, cursor))
}

/// Does `id` look like a reservation id (`res-` and 32 hex digits)? Others are not looked up.
pub fn is_reservation_id(id: &str) -> bool {
    id.strip_prefix("res-").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A reservation as JSON.
pub fn reservation_json(r: &Reservation) -> Value {
    json!({
        "id": r.id,
        "tenant": r.tenant,
        "mailbox": r.mailbox,
        "resource": r.resource,
        "subject": r.subject,
        "start": wire::utc(r.start),
        "end": wire::utc(r.end),
        "status": r.status.as_str(),
        "source": r.source.as_str(),
        "item_id": r.item_id,
        "change_key": r.change_key,
        "sync_state": r.sync_state.as_str(),
        "version": r.version,
        "last_change": r.last_change.as_str(),
        "last_error": r.last_error,
        "created_at": wire::utc(r.created_at),
        "updated_at": wire::utc(r.updated_at),
    })
}

/// The answer to a refusal of the store's; `window_field` is the field named when a change
/// would leave start not before end.
pub fn refusal(error: &ReservationError, window_field: &str) -> ApiError {
    match error {
        ReservationError::NotFound => ApiError::not_found("no such reservation"),
        ReservationError::Cancelled(_) => ApiError::new(
            StatusCode::CONFLICT,
            "cancelled",
            None,
            "the reservation is cancelled and cannot change",
        ),
        ReservationError::UnknownMailbox => ApiError::invalid(
            "mailbox",
            "no such mailbox: switch sync on for it first (PUT /api/v1/mailboxes/{address})",
        ),
        ReservationError::SyncOff => ApiError::invalid("mailbox", "sync is off for this mailbox"),
        ReservationError::TenantMismatch { mailbox_tenant } => ApiError::invalid(
            "tenant",
            format!("the mailbox belongs to tenant {mailbox_tenant}"),
        ),
        ReservationError::EmptyWindow => window_error(window_field),
        ReservationError::Store(error) => ApiError::unavailable(error),
    }
}

/// After a write: wakes the outbox loop when a calendar write was queued, and answers.
fn written(state: &ApiState, status: StatusCode, write: &ReservationWrite) -> Response {
    if write.outbox_id.is_some() {
        if let Some(wake) = &state.outbox_wake {
            wake.notify_one();
        }
    }
    wire::json_response(status, &reservation_json(&write.reservation))
}

pub(super) async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = OffsetDateTime::now_utc();
    let new = match create_request(&headers, &body, now, crate::store::new_reservation_id()) {
        Ok(new) => new,
        Err(error) => return error.into_response(),
    };
    match state.store.create_reservation(&new, now).await {
        Ok(write) => {
            tracing::info!(
                reservation = %write.reservation.id,
                mailbox = %write.reservation.mailbox,
                source = new.source.as_str(),
                "reservation created"
            );
            written(&state, StatusCode::CREATED, &write)
        }
        Err(error) => refusal(&error, "end").into_response(),
    }
}

pub(super) async fn get(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    if !is_reservation_id(&id) {
        return ApiError::not_found("no such reservation").into_response();
    }
    match state.store.reservation(&id).await {
        Ok(Some(reservation)) => {
            wire::json_response(StatusCode::OK, &reservation_json(&reservation))
        }
        Ok(None) => ApiError::not_found("no such reservation").into_response(),
        Err(error) => ApiError::unavailable(&error).into_response(),
    }
}

pub(super) async fn change(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_reservation_id(&id) {
        return ApiError::not_found("no such reservation").into_response();
    }
    let now = OffsetDateTime::now_utc();
    let (change, source) = match change_request(&headers, &body, now) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    match state
        .store
        .change_reservation(&id, &change, source, now)
        .await
    {
        Ok(write) => {
            tracing::info!(
                reservation = %id,
                source = source.as_str(),
                changed = write.changed,
                version = write.reservation.version,
                "reservation changed"
            );
            written(&state, StatusCode::OK, &write)
        }
        Err(error) => {
            let field = if change.end.is_some() { "end" } else { "start" };
            refusal(&error, field).into_response()
        }
    }
}

pub(super) async fn cancel(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_reservation_id(&id) {
        return ApiError::not_found("no such reservation").into_response();
    }
    let source = match cancel_request(&headers, &body) {
        Ok(source) => source,
        Err(error) => return error.into_response(),
    };
    match state
        .store
        .cancel_reservation(&id, source, OffsetDateTime::now_utc())
        .await
    {
        Ok(write) => {
            tracing::info!(
                reservation = %id,
                source = source.as_str(),
                changed = write.changed,
                "reservation cancelled"
            );
            written(&state, StatusCode::OK, &write)
        }
        Err(error) => refusal(&error, "end").into_response(),
    }
}

pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let (page, filter, cursor) = match list_request(query.as_deref()) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    match state
        .store
        .reservations(&filter, cursor.as_ref(), page.limit)
        .await
    {
        Ok(reservations) => {
            let last = reservations
                .last()
                .map(|r| ReservationCursor::after(r).key());
            let items = reservations.iter().map(reservation_json).collect();
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
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);
    const ID: &str = "res-0123456789abcdef0123456789abcdef";

    fn headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers
    }

    fn body(value: Value) -> Bytes {
        Bytes::from(value.to_string())
    }

    fn booking() -> Value {
        json!({
            "mailbox": "Room1@Contoso.com",
            "resource": "Room 1",
            "subject": "Planning",
            "start": "2026-12-02T10:00:00+01:00",
            "end": "2026-12-02T10:00:00Z",
            "source": "web",
        })
    }

    fn with(mut value: Value, field: &str, to: Value) -> Value {
        value[field] = to;
        value
    }

    fn without(mut value: Value, field: &str) -> Value {
        value.as_object_mut().unwrap().remove(field);
        value
    }

    fn refused(value: Value) -> (&'static str, Option<String>) {
        let error = create_request(&headers(), &body(value), NOW, ID.into()).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        (error.code, error.field)
    }

    #[test]
    fn a_booking_is_read_into_utc_with_a_lower_cased_mailbox() {
        let new = create_request(&headers(), &body(booking()), NOW, ID.into()).unwrap();
        assert_eq!(new.id, ID);
        assert_eq!(new.mailbox, "room1@contoso.com");
        assert_eq!(new.start, datetime!(2026-12-02 09:00 UTC));
        assert_eq!(new.end, datetime!(2026-12-02 10:00 UTC));
        assert_eq!(new.source, ChangeSource::Web);
        assert_eq!(new.tenant, None);
        let with_tenant = with(booking(), "tenant", json!("Fabrikam"));
        let new = create_request(&headers(), &body(with_tenant), NOW, ID.into()).unwrap();
        assert_eq!(new.tenant.as_deref(), Some("Fabrikam"));
        let empty_subject = with(booking(), "subject", json!(""));
        assert!(create_request(&headers(), &body(empty_subject), NOW, ID.into()).is_ok());
        let longest = with(booking(), "subject", json!("é".repeat(MAX_TEXT_CHARS)));
        assert!(create_request(&headers(), &body(longest), NOW, ID.into()).is_ok());
        let millis = with(booking(), "start", json!("2026-12-02T09:00:00.000Z"));
        assert!(create_request(&headers(), &body(millis), NOW, ID.into()).is_ok());
    }

    #[test]
    fn every_bad_booking_names_its_field() {
        let field = |s: &str| Some(s.to_string());
        for name in ["mailbox", "resource", "subject", "start", "end", "source"] {
            assert_eq!(
                refused(without(booking(), name)),
                ("missing_field", field(name))
            );
            assert_eq!(
                refused(with(booking(), name, Value::Null)),
                ("missing_field", field(name))
            );
            assert_eq!(
                refused(with(booking(), name, json!(7))),
                ("invalid_field", field(name))
            );
        }
        let cases = [
            (
                with(booking(), "mailbox", json!("not an address")),
                "mailbox",
            ),
            (with(booking(), "resource", json!("  ")), "resource"),
            (
                with(booking(), "resource", json!("x".repeat(256))),
                "resource",
            ),
            (
                with(booking(), "subject", json!("x".repeat(256))),
                "subject",
            ),
            (with(booking(), "subject", json!("a\u{0}b")), "subject"),
            (with(booking(), "subject", json!("two\nlines")), "subject"),
            (with(booking(), "start", json!("2026-12-02 09:00")), "start"),
            (
                with(booking(), "start", json!("2026-12-02T09:00:00")),
                "start",
            ),
            (with(booking(), "start", json!("tomorrow")), "start"),
            (
                with(booking(), "start", json!("2026-12-02T09:00:00.5Z")),
                "start",
            ),
            (with(booking(), "end", json!("2032-01-01T00:00:00Z")), "end"),
            (
                with(booking(), "start", json!("2021-11-01T00:00:00Z")),
                "start",
            ),
            (with(booking(), "end", json!("2026-12-02T09:00:00Z")), "end"),
            (with(booking(), "end", json!("2026-12-02T08:00:00Z")), "end"),
            (with(booking(), "source", json!("exchange")), "source"),
            (with(booking(), "tenant", json!("no spaces")), "tenant"),
        ];
        for (value, name) in cases {
            assert_eq!(
                refused(value.clone()),
                ("invalid_field", field(name)),
                "{value}"
            );
        }
        assert_eq!(
            refused(with(booking(), "location", json!("x"))),
            ("unknown_field", field("location"))
        );
    }

    #[test]
    fn five_years_either_way_is_the_limit() {
        let inside = NOW + MAX_DISTANCE;
        let value = json!(inside.format(&Rfc3339).unwrap());
        assert!(instant("end", &value, NOW).is_ok());
        let outside = json!((inside + Duration::seconds(1)).format(&Rfc3339).unwrap());
        assert!(instant("end", &outside, NOW).is_err());
        let past = json!((NOW - MAX_DISTANCE - Duration::seconds(1))
            .format(&Rfc3339)
            .unwrap());
        assert!(instant("start", &past, NOW).is_err());
    }

    #[test]
    fn changes_need_a_source_and_check_what_they_set() {
        let (change, source) = change_request(
            &headers(),
            &body(json!({"subject": "New", "source": "addin"})),
            NOW,
        )
        .unwrap();
        assert_eq!(source, ChangeSource::Addin);
        assert_eq!(change.subject.as_deref(), Some("New"));
        assert_eq!(
            (change.start, change.end, change.resource),
            (None, None, None)
        );
        let (change, _) = change_request(&headers(), &body(json!({"source": "web"})), NOW).unwrap();
        assert_eq!(
            change,
            ReservationChange::default(),
            "nothing to change is fine"
        );
        let field = |value: Value| {
            let error = change_request(&headers(), &body(value), NOW).unwrap_err();
            (error.code, error.field)
        };
        assert_eq!(
            field(json!({"subject": "x"})),
            ("missing_field", Some("source".into()))
        );
        assert_eq!(
            field(json!({"subject": null, "source": "web"})),
            ("invalid_field", Some("subject".into()))
        );
        assert_eq!(
            field(
                json!({"start": "2026-12-02T10:00:00Z", "end": "2026-12-02T09:00:00Z",
                          "source": "web"})
            ),
            ("invalid_field", Some("end".into()))
        );
        assert_eq!(
            field(json!({"mailbox": "r@c.com", "source": "web"})),
            ("unknown_field", Some("mailbox".into()))
        );
        assert_eq!(
            field(json!({"resource": "", "source": "web"})),
            ("invalid_field", Some("resource".into()))
        );
        assert_eq!(
            cancel_request(&headers(), &body(json!({})))
                .unwrap_err()
                .code,
            "missing_field"
        );
        assert_eq!(
            cancel_request(&headers(), &body(json!({"source": "addin"}))).unwrap(),
            ChangeSource::Addin
        );
    }

    #[test]
    fn lists_filter_and_page() {
        let (page, filter, cursor) = list_request(Some(
            "mailbox=Room1%40Contoso.com&status=active&from=2026-12-01T00:00:00Z\
             &to=2026-12-02T00:00:00%2B01:00&limit=5",
        ))
        .unwrap();
        assert_eq!(page.limit, 5);
        assert_eq!(cursor, None);
        assert_eq!(filter.mailbox.as_deref(), Some("room1@contoso.com"));
        assert_eq!(filter.status, Some(ReservationStatus::Active));
        assert_eq!(filter.from, Some(datetime!(2026-12-01 00:00 UTC)));
        assert_eq!(filter.to, Some(datetime!(2026-12-01 23:00 UTC)));
        let key = ReservationCursor {
            start: NOW,
            id: ID.into(),
        }
        .key();
        let (_, _, cursor) =
            list_request(Some(&format!("cursor={}", wire::encode_cursor(&key)))).unwrap();
        assert_eq!(cursor.map(|c| c.id), Some(ID.to_string()));
        for (query, field) in [
            ("status=open", "status"),
            ("mailbox=nobody", "mailbox"),
            ("from=yesterday", "from"),
            ("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "to"),
            ("cursor=6162", "cursor"),
            ("sort=start", "sort"),
        ] {
            let error = list_request(Some(query)).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(field), "{query}");
        }
    }

    #[test]
    fn ids_have_one_shape() {
        assert!(is_reservation_id(ID));
        assert!(is_reservation_id(&crate::store::new_reservation_id()));
        for bad in [
            "",
            "res-",
            "res-0123",
            "RES-0123456789abcdef0123456789abcdef",
            "res-0123456789ABCDEF0123456789abcdef",
            "res-0123456789abcdef0123456789abcdeg",
        ] {
            assert!(!is_reservation_id(bad), "{bad}");
        }
    }

    #[test]
    fn refusals_map_to_statuses() {
        let cancelled = refusal(&ReservationError::Cancelled(Box::new(sample())), "end");
        assert_eq!(
            (cancelled.status, cancelled.code),
            (StatusCode::CONFLICT, "cancelled")
        );
        let window = refusal(&ReservationError::EmptyWindow, "start");
        assert_eq!(window.field.as_deref(), Some("start"));
        let off = refusal(&ReservationError::SyncOff, "end");
        assert_eq!(
            (off.status, off.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("mailbox"))
        );
        assert_eq!(
            refusal(&ReservationError::NotFound, "end").status,
            StatusCode::NOT_FOUND
        );
    }

    fn sample() -> Reservation {
        Reservation {
            id: ID.into(),
            tenant: "default".into(),
            mailbox: "room1@contoso.com".into(),
            resource: "Room 1".into(),
            subject: "Planning".into(),
            start: datetime!(2026-12-02 09:00 +01:00),
            end: datetime!(2026-12-02 10:00 UTC),
            status: ReservationStatus::Active,
            source: ChangeSource::Addin,
            item_id: None,
            change_key: None,
            sync_state: crate::store::SyncState::Pending,
            version: 1,
            last_change: crate::store::LastChange::Addin,
            last_error: None,
            created_at: datetime!(2026-12-01 10:00:00.123456 UTC),
            updated_at: NOW,
            write_pending: false,
        }
    }

    #[test]
    fn the_json_shape() {
        let value = reservation_json(&sample());
        assert_eq!(value["start"], "2026-12-02T08:00:00Z");
        assert_eq!(value["end"], "2026-12-02T10:00:00Z");
        assert_eq!(value["created_at"], "2026-12-01T10:00:00.123456Z");
        assert_eq!(value["item_id"], Value::Null);
        assert_eq!(value["version"], 1);
        assert_eq!(value["status"], "active");
        assert_eq!(value["sync_state"], "pending");
        assert_eq!(value["last_change"], "addin");
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "change_key",
                "created_at",
                "end",
                "id",
                "item_id",
                "last_change",
                "last_error",
                "mailbox",
                "resource",
                "source",
                "start",
                "status",
                "subject",
                "sync_state",
                "tenant",
                "updated_at",
                "version"
            ]
        );
    }
}
