//! What can go wrong with an EWS call, as types the subscription manager and the sync step match
//! on: Exchange's own ResponseCodes, HTTP statuses, timeouts, transport and answer failures.

use std::fmt;
use std::time::Duration;

/// An EWS `ResponseCode` (`m:ResponseCode` in a response message, `e:ResponseCode` or the
/// faultcode of a SOAP fault). The codes the worker acts on have their own variant; any other
/// code is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    ItemNotFound,
    InvalidWatermark,
    ServerBusy,
    MailboxMoveInProgress,
    NonExistentMailbox,
    ImpersonateUserDenied,
    ExceededSubscriptionCount,
    SchemaValidation,
    IrresolvableConflict,
    Other(String),
}

impl ResponseCode {
    const KNOWN: [(ResponseCode, &'static str); 9] = [
        (ResponseCode::ItemNotFound, "ErrorItemNotFound"),
        (ResponseCode::InvalidWatermark, "ErrorInvalidWatermark"),
        (ResponseCode::ServerBusy, "ErrorServerBusy"),
        (
            ResponseCode::MailboxMoveInProgress,
            "ErrorMailboxMoveInProgress",
        ),
        (ResponseCode::NonExistentMailbox, "ErrorNonExistentMailbox"),
        (
            ResponseCode::ImpersonateUserDenied,
            "ErrorImpersonateUserDenied",
        ),
        (
            ResponseCode::ExceededSubscriptionCount,
            "ErrorExceededSubscriptionCount",
        ),
        (ResponseCode::SchemaValidation, "ErrorSchemaValidation"),
        (
            ResponseCode::IrresolvableConflict,
            "ErrorIrresolvableConflict",
        ),
    ];

    /// The code as Exchange spells it.
    pub fn parse(text: &str) -> ResponseCode {
        Self::KNOWN
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(code, _)| code.clone())
            .unwrap_or_else(|| ResponseCode::Other(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            ResponseCode::Other(text) => text,
            known => Self::KNOWN
                .iter()
                .find(|(code, _)| code == known)
                .map_or("", |(_, name)| name),
        }
    }

    /// Codes that mean "not now, later": throttling, a mailbox on the move, a busy or briefly
    /// unavailable store. Exchange may process the same request fine a little later.
    pub fn is_transient(&self) -> bool {
        match self {
            ResponseCode::ServerBusy | ResponseCode::MailboxMoveInProgress => true,
            ResponseCode::Other(code) => matches!(
                code.as_str(),
                "ErrorExceededConnectionCount"
                    | "ErrorInternalServerTransientError"
                    | "ErrorTimeoutExpired"
                    | "ErrorMailboxStoreUnavailable"
                    | "ErrorConnectionFailed"
                    | "ErrorBatchProcessingStopped"
                    | "ErrorTooManyObjectsOpened"
                    | "ErrorServerTemporaryUnavailable"
            ),
            _ => false,
        }
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the 403 happened, in the words an operator reads in a mailbox's `last_error`.
pub const EWS_DISABLED_EXPLANATION: &str = "EWS refused the request with HTTP 403: EWS is switched \
off for this tenant or mailbox, or this application is not on the tenant's EWS allow-list. Exchange \
Online turns EWS off by default from 1 October 2026 (a tenant keeps it only with EWSEnabled=True and \
this app's id in EwsAllowedAppIDs) and shuts EWS down for good on 1 April 2027; on-premises, check \
the account's EWS access";

/// One failed EWS call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EwsError {
    /// Exchange answered with `ResponseClass="Error"` or a SOAP fault carrying this code.
    #[error("{code}: {message}{}", back_off_text(*back_off))]
    ResponseCode {
        code: ResponseCode,
        message: String,
        /// `BackOffMilliseconds` from `MessageXml` (ErrorServerBusy).
        back_off: Option<Duration>,
    },
    /// `ResponseClass="Warning"`: Exchange did not process this part (the batch stopped); retry.
    #[error("not processed ({code}): {message}; retry")]
    Warning { code: String, message: String },
    /// HTTP 401: the credentials were refused (for OAuth, after renewing the token once).
    #[error("HTTP 401 from EWS: credentials refused ({detail})")]
    Unauthorized { detail: String },
    /// HTTP 403: EWS is switched off for the tenant, or the app is not allowed to use it.
    #[error("{EWS_DISABLED_EXPLANATION}")]
    EwsDisabled,
    /// Any other HTTP status without a readable EWS answer.
    #[error("HTTP {status} from EWS{}", retry_after_text(*retry_after))]
    Http {
        status: u16,
        /// `Retry-After`, in seconds or as a date.
        retry_after: Option<Duration>,
    },
    /// No complete answer within the configured timeout.
    #[error("EWS did not answer within {after:?}{}", sent_text(*request_sent))]
    Timeout {
        after: Duration,
        /// False when the connection was never established (nothing reached Exchange).
        request_sent: bool,
    },
    /// Connecting, TLS, or the connection broke.
    #[error("EWS transport: {detail}{}", sent_text(*request_sent))]
    Transport { detail: String, request_sent: bool },
    /// The answer was not the EWS answer it should be.
    #[error("unreadable EWS answer (HTTP {status}): {detail}")]
    Malformed { status: u16, detail: String },
    /// The OAuth token endpoint refused or failed.
    #[error("OAuth token: {detail}")]
    Token { detail: String, transient: bool },
    /// A request the client will not send (bad argument); nothing was sent.
    #[error("invalid EWS request: {0}")]
    InvalidRequest(String),
    /// Settings that cannot work (unreadable secret file, bad URL, no trusted roots).
    #[error("EWS configuration: {0}")]
    Config(String),
}

fn back_off_text(back_off: Option<Duration>) -> String {
    back_off.map_or_else(String::new, |d| format!(" (back off {} ms)", d.as_millis()))
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |d| format!(" (retry after {} s)", d.as_secs()))
}

fn sent_text(sent: bool) -> &'static str {
    if sent {
        " (the request may have been processed)"
    } else {
        " (nothing was sent)"
    }
}

impl EwsError {
    /// A short label for metrics and logs: the EWS ResponseCode, or `http_503`, `timeout`,
    /// `transport`, `malformed`, ...
    pub fn code(&self) -> &str {
        match self {
            EwsError::ResponseCode { code, .. } => code.as_str(),
            EwsError::Warning { code, .. } => code,
            EwsError::Unauthorized { .. } => "http_401",
            EwsError::EwsDisabled => "http_403",
            EwsError::Http { status, .. } => http_label(*status),
            EwsError::Timeout { .. } => "timeout",
            EwsError::Transport { .. } => "transport",
            EwsError::Malformed { .. } => "malformed",
            EwsError::Token { .. } => "token",
            EwsError::InvalidRequest(_) => "invalid_request",
            EwsError::Config(_) => "config",
        }
    }

    /// The wait Exchange asked for: `BackOffMilliseconds` or `Retry-After`.
    pub fn back_off(&self) -> Option<Duration> {
        match self {
            EwsError::ResponseCode { back_off, .. } => *back_off,
            EwsError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Worth trying again later without changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            EwsError::ResponseCode { code, .. } => code.is_transient(),
            EwsError::Warning { .. } => true,
            EwsError::Http { status, .. } => *status == 429 || (500..=599).contains(status),
            EwsError::Timeout { .. } | EwsError::Transport { .. } => true,
            EwsError::Token { transient, .. } => *transient,
            EwsError::Unauthorized { .. }
            | EwsError::EwsDisabled
            | EwsError::Malformed { .. }
            | EwsError::InvalidRequest(_)
            | EwsError::Config(_) => false,
        }
    }

    /// A write may or may not have happened: the request reached Exchange but its answer did not
    /// come back readable. The caller must look before writing again.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            EwsError::Timeout { request_sent, .. } | EwsError::Transport { request_sent, .. } => {
                *request_sent
            }
            // A proxy's 502/504 or a bare 500 says nothing about what the backend did; 503 and
            // 429 mean the request was turned away before processing.
            EwsError::Http { status, .. } => matches!(status, 500 | 502 | 504),
            // An unreadable answer with 200: Exchange did something, we cannot tell what.
            EwsError::Malformed { status, .. } => *status == 200,
            _ => false,
        }
    }

    /// ErrorItemNotFound: the item is gone (deleted, or moved and so given a new id).
    pub fn is_item_not_found(&self) -> bool {
        matches!(
            self,
            EwsError::ResponseCode {
                code: ResponseCode::ItemNotFound,
                ..
            }
        )
    }

    pub(crate) fn malformed(status: u16, detail: impl Into<String>) -> Self {
        EwsError::Malformed {
            status,
            detail: detail.into(),
        }
    }
}

fn http_label(status: u16) -> &'static str {
    // Labels are static so that a hostile status line cannot grow the metric's label set.
    const EXACT: [(u16, &str); 14] = [
        (301, "http_301"),
        (302, "http_302"),
        (307, "http_307"),
        (308, "http_308"),
        (400, "http_400"),
        (404, "http_404"),
        (405, "http_405"),
        (413, "http_413"),
        (429, "http_429"),
        (500, "http_500"),
        (501, "http_501"),
        (502, "http_502"),
        (503, "http_503"),
        (504, "http_504"),
    ];
    if let Some((_, label)) = EXACT.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status {
        300..=399 => "http_3xx",
        400..=499 => "http_4xx",
        500..=599 => "http_5xx",
        _ => "http_other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_stay_text() {
        for (code, name) in ResponseCode::KNOWN.iter() {
            assert_eq!(&ResponseCode::parse(name), code);
            assert_eq!(code.as_str(), *name);
        }
        let other = ResponseCode::parse("ErrorAccessDenied");
        assert_eq!(other, ResponseCode::Other("ErrorAccessDenied".into()));
        assert_eq!(other.as_str(), "ErrorAccessDenied");
        assert!(!other.is_transient());
    }

    #[test]
    fn busy_is_transient_with_its_back_off() {
        let busy = EwsError::ResponseCode {
            code: ResponseCode::ServerBusy,
            message: "busy".into(),
            back_off: Some(Duration::from_millis(5000)),
        };
        assert!(busy.is_transient());
        assert!(!busy.outcome_unknown());
        assert_eq!(busy.back_off(), Some(Duration::from_millis(5000)));
        assert_eq!(busy.code(), "ErrorServerBusy");
        assert!(busy.to_string().contains("5000 ms"), "{busy}");
    }

    #[test]
    fn ews_disabled_says_why_in_plain_words() {
        let text = EwsError::EwsDisabled.to_string();
        for needed in [
            "403",
            "allow-list",
            "October 2026",
            "April 2027",
            "switched off",
        ] {
            assert!(text.contains(needed), "{needed} missing from {text}");
        }
        assert!(!EwsError::EwsDisabled.is_transient());
        assert_eq!(EwsError::EwsDisabled.code(), "http_403");
    }

    #[test]
    fn outcome_is_unknown_only_when_the_request_may_have_run() {
        let sent = EwsError::Timeout {
            after: Duration::from_secs(1),
            request_sent: true,
        };
        let unsent = EwsError::Transport {
            detail: "refused".into(),
            request_sent: false,
        };
        assert!(sent.outcome_unknown() && sent.is_transient());
        assert!(!unsent.outcome_unknown() && unsent.is_transient());
        let queue_full = EwsError::Http {
            status: 503,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(!queue_full.outcome_unknown());
        assert_eq!(queue_full.back_off(), Some(Duration::from_secs(3)));
        assert!(EwsError::Http {
            status: 504,
            retry_after: None
        }
        .outcome_unknown());
        assert!(EwsError::malformed(200, "x").outcome_unknown());
        assert!(!EwsError::malformed(500, "x").outcome_unknown());
        let warning = EwsError::Warning {
            code: "ErrorBatchProcessingStopped".into(),
            message: String::new(),
        };
        assert!(warning.is_transient() && !warning.outcome_unknown());
    }

    #[test]
    fn http_labels_are_bounded() {
        assert_eq!(http_label(503), "http_503");
        assert_eq!(http_label(418), "http_4xx");
        assert_eq!(http_label(999), "http_other");
    }
}
