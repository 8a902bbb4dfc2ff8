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

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const SOAP_HEAD: &str = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><h:ServerVersionInfo xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types" MajorVersion="15" MinorVersion="20" Version="V2018_01_08"/></s:Header><s:Body>"#;
    const SOAP_TAIL: &str = "</s:Body></s:Envelope>";

    fn wrap(body: &str) -> Vec<u8> {
        format!("{SOAP_HEAD}{body}{SOAP_TAIL}").into_bytes()
    }

    /// A schema-valid example from `../shared/ews-examples/`, or `None` (after saying SKIPPED)
    /// when that directory is not there; with `PUSHGATE_REQUIRE_ALL=1` its absence fails.
    fn example(name: &str) -> Option<String> {
        let path = crate::test_skip::ews_example(name)?;
        Some(std::fs::read_to_string(&path).expect("example readable"))
    }

    fn answer(operation: Operation, body: &[u8]) -> Result<Element, EwsError> {
        read_answer(operation, 200, None, body)
    }

    fn property() -> ReservationProperty {
        ReservationProperty::new("ReservationId")
    }

    #[test]
    fn subscribe_examples() {
        let Some(ok) = example("subscribe_resp.xml") else {
            return;
        };
        let Some(err) = example("subscribe_err.xml") else {
            return;
        };
        let result = read_subscribe(&answer(Operation::Subscribe, &wrap(&ok)).unwrap()).unwrap();
        assert_eq!(
            result.subscription_id,
            "JgBjbzFwcjA2bWIyMjIubmFtcHJkMDYucHJvZC5vdXRsb29rLmNvbRAAAAA="
        );
        assert_eq!(result.watermark, "AQAAAOpvG0LURVdOhQkPOWZLPcI8EgAAAAAAAAE=");
        let refused = read_subscribe(&answer(Operation::Subscribe, &wrap(&err)).unwrap());
        match refused {
            Err(EwsError::ResponseCode {
                code,
                message,
                back_off,
            }) => {
                assert_eq!(code, ResponseCode::InvalidWatermark);
                assert!(message.contains("watermark"), "{message}");
                assert_eq!(back_off, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn get_item_examples() {
        let Some(ok) = example("getitem_resp.xml") else {
            return;
        };
        let items = read_get_item(
            &answer(Operation::GetItem, &wrap(&ok)).unwrap(),
            &property(),
            1,
        )
        .unwrap();
        let item = items[0].as_ref().unwrap();
        assert_eq!(
            item.item_id,
            ItemId::with_change_key("AAMkADk0...", "DwAAABYAAA...")
        );
        assert_eq!(item.subject.as_deref(), Some("Board meeting"));
        assert_eq!(item.reservation_id.as_deref(), Some("res-8f14e45f"));
        assert_eq!(item.start, Some(datetime!(2026-05-06 08:00 UTC)));
        assert_eq!(item.end, Some(datetime!(2026-05-06 09:00 UTC)));
        assert_eq!(item.location.as_deref(), Some("Room 1"));
        assert!(!item.is_cancelled);
        assert_eq!(item.parent_folder_id, None);
        // Another property name is not ours.
        let other = read_get_item(
            &answer(Operation::GetItem, &wrap(&ok)).unwrap(),
            &ReservationProperty::new("Other"),
            1,
        )
        .unwrap();
        assert_eq!(other[0].as_ref().unwrap().reservation_id, None);

        for name in ["getitem_err.xml", "neg_getitem_err_noitems.xml"] {
            let Some(err) = example(name) else { return };
            let items = read_get_item(
                &answer(Operation::GetItem, &wrap(&err)).unwrap(),
                &property(),
                1,
            )
            .unwrap();
            assert!(items[0].as_ref().unwrap_err().is_item_not_found(), "{name}");
        }
        // One message per id: a count that does not match is not believed.
        let mismatch = read_get_item(
            &answer(Operation::GetItem, &wrap(&ok)).unwrap(),
            &property(),
            2,
        );
        assert!(matches!(mismatch, Err(EwsError::Malformed { .. })));
    }

    #[test]
    fn write_answer_examples() {
        let Some(created) = example("createitem_resp.xml") else {
            return;
        };
        let Some(updated) = example("updateitem_resp.xml") else {
            return;
        };
        let Some(conflict) = example("updateitem_err.xml") else {
            return;
        };
        let Some(deleted) = example("deleteitem_resp.xml") else {
            return;
        };
        assert_eq!(
            read_create_item(&answer(Operation::CreateItem, &wrap(&created)).unwrap()).unwrap(),
            ItemId::with_change_key("AAMkADk0...", "DwAAABYAAA...")
        );
        assert_eq!(
            read_update_item(&answer(Operation::UpdateItem, &wrap(&updated)).unwrap()).unwrap(),
            ItemId::with_change_key("AAMkADk0...", "DwAAABYAAB...")
        );
        let err = read_update_item(&answer(Operation::UpdateItem, &wrap(&conflict)).unwrap())
            .unwrap_err();
        assert!(
            matches!(
                &err,
                EwsError::ResponseCode {
                    code: ResponseCode::IrresolvableConflict,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_transient() && !err.outcome_unknown());
        read_delete_item(&answer(Operation::DeleteItem, &wrap(&deleted)).unwrap()).unwrap();
        // The answer to another operation is not this one's.
        assert!(matches!(
            answer(Operation::DeleteItem, &wrap(&created)),
            Err(EwsError::Malformed { status: 200, .. })
        ));
    }

    #[test]
    fn find_item_example() {
        let Some(found) = example("finditem_resp.xml") else {
            return;
        };
        let page = read_find_item(
            &answer(Operation::FindItem, &wrap(&found)).unwrap(),
            &property(),
        )
        .unwrap();
        assert!(page.includes_last_item_in_range);
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].subject.as_deref(), Some("Board meeting"));
        assert_eq!(page.items[0].location, None);
        let truncated = found.replace(
            "IncludesLastItemInRange=\"true\"",
            "IncludesLastItemInRange=\"false\"",
        );
        let page = read_find_item(
            &answer(Operation::FindItem, &wrap(&truncated)).unwrap(),
            &property(),
        )
        .unwrap();
        assert!(!page.includes_last_item_in_range);
    }

    #[test]
    fn busy_in_body_carries_its_back_off() {
        let Some(busy) = example("busy_inbody.xml") else {
            return;
        };
        let root = xml::parse(&wrap(&busy)).unwrap();
        let message = root
            .descendant_by_local_name("SyncFolderItemsResponseMessage")
            .unwrap();
        let err = message_outcome(message).unwrap_err();
        assert_eq!(err.back_off(), Some(Duration::from_millis(5000)));
        assert!(err.is_transient());
        // The same message in a GetItem answer: the item's slot carries the error.
        let as_get_item = busy.replace("SyncFolderItems", "GetItem");
        let items = read_get_item(
            &answer(Operation::GetItem, &wrap(&as_get_item)).unwrap(),
            &property(),
            1,
        )
        .unwrap();
        let err = items[0].as_ref().unwrap_err();
        assert_eq!(err.code(), "ErrorServerBusy");
        assert_eq!(err.back_off(), Some(Duration::from_millis(5000)));
    }

    #[test]
    fn soap_faults() {
        let busy = r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">The server cannot service this request right now. Try again later.</e:Message><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">297749</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#;
        let err = read_answer(Operation::GetItem, 500, None, busy.as_bytes()).unwrap_err();
        assert!(
            matches!(
                &err,
                EwsError::ResponseCode {
                    code: ResponseCode::ServerBusy,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.back_off(), Some(Duration::from_millis(297_749)));
        assert!(err.is_transient() && !err.outcome_unknown());

        // MessageXml in another namespace (it varies by version): found by local name.
        let moved = busy.replace(
            r#"<t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value"#,
            r#"<x:MessageXml xmlns:x="urn:other"><x:Value"#,
        )
        .replace("</t:Value></t:MessageXml>", "</x:Value></x:MessageXml>");
        let err = read_answer(Operation::GetItem, 500, None, moved.as_bytes()).unwrap_err();
        assert_eq!(err.back_off(), Some(Duration::from_millis(297_749)));

        let schema = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorSchemaValidation</faultcode><faultstring xml:lang="en-US">The request failed schema validation: The element 'CalendarItem' has invalid child element 'Start'.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorSchemaValidation</e:ResponseCode><e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">The request failed schema validation.</e:Message><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:LineNumber>1</t:LineNumber><t:LinePosition>512</t:LinePosition><t:Violation>The element 'CalendarItem' has invalid child element 'Start'.</t:Violation></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#;
        let err = read_answer(Operation::CreateItem, 500, None, schema.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "ErrorSchemaValidation");
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("line 1, position 512") && text.contains("'Start'"),
            "{text}"
        );

        // A fault with only a faultcode.
        let bare = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode xmlns:q="urn:q">q:ErrorInvalidRequest</faultcode><faultstring>bad</faultstring></soap:Fault></soap:Body></soap:Envelope>"#;
        let err = read_answer(Operation::GetItem, 500, None, bare.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "ErrorInvalidRequest");
        assert!(err.to_string().contains("bad"));
    }

    #[test]
    fn http_statuses() {
        assert!(matches!(
            read_answer(Operation::GetItem, 401, None, b""),
            Err(EwsError::Unauthorized { .. })
        ));
        assert_eq!(
            read_answer(Operation::Subscribe, 403, None, b"<html/>"),
            Err(EwsError::EwsDisabled)
        );
        let busy =
            read_answer(Operation::GetItem, 503, Some(Duration::from_secs(7)), b"").unwrap_err();
        assert_eq!(busy.code(), "http_503");
        assert_eq!(busy.back_off(), Some(Duration::from_secs(7)));
        assert!(busy.is_transient());
        // A 500 that is no SOAP fault (a proxy's page): the write may have happened.
        let proxy =
            read_answer(Operation::CreateItem, 500, None, b"<html>oops</html>").unwrap_err();
        assert_eq!(proxy.code(), "http_500");
        assert!(proxy.outcome_unknown());
        assert_eq!(
            read_answer(Operation::GetItem, 302, None, b"")
                .unwrap_err()
                .code(),
            "http_302"
        );
    }

    #[test]
    fn any_prefix_and_the_default_namespace() {
        let body = r#"<ns0:Envelope xmlns:ns0="http://schemas.xmlsoap.org/soap/envelope/"><ns0:Body><GetItemResponse xmlns="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:ns1="http://schemas.microsoft.com/exchange/services/2006/types"><ResponseMessages><GetItemResponseMessage ResponseClass="Success"><ResponseCode>NoError</ResponseCode><Items><ns1:CalendarItem><ns1:ItemId Id="A" ChangeKey="K"/><ns1:ParentFolderId Id="CAL"/><ns1:Subject>Meet &amp; greet</ns1:Subject><ns1:ExtendedProperty><ns1:ExtendedFieldURI PropertySetId="00020329-0000-0000-c000-000000000046" PropertyName="ReservationId" PropertyType="String"/><ns1:Value>res-1</ns1:Value></ns1:ExtendedProperty><ns1:Start>2026-05-06T10:00:00+02:00</ns1:Start><ns1:End>2026-05-06T09:00:00.0000000Z</ns1:End><ns1:IsCancelled>true</ns1:IsCancelled></ns1:CalendarItem></Items></GetItemResponseMessage></ResponseMessages></GetItemResponse></ns0:Body></ns0:Envelope>"#;
        let items = read_get_item(
            &answer(Operation::GetItem, body.as_bytes()).unwrap(),
            &property(),
            1,
        )
        .unwrap();
        let item = items[0].as_ref().unwrap();
        assert_eq!(item.subject.as_deref(), Some("Meet & greet"));
        assert_eq!(item.parent_folder_id.as_deref(), Some("CAL"));
        assert_eq!(
            item.reservation_id.as_deref(),
            Some("res-1"),
            "GUID form, lower case"
        );
        assert_eq!(item.start, Some(datetime!(2026-05-06 08:00 UTC)));
        assert_eq!(item.end, Some(datetime!(2026-05-06 09:00 UTC)));
        assert!(item.is_cancelled);

        // The right local names under the wrong namespace are not EWS.
        let impostor = body.replace(
            "xmlns=\"http://schemas.microsoft.com/exchange/services/2006/messages\"",
            "xmlns=\"urn:not-ews\"",
        );
        assert!(matches!(
            answer(Operation::GetItem, impostor.as_bytes()),
            Err(EwsError::Malformed { .. })
        ));
        // Another GUID is another property set.
        let other_set = body.replace(
            "00020329-0000-0000-c000-000000000046",
            "00062008-0000-0000-C000-000000000046",
        );
        let items = read_get_item(
            &answer(Operation::GetItem, other_set.as_bytes()).unwrap(),
            &property(),
            1,
        )
        .unwrap();
        assert_eq!(items[0].as_ref().unwrap().reservation_id, None);
    }

    #[test]
    fn warnings_and_inner_errors() {
        let warning = r#"<m:GetFolderResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages><m:GetFolderResponseMessage ResponseClass="Warning"><m:MessageText>Processing stopped.</m:MessageText><m:ResponseCode>ErrorBatchProcessingStopped</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse>"#;
        let err =
            read_get_folder(&answer(Operation::GetFolder, &wrap(warning)).unwrap()).unwrap_err();
        assert!(matches!(&err, EwsError::Warning { .. }), "{err:?}");
        assert!(err.is_transient());
        let inner = r#"<m:DeleteItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:DeleteItemResponseMessage ResponseClass="Error"><m:MessageText>An internal server error occurred.</m:MessageText><m:ResponseCode>ErrorInternalServerError</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:MessageXml><t:Value Name="InnerErrorResponseCode">ErrorMailboxStoreUnavailable</t:Value></m:MessageXml></m:DeleteItemResponseMessage></m:ResponseMessages></m:DeleteItemResponse>"#;
        let err =
            read_delete_item(&answer(Operation::DeleteItem, &wrap(inner)).unwrap()).unwrap_err();
        assert_eq!(err.code(), "ErrorInternalServerError");
        assert!(
            err.to_string().contains("ErrorMailboxStoreUnavailable"),
            "{err}"
        );
        // Codes that are not identifiers are not believed (they would become metric labels).
        let odd = inner.replace("ErrorInternalServerError", "Error Internal &amp; x");
        assert!(matches!(
            read_delete_item(&answer(Operation::DeleteItem, &wrap(&odd)).unwrap()),
            Err(EwsError::Malformed { .. })
        ));
    }

    #[test]
    fn get_folder_answer() {
        let folder = r#"<m:GetFolderResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders><t:CalendarFolder><t:FolderId Id="AAMkCAL" ChangeKey="AgAA"/></t:CalendarFolder></m:Folders></m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse>"#;
        assert_eq!(
            read_get_folder(&answer(Operation::GetFolder, &wrap(folder)).unwrap()).unwrap(),
            "AAMkCAL"
        );
        let empty = folder.replace("<t:FolderId Id=\"AAMkCAL\" ChangeKey=\"AgAA\"/>", "");
        assert!(read_get_folder(&answer(Operation::GetFolder, &wrap(&empty)).unwrap()).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut bodies: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"garbage".to_vec(),
            b"<html><body>Service Unavailable</body></html>".to_vec(),
            wrap(""),
            wrap("<m:GetItemResponse xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\"/>"),
            b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"/>".to_vec(),
            b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault/></s:Body></s:Envelope>".to_vec(),
        ];
        let names = [
            "getitem_resp.xml",
            "finditem_resp.xml",
            "subscribe_resp.xml",
            "createitem_resp.xml",
            "busy_inbody.xml",
        ];
        for name in names {
            let Some(text) = example(name) else { return };
            let whole = wrap(&text);
            // Every truncation of a real answer.
            for cut in (0..whole.len()).step_by(7) {
                bodies.push(whole[..cut].to_vec());
            }
            // Random byte flips.
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for _ in 0..200 {
                let mut flipped = whole.clone();
                let at = rng.random_range(0..flipped.len());
                flipped[at] = rng.random();
                bodies.push(flipped);
            }
        }
        for body in &bodies {
            for operation in Operation::ALL {
                for status in [200, 500] {
                    if let Ok(response) = read_answer(operation, status, None, body) {
                        let _ = read_subscribe(&response);
                        let _ = read_get_item(&response, &property(), 1);
                        let _ = read_create_item(&response);
                        let _ = read_update_item(&response);
                        let _ = read_delete_item(&response);
                        let _ = read_find_item(&response, &property());
                        let _ = read_get_folder(&response);
                    }
                }
            }
        }
        // A truncated success answer is unreadable, and the write may have happened.
        let Some(created) = example("createitem_resp.xml") else {
            return;
        };
        let whole = wrap(&created);
        let err =
            read_answer(Operation::CreateItem, 200, None, &whole[..whole.len() / 2]).unwrap_err();
        assert!(err.outcome_unknown(), "{err:?}");
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06 08:49:37
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("99999999999", now), Some(MAX_HINT));
    }

    #[test]
    fn date_time_forms() {
        let t = datetime!(2026-05-06 08:00 UTC);
        assert_eq!(parse_date_time("2026-05-06T08:00:00Z"), Some(t));
        assert_eq!(parse_date_time("2026-05-06T08:00:00.0000000Z"), Some(t));
        assert_eq!(parse_date_time("2026-05-06T10:00:00+02:00"), Some(t));
        assert_eq!(parse_date_time("2026-05-06T08:00:00"), Some(t));
        assert_eq!(parse_date_time("2026-05-06"), None);
        assert_eq!(parse_date_time("tomorrow"), None);
    }
}
