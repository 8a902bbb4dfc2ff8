//! `parse(notification_xml(n)) == n` over models proptest generates: every event kind, optional
//! fields on and off, strings that need escaping and any character XML allows. A failure is
//! shrunk to a minimal model.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use std::cell::RefCell;
use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngSeed, TestError, TestRunner};
use pushgate::notification::{
    notification_xml, parse, validate, Event, EventKind, Limits, Notification, NotificationContent,
    ObjectId, ObjectKind, ResponseClass, ResponseMessage,
};

/// Models per run (about 6,000 events): every kind and option many times over, in a few seconds
/// of an unoptimised test build.
const CASES: u32 = 1000;
/// A fixed seed keeps the run deterministic; `PUSHGATE_PROPTEST_SEED=<u64>` explores others.
const SEED: u64 = 0x0000_5EED_00F0_DE15;

fn runner(cases: u32) -> TestRunner {
    let seed = std::env::var("PUSHGATE_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    })
}

const PIECES: &[&str] = &[
    "AAMkADk3",
    "&",
    "<",
    ">",
    "\"",
    "'",
    "&amp;",
    "]]>",
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "=",
    "/",
    "\u{e9}",
    "\u{263A}",
    "\u{1F600}",
    "x",
    "==",
    "--",
    "<!--",
    "&#38;",
];

/// A character XML 1.0 allows (`Char`): tab, newline, carriage return, and the rest above the
/// C0 controls except U+FFFE and U+FFFF.
fn xml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        select(vec!['\t', '\n', '\r']),
        (0x20u32..=0xD7FF).prop_filter_map("a char", char::from_u32),
        (0xE000u32..=0xFFFD).prop_filter_map("a char", char::from_u32),
        (0x1_0000u32..=0x10_FFFF).prop_filter_map("a char", char::from_u32),
    ]
}

/// A string built from pieces that need escaping in text and attributes, and any XML character.
fn tricky(non_empty: bool) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => select(PIECES).prop_map(str::to_string),
        1 => xml_char().prop_map(String::from),
    ];
    let min = usize::from(non_empty);
    proptest::collection::vec(piece, min..min + 6).prop_map(|pieces| pieces.concat())
}

fn object_kind() -> impl Strategy<Value = ObjectKind> {
    select(vec![ObjectKind::Item, ObjectKind::Folder])
}

fn object(kind: impl Strategy<Value = ObjectKind>) -> impl Strategy<Value = ObjectId> {
    (
        kind,
        // Id may be empty (xs:string)
        tricky(false),
        proptest::option::of(select(vec![
            "DwAAAA==",
            "AQAAAA==",
            "AgAAAA==",
            "",
            "k&<>\"'\t",
        ])),
    )
        .prop_map(|(kind, id, change_key)| ObjectId {
            kind,
            id,
            change_key: change_key.map(str::to_string),
        })
}

/// An event of any kind, with every field its kind allows (each one on or off where optional).
fn any_event() -> impl Strategy<Value = Event> {
    let timestamp = select(vec![
        "2020-12-03T11:03:50Z",
        "2026-11-20T09:42:11+01:00",
        "2024-02-29T24:00:00",
        "-0044-03-15T12:00:00.123456-14:00",
    ]);
    let unread_count = proptest::option::of(prop_oneof![
        select(vec![0, 1, -1, i32::MAX, i32::MIN, 42]),
        any::<i32>(),
    ]);
    let ids = (
        object(object_kind()),
        object(Just(ObjectKind::Folder)),
        object(object_kind()),
        object(Just(ObjectKind::Folder)),
    );
    (
        select(EventKind::ALL.to_vec()),
        proptest::option::of(tricky(true)),
        timestamp,
        ids,
        unread_count,
    )
        .prop_map(|(kind, watermark, timestamp, ids, unread)| {
            let (object, parent, old_object, old_parent) = ids;
            if kind == EventKind::Status {
                return Event {
                    kind,
                    watermark,
                    timestamp: None,
                    object: None,
                    parent_folder_id: None,
                    old_object: None,
                    old_parent_folder_id: None,
                    unread_count: None,
                };
            }
            let old_ids = kind.has_old_ids();
            Event {
                kind,
                watermark,
                timestamp: Some(timestamp.to_string()),
                object: Some(object),
                parent_folder_id: Some(parent),
                old_object: old_ids.then_some(old_object),
                old_parent_folder_id: old_ids.then_some(old_parent),
                unread_count: unread.filter(|_| kind == EventKind::Modified),
            }
        })
}

fn message() -> impl Strategy<Value = ResponseMessage> {
    let class = select(vec![
        ResponseClass::Success,
        ResponseClass::Warning,
        ResponseClass::Error,
    ]);
    let content = (
        proptest::option::of(tricky(true)),
        any::<bool>(),
        proptest::collection::vec(any_event(), 1..=6),
    )
        .prop_map(
            |(previous_watermark, more_events, events)| NotificationContent {
                previous_watermark,
                more_events,
                events,
            },
        );
    (
        class,
        any::<bool>(),
        content,
        proptest::option::of(select(vec![
            "NoError",
            "ErrorReadEventsFailed",
            "ErrorAccessDenied",
        ])),
        proptest::option::of(tricky(false)),
        proptest::option::of(tricky(true)),
        tricky(true),
    )
        .prop_map(
            |(response_class, drop_notification, content, code, text, optional_id, id)| {
                // Only an Error message may come without its notification (and then maybe
                // without a subscription id too).
                let without_notification =
                    response_class == ResponseClass::Error && drop_notification;
                ResponseMessage {
                    response_class,
                    response_code: code.map(str::to_string),
                    message_text: text,
                    subscription_id: if without_notification {
                        optional_id
                    } else {
                        Some(id)
                    },
                    notification: (!without_notification).then_some(content),
                }
            },
        )
}

fn notification() -> impl Strategy<Value = Notification> {
    proptest::collection::vec(message(), 1..=3)
        .prop_map(|response_messages| Notification { response_messages })
}

#[test]
fn generated_models_survive_writing_and_parsing() {
    let limits = Limits::default();
    let kinds_seen = RefCell::new(BTreeSet::new());
    let outcome = runner(CASES).run(&notification(), |model| {
        kinds_seen
            .borrow_mut()
            .extend(model.events().map(|e| e.kind));
        let xml = notification_xml(&model);
        let summary = validate(xml.as_bytes(), &limits)
            .map_err(|r| TestCaseError::fail(format!("refused: {r}\n{xml}")))?;
        prop_assert_eq!(summary.events, model.events().count());
        let parsed = parse(xml.as_bytes(), &limits)
            .map_err(|r| TestCaseError::fail(format!("refused: {r}\n{xml}")))?;
        prop_assert_eq!(&parsed, &model, "{}", xml);
        Ok(())
    });
    match outcome {
        Ok(()) => {}
        Err(TestError::Fail(why, minimal)) => {
            panic!("round trip fails for the minimal model {minimal:#?}:\n{why}")
        }
        Err(abort) => panic!("{abort}"),
    }
    assert_eq!(
        kinds_seen.into_inner().len(),
        EventKind::ALL.len(),
        "not every event kind was generated"
    );
}

#[test]
fn fixtures_survive_writing_and_parsing() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/notifications");
    let limits = Limits::default();
    for entry in std::fs::read_dir(dir).expect("fixtures") {
        let body = std::fs::read(entry.expect("entry").path()).expect("fixture");
        let Ok(model) = parse(&body, &limits) else {
            continue;
        };
        let written = notification_xml(&model);
        assert_eq!(
            parse(written.as_bytes(), &limits).as_ref(),
            Ok(&model),
            "{written}"
        );
    }
}

#[test]
fn written_body_looks_like_exchange() {
    let model = parse(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/notifications/exo-capture.xml"),
        )
        .expect("fixture"),
        &Limits::default(),
    )
    .expect("valid");
    let xml = notification_xml(&model);
    assert!(xml.starts_with(r#"<?xml version="1.0" encoding="utf-8"?><soap11:Envelope xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/">"#), "{xml}");
    assert!(xml.contains(r#"<m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Notification><t:SubscriptionId>"#), "{xml}");
    assert!(
        xml.ends_with("</m:ResponseMessages></m:SendNotification></soap11:Body></soap11:Envelope>"),
        "{xml}"
    );
}
