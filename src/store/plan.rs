//! The rules of one group commit, as pure functions both backends share: which rows a batch
//! wants to insert (deduplicated within the batch), and, once the database said which of them
//! were new, what each notification's outcome is and how the subscriptions change.
//!
//! A backend runs: register unknown subscriptions (accept mode) -> load (and lock) the batch's
//! subscriptions -> [`plan_rows`] -> insert events and incidents, learning which were new ->
//! [`settle`] -> write gap incidents and subscription updates -> commit.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::UnknownSubscriptions;
use super::{
    IncidentKind, IngestOutcome, IngestRequest, IngestResult, SubscriptionRecord, SubscriptionState,
};
use crate::notification::{Event, ObjectId, ResponseClass, ResponseMessage, SubscriptionStatus};

/// Longest subscription id or watermark the worker stores. Exchange's are under 200 bytes; the
/// bound keeps unique-index entries far below PostgreSQL's B-tree limit (about 2.7 KB), so no
/// body can make every commit it joins fail.
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest `state_reason` kept on a subscription row.
const MAX_REASON_CHARS: usize = 300;

/// The key an event is deduplicated on within its subscription: its watermark, or for an event
/// without one (the XSD allows it; Exchange always sends one) a digest of everything that
/// identifies it in an identical retry. Digests start with `~`, which no base64 watermark holds.
pub fn dedupe_key(
    subscription_id: &str,
    previous_watermark: Option<&str>,
    position: usize,
    event: &Event,
) -> String {
    if let Some(watermark) = &event.watermark {
        return watermark.clone();
    }
    let mut hasher = Sha256::new();
    let mut field = |value: Option<&str>| {
        // Presence marker and length prefix: ("ab", "c") and ("a", "bc") must differ.
        match value {
            None => hasher.update([0u8]),
            Some(text) => {
                hasher.update([1u8]);
                hasher.update((text.len() as u64).to_be_bytes());
                hasher.update(text.as_bytes());
            }
        }
    };
    field(Some(subscription_id));
    field(previous_watermark);
    field(Some(&position.to_string()));
    field(Some(event.kind.as_str()));
    field(event.timestamp.as_deref());
    for id in [
        &event.object,
        &event.parent_folder_id,
        &event.old_object,
        &event.old_parent_folder_id,
    ] {
        field(id.as_ref().map(|id| id.kind.as_str()));
        field(id.as_ref().map(|id| id.id.as_str()));
        field(id.as_ref().and_then(|id| id.change_key.as_deref()));
    }
    field(event.unread_count.map(|n| n.to_string()).as_deref());
    format!("~{}", hex_prefix(&hasher.finalize()))
}

fn digest_key(prefix: &str, parts: &[Option<&str>]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        match part {
            None => hasher.update([0u8]),
            Some(text) => {
                hasher.update([1u8]);
                hasher.update((text.len() as u64).to_be_bytes());
                hasher.update(text.as_bytes());
            }
        }
    }
    format!("{prefix}{}", hex_prefix(&hasher.finalize()))
}

/// First 16 bytes (128 bits) as lower-case hex.
fn hex_prefix(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for byte in bytes.iter().take(16) {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// One row for `notification_events`.
#[derive(Debug, Clone)]
pub(crate) struct EventRow<'a> {
    pub tenant: &'a str,
    pub subscription_id: &'a str,
    pub previous_watermark: Option<&'a str>,
    pub watermark: Option<&'a str>,
    pub dedupe_key: String,
    pub position: i32,
    pub kind: &'static str,
    pub object_kind: Option<&'static str>,
    pub object_id: Option<&'a str>,
    pub object_change_key: Option<&'a str>,
    pub parent_folder_id: Option<&'a str>,
    pub parent_folder_change_key: Option<&'a str>,
    pub old_object_kind: Option<&'static str>,
    pub old_object_id: Option<&'a str>,
    pub old_object_change_key: Option<&'a str>,
    pub old_parent_folder_id: Option<&'a str>,
    pub old_parent_folder_change_key: Option<&'a str>,
    pub unread_count: Option<i32>,
    pub event_time: Option<&'a str>,
    pub received_at: OffsetDateTime,
    pub request_id: Option<&'a str>,
}

/// One row for `subscription_events`.
#[derive(Debug, Clone)]
pub(crate) struct IncidentRow<'a> {
    pub tenant: &'a str,
    pub subscription_id: Option<&'a str>,
    pub kind: &'static str,
    pub response_class: Option<&'static str>,
    pub response_code: Option<&'a str>,
    pub message_text: Option<&'a str>,
    pub detail: Option<String>,
    pub dedupe_key: String,
    pub received_at: OffsetDateTime,
    pub request_id: Option<&'a str>,
}

/// A row a message refers to, and whether this message is the batch member that offers it.
#[derive(Debug, Clone, Copy)]
struct RowRef {
    index: usize,
    claimed: bool,
}

#[derive(Debug, Clone)]
enum MessagePlan {
    /// Unknown (in unsubscribe mode) or unsubscribed: nothing stored, answer `Unsubscribe`.
    Unwanted { unknown: bool },
    Record {
        events: Vec<RowRef>,
        error: Option<RowRef>,
    },
}

/// What a batch offers to insert.
#[derive(Debug)]
pub(crate) struct Rows<'a> {
    pub events: Vec<EventRow<'a>>,
    pub incidents: Vec<IncidentRow<'a>>,
    /// Per notification, per response message.
    plans: Vec<Vec<MessagePlan>>,
}

/// What the batch does once the database told which rows were new.
#[derive(Debug)]
pub(crate) struct Settled<'a> {
    pub outcomes: Vec<IngestOutcome>,
    pub gap_incidents: Vec<IncidentRow<'a>>,
    /// Rows of `subscriptions` to write back (they exist: registered or loaded).
    pub subscription_updates: Vec<SubscriptionRecord>,
}

/// The batch's subscription ids, sorted (the order rows are locked in, so that replicas sharing a
/// PostgreSQL table cannot deadlock), each with the tenant it first arrived under.
pub(crate) fn subscription_keys(batch: &[IngestRequest]) -> Vec<(&str, &str)> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    let mut seen = HashSet::new();
    for request in batch {
        for message in &request.notification.response_messages {
            if let Some(id) = message.subscription_id.as_deref() {
                if seen.insert(id) {
                    keys.push((id, request.tenant.as_str()));
                }
            }
        }
    }
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
    keys
}

fn subscription_of(message: &ResponseMessage) -> &str {
    // The worker refuses notifications without one before they reach the store.
    message.subscription_id.as_deref().unwrap_or("")
}

fn is_unwanted(
    subscription_id: Option<&str>,
    known: &HashMap<String, SubscriptionRecord>,
    unknown: UnknownSubscriptions,
) -> bool {
    let Some(id) = subscription_id else {
        return false;
    };
    match known.get(id) {
        Some(record) => record.state == SubscriptionState::Unsubscribed,
        None => unknown == UnknownSubscriptions::Unsubscribe,
    }
}

fn id_parts(id: &Option<ObjectId>) -> (Option<&'static str>, Option<&str>, Option<&str>) {
    match id {
        Some(id) => (
            Some(id.kind.as_str()),
            Some(id.id.as_str()),
            id.change_key.as_deref(),
        ),
        None => (None, None, None),
    }
}

/// The rows `batch` offers, given the subscriptions as stored (`known`, after accept-mode
/// registration). Rows are unique within the batch: a second member carrying the same event
/// refers to the first one's row.
pub(crate) fn plan_rows<'a>(
    batch: &'a [IngestRequest],
    known: &HashMap<String, SubscriptionRecord>,
    unknown: UnknownSubscriptions,
) -> Rows<'a> {
    let mut rows = Rows {
        events: Vec::new(),
        incidents: Vec::new(),
        plans: Vec::with_capacity(batch.len()),
    };
    let mut event_index: HashMap<(&'a str, String), usize> = HashMap::new();
    let mut incident_index: HashMap<String, usize> = HashMap::new();
    for request in batch {
        let received_at = request.received_at;
        let mut plans = Vec::with_capacity(request.notification.response_messages.len());
        for message in &request.notification.response_messages {
            if is_unwanted(message.subscription_id.as_deref(), known, unknown) {
                let is_unknown = message
                    .subscription_id
                    .as_deref()
                    .is_some_and(|id| !known.contains_key(id));
                plans.push(MessagePlan::Unwanted {
                    unknown: is_unknown,
                });
                continue;
            }
            let mut events = Vec::new();
            if let Some(content) = &message.notification {
                let subscription_id = subscription_of(message);
                let previous = content.previous_watermark.as_deref();
                for (position, event) in content.events.iter().enumerate() {
                    let key = dedupe_key(subscription_id, previous, position, event);
                    let slot = (subscription_id, key.clone());
                    if let Some(&index) = event_index.get(&slot) {
                        events.push(RowRef {
                            index,
                            claimed: false,
                        });
                        continue;
                    }
                    let (object_kind, object_id, object_change_key) = id_parts(&event.object);
                    let (_, parent_folder_id, parent_folder_change_key) =
                        id_parts(&event.parent_folder_id);
                    let (old_object_kind, old_object_id, old_object_change_key) =
                        id_parts(&event.old_object);
                    let (_, old_parent_folder_id, old_parent_folder_change_key) =
                        id_parts(&event.old_parent_folder_id);
                    let index = rows.events.len();
                    rows.events.push(EventRow {
                        tenant: &request.tenant,
                        subscription_id,
                        previous_watermark: previous,
                        watermark: event.watermark.as_deref(),
                        dedupe_key: key,
                        position: i32::try_from(position).unwrap_or(i32::MAX),
                        kind: event.kind.as_str(),
                        object_kind,
                        object_id,
                        object_change_key,
                        parent_folder_id,
                        parent_folder_change_key,
                        old_object_kind,
                        old_object_id,
                        old_object_change_key,
                        old_parent_folder_id,
                        old_parent_folder_change_key,
                        unread_count: event.unread_count,
                        event_time: event.timestamp.as_deref(),
                        received_at,
                        request_id: request.request_id.as_deref(),
                    });
                    event_index.insert(slot, index);
                    events.push(RowRef {
                        index,
                        claimed: true,
                    });
                }
            }
            let error = (message.response_class == ResponseClass::Error).then(|| {
                let key = digest_key(
                    "error:",
                    &[
                        message.subscription_id.as_deref(),
                        message.response_code.as_deref(),
                        message.message_text.as_deref(),
                    ],
                );
                if let Some(&index) = incident_index.get(&key) {
                    return RowRef {
                        index,
                        claimed: false,
                    };
                }
                let index = rows.incidents.len();
                incident_index.insert(key.clone(), index);
                rows.incidents.push(IncidentRow {
                    tenant: &request.tenant,
                    subscription_id: message.subscription_id.as_deref(),
                    kind: IncidentKind::Error.as_str(),
                    response_class: Some(message.response_class.as_str()),
                    response_code: message.response_code.as_deref(),
                    message_text: message.message_text.as_deref(),
                    detail: None,
                    dedupe_key: key,
                    received_at,
                    request_id: request.request_id.as_deref(),
                });
                RowRef {
                    index,
                    claimed: true,
                }
            });
            plans.push(MessagePlan::Record { events, error });
        }
        rows.plans.push(plans);
    }
    rows
}

pub(crate) fn fresh_record(
    subscription_id: &str,
    tenant: &str,
    now: OffsetDateTime,
) -> SubscriptionRecord {
    SubscriptionRecord {
        subscription_id: subscription_id.to_string(),
        tenant: tenant.to_string(),
        last_watermark: None,
        last_notification_at: None,
        state: SubscriptionState::Active,
        state_reason: None,
        updated_at: now,
        mailbox: None,
        replay_from: None,
    }
}

/// Outcomes and subscription changes, given which offered rows the database took as new
/// (`inserted_events[i]` for `rows.events[i]`, likewise incidents). Members are settled in batch
/// order, so a later member's watermark check sees an earlier member's update.
pub(crate) fn settle<'a>(
    batch: &'a [IngestRequest],
    rows: &Rows<'a>,
    inserted_events: &[bool],
    inserted_incidents: &[bool],
    known: &HashMap<String, SubscriptionRecord>,
    registered: &HashSet<String>,
    now: OffsetDateTime,
) -> Settled<'a> {
    let is_new = |row: &RowRef, inserted: &[bool]| {
        row.claimed && inserted.get(row.index).copied().unwrap_or(false)
    };
    let mut working: HashMap<&str, SubscriptionRecord> = HashMap::new();
    let mut dirty: Vec<&str> = Vec::new();
    let mut reported_registered: HashSet<&str> = HashSet::new();
    let mut gap_incidents = Vec::new();
    let mut outcomes = Vec::with_capacity(batch.len());

    for (request, plans) in batch.iter().zip(&rows.plans) {
        let mut outcome = IngestOutcome {
            status: SubscriptionStatus::Ok,
            result: IngestResult::Duplicate,
            stored_events: Vec::new(),
            duplicate_events: 0,
            flagged: Vec::new(),
            registered: Vec::new(),
            unknown: Vec::new(),
        };
        let mut unwanted = false;
        let mut anything_new = false;
        let received_at = request.received_at;
        for (message, plan) in request.notification.response_messages.iter().zip(plans) {
            let (events, error) = match plan {
                MessagePlan::Record { events, error } => (events, error),
                MessagePlan::Unwanted { unknown } => {
                    unwanted = true;
                    if let (true, Some(id)) = (*unknown, message.subscription_id.as_deref()) {
                        if !outcome.unknown.iter().any(|known| known == id) {
                            outcome.unknown.push(id.to_string());
                        }
                    }
                    continue;
                }
            };
            let new_events: Vec<&RowRef> = events
                .iter()
                .filter(|row| is_new(row, inserted_events))
                .collect();
            outcome.duplicate_events += events.len() - new_events.len();
            for row in &new_events {
                if let Some(event) = rows.events.get(row.index) {
                    if let Some(kind) = crate::notification::EventKind::from_str_name(event.kind) {
                        outcome.stored_events.push(kind);
                    }
                }
            }
            let error_is_new = error
                .as_ref()
                .is_some_and(|row| is_new(row, inserted_incidents));
            if new_events.is_empty() && !error_is_new {
                // All of it was stored before: an identical retry. Its PreviousWatermark is older
                // than the stored watermark by now, so it must not reach the check below.
                continue;
            }
            anything_new = true;
            let Some(subscription_id) = message.subscription_id.as_deref() else {
                continue;
            };
            if registered.contains(subscription_id) && reported_registered.insert(subscription_id) {
                outcome.registered.push(subscription_id.to_string());
            }
            let record = working.entry(subscription_id).or_insert_with(|| {
                known
                    .get(subscription_id)
                    .cloned()
                    .unwrap_or_else(|| fresh_record(subscription_id, &request.tenant, now))
            });
            if !dirty.contains(&subscription_id) {
                dirty.push(subscription_id);
            }
            record.last_notification_at = Some(request.received_at);
            record.updated_at = now;

            if let (Some(content), false) = (&message.notification, new_events.is_empty()) {
                if let (Some(stored), Some(previous)) = (
                    record.last_watermark.as_deref(),
                    content.previous_watermark.as_deref(),
                ) {
                    if stored != previous {
                        let first_key = new_events
                            .first()
                            .and_then(|row| rows.events.get(row.index))
                            .map(|row| row.dedupe_key.as_str());
                        let detail = format!(
                            "PreviousWatermark {} differs from the last stored watermark {}",
                            truncate_chars(previous, 120),
                            truncate_chars(stored, 120)
                        );
                        gap_incidents.push(IncidentRow {
                            tenant: &request.tenant,
                            subscription_id: Some(subscription_id),
                            kind: IncidentKind::WatermarkGap.as_str(),
                            response_class: Some(message.response_class.as_str()),
                            response_code: message.response_code.as_deref(),
                            message_text: message.message_text.as_deref(),
                            detail: Some(detail.clone()),
                            dedupe_key: digest_key(
                                "gap:",
                                &[
                                    Some(subscription_id),
                                    Some(previous),
                                    Some(stored),
                                    first_key,
                                ],
                            ),
                            received_at,
                            request_id: request.request_id.as_deref(),
                        });
                        if record.state == SubscriptionState::Active {
                            record.state = SubscriptionState::ResyncNeeded;
                            record.replay_from = Some(stored.to_string());
                            record.state_reason = Some(truncate_chars(
                                &format!("missed events: {detail}"),
                                MAX_REASON_CHARS,
                            ));
                            outcome
                                .flagged
                                .push((subscription_id.to_string(), record.state));
                        }
                    }
                }
                if let Some(last) = content
                    .events
                    .iter()
                    .rev()
                    .find_map(|e| e.watermark.as_deref())
                {
                    record.last_watermark = Some(last.to_string());
                }
            }

            if error_is_new && record.state != SubscriptionState::Unsubscribed {
                let reason = format!(
                    "Exchange reported {}: {}",
                    message.response_code.as_deref().unwrap_or("an error"),
                    message
                        .message_text
                        .as_deref()
                        .unwrap_or("(no message text)")
                );
                record.state = SubscriptionState::ResubscribeNeeded;
                record.state_reason = Some(truncate_chars(&reason, MAX_REASON_CHARS));
                outcome
                    .flagged
                    .push((subscription_id.to_string(), record.state));
            }
        }
        (outcome.status, outcome.result) = if unwanted {
            (SubscriptionStatus::Unsubscribe, IngestResult::Unsubscribe)
        } else if anything_new {
            (SubscriptionStatus::Ok, IngestResult::Stored)
        } else {
            (SubscriptionStatus::Ok, IngestResult::Duplicate)
        };
        outcomes.push(outcome);
    }

    let subscription_updates = dirty.iter().filter_map(|id| working.remove(id)).collect();
    Settled {
        outcomes,
        gap_incidents,
        subscription_updates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::{
        EventKind, Notification, NotificationContent, ObjectKind, ResponseMessage,
    };
    use time::macros::datetime;

    fn event(kind: EventKind, watermark: Option<&str>) -> Event {
        Event {
            kind,
            watermark: watermark.map(str::to_string),
            timestamp: Some("2026-11-20T08:15:02Z".into()),
            object: Some(ObjectId {
                kind: ObjectKind::Item,
                id: "item-1".into(),
                change_key: Some("DwAAAA==".into()),
            }),
            parent_folder_id: Some(ObjectId {
                kind: ObjectKind::Folder,
                id: "folder-1".into(),
                change_key: None,
            }),
            old_object: None,
            old_parent_folder_id: None,
            unread_count: None,
        }
    }

    fn request(subscription: &str, previous: Option<&str>, events: Vec<Event>) -> IngestRequest {
        IngestRequest {
            tenant: "default".into(),
            request_id: None,
            received_at: datetime!(2026-11-20 08:15:03 UTC),
            notification: Notification {
                response_messages: vec![ResponseMessage {
                    response_class: ResponseClass::Success,
                    response_code: Some("NoError".into()),
                    message_text: None,
                    subscription_id: Some(subscription.into()),
                    notification: Some(NotificationContent {
                        previous_watermark: previous.map(str::to_string),
                        more_events: false,
                        events,
                    }),
                }],
            },
        }
    }

    fn known(
        records: &[(&str, Option<&str>, SubscriptionState)],
    ) -> HashMap<String, SubscriptionRecord> {
        records
            .iter()
            .map(|(id, watermark, state)| {
                let mut record = fresh_record(id, "default", datetime!(2026-11-01 00:00 UTC));
                record.last_watermark = watermark.map(str::to_string);
                record.state = *state;
                (id.to_string(), record)
            })
            .collect()
    }

    #[test]
    fn watermark_is_the_key_when_present() {
        let e = event(EventKind::Created, Some("W1"));
        assert_eq!(dedupe_key("S", Some("P"), 0, &e), "W1");
    }

    #[test]
    fn synthetic_key_is_stable_and_content_bound() {
        let e = event(EventKind::Status, None);
        let key = dedupe_key("S", Some("P"), 0, &e);
        assert!(key.starts_with('~') && key.len() == 33, "{key}");
        assert_eq!(key, dedupe_key("S", Some("P"), 0, &e));
        assert_ne!(key, dedupe_key("S", Some("P"), 1, &e));
        assert_ne!(key, dedupe_key("S", Some("Q"), 0, &e));
        assert_ne!(key, dedupe_key("T", Some("P"), 0, &e));
        let mut other = e.clone();
        other.unread_count = Some(3);
        assert_ne!(key, dedupe_key("S", Some("P"), 0, &other));
    }

    #[test]
    fn identical_members_of_one_batch_share_rows() {
        let one = request("S", Some("W0"), vec![event(EventKind::Created, Some("W1"))]);
        let batch = vec![one.clone(), one];
        let k = known(&[("S", Some("W0"), SubscriptionState::Active)]);
        let rows = plan_rows(&batch, &k, UnknownSubscriptions::Accept);
        assert_eq!(rows.events.len(), 1);
        let settled = settle(
            &batch,
            &rows,
            &[true],
            &[],
            &k,
            &HashSet::new(),
            batch[0].received_at,
        );
        assert_eq!(settled.outcomes[0].result, IngestResult::Stored);
        assert_eq!(settled.outcomes[1].result, IngestResult::Duplicate);
        assert_eq!(settled.outcomes[1].duplicate_events, 1);
        assert_eq!(settled.subscription_updates.len(), 1);
        assert_eq!(
            settled.subscription_updates[0].last_watermark.as_deref(),
            Some("W1")
        );
    }

    #[test]
    fn retry_after_progress_does_not_trip_the_watermark_check() {
        let retry = request("S", Some("W0"), vec![event(EventKind::Created, Some("W1"))]);
        let k = known(&[("S", Some("W5"), SubscriptionState::Active)]);
        let batch = vec![retry];
        let rows = plan_rows(&batch, &k, UnknownSubscriptions::Accept);
        let settled = settle(
            &batch,
            &rows,
            &[false],
            &[],
            &k,
            &HashSet::new(),
            batch[0].received_at,
        );
        assert_eq!(settled.outcomes[0].result, IngestResult::Duplicate);
        assert!(settled.gap_incidents.is_empty());
        assert!(settled.subscription_updates.is_empty());
    }

    #[test]
    fn gap_marks_resync_and_is_recorded() {
        let late = request(
            "S",
            Some("W3"),
            vec![event(EventKind::Modified, Some("W4"))],
        );
        let k = known(&[("S", Some("W1"), SubscriptionState::Active)]);
        let batch = vec![late];
        let rows = plan_rows(&batch, &k, UnknownSubscriptions::Accept);
        let settled = settle(
            &batch,
            &rows,
            &[true],
            &[],
            &k,
            &HashSet::new(),
            batch[0].received_at,
        );
        assert_eq!(settled.gap_incidents.len(), 1);
        let update = &settled.subscription_updates[0];
        assert_eq!(update.state, SubscriptionState::ResyncNeeded);
        assert_eq!(update.last_watermark.as_deref(), Some("W4"));
        assert_eq!(
            settled.outcomes[0].flagged,
            vec![("S".to_string(), SubscriptionState::ResyncNeeded)]
        );
    }

    #[test]
    fn members_are_settled_in_order() {
        let first = request("S", Some("W1"), vec![event(EventKind::Created, Some("W2"))]);
        let second = request(
            "S",
            Some("W2"),
            vec![event(EventKind::Modified, Some("W3"))],
        );
        let k = known(&[("S", Some("W1"), SubscriptionState::Active)]);
        let batch = vec![first, second];
        let rows = plan_rows(&batch, &k, UnknownSubscriptions::Accept);
        let settled = settle(
            &batch,
            &rows,
            &[true, true],
            &[],
            &k,
            &HashSet::new(),
            batch[0].received_at,
        );
        assert!(settled.gap_incidents.is_empty());
        assert_eq!(
            settled.subscription_updates[0].state,
            SubscriptionState::Active
        );
        assert_eq!(
            settled.subscription_updates[0].last_watermark.as_deref(),
            Some("W3")
        );
    }

    #[test]
    fn unknown_in_unsubscribe_mode_offers_nothing() {
        let batch = vec![request(
            "X",
            None,
            vec![event(EventKind::Created, Some("W1"))],
        )];
        let k = HashMap::new();
        let rows = plan_rows(&batch, &k, UnknownSubscriptions::Unsubscribe);
        assert!(rows.events.is_empty());
        let settled = settle(
            &batch,
            &rows,
            &[],
            &[],
            &k,
            &HashSet::new(),
            batch[0].received_at,
        );
        assert_eq!(settled.outcomes[0].status, SubscriptionStatus::Unsubscribe);
        assert!(settled.subscription_updates.is_empty());
    }

    #[test]
    fn unsubscribed_state_is_unwanted_in_either_mode() {
        let batch = vec![request(
            "S",
            None,
            vec![event(EventKind::Created, Some("W1"))],
        )];
        let k = known(&[("S", None, SubscriptionState::Unsubscribed)]);
        for mode in [
            UnknownSubscriptions::Accept,
            UnknownSubscriptions::Unsubscribe,
        ] {
            let rows = plan_rows(&batch, &k, mode);
            assert!(rows.events.is_empty());
        }
    }

    #[test]
    fn error_without_notification_is_recorded_and_flags_resubscribe() {
        let mut req = request("S", None, vec![]);
        let message = &mut req.notification.response_messages[0];
        message.response_class = ResponseClass::Error;
        message.response_code = Some("ErrorReadEventsFailed".into());
        message.notification = None;
        let k = known(&[("S", Some("W1"), SubscriptionState::Active)]);
        let batch = vec![req];
        let rows = plan_rows(&batch, &k, UnknownSubscriptions::Accept);
        assert_eq!(rows.incidents.len(), 1);
        let settled = settle(
            &batch,
            &rows,
            &[],
            &[true],
            &k,
            &HashSet::new(),
            batch[0].received_at,
        );
        assert_eq!(settled.outcomes[0].result, IngestResult::Stored);
        assert_eq!(
            settled.subscription_updates[0].state,
            SubscriptionState::ResubscribeNeeded
        );
        assert_eq!(
            settled.subscription_updates[0].last_watermark.as_deref(),
            Some("W1")
        );
        // The identical error again: recorded before, nothing changes.
        let settled = settle(
            &batch,
            &rows,
            &[],
            &[false],
            &k,
            &HashSet::new(),
            batch[0].received_at,
        );
        assert_eq!(settled.outcomes[0].result, IngestResult::Duplicate);
        assert!(settled.subscription_updates.is_empty());
    }

    #[test]
    fn keys_are_sorted_and_unique() {
        let batch = vec![
            request("b", None, vec![]),
            request("a", None, vec![]),
            request("b", None, vec![]),
        ];
        let keys: Vec<&str> = subscription_keys(&batch).into_iter().map(|k| k.0).collect();
        assert_eq!(keys, vec!["a", "b"]);
    }
}
