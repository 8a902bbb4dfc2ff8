//! Push subscriptions on the simulated Exchange: what Subscribe records, what a subscription
//! sees of its mailbox's event log (its folders, its event types), and the notifications cut from
//! it as PROTOCOL.md §4 says: at most 50 events, `MoreEvents` on all but the last,
//! `PreviousWatermark` chaining, a StatusEvent when nothing happened (its watermark advances
//! too), the Error notification without `Notification`. Pure: the delivery task in
//! `delivery.rs` drives it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::codec::{self, WatermarkKey};
use super::schema::format_date_time;
use super::store::{FolderKind, LogEntry, LoggedObject, Mailbox};
use crate::notification::{
    Event, EventKind, Notification, NotificationContent, ObjectId, ObjectKind, ResponseClass,
    ResponseMessage,
};

pub use super::push::MAX_EVENTS_PER_NOTIFICATION;

/// The 4-byte object-type markers notifications carry instead of real ChangeKeys.
pub const ITEM_MARKER: &str = "DwAAAA==";
pub const FOLDER_MARKER: &str = "AQAAAA==";
pub const CALENDAR_FOLDER_MARKER: &str = "AgAAAA==";

/// EWS.md §1: the push URL must be 1–2082 characters.
pub const MAX_URL_CHARS: usize = 2082;

/// Where a subscription's notifications go. Loopback only: the simulator refuses any other host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl {
    pub https: bool,
    /// The host as written (without IPv6 brackets): the TLS server name.
    pub host: String,
    /// `host[:port]` as written: the Host header.
    pub authority: String,
    pub addr: SocketAddr,
    pub path_and_query: String,
}

/// Reads a push URL as Exchange checks it (ErrorInvalidPushSubscriptionUrl: length, scheme,
/// parseable) and as the simulator must (loopback only).
pub fn parse_callback_url(url: &str) -> Result<CallbackUrl, String> {
    let chars = url.chars().count();
    if chars == 0 || chars > MAX_URL_CHARS {
        return Err(format!(
            "the URL must be 1 to {MAX_URL_CHARS} characters long"
        ));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "the URL has no scheme".to_string())?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        _ => return Err("the URL must be http or https".into()),
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return Err("the URL has no host, or carries credentials".into());
    }
    let tail = tail.split('#').next().unwrap_or_default();
    let path_and_query = if tail.is_empty() {
        "/".to_string()
    } else if tail.starts_with('?') {
        format!("/{tail}")
    } else {
        tail.to_string()
    };
    if path_and_query
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b >= 0x80)
    {
        return Err("the URL path holds characters that must be escaped".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "unclosed IPv6 literal".to_string())?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("bad authority".into()),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("bad port '{p}'"))?,
        None if https => 443,
        None => 80,
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>().map_err(|_| {
            format!("the simulator delivers to loopback addresses only, not to '{host}'")
        })?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "the simulator delivers to loopback addresses only, not to {ip}"
        ));
    }
    Ok(CallbackUrl {
        https,
        host: host.to_string(),
        authority: authority.to_string(),
        addr: SocketAddr::new(ip, port),
        path_and_query,
    })
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The listener answered `Unsubscribe`.
    Unsubscribed,
    /// A notification failed until the next retry wait would exceed StatusFrequency.
    DeliveryFailed,
    /// `drop_all_subscriptions`: a restart (or mailbox move) lost it.
    Dropped,
    /// `send_error_notification`: ErrorReadEventsFailed was sent.
    ErrorNotification,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Unsubscribed => "unsubscribed",
            Ended::DeliveryFailed => "delivery_failed",
            Ended::Dropped => "dropped",
            Ended::ErrorNotification => "error_notification",
        }
    }
}

/// One push subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    /// The mailbox key (lower-case address).
    pub mailbox: String,
    pub url: String,
    pub callback: CallbackUrl,
    pub status_frequency_minutes: u32,
    /// `None`: SubscribeToAllFolders.
    pub folders: Option<Vec<FolderKind>>,
    pub event_types: Vec<EventKind>,
    /// Log position up to which every event was sent or is not for this subscription.
    pub cursor: u64,
    /// The watermark of the last notification accepted (or the Subscribe answer's).
    pub last_watermark: String,
    pub ended: Option<Ended>,
    pub error_requested: bool,
    pub notifications_sent: u64,
    pub notifications_accepted: u64,
    pub notifications_failed: u64,
    pub attempts: u64,
    pub attempts_failed: u64,
    pub events_sent: u64,
}

impl Subscription {
    pub fn is_alive(&self) -> bool {
        self.ended.is_none()
    }

    /// Whether a log entry concerns this subscription: an event of a subscribed type whose
    /// object sits in (or left) a subscribed folder, or is that folder.
    pub fn sees(&self, entry: &LogEntry) -> bool {
        if !self.event_types.contains(&entry.kind) {
            return false;
        }
        let Some(folders) = &self.folders else {
            return true;
        };
        folders.iter().any(|&f| {
            entry.parent == f
                || entry.old_parent == Some(f)
                || entry.object == LoggedObject::Folder(f)
        })
    }
}

/// The event types a subscription asked for.
pub fn event_kinds(names: &[String]) -> Vec<EventKind> {
    names
        .iter()
        .filter_map(|n| EventKind::from_element_name(n.as_bytes()))
        .collect()
}

/// Whether a watermark given at Subscribe names a position of this mailbox's current log.
pub fn watermark_position(mailbox: &Mailbox, watermark: &str) -> Option<u64> {
    let key = codec::parse_watermark(watermark)?;
    (key.mailbox_tag == mailbox.tag && key.epoch == mailbox.epoch && key.position <= mailbox.head())
        .then_some(key.position)
}

pub fn watermark_at(mailbox: &Mailbox, position: u64, nonce: u32) -> String {
    codec::watermark(WatermarkKey {
        mailbox_tag: mailbox.tag,
        epoch: mailbox.epoch,
        position,
        nonce,
    })
}

/// A notification ready to send, and what the subscription becomes once it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub notification: Notification,
    pub kind: PreparedKind,
    /// The cursor after acceptance.
    pub cursor: u64,
    /// The last watermark after acceptance.
    pub last_watermark: String,
    pub events: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreparedKind {
    Events,
    Status,
    Error,
}

/// Up to 50 events after the cursor, `MoreEvents` when more wait. `None` when nothing waits; the
/// scanned position is then returned so the cursor can skip entries the subscription does not see.
pub fn next_events(sub: &Subscription, mailbox: &Mailbox) -> Result<Prepared, u64> {
    let head = mailbox.head();
    let mut events = Vec::new();
    let mut last_position = sub.cursor;
    let mut more = false;
    let start = usize::try_from(sub.cursor).unwrap_or(usize::MAX);
    for (index, entry) in mailbox.log.iter().enumerate().skip(start) {
        if !sub.sees(entry) {
            continue;
        }
        if events.len() == MAX_EVENTS_PER_NOTIFICATION {
            more = true;
            break;
        }
        let position = index as u64 + 1;
        events.push(event(mailbox, entry, position));
        last_position = position;
    }
    if events.is_empty() {
        return Err(head);
    }
    let last_watermark = watermark_at(mailbox, last_position, 0);
    let count = events.len();
    // Without more events waiting, the cursor may skip the unseen tail too.
    let cursor = if more { last_position } else { head };
    Ok(Prepared {
        notification: notification(sub, events, more),
        kind: PreparedKind::Events,
        cursor,
        last_watermark,
        events: count,
    })
}

/// A heartbeat: one StatusEvent with a fresh watermark at `position`.
pub fn status(sub: &Subscription, mailbox: &Mailbox, position: u64, nonce: u32) -> Prepared {
    let watermark = watermark_at(mailbox, position, nonce.max(1));
    let event = Event {
        watermark: Some(watermark.clone()),
        ..Event::bare(EventKind::Status)
    };
    Prepared {
        notification: notification(sub, vec![event], false),
        kind: PreparedKind::Status,
        cursor: position,
        last_watermark: watermark,
        events: 1,
    }
}

/// What Exchange sends when it cannot read a subscription's events: ResponseClass Error,
/// ErrorReadEventsFailed, the subscription id in MessageXml, no Notification.
pub fn error_notification(sub: &Subscription) -> Prepared {
    Prepared {
        notification: Notification {
            response_messages: vec![ResponseMessage {
                response_class: ResponseClass::Error,
                response_code: Some("ErrorReadEventsFailed".into()),
                message_text: Some(
                    "Events for this subscription can't be retrieved. The subscription must be recreated."
                        .into(),
                ),
                subscription_id: Some(sub.id.clone()),
                notification: None,
            }],
        },
        kind: PreparedKind::Error,
        cursor: sub.cursor,
        last_watermark: sub.last_watermark.clone(),
        events: 0,
    }
}

fn notification(sub: &Subscription, events: Vec<Event>, more: bool) -> Notification {
    Notification {
        response_messages: vec![ResponseMessage {
            response_class: ResponseClass::Success,
            response_code: Some("NoError".into()),
            message_text: None,
            subscription_id: Some(sub.id.clone()),
            notification: Some(NotificationContent {
                previous_watermark: Some(sub.last_watermark.clone()),
                more_events: more,
                events,
            }),
        }],
    }
}

fn folder_object(mailbox: &Mailbox, folder: FolderKind, marker: &str) -> ObjectId {
    ObjectId {
        kind: ObjectKind::Folder,
        id: mailbox.folder_id(folder),
        change_key: Some(marker.into()),
    }
}

/// A log entry as a notification event. ChangeKeys are the object-type markers, never the
/// item's version (PROTOCOL.md §2).
pub fn event(mailbox: &Mailbox, entry: &LogEntry, position: u64) -> Event {
    let object = match &entry.object {
        LoggedObject::Item(id) => ObjectId {
            kind: ObjectKind::Item,
            id: id.clone(),
            change_key: Some(ITEM_MARKER.into()),
        },
        LoggedObject::Folder(folder) => {
            let marker = if *folder == FolderKind::Calendar {
                CALENDAR_FOLDER_MARKER
            } else {
                FOLDER_MARKER
            };
            folder_object(mailbox, *folder, marker)
        }
    };
    let is_folder = matches!(entry.object, LoggedObject::Folder(_));
    Event {
        kind: entry.kind,
        watermark: Some(watermark_at(mailbox, position, 0)),
        timestamp: Some(format_date_time(entry.timestamp)),
        object: Some(object),
        parent_folder_id: Some(folder_object(mailbox, entry.parent, FOLDER_MARKER)),
        old_object: entry.old_item.as_ref().map(|id| ObjectId {
            kind: ObjectKind::Item,
            id: id.clone(),
            change_key: Some(ITEM_MARKER.into()),
        }),
        old_parent_folder_id: entry
            .old_parent
            .map(|f| folder_object(mailbox, f, FOLDER_MARKER)),
        // Folder ModifiedEvents carry the folder's unread count; calendar items are never unread.
        unread_count: (is_folder && entry.kind == EventKind::Modified).then_some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange_sim::store::{NewItem, Store};
    use crate::notification::{notification_xml, parse, Limits};
    use time::macros::datetime;

    #[test]
    fn callback_urls_are_loopback_only() {
        let url =
            parse_callback_url("https://127.0.0.1:8443/Webservices/SyncNotification.svc?Default")
                .unwrap();
        assert!(url.https);
        assert_eq!(url.addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(
            url.path_and_query,
            "/Webservices/SyncNotification.svc?Default"
        );
        assert_eq!(url.authority, "127.0.0.1:8443");
        let url = parse_callback_url("http://localhost?x").unwrap();
        assert_eq!(url.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(url.path_and_query, "/?x");
        let url = parse_callback_url("HTTPS://[::1]:9/a").unwrap();
        assert_eq!(url.host, "::1");
        for bad in [
            "https://example.com/x",
            "https://10.0.0.1/x",
            "ftp://127.0.0.1/",
            "127.0.0.1:80/x",
            "https://user@127.0.0.1/",
            "https://127.0.0.1:0/",
            "https://127.0.0.1:99999/",
            "https://127.0.0.1/a b",
            "",
        ] {
            assert!(parse_callback_url(bad).is_err(), "{bad}");
        }
        let long = format!("https://127.0.0.1/{}", "a".repeat(MAX_URL_CHARS));
        assert!(parse_callback_url(&long).is_err());
    }

    fn subscription(mailbox: &Mailbox) -> Subscription {
        Subscription {
            id: "sub-1".into(),
            mailbox: "room1@contoso.com".into(),
            url: "http://127.0.0.1:1/".into(),
            callback: parse_callback_url("http://127.0.0.1:1/").unwrap(),
            status_frequency_minutes: 1,
            folders: Some(vec![FolderKind::Calendar]),
            event_types: event_kinds(&[
                "CreatedEvent".into(),
                "ModifiedEvent".into(),
                "DeletedEvent".into(),
                "MovedEvent".into(),
                "CopiedEvent".into(),
            ]),
            cursor: 0,
            last_watermark: watermark_at(mailbox, 0, 1),
            ended: None,
            error_requested: false,
            notifications_sent: 0,
            notifications_accepted: 0,
            notifications_failed: 0,
            attempts: 0,
            attempts_failed: 0,
            events_sent: 0,
        }
    }

    #[test]
    fn batches_of_fifty_chain_their_watermarks_and_parse() {
        let mut store = Store::new(3);
        store.add_mailbox("room1@contoso.com");
        let now = datetime!(2026-05-04 09:00 UTC);
        // 60 creations: 120 events (item + folder each).
        for _ in 0..60 {
            store
                .create_item(
                    "room1@contoso.com",
                    FolderKind::Calendar,
                    NewItem {
                        subject: None,
                        start: now,
                        end: now,
                        location: None,
                        extended: vec![],
                    },
                    now,
                )
                .unwrap();
        }
        let mailbox = store.mailbox("room1@contoso.com").unwrap();
        let mut sub = subscription(mailbox);
        let mut shapes = Vec::new();
        while let Ok(prepared) = next_events(&sub, mailbox) {
            let body = notification_xml(&prepared.notification);
            let parsed = parse(body.as_bytes(), &Limits::default()).unwrap();
            assert_eq!(parsed, prepared.notification, "the body parses back");
            let content = parsed.response_messages[0].notification.clone().unwrap();
            assert_eq!(content.previous_watermark, Some(sub.last_watermark.clone()));
            shapes.push((content.events.len(), content.more_events));
            for event in &content.events {
                let object = event.object.as_ref().unwrap();
                let marker = object.change_key.as_deref().unwrap();
                assert!(marker == ITEM_MARKER || marker == CALENDAR_FOLDER_MARKER);
            }
            sub.cursor = prepared.cursor;
            sub.last_watermark = prepared.last_watermark;
        }
        assert_eq!(shapes, vec![(50, true), (50, true), (20, false)]);
        let heartbeat = status(&sub, mailbox, sub.cursor, 9);
        assert_ne!(heartbeat.last_watermark, sub.last_watermark, "it advances");
        let error = error_notification(&sub);
        let body = notification_xml(&error.notification);
        let parsed = parse(body.as_bytes(), &Limits::default()).unwrap();
        assert!(parsed.response_messages[0].notification.is_none());
        assert_eq!(
            parsed.response_messages[0].subscription_id.as_deref(),
            Some("sub-1")
        );
    }

    #[test]
    fn a_calendar_subscription_sees_its_folder_only() {
        let mut store = Store::new(3);
        store.add_mailbox("room1@contoso.com");
        let now = datetime!(2026-05-04 09:00 UTC);
        let id = store
            .create_item(
                "room1@contoso.com",
                FolderKind::Calendar,
                NewItem {
                    subject: None,
                    start: now,
                    end: now,
                    location: None,
                    extended: vec![],
                },
                now,
            )
            .unwrap()
            .id
            .clone();
        let moved = store
            .move_item("room1@contoso.com", &id, FolderKind::DeletedItems, now)
            .unwrap()
            .id
            .clone();
        store.hard_delete("room1@contoso.com", &moved, now).unwrap();
        let mailbox = store.mailbox("room1@contoso.com").unwrap();
        let sub = subscription(mailbox);
        let seen: Vec<EventKind> = mailbox
            .log
            .iter()
            .filter(|e| sub.sees(e))
            .map(|e| e.kind)
            .collect();
        use EventKind::*;
        // Created + folder; Moved (out of the calendar) + calendar folder; not the Deleted Items
        // folder's event, not the hard delete in Deleted Items.
        assert_eq!(seen, vec![Created, Modified, Moved, Modified]);
        assert_eq!(
            watermark_position(mailbox, &watermark_at(mailbox, 3, 0)),
            Some(3)
        );
        assert_eq!(
            watermark_position(mailbox, &watermark_at(mailbox, 99, 0)),
            None
        );
    }
}
