//! Answer readers: pure functions from an HTTP status and body to the client's values or an
//! `EwsError`. Elements are matched by namespace URI and local name, never by prefix; the order
//! of children is not relied on; `m:Items` may be missing on errors; `MessageXml` is found by
//! local name (its namespace varies between Exchange versions).

use std::time::{Duration, SystemTime};

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::error::{EwsError, ResponseCode};
use super::model::{
    CalendarItem, CalendarViewPage, ItemId, Operation, ReservationProperty, SubscribeResult,
    PUBLIC_STRINGS_GUID,
};
use super::write::{MESSAGES_NS as M, SOAP_NS, TYPES_NS as T};
use super::xml::{self, Element};

/// Longest message text kept: it ends up in logs and a mailbox's `last_error`.
const MAX_MESSAGE_CHARS: usize = 500;
/// Longest back-off hint believed (a day); Exchange has been seen asking for five minutes.
const MAX_HINT: Duration = Duration::from_secs(24 * 3600);

/// The `m:<Operation>Response` element of an answer, or the error the answer stands for: HTTP
/// 401/403, a SOAP fault (ErrorServerBusy and ErrorSchemaValidation come as HTTP 500 faults),
/// another status, or a body that is not the answer to `operation`.
pub fn read_answer(
    operation: Operation,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Element, EwsError> {
    match status {
        401 => {
            return Err(EwsError::Unauthorized {
                detail: "Exchange answered 401".into(),
            })
        }
        403 => return Err(EwsError::EwsDisabled),
        200 | 500 => {}
        _ => {
            return Err(EwsError::Http {
                status,
                retry_after,
            })
        }
    }
    let not_ews = |detail: String| {
        if status == 200 {
            EwsError::malformed(status, detail)
        } else {
            EwsError::Http {
                status,
                retry_after,
            }
        }
    };
    let root = xml::parse(body).map_err(not_ews)?;
    if !root.is(SOAP_NS, "Envelope") {
        return Err(not_ews(format!(
            "root element is <{}>, not a SOAP envelope",
            root.local
        )));
    }
    let mut soap_body = take_child(root, SOAP_NS, "Body")
        .ok_or_else(|| not_ews("SOAP envelope without a Body".into()))?;
    if let Some(fault) = soap_body.child(SOAP_NS, "Fault") {
        return Err(fault_error(status, fault));
    }
    if status != 200 {
        return Err(not_ews("HTTP 500 without a SOAP fault".into()));
    }
    let expected = format!("{}Response", operation.name());
    let position = soap_body
        .children
        .iter()
        .position(|c| c.is(M, &expected))
        .ok_or_else(|| {
            let found = soap_body
                .first_child()
                .map_or_else(|| "nothing".to_string(), |c| format!("<{}>", c.local));
            EwsError::malformed(
                status,
                format!("expected m:{expected} in the body, found {found}"),
            )
        })?;
    Ok(soap_body.children.swap_remove(position))
}

/// The response messages of an `m:<Operation>Response`, in order.
pub fn response_messages(
    operation: Operation,
    response: &Element,
) -> Result<Vec<&Element>, EwsError> {
    let name = format!("{}ResponseMessage", operation.name());
    let messages: Vec<&Element> = response
        .child(M, "ResponseMessages")
        .ok_or_else(|| EwsError::malformed(200, "no m:ResponseMessages"))?
        .children_named(M, &name)
        .collect();
    if messages.is_empty() {
        return Err(EwsError::malformed(200, format!("no m:{name}")));
    }
    Ok(messages)
}

/// Success, or the error a response message carries (`ResponseClass` Error or Warning).
pub fn message_outcome(message: &Element) -> Result<(), EwsError> {
    let class = message.attribute("ResponseClass").unwrap_or("");
    if class == "Success" {
        return Ok(());
    }
    let code_text = message.child_text(M, "ResponseCode").unwrap_or("");
    let text = message.child_text(M, "MessageText").unwrap_or("");
    match class {
        "Warning" => Err(EwsError::Warning {
            code: checked_code(code_text).unwrap_or("Warning").to_string(),
            message: bounded(text),
        }),
        "Error" => {
            let code = checked_code(code_text).ok_or_else(|| {
                EwsError::malformed(
                    200,
                    format!("unusable ResponseCode {:?}", bounded(code_text)),
                )
            })?;
            let message_xml = message.child(M, "MessageXml").or_else(|| {
                // Match by local name too: its namespace is not the same on every version.
                message.children.iter().find(|c| c.local == "MessageXml")
            });
            let mut text = bounded(text);
            if let Some(inner) = message_xml.and_then(|x| named_value(x, "InnerErrorResponseCode"))
            {
                text.push_str(&format!(" (inner error {})", bounded(inner)));
            }
            Err(EwsError::ResponseCode {
                code: ResponseCode::parse(code),
                message: text,
                back_off: message_xml.and_then(back_off_hint),
            })
        }
        other => Err(EwsError::malformed(
            200,
            format!("ResponseClass {:?}", bounded(other)),
        )),
    }
}

/// The one response message of a single-target operation, checked.
fn single_message(operation: Operation, response: &Element) -> Result<&Element, EwsError> {
    let messages = response_messages(operation, response)?;
    if messages.len() != 1 {
        return Err(EwsError::malformed(
            200,
            format!("{} response messages, expected 1", messages.len()),
        ));
    }
    let message = messages[0];
    message_outcome(message)?;
    Ok(message)
}

pub fn read_subscribe(response: &Element) -> Result<SubscribeResult, EwsError> {
    let message = single_message(Operation::Subscribe, response)?;
    let field = |name: &str| {
        message
            .child_text(M, name)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| EwsError::malformed(200, format!("Subscribe answer without m:{name}")))
    };
    Ok(SubscribeResult {
        subscription_id: field("SubscriptionId")?,
        watermark: field("Watermark")?,
    })
}

/// One result per response message, in order; `expected` is the number of ids asked for.
pub fn read_get_item(
    response: &Element,
    property: &ReservationProperty,
    expected: usize,
) -> Result<Vec<Result<CalendarItem, EwsError>>, EwsError> {
    let messages = response_messages(Operation::GetItem, response)?;
    if messages.len() != expected {
        return Err(EwsError::malformed(
            200,
            format!("{} response messages for {expected} ids", messages.len()),
        ));
    }
    Ok(messages
        .into_iter()
        .map(|message| {
            message_outcome(message)?;
            let item = first_item(message)?;
            calendar_item(item, property)
        })
        .collect())
}

pub fn read_create_item(response: &Element) -> Result<ItemId, EwsError> {
    let message = single_message(Operation::CreateItem, response)?;
    item_id(first_item(message)?)
}

pub fn read_update_item(response: &Element) -> Result<ItemId, EwsError> {
    let message = single_message(Operation::UpdateItem, response)?;
    item_id(first_item(message)?)
}

pub fn read_delete_item(response: &Element) -> Result<(), EwsError> {
    single_message(Operation::DeleteItem, response).map(|_| ())
}

pub fn read_find_item(
    response: &Element,
    property: &ReservationProperty,
) -> Result<CalendarViewPage, EwsError> {
    let message = single_message(Operation::FindItem, response)?;
    let root = message
        .child(M, "RootFolder")
        .ok_or_else(|| EwsError::malformed(200, "FindItem answer without m:RootFolder"))?;
    // Exchange always sends it; were it missing, treat the page as complete rather than split
    // the window forever.
    let includes_last = match root.attribute("IncludesLastItemInRange").map(str::trim) {
        None => true,
        Some(flag) => parse_bool(flag).ok_or_else(|| {
            EwsError::malformed(200, format!("IncludesLastItemInRange {:?}", bounded(flag)))
        })?,
    };
    let items = match root.child(T, "Items") {
        Some(items) => items
            .children
            .iter()
            .filter(|c| c.namespace.as_deref() == Some(T))
            .map(|item| calendar_item(item, property))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok(CalendarViewPage {
        items,
        includes_last_item_in_range: includes_last,
    })
}

pub fn read_get_folder(response: &Element) -> Result<String, EwsError> {
    let message = single_message(Operation::GetFolder, response)?;
    message
        .child(M, "Folders")
        .and_then(|folders| {
            folders
                .children
                .iter()
                .find_map(|folder| folder.child(T, "FolderId"))
        })
        .and_then(|id| id.attribute("Id"))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| EwsError::malformed(200, "GetFolder answer without t:FolderId"))
}

/// `Retry-After`: delta-seconds or an HTTP date (IMF-fixdate), capped at a day.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX_HINT));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = PrimitiveDateTime::parse(value, format).ok()?.assume_utc();
    let wait = SystemTime::from(at).duration_since(now).unwrap_or_default();
    Some(wait.min(MAX_HINT))
}

fn fault_error(status: u16, fault: &Element) -> EwsError {
    // faultcode, faultstring and detail are unqualified in SOAP 1.1; match by local name.
    let plain = |name: &str| {
        fault
            .children
            .iter()
            .find(|c| c.local == name)
            .map(|c| c.text.trim())
    };
    let detail = fault.children.iter().find(|c| c.local == "detail");
    let detail_code = detail
        .and_then(|d| d.descendant_by_local_name("ResponseCode"))
        .map(|c| c.text.trim());
    // The faultcode is a QName such as `a:ErrorServerBusy`: its local part is the EWS code.
    let fault_code = plain("faultcode").map(|q| q.rsplit(':').next().unwrap_or(q));
    let Some(code) = detail_code.or(fault_code).and_then(checked_code) else {
        return EwsError::malformed(status, "SOAP fault without a usable code");
    };
    let mut message = detail
        .and_then(|d| d.descendant_by_local_name("Message"))
        .map(|m| m.text.trim())
        .or_else(|| plain("faultstring"))
        .map(bounded)
        .unwrap_or_default();
    let message_xml = detail.and_then(|d| d.descendant_by_local_name("MessageXml"));
    if let Some(xml) = message_xml {
        // ErrorSchemaValidation says where: LineNumber, LinePosition, Violation.
        let part = |name: &str| xml.descendant_by_local_name(name).map(|e| e.text.trim());
        if let Some(violation) = part("Violation") {
            message.push_str(&format!(
                " (line {}, position {}: {})",
                bounded(part("LineNumber").unwrap_or("?")),
                bounded(part("LinePosition").unwrap_or("?")),
                bounded(violation)
            ));
        }
    }
    EwsError::ResponseCode {
        code: ResponseCode::parse(code),
        message,
        back_off: message_xml.and_then(back_off_hint),
    }
}

/// `<Value Name="BackOffMilliseconds">` anywhere under `MessageXml`.
fn back_off_hint(message_xml: &Element) -> Option<Duration> {
    named_value(message_xml, "BackOffMilliseconds")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_HINT))
}

fn named_value<'a>(message_xml: &'a Element, name: &str) -> Option<&'a str> {
    let mut stack: Vec<&Element> = message_xml.children.iter().collect();
    while let Some(element) = stack.pop() {
        if element.local == "Value" && element.attribute("Name") == Some(name) {
            return Some(element.text.trim());
        }
        stack.extend(element.children.iter());
    }
    None
}

/// EWS codes are identifiers; anything else is not believed (it would also become a metric
/// label).
fn checked_code(code: &str) -> Option<&str> {
    (!code.is_empty()
        && code.len() <= 100
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then_some(code)
}

fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn first_item(message: &Element) -> Result<&Element, EwsError> {
    message
        .child(M, "Items")
        .and_then(|items| {
            items
                .children
                .iter()
                .find(|c| c.namespace.as_deref() == Some(T))
        })
        .ok_or_else(|| EwsError::malformed(200, "successful answer without an item in m:Items"))
}

fn item_id(item: &Element) -> Result<ItemId, EwsError> {
    let element = item
        .child(T, "ItemId")
        .ok_or_else(|| EwsError::malformed(200, format!("<{}> without t:ItemId", item.local)))?;
    let id = element
        .attribute("Id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| EwsError::malformed(200, "t:ItemId without Id"))?;
    Ok(ItemId {
        id: id.to_string(),
        change_key: element
            .attribute("ChangeKey")
            .filter(|k| !k.is_empty())
            .map(str::to_string),
    })
}

/// A `t:CalendarItem` (or any other item type: then the calendar fields are absent).
fn calendar_item(item: &Element, property: &ReservationProperty) -> Result<CalendarItem, EwsError> {
    let time_field = |name: &str| -> Result<Option<OffsetDateTime>, EwsError> {
        item.child_text(T, name)
            .map(|text| {
                parse_date_time(text).ok_or_else(|| {
                    EwsError::malformed(
                        200,
                        format!("t:{name} {:?} is not a dateTime", bounded(text)),
                    )
                })
            })
            .transpose()
    };
    let is_cancelled = match item.child_text(T, "IsCancelled") {
        None => false,
        Some(flag) => parse_bool(flag).ok_or_else(|| {
            EwsError::malformed(200, format!("t:IsCancelled {:?}", bounded(flag)))
        })?,
    };
    let reservation_id = item
        .children_named(T, "ExtendedProperty")
        .find(|p| {
            p.child(T, "ExtendedFieldURI")
                .is_some_and(|uri| is_reservation_property(uri, property))
        })
        .and_then(|p| p.child(T, "Value"))
        .map(|v| v.text.clone());
    Ok(CalendarItem {
        item_id: item_id(item)?,
        parent_folder_id: item
            .child(T, "ParentFolderId")
            .and_then(|f| f.attribute("Id"))
            .map(str::to_string),
        subject: item.child(T, "Subject").map(|s| s.text.clone()),
        start: time_field("Start")?,
        end: time_field("End")?,
        location: item.child(T, "Location").map(|l| l.text.clone()),
        is_cancelled,
        reservation_id,
    })
}

/// Our property in either form Exchange uses: `DistinguishedPropertySetId="PublicStrings"` or
/// `PropertySetId` with PS_PUBLIC_STRINGS' GUID (any case, braces tolerated).
fn is_reservation_property(uri: &Element, property: &ReservationProperty) -> bool {
    let public_strings = uri.attribute("DistinguishedPropertySetId") == Some("PublicStrings")
        || uri.attribute("PropertySetId").is_some_and(|guid| {
            guid.trim()
                .trim_start_matches('{')
                .trim_end_matches('}')
                .eq_ignore_ascii_case(PUBLIC_STRINGS_GUID)
        });
    public_strings
        && uri.attribute("PropertyName") == Some(property.name.as_str())
        && uri.attribute("PropertyType").is_none_or(|t| t == "String")
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// `xs:dateTime`; Exchange answers in UTC, but a value without a zone is read as UTC too.
pub fn parse_date_time(text: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t);
    }
    let has_zone = text.ends_with('Z')
        || text
            .get(text.len().saturating_sub(6)..)
            .is_some_and(|tail| tail.starts_with('+') || tail.starts_with('-'));
    if has_zone {
        return None;
    }
    OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339).ok()
}

fn take_child(mut parent: Element, namespace: &str, local: &str) -> Option<Element> {
    let position = parent
        .children
        .iter()
        .position(|c| c.is(namespace, local))?;
    Some(parent.children.swap_remove(position))
}
