//! EWS answers as Exchange writes them: the `m:*Response` element of each operation (valid
//! against the official schema: a test checks every kind with xmllint), the SOAP envelope with
//! `ServerVersionInfo`, and SOAP faults (HTTP 500: schema violations, throttling). Pure: values in,
//! XML text out.

use std::fmt::Write as _;

use time::OffsetDateTime;

use super::request::{ExtendedFieldUri, ExtendedValue, PropertySet, PUBLIC_STRINGS_GUID};
use super::schema::format_date_time;
use super::xml::{escape_attribute, escape_text, ERRORS_NS, MESSAGES_NS, SOAP_NS, TYPES_NS};

/// How the PublicStrings property set is written back: Exchange usually echoes the name, but
/// sometimes answers with the set's GUID (EWS.md §2), which clients must match too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PropertySetForm {
    #[default]
    Name,
    Guid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    Warning,
    Error,
}

impl Class {
    fn as_str(self) -> &'static str {
        match self {
            Class::Success => "Success",
            Class::Warning => "Warning",
            Class::Error => "Error",
        }
    }
}

/// A calendar item as an answer shows it; `None` fields are left out (not requested or not set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemView {
    pub id: String,
    pub change_key: String,
    pub parent_folder_id: Option<String>,
    pub item_class: Option<String>,
    pub subject: Option<String>,
    pub date_time_created: Option<OffsetDateTime>,
    pub extended: Vec<(ExtendedFieldUri, ExtendedValue)>,
    pub last_modified: Option<OffsetDateTime>,
    pub start: Option<OffsetDateTime>,
    pub end: Option<OffsetDateTime>,
    pub location: Option<String>,
    pub is_cancelled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderView {
    /// `CalendarFolder` or `Folder`.
    pub element: &'static str,
    pub id: String,
    pub change_key: String,
    pub parent_folder_id: Option<String>,
    pub folder_class: Option<String>,
    pub display_name: Option<String>,
    pub total_count: Option<u64>,
    pub child_folder_count: Option<u64>,
}

/// What follows the status part of a response message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// DeleteItem, or an error of an operation whose message has nothing after the status.
    Nothing,
    /// `m:Items` (GetItem, CreateItem; written empty on errors, as the schema requires).
    Items(Vec<ItemView>),
    /// `m:Items` then `m:ConflictResults` (UpdateItem).
    UpdatedItems(Vec<ItemView>),
    Subscription {
        id: String,
        watermark: String,
    },
    Folders(Vec<FolderView>),
    RootFolder {
        total_items_in_view: usize,
        includes_last_item_in_range: bool,
        items: Vec<ItemView>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub class: Class,
    pub code: String,
    pub text: Option<String>,
    /// `m:MessageXml/t:Value[@Name="BackOffMilliseconds"]` (ErrorServerBusy).
    pub back_off_ms: Option<u64>,
    pub body: Body,
}

impl Message {
    pub fn success(body: Body) -> Message {
        Message {
            class: Class::Success,
            code: "NoError".into(),
            text: None,
            back_off_ms: None,
            body,
        }
    }

    /// An Error message for `operation`, with the empty `m:Items` where the schema wants it.
    pub fn error(operation: &str, code: &str, text: impl Into<String>) -> Message {
        let body = match operation {
            "GetItem" | "CreateItem" => Body::Items(Vec::new()),
            "UpdateItem" => Body::UpdatedItems(Vec::new()),
            _ => Body::Nothing,
        };
        Message {
            class: Class::Error,
            code: code.into(),
            text: Some(text.into()),
            back_off_ms: None,
            body,
        }
    }

    pub fn server_busy(operation: &str, back_off_ms: u64) -> Message {
        let mut message = Message::error(operation, "ErrorServerBusy", SERVER_BUSY_TEXT);
        message.back_off_ms = Some(back_off_ms);
        message
    }
}

pub const SERVER_BUSY_TEXT: &str =
    "The server cannot service this request right now. Try again later.";

/// The `m:{operation}Response` element as a standalone document element (its own namespace
/// declarations), holding one message per input, in input order.
pub fn response_element(operation: &str, messages: &[Message], form: PropertySetForm) -> String {
    let mut out = String::with_capacity(512 + 512 * messages.len());
    let _ = write!(
        out,
        r#"<m:{operation}Response xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><m:ResponseMessages>"#
    );
    for message in messages {
        write_message(&mut out, operation, message, form);
    }
    let _ = write!(out, "</m:ResponseMessages></m:{operation}Response>");
    out
}

fn write_message(out: &mut String, operation: &str, message: &Message, form: PropertySetForm) {
    let _ = write!(
        out,
        r#"<m:{operation}ResponseMessage ResponseClass="{}">"#,
        message.class.as_str()
    );
    if let Some(text) = &message.text {
        text_element(out, "m:MessageText", text);
    }
    text_element(out, "m:ResponseCode", &message.code);
    if message.class != Class::Success {
        out.push_str("<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>");
    }
    if let Some(back_off) = message.back_off_ms {
        let _ = write!(
            out,
            r#"<m:MessageXml><t:Value Name="BackOffMilliseconds">{back_off}</t:Value></m:MessageXml>"#
        );
    }
    match &message.body {
        Body::Nothing => {}
        Body::Items(items) => write_items(out, "m:Items", items, form),
        Body::UpdatedItems(items) => {
            write_items(out, "m:Items", items, form);
            if message.class == Class::Success {
                out.push_str("<m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>");
            }
        }
        Body::Subscription { id, watermark } => {
            text_element(out, "m:SubscriptionId", id);
            text_element(out, "m:Watermark", watermark);
        }
        Body::Folders(folders) => {
            out.push_str("<m:Folders>");
            for folder in folders {
                write_folder(out, folder);
            }
            out.push_str("</m:Folders>");
        }
        Body::RootFolder {
            total_items_in_view,
            includes_last_item_in_range,
            items,
        } => {
            let _ = write!(
                out,
                r#"<m:RootFolder TotalItemsInView="{total_items_in_view}" IncludesLastItemInRange="{includes_last_item_in_range}">"#
            );
            write_items(out, "t:Items", items, form);
            out.push_str("</m:RootFolder>");
        }
    }
    let _ = write!(out, "</m:{operation}ResponseMessage>");
}

fn write_items(out: &mut String, element: &str, items: &[ItemView], form: PropertySetForm) {
    if items.is_empty() {
        let _ = write!(out, "<{element}/>");
        return;
    }
    let _ = write!(out, "<{element}>");
    for item in items {
        write_item(out, item, form);
    }
    let _ = write!(out, "</{element}>");
}

fn write_item(out: &mut String, item: &ItemView, form: PropertySetForm) {
    out.push_str("<t:CalendarItem>");
    id_element(out, "t:ItemId", &item.id, Some(&item.change_key));
    if let Some(parent) = &item.parent_folder_id {
        id_element(out, "t:ParentFolderId", parent, None);
    }
    if let Some(class) = &item.item_class {
        text_element(out, "t:ItemClass", class);
    }
    if let Some(subject) = &item.subject {
        text_element(out, "t:Subject", subject);
    }
    if let Some(created) = item.date_time_created {
        text_element(out, "t:DateTimeCreated", &format_date_time(created));
    }
    for (uri, value) in &item.extended {
        out.push_str("<t:ExtendedProperty>");
        extended_field_uri(out, uri, form);
        match value {
            ExtendedValue::Single(v) => text_element(out, "t:Value", v),
            ExtendedValue::Multiple(values) => {
                out.push_str("<t:Values>");
                for v in values {
                    text_element(out, "t:Value", v);
                }
                out.push_str("</t:Values>");
            }
        }
        out.push_str("</t:ExtendedProperty>");
    }
    if let Some(modified) = item.last_modified {
        text_element(out, "t:LastModifiedTime", &format_date_time(modified));
    }
    if let Some(start) = item.start {
        text_element(out, "t:Start", &format_date_time(start));
    }
    if let Some(end) = item.end {
        text_element(out, "t:End", &format_date_time(end));
    }
    if let Some(location) = &item.location {
        text_element(out, "t:Location", location);
    }
    if let Some(cancelled) = item.is_cancelled {
        text_element(
            out,
            "t:IsCancelled",
            if cancelled { "true" } else { "false" },
        );
    }
    out.push_str("</t:CalendarItem>");
}

/// `t:ExtendedFieldURI` with its attributes in a fixed order.
pub fn extended_field_uri(out: &mut String, uri: &ExtendedFieldUri, form: PropertySetForm) {
    out.push_str("<t:ExtendedFieldURI");
    match &uri.set {
        PropertySet::Guid(guid) if guid == PUBLIC_STRINGS_GUID && form == PropertySetForm::Name => {
            out.push_str(r#" DistinguishedPropertySetId="PublicStrings""#);
        }
        PropertySet::Guid(guid) => attribute(out, "PropertySetId", guid),
        PropertySet::Distinguished(name) => attribute(out, "DistinguishedPropertySetId", name),
        // Never stored: refused as an invalid combination before anything is answered.
        PropertySet::Conflicting | PropertySet::None => {}
    }
    if let Some(tag) = &uri.tag {
        attribute(out, "PropertyTag", tag);
    }
    if let Some(name) = &uri.name {
        attribute(out, "PropertyName", name);
    }
    if let Some(id) = uri.id {
        attribute(out, "PropertyId", &id.to_string());
    }
    attribute(out, "PropertyType", &uri.property_type);
    out.push_str("/>");
}

fn write_folder(out: &mut String, folder: &FolderView) {
    let _ = write!(out, "<t:{}>", folder.element);
    id_element(out, "t:FolderId", &folder.id, Some(&folder.change_key));
    if let Some(parent) = &folder.parent_folder_id {
        id_element(out, "t:ParentFolderId", parent, None);
    }
    if let Some(class) = &folder.folder_class {
        text_element(out, "t:FolderClass", class);
    }
    if let Some(name) = &folder.display_name {
        text_element(out, "t:DisplayName", name);
    }
    if let Some(total) = folder.total_count {
        let _ = write!(out, "<t:TotalCount>{total}</t:TotalCount>");
    }
    if let Some(children) = folder.child_folder_count {
        let _ = write!(out, "<t:ChildFolderCount>{children}</t:ChildFolderCount>");
    }
    let _ = write!(out, "</t:{}>", folder.element);
}

fn attribute(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, r#" {name}=""#);
    escape_attribute(out, value);
    out.push('"');
}

fn id_element(out: &mut String, name: &str, id: &str, change_key: Option<&str>) {
    let _ = write!(out, "<{name}");
    attribute(out, "Id", id);
    if let Some(key) = change_key {
        attribute(out, "ChangeKey", key);
    }
    out.push_str("/>");
}

fn text_element(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}>");
    escape_text(out, value);
    let _ = write!(out, "</{name}>");
}

/// The SOAP envelope around a response element, with the `ServerVersionInfo` header Exchange
/// Online sends.
pub fn envelope(response_element: &str) -> String {
    let mut out = String::with_capacity(response_element.len() + 400);
    let _ = write!(
        out,
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP_NS}"><s:Header><h:ServerVersionInfo MajorVersion="15" MinorVersion="20" MajorBuildNumber="8000" MinorBuildNumber="0" Version="V2018_01_08" xmlns:h="{TYPES_NS}"/></s:Header><s:Body>{response_element}</s:Body></s:Envelope>"#
    );
    out
}

/// A SOAP fault as Exchange sends it with HTTP 500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The EWS response code, e.g. `ErrorSchemaValidation`, `ErrorServerBusy`.
    pub code: String,
    pub fault_string: String,
    pub message: String,
    pub back_off_ms: Option<u64>,
    /// `(line, position, violation)` of a schema violation.
    pub violation: Option<(usize, usize, String)>,
}

impl Fault {
    pub fn schema(line: usize, position: usize, violation: &str) -> Fault {
        Fault {
            code: "ErrorSchemaValidation".into(),
            fault_string: format!("The request failed schema validation: {violation}"),
            message: "The request failed schema validation.".into(),
            back_off_ms: None,
            violation: Some((line, position, violation.to_string())),
        }
    }

    pub fn server_busy(back_off_ms: u64) -> Fault {
        Fault {
            code: "ErrorServerBusy".into(),
            fault_string: SERVER_BUSY_TEXT.into(),
            message: SERVER_BUSY_TEXT.into(),
            back_off_ms: Some(back_off_ms),
            violation: None,
        }
    }

    pub fn other(code: &str, text: &str) -> Fault {
        Fault {
            code: code.into(),
            fault_string: text.into(),
            message: text.into(),
            back_off_ms: None,
            violation: None,
        }
    }
}

pub fn soap_fault(fault: &Fault) -> String {
    let mut out = String::with_capacity(800);
    let _ = write!(
        out,
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP_NS}"><s:Body><s:Fault><faultcode xmlns:a="{TYPES_NS}">a:{}</faultcode><faultstring xml:lang="en-US">"#,
        fault.code
    );
    escape_text(&mut out, &fault.fault_string);
    let _ = write!(
        out,
        r#"</faultstring><detail><e:ResponseCode xmlns:e="{ERRORS_NS}">{}</e:ResponseCode><e:Message xmlns:e="{ERRORS_NS}">"#,
        fault.code
    );
    escape_text(&mut out, &fault.message);
    out.push_str("</e:Message>");
    if fault.back_off_ms.is_some() || fault.violation.is_some() {
        let _ = write!(out, r#"<t:MessageXml xmlns:t="{TYPES_NS}">"#);
        if let Some(back_off) = fault.back_off_ms {
            let _ = write!(
                out,
                r#"<t:Value Name="BackOffMilliseconds">{back_off}</t:Value>"#
            );
        }
        if let Some((line, position, violation)) = &fault.violation {
            let _ = write!(
                out,
                "<t:LineNumber>{line}</t:LineNumber><t:LinePosition>{position}</t:LinePosition><t:Violation>"
            );
            escape_text(&mut out, violation);
            out.push_str("</t:Violation>");
        }
        out.push_str("</t:MessageXml>");
    }
    out.push_str("</detail></s:Fault></s:Body></s:Envelope>");
    out
}
