//! The worker's REST API for mailboxes (`/api/v1/mailboxes`), over real sockets, on SQLite and
//! PostgreSQL: each token opens only its own door, sync on and off is idempotent, lists page
//! with cursors, and every bad input gets a precise status and the error JSON, changing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod worker_support;

use pushgate::worker;
use serde_json::Value;
use worker_support::*;

per_backend!(
    each_token_opens_only_its_own_door,
    mailboxes_switch_on_and_off,
    lists_page_with_cursors,
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

async fn each_token_opens_only_its_own_door(db: &TestDb) {
    let handle = start(db).await;
    let addr = handle.listen_addr;
    // The gateway's token on the API: 401.
    let answer = api(addr, "GET", "/api/v1/mailboxes", Some(TOKEN), None)
        .await
        .unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(json(&answer)["error"], "unauthorized");
    assert_eq!(answer.headers.get("www-authenticate").unwrap(), "Bearer");
    let answer = api(addr, "GET", "/api/v1/mailboxes", None, None)
        .await
        .unwrap();
    assert_eq!(answer.status, 401);
    // The API token on a notification path: 401, nothing stored.
    let body = std::fs::read(fixtures_dir().join("created-calendar-item.xml")).unwrap();
    let mut connection = Connection::open(addr).await.unwrap();
    let answer = connection
        .post("/api/webhooks/exchange", Some(API_TOKEN), body.clone(), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 401);
    let store = db.inspect().await;
    assert!(store.events(None).await.unwrap().is_empty());
    // Each with its own: fine.
    let answer = api(addr, "GET", "/api/v1/mailboxes", Some(API_TOKEN), None)
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let answer = post(addr, "/api/webhooks/exchange", body).await.unwrap();
    assert_eq!(answer.status, 200);
    handle.shutdown().await.unwrap();
}

async fn mailboxes_switch_on_and_off(db: &TestDb) {
    let handle = start(db).await;
    let addr = handle.listen_addr;
    let path = "/api/v1/mailboxes/Room1@Contoso.com";
    let created = api(
        addr,
        "PUT",
        path,
        Some(API_TOKEN),
        Some(r#"{"sync": true, "tenant": "Fabrikam"}"#),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201);
    let mailbox = json(&created);
    assert_eq!(mailbox["address"], "room1@contoso.com");
    assert_eq!(mailbox["tenant"], "Fabrikam");
    assert_eq!(mailbox["sync"], true);
    assert_eq!(mailbox["state"], "subscribing");
    assert_eq!(mailbox["subscription_id"], Value::Null);
    assert_eq!(mailbox["last_notification_at"], Value::Null);
    assert_eq!(mailbox["last_error"], Value::Null);

    let again = api(
        addr,
        "PUT",
        path,
        Some(API_TOKEN),
        Some(r#"{"sync": true}"#),
    )
    .await
    .unwrap();
    assert_eq!(again.status, 200, "idempotent, not created twice");
    assert_eq!(
        json(&again)["tenant"],
        "Fabrikam",
        "tenant kept when not given"
    );

    let got = api(
        addr,
        "GET",
        "/api/v1/mailboxes/room1@contoso.com",
        Some(API_TOKEN),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(json(&got)["state"], "subscribing");

    let off = api(
        addr,
        "PUT",
        path,
        Some(API_TOKEN),
        Some(r#"{"sync": false}"#),
    )
    .await
    .unwrap();
    assert_eq!(off.status, 200);
    assert_eq!(json(&off)["state"], "off");
    assert_eq!(json(&off)["sync"], false);

    let deleted = api(addr, "DELETE", path, Some(API_TOKEN), None)
        .await
        .unwrap();
    assert_eq!(deleted.status, 204);
    let gone = api(addr, "GET", path, Some(API_TOKEN), None).await.unwrap();
    assert_eq!(gone.status, 404);
    assert_eq!(json(&gone)["error"], "not_found");
    let twice = api(addr, "DELETE", path, Some(API_TOKEN), None)
        .await
        .unwrap();
    assert_eq!(twice.status, 404);
    handle.shutdown().await.unwrap();
}

async fn lists_page_with_cursors(db: &TestDb) {
    let handle = start(db).await;
    let addr = handle.listen_addr;
    for i in 0..23 {
        let path = format!("/api/v1/mailboxes/room{i:02}@contoso.com");
        let answer = api(
            addr,
            "PUT",
            &path,
            Some(API_TOKEN),
            Some(r#"{"sync": true}"#),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 201);
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/mailboxes?limit=10".to_string();
    let mut pages = 0;
    loop {
        let answer = api(addr, "GET", &path, Some(API_TOKEN), None)
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let page = json(&answer);
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["address"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(cursor) => path = format!("/api/v1/mailboxes?limit=10&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "pagination must end");
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..23).map(|i| format!("room{i:02}@contoso.com")).collect();
    assert_eq!(seen, expected);
    let all = json(
        &api(addr, "GET", "/api/v1/mailboxes", Some(API_TOKEN), None)
            .await
            .unwrap(),
    );
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        23,
        "default limit 100"
    );
    assert_eq!(all["next"], Value::Null);
    handle.shutdown().await.unwrap();
}

async fn bad_input_gets_a_precise_answer_and_changes_nothing(db: &TestDb) {
    let handle = start(db).await;
    let addr = handle.listen_addr;
    let put = |path: &'static str, body: &'static str| async move {
        api(addr, "PUT", path, Some(API_TOKEN), Some(body))
            .await
            .unwrap()
    };
    let cases: Vec<(Answer, u16, &str, Option<&str>)> = vec![
        (
            put("/api/v1/mailboxes/not-an-address", r#"{"sync": true}"#).await,
            400,
            "invalid_field",
            Some("address"),
        ),
        (
            put("/api/v1/mailboxes/r@contoso.com", r#"{"sync": "yes"}"#).await,
            400,
            "invalid_field",
            Some("sync"),
        ),
        (
            put("/api/v1/mailboxes/r@contoso.com", r#"{}"#).await,
            400,
            "missing_field",
            Some("sync"),
        ),
        (
            put(
                "/api/v1/mailboxes/r@contoso.com",
                r#"{"sync": true, "owner": "x"}"#,
            )
            .await,
            400,
            "unknown_field",
            Some("owner"),
        ),
        (
            put(
                "/api/v1/mailboxes/r@contoso.com",
                r#"{"sync": true, "tenant": "no spaces"}"#,
            )
            .await,
            400,
            "invalid_field",
            Some("tenant"),
        ),
        (
            put("/api/v1/mailboxes/r@contoso.com", r#"{"sync": tru"#).await,
            400,
            "invalid_json",
            None,
        ),
        (
            api(
                addr,
                "POST",
                "/api/v1/mailboxes",
                Some(API_TOKEN),
                Some("{}"),
            )
            .await
            .unwrap(),
            405,
            "method_not_allowed",
            None,
        ),
        (
            api(addr, "GET", "/api/v1/nothing", Some(API_TOKEN), None)
                .await
                .unwrap(),
            404,
            "not_found",
            None,
        ),
        (
            api(
                addr,
                "GET",
                "/api/v1/mailboxes?limit=0",
                Some(API_TOKEN),
                None,
            )
            .await
            .unwrap(),
            400,
            "invalid_field",
            Some("limit"),
        ),
        (
            api(
                addr,
                "GET",
                "/api/v1/mailboxes?cursor=zz",
                Some(API_TOKEN),
                None,
            )
            .await
            .unwrap(),
            400,
            "invalid_field",
            Some("cursor"),
        ),
        (
            api(
                addr,
                "GET",
                "/api/v1/mailboxes?sort=x",
                Some(API_TOKEN),
                None,
            )
            .await
            .unwrap(),
            400,
            "unknown_field",
            Some("sort"),
        ),
    ];
    for (answer, status, code, field) in cases {
        assert_eq!(answer.status, status, "{answer:?}");
        let body = json(&answer);
        assert_eq!(body["error"], code, "{body}");
        assert_eq!(body["field"].as_str(), field, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A body that is not JSON at all: 415.
    let mut connection = Connection::open(addr).await.unwrap();
    let request = http::Request::put("/api/v1/mailboxes/r@contoso.com")
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"sync=true",
        )))
        .unwrap();
    let answer = connection.send(request).await.unwrap();
    assert_eq!(answer.status, 415);
    // Nothing of it was stored.
    let store = db.inspect().await;
    assert!(store.mailboxes(None, 10).await.unwrap().is_empty());
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_api_is_off_without_a_token_file() {
    let db = TestDb::sqlite();
    let handle = worker::start(db.config()).await.unwrap();
    let answer = api(
        handle.listen_addr,
        "GET",
        "/api/v1/mailboxes",
        Some(TOKEN),
        None,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 404);
    assert_eq!(json(&answer)["error"], "api_disabled");
    handle.shutdown().await.unwrap();
}
