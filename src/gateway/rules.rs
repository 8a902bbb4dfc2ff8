//! The request rules, as pure functions over the parsed request head: which route a request takes
//! (notification, confirmation page, health check) or which refusal it gets. Everything here works
//! on the raw bytes as they arrived, before any decoding, so what is checked is what is forwarded.

use super::reject::{Reject, ALLOWED_METHODS};

pub use crate::endpoint::{is_notification_path, SEND_NOTIFICATION_ACTION};

/// The gateway's own health check path; never forwarded.
pub const HEALTH_PATH: &str = "/healthz";

/// `Allow` for the health check path.
pub const HEALTH_ALLOWED_METHODS: &str = "GET, HEAD";

/// A parsed request head: request line and header fields exactly as received.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query), never decoded.
    pub target: &'a [u8],
    /// HTTP/1.x minor version.
    pub minor_version: u8,
    pub headers: &'a [httparse::Header<'a>],
}

/// What the rules decided to do with an acceptable request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A POST to a notification path: read the body, validate, forward.
    Notification(NotificationHead),
    /// GET/HEAD on a notification path: the gateway's static confirmation page.
    ConfirmationPage { head_only: bool },
    /// GET/HEAD `/healthz`.
    Health { head_only: bool },
}

impl Route {
    /// Whether a probe network may use this route (it may look, never post).
    pub fn open_to_probes(&self) -> bool {
        !matches!(self, Route::Notification(_))
    }
}

/// What the forwarding stage needs to know about an admitted notification request: how to read
/// its body, and the values of the client's fields exactly as they were checked, which are the
/// only client fields the worker will see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationHead {
    pub framing: BodyFraming,
    /// HTTP/1.1 `Expect: 100-continue`: answer `100 Continue` before reading the body. HTTP/1.0
    /// has no interim answers, so there the expectation is ignored (RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// Tenant from the query (`?Default` or `tenant=Default`), when given.
    pub tenant: Option<String>,
    /// The request target as received: a configured path and a checked tenant query, so ASCII.
    pub target: String,
    /// `Content-Type` as received and checked (optional whitespace trimmed).
    pub content_type: String,
    /// `SOAPAction` as received and checked (optional whitespace trimmed, quotes kept).
    pub soap_action: String,
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// `Content-Length` (0 when neither length nor chunked was sent).
    Length(u64),
    /// `Transfer-Encoding: chunked`; the size limit is enforced while reading.
    Chunked,
}

/// The knobs the rules take from the configuration.
#[derive(Debug, Clone)]
pub struct RulePolicy {
    /// Notification paths, compared ASCII case-insensitively on the raw path.
    pub paths: Vec<String>,
    pub max_body_bytes: u64,
}

/// Applies every rule to a request head, in an order that answers each request with the most
/// precise refusal: framing, `Host`, `Upgrade` and `Connection` (400) before path (404), method
/// (405), query (400), SOAPAction (400), media type (415), encoding (415), declared size (413)
/// and `Expect` (417).
pub fn route(head: &Head<'_>, policy: &RulePolicy) -> Result<Route, Reject> {
    if head.minor_version > 1 {
        return Err(Reject::UnsupportedVersion);
    }
    let framing = check_framing(head)?;
    check_host(head)?;
    if find_all(head, "upgrade").next().is_some() {
        return Err(Reject::UpgradeNotAllowed);
    }
    check_connection(head)?;

    let (path, query) = split_target(head.target);
    if !is_notification_path(path, &policy.paths) {
        if path == HEALTH_PATH.as_bytes() && query.is_none() {
            return match head.method {
                "GET" => Ok(Route::Health { head_only: false }),
                "HEAD" => Ok(Route::Health { head_only: true }),
                _ => Err(Reject::MethodNotAllowed(HEALTH_ALLOWED_METHODS)),
            };
        }
        return Err(Reject::NotFound);
    }

    let head_only = match head.method {
        "POST" => false,
        "GET" => {
            check_tenant_query(query)?;
            return Ok(Route::ConfirmationPage { head_only: false });
        }
        "HEAD" => true,
        _ => return Err(Reject::MethodNotAllowed(ALLOWED_METHODS)),
    };
    if head_only {
        check_tenant_query(query)?;
        return Ok(Route::ConfirmationPage { head_only: true });
    }

    let tenant = check_tenant_query(query)?;
    let soap_action = check_soap_action(head)?;
    let content_type = check_content_type(head)?;
    check_content_encoding(head)?;
    if let BodyFraming::Length(length) = framing {
        if length > policy.max_body_bytes {
            return Err(Reject::BodyTooLarge);
        }
    }
    let expect_continue = check_expect(head)?;
    Ok(Route::Notification(NotificationHead {
        framing,
        expect_continue,
        tenant,
        // Each of these passed a check that admits ASCII only, so nothing is lost here.
        target: String::from_utf8_lossy(head.target).into_owned(),
        content_type: String::from_utf8_lossy(content_type).into_owned(),
        soap_action: String::from_utf8_lossy(soap_action).into_owned(),
    }))
}

/// `Connection` may carry only the `close` and `keep-alive` options. Any other token names a field
/// the client wants removed at this hop (RFC 9110 §7.6.1): removing a field the gateway checked
/// would hand the worker a request the gateway never checked, and keeping it would ignore the
/// client; Exchange never names fields, so such a request is refused.
pub fn check_connection(head: &Head<'_>) -> Result<(), Reject> {
    for value in find_all(head, "connection") {
        for option in value.split(|&b| b == b',') {
            let option = trim_ows(option);
            let known = option.is_empty()
                || option.eq_ignore_ascii_case(b"close")
                || option.eq_ignore_ascii_case(b"keep-alive");
            if !known {
                return Err(Reject::BadConnection);
            }
        }
    }
    Ok(())
}

/// Whether the client asked for the connection to end after this request: HTTP/1.1 with
/// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive` (RFC 9112 §9.3).
pub fn client_wants_close(head: &Head<'_>) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in find_all(head, "connection") {
        for option in value.split(|&b| b == b',') {
            let option = trim_ows(option);
            close |= option.eq_ignore_ascii_case(b"close");
            keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    close || (head.minor_version == 0 && !keep_alive)
}

/// The refusal for a request line the HTTP parser stopped at the version: 505 only for a
/// well-formed request line (`METHOD SP TARGET SP HTTP/d.d`) naming another version, 400 for
/// anything else (two spaces before the version, a missing or garbled version).
pub fn version_refusal(head_bytes: &[u8]) -> Reject {
    let line_end = head_bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(head_bytes.len());
    let mut parts = head_bytes[..line_end].split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Reject::MalformedRequest;
    };
    let well_formed_version = matches!(
        version,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit()
    );
    if !method.is_empty() && !target.is_empty() && well_formed_version {
        Reject::UnsupportedVersion
    } else {
        Reject::MalformedRequest
    }
}

/// Every line of the head must end in CRLF. The HTTP parser also takes a bare LF (RFC 9112 §2.2
/// allows it); Exchange never sends one, and the worker only ever sees the head the gateway
/// writes, so the gateway accepts only the strict form.
pub fn check_line_endings(head_bytes: &[u8]) -> Result<(), Reject> {
    let bare = head_bytes
        .iter()
        .enumerate()
        .any(|(at, &b)| b == b'\n' && (at == 0 || head_bytes[at - 1] != b'\r'));
    if bare {
        Err(Reject::BareLineFeed)
    } else {
        Ok(())
    }
}

/// Splits the raw target at the first `?`. A `#` never belongs in a request target; it is left in
/// the path so that the path comparison fails.
pub fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|&b| b == b'?') {
        Some(at) => (&target[..at], Some(&target[at + 1..])),
        None => (target, None),
    }
}

/// Header values with the given name (ASCII case-insensitive), in order.
pub fn find_all<'a>(head: &Head<'a>, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
    head.headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn single<'a>(head: &Head<'a>, name: &'static str) -> Result<Option<&'a [u8]>, ()> {
    let mut values = find_all(head, name);
    let first = values.next();
    if values.next().is_some() {
        return Err(());
    }
    Ok(first)
}

/// Request smuggling shapes are refused outright rather than resolved the RFC way: a notification
/// never needs both length and chunking, or two lengths.
pub fn check_framing(head: &Head<'_>) -> Result<BodyFraming, Reject> {
    let lengths = find_all(head, "content-length").count();
    let encodings = find_all(head, "transfer-encoding").count();
    if lengths > 0 && encodings > 0 {
        return Err(Reject::ConflictingFraming);
    }
    if lengths > 1 {
        return Err(Reject::DuplicateContentLength);
    }
    if encodings > 0 {
        // HTTP/1.0 has no chunked coding; a single `chunked` is the only coding we read.
        let value = single(head, "transfer-encoding").map_err(|_| Reject::BadTransferEncoding)?;
        let ok = head.minor_version == 1
            && value.is_some_and(|v| trim_ows(v).eq_ignore_ascii_case(b"chunked"));
        return if ok {
            Ok(BodyFraming::Chunked)
        } else {
            Err(Reject::BadTransferEncoding)
        };
    }
    match find_all(head, "content-length").next() {
        None => Ok(BodyFraming::Length(0)),
        Some(value) => parse_decimal(trim_ows(value))
            .map(BodyFraming::Length)
            .ok_or(Reject::BadContentLength),
    }
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn check_host(head: &Head<'_>) -> Result<(), Reject> {
    let host = single(head, "host").map_err(|_| Reject::BadHost)?;
    match host {
        None if head.minor_version == 1 => Err(Reject::BadHost),
        None => Ok(()),
        Some(value) => {
            let value = trim_ows(value);
            let sane = !value.is_empty()
                && value.iter().all(|&b| {
                    b.is_ascii_graphic() && !matches!(b, b'@' | b'/' | b'\\' | b'?' | b'#')
                });
            if sane {
                Ok(())
            } else {
                Err(Reject::BadHost)
            }
        }
    }
}

/// The query may be absent, a bare tenant name (`?Default`, the legacy form) or `tenant=NAME`
/// (the shared rule of [`crate::endpoint::tenant_of_query`]).
pub fn check_tenant_query(query: Option<&[u8]>) -> Result<Option<String>, Reject> {
    crate::endpoint::tenant_of_query(query)
        .map(|name| name.map(str::to_owned))
        .map_err(|_| Reject::BadTenant)
}

/// Exactly one `SOAPAction` (any name case) naming EWS SendNotification; SOAP 1.1 allows one pair
/// of quotes around it. Returns the checked value (whitespace trimmed, quotes kept).
pub fn check_soap_action<'h>(head: &Head<'h>) -> Result<&'h [u8], Reject> {
    let checked = single(head, "soapaction")
        .map_err(|_| Reject::BadSoapAction)?
        .map(trim_ows)
        .ok_or(Reject::BadSoapAction)?;
    if crate::endpoint::is_send_notification_action(checked) {
        Ok(checked)
    } else {
        Err(Reject::BadSoapAction)
    }
}

/// Exactly one `Content-Type: text/xml`, with `charset=utf-8` (quoted or not, any case) or no
/// parameter at all. Returns the checked value (whitespace trimmed).
pub fn check_content_type<'h>(head: &Head<'h>) -> Result<&'h [u8], Reject> {
    let value = single(head, "content-type")
        .map_err(|_| Reject::UnsupportedMediaType)?
        .map(trim_ows)
        .ok_or(Reject::UnsupportedMediaType)?;
    let mut parts = value.split(|&b| b == b';');
    let media_type = parts.next().map(trim_ows).unwrap_or_default();
    if !media_type.eq_ignore_ascii_case(b"text/xml") {
        return Err(Reject::UnsupportedMediaType);
    }
    let mut charset_seen = false;
    for parameter in parts {
        let parameter = trim_ows(parameter);
        let Some(eq) = parameter.iter().position(|&b| b == b'=') else {
            return Err(Reject::UnsupportedMediaType);
        };
        let (name, value) = (&parameter[..eq], &parameter[eq + 1..]);
        let value = match value {
            [b'"', inner @ .., b'"'] => inner,
            other => other,
        };
        if charset_seen
            || !name.eq_ignore_ascii_case(b"charset")
            || !value.eq_ignore_ascii_case(b"utf-8")
        {
            return Err(Reject::UnsupportedMediaType);
        }
        charset_seen = true;
    }
    Ok(value)
}

/// `Content-Encoding` absent or `identity`: the validator reads the body as sent.
pub fn check_content_encoding(head: &Head<'_>) -> Result<(), Reject> {
    for value in find_all(head, "content-encoding") {
        let all_identity = value
            .split(|&b| b == b',')
            .all(|coding| trim_ows(coding).eq_ignore_ascii_case(b"identity"));
        if !all_identity {
            return Err(Reject::UnsupportedContentEncoding);
        }
    }
    Ok(())
}

/// `Expect` absent or `100-continue` (417 otherwise); true when a `100 Continue` is owed, which
/// HTTP/1.0 never is.
fn check_expect(head: &Head<'_>) -> Result<bool, Reject> {
    match single(head, "expect").map_err(|_| Reject::BadExpect)? {
        None => Ok(false),
        Some(value) if trim_ows(value).eq_ignore_ascii_case(b"100-continue") => {
            Ok(head.minor_version == 1)
        }
        Some(_) => Err(Reject::BadExpect),
    }
}

/// Optional whitespace (space and tab) trimmed from both ends.
pub fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTION: &str = SEND_NOTIFICATION_ACTION;

    fn policy() -> RulePolicy {
        RulePolicy {
            paths: vec![
                "/Webservices/SyncNotification.svc".into(),
                "/api/webhooks/exchange".into(),
            ],
            max_body_bytes: 65_536,
        }
    }

    fn exchange_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "gateway.example.com"),
            ("Content-Type", "text/xml; charset=utf-8"),
            ("Accept", "text/xml"),
            ("SOAPAction", ACTION),
            ("Content-Length", "2020"),
            ("Connection", "close"),
        ]
    }

    fn run(method: &str, target: &str, headers: &[(&str, &str)]) -> Result<Route, Reject> {
        run_version(1, method, target, headers)
    }

    fn run_version(
        minor_version: u8,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Route, Reject> {
        let raw: Vec<httparse::Header<'_>> = headers
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        let head = Head {
            method,
            target: target.as_bytes(),
            minor_version,
            headers: &raw,
        };
        route(&head, &policy())
    }

    fn notification(route: Result<Route, Reject>) -> NotificationHead {
        match route {
            Ok(Route::Notification(head)) => head,
            other => panic!("not a notification: {other:?}"),
        }
    }

    fn with(change: &[(&'static str, Option<&'static str>)]) -> Vec<(&'static str, &'static str)> {
        let mut headers = exchange_headers();
        for (name, value) in change {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            if let Some(value) = value {
                headers.push((name, value));
            }
        }
        headers
    }

    #[test]
    fn exchange_request_is_a_notification() {
        let route = run(
            "POST",
            "/Webservices/SyncNotification.svc?Default",
            &exchange_headers(),
        );
        assert_eq!(
            route,
            Ok(Route::Notification(NotificationHead {
                framing: BodyFraming::Length(2020),
                expect_continue: false,
                tenant: Some("Default".into()),
                target: "/Webservices/SyncNotification.svc?Default".into(),
                content_type: "text/xml; charset=utf-8".into(),
                soap_action: ACTION.into(),
            }))
        );
    }

    #[test]
    fn legacy_path_matches_in_any_case() {
        for path in [
            "/WebServices/SyncNotification.svc",
            "/webservices/syncnotification.svc",
            "/api/webhooks/exchange?tenant=contoso.eu-1",
        ] {
            assert!(
                matches!(
                    run("POST", path, &exchange_headers()),
                    Ok(Route::Notification(_))
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn encoded_or_dotted_paths_never_match() {
        for path in [
            "/Webservices%2FSyncNotification.svc",
            "/Webservices/SyncNotification%2Esvc",
            "/x/../Webservices/SyncNotification.svc",
            "/Webservices/./SyncNotification.svc",
            "//Webservices/SyncNotification.svc",
            "/Webservices/SyncNotification.svc/",
            "/Webservices/SyncNotification.svc#x",
            "http://h/Webservices/SyncNotification.svc",
            "/api/webhooks/graph",
        ] {
            assert_eq!(
                run("POST", path, &exchange_headers()),
                Err(Reject::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn tenant_query_rules() {
        let ok = |q: &str| {
            run(
                "POST",
                &format!("/api/webhooks/exchange?{q}"),
                &exchange_headers(),
            )
        };
        assert!(ok("Default").is_ok());
        assert!(ok("tenant=a.b_c-9").is_ok());
        assert!(ok(&"a".repeat(64)).is_ok());
        for bad in [
            "",
            "tenant=",
            &"a".repeat(65),
            "a%20b",
            "a b",
            "tenant=x&y=z",
            "x=1",
            "ä",
        ] {
            assert_eq!(ok(bad), Err(Reject::BadTenant), "{bad:?}");
        }
    }

    #[test]
    fn methods() {
        let p = "/Webservices/SyncNotification.svc";
        assert_eq!(
            run("GET", p, &[("Host", "h")]),
            Ok(Route::ConfirmationPage { head_only: false })
        );
        assert_eq!(
            run("HEAD", p, &[("Host", "h")]),
            Ok(Route::ConfirmationPage { head_only: true })
        );
        for method in [
            "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "post",
        ] {
            assert_eq!(
                run(method, p, &exchange_headers()),
                Err(Reject::MethodNotAllowed(ALLOWED_METHODS))
            );
        }
        assert_eq!(
            run("GET", "/healthz", &[("Host", "h")]),
            Ok(Route::Health { head_only: false })
        );
        assert_eq!(
            run("POST", "/healthz", &[("Host", "h")]),
            Err(Reject::MethodNotAllowed(HEALTH_ALLOWED_METHODS))
        );
        assert_eq!(
            run("GET", "/healthz?x", &[("Host", "h")]),
            Err(Reject::NotFound)
        );
    }

    #[test]
    fn soap_action_rules() {
        let p = "/api/webhooks/exchange";
        let quoted = format!("\"{ACTION}\"");
        let quoted: &'static str = Box::leak(quoted.into_boxed_str());
        assert!(run("POST", p, &with(&[("SOAPAction", Some(quoted))])).is_ok());
        assert!(run("POST", p, &with(&[("soapaction", Some(ACTION))])).is_ok());
        assert!(run("POST", p, &with(&[("SOAPACTION", Some(ACTION))])).is_ok());
        for bad in [
            None,
            Some(""),
            Some("\"\""),
            Some("http://schemas.microsoft.com/exchange/services/2006/messages/Subscribe"),
            Some("\"\"http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification\"\""),
            Some("HTTP://SCHEMAS.MICROSOFT.COM/exchange/services/2006/messages/SendNotification"),
        ] {
            assert_eq!(run("POST", p, &with(&[("SOAPAction", bad)])), Err(Reject::BadSoapAction), "{bad:?}");
        }
        let mut twice = exchange_headers();
        twice.push(("SOAPAction", ACTION));
        assert_eq!(run("POST", p, &twice), Err(Reject::BadSoapAction));
    }

    #[test]
    fn content_type_rules() {
        let p = "/api/webhooks/exchange";
        for good in [
            "text/xml",
            "text/xml; charset=utf-8",
            "TEXT/XML;charset=\"UTF-8\"",
            "text/xml ;\tcharset=utf-8",
        ] {
            assert!(
                run("POST", p, &with(&[("Content-Type", Some(good))])).is_ok(),
                "{good}"
            );
        }
        for bad in [
            None,
            Some("application/soap+xml; charset=utf-8"),
            Some("application/xml"),
            Some("text/xml; charset=iso-8859-1"),
            Some("text/xml; charset=utf-16"),
            Some("text/xml; charset=utf-8; charset=utf-8"),
            Some("text/xml; boundary=x"),
            Some("text/xml;"),
            Some("text/html"),
        ] {
            assert_eq!(
                run("POST", p, &with(&[("Content-Type", bad)])),
                Err(Reject::UnsupportedMediaType),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn content_encoding_rules() {
        let p = "/api/webhooks/exchange";
        assert!(run("POST", p, &with(&[("Content-Encoding", Some("identity"))])).is_ok());
        for bad in ["gzip", "deflate", "identity, gzip", "br"] {
            assert_eq!(
                run("POST", p, &with(&[("Content-Encoding", Some(bad))])),
                Err(Reject::UnsupportedContentEncoding)
            );
        }
    }

    #[test]
    fn framing_rules() {
        let p = "/api/webhooks/exchange";
        let chunked = with(&[
            ("Content-Length", None),
            ("Transfer-Encoding", Some("chunked")),
        ]);
        assert!(matches!(
            run("POST", p, &chunked),
            Ok(Route::Notification(NotificationHead {
                framing: BodyFraming::Chunked,
                ..
            }))
        ));
        assert_eq!(
            run("POST", p, &with(&[("Transfer-Encoding", Some("chunked"))])),
            Err(Reject::ConflictingFraming)
        );
        let mut two_lengths = exchange_headers();
        two_lengths.push(("Content-Length", "2020"));
        assert_eq!(
            run("POST", p, &two_lengths),
            Err(Reject::DuplicateContentLength)
        );
        for bad in [
            "-1",
            "+5",
            "5, 5",
            "0x10",
            "",
            "1 0",
            "99999999999999999999",
        ] {
            assert_eq!(
                run("POST", p, &with(&[("Content-Length", Some(bad))])),
                Err(Reject::BadContentLength),
                "{bad:?}"
            );
        }
        for bad in ["gzip, chunked", "chunked, chunked", "identity", "xchunked"] {
            assert_eq!(
                run(
                    "POST",
                    p,
                    &with(&[("Content-Length", None), ("Transfer-Encoding", Some(bad))])
                ),
                Err(Reject::BadTransferEncoding),
                "{bad:?}"
            );
        }
        let mut two_te = with(&[
            ("Content-Length", None),
            ("Transfer-Encoding", Some("chunked")),
        ]);
        two_te.push(("Transfer-Encoding", "chunked"));
        assert_eq!(run("POST", p, &two_te), Err(Reject::BadTransferEncoding));
        // No length and no chunking: an empty body (which the validator then refuses).
        assert!(matches!(
            run("POST", p, &with(&[("Content-Length", None)])),
            Ok(Route::Notification(NotificationHead {
                framing: BodyFraming::Length(0),
                ..
            }))
        ));
    }

    #[test]
    fn declared_size_limit() {
        let p = "/api/webhooks/exchange";
        assert!(run("POST", p, &with(&[("Content-Length", Some("65536"))])).is_ok());
        assert_eq!(
            run("POST", p, &with(&[("Content-Length", Some("65537"))])),
            Err(Reject::BodyTooLarge)
        );
        assert_eq!(
            run("POST", p, &with(&[("Content-Length", Some("10485760"))])),
            Err(Reject::BodyTooLarge)
        );
    }

    #[test]
    fn host_upgrade_expect() {
        let p = "/api/webhooks/exchange";
        assert_eq!(
            run("POST", p, &with(&[("Host", None)])),
            Err(Reject::BadHost)
        );
        assert_eq!(
            run("POST", p, &with(&[("Host", Some("a@b"))])),
            Err(Reject::BadHost)
        );
        let mut two_hosts = exchange_headers();
        two_hosts.push(("Host", "other"));
        assert_eq!(run("POST", p, &two_hosts), Err(Reject::BadHost));
        assert_eq!(
            run("POST", p, &with(&[("Upgrade", Some("h2c"))])),
            Err(Reject::UpgradeNotAllowed)
        );
        assert!(matches!(
            run("POST", p, &with(&[("Expect", Some("100-continue"))])),
            Ok(Route::Notification(NotificationHead {
                expect_continue: true,
                ..
            }))
        ));
        assert_eq!(
            run("POST", p, &with(&[("Expect", Some("200-ok"))])),
            Err(Reject::BadExpect)
        );
    }

    #[test]
    fn framing_is_checked_before_the_path() {
        let mut smuggle = exchange_headers();
        smuggle.push(("Transfer-Encoding", "chunked"));
        assert_eq!(
            run("POST", "/nowhere", &smuggle),
            Err(Reject::ConflictingFraming)
        );
    }

    #[test]
    fn client_asks_to_close() {
        let wants_close = |minor_version: u8, connection: Option<&'static str>| {
            let headers: Vec<httparse::Header<'static>> = connection
                .map(|value| httparse::Header {
                    name: "Connection",
                    value: value.as_bytes(),
                })
                .into_iter()
                .collect();
            client_wants_close(&Head {
                method: "POST",
                target: b"/",
                minor_version,
                headers: &headers,
            })
        };
        assert!(!wants_close(1, None), "HTTP/1.1 keeps by default");
        assert!(!wants_close(1, Some("keep-alive")));
        assert!(wants_close(1, Some("close")));
        assert!(wants_close(1, Some("keep-alive, Close")));
        assert!(wants_close(0, None), "HTTP/1.0 closes by default");
        assert!(!wants_close(0, Some("Keep-Alive")));
        assert!(wants_close(0, Some("close")));
    }

    #[test]
    fn connection_may_only_say_close_or_keep_alive() {
        let p = "/api/webhooks/exchange";
        for good in [
            "close",
            "keep-alive",
            "Keep-Alive",
            "close, keep-alive",
            " close ,",
        ] {
            assert!(
                run("POST", p, &with(&[("Connection", Some(good))])).is_ok(),
                "{good:?}"
            );
        }
        for bad in [
            "SOAPAction, Content-Type",
            "close, SOAPAction",
            "Content-Length",
            "Host",
            "TE",
            "upgrade",
            "X-Forwarded-For",
        ] {
            assert_eq!(
                run("POST", p, &with(&[("Connection", Some(bad))])),
                Err(Reject::BadConnection),
                "{bad:?}"
            );
        }
        // Also for the pages: one rule for every request.
        assert_eq!(
            run("GET", "/healthz", &[("Host", "h"), ("Connection", "Host")]),
            Err(Reject::BadConnection)
        );
    }

    #[test]
    fn checked_values_are_kept_for_forwarding() {
        let quoted: &'static str = Box::leak(format!("  \"{ACTION}\"\t").into_boxed_str());
        let head = notification(run(
            "POST",
            "/api/webhooks/exchange?tenant=a.b",
            &with(&[
                ("SOAPAction", Some(quoted)),
                ("Content-Type", Some(" TEXT/XML;charset=\"UTF-8\" ")),
            ]),
        ));
        assert_eq!(head.soap_action, format!("\"{ACTION}\""));
        assert_eq!(head.content_type, "TEXT/XML;charset=\"UTF-8\"");
        assert_eq!(head.target, "/api/webhooks/exchange?tenant=a.b");
        assert_eq!(head.tenant.as_deref(), Some("a.b"));
    }

    #[test]
    fn http_1_0_gets_no_interim_answer_and_needs_no_host() {
        let p = "/api/webhooks/exchange";
        let head = notification(run_version(
            0,
            "POST",
            p,
            &with(&[("Expect", Some("100-continue")), ("Host", None)]),
        ));
        assert!(!head.expect_continue, "HTTP/1.0 has no 100 Continue");
        assert_eq!(
            run_version(0, "POST", p, &with(&[("Expect", Some("200-ok"))])),
            Err(Reject::BadExpect)
        );
        assert!(
            notification(run("POST", p, &with(&[("Expect", Some("100-continue"))])))
                .expect_continue
        );
        assert_eq!(
            run_version(2, "POST", p, &exchange_headers()),
            Err(Reject::UnsupportedVersion)
        );
    }

    #[test]
    fn version_errors_are_505_only_for_a_well_formed_other_version() {
        for (line, expected) in [
            (
                &b"GET /healthz HTTP/2.0\r\n\r\n"[..],
                Reject::UnsupportedVersion,
            ),
            (
                b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
                Reject::UnsupportedVersion,
            ),
            (b"GET / HTTP/0.9\n", Reject::UnsupportedVersion),
            (b"POST /x  HTTP/1.1\r\n\r\n", Reject::MalformedRequest),
            (b"POST  /x HTTP/1.1\r\n\r\n", Reject::MalformedRequest),
            (b"POST /x HTTP/1.1 \r\n\r\n", Reject::MalformedRequest),
            (b"POST /x HTTP/11\r\n\r\n", Reject::MalformedRequest),
            (b"POST /x http/1.1\r\n\r\n", Reject::MalformedRequest),
            (b"POST /x HTTP/1.1x\r\n\r\n", Reject::MalformedRequest),
            (b"POST /x\r\n\r\n", Reject::MalformedRequest),
            (b"", Reject::MalformedRequest),
        ] {
            assert_eq!(
                version_refusal(line),
                expected,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn the_parser_stops_at_the_version_for_two_spaces() {
        // The listener maps httparse's version error through `version_refusal`; this pins the
        // parser behaviour that mapping relies on.
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut request = httparse::Request::new(&mut headers);
        assert_eq!(
            request.parse(b"POST /x  HTTP/1.1\r\nHost: h\r\n\r\n"),
            Err(httparse::Error::Version)
        );
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut request = httparse::Request::new(&mut headers);
        assert_eq!(
            request.parse(b"GET / HTTP/2.0\r\n\r\n"),
            Err(httparse::Error::Version)
        );
    }

    #[test]
    fn head_lines_must_end_in_crlf() {
        assert_eq!(
            check_line_endings(b"POST / HTTP/1.1\r\nHost: h\r\n\r\n"),
            Ok(())
        );
        for bare in [
            &b"POST / HTTP/1.1\nHost: h\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: h\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\n\n",
            b"\nPOST / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                check_line_endings(bare),
                Err(Reject::BareLineFeed),
                "{:?}",
                String::from_utf8_lossy(bare)
            );
        }
    }

    #[test]
    fn trim() {
        assert_eq!(trim_ows(b" \tab c\t "), b"ab c");
        assert_eq!(trim_ows(b"   "), b"");
    }
}
