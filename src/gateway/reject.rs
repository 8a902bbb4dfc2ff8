//! Why the gateway refuses something, and the one writer of every answer the gateway gives itself
//! (refusals, the confirmation page, the health check, 502/504 when the worker fails): the same
//! header fields everywhere, a short fixed body. The reason is the metric label and the access-log
//! field; the body never says more than the status line.

/// A refusal decided by the gateway itself. Each has one status, one metric label, one fixed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Client address not in the allowlist (or a probe network trying to POST).
    SourceNotAllowed,
    /// A probe network (`probe_ranges`) may look, never post.
    ProbeCannotPost,
    /// `X-Forwarded-For` from a trusted proxy that does not parse.
    BadForwardedFor,
    /// Request line or header fields that do not parse as HTTP/1.x.
    MalformedRequest,
    /// A head line ended by a bare LF instead of CRLF.
    BareLineFeed,
    /// Request header section larger than the gateway reads.
    HeaderTooLarge,
    /// Not HTTP/1.0 or HTTP/1.1.
    UnsupportedVersion,
    /// HTTP/1.1 without exactly one `Host`.
    BadHost,
    /// Both `Content-Length` and `Transfer-Encoding` (request smuggling shape).
    ConflictingFraming,
    /// More than one `Content-Length` field, even with equal values.
    DuplicateContentLength,
    /// `Content-Length` that is not a plain decimal number.
    BadContentLength,
    /// `Transfer-Encoding` other than a single `chunked`.
    BadTransferEncoding,
    /// `Upgrade` (h2c, websocket): never on a notification endpoint.
    UpgradeNotAllowed,
    /// `Connection` naming anything but `close` or `keep-alive` (a field to drop at this hop).
    BadConnection,
    /// `Expect` other than `100-continue`.
    BadExpect,
    NotFound,
    /// Method not served on this path; carries the `Allow` value.
    MethodNotAllowed(&'static str),
    /// Legacy `?Tenant` or `tenant=` query that is not `[A-Za-z0-9_.-]{1,64}`, or any other query.
    BadTenant,
    /// `SOAPAction` missing, repeated, or not EWS SendNotification.
    BadSoapAction,
    /// `Content-Type` other than `text/xml` (charset utf-8 or none).
    UnsupportedMediaType,
    /// `Content-Encoding` other than identity.
    UnsupportedContentEncoding,
    /// Declared or streamed body above `max_body_bytes`.
    BodyTooLarge,
    /// The body did not arrive within `body_timeout`.
    BodyTimeout,
    /// Chunked framing that is not plain `Transfer-Encoding: chunked` (see `body::ChunkFault`).
    BadChunkedBody,
    /// The client ended its side of the connection before the body was complete.
    IncompleteBody,
    /// Body not a valid notification; the label comes from the validator.
    InvalidNotification(&'static str),
    /// The client address sent more than `rate_limit_per_source` allows.
    RateLimited,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::SourceNotAllowed | Reject::ProbeCannotPost => 403,
            Reject::NotFound => 404,
            Reject::MethodNotAllowed(_) => 405,
            Reject::BodyTimeout => 408,
            Reject::BodyTooLarge => 413,
            Reject::UnsupportedMediaType | Reject::UnsupportedContentEncoding => 415,
            Reject::BadExpect => 417,
            Reject::RateLimited => 429,
            Reject::HeaderTooLarge => 431,
            Reject::UnsupportedVersion => 505,
            Reject::BadForwardedFor
            | Reject::MalformedRequest
            | Reject::BareLineFeed
            | Reject::BadConnection
            | Reject::BadChunkedBody
            | Reject::IncompleteBody
            | Reject::BadHost
            | Reject::ConflictingFraming
            | Reject::DuplicateContentLength
            | Reject::BadContentLength
            | Reject::BadTransferEncoding
            | Reject::UpgradeNotAllowed
            | Reject::BadTenant
            | Reject::BadSoapAction
            | Reject::InvalidNotification(_) => 400,
        }
    }

    /// The metric label and access-log reason.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::SourceNotAllowed => "source_not_allowed",
            Reject::ProbeCannotPost => "probe_cannot_post",
            Reject::BadForwardedFor => "bad_forwarded_for",
            Reject::MalformedRequest => "malformed_request",
            Reject::BareLineFeed => "bare_lf",
            Reject::HeaderTooLarge => "header_too_large",
            Reject::UnsupportedVersion => "unsupported_http_version",
            Reject::BadHost => "bad_host",
            Reject::ConflictingFraming => "conflicting_framing",
            Reject::DuplicateContentLength => "duplicate_content_length",
            Reject::BadContentLength => "bad_content_length",
            Reject::BadTransferEncoding => "bad_transfer_encoding",
            Reject::UpgradeNotAllowed => "upgrade_not_allowed",
            Reject::BadConnection => "bad_connection",
            Reject::BadExpect => "bad_expect",
            Reject::NotFound => "not_found",
            Reject::MethodNotAllowed(_) => "method_not_allowed",
            Reject::BadTenant => "bad_tenant",
            Reject::BadSoapAction => "bad_soap_action",
            Reject::UnsupportedMediaType => "unsupported_media_type",
            Reject::UnsupportedContentEncoding => "unsupported_content_encoding",
            Reject::BodyTooLarge => "body_too_large",
            Reject::BodyTimeout => "body_timeout",
            Reject::BadChunkedBody => "bad_chunked_body",
            Reject::IncompleteBody => "incomplete_body",
            Reject::InvalidNotification(label) => label,
            Reject::RateLimited => "rate_limited",
        }
    }

    /// The fixed body: the status line's words, nothing about the request.
    pub fn body(self) -> &'static str {
        status_text(self.status())
    }

    /// `Allow`, which 405 requires.
    pub fn allow(self) -> Option<&'static str> {
        match self {
            Reject::MethodNotAllowed(allow) => Some(allow),
            _ => None,
        }
    }
}

/// An answer the gateway writes itself. Whatever stage writes it (the listener for refusals and
/// its own pages, the proxy when the worker fails), the header fields come from [`Self::fields`],
/// so an observer cannot tell the stages apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: &'static str,
    /// A `HEAD` request: the fields of the answer without its body.
    pub head_only: bool,
    pub allow: Option<&'static str>,
    /// The connection stays open for another request (a kept-alive connection from a trusted
    /// proxy, after a request whose end is known); otherwise `Connection: close`.
    pub keep_alive: bool,
}

impl DirectAnswer {
    pub const TEXT: &'static str = "text/plain; charset=utf-8";

    /// The fixed answer to a refusal.
    pub fn refusal(reject: Reject) -> Self {
        Self {
            allow: reject.allow(),
            ..Self::status(reject.status())
        }
    }

    /// A plain answer whose body is the status text.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            content_type: Self::TEXT,
            body: status_text(status),
            head_only: false,
            allow: None,
            keep_alive: false,
        }
    }

    /// The header fields of the answer, in order. `Connection: close` unless the connection is
    /// kept alive for a trusted proxy's next request.
    pub fn fields(&self, request_id: &str, date: &str) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("Date", date.to_string()),
            ("Content-Type", self.content_type.to_string()),
            ("Content-Length", self.body.len().to_string()),
            ("Cache-Control", "no-store".to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
            ("Content-Security-Policy", "default-src 'none'".to_string()),
            ("X-Request-Id", request_id.to_string()),
            (
                "Connection",
                if self.keep_alive {
                    "keep-alive"
                } else {
                    "close"
                }
                .to_string(),
            ),
        ];
        if let Some(allow) = self.allow {
            fields.push(("Allow", allow.to_string()));
        }
        fields
    }

    /// The status line and header section, as written on the wire.
    pub fn head(&self, request_id: &str, date: &str) -> String {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status,
            status_text(self.status).trim_end()
        );
        for (name, value) in self.fields(request_id, date) {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(&value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head
    }

    /// The whole answer as written on the wire: head and body in one buffer, so it leaves in one
    /// write (one TLS record).
    pub fn wire(&self, request_id: &str, date: &str) -> Vec<u8> {
        let mut bytes = self.head(request_id, date).into_bytes();
        bytes.extend_from_slice(self.sent_body().as_bytes());
        bytes
    }

    /// The body bytes sent after the head (none for `HEAD`).
    pub fn sent_body(&self) -> &'static str {
        if self.head_only {
            ""
        } else {
            self.body
        }
    }
}

/// A text made from the current second, kept (per thread, in a `thread_local!`) until the second
/// changes: every answer carries a date and every access-log line a time, and formatting them
/// each time was a measurable share of a request's cost.
pub(crate) struct PerSecond(std::cell::RefCell<(i64, String)>);

impl PerSecond {
    pub(crate) const fn new() -> Self {
        Self(std::cell::RefCell::new((i64::MIN, String::new())))
    }

    /// The text for `now`'s second, formatted by `format` only when that second is new.
    pub(crate) fn get(
        &self,
        now: time::OffsetDateTime,
        format: impl FnOnce(time::OffsetDateTime) -> String,
    ) -> String {
        let mut cached = self.0.borrow_mut();
        if cached.0 != now.unix_timestamp() {
            *cached = (now.unix_timestamp(), format(now));
        }
        cached.1.clone()
    }
}

/// The current time as an HTTP date (IMF-fixdate), formatted once per second per thread.
pub fn http_date_now() -> String {
    thread_local! {
        static CACHED: PerSecond = const { PerSecond::new() };
    }
    CACHED.with(|cached| cached.get(time::OffsetDateTime::now_utc(), http_date))
}

/// `at` as an HTTP date (IMF-fixdate).
pub fn http_date(at: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
}

/// The methods a notification path answers: POST from Exchange, GET/HEAD for the confirmation page.
pub const ALLOWED_METHODS: &str = "POST, GET, HEAD";

/// Reason phrase plus newline, used as the whole body of gateway-made answers.
pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK\n",
        400 => "Bad Request\n",
        403 => "Forbidden\n",
        404 => "Not Found\n",
        405 => "Method Not Allowed\n",
        408 => "Request Timeout\n",
        413 => "Payload Too Large\n",
        415 => "Unsupported Media Type\n",
        417 => "Expectation Failed\n",
        429 => "Too Many Requests\n",
        431 => "Request Header Fields Too Large\n",
        500 => "Internal Server Error\n",
        502 => "Bad Gateway\n",
        503 => "Service Unavailable\n",
        504 => "Gateway Timeout\n",
        505 => "HTTP Version Not Supported\n",
        _ => "Error\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdate_in_gmt() {
        let at = time::macros::datetime!(2026-12-01 09:05:03 +02:00);
        assert_eq!(http_date(at), "Tue, 01 Dec 2026 07:05:03 GMT");
        // The cached form is the same text as a fresh one, whenever it is asked.
        let before = time::OffsetDateTime::now_utc().unix_timestamp();
        let cached = http_date_now();
        let again = http_date_now();
        let after = time::OffsetDateTime::now_utc().unix_timestamp();
        let fresh: Vec<String> = (before..=after)
            .map(|s| http_date(time::OffsetDateTime::from_unix_timestamp(s).unwrap()))
            .collect();
        assert!(fresh.contains(&cached), "{cached} not in {fresh:?}");
        assert!(fresh.contains(&again), "{again} not in {fresh:?}");
    }

    #[test]
    fn every_answer_has_the_same_fields() {
        let names = |answer: DirectAnswer| -> Vec<&'static str> {
            answer
                .fields("id", "date")
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        };
        let reference = names(DirectAnswer::refusal(Reject::BadSoapAction));
        for answer in [
            DirectAnswer::refusal(Reject::BodyTimeout),
            DirectAnswer::refusal(Reject::BadChunkedBody),
            DirectAnswer::refusal(Reject::InvalidNotification("xml_not_well_formed")),
            DirectAnswer::status(502),
            DirectAnswer::status(504),
            DirectAnswer::status(500),
        ] {
            assert_eq!(names(answer), reference, "{answer:?}");
        }
        let mut with_allow = reference.clone();
        with_allow.push("Allow");
        assert_eq!(
            names(DirectAnswer::refusal(Reject::MethodNotAllowed(
                ALLOWED_METHODS
            ))),
            with_allow
        );
    }

    #[test]
    fn head_is_the_status_line_and_fields() {
        let head =
            DirectAnswer::refusal(Reject::NotFound).head("abc", "Thu, 01 Jan 2026 00:00:00 GMT");
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains("\r\nX-Request-Id: abc\r\n"));
        assert!(head.contains("\r\nContent-Length: 10\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
        assert!(!head.to_ascii_lowercase().contains("server:"));
    }

    #[test]
    fn every_status_has_its_own_text() {
        for reject in [
            Reject::SourceNotAllowed,
            Reject::BareLineFeed,
            Reject::BadConnection,
            Reject::BadChunkedBody,
            Reject::IncompleteBody,
            Reject::BodyTimeout,
            Reject::BodyTooLarge,
            Reject::UnsupportedVersion,
            Reject::HeaderTooLarge,
            Reject::BadExpect,
            Reject::RateLimited,
        ] {
            assert_ne!(reject.body(), "Error\n", "{reject:?}");
        }
        for status in [500, 502, 503, 504] {
            assert_ne!(status_text(status), "Error\n", "{status}");
        }
    }
}
