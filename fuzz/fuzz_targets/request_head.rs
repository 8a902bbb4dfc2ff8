//! The gateway's request-head rules on raw bytes, read as the listener reads them (httparse,
//! 64 header fields, a 16 KiB head, CRLF only, the version refusal): no panic, and what the rules
//! admit keeps their promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::endpoint::{is_notification_path, is_tenant_name};
use pushgate::gateway::listener::MAX_HEAD_BYTES;
use pushgate::gateway::reject::Reject;
use pushgate::gateway::rules::{
    check_line_endings, route, split_target, version_refusal, BodyFraming, Head, Route, RulePolicy,
    HEALTH_PATH,
};

/// As many as the listener reads.
const MAX_HEADERS: usize = 64;
const MAX_BODY_BYTES: u64 = 64 * 1024;

fuzz_target!(|bytes: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Err(httparse::Error::Version) => {
            let refusal = version_refusal(bytes);
            assert!(matches!(
                refusal,
                Reject::UnsupportedVersion | Reject::MalformedRequest
            ));
            return;
        }
        _ => return,
    };
    if head_len > MAX_HEAD_BYTES || check_line_endings(&bytes[..head_len]).is_err() {
        return;
    }
    let policy = RulePolicy {
        paths: vec![
            "/Webservices/SyncNotification.svc".to_string(),
            "/EWS/Notify".to_string(),
        ],
        max_body_bytes: MAX_BODY_BYTES,
    };
    let head = Head {
        method: request.method.unwrap_or_default(),
        target: request.path.unwrap_or_default().as_bytes(),
        minor_version: request.version.unwrap_or(1),
        headers: request.headers,
    };
    let Ok(decided) = route(&head, &policy) else {
        return;
    };
    assert!(head.minor_version <= 1);
    let (path, query) = split_target(head.target);
    let count = |name: &str| {
        head.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    assert_eq!(count("upgrade"), 0, "an Upgrade request was admitted");
    assert!(count("host") <= 1);
    match decided {
        Route::Health { head_only } => {
            assert_eq!(path, HEALTH_PATH.as_bytes());
            assert!(query.is_none());
            assert_eq!(head.method, if head_only { "HEAD" } else { "GET" });
        }
        Route::ConfirmationPage { head_only } => {
            assert!(is_notification_path(path, &policy.paths));
            assert_eq!(head.method, if head_only { "HEAD" } else { "GET" });
        }
        Route::Notification(notification) => {
            assert_eq!(head.method, "POST");
            assert_eq!(notification.target.as_bytes(), head.target);
            assert!(
                !bytes[..head_len].contains(&0),
                "a NUL byte in an admitted head"
            );
            assert!(is_notification_path(path, &policy.paths));
            assert_eq!(count("soapaction"), 1);
            assert_eq!(count("content-type"), 1);
            let lengths = count("content-length");
            let codings = count("transfer-encoding");
            assert!(lengths + codings <= 1, "ambiguous framing admitted");
            match notification.framing {
                BodyFraming::Length(length) => {
                    assert!(length <= MAX_BODY_BYTES);
                    assert_eq!(codings, 0);
                }
                BodyFraming::Chunked => {
                    assert_eq!(head.minor_version, 1);
                    assert_eq!(lengths, 0);
                }
            }
            if let Some(tenant) = &notification.tenant {
                assert!(is_tenant_name(tenant.as_bytes()));
            }
        }
    }
});
