//! `parse(notification_xml(n)) == n` over generated models: every event kind, optional fields on
//! and off, strings that need escaping.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use pushgate::notification::{
    notification_xml, parse, validate, Event, EventKind, Limits, Notification, NotificationContent,
    ObjectId, ObjectKind, ResponseClass, ResponseMessage,
};

/// splitmix64, fixed seed: the same models on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
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

/// A string built from pieces that need escaping in text and attributes.
fn tricky(rng: &mut Rng, non_empty: bool) -> String {
    let count = rng.below(6) + usize::from(non_empty);
    (0..count).map(|_| rng.pick(PIECES)).collect()
}

fn object(rng: &mut Rng, kind: ObjectKind) -> ObjectId {
    ObjectId {
        kind,
        // Id may be empty (xs:string)
        id: tricky(rng, false),
        change_key: rng.coin().then(|| {
            rng.pick(&["DwAAAA==", "AQAAAA==", "AgAAAA==", "", "k&<>\"'\t"])
                .to_string()
        }),
    }
}

fn any_kind(rng: &mut Rng) -> ObjectKind {
    if rng.coin() {
        ObjectKind::Item
    } else {
        ObjectKind::Folder
    }
}

fn event(rng: &mut Rng, kind: EventKind) -> Event {
    let watermark = rng.coin().then(|| tricky(rng, true));
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
    let timestamp = rng
        .pick(&[
            "2020-12-03T11:03:50Z",
            "2026-11-20T09:42:11+01:00",
            "2024-02-29T24:00:00",
            "-0044-03-15T12:00:00.123456-14:00",
        ])
        .to_string();
    let object_kind = any_kind(rng);
    let old_kind = any_kind(rng);
    Event {
        kind,
        watermark,
        timestamp: Some(timestamp),
        object: Some(object(rng, object_kind)),
        parent_folder_id: Some(object(rng, ObjectKind::Folder)),
        old_object: kind.has_old_ids().then(|| object(rng, old_kind)),
        old_parent_folder_id: kind.has_old_ids().then(|| object(rng, ObjectKind::Folder)),
        unread_count: (kind == EventKind::Modified && rng.coin())
            .then(|| rng.pick(&[0, 1, -1, i32::MAX, i32::MIN, 42])),
    }
}

fn message(rng: &mut Rng) -> ResponseMessage {
    let response_class = rng.pick(&[
        ResponseClass::Success,
        ResponseClass::Warning,
        ResponseClass::Error,
    ]);
    let without_notification = response_class == ResponseClass::Error && rng.coin();
    let notification = (!without_notification).then(|| NotificationContent {
        previous_watermark: rng.coin().then(|| tricky(rng, true)),
        more_events: rng.coin(),
        events: (0..rng.below(6) + 1)
            .map(|_| {
                let kind = rng.pick(&EventKind::ALL);
                event(rng, kind)
            })
            .collect(),
    });
    ResponseMessage {
        response_class,
        response_code: rng.coin().then(|| {
            rng.pick(&["NoError", "ErrorReadEventsFailed", "ErrorAccessDenied"])
                .to_string()
        }),
        message_text: rng.coin().then(|| tricky(rng, false)),
        subscription_id: if without_notification && rng.coin() {
            None
        } else {
            Some(tricky(rng, true))
        },
        notification,
    }
}

#[test]
fn generated_models_survive_writing_and_parsing() {
    let mut rng = Rng(0x0000_5EED_00F0_DE15);
    let limits = Limits::default();
    let mut kinds_seen = std::collections::BTreeSet::new();
    for round in 0..2000 {
        let model = Notification {
            response_messages: (0..rng.below(3) + 1).map(|_| message(&mut rng)).collect(),
        };
        kinds_seen.extend(model.events().map(|e| e.kind));
        let xml = notification_xml(&model);
        let summary = validate(xml.as_bytes(), &limits)
            .unwrap_or_else(|r| panic!("round {round}: {r}\n{xml}"));
        assert_eq!(summary.events, model.events().count());
        let parsed =
            parse(xml.as_bytes(), &limits).unwrap_or_else(|r| panic!("round {round}: {r}\n{xml}"));
        assert_eq!(parsed, model, "round {round}\n{xml}");
    }
    assert_eq!(kinds_seen.len(), EventKind::ALL.len());
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
