//! What the worker receives, as pure functions: the request the gateway rebuilds from the checked
//! parts of an admitted notification. Only the fields listed in [`FORWARDED_FIELDS`] ever reach
//! the worker, whatever else the client sent: the client's own values only for the fields the
//! rules checked, the gateway's values for the rest. The answer relayed to the client is rebuilt
//! the same way, from the worker's status, `Content-Type` and body ([`RELAYED_FIELDS`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};

use super::rules::NotificationHead;
use super::upstream::WorkerAnswer;

/// Every header field of a forwarded request, in the order they are written.
pub const FORWARDED_FIELDS: [&str; 8] = [
    "Host",
    "Content-Type",
    "SOAPAction",
    "Content-Length",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Request-Id",
    "Authorization",
];

/// A notification the gateway admitted: the checked head and the length of the checked body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRequest {
    pub head: NotificationHead,
    pub body_len: usize,
}

/// What the gateway itself says about a forwarded request.
#[derive(Debug, Clone, Copy)]
pub struct GatewayFields<'a> {
    /// The worker's own address (`upstream`), as its `Host`: the client's `Host` names the
    /// gateway, which means nothing to the worker.
    pub upstream_host: &'a str,
    /// The verified client (PROXY header, trusted `X-Forwarded-For`, or the peer).
    pub client: IpAddr,
    /// Whether the client came in over TLS.
    pub tls: bool,
    pub request_id: &'a str,
    /// `Bearer <token>`.
    pub authorization: &'a str,
}

/// The whole request the worker receives: request line, exactly the fields of
/// [`FORWARDED_FIELDS`] in that order, the body. `Host` is the worker's own address; the client's
/// `Content-Type` and `SOAPAction` pass exactly as checked; the rest are the gateway's. No
/// `Connection` field: HTTP/1.1 keeps the connection to the worker open by default, and it is
/// pooled for the next notification. Written straight into one buffer (one write, no
/// intermediate strings: this runs for every notification).
pub fn upstream_request(
    checked: &CheckedRequest,
    gateway: &GatewayFields<'_>,
    body: &[u8],
) -> Bytes {
    let head = &checked.head;
    let mut out = BytesMut::with_capacity(512 + body.len());
    let field = |out: &mut BytesMut, name: &str, value: &[u8]| {
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    };
    out.put_slice(b"POST ");
    out.put_slice(head.target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    field(&mut out, "Host", gateway.upstream_host.as_bytes());
    field(&mut out, "Content-Type", head.content_type.as_bytes());
    field(&mut out, "SOAPAction", head.soap_action.as_bytes());
    // Writing into a BytesMut cannot fail.
    let _ = write!(out, "Content-Length: {}\r\n", checked.body_len);
    let _ = write!(out, "X-Forwarded-For: {}\r\n", gateway.client);
    let proto: &[u8] = if gateway.tls { b"https" } else { b"http" };
    field(&mut out, "X-Forwarded-Proto", proto);
    field(&mut out, "X-Request-Id", gateway.request_id.as_bytes());
    field(&mut out, "Authorization", gateway.authorization.as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.freeze()
}

/// Every header field of a relayed answer, in the order they are written: of the worker's own
/// fields only `Content-Type` passes (when it sent one); the rest are the gateway's.
pub const RELAYED_FIELDS: [&str; 5] = [
    "Date",
    "Content-Type",
    "Content-Length",
    "X-Request-Id",
    "Connection",
];

/// The answer the client gets for a forwarded notification: the worker's status, `Content-Type`
/// and body, with the gateway's `Date`, length, request id and connection decision, as one buffer
/// (one TLS record, one write).
pub fn relayed_answer(
    answer: &WorkerAnswer,
    request_id: &str,
    date: &str,
    keep_alive: bool,
) -> Bytes {
    let reason = http::StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Unknown");
    let mut out = BytesMut::with_capacity(256 + answer.body.len());
    // Writing into a BytesMut cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {reason}\r\nDate: {date}\r\n",
        answer.status
    );
    if let Some(content_type) = &answer.content_type {
        out.put_slice(b"Content-Type: ");
        out.put_slice(content_type.as_bytes());
        out.put_slice(b"\r\n");
    }
    let _ = write!(
        out,
        "Content-Length: {}\r\nX-Request-Id: {request_id}\r\nConnection: {}\r\n\r\n",
        answer.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    out.put_slice(&answer.body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::rules::BodyFraming;

    /// The value of the first field with this exact name.
    fn field(headers: &[httparse::Header<'_>], name: &str) -> Option<String> {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    }

    fn checked() -> CheckedRequest {
        CheckedRequest {
            head: NotificationHead {
                framing: BodyFraming::Chunked,
                expect_continue: false,
                tenant: Some("Default".into()),
                target: "/Webservices/SyncNotification.svc?Default".into(),
                content_type: "text/xml; charset=utf-8".into(),
                soap_action: "\"http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification\"".into(),
            },
            body_len: 5,
        }
    }

    #[test]
    fn upstream_request_is_one_complete_request_of_the_allowlist() {
        let gateway = GatewayFields {
            upstream_host: "[::1]:8080",
            client: "40.92.0.1".parse().unwrap(),
            tls: true,
            request_id: "0123",
            authorization: "Bearer t",
        };
        let bytes = upstream_request(&checked(), &gateway, b"<a/>!");
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(head_len) = request.parse(&bytes).unwrap() else {
            panic!("incomplete head");
        };
        assert_eq!(request.method, Some("POST"));
        assert_eq!(request.version, Some(1));
        assert_eq!(
            request.path,
            Some("/Webservices/SyncNotification.svc?Default")
        );
        let names: Vec<&str> = request.headers.iter().map(|h| h.name).collect();
        assert_eq!(names, FORWARDED_FIELDS);
        let value = |name: &str| field(request.headers, name);
        assert_eq!(value("Host").as_deref(), Some("[::1]:8080"));
        assert_eq!(value("Content-Length").as_deref(), Some("5"));
        assert_eq!(value("X-Forwarded-Proto").as_deref(), Some("https"));
        assert_eq!(value("X-Forwarded-For").as_deref(), Some("40.92.0.1"));
        assert_eq!(value("X-Request-Id").as_deref(), Some("0123"));
        assert_eq!(value("Authorization").as_deref(), Some("Bearer t"));
        assert_eq!(value("SOAPAction"), Some(checked().head.soap_action));
        assert_eq!(value("Content-Type"), Some(checked().head.content_type));
        assert_eq!(&bytes[head_len..], b"<a/>!");
    }

    #[test]
    fn relayed_answer_carries_only_the_relayed_fields() {
        let answer = WorkerAnswer {
            status: 500,
            content_type: Some("text/xml; charset=utf-8".into()),
            body: Bytes::from_static(b"<fault/>"),
        };
        let bytes = relayed_answer(&answer, "0123", "Tue, 01 Dec 2026 00:00:00 GMT", false);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head_len) = response.parse(&bytes).unwrap() else {
            panic!("incomplete head");
        };
        assert_eq!(response.code, Some(500));
        assert_eq!(response.reason, Some("Internal Server Error"));
        let names: Vec<&str> = response.headers.iter().map(|h| h.name).collect();
        assert_eq!(names, RELAYED_FIELDS);
        let value = |name: &str| field(response.headers, name);
        assert_eq!(value("Content-Length").as_deref(), Some("8"));
        assert_eq!(value("Connection").as_deref(), Some("close"));
        assert_eq!(&bytes[head_len..], b"<fault/>");
        let bare = WorkerAnswer {
            content_type: None,
            ..answer
        };
        let kept = relayed_answer(&bare, "0123", "d", true);
        let text = String::from_utf8_lossy(&kept);
        assert!(!text.contains("Content-Type"));
        assert!(text.contains("\r\nConnection: keep-alive\r\n"));
    }
}
