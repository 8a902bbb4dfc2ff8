//! Request writers: pure functions from the client's values to SOAP text, valid against the
//! official schema (`tests/ews_requests.rs` checks every kind with xmllint). Each body element and
//! header element declares its own namespaces, so the envelope embeds exactly the strings the
//! schema test validates.

use time::{OffsetDateTime, UtcOffset};

use super::error::EwsError;
use super::model::{
    CalendarItemChanges, CalendarView, DeleteType, ItemId, Mailbox, NewCalendarItem,
    PushSubscriptionRequest, ReservationProperty, MAX_PUSH_URL_CHARS, STATUS_FREQUENCY_MINUTES,
};

pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const MESSAGES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub const TYPES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
pub const ERRORS_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

/// The push events the worker needs: moves matter because soft deletes and moves to Deleted
/// Items arrive as MovedEvent (EWS.md §1), copies because a copy into the calendar is a new item.
const EVENT_TYPES: [&str; 5] = [
    "CreatedEvent",
    "ModifiedEvent",
    "DeletedEvent",
    "MovedEvent",
    "CopiedEvent",
];

/// Longest SMTP address (RFC 5321 path limit); anything longer is not a mailbox.
const MAX_ADDRESS_BYTES: usize = 320;

/// What goes into `soap:Header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoapHeader<'a> {
    /// `t:RequestServerVersion/@Version`.
    pub server_version: &'a str,
    /// The mailbox named in `t:ExchangeImpersonation`, when impersonating.
    pub impersonate: Option<&'a str>,
}

/// The header elements, each a complete element with its own `xmlns:t`.
pub fn header_elements(header: &SoapHeader<'_>) -> Vec<String> {
    let mut elements = Vec::with_capacity(2);
    let mut x = Xml::default();
    x.empty(
        "t:RequestServerVersion",
        &[("xmlns:t", TYPES_NS), ("Version", header.server_version)],
    );
    elements.push(x.finish());
    if let Some(address) = header.impersonate {
        let mut x = Xml::default();
        x.open("t:ExchangeImpersonation", &[("xmlns:t", TYPES_NS)]);
        x.open("t:ConnectingSID", &[]);
        x.text_element("t:SmtpAddress", address);
        x.close("t:ConnectingSID");
        x.close("t:ExchangeImpersonation");
        elements.push(x.finish());
    }
    elements
}

/// The whole request document around a body element from one of the writers below.
pub fn envelope(header: &SoapHeader<'_>, body_element: &str) -> String {
    let headers = header_elements(header);
    let mut out = String::with_capacity(body_element.len() + 512);
    out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>");
    out.push_str("<soap:Envelope xmlns:soap=\"");
    out.push_str(SOAP_NS);
    out.push_str("\"><soap:Header>");
    for element in &headers {
        out.push_str(element);
    }
    out.push_str("</soap:Header><soap:Body>");
    out.push_str(body_element);
    out.push_str("</soap:Body></soap:Envelope>");
    out
}

/// `m:Subscribe` with a push subscription on the mailbox's calendar folder.
pub fn subscribe(
    mailbox: Mailbox<'_>,
    request: &PushSubscriptionRequest,
) -> Result<String, EwsError> {
    check_mailbox(mailbox.address)?;
    if !STATUS_FREQUENCY_MINUTES.contains(&request.status_frequency_minutes) {
        return Err(EwsError::InvalidRequest(format!(
            "status frequency {} minutes is outside 1–1440",
            request.status_frequency_minutes
        )));
    }
    check_push_url(&request.url)?;
    if let Some(watermark) = &request.watermark {
        non_empty("watermark", watermark)?;
    }
    let mut x = Xml::default();
    x.open("m:Subscribe", &body_namespaces());
    x.open("m:PushSubscriptionRequest", &[]);
    x.open("t:FolderIds", &[]);
    calendar_folder(&mut x, mailbox);
    x.close("t:FolderIds");
    x.open("t:EventTypes", &[]);
    for event in EVENT_TYPES {
        x.text_element("t:EventType", event);
    }
    x.close("t:EventTypes");
    // t:, not m: (exchangelib writes m:Watermark, which the schema refuses).
    if let Some(watermark) = &request.watermark {
        x.text_element("t:Watermark", watermark);
    }
    x.text_element(
        "t:StatusFrequency",
        &request.status_frequency_minutes.to_string(),
    );
    x.text_element("t:URL", &request.url);
    x.close("m:PushSubscriptionRequest");
    x.close("m:Subscribe");
    Ok(x.finish())
}

/// `m:GetItem` for calendar items: ids, change keys, the fields the sync compares, the parent
/// folder (to tell the calendar from Deleted Items) and the reservation property.
pub fn get_item(ids: &[ItemId], property: &ReservationProperty) -> Result<String, EwsError> {
    if ids.is_empty() {
        return Err(EwsError::InvalidRequest(
            "GetItem needs at least one id".into(),
        ));
    }
    check_property(property)?;
    let mut x = Xml::default();
    x.open("m:GetItem", &body_namespaces());
    item_shape(&mut x, property);
    x.open("m:ItemIds", &[]);
    for id in ids {
        item_id(&mut x, id)?;
    }
    x.close("m:ItemIds");
    x.close("m:GetItem");
    Ok(x.finish())
}

/// `m:CreateItem` of a calendar item in the mailbox's calendar, invitations sent to no one.
/// Field order is the schema's: Subject, ExtendedProperty, Start, End, Location.
pub fn create_item(
    mailbox: Mailbox<'_>,
    item: &NewCalendarItem,
    property: &ReservationProperty,
) -> Result<String, EwsError> {
    check_mailbox(mailbox.address)?;
    check_property(property)?;
    let start = date_time(item.start)?;
    let end = date_time(item.end)?;
    if item.end < item.start {
        return Err(EwsError::InvalidRequest(format!(
            "the item ends ({end}) before it starts ({start})"
        )));
    }
    let mut x = Xml::default();
    let mut attributes = body_namespaces().to_vec();
    attributes.push(("SendMeetingInvitations", "SendToNone"));
    x.open("m:CreateItem", &attributes);
    x.open("m:SavedItemFolderId", &[]);
    calendar_folder(&mut x, mailbox);
    x.close("m:SavedItemFolderId");
    x.open("m:Items", &[]);
    x.open("t:CalendarItem", &[]);
    x.text_element("t:Subject", &item.subject);
    extended_property(&mut x, property, &item.reservation_id);
    x.text_element("t:Start", &start);
    x.text_element("t:End", &end);
    if let Some(location) = &item.location {
        x.text_element("t:Location", location);
    }
    x.close("t:CalendarItem");
    x.close("m:Items");
    x.close("m:CreateItem");
    Ok(x.finish())
}

/// `m:UpdateItem` of one calendar item, one `SetItemField` per changed property and a
/// `DeleteItemField` for a removed location. With a change key the update is
/// `NeverOverwrite` (an Outlook edit since we read the item gives ErrorIrresolvableConflict
/// instead of being overwritten); without one, `AlwaysOverwrite`.
pub fn update_item(
    id: &ItemId,
    changes: &CalendarItemChanges,
    property: &ReservationProperty,
) -> Result<String, EwsError> {
    if changes.is_empty() {
        return Err(EwsError::InvalidRequest(
            "UpdateItem needs at least one change".into(),
        ));
    }
    check_property(property)?;
    let start = changes.start.map(date_time).transpose()?;
    let end = changes.end.map(date_time).transpose()?;
    if let (Some(s), Some(e)) = (changes.start, changes.end) {
        if e < s {
            return Err(EwsError::InvalidRequest(format!(
                "the item would end ({}) before it starts ({})",
                end.unwrap_or_default(),
                start.unwrap_or_default()
            )));
        }
    }
    let conflict = if id.change_key.is_some() {
        "NeverOverwrite"
    } else {
        "AlwaysOverwrite"
    };
    let mut x = Xml::default();
    let mut attributes = body_namespaces().to_vec();
    attributes.push(("ConflictResolution", conflict));
    attributes.push(("SendMeetingInvitationsOrCancellations", "SendToNone"));
    x.open("m:UpdateItem", &attributes);
    x.open("m:ItemChanges", &[]);
    x.open("t:ItemChange", &[]);
    item_id(&mut x, id)?;
    x.open("t:Updates", &[]);
    if let Some(subject) = &changes.subject {
        set_field(&mut x, "item:Subject", "t:Subject", subject);
    }
    if let Some(reservation_id) = &changes.reservation_id {
        x.open("t:SetItemField", &[]);
        extended_field_uri(&mut x, property);
        x.open("t:CalendarItem", &[]);
        extended_property(&mut x, property, reservation_id);
        x.close("t:CalendarItem");
        x.close("t:SetItemField");
    }
    if let Some(start) = &start {
        set_field(&mut x, "calendar:Start", "t:Start", start);
    }
    if let Some(end) = &end {
        set_field(&mut x, "calendar:End", "t:End", end);
    }
    match &changes.location {
        Some(Some(location)) => set_field(&mut x, "calendar:Location", "t:Location", location),
        Some(None) => {
            x.open("t:DeleteItemField", &[]);
            x.empty("t:FieldURI", &[("FieldURI", "calendar:Location")]);
            x.close("t:DeleteItemField");
        }
        None => {}
    }
    x.close("t:Updates");
    x.close("t:ItemChange");
    x.close("m:ItemChanges");
    x.close("m:UpdateItem");
    Ok(x.finish())
}

/// `m:DeleteItem` of one calendar item, cancellations sent to no one.
pub fn delete_item(id: &ItemId, delete_type: DeleteType) -> Result<String, EwsError> {
    let mut x = Xml::default();
    let mut attributes = body_namespaces().to_vec();
    attributes.push(("DeleteType", delete_type.as_str()));
    attributes.push(("SendMeetingCancellations", "SendToNone"));
    x.open("m:DeleteItem", &attributes);
    x.open("m:ItemIds", &[]);
    item_id(&mut x, id)?;
    x.close("m:ItemIds");
    x.close("m:DeleteItem");
    Ok(x.finish())
}

/// `m:FindItem` with a CalendarView on the mailbox's calendar (occurrences expanded), with the
/// same fields as GetItem.
pub fn find_item(
    mailbox: Mailbox<'_>,
    view: &CalendarView,
    property: &ReservationProperty,
) -> Result<String, EwsError> {
    check_mailbox(mailbox.address)?;
    check_property(property)?;
    if view.max_entries == 0 {
        return Err(EwsError::InvalidRequest(
            "a calendar view needs max_entries of at least 1".into(),
        ));
    }
    let start = date_time(view.start)?;
    let end = date_time(view.end)?;
    if view.end <= view.start {
        return Err(EwsError::InvalidRequest(format!(
            "calendar view window {start} .. {end} is empty"
        )));
    }
    let max_entries = view.max_entries.to_string();
    let mut x = Xml::default();
    let mut attributes = body_namespaces().to_vec();
    attributes.push(("Traversal", "Shallow"));
    x.open("m:FindItem", &attributes);
    item_shape(&mut x, property);
    x.empty(
        "m:CalendarView",
        &[
            ("MaxEntriesReturned", &max_entries),
            ("StartDate", &start),
            ("EndDate", &end),
        ],
    );
    x.open("m:ParentFolderIds", &[]);
    calendar_folder(&mut x, mailbox);
    x.close("m:ParentFolderIds");
    x.close("m:FindItem");
    Ok(x.finish())
}

/// `m:GetFolder` of the mailbox's calendar, ids only.
pub fn get_folder(mailbox: Mailbox<'_>) -> Result<String, EwsError> {
    check_mailbox(mailbox.address)?;
    let mut x = Xml::default();
    x.open("m:GetFolder", &body_namespaces());
    x.open("m:FolderShape", &[]);
    x.text_element("t:BaseShape", "IdOnly");
    x.close("m:FolderShape");
    x.open("m:FolderIds", &[]);
    calendar_folder(&mut x, mailbox);
    x.close("m:FolderIds");
    x.close("m:GetFolder");
    Ok(x.finish())
}

/// An SMTP address fit for the impersonation header, a folder id and `X-AnchorMailbox`.
pub fn check_mailbox(address: &str) -> Result<(), EwsError> {
    if address.is_empty()
        || address.len() > MAX_ADDRESS_BYTES
        || !address.contains('@')
        || address.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(EwsError::InvalidRequest(format!(
            "{address:?} is not a mailbox address"
        )));
    }
    Ok(())
}

/// The time as the schema's `xs:dateTime` in UTC, whole seconds: calendars keep no fractions,
/// and the sync step compares what it wrote with what it reads back.
pub fn date_time(value: OffsetDateTime) -> Result<String, EwsError> {
    let utc = value.to_offset(UtcOffset::UTC);
    if !(1..=9999).contains(&utc.year()) {
        return Err(EwsError::InvalidRequest(format!(
            "year {} is outside 1–9999",
            utc.year()
        )));
    }
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    ))
}

fn body_namespaces() -> [(&'static str, &'static str); 2] {
    [("xmlns:m", MESSAGES_NS), ("xmlns:t", TYPES_NS)]
}

fn check_push_url(url: &str) -> Result<(), EwsError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let count = url.chars().count();
    if !(lower.starts_with("http://") || lower.starts_with("https://"))
        || count > MAX_PUSH_URL_CHARS
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(EwsError::InvalidRequest(format!(
            "push URL must be http(s), at most {MAX_PUSH_URL_CHARS} characters, no spaces (got {count} characters)"
        )));
    }
    Ok(())
}

fn check_property(property: &ReservationProperty) -> Result<(), EwsError> {
    non_empty("reservation property name", &property.name)
}

fn non_empty(what: &str, value: &str) -> Result<(), EwsError> {
    if value.is_empty() {
        return Err(EwsError::InvalidRequest(format!("{what} is empty")));
    }
    Ok(())
}

fn calendar_folder(x: &mut Xml, mailbox: Mailbox<'_>) {
    if mailbox.impersonation {
        // The impersonated mailbox's own calendar.
        x.empty("t:DistinguishedFolderId", &[("Id", "calendar")]);
    } else {
        // Delegate access: the folder names whose calendar it is.
        x.open("t:DistinguishedFolderId", &[("Id", "calendar")]);
        x.open("t:Mailbox", &[]);
        x.text_element("t:EmailAddress", mailbox.address);
        x.close("t:Mailbox");
        x.close("t:DistinguishedFolderId");
    }
}

fn item_shape(x: &mut Xml, property: &ReservationProperty) {
    x.open("m:ItemShape", &[]);
    x.text_element("t:BaseShape", "IdOnly");
    x.open("t:AdditionalProperties", &[]);
    for field in [
        "item:Subject",
        "item:ParentFolderId",
        "calendar:Start",
        "calendar:End",
        "calendar:Location",
        "calendar:IsCancelled",
    ] {
        x.empty("t:FieldURI", &[("FieldURI", field)]);
    }
    extended_field_uri(x, property);
    x.close("t:AdditionalProperties");
    x.close("m:ItemShape");
}

fn item_id(x: &mut Xml, id: &ItemId) -> Result<(), EwsError> {
    non_empty("item id", &id.id)?;
    match &id.change_key {
        Some(change_key) => {
            non_empty("change key", change_key)?;
            x.empty("t:ItemId", &[("Id", &id.id), ("ChangeKey", change_key)]);
        }
        None => x.empty("t:ItemId", &[("Id", &id.id)]),
    }
    Ok(())
}

fn extended_field_uri(x: &mut Xml, property: &ReservationProperty) {
    x.empty(
        "t:ExtendedFieldURI",
        &[
            ("DistinguishedPropertySetId", "PublicStrings"),
            ("PropertyName", &property.name),
            ("PropertyType", "String"),
        ],
    );
}

fn extended_property(x: &mut Xml, property: &ReservationProperty, value: &str) {
    x.open("t:ExtendedProperty", &[]);
    extended_field_uri(x, property);
    x.text_element("t:Value", value);
    x.close("t:ExtendedProperty");
}

fn set_field(x: &mut Xml, field_uri: &str, element: &str, value: &str) {
    x.open("t:SetItemField", &[]);
    x.empty("t:FieldURI", &[("FieldURI", field_uri)]);
    x.open("t:CalendarItem", &[]);
    x.text_element(element, value);
    x.close("t:CalendarItem");
    x.close("t:SetItemField");
}

/// A minimal XML writer: names are the constants above, only text and attribute values come
/// from callers, and both go through `escape_into`.
#[derive(Default)]
struct Xml {
    out: String,
}

impl Xml {
    fn start_tag(&mut self, name: &str, attributes: &[(&str, &str)]) {
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attributes {
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push_str("=\"");
            escape_into(&mut self.out, value, true);
            self.out.push('"');
        }
    }

    fn open(&mut self, name: &str, attributes: &[(&str, &str)]) {
        self.start_tag(name, attributes);
        self.out.push('>');
    }

    fn empty(&mut self, name: &str, attributes: &[(&str, &str)]) {
        self.start_tag(name, attributes);
        self.out.push_str("/>");
    }

    fn close(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }

    fn text_element(&mut self, name: &str, text: &str) {
        self.open(name, &[]);
        escape_into(&mut self.out, text, false);
        self.close(name);
    }

    fn finish(self) -> String {
        self.out
    }
}

/// Escapes text or an attribute value. Characters XML 1.0 cannot carry at all (most C0 controls,
/// U+FFFE, U+FFFF) become U+FFFD: Exchange would refuse the whole request over one of them.
/// Carriage returns, and tabs and newlines in attributes, are written as character references so
/// that the parser's normalisation keeps them.
pub fn escape_into(out: &mut String, text: &str, attribute: bool) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\'' if attribute => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn impersonated() -> Mailbox<'static> {
        Mailbox {
            address: "room1@contoso.com",
            impersonation: true,
        }
    }

    #[test]
    fn escaping_keeps_text_and_attributes_intact() {
        let mut out = String::new();
        escape_into(&mut out, "a<b>&\"'\r\n\t\u{1}\u{FFFF}é", false);
        assert_eq!(out, "a&lt;b&gt;&amp;\"'&#13;\n\t\u{FFFD}\u{FFFD}é");
        let mut out = String::new();
        escape_into(&mut out, "\"'\n\t", true);
        assert_eq!(out, "&quot;&apos;&#10;&#9;");
    }

    #[test]
    fn times_are_utc_whole_seconds() {
        let t = datetime!(2026-05-06 10:00:00.750 +02:00);
        assert_eq!(date_time(t).unwrap(), "2026-05-06T08:00:00Z");
        assert!(date_time(datetime!(-0001-01-01 00:00 UTC)).is_err());
    }

    #[test]
    fn subscribe_watermark_is_in_the_types_namespace() {
        let request = PushSubscriptionRequest {
            watermark: Some("AQ==".into()),
            status_frequency_minutes: 5,
            url: "https://sync.example.com/api/webhooks/exchange?a=1&b=2".into(),
        };
        let body = subscribe(impersonated(), &request).unwrap();
        assert!(body.contains("<t:Watermark>AQ==</t:Watermark>"), "{body}");
        assert!(!body.contains("m:Watermark"));
        assert!(body.contains("?a=1&amp;b=2</t:URL>"), "{body}");
        for event in EVENT_TYPES {
            assert!(body.contains(&format!("<t:EventType>{event}</t:EventType>")));
        }
    }

    #[test]
    fn subscribe_refuses_what_exchange_would() {
        let mut request = PushSubscriptionRequest {
            watermark: None,
            status_frequency_minutes: 0,
            url: "https://a.example/x".into(),
        };
        assert!(subscribe(impersonated(), &request).is_err());
        request.status_frequency_minutes = 1441;
        assert!(subscribe(impersonated(), &request).is_err());
        request.status_frequency_minutes = 1440;
        assert!(subscribe(impersonated(), &request).is_ok());
        request.url = "ftp://a.example/x".into();
        assert!(subscribe(impersonated(), &request).is_err());
        request.url = format!("https://a.example/{}", "x".repeat(MAX_PUSH_URL_CHARS));
        assert!(subscribe(impersonated(), &request).is_err());
        request.url = "https://a.example/x".into();
        request.watermark = Some(String::new());
        assert!(subscribe(impersonated(), &request).is_err());
        let bad_mailbox = Mailbox {
            address: "room 1@contoso.com",
            impersonation: true,
        };
        request.watermark = None;
        assert!(subscribe(bad_mailbox, &request).is_err());
    }

    #[test]
    fn update_conflict_resolution_follows_the_change_key() {
        let property = ReservationProperty::new("ReservationId");
        let changes = CalendarItemChanges {
            subject: Some("x".into()),
            ..Default::default()
        };
        let with_key =
            update_item(&ItemId::with_change_key("A", "K"), &changes, &property).unwrap();
        assert!(with_key.contains("ConflictResolution=\"NeverOverwrite\""));
        let without = update_item(&ItemId::new("A"), &changes, &property).unwrap();
        assert!(without.contains("ConflictResolution=\"AlwaysOverwrite\""));
        assert!(update_item(&ItemId::new("A"), &Default::default(), &property).is_err());
    }

    #[test]
    fn create_writes_fields_in_schema_order() {
        let item = NewCalendarItem {
            subject: "Board <meeting>".into(),
            start: datetime!(2026-05-06 08:00 UTC),
            end: datetime!(2026-05-06 09:00 UTC),
            location: Some("Room 1".into()),
            reservation_id: "res-1".into(),
        };
        let body = create_item(impersonated(), &item, &ReservationProperty::new("R")).unwrap();
        let at = |needle: &str| body.find(needle).unwrap();
        assert!(at("<t:Subject>") < at("<t:ExtendedProperty>"));
        assert!(at("<t:ExtendedProperty>") < at("<t:Start>"));
        assert!(at("<t:Start>") < at("<t:End>"));
        assert!(at("<t:End>") < at("<t:Location>"));
        assert!(body.contains("Board &lt;meeting&gt;"));
        let backwards = NewCalendarItem {
            end: datetime!(2026-05-06 07:00 UTC),
            ..item
        };
        assert!(create_item(impersonated(), &backwards, &ReservationProperty::new("R")).is_err());
    }

    #[test]
    fn envelope_embeds_the_elements_verbatim() {
        let header = SoapHeader {
            server_version: "Exchange2013",
            impersonate: Some("room1@contoso.com"),
        };
        let body = get_folder(impersonated()).unwrap();
        let document = envelope(&header, &body);
        assert!(document.contains(&body));
        for element in header_elements(&header) {
            assert!(document.contains(&element));
        }
        assert_eq!(
            header_elements(&SoapHeader {
                impersonate: None,
                ..header
            })
            .len(),
            1
        );
    }
}
