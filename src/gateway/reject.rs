//! Why the gateway refuses something, and the short fixed answer each refusal gets. The reason is
//! the metric label and the access-log field; the body never says more than the status line.

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
    /// Body not a valid notification; the label comes from the validator.
    InvalidNotification(&'static str),
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
            Reject::HeaderTooLarge => 431,
            Reject::UnsupportedVersion => 505,
            Reject::BadForwardedFor
            | Reject::MalformedRequest
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
            Reject::HeaderTooLarge => "header_too_large",
            Reject::UnsupportedVersion => "unsupported_http_version",
            Reject::BadHost => "bad_host",
            Reject::ConflictingFraming => "conflicting_framing",
            Reject::DuplicateContentLength => "duplicate_content_length",
            Reject::BadContentLength => "bad_content_length",
            Reject::BadTransferEncoding => "bad_transfer_encoding",
            Reject::UpgradeNotAllowed => "upgrade_not_allowed",
            Reject::BadExpect => "bad_expect",
            Reject::NotFound => "not_found",
            Reject::MethodNotAllowed(_) => "method_not_allowed",
            Reject::BadTenant => "bad_tenant",
            Reject::BadSoapAction => "bad_soap_action",
            Reject::UnsupportedMediaType => "unsupported_media_type",
            Reject::UnsupportedContentEncoding => "unsupported_content_encoding",
            Reject::BodyTooLarge => "body_too_large",
            Reject::BodyTimeout => "body_timeout",
            Reject::InvalidNotification(label) => label,
        }
    }

    /// The fixed body: the status line's words, nothing about the request.
    pub fn body(self) -> &'static str {
        status_text(self.status())
    }

    /// Extra header some statuses require.
    pub fn extra_header(self) -> Option<(&'static str, &'static str)> {
        match self {
            Reject::MethodNotAllowed(allow) => Some(("Allow", allow)),
            _ => None,
        }
    }
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
        431 => "Request Header Fields Too Large\n",
        502 => "Bad Gateway\n",
        503 => "Service Unavailable\n",
        504 => "Gateway Timeout\n",
        505 => "HTTP Version Not Supported\n",
        _ => "Error\n",
    }
}
