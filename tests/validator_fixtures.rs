//! Every notification fixture with the gateway's verdict, and the exact model `parse` builds
//! from each valid one (see tests/fixtures/notifications and the fixture README).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use std::path::PathBuf;

use pushgate::notification::{
    parse, validate, verdict_line, Event, EventKind, Limits, Notification, ObjectId, ObjectKind,
    RejectionKind, ResponseClass, ResponseMessage, Summary,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/notifications")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn id(kind: ObjectKind, id: &str, change_key: &str) -> Option<ObjectId> {
    Some(ObjectId {
        kind,
        id: id.to_string(),
        change_key: Some(change_key.to_string()),
    })
}

fn item(i: &str, ck: &str) -> Option<ObjectId> {
    id(ObjectKind::Item, i, ck)
}

fn folder(i: &str, ck: &str) -> Option<ObjectId> {
    id(ObjectKind::Folder, i, ck)
}

fn event(kind: EventKind, watermark: &str, timestamp: Option<&str>) -> Event {
    Event {
        kind,
        watermark: Some(watermark.to_string()),
        timestamp: timestamp.map(str::to_string),
        object: None,
        parent_folder_id: None,
        old_object: None,
        old_parent_folder_id: None,
        unread_count: None,
    }
}

fn success(
    subscription_id: &str,
    previous: &str,
    more_events: bool,
    events: Vec<Event>,
) -> Notification {
    Notification {
        response_messages: vec![ResponseMessage {
            response_class: ResponseClass::Success,
            response_code: Some("NoError".into()),
            message_text: None,
            subscription_id: Some(subscription_id.into()),
            notification: Some(pushgate::notification::NotificationContent {
                previous_watermark: Some(previous.into()),
                more_events,
                events,
            }),
        }],
    }
}

const SUB_EU: &str = "JgBkYjhwcjA0bWIxMjM0LmV1cnByZDA0LnByb2Qub3V0bG9vay5jb20QAAAAm4cX2u7lWkKmBq0oJXk1ZxAAAADu3mHzI9VzS7nI0gZK1f0x";
const CAL_ITEM: &str = "AAMkADk3NjBjZjA1LWE2ZjctNGJkZC04YzI0LTRhZDE3YTBmNTA0NQBGAAAAAAB2LAl+ChPhR4UOhhnmRskVBwBuxl4ER93UTJ3ejJXrgk2IAAAAAAENAABuxl4ER93UTJ3ejJXrgk2IAAJRCq2iAAA=";
const CALENDAR: &str = "AAMkADk3NjBjZjA1LWE2ZjctNGJkZC04YzI0LTRhZDE3YTBmNTA0NQAuAAAAAAB2LAl+ChPhR4UOhhnmRskVAQBuxl4ER93UTJ3ejJXrgk2IAAAAAAENAAA=";
const DELETED_ITEM: &str = "AAMkADk3NjBjZjA1LWE2ZjctNGJkZC04YzI0LTRhZDE3YTBmNTA0NQBGAAAAAAB2LAl+ChPhR4UOhhnmRskVBwBuxl4ER93UTJ3ejJXrgk2IAAAAAAELAABuxl4ER93UTJ3ejJXrgk2IAAJRCq2jAAA=";
const DELETED_ITEMS: &str = "AAMkADk3NjBjZjA1LWE2ZjctNGJkZC04YzI0LTRhZDE3YTBmNTA0NQAuAAAAAAB2LAl+ChPhR4UOhhnmRskVAQBuxl4ER93UTJ3ejJXrgk2IAAAAAAELAAA=";

fn expected(name: &str) -> Notification {
    match name {
        "exo-capture.xml" => {
            let mut item_event = event(
                EventKind::Modified,
                "AQAAAExY/dNdjDVKjtBVHKR5IOsoIukhAAAAAAE=",
                Some("2020-12-03T11:03:50Z"),
            );
            item_event.object = item(
                "AQMkAGYzNDgzOTU5LTM2ZTAtNGExMC04YjQyLTlkMzUxM2MzZjBkOQBGAAADdiwJfgoT4UeFDoYZ5kbJFQcAbsZeBEfd1Eyd3oyV64JNiAAAAgENAAAAbsZeBEfd1Eyd3oyV64JNiAACUQqtogAAAA==",
                "DwAAAA==",
            );
            item_event.parent_folder_id = folder(
                "AQMkAGYzNDgzOTU5LTM2ZTAtNGExMC04YjQyLTlkMzUxM2MzZjBkOQAuAAADdiwJfgoT4UeFDoYZ5kbJFQEAbsZeBEfd1Eyd3oyV64JNiAAAAgENAAAA",
                "AQAAAA==",
            );
            let mut folder_event = event(
                EventKind::Modified,
                "AQAAAExY/dNdjDVKjtBVHKR5IOstIukhAAAAAAE=",
                Some("2020-12-03T11:03:50Z"),
            );
            folder_event.object = folder(
                "AQMkAGYzNDgzOTU5LTM2ZTAtNGExMC04YjQyLTlkMzUxM2MzZjBkOQAuAAADdiwJfgoT4UeFDoYZ5kbJFQEAbsZeBEfd1Eyd3oyV64JNiAAAAgENAAAA",
                "AgAAAA==",
            );
            folder_event.parent_folder_id = folder(
                "AQMkAGYzNDgzOTU5LTM2ZTAtNGExMC04YjQyLTlkMzUxM2MzZjBkOQAuAAADdiwJfgoT4UeFDoYZ5kbJFQEAbsZeBEfd1Eyd3oyV64JNiAAAAgEIAAAA",
                "AQAAAA==",
            );
            success(
                "LABkYjhwcjAxbWI2NDg1LmV1cnByZDAxLnByb2QuZXhjaGFuZ2VsYWJzLmNvbRAAAADELVfykPBZQp7Q8IIUrUfmCKn7JnqX2AgQAAAAWTlI8+A2EEqLQp01E8Pw2Q==",
                "AQAAAExY/dNdjDVKjtBVHKR5IOurFukhAAAAAAE=",
                false,
                vec![item_event, folder_event],
            )
        }
        "status-event.xml" => success(
            SUB_EU,
            "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUYAAAAAAA=",
            false,
            vec![event(
                EventKind::Status,
                "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUZAAAAAAA=",
                None,
            )],
        ),
        "created-calendar-item.xml" => {
            let mut created = event(
                EventKind::Created,
                "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUaAAAAAAA=",
                Some("2026-11-20T08:15:02Z"),
            );
            created.object = item(CAL_ITEM, "DwAAAA==");
            created.parent_folder_id = folder(CALENDAR, "AQAAAA==");
            let mut modified = event(
                EventKind::Modified,
                "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUbAAAAAAA=",
                Some("2026-11-20T08:15:02Z"),
            );
            modified.object = folder(CALENDAR, "AgAAAA==");
            modified.parent_folder_id = folder(CALENDAR, "AQAAAA==");
            modified.unread_count = Some(0);
            success(
                SUB_EU,
                "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUYAAAAAAA=",
                false,
                vec![created, modified],
            )
        }
        "moved-to-deleted-items.xml" => {
            let mut moved = event(
                EventKind::Moved,
                "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUcAAAAAAA=",
                Some("2026-11-20T09:41:37Z"),
            );
            moved.object = item(DELETED_ITEM, "DwAAAA==");
            moved.parent_folder_id = folder(DELETED_ITEMS, "AQAAAA==");
            moved.old_object = item(CAL_ITEM, "DwAAAA==");
            moved.old_parent_folder_id = folder(CALENDAR, "AgAAAA==");
            success(
                SUB_EU,
                "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUYAAAAAAA=",
                false,
                vec![moved],
            )
        }
        "deleted-event.xml" => {
            let mut deleted = event(
                EventKind::Deleted,
                "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUdAAAAAAA=",
                Some("2026-11-20T09:42:11+01:00"),
            );
            deleted.object = item(DELETED_ITEM, "DwAAAA==");
            deleted.parent_folder_id = folder(DELETED_ITEMS, "AQAAAA==");
            success(
                SUB_EU,
                "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUYAAAAAAA=",
                false,
                vec![deleted],
            )
        }
        "other-prefixes.xml" => success(
            SUB_EU,
            "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUdAAAAAAA=",
            true,
            vec![event(
                EventKind::Status,
                "AQAAAGxN8Jc2sUJKq5wQ1Rj3IbUeAAAAAAA=",
                None,
            )],
        ),
        "error-no-notification.xml" => Notification {
            response_messages: vec![ResponseMessage {
                response_class: ResponseClass::Error,
                response_code: Some("ErrorReadEventsFailed".into()),
                message_text: Some("The events couldn't be read.".into()),
                subscription_id: Some(SUB_EU.into()),
                notification: None,
            }],
        },
        other => panic!("no expectation for fixture {other}"),
    }
}

#[test]
fn every_fixture_has_its_verdict() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/notifications");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".xml"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
    let limits = Limits::default();
    for name in &names {
        let body = fixture(name);
        let verdict = validate(&body, &limits);
        if name == "seed-capture-verbatim.xml" {
            let rejection = verdict.expect_err("the printed capture is not well-formed");
            assert_eq!(rejection.kind, RejectionKind::NotWellFormed, "{rejection}");
            assert!(!rejection.is_xsd_deviation());
            assert_eq!(parse(&body, &limits), Err(rejection));
            continue;
        }
        let summary = verdict.unwrap_or_else(|r| panic!("{name}: {r}"));
        let model = parse(&body, &limits).unwrap_or_else(|r| panic!("{name}: {r}"));
        assert_eq!(model, expected(name), "{name}");
        assert_eq!(summary.events, model.events().count(), "{name}");
        assert_eq!(
            summary.response_messages,
            model.response_messages.len(),
            "{name}"
        );
        assert_eq!(
            summary.error_without_notification,
            name == "error-no-notification.xml",
            "{name}"
        );
    }
}

#[test]
fn exo_capture_summary_and_verdict_line() {
    let body = fixture("exo-capture.xml");
    assert_eq!(body.len(), 2020);
    assert_eq!(
        validate(&body, &Limits::default()),
        Ok(Summary {
            response_messages: 1,
            events: 2,
            error_without_notification: false
        })
    );
    assert_eq!(
        verdict_line("exo-capture.xml", &body, &Limits::default()),
        ("exo-capture.xml: valid".to_string(), true)
    );
    let (line, valid) = verdict_line(
        "seed.xml",
        &fixture("seed-capture-verbatim.xml"),
        &Limits::default(),
    );
    assert!(!valid);
    assert!(
        line.starts_with("seed.xml: invalid: xml_not_well_formed: "),
        "{line}"
    );
}

#[test]
fn cli_prints_one_verdict_per_file() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/notifications");
    let valid = dir.join("exo-capture.xml");
    let invalid = dir.join("seed-capture-verbatim.xml");
    let missing = dir.join("no-such-file.xml");
    let run = |files: &[&PathBuf]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .arg("validate")
            .args(files)
            .output()
            .expect("pushgate runs")
    };
    let ok = run(&[&valid]);
    assert!(ok.status.success());
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        format!("{}: valid\n", valid.display())
    );
    let mixed = run(&[&valid, &invalid, &missing]);
    assert_eq!(mixed.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&mixed.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[1].starts_with(&format!(
            "{}: invalid: xml_not_well_formed: ",
            invalid.display()
        )),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with(&format!("{}: invalid: unreadable: ", missing.display())),
        "{stdout}"
    );
}
