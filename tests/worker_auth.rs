//! Only the gateway may deliver: a missing or wrong bearer token gets 401 and stores nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod worker_support;

use pushgate::worker;
use worker_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_token_is_refused_and_stores_nothing() {
    let db = TestDb::sqlite();
    let handle = worker::start(db.config()).await.expect("worker starts");
    let store = db.inspect().await;
    let body = std::fs::read(fixtures_dir().join("exo-capture.xml")).unwrap();
    let wrong_tokens: Vec<Option<String>> = vec![
        None,
        Some("Bearer wrong-token".to_string()),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
    ];
    for authorization in wrong_tokens.iter().map(Option::as_deref) {
        let mut connection = Connection::open(handle.listen_addr).await.unwrap();
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| vec![("authorization", value)])
            .unwrap_or_default();
        let answer = connection
            .post(LEGACY_PATH, None, body.clone(), &headers)
            .await
            .unwrap();
        assert_eq!(answer.status, 401, "{authorization:?}");
        assert_eq!(answer.headers.get("www-authenticate").unwrap(), "Bearer");
        assert!(!String::from_utf8_lossy(&answer.body).contains(TOKEN));
    }
    // The token in a header the worker does not read is no token.
    let mut connection = Connection::open(handle.listen_addr).await.unwrap();
    let answer = connection
        .post(
            LEGACY_PATH,
            None,
            body.clone(),
            &[("x-gateway-token", TOKEN)],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 401);

    assert!(
        store.events(None).await.unwrap().is_empty(),
        "nothing stored"
    );
    let metrics = get(handle.metrics_addr, "/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("pushgate_worker_notifications_total{result=\"unauthorized\"} 6"),
        "{text}"
    );
    assert!(
        text.contains("pushgate_worker_notifications_total{result=\"stored\"} 0"),
        "{text}"
    );

    let answer = post(handle.listen_addr, LEGACY_PATH, body).await.unwrap();
    assert_eq!(answer.status, 200, "the right token still works");
    assert_eq!(store.events(None).await.unwrap().len(), 2);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn worker_does_not_start_without_a_token() {
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.worker.gateway_token_file = db.dir().join("missing.token");
    let error = worker::start(config).await.err().expect("refuses to start");
    assert!(
        format!("{error:#}").contains("gateway_token_file"),
        "{error:#}"
    );
    let empty = db.dir().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let mut config = db.config();
    config.worker.gateway_token_file = empty;
    let error = worker::start(config).await.err().expect("refuses to start");
    assert!(format!("{error:#}").contains("empty"), "{error:#}");
}
