//! What the worker receives, as pure functions: the request the gateway rebuilds from the checked
//! parts of an admitted notification. Only the fields listed in [`FORWARDED_FIELDS`] ever reach
//! the worker, whatever else the client sent: the client's own values only for the fields the
//! rules checked, the gateway's values for the rest.

use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};

use super::rules::NotificationHead;

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

/// The fields that describe the request itself: `Host`, and the client's `Content-Type` and
/// `SOAPAction` exactly as checked, and the length of the body as read.
pub fn request_fields(
    checked: &CheckedRequest,
    upstream_host: &str,
) -> [(&'static str, String); 4] {
    [
        ("Host", upstream_host.to_string()),
        ("Content-Type", checked.head.content_type.clone()),
        ("SOAPAction", checked.head.soap_action.clone()),
        ("Content-Length", checked.body_len.to_string()),
    ]
}

/// Every field the worker receives, in the order of [`FORWARDED_FIELDS`].
pub fn upstream_fields(
    checked: &CheckedRequest,
    gateway: &GatewayFields<'_>,
) -> Vec<(&'static str, String)> {
    let mut fields = request_fields(checked, gateway.upstream_host).to_vec();
    fields.extend([
        ("X-Forwarded-For", gateway.client.to_string()),
        (
            "X-Forwarded-Proto",
            if gateway.tls { "https" } else { "http" }.to_string(),
        ),
        ("X-Request-Id", gateway.request_id.to_string()),
        ("Authorization", gateway.authorization.to_string()),
    ]);
    fields
}

/// The request as pingora reads it: request line, the request fields, `Connection` (`close`, or
/// `keep-alive` when the client's connection is kept for another request), the body. Pingora
/// parses only these bytes, never the client's; the gateway's own fields are added when the
/// upstream request is built, so the token never passes through a parser.
pub fn replayed_request(
    checked: &CheckedRequest,
    upstream_host: &str,
    body: &[u8],
    keep_alive: bool,
) -> Bytes {
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(b"POST ");
    out.put_slice(checked.head.target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in request_fields(checked, upstream_host) {
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n".as_slice()
    } else {
        b"Connection: close\r\n\r\n".as_slice()
    });
    out.put_slice(body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::rules::BodyFraming;

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
    fn upstream_fields_are_exactly_the_allowlist() {
        let fields = upstream_fields(
            &checked(),
            &GatewayFields {
                upstream_host: "127.0.0.1:8080",
                client: "40.92.0.1".parse().unwrap(),
                tls: true,
                request_id: "0123",
                authorization: "Bearer t",
            },
        );
        let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, FORWARDED_FIELDS);
        let value = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(value("Host"), Some("127.0.0.1:8080"));
        assert_eq!(value("Content-Length"), Some("5"));
        assert_eq!(value("X-Forwarded-Proto"), Some("https"));
        assert_eq!(value("X-Forwarded-For"), Some("40.92.0.1"));
        assert_eq!(
            value("SOAPAction"),
            Some(checked().head.soap_action.as_str())
        );
    }

    #[test]
    fn replayed_request_is_one_complete_request() {
        let bytes = replayed_request(&checked(), "[::1]:8080", b"<a/>!", false);
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
        assert_eq!(
            names,
            [
                "Host",
                "Content-Type",
                "SOAPAction",
                "Content-Length",
                "Connection"
            ]
        );
        assert_eq!(&bytes[head_len..], b"<a/>!");
        assert!(!String::from_utf8_lossy(&bytes).contains("Authorization"));
        assert!(String::from_utf8_lossy(&bytes).contains("\r\nConnection: close\r\n"));
        let kept = replayed_request(&checked(), "[::1]:8080", b"<a/>!", true);
        assert!(String::from_utf8_lossy(&kept).contains("\r\nConnection: keep-alive\r\n"));
    }
}
