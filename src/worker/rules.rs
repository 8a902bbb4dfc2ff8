//! The worker's request rules as pure functions: which paths are notification paths, who the
//! gateway is (bearer token), which tenant a query names, and which parsed notifications the
//! store can take. The HTTP glue in `ingest` only calls these.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

// The contract shared with the gateway: the same paths, tenants and SOAPAction.
pub use crate::endpoint::{BadTenant, DEFAULT_TENANT};

use crate::notification::Notification;
use crate::store::MAX_KEY_BYTES;

/// Longest `X-Request-Id` kept.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// Does `path` (the raw request path, without query) name a notification endpoint? The same rule
/// as the gateway's ([`crate::endpoint::is_notification_path`]): ASCII case-insensitive.
pub fn is_notification_path(path: &str, paths: &[String]) -> bool {
    crate::endpoint::is_notification_path(path.as_bytes(), paths)
}

/// The tenant a query string names (the shared rule, [`crate::endpoint::tenant_of_query`]); no
/// query means [`DEFAULT_TENANT`].
pub fn tenant(query: Option<&str>) -> Result<String, BadTenant> {
    match query {
        None | Some("") => Ok(DEFAULT_TENANT.to_string()),
        Some(query) => crate::endpoint::tenant_of_query(Some(query.as_bytes()))
            .map(|name| name.unwrap_or(DEFAULT_TENANT).to_string()),
    }
}

/// A bearer token (the gateway's, or the API's), kept only as a digest so comparisons take the
/// same time whatever the length or content of the presented token.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
}

impl BearerToken {
    pub fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// True when `authorization` is `Bearer <the token>` (scheme in any case).
    pub fn verify(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(credentials) = bearer_credentials(value) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(credentials).into();
        presented.ct_eq(&self.digest).into()
    }
}

/// The gateway's token while it is rotated: the token now in the file, and the one before it until
/// `token_grace` after the change, so the gateway may switch a little later than the worker (or
/// earlier: a new token the worker has not read yet is refused until it has).
#[derive(Clone)]
pub struct RotatingToken {
    current: BearerToken,
    previous: Option<(BearerToken, Instant)>,
}

impl RotatingToken {
    pub fn new(token: &str) -> Self {
        Self {
            current: BearerToken::new(token),
            previous: None,
        }
    }

    /// The file now holds `token`: the current one stays valid until `now + grace`.
    pub fn rotated(&self, token: &str, now: Instant, grace: Duration) -> Self {
        Self {
            current: BearerToken::new(token),
            previous: Some((self.current.clone(), now + grace)),
        }
    }

    /// The current token, or the previous one before its deadline.
    pub fn verify(&self, authorization: Option<&[u8]>, now: Instant) -> bool {
        // Both are compared every time, so the answer takes the same time whichever matched.
        let current = self.current.verify(authorization);
        let previous = self
            .previous
            .as_ref()
            .is_some_and(|(token, until)| token.verify(authorization) && now < *until);
        current | previous
    }
}

fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let credentials = rest.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

/// `X-Request-Id` when it is short visible ASCII; anything else is not stored.
pub fn request_id(header: Option<&[u8]>) -> Option<String> {
    let value = header?;
    let fits = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_CHARS
        && value.iter().all(|b| b.is_ascii_graphic());
    fits.then(|| String::from_utf8_lossy(value).into_owned())
}

/// A notification the validator accepted but the store cannot keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unstorable {
    #[error("notification without a SubscriptionId")]
    NoSubscriptionId,
    #[error("{0} longer than {MAX_KEY_BYTES} bytes")]
    TooLong(&'static str),
}

/// Checks what the store relies on: every `Notification` names its subscription, and ids and
/// watermarks fit the unique index.
pub fn check_storable(notification: &Notification) -> Result<(), Unstorable> {
    for message in &notification.response_messages {
        if let Some(id) = &message.subscription_id {
            if id.len() > MAX_KEY_BYTES {
                return Err(Unstorable::TooLong("SubscriptionId"));
            }
        }
        let Some(content) = &message.notification else {
            continue;
        };
        if message.subscription_id.is_none() {
            return Err(Unstorable::NoSubscriptionId);
        }
        if content
            .previous_watermark
            .as_ref()
            .is_some_and(|w| w.len() > MAX_KEY_BYTES)
        {
            return Err(Unstorable::TooLong("PreviousWatermark"));
        }
        if content.events.iter().any(|e| {
            e.watermark
                .as_ref()
                .is_some_and(|w| w.len() > MAX_KEY_BYTES)
        }) {
            return Err(Unstorable::TooLong("Watermark"));
        }
    }
    Ok(())
}

/// A header value fit for a log line: visible ASCII, at most 200 characters.
pub fn loggable(value: &[u8]) -> String {
    value
        .iter()
        .take(200)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::{NotificationContent, ResponseClass, ResponseMessage};

    #[test]
    fn notification_paths() {
        let paths = crate::config::GatewayConfig::default().paths;
        let is_notification_path = |path: &str| is_notification_path(path, &paths);
        assert!(is_notification_path("/Webservices/SyncNotification.svc"));
        assert!(is_notification_path("/WebServices/SyncNotification.svc"));
        assert!(is_notification_path("/webservices/syncnotification.SVC"));
        assert!(is_notification_path("/api/webhooks/exchange"));
        assert!(is_notification_path("/api/webhooks/Exchange"));
        for other in [
            "/",
            "/api/webhooks/exchange/",
            "/Webservices/SyncNotification.svc/",
            "/Webservices/SyncNotification.svc.bak",
            "/healthz",
            "/metrics",
        ] {
            assert!(!is_notification_path(other), "{other}");
        }
    }

    #[test]
    fn tenants() {
        assert_eq!(tenant(None).unwrap(), "default");
        assert_eq!(tenant(Some("")).unwrap(), "default");
        assert_eq!(tenant(Some("Default")).unwrap(), "Default");
        assert_eq!(tenant(Some("tenant=acme-1.eu_x")).unwrap(), "acme-1.eu_x");
        assert_eq!(tenant(Some(&"a".repeat(64))).unwrap(), "a".repeat(64));
        for bad in [
            "a".repeat(65),
            "tenant=".to_string(),
            "a&b".to_string(),
            "tenant=a&x=1".to_string(),
            "x=1".to_string(),
            "%41".to_string(),
            "a b".to_string(),
            "ä".to_string(),
        ] {
            assert_eq!(tenant(Some(&bad)), Err(BadTenant), "{bad}");
        }
    }

    #[test]
    fn bearer_token() {
        let token = BearerToken::new("s3cret");
        assert!(token.verify(Some(b"Bearer s3cret")));
        assert!(token.verify(Some(b"bearer s3cret")));
        assert!(token.verify(Some(b"BEARER   s3cret ")));
        for bad in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer s3cre",
            b"Bearer s3cret2",
            b"Basic s3cret",
            b"s3cret",
            b"Bearers3cret",
        ] {
            assert!(!token.verify(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!token.verify(None));
    }

    #[test]
    fn rotated_token_keeps_the_previous_one_for_the_grace_period() {
        let start = Instant::now();
        let grace = Duration::from_secs(300);
        let first = RotatingToken::new("one");
        assert!(first.verify(Some(b"Bearer one"), start));
        assert!(!first.verify(Some(b"Bearer two"), start));
        let second = first.rotated("two", start, grace);
        assert!(second.verify(Some(b"Bearer two"), start));
        assert!(second.verify(Some(b"Bearer one"), start + grace - Duration::from_secs(1)));
        assert!(!second.verify(Some(b"Bearer one"), start + grace));
        assert!(second.verify(Some(b"Bearer two"), start + grace * 10));
        // A second rotation forgets the first token at once.
        let third = second.rotated("three", start, grace);
        assert!(third.verify(Some(b"Bearer two"), start));
        assert!(!third.verify(Some(b"Bearer one"), start));
        assert!(!third.verify(None, start));
    }

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some(b"abc-123")).as_deref(), Some("abc-123"));
        assert_eq!(request_id(Some(b"a b")), None);
        assert_eq!(request_id(Some(&[b'x'; 129])), None);
        assert_eq!(request_id(Some(b"")), None);
        assert_eq!(request_id(None), None);
    }

    fn message(subscription: Option<String>, watermark: String) -> Notification {
        Notification {
            response_messages: vec![ResponseMessage {
                response_class: ResponseClass::Success,
                response_code: None,
                message_text: None,
                subscription_id: subscription,
                notification: Some(NotificationContent {
                    previous_watermark: Some(watermark),
                    more_events: false,
                    events: Vec::new(),
                }),
            }],
        }
    }

    #[test]
    fn storable() {
        assert_eq!(
            check_storable(&message(Some("S".into()), "W".into())),
            Ok(())
        );
        assert_eq!(
            check_storable(&message(None, "W".into())),
            Err(Unstorable::NoSubscriptionId)
        );
        assert_eq!(
            check_storable(&message(Some("S".repeat(MAX_KEY_BYTES + 1)), "W".into())),
            Err(Unstorable::TooLong("SubscriptionId"))
        );
        assert_eq!(
            check_storable(&message(Some("S".into()), "W".repeat(MAX_KEY_BYTES + 1))),
            Err(Unstorable::TooLong("PreviousWatermark"))
        );
        assert_eq!(
            check_storable(&message(Some("S".into()), "W".repeat(MAX_KEY_BYTES))),
            Ok(())
        );
    }

    #[test]
    fn log_values_are_tamed() {
        assert_eq!(loggable(b"10.0.0.1, 10.0.0.2"), "10.0.0.1, 10.0.0.2");
        assert_eq!(loggable(b"a\nb\x1b"), "a?b?");
        assert_eq!(loggable(&[b'x'; 300]).len(), 200);
    }
}
