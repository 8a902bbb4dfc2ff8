//! The EWS client against the simulated Exchange over real TLS: every operation, the errors
//! Exchange sends (as types), OAuth token expiry and renewal, Basic and bearer credentials, and
//! request timeouts, including a write whose outcome the client cannot know.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

use std::time::Duration;

use pushgate::ews::{
    AuthSettings, CalendarItemChanges, CalendarView, DeleteType, EwsClient, EwsError, EwsSettings,
    ItemId, NewCalendarItem, PushSubscriptionRequest, ReservationProperty, ResponseCode,
    RetryPolicy, Secret,
};
use pushgate::exchange_sim::{
    ItemSpec, PropertySetForm, ScriptedFailure, SimHandle, SimOptions, Simulator,
};
use time::OffsetDateTime;

const ROOM: &str = "room1@contoso.com";
const CLIENT_ID: &str = "app";
const CLIENT_SECRET: &str = "s3cret";
const STATIC_TOKEN: &str = "static-token-123";

fn property() -> ReservationProperty {
    ReservationProperty::new("AppointmentOid")
}

async fn simulator(options: SimOptions) -> SimHandle {
    Simulator::start(SimOptions {
        mailboxes: vec![ROOM.into(), "room2@contoso.com".into()],
        oauth_clients: vec![(CLIENT_ID.into(), CLIENT_SECRET.into())],
        static_tokens: vec![STATIC_TOKEN.into()],
        basic: Some(("svc".into(), "pw".into())),
        // No deliveries to the made-up callback URLs of these tests.
        first_status_after: Duration::from_secs(3600),
        ..options
    })
    .await
    .unwrap()
}

fn settings(sim: &SimHandle, auth: AuthSettings) -> EwsSettings {
    let mut settings = EwsSettings::new(&sim.ews_url(), auth).unwrap();
    settings.system_roots = false;
    settings.extra_ca_pem = Some(sim.ca_pem().unwrap().as_bytes().to_vec());
    settings.timeout = Duration::from_secs(5);
    settings.retry = RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(2),
    };
    settings
}

fn oauth(sim: &SimHandle) -> AuthSettings {
    AuthSettings::OAuth2 {
        token_url: sim.token_url().parse().unwrap(),
        client_id: CLIENT_ID.into(),
        client_secret: Secret::new(CLIENT_SECRET),
        scope: "https://outlook.office365.com/.default".into(),
    }
}

fn client(sim: &SimHandle) -> EwsClient {
    EwsClient::new(settings(sim, oauth(sim))).unwrap()
}

fn at(days: i64, hour: u8) -> OffsetDateTime {
    let today = OffsetDateTime::now_utc().date();
    (today + time::Duration::days(days))
        .with_hms(hour, 0, 0)
        .unwrap()
        .assume_utc()
}

fn new_item(subject: &str, reservation: &str) -> NewCalendarItem {
    NewCalendarItem {
        subject: subject.into(),
        start: at(2, 9),
        end: at(2, 10),
        location: Some("Room 1".into()),
        reservation_id: reservation.into(),
    }
}

fn code(error: &EwsError) -> Option<&ResponseCode> {
    match error {
        EwsError::ResponseCode { code, .. } => Some(code),
        _ => None,
    }
}

fn subscribe_request(watermark: Option<String>) -> PushSubscriptionRequest {
    PushSubscriptionRequest {
        watermark,
        status_frequency_minutes: 5,
        url: "https://127.0.0.1:9/api/webhooks/exchange".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_against_the_simulator() {
    let sim = simulator(SimOptions::default()).await;
    let ews = client(&sim);

    let calendar = ews.calendar_folder_id(ROOM).await.unwrap();
    assert!(!calendar.is_empty());

    // CreateItem, linked to its reservation.
    let created = ews
        .create_calendar_item(ROOM, &new_item("Board meeting", "res-1"), &property())
        .await
        .unwrap();
    let in_exchange = sim.item(ROOM, &created.id).unwrap();
    assert_eq!(
        created.change_key.as_deref(),
        Some(in_exchange.change_key.as_str())
    );
    assert_eq!(in_exchange.folder, "calendar");
    assert_eq!(in_exchange.subject.as_deref(), Some("Board meeting"));
    assert_eq!((in_exchange.start, in_exchange.end), (at(2, 9), at(2, 10)));
    assert_eq!(in_exchange.location.as_deref(), Some("Room 1"));
    assert_eq!(in_exchange.reservation_id.as_deref(), Some("res-1"));

    // GetItem reads every field back, with the item's real ChangeKey.
    let read = ews
        .get_calendar_items(ROOM, &[ItemId::new(&created.id)], &property())
        .await
        .unwrap();
    let item = read.into_iter().next().unwrap().unwrap();
    assert_eq!(item.item_id, created);
    assert_eq!(item.parent_folder_id.as_deref(), Some(calendar.as_str()));
    assert_eq!(item.subject.as_deref(), Some("Board meeting"));
    assert_eq!((item.start, item.end), (Some(at(2, 9)), Some(at(2, 10))));
    assert_eq!(item.location.as_deref(), Some("Room 1"));
    assert!(!item.is_cancelled);
    assert_eq!(item.reservation_id.as_deref(), Some("res-1"));

    // UpdateItem with the ChangeKey: a new version.
    let changes = CalendarItemChanges {
        subject: Some("Board meeting (moved)".into()),
        start: Some(at(3, 14)),
        end: Some(at(3, 15)),
        location: Some(None),
        reservation_id: None,
    };
    let updated = ews
        .update_calendar_item(ROOM, &created, &changes, &property())
        .await
        .unwrap();
    assert_eq!(updated.id, created.id);
    assert_ne!(updated.change_key, created.change_key);
    let in_exchange = sim.item(ROOM, &created.id).unwrap();
    assert_eq!(
        in_exchange.subject.as_deref(),
        Some("Board meeting (moved)")
    );
    assert_eq!(in_exchange.start, at(3, 14));
    assert_eq!(in_exchange.location, None);
    // The stale ChangeKey is refused: someone changed the item meanwhile.
    let stale = ews
        .update_calendar_item(ROOM, &created, &changes, &property())
        .await
        .unwrap_err();
    assert_eq!(
        code(&stale),
        Some(&ResponseCode::IrresolvableConflict),
        "{stale}"
    );

    // FindItem with a CalendarView: the window, and a truncated page.
    let other = sim
        .create_item(
            ROOM,
            ItemSpec {
                subject: "Outlook item".into(),
                start: at(3, 8),
                end: at(3, 9),
                location: None,
                reservation_id: None,
            },
        )
        .unwrap();
    let window = CalendarView {
        start: at(3, 0),
        end: at(4, 0),
        max_entries: 100,
    };
    let page = ews
        .find_calendar_items(ROOM, &window, &property())
        .await
        .unwrap();
    assert!(page.includes_last_item_in_range);
    let mut ids: Vec<String> = page.items.iter().map(|i| i.item_id.id.clone()).collect();
    ids.sort();
    let mut expected = vec![created.id.clone(), other.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let truncated = ews
        .find_calendar_items(
            ROOM,
            &CalendarView {
                max_entries: 1,
                ..window
            },
            &property(),
        )
        .await
        .unwrap();
    assert_eq!(truncated.items.len(), 1);
    assert!(!truncated.includes_last_item_in_range);

    // DeleteItem into Deleted Items: the old id is gone from the calendar.
    ews.delete_calendar_item(ROOM, &updated, DeleteType::MoveToDeletedItems)
        .await
        .unwrap();
    let moved: Vec<_> = sim
        .items(ROOM)
        .unwrap()
        .into_iter()
        .filter(|i| i.folder == "deleteditems")
        .collect();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].reservation_id.as_deref(), Some("res-1"));
    let gone = ews
        .get_calendar_items(ROOM, &[ItemId::new(&created.id)], &property())
        .await
        .unwrap();
    let error = gone.into_iter().next().unwrap().unwrap_err();
    assert!(error.is_item_not_found(), "{error}");
    ews.delete_calendar_item(ROOM, &ItemId::new(&other.id), DeleteType::HardDelete)
        .await
        .unwrap();
    assert!(sim.item(ROOM, &other.id).is_err());

    // Subscribe, fresh and from a watermark.
    let fresh = ews.subscribe(ROOM, &subscribe_request(None)).await.unwrap();
    let info = sim.subscription(&fresh.subscription_id).unwrap();
    assert_eq!(info.mailbox, ROOM);
    assert_eq!(info.url, "https://127.0.0.1:9/api/webhooks/exchange");
    assert_eq!(info.status_frequency_minutes, 5);
    let resumed = ews
        .subscribe(ROOM, &subscribe_request(Some(fresh.watermark.clone())))
        .await
        .unwrap();
    assert_eq!(resumed.watermark, fresh.watermark);
    assert_ne!(resumed.subscription_id, fresh.subscription_id);

    let calls = sim.call_counts();
    for operation in [
        "GetFolder",
        "CreateItem",
        "GetItem",
        "UpdateItem",
        "FindItem",
        "DeleteItem",
        "Subscribe",
    ] {
        assert!(calls.operation(operation) >= 1, "{operation}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_property_set_guid_form_is_read_as_the_name() {
    let sim = simulator(SimOptions {
        property_set_form: PropertySetForm::Guid,
        ..SimOptions::default()
    })
    .await;
    let ews = client(&sim);
    let created = ews
        .create_calendar_item(ROOM, &new_item("x", "res-guid"), &property())
        .await
        .unwrap();
    let item = ews
        .get_calendar_items(ROOM, &[created], &property())
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(item.reservation_id.as_deref(), Some("res-guid"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_errors_become_types() {
    let sim = simulator(SimOptions {
        max_subscriptions_per_mailbox: 2,
        ..SimOptions::default()
    })
    .await;
    let ews = client(&sim);

    // An item deleted for good.
    let deleted = ews
        .create_calendar_item(ROOM, &new_item("gone", "res-gone"), &property())
        .await
        .unwrap();
    sim.hard_delete(ROOM, &deleted.id).unwrap();
    let missing = ews
        .get_calendar_items(ROOM, std::slice::from_ref(&deleted), &property())
        .await
        .unwrap();
    let error = missing[0].as_ref().unwrap_err();
    assert!(error.is_item_not_found(), "{error}");

    let error = ews
        .subscribe("nobody@contoso.com", &subscribe_request(None))
        .await
        .unwrap_err();
    assert_eq!(
        code(&error),
        Some(&ResponseCode::NonExistentMailbox),
        "{error}"
    );
    assert!(!error.is_transient());

    sim.deny_impersonation("room2@contoso.com").unwrap();
    let error = ews
        .subscribe("room2@contoso.com", &subscribe_request(None))
        .await
        .unwrap_err();
    assert_eq!(
        code(&error),
        Some(&ResponseCode::ImpersonateUserDenied),
        "{error}"
    );

    let first = ews.subscribe(ROOM, &subscribe_request(None)).await.unwrap();
    ews.subscribe(ROOM, &subscribe_request(None)).await.unwrap();
    let error = ews
        .subscribe(ROOM, &subscribe_request(None))
        .await
        .unwrap_err();
    assert_eq!(
        code(&error),
        Some(&ResponseCode::ExceededSubscriptionCount),
        "{error}"
    );
    sim.drop_all_subscriptions();

    sim.expire_watermarks(ROOM).unwrap();
    let error = ews
        .subscribe(ROOM, &subscribe_request(Some(first.watermark)))
        .await
        .unwrap_err();
    assert_eq!(
        code(&error),
        Some(&ResponseCode::InvalidWatermark),
        "{error}"
    );

    // ErrorServerBusy as a fault (Subscribe): the hint reaches the caller; writes are not retried.
    sim.busy_for(Duration::from_secs(30), Duration::from_millis(4000));
    let before = sim.call_counts().operation("Subscribe");
    let error = ews
        .subscribe(ROOM, &subscribe_request(None))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(&ResponseCode::ServerBusy), "{error}");
    assert_eq!(error.back_off(), Some(Duration::from_millis(4000)));
    assert!(error.is_transient());
    assert_eq!(
        sim.call_counts().operation("Subscribe"),
        before + 1,
        "a write is never repeated"
    );
    // In-body (GetItem): a read is retried within its bounds, then the hint comes back.
    let before = sim.call_counts().operation("GetItem");
    let answers = ews
        .get_calendar_items(ROOM, std::slice::from_ref(&deleted), &property())
        .await;
    let error = match answers {
        Err(error) => error,
        Ok(mut items) => items.pop().unwrap().unwrap_err(),
    };
    assert_eq!(code(&error), Some(&ResponseCode::ServerBusy), "{error}");
    assert_eq!(error.back_off(), Some(Duration::from_millis(4000)));
    assert_eq!(
        sim.call_counts().operation("GetItem"),
        before + 1,
        "a hint longer than the client's bound is handed to the caller, not waited out"
    );
    sim.busy_for(Duration::ZERO, Duration::ZERO);

    // A short hint is waited out by a read: the retry succeeds.
    sim.busy_for(Duration::from_millis(150), Duration::from_millis(200));
    let created = sim
        .create_item(
            ROOM,
            ItemSpec {
                subject: "s".into(),
                start: at(5, 9),
                end: at(5, 10),
                location: None,
                reservation_id: None,
            },
        )
        .unwrap();
    let items = ews
        .get_calendar_items(ROOM, &[ItemId::new(&created.id)], &property())
        .await
        .unwrap();
    assert_eq!(items[0].as_ref().unwrap().subject.as_deref(), Some("s"));

    // A mailbox being moved, a batch stopped (Warning): reads retry and succeed.
    sim.fail_next(
        "GetItem",
        ScriptedFailure::Error("ErrorMailboxMoveInProgress".into()),
    );
    sim.fail_next("GetItem", ScriptedFailure::Warning);
    let items = ews
        .get_calendar_items(ROOM, &[ItemId::new(&created.id)], &property())
        .await
        .unwrap();
    assert!(items[0].is_ok(), "{items:?}");
    // The same on a write: the error comes back as a type, nothing is repeated.
    sim.fail_next(
        "CreateItem",
        ScriptedFailure::Error("ErrorMailboxMoveInProgress".into()),
    );
    let error = ews
        .create_calendar_item(ROOM, &new_item("moving", "res-m"), &property())
        .await
        .unwrap_err();
    assert_eq!(
        code(&error),
        Some(&ResponseCode::MailboxMoveInProgress),
        "{error}"
    );
    assert!(error.is_transient() && !error.outcome_unknown());
    sim.fail_next("CreateItem", ScriptedFailure::Warning);
    let error = ews
        .create_calendar_item(ROOM, &new_item("stopped", "res-w"), &property())
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::Warning { .. }), "{error}");
    // Schema validation fault.
    sim.fail_next(
        "CreateItem",
        ScriptedFailure::Fault("ErrorSchemaValidation".into()),
    );
    let error = ews
        .create_calendar_item(ROOM, &new_item("x", "res-x"), &property())
        .await
        .unwrap_err();
    assert_eq!(
        code(&error),
        Some(&ResponseCode::SchemaValidation),
        "{error}"
    );
    // HTTP 429 and 503 with Retry-After.
    for status in [429, 503] {
        sim.fail_next(
            "Subscribe",
            ScriptedFailure::Http {
                status,
                retry_after: Some(120),
            },
        );
        let error = ews
            .subscribe(ROOM, &subscribe_request(None))
            .await
            .unwrap_err();
        assert!(
            matches!(error, EwsError::Http { status: s, .. } if s == status),
            "{error}"
        );
        assert_eq!(error.back_off(), Some(Duration::from_secs(120)));
        assert!(error.is_transient());
    }
    let made: Vec<_> = sim
        .items(ROOM)
        .unwrap()
        .into_iter()
        .filter(|i| {
            matches!(
                i.reservation_id.as_deref(),
                Some("res-m" | "res-w" | "res-x")
            )
        })
        .collect();
    assert!(made.is_empty(), "refused writes made nothing: {made:?}");

    // EWS switched off for the tenant: 403, explained.
    sim.set_ews_disabled(true);
    let error = ews.calendar_folder_id(ROOM).await.unwrap_err();
    assert!(matches!(error, EwsError::EwsDisabled), "{error}");
    assert!(error.to_string().contains("allow-list"));
    assert_eq!(error.code(), "http_403");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_are_renewed_before_expiry_and_after_a_401() {
    let sim = simulator(SimOptions {
        token_lifetime: Duration::from_secs(2),
        ..SimOptions::default()
    })
    .await;
    let ews = client(&sim);
    ews.calendar_folder_id(ROOM).await.unwrap();
    ews.calendar_folder_id(ROOM).await.unwrap();
    assert_eq!(sim.tokens_issued(), 1, "cached");
    // Past its lifetime (renewed ahead of expiry, never after): a new token.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    ews.calendar_folder_id(ROOM).await.unwrap();
    assert_eq!(sim.tokens_issued(), 2);
    // Exchange stops honouring the token early: the 401 renews it once, the call succeeds.
    sim.expire_tokens();
    let unauthorized_before = sim.call_counts().unauthorized;
    ews.calendar_folder_id(ROOM).await.unwrap();
    assert_eq!(sim.tokens_issued(), 3);
    assert_eq!(sim.call_counts().unauthorized, unauthorized_before + 1);

    // A refused client secret: an error saying so, nothing sent to EWS.
    let wrong = EwsClient::new(settings(
        &sim,
        AuthSettings::OAuth2 {
            token_url: sim.token_url().parse().unwrap(),
            client_id: CLIENT_ID.into(),
            client_secret: Secret::new("wrong"),
            scope: "https://outlook.office365.com/.default".into(),
        },
    ))
    .unwrap();
    let error = wrong.calendar_folder_id(ROOM).await.unwrap_err();
    assert!(matches!(error, EwsError::Token { .. }), "{error}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_bearer_credentials() {
    let sim = simulator(SimOptions::default()).await;
    let basic = EwsClient::new(settings(
        &sim,
        AuthSettings::Basic {
            username: "svc".into(),
            password: Secret::new("pw"),
        },
    ))
    .unwrap();
    basic.calendar_folder_id(ROOM).await.unwrap();
    let wrong = EwsClient::new(settings(
        &sim,
        AuthSettings::Basic {
            username: "svc".into(),
            password: Secret::new("nope"),
        },
    ))
    .unwrap();
    let error = wrong.calendar_folder_id(ROOM).await.unwrap_err();
    assert!(matches!(error, EwsError::Unauthorized { .. }), "{error}");

    // The bearer token file is read again when it changes.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "not-a-token\n").unwrap();
    let bearer = EwsClient::new(settings(
        &sim,
        AuthSettings::Bearer {
            token_file: token_file.clone(),
        },
    ))
    .unwrap();
    let error = bearer.calendar_folder_id(ROOM).await.unwrap_err();
    assert!(matches!(error, EwsError::Unauthorized { .. }), "{error}");
    std::fs::write(&token_file, format!("{STATIC_TOKEN}\n")).unwrap();
    bearer.calendar_folder_id(ROOM).await.unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_a_create_whose_outcome_is_unknown() {
    let sim = simulator(SimOptions::default()).await;
    let mut short = settings(&sim, oauth(&sim));
    short.timeout = Duration::from_millis(400);
    let ews = EwsClient::new(short).unwrap();
    ews.calendar_folder_id(ROOM).await.unwrap(); // token fetched before the stall

    // Exchange does not answer: a read fails with a timeout after its bounded retries.
    sim.stall_for(Duration::from_secs(3));
    let error = ews.calendar_folder_id(ROOM).await.unwrap_err();
    assert!(
        matches!(
            error,
            EwsError::Timeout {
                request_sent: true,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.is_transient());
    sim.stall_for(Duration::ZERO);

    // The create happens, but its answer comes after the client gave up: the client says the
    // outcome is unknown, so the caller must look before creating again.
    sim.answer_next_create_after(Duration::from_secs(1));
    let error = ews
        .create_calendar_item(ROOM, &new_item("Ambiguous", "res-amb"), &property())
        .await
        .unwrap_err();
    assert!(error.outcome_unknown(), "{error}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let made: Vec<_> = sim
        .items(ROOM)
        .unwrap()
        .into_iter()
        .filter(|i| i.reservation_id.as_deref() == Some("res-amb"))
        .collect();
    assert_eq!(made.len(), 1, "the write did happen, once");
    assert_eq!(
        sim.call_counts().operation("CreateItem"),
        1,
        "never repeated blindly"
    );
    sim.shutdown().await;
}
