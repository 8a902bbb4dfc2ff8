//! The model written back as an Exchange-style request body (the prefixes `soap11`, `m` and `t`
//! of exo-capture.xml, no whitespace between elements), for the simulator and the benchmarks.

use std::fmt::Write as _;

use super::model::{Event, Notification, ObjectId, ObjectKind, ResponseMessage};
use super::tokenizer::{MESSAGES_NS, SOAP_NS, TYPES_NS};

fn ns(uri: &[u8]) -> &str {
    std::str::from_utf8(uri).unwrap_or_default()
}

/// The request body for `notification`. For every valid model, `parse` of the result gives the
/// model back. A model is valid when each message with a `notification` has a `subscription_id`,
/// a message without one has `ResponseClass::Error`, ids, watermarks and the subscription id are
/// non-empty where the schema says so, events carry the fields of their kind, and every string
/// holds only characters XML allows (others are written as character references, which a parser
/// refuses).
pub fn notification_xml(notification: &Notification) -> String {
    let events: usize = notification.events().count();
    let mut out =
        String::with_capacity(768 + 360 * events + 320 * notification.response_messages.len());
    out.push_str(r#"<?xml version="1.0" encoding="utf-8"?>"#);
    let _ = write!(
        out,
        r#"<soap11:Envelope xmlns:soap11="{soap}"><soap11:Header><t:RequestServerVersion xmlns:t="{types}" Version="Exchange2010" /></soap11:Header><soap11:Body><m:SendNotification xmlns:t="{types}" xmlns:m="{messages}"><m:ResponseMessages>"#,
        soap = ns(SOAP_NS),
        types = ns(TYPES_NS),
        messages = ns(MESSAGES_NS),
    );
    for message in &notification.response_messages {
        write_message(&mut out, message);
    }
    out.push_str("</m:ResponseMessages></m:SendNotification></soap11:Body></soap11:Envelope>");
    out
}

fn write_message(out: &mut String, message: &ResponseMessage) {
    let _ = write!(
        out,
        r#"<m:SendNotificationResponseMessage ResponseClass="{}">"#,
        message.response_class.as_str()
    );
    if let Some(text) = &message.message_text {
        element(out, "m:MessageText", text);
    }
    if let Some(code) = &message.response_code {
        element(out, "m:ResponseCode", code);
    }
    match &message.notification {
        None => {
            if let Some(subscription_id) = &message.subscription_id {
                out.push_str(r#"<m:MessageXml><t:Value Name="SubscriptionId">"#);
                escape_text(out, subscription_id);
                out.push_str("</t:Value></m:MessageXml>");
            }
        }
        Some(content) => {
            out.push_str("<m:Notification>");
            element(
                out,
                "t:SubscriptionId",
                message.subscription_id.as_deref().unwrap_or_default(),
            );
            if let Some(previous) = &content.previous_watermark {
                element(out, "t:PreviousWatermark", previous);
            }
            element(
                out,
                "t:MoreEvents",
                if content.more_events { "true" } else { "false" },
            );
            for event in &content.events {
                write_event(out, event);
            }
            out.push_str("</m:Notification>");
        }
    }
    out.push_str("</m:SendNotificationResponseMessage>");
}

fn write_event(out: &mut String, event: &Event) {
    let name = event.kind.element_name();
    let _ = write!(out, "<t:{name}>");
    if let Some(watermark) = &event.watermark {
        element(out, "t:Watermark", watermark);
    }
    if let Some(timestamp) = &event.timestamp {
        element(out, "t:TimeStamp", timestamp);
    }
    if let Some(object) = &event.object {
        let element_name = match object.kind {
            ObjectKind::Item => "t:ItemId",
            ObjectKind::Folder => "t:FolderId",
        };
        id_element(out, element_name, object);
    }
    if let Some(parent) = &event.parent_folder_id {
        id_element(out, "t:ParentFolderId", parent);
    }
    if let Some(old) = &event.old_object {
        let element_name = match old.kind {
            ObjectKind::Item => "t:OldItemId",
            ObjectKind::Folder => "t:OldFolderId",
        };
        id_element(out, element_name, old);
    }
    if let Some(old_parent) = &event.old_parent_folder_id {
        id_element(out, "t:OldParentFolderId", old_parent);
    }
    if let Some(count) = event.unread_count {
        let _ = write!(out, "<t:UnreadCount>{count}</t:UnreadCount>");
    }
    let _ = write!(out, "</t:{name}>");
}

fn element(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}>");
    escape_text(out, value);
    let _ = write!(out, "</{name}>");
}

fn id_element(out: &mut String, name: &str, id: &ObjectId) {
    let _ = write!(out, "<{name} Id=\"");
    escape_attribute(out, &id.id);
    out.push('"');
    if let Some(change_key) = &id.change_key {
        out.push_str(" ChangeKey=\"");
        escape_attribute(out, change_key);
        out.push('"');
    }
    out.push_str(" />");
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Character data: markup characters escaped, CR kept as a reference (a literal CR would be
/// normalised to LF by the reader), `>` escaped so `]]>` cannot form.
fn escape_text(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c if !is_xml_char(c) => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// A double-quoted attribute value: tab, LF and CR as references (literal ones would be
/// normalised to spaces by the reader).
fn escape_attribute(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if !is_xml_char(c) => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c => out.push(c),
        }
    }
}
