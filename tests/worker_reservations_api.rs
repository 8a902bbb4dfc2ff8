//! The worker's REST API for reservations (`/api/v1/reservations`), over real sockets, on SQLite
//! and PostgreSQL: bookings are created, read, changed and cancelled with versions that count
//! only real changes; a web change writes its outbox row and an add-in change does not; a
//! cancelled reservation refuses changes (409); lists filter and page; every bad input gets a
//! precise status and the error JSON, changing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod worker_support;

use std::net::SocketAddr;
use std::sync::Arc;

use pushgate::store::{ReservationFilter, Store};
use pushgate::worker;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, Time};
use worker_support::*;

per_backend!(
    bookings_are_created_read_changed_and_cancelled,
    lists_filter_and_page,
    bad_input_gets_a_precise_answer_and_changes_nothing,
);

fn json(answer: &Answer) -> Value {
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "JSON answer expected, got {answer:?}"
    );
    serde_json::from_slice(&answer.body).expect("JSON body")
}

async fn start(db: &TestDb) -> worker::WorkerHandle {
    worker::start(worker_config_with_api(db.dir(), &db.url()))
        .await
        .expect("worker starts")
}

/// Nine o'clock UTC, `days` from today.
fn day(days: i64) -> OffsetDateTime {
    (OffsetDateTime::now_utc() + Duration::days(days))
        .replace_time(Time::from_hms(9, 0, 0).unwrap())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// One API call with the API token.
async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Answer {
    let body = body.map(Value::to_string);
    api(addr, method, path, Some(API_TOKEN), body.as_deref())
        .await
        .unwrap()
}

async fn mailbox(addr: SocketAddr, address: &str, sync: bool) {
    let answer = call(
        addr,
        "PUT",
        &format!("/api/v1/mailboxes/{address}"),
        Some(&json!({"sync": sync})),
    )
    .await;
    assert!([200, 201].contains(&answer.status), "{answer:?}");
}

fn booking(mailbox: &str, start: OffsetDateTime, source: &str) -> Value {
    json!({
        "mailbox": mailbox,
        "resource": "Room 1",
        "subject": "Planning",
        "start": rfc3339(start),
        "end": rfc3339(start + Duration::hours(1)),
        "source": source,
    })
}

async fn create(addr: SocketAddr, body: &Value) -> Value {
    let answer = call(addr, "POST", "/api/v1/reservations", Some(body)).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    json(&answer)
}

/// Versions of a reservation's outbox rows, read through the store.
async fn outbox(store: &Arc<dyn Store>, id: &str) -> Vec<i64> {
    store
        .outbox_rows(id)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.version)
        .collect()
}

async fn bookings_are_created_read_changed_and_cancelled(db: &TestDb) {
    let handle = start(db).await;
    let addr = handle.listen_addr;
    let store = db.inspect().await;
    mailbox(addr, "room1@contoso.com", true).await;
    let start_at = day(2);

    // Given with an offset, answered in UTC.
    let mut body = booking("Room1@Contoso.com", start_at, "web");
    body["start"] = json!(rfc3339(start_at.to_offset(time::macros::offset!(+2))));
    let created = create(addr, &body).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("res-") && id.len() == 36, "{id}");
    assert_eq!(created["tenant"], "default");
    assert_eq!(created["mailbox"], "room1@contoso.com");
    assert_eq!(created["resource"], "Room 1");
    assert_eq!(created["subject"], "Planning");
    assert_eq!(created["start"], rfc3339(start_at));
    assert!(created["start"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["end"], rfc3339(start_at + Duration::hours(1)));
    assert_eq!(created["status"], "active");
    assert_eq!(created["source"], "web");
    assert_eq!(created["item_id"], Value::Null);
    assert_eq!(created["change_key"], Value::Null);
    assert_eq!(created["sync_state"], "pending");
    assert_eq!(created["version"], 1);
    assert_eq!(created["last_change"], "web");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["created_at"], created["updated_at"]);
    assert_eq!(
        outbox(&store, &id).await,
        [1],
        "a web booking queues its CreateItem"
    );

    let path = format!("/api/v1/reservations/{id}");
    let got = call(addr, "GET", &path, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(json(&got), created);

    // A web change: version 2 and its outbox row.
    let changed = call(
        addr,
        "PATCH",
        &path,
        Some(&json!({"subject": "Budget", "source": "web"})),
    )
    .await;
    assert_eq!(changed.status, 200, "{changed:?}");
    let changed = json(&changed);
    assert_eq!(changed["subject"], "Budget");
    assert_eq!(changed["version"], 2);
    assert_eq!(changed["last_change"], "web");
    assert_eq!(outbox(&store, &id).await, [1, 2]);
    // The same again: nothing changes, nothing is written.
    let same = json(
        &call(
            addr,
            "PATCH",
            &path,
            Some(&json!({"subject": "Budget", "resource": "Room 1", "source": "web"})),
        )
        .await,
    );
    assert_eq!(same, changed);
    assert_eq!(outbox(&store, &id).await, [1, 2]);
    // Through the add-in: Outlook writes the item, so no outbox row.
    let new_end = start_at + Duration::hours(2);
    let by_addin = call(
        addr,
        "PATCH",
        &path,
        Some(&json!({"end": rfc3339(new_end), "source": "addin"})),
    )
    .await;
    assert_eq!(by_addin.status, 200);
    let by_addin = json(&by_addin);
    assert_eq!(by_addin["version"], 3);
    assert_eq!(by_addin["last_change"], "addin");
    assert_eq!(by_addin["end"], rfc3339(new_end));
    assert_eq!(outbox(&store, &id).await, [1, 2]);

    // Cancelled from the web: its DeleteItem is queued; cancelling twice is no error.
    let cancel = format!("{path}/cancel");
    let cancelled = call(addr, "POST", &cancel, Some(&json!({"source": "web"}))).await;
    assert_eq!(cancelled.status, 200);
    let cancelled = json(&cancelled);
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["version"], 4);
    assert_eq!(outbox(&store, &id).await, [1, 2, 4]);
    let twice = call(addr, "POST", &cancel, Some(&json!({"source": "web"}))).await;
    assert_eq!(twice.status, 200);
    assert_eq!(json(&twice), cancelled);
    assert_eq!(outbox(&store, &id).await, [1, 2, 4]);
    // A cancelled reservation is final.
    let refused = call(
        addr,
        "PATCH",
        &path,
        Some(&json!({"subject": "Back", "source": "web"})),
    )
    .await;
    assert_eq!(refused.status, 409);
    let refusal = json(&refused);
    assert_eq!(refusal["error"], "cancelled");
    assert_eq!(refusal["field"], Value::Null);
    assert!(refusal["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(json(&call(addr, "GET", &path, None).await), cancelled);
    assert_eq!(outbox(&store, &id).await, [1, 2, 4]);

    // An add-in booking: nothing for the service to write, ever.
    let addin = create(addr, &booking("room1@contoso.com", day(3), "addin")).await;
    let addin_id = addin["id"].as_str().unwrap();
    assert_eq!(addin["source"], "addin");
    assert_eq!(addin["last_change"], "addin");
    assert_eq!(addin["sync_state"], "pending", "until its item is linked");
    let cancelled = call(
        addr,
        "POST",
        &format!("/api/v1/reservations/{addin_id}/cancel"),
        Some(&json!({"source": "addin"})),
    )
    .await;
    assert_eq!(json(&cancelled)["version"], 2);
    assert!(outbox(&store, addin_id).await.is_empty());

    for unknown in [
        "/api/v1/reservations/res-00000000000000000000000000000000",
        "/api/v1/reservations/not-an-id",
    ] {
        let answer = call(addr, "GET", unknown, None).await;
        assert_eq!(answer.status, 404);
        assert_eq!(json(&answer)["error"], "not_found");
    }
    handle.shutdown().await.unwrap();
}

async fn lists_filter_and_page(db: &TestDb) {
    let handle = start(db).await;
    let addr = handle.listen_addr;
    mailbox(addr, "room1@contoso.com", true).await;
    mailbox(addr, "room2@contoso.com", true).await;
    // room1: days 1..=5 at nine, one hour each; room2: days 1 and 2; day 3 of room1 cancelled.
    let mut ids = Vec::new();
    for d in 1..=5 {
        ids.push((
            d,
            "room1",
            create(addr, &booking("room1@contoso.com", day(d), "web")).await,
        ));
    }
    for d in 1..=2 {
        ids.push((
            d,
            "room2",
            create(addr, &booking("room2@contoso.com", day(d), "addin")).await,
        ));
    }
    let cancelled_id = ids[2].2["id"].as_str().unwrap().to_string();
    let answer = call(
        addr,
        "POST",
        &format!("/api/v1/reservations/{cancelled_id}/cancel"),
        Some(&json!({"source": "web"})),
    )
    .await;
    assert_eq!(answer.status, 200);
    // Expected order: by start, then id.
    let mut expected: Vec<(i64, String)> = ids
        .iter()
        .map(|(d, _, r)| (*d, r["id"].as_str().unwrap().to_string()))
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    let list = |query: String| async move {
        let answer = call(addr, "GET", &format!("/api/v1/reservations{query}"), None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        json(&answer)
    };
    let item_ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };

    let mut seen = Vec::new();
    let mut query = "?limit=3".to_string();
    let mut pages = 0;
    loop {
        let page = list(query.clone()).await;
        pages += 1;
        seen.extend(item_ids(&page));
        match page["next"].as_str() {
            Some(cursor) => query = format!("?limit=3&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "pagination must end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);
    let all = list(String::new()).await;
    assert_eq!(item_ids(&all), expected);
    assert_eq!(all["next"], Value::Null);

    let room2 = list("?mailbox=Room2@contoso.com".into()).await;
    assert_eq!(item_ids(&room2).len(), 2);
    assert!(room2["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["mailbox"] == "room2@contoso.com"));
    let cancelled = list("?status=cancelled".into()).await;
    assert_eq!(item_ids(&cancelled), [cancelled_id]);
    let active = list("?status=active&mailbox=room1@contoso.com".into()).await;
    assert_eq!(item_ids(&active).len(), 4);
    // Overlap with [from, to): day 2's bookings end at ten, day 4's start at nine.
    let window = format!(
        "?from={}&to={}",
        rfc3339(day(2) + Duration::minutes(59)).replace('+', "%2B"),
        rfc3339(day(4)).replace('+', "%2B")
    );
    let in_window = list(window).await;
    let days: Vec<i64> = item_ids(&in_window)
        .iter()
        .map(|id| {
            ids.iter()
                .find(|(_, _, r)| r["id"] == *id.as_str())
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(days, [2, 2, 3]);
    handle.shutdown().await.unwrap();
}

/// A bad request and its answer: method, path, body; status, error code, field.
type Case<'a> = (
    &'a str,
    String,
    Option<Value>,
    u16,
    &'a str,
    Option<&'a str>,
);

async fn bad_input_gets_a_precise_answer_and_changes_nothing(db: &TestDb) {
    let handle = start(db).await;
    let addr = handle.listen_addr;
    let store = db.inspect().await;
    mailbox(addr, "room1@contoso.com", true).await;
    mailbox(addr, "off@contoso.com", false).await;
    let fabrikam = call(
        addr,
        "PUT",
        "/api/v1/mailboxes/room3@contoso.com",
        Some(&json!({"sync": true, "tenant": "fabrikam"})),
    )
    .await;
    assert_eq!(fabrikam.status, 201);
    let existing = create(addr, &booking("room1@contoso.com", day(2), "web")).await;
    let id = existing["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/reservations/{id}");
    let good = booking("room1@contoso.com", day(5), "web");
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };

    let mut cases: Vec<Case> = Vec::new();
    let post = "/api/v1/reservations".to_string();
    for field in ["mailbox", "resource", "subject", "start", "end", "source"] {
        cases.push((
            "POST",
            post.clone(),
            Some(without(field)),
            400,
            "missing_field",
            Some(field),
        ));
    }
    let far = rfc3339(OffsetDateTime::now_utc() + Duration::days(5 * 366));
    let long_ago = rfc3339(OffsetDateTime::now_utc() - Duration::days(5 * 366));
    for (body, field) in [
        (with("room", json!("1")), "room"),
        (with("id", json!("res-mine")), "id"),
    ] {
        cases.push((
            "POST",
            post.clone(),
            Some(body),
            400,
            "unknown_field",
            Some(field),
        ));
    }
    for (body, field) in [
        (with("end", good["start"].clone()), "end"),
        (with("mailbox", json!("nobody@contoso.com")), "mailbox"),
        (with("mailbox", json!("off@contoso.com")), "mailbox"),
        (with("mailbox", json!("not an address")), "mailbox"),
        (with("subject", json!("x".repeat(256))), "subject"),
        (with("subject", json!(42)), "subject"),
        (with("resource", json!("")), "resource"),
        (with("end", json!(far)), "end"),
        (with("start", json!(long_ago)), "start"),
        (with("start", json!("2026-13-01T09:00:00Z")), "start"),
        (with("start", json!("next tuesday")), "start"),
        (with("source", json!("exchange")), "source"),
        (
            {
                let mut body = with("mailbox", json!("room3@contoso.com"));
                body["tenant"] = json!("contoso");
                body
            },
            "tenant",
        ),
    ] {
        cases.push((
            "POST",
            post.clone(),
            Some(body),
            400,
            "invalid_field",
            Some(field),
        ));
    }
    // Changes and cancellations of the existing reservation.
    let later = rfc3339(day(2) + Duration::hours(3));
    for (body, status, code, field) in [
        (
            json!({"subject": "x"}),
            400,
            "missing_field",
            Some("source"),
        ),
        (
            json!({"subject": "x", "source": "outlook"}),
            400,
            "invalid_field",
            Some("source"),
        ),
        (
            json!({"start": later, "source": "web"}),
            400,
            "invalid_field",
            Some("start"),
        ),
        (
            json!({"start": later, "end": rfc3339(day(2)), "source": "web"}),
            400,
            "invalid_field",
            Some("end"),
        ),
        (
            json!({"mailbox": "room3@contoso.com", "source": "web"}),
            400,
            "unknown_field",
            Some("mailbox"),
        ),
        (
            json!({"subject": "y".repeat(256), "source": "web"}),
            400,
            "invalid_field",
            Some("subject"),
        ),
        (
            json!({"end": far, "source": "web"}),
            400,
            "invalid_field",
            Some("end"),
        ),
    ] {
        cases.push(("PATCH", path.clone(), Some(body), status, code, field));
    }
    let nobody = "/api/v1/reservations/res-ffffffffffffffffffffffffffffffff".to_string();
    cases.push((
        "PATCH",
        nobody.clone(),
        Some(json!({"subject": "x", "source": "web"})),
        404,
        "not_found",
        None,
    ));
    cases.push((
        "POST",
        format!("{nobody}/cancel"),
        Some(json!({"source": "web"})),
        404,
        "not_found",
        None,
    ));
    cases.push((
        "POST",
        format!("{path}/cancel"),
        Some(json!({})),
        400,
        "missing_field",
        Some("source"),
    ));
    cases.push((
        "POST",
        format!("{path}/cancel"),
        Some(json!({"source": "web", "why": "x"})),
        400,
        "unknown_field",
        Some("why"),
    ));
    cases.push((
        "DELETE",
        path.clone(),
        None,
        405,
        "method_not_allowed",
        None,
    ));
    cases.push((
        "PUT",
        post.clone(),
        Some(good.clone()),
        405,
        "method_not_allowed",
        None,
    ));
    cases.push((
        "GET",
        format!("{path}/cancel"),
        None,
        405,
        "method_not_allowed",
        None,
    ));
    for (query, field, code) in [
        ("status=open", "status", "invalid_field"),
        ("mailbox=nobody", "mailbox", "invalid_field"),
        ("from=yesterday", "from", "invalid_field"),
        ("to=2026-12-01", "to", "invalid_field"),
        ("limit=0", "limit", "invalid_field"),
        ("cursor=zz", "cursor", "invalid_field"),
        ("cursor=616263", "cursor", "invalid_field"),
        ("sort=start", "sort", "unknown_field"),
    ] {
        cases.push((
            "GET",
            format!("{post}?{query}"),
            None,
            400,
            code,
            Some(field),
        ));
    }

    for (method, path, body, status, code, field) in &cases {
        let answer = call(addr, method, path, body.as_ref()).await;
        assert_eq!(
            answer.status, *status,
            "{method} {path} {body:?}: {answer:?}"
        );
        let error = json(&answer);
        assert_eq!(error["error"], *code, "{method} {path} {body:?}: {error}");
        assert_eq!(
            error["field"].as_str(),
            *field,
            "{method} {path} {body:?}: {error}"
        );
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // Not JSON at all: 415; not the API token: 401.
    let good_text = good.to_string();
    let mut connection = Connection::open(addr).await.unwrap();
    let request = http::Request::post("/api/v1/reservations")
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            good_text.clone(),
        )))
        .unwrap();
    assert_eq!(connection.send(request).await.unwrap().status, 415);
    let answer = api(
        addr,
        "POST",
        "/api/v1/reservations",
        Some(TOKEN),
        Some(&good_text),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 401);
    let answer = api(addr, "GET", &path, None, None).await.unwrap();
    assert_eq!(answer.status, 401);
    let syntax = api(
        addr,
        "POST",
        "/api/v1/reservations",
        Some(API_TOKEN),
        Some("{\"mailbox\":"),
    )
    .await
    .unwrap();
    assert_eq!(syntax.status, 400);
    assert_eq!(json(&syntax)["error"], "invalid_json");

    // Nothing of it was stored: the one reservation as it was, with its one outbox row.
    let all = store
        .reservations(&ReservationFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(json(&call(addr, "GET", &path, None).await), existing);
    assert_eq!(outbox(&store, &id).await, [1]);
    handle.shutdown().await.unwrap();
}
