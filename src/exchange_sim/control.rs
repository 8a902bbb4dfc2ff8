//! The control API over HTTP, for `pushgate simulate`: the verbs of [`SimHandle`] as JSON under
//! `/control/...`, protected by `Authorization: Bearer <control token>`. Item ids travel in the
//! JSON bodies (they hold `/` and `+`). Times are RFC 3339; durations are milliseconds.
//!
//! | call | body | answer |
//! |---|---|---|
//! | `POST /control/mailboxes` | `{"address"}` | `{"created"}` |
//! | `POST /control/deny-impersonation`, `/control/allow-impersonation` | `{"address"}` | `{}` |
//! | `POST /control/items/create` | `{"mailbox","subject","start","end","location"?,"reservation_id"?}` | the item |
//! | `POST /control/items/update` | `{"mailbox","id","subject"?,"start"?,"end"?,"location"? (null clears),"is_cancelled"?,"reservation_id"? (null removes)}` | the item |
//! | `POST /control/items/cancel` | `{"mailbox","id"}` | the item |
//! | `POST /control/items/move-to-deleted-items`, `/soft-delete`, `/restore` | `{"mailbox","id"}` | `{"id"}` (the new id) |
//! | `POST /control/items/hard-delete` | `{"mailbox","id"}` | `{}` |
//! | `GET /control/items?mailbox=ADDRESS` | | `[item...]` |
//! | `POST /control/drop-all-subscriptions` | | `{"dropped"}` |
//! | `POST /control/error-notification` | `{"subscription_id"}` | `{}` |
//! | `POST /control/busy` | `{"for_ms","back_off_ms"}` | `{}` |
//! | `POST /control/stall` | `{"for_ms"}` | `{}` |
//! | `POST /control/expire-watermarks` | `{"mailbox"}` | `{}` |
//! | `POST /control/ews-disabled` | `{"disabled"}` | `{}` |
//! | `POST /control/answer-next-create-after` | `{"delay_ms"}` | `{}` |
//! | `POST /control/latency` | `{"ms"}` | `{}` |
//! | `POST /control/expire-tokens` | | `{}` |
//! | `GET /control/subscriptions`, `/control/calls`, `/control/call-counts`, `/control/deliveries` | | observation |
//!
//! Errors answer `{"error": TEXT}` with 400 (bad input) or 404 (unknown mailbox, item,
//! subscription).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::handle::{ItemSpec, ItemUpdate, Shared, SimError, SimHandle};
use super::schema::parse_date_time;
use super::server::{json_answer, read_body, Answer};

fn error(status: StatusCode, text: &str) -> Answer {
    json_answer(status, &json!({ "error": text }))
}

/// A refused control call: its status and reason.
struct Bad(StatusCode, String);

impl Bad {
    fn input(text: String) -> Bad {
        Bad(StatusCode::BAD_REQUEST, text)
    }

    fn answer(&self) -> Answer {
        error(self.0, &self.1)
    }
}

fn sim_error(e: &SimError) -> Bad {
    let status = match e {
        SimError::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::NOT_FOUND,
    };
    Bad(status, e.to_string())
}

/// A JSON body's fields.
struct Fields(Value);

impl Fields {
    fn string(&self, name: &str) -> Result<String, Bad> {
        self.0
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Bad::input(format!("'{name}' (a string) is required")))
    }

    fn optional_string(&self, name: &str) -> Result<Option<String>, Bad> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Bad::input(format!("'{name}' must be a string"))),
        }
    }

    /// Absent: `None`; null: `Some(None)`; a string: `Some(Some(..))`.
    fn nullable_string(&self, name: &str) -> Result<Option<Option<String>>, Bad> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
            Some(_) => Err(Bad::input(format!("'{name}' must be a string or null"))),
        }
    }

    fn time(&self, name: &str) -> Result<Option<OffsetDateTime>, Bad> {
        match self.optional_string(name)? {
            None => Ok(None),
            Some(text) => parse_date_time(&text)
                .map(Some)
                .ok_or_else(|| Bad::input(format!("'{name}' must be an RFC 3339 time"))),
        }
    }

    fn required_time(&self, name: &str) -> Result<OffsetDateTime, Bad> {
        self.time(name)?
            .ok_or_else(|| Bad::input(format!("'{name}' is required")))
    }

    fn millis(&self, name: &str) -> Result<Duration, Bad> {
        self.0
            .get(name)
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
            .ok_or_else(|| Bad::input(format!("'{name}' (milliseconds) is required")))
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, Bad> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Bad::input(format!("'{name}' must be true or false"))),
        }
    }
}

fn authorized(shared: &Shared, request: &Request<Incoming>) -> bool {
    let Some(value) = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return false;
    };
    token
        .trim()
        .as_bytes()
        .ct_eq(shared.control_token.as_bytes())
        .into()
}

fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| super::auth::form_decode(value))?
    })
}

pub async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    if !authorized(&shared, &request) {
        return error(StatusCode::UNAUTHORIZED, "control token required");
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let sim = SimHandle::from_shared(shared.clone());
    if method == Method::GET {
        return match path.as_str() {
            "/control/subscriptions" => json_answer(StatusCode::OK, &json!(sim.subscriptions())),
            "/control/calls" => json_answer(StatusCode::OK, &json!(sim.calls())),
            "/control/call-counts" => json_answer(StatusCode::OK, &json!(sim.call_counts())),
            "/control/deliveries" => json_answer(StatusCode::OK, &json!(sim.deliveries())),
            "/control/items" => match query_value(query.as_deref(), "mailbox") {
                None => error(StatusCode::BAD_REQUEST, "?mailbox= is required"),
                Some(mailbox) => match sim.items(&mailbox) {
                    Ok(items) => json_answer(
                        StatusCode::OK,
                        &Value::Array(items.iter().map(|i| i.to_json()).collect()),
                    ),
                    Err(e) => sim_error(&e).answer(),
                },
            },
            _ => error(StatusCode::NOT_FOUND, "no such control call"),
        };
    }
    if method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "GET or POST");
    }
    let body = match read_body(request, 1024 * 1024).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(value @ Value::Object(_)) => value,
            _ => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
        }
    };
    match post(&sim, &path, &Fields(value)) {
        Ok(value) => json_answer(StatusCode::OK, &value),
        Err(bad) => bad.answer(),
    }
}

fn ok(value: Value) -> Result<Value, Bad> {
    Ok(value)
}

fn post(sim: &SimHandle, path: &str, fields: &Fields) -> Result<Value, Bad> {
    let done = |r: Result<(), SimError>| r.map(|()| json!({})).map_err(|e| sim_error(&e));
    match path {
        "/control/mailboxes" => {
            ok(json!({ "created": sim.add_mailbox(&fields.string("address")?) }))
        }
        "/control/deny-impersonation" => done(sim.deny_impersonation(&fields.string("address")?)),
        "/control/allow-impersonation" => done(sim.allow_impersonation(&fields.string("address")?)),
        "/control/items/create" => {
            let spec = ItemSpec {
                subject: fields.string("subject")?,
                start: fields.required_time("start")?,
                end: fields.required_time("end")?,
                location: fields.optional_string("location")?,
                reservation_id: fields.optional_string("reservation_id")?,
            };
            let item = sim
                .create_item(&fields.string("mailbox")?, spec)
                .map_err(|e| sim_error(&e))?;
            ok(item.to_json())
        }
        "/control/items/update" => {
            let update = ItemUpdate {
                subject: fields.optional_string("subject")?,
                start: fields.time("start")?,
                end: fields.time("end")?,
                location: fields.nullable_string("location")?,
                is_cancelled: fields.boolean("is_cancelled")?,
                reservation_id: fields.nullable_string("reservation_id")?,
            };
            let item = sim
                .update_item(&fields.string("mailbox")?, &fields.string("id")?, update)
                .map_err(|e| sim_error(&e))?;
            ok(item.to_json())
        }
        "/control/items/cancel" => {
            let item = sim
                .cancel_item(&fields.string("mailbox")?, &fields.string("id")?)
                .map_err(|e| sim_error(&e))?;
            ok(item.to_json())
        }
        "/control/items/move-to-deleted-items"
        | "/control/items/soft-delete"
        | "/control/items/restore" => {
            let (mailbox, id) = (fields.string("mailbox")?, fields.string("id")?);
            let moved = match path {
                "/control/items/move-to-deleted-items" => sim.move_to_deleted_items(&mailbox, &id),
                "/control/items/soft-delete" => sim.soft_delete(&mailbox, &id),
                _ => sim.restore_item(&mailbox, &id),
            };
            ok(json!({ "id": moved.map_err(|e| sim_error(&e))? }))
        }
        "/control/items/hard-delete" => {
            done(sim.hard_delete(&fields.string("mailbox")?, &fields.string("id")?))
        }
        "/control/drop-all-subscriptions" => ok(json!({ "dropped": sim.drop_all_subscriptions() })),
        "/control/error-notification" => {
            done(sim.send_error_notification(&fields.string("subscription_id")?))
        }
        "/control/busy" => {
            sim.busy_for(fields.millis("for_ms")?, fields.millis("back_off_ms")?);
            ok(json!({}))
        }
        "/control/stall" => {
            sim.stall_for(fields.millis("for_ms")?);
            ok(json!({}))
        }
        "/control/expire-watermarks" => done(sim.expire_watermarks(&fields.string("mailbox")?)),
        "/control/ews-disabled" => {
            let disabled = fields
                .boolean("disabled")?
                .ok_or_else(|| Bad::input("'disabled' is required".into()))?;
            sim.set_ews_disabled(disabled);
            ok(json!({}))
        }
        "/control/answer-next-create-after" => {
            sim.answer_next_create_after(fields.millis("delay_ms")?);
            ok(json!({}))
        }
        "/control/latency" => {
            sim.set_latency(fields.millis("ms")?);
            ok(json!({}))
        }
        "/control/expire-tokens" => {
            sim.expire_tokens();
            ok(json!({}))
        }
        _ => Err(Bad(StatusCode::NOT_FOUND, "no such control call".into())),
    }
}
