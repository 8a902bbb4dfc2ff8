//! The answers the listener gives Exchange (`m:SendNotificationResult`), and the Exchange-side
//! reading of such an answer (for the simulator, which must judge answers as Exchange does).

/// `m:SubscriptionStatus`: keep sending, or end this subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Ok,
    Unsubscribe,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Ok => "OK",
            SubscriptionStatus::Unsubscribe => "Unsubscribe",
        }
    }
}

const RESULT_OK: &str = concat!(
    r#"<?xml version="1.0" encoding="utf-8"?>"#,
    r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>"#,
    r#"<m:SendNotificationResult xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">"#,
    r#"<m:SubscriptionStatus>OK</m:SubscriptionStatus></m:SendNotificationResult></s:Body></s:Envelope>"#
);

const RESULT_UNSUBSCRIBE: &str = concat!(
    r#"<?xml version="1.0" encoding="utf-8"?>"#,
    r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>"#,
    r#"<m:SendNotificationResult xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">"#,
    r#"<m:SubscriptionStatus>Unsubscribe</m:SubscriptionStatus></m:SendNotificationResult></s:Body></s:Envelope>"#
);

/// The `Content-Type` the answer is sent with.
pub const RESULT_CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// Exchange counts an answer of this many bytes or more as a failed delivery.
pub const RESULT_MAX_BYTES: usize = 1024;

/// The complete answer body for `status`: well under 1,024 bytes, never compressed.
pub fn result_envelope(status: SubscriptionStatus) -> &'static [u8] {
    match status {
        SubscriptionStatus::Ok => RESULT_OK.as_bytes(),
        SubscriptionStatus::Unsubscribe => RESULT_UNSUBSCRIBE.as_bytes(),
    }
}

/// Reads an answer as Exchange does (PROTOCOL.md §3): a body under 1,024 bytes holding a
/// well-formed SOAP envelope whose `m:SendNotificationResult/m:SubscriptionStatus` is exactly `OK`
/// or `Unsubscribe` in the messages namespace. Anything else is a failed delivery (`None`).
pub fn read_result(body: &[u8]) -> Option<SubscriptionStatus> {
    use quick_xml::events::Event;
    use quick_xml::name::ResolveResult;
    use quick_xml::NsReader;

    const SOAP: &[u8] = b"http://schemas.xmlsoap.org/soap/envelope/";
    const MESSAGES: &[u8] = b"http://schemas.microsoft.com/exchange/services/2006/messages";
    if body.is_empty() || body.len() >= RESULT_MAX_BYTES {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut reader = NsReader::from_str(text);
    // Expected path of element names, by namespace and local name.
    let path: [(&[u8], &[u8]); 4] = [
        (SOAP, b"Envelope"),
        (SOAP, b"Body"),
        (MESSAGES, b"SendNotificationResult"),
        (MESSAGES, b"SubscriptionStatus"),
    ];
    let mut depth = 0usize;
    let mut status: Option<String> = None;
    let mut in_status = false;
    loop {
        let (ns, event) = reader.read_resolved_event().ok()?;
        match event {
            Event::Start(start) => {
                let expected = path.get(depth)?;
                let ResolveResult::Bound(namespace) = ns else {
                    return None;
                };
                if namespace.as_ref() != expected.0 || start.local_name().as_ref() != expected.1 {
                    return None;
                }
                depth += 1;
                in_status = depth == path.len();
            }
            Event::End(_) => {
                depth = depth.checked_sub(1)?;
                in_status = false;
            }
            Event::Text(text) if in_status => {
                let decoded = text.decode().ok()?;
                status.get_or_insert_with(String::new).push_str(&decoded);
            }
            Event::Text(text) => {
                if !text.iter().all(|b| b.is_ascii_whitespace()) {
                    return None;
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) => {}
            _ => return None,
        }
    }
    if depth != 0 {
        return None;
    }
    match status.as_deref() {
        Some("OK") => Some(SubscriptionStatus::Ok),
        Some("Unsubscribe") => Some(SubscriptionStatus::Unsubscribe),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_small_and_read_back() {
        for status in [SubscriptionStatus::Ok, SubscriptionStatus::Unsubscribe] {
            let body = result_envelope(status);
            assert!(body.len() < RESULT_MAX_BYTES);
            assert_eq!(read_result(body), Some(status));
        }
    }

    #[test]
    fn exchange_rejects_wrong_case_and_empty_bodies() {
        let ok = std::str::from_utf8(result_envelope(SubscriptionStatus::Ok)).unwrap();
        assert_eq!(read_result(ok.replace(">OK<", ">ok<").as_bytes()), None);
        let unsub = std::str::from_utf8(result_envelope(SubscriptionStatus::Unsubscribe)).unwrap();
        assert_eq!(
            read_result(unsub.replace("Unsubscribe<", "UNSUBSCRIBE<").as_bytes()),
            None
        );
        assert_eq!(read_result(b""), None);
        assert_eq!(read_result(&[b' '; 1024]), None);
        assert_eq!(
            read_result(ok.replace("</s:Envelope>", "").as_bytes()),
            None
        );
    }

    #[test]
    fn status_in_wrong_namespace_is_a_failure() {
        let ok = std::str::from_utf8(result_envelope(SubscriptionStatus::Ok)).unwrap();
        let wrong = ok.replace("2006/messages", "2006/types");
        assert_eq!(read_result(wrong.as_bytes()), None);
    }
}
