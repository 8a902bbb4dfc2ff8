//! Every request the EWS client writes is valid against the official schema: each body element
//! (with every option) against `../shared/ews-schema/messages.xsd`, each SOAP header element
//! against `types.xsd`, with xmllint, each as the root of its own document. A deliberately broken
//! request must fail the same check, so the check itself is known to bite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on setup failures

mod skip;

use std::path::{Path, PathBuf};
use std::process::Command;

use pushgate::ews::write::{self, SoapHeader};
use pushgate::ews::{
    CalendarItemChanges, CalendarView, DeleteType, ItemId, Mailbox, NewCalendarItem,
    PushSubscriptionRequest, ReservationProperty,
};
use time::macros::datetime;

const ROOM: &str = "room1@contoso.com";

/// The schema directory and xmllint, or `None` after saying why not (a failure instead when
/// `PUSHGATE_REQUIRE_ALL=1`).
fn schema_dir() -> Option<PathBuf> {
    let dir = skip::ews_schema(&["messages.xsd", "types.xsd"])?;
    skip::xmllint().then_some(dir)
}

/// Validates each document against `schema`. Returns the names of those that fail, and
/// xmllint's report.
fn validate(schema: &Path, documents: &[(String, String)]) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (index, (name, text)) in documents.iter().enumerate() {
        let path = dir.path().join(format!("{index:03}-{name}.xml"));
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let output = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(schema)
        .args(&paths)
        .output()
        .expect("running xmllint");
    let report = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut failed = Vec::new();
    for ((name, _), path) in documents.iter().zip(&paths) {
        let path = path.display().to_string();
        let validates = report.lines().any(|l| l == format!("{path} validates"));
        if !validates {
            failed.push(name.clone());
        }
    }
    assert_eq!(
        output.status.success(),
        failed.is_empty(),
        "xmllint's exit status disagrees with its report:\n{report}"
    );
    (failed, report)
}

fn property() -> ReservationProperty {
    ReservationProperty::new("PushgateReservationId")
}

fn mailboxes() -> [Mailbox<'static>; 2] {
    [
        Mailbox {
            address: ROOM,
            impersonation: true,
        },
        Mailbox {
            address: ROOM,
            impersonation: false,
        },
    ]
}

/// One body element of each kind, with every option the client has.
fn every_request() -> Vec<(String, String)> {
    let property = property();
    let mut out = Vec::new();
    for mailbox in mailboxes() {
        let mode = if mailbox.impersonation {
            "impersonated"
        } else {
            "delegate"
        };
        for watermark in [
            None,
            Some("AQAAAOpvG0LURVdOhQkPOWZLPcI8EgAAAAAAAAE=".to_string()),
        ] {
            let request = PushSubscriptionRequest {
                watermark: watermark.clone(),
                status_frequency_minutes: 5,
                url: "https://sync.example.com/api/webhooks/exchange?tenant=a&room=1".into(),
            };
            out.push((
                format!("subscribe-{mode}-watermark-{}", watermark.is_some()),
                write::subscribe(mailbox, &request).unwrap(),
            ));
        }
        for location in [None, Some("Room 1 <north> & \"annex\"".to_string())] {
            let item = NewCalendarItem {
                subject: "Board meeting: Q3 & 'budget' <draft>\r\nline two".into(),
                start: datetime!(2026-05-06 10:00 +02:00),
                end: datetime!(2026-05-06 11:00 +02:00),
                location: location.clone(),
                reservation_id: "res-8f14e45f".into(),
            };
            out.push((
                format!("createitem-{mode}-location-{}", location.is_some()),
                write::create_item(mailbox, &item, &property).unwrap(),
            ));
        }
        let view = CalendarView {
            start: datetime!(2026-05-01 00:00 UTC),
            end: datetime!(2026-06-01 00:00 UTC),
            max_entries: 500,
        };
        out.push((
            format!("finditem-{mode}"),
            write::find_item(mailbox, &view, &property).unwrap(),
        ));
        out.push((
            format!("getfolder-{mode}"),
            write::get_folder(mailbox).unwrap(),
        ));
    }
    out.push((
        "getitem-one".into(),
        write::get_item(&[ItemId::new("AAMkADk0AAA=")], &property).unwrap(),
    ));
    let ids: Vec<ItemId> = (0..10)
        .map(|i| ItemId::with_change_key(format!("AAMk{i}"), format!("DwAA{i}")))
        .collect();
    out.push((
        "getitem-ten".into(),
        write::get_item(&ids, &property).unwrap(),
    ));

    let one_each = [
        (
            "subject",
            CalendarItemChanges {
                subject: Some("New <subject>".into()),
                ..Default::default()
            },
        ),
        (
            "start",
            CalendarItemChanges {
                start: Some(datetime!(2026-05-06 08:30 UTC)),
                ..Default::default()
            },
        ),
        (
            "end",
            CalendarItemChanges {
                end: Some(datetime!(2026-05-06 09:30 UTC)),
                ..Default::default()
            },
        ),
        (
            "location-set",
            CalendarItemChanges {
                location: Some(Some("Room 2".into())),
                ..Default::default()
            },
        ),
        (
            "location-removed",
            CalendarItemChanges {
                location: Some(None),
                ..Default::default()
            },
        ),
        (
            "reservation",
            CalendarItemChanges {
                reservation_id: Some("res-2".into()),
                ..Default::default()
            },
        ),
        (
            "all",
            CalendarItemChanges {
                subject: Some("All".into()),
                start: Some(datetime!(2026-05-06 08:30 UTC)),
                end: Some(datetime!(2026-05-06 09:30 UTC)),
                location: Some(None),
                reservation_id: Some("res-3".into()),
            },
        ),
    ];
    for (name, changes) in one_each {
        for id in [
            ItemId::new("AAMkADk0"),
            ItemId::with_change_key("AAMkADk0", "DwAAAB"),
        ] {
            out.push((
                format!("updateitem-{name}-changekey-{}", id.change_key.is_some()),
                write::update_item(&id, &changes, &property).unwrap(),
            ));
        }
    }
    for delete_type in [
        DeleteType::HardDelete,
        DeleteType::SoftDelete,
        DeleteType::MoveToDeletedItems,
    ] {
        out.push((
            format!("deleteitem-{}", delete_type.as_str()),
            write::delete_item(&ItemId::with_change_key("AAMkADk0", "DwAAAC"), delete_type)
                .unwrap(),
        ));
    }
    out
}

#[test]
fn every_request_body_is_schema_valid() {
    let Some(dir) = schema_dir() else { return };
    let requests = every_request();
    let kinds = [
        "subscribe",
        "getitem",
        "createitem",
        "updateitem",
        "deleteitem",
        "finditem",
        "getfolder",
    ];
    for kind in kinds {
        assert!(
            requests.iter().any(|(name, _)| name.starts_with(kind)),
            "no {kind} request"
        );
    }
    let (failed, report) = validate(&dir.join("messages.xsd"), &requests);
    assert!(failed.is_empty(), "{failed:?} fail:\n{report}");
}

#[test]
fn every_header_element_is_schema_valid() {
    let Some(dir) = schema_dir() else { return };
    let mut headers = Vec::new();
    for version in [
        "Exchange2013",
        "Exchange2013_SP1",
        "Exchange2016",
        "V2018_01_08",
    ] {
        for impersonate in [None, Some(ROOM), Some("o'brien&co@contoso.com")] {
            let header = SoapHeader {
                server_version: version,
                impersonate,
            };
            for (index, element) in write::header_elements(&header).into_iter().enumerate() {
                headers.push((
                    format!("{version}-{}-{index}", impersonate.is_some()),
                    element,
                ));
            }
        }
    }
    assert!(headers
        .iter()
        .any(|(_, e)| e.contains("ExchangeImpersonation")));
    let (failed, report) = validate(&dir.join("types.xsd"), &headers);
    assert!(failed.is_empty(), "{failed:?} fail:\n{report}");
}

#[test]
fn the_check_refuses_what_exchange_refuses() {
    let Some(dir) = schema_dir() else { return };
    let request = PushSubscriptionRequest {
        watermark: Some("AQ==".into()),
        status_frequency_minutes: 5,
        url: "https://sync.example.com/x".into(),
    };
    let good = write::subscribe(mailboxes()[0], &request).unwrap();
    // exchangelib's mistake: the watermark in the messages namespace.
    let m_watermark = good.replace("t:Watermark", "m:Watermark");
    let item = NewCalendarItem {
        subject: "x".into(),
        start: datetime!(2026-05-06 08:00 UTC),
        end: datetime!(2026-05-06 09:00 UTC),
        location: None,
        reservation_id: "r".into(),
    };
    let create = write::create_item(mailboxes()[0], &item, &property()).unwrap();
    let no_invitations = create.replace(" SendMeetingInvitations=\"SendToNone\"", "");
    let wrong_order = create
        .replace("<t:Subject>x</t:Subject>", "")
        .replace("<t:Start>", "<t:Subject>x</t:Subject><t:Start>");
    let bad = [
        ("m-watermark".to_string(), m_watermark),
        ("subject-after-property".to_string(), wrong_order),
    ];
    let (failed, report) = validate(&dir.join("messages.xsd"), &bad);
    assert_eq!(failed.len(), bad.len(), "{report}");
    // SendMeetingInvitations is optional in the schema (Exchange itself insists on it for
    // calendar items): the writer's output must carry it even though xmllint would not notice.
    let (failed, report) = validate(
        &dir.join("messages.xsd"),
        &[("no-inv".into(), no_invitations)],
    );
    assert!(failed.is_empty(), "{report}");
    assert!(create.contains("SendMeetingInvitations=\"SendToNone\""));
}

#[test]
fn envelopes_carry_the_validated_elements_verbatim() {
    let header = SoapHeader {
        server_version: "Exchange2013",
        impersonate: Some(ROOM),
    };
    for (_, body) in every_request() {
        let document = write::envelope(&header, &body);
        assert!(document.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>"));
        assert!(document.contains(&format!("<soap:Body>{body}</soap:Body>")));
        for element in write::header_elements(&header) {
            assert!(document.contains(&element));
        }
    }
}
