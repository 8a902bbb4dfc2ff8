//! The contract of a notification request that the gateway and the worker both enforce: which
//! paths are notification paths, which tenant names a query may carry, and the SOAPAction Exchange
//! sends. Pure functions over raw bytes; uses nothing else of pushgate.

/// The EWS action Exchange puts in `SOAPAction` for push notifications.
pub const SEND_NOTIFICATION_ACTION: &str =
    "http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification";

/// The notification paths both parts serve unless configured otherwise: the legacy IIS path and
/// the product's current one.
pub const DEFAULT_PATHS: [&str; 2] = [
    "/Webservices/SyncNotification.svc",
    "/api/webhooks/exchange",
];

/// Tenant of requests whose query names none.
pub const DEFAULT_TENANT: &str = "default";

/// Longest tenant name.
pub const MAX_TENANT_CHARS: usize = 64;

/// Whether a raw path is one of the notification paths: ASCII case-insensitive, as IIS matched
/// the legacy path (`Webservices` and `WebServices` both occur).
pub fn is_notification_path(path: &[u8], paths: &[String]) -> bool {
    paths
        .iter()
        .any(|configured| configured.as_bytes().eq_ignore_ascii_case(path))
}

/// A tenant name as the legacy `?{tenant}` form or `tenant=` carries it: `[A-Za-z0-9_.-]{1,64}`.
pub fn is_tenant_name(name: &[u8]) -> bool {
    (1..=MAX_TENANT_CHARS).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The query string names no acceptable tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tenant must be 1 to {MAX_TENANT_CHARS} characters of A-Z a-z 0-9 _ . - (as `?NAME` or `?tenant=NAME`)")]
pub struct BadTenant;

/// The tenant a raw query names: absent (`None`), the legacy form (`?Default`: the whole query),
/// or `tenant=NAME`. Anything else, an empty query or percent-encoding included, is refused.
pub fn tenant_of_query(query: Option<&[u8]>) -> Result<Option<&str>, BadTenant> {
    let Some(query) = query else {
        return Ok(None);
    };
    let name = query.strip_prefix(b"tenant=").unwrap_or(query);
    if is_tenant_name(name) {
        // Only ASCII passes is_tenant_name.
        std::str::from_utf8(name).map(Some).map_err(|_| BadTenant)
    } else {
        Err(BadTenant)
    }
}

/// Whether a `SOAPAction` value (whitespace trimmed) names EWS SendNotification; SOAP 1.1 allows
/// one pair of quotes around it.
pub fn is_send_notification_action(value: &[u8]) -> bool {
    let action = match value {
        [b'"', inner @ .., b'"'] => inner,
        other => other,
    };
    action == SEND_NOTIFICATION_ACTION.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compare_without_regard_to_ascii_case() {
        let paths: Vec<String> = DEFAULT_PATHS.iter().map(|p| p.to_string()).collect();
        for ok in [
            "/Webservices/SyncNotification.svc",
            "/WebServices/SyncNotification.svc",
            "/api/webhooks/Exchange",
        ] {
            assert!(is_notification_path(ok.as_bytes(), &paths), "{ok}");
        }
        for bad in [
            "/Webservices/SyncNotification.svc/",
            "/api/webhooks",
            "/api%2Fwebhooks/exchange",
        ] {
            assert!(!is_notification_path(bad.as_bytes(), &paths), "{bad}");
        }
    }

    #[test]
    fn tenants_from_queries() {
        assert_eq!(tenant_of_query(None), Ok(None));
        assert_eq!(tenant_of_query(Some(b"Default")), Ok(Some("Default")));
        assert_eq!(
            tenant_of_query(Some(b"tenant=fab.rikam-1")),
            Ok(Some("fab.rikam-1"))
        );
        for bad in [&b""[..], b"tenant=", b"a b", b"a%20b", b"x=y", &[b'a'; 65]] {
            assert_eq!(tenant_of_query(Some(bad)), Err(BadTenant), "{bad:?}");
        }
    }

    #[test]
    fn the_soap_action_with_or_without_quotes() {
        assert!(is_send_notification_action(
            SEND_NOTIFICATION_ACTION.as_bytes()
        ));
        assert!(is_send_notification_action(
            format!("\"{SEND_NOTIFICATION_ACTION}\"").as_bytes()
        ));
        assert!(!is_send_notification_action(
            format!("\"\"{SEND_NOTIFICATION_ACTION}\"\"").as_bytes()
        ));
        assert!(!is_send_notification_action(
            b"http://schemas.microsoft.com/exchange/services/2006/messages/GetItem"
        ));
    }
}
