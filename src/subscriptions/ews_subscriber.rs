//! The EWS client as the manager's [`Subscriber`]: a push Subscribe on the mailbox's calendar,
//! and each EWS failure sorted into what the manager does about it.

use std::time::Duration;

use async_trait::async_trait;

use super::manager::{SubscribeRequest, Subscribed, Subscriber};
use super::plan::SubscribeFailure;
use crate::ews::{EwsClient, EwsError, PushSubscriptionRequest, ResponseCode};

/// ErrorServerBusy without a hint still slows everyone down this long.
const DEFAULT_BUSY_BACK_OFF: Duration = Duration::from_secs(30);

#[async_trait]
impl Subscriber for EwsClient {
    async fn subscribe(
        &self,
        mailbox: &str,
        request: &SubscribeRequest,
    ) -> Result<Subscribed, SubscribeFailure> {
        let push = PushSubscriptionRequest {
            watermark: request.watermark.clone(),
            status_frequency_minutes: request.status_frequency_minutes,
            url: request.url.clone(),
        };
        match EwsClient::subscribe(self, mailbox, &push).await {
            Ok(result) => Ok(Subscribed {
                subscription_id: result.subscription_id,
                watermark: result.watermark,
            }),
            Err(error) => Err(classify(&error)),
        }
    }
}

/// What a failed Subscribe means for the mailbox.
pub fn classify(error: &EwsError) -> SubscribeFailure {
    let message = error.to_string();
    match error {
        EwsError::ResponseCode {
            code: ResponseCode::InvalidWatermark,
            ..
        } => SubscribeFailure::InvalidWatermark(message),
        EwsError::ResponseCode {
            code: ResponseCode::ServerBusy,
            back_off,
            ..
        } => SubscribeFailure::ServerBusy {
            message,
            back_off: back_off.unwrap_or(DEFAULT_BUSY_BACK_OFF),
        },
        // As things stand Exchange will not subscribe this mailbox: retrying soon cannot help.
        EwsError::ResponseCode {
            code:
                ResponseCode::NonExistentMailbox
                | ResponseCode::ImpersonateUserDenied
                | ResponseCode::ExceededSubscriptionCount
                | ResponseCode::SchemaValidation,
            ..
        }
        | EwsError::EwsDisabled
        | EwsError::Unauthorized { .. }
        | EwsError::InvalidRequest(_)
        | EwsError::Config(_) => SubscribeFailure::Refused(message),
        EwsError::ResponseCode {
            code: ResponseCode::Other(code),
            ..
        } if matches!(
            code.as_str(),
            "ErrorAccessDenied"
                | "ErrorFolderNotFound"
                | "ErrorInvalidPushSubscriptionUrl"
                | "ErrorSubscriptionDelegateAccessNotSupported"
                | "ErrorInvalidSubscriptionRequest"
        ) =>
        {
            SubscribeFailure::Refused(message)
        }
        EwsError::Token {
            transient: false, ..
        } => SubscribeFailure::Refused(message),
        other => SubscribeFailure::Transient {
            message,
            back_off: other.back_off(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(code: ResponseCode, back_off: Option<Duration>) -> EwsError {
        EwsError::ResponseCode {
            code,
            message: "m".into(),
            back_off,
        }
    }

    #[test]
    fn failures_are_sorted_by_what_helps() {
        assert!(matches!(
            classify(&code(ResponseCode::InvalidWatermark, None)),
            SubscribeFailure::InvalidWatermark(_)
        ));
        assert_eq!(
            classify(&code(
                ResponseCode::ServerBusy,
                Some(Duration::from_millis(5000))
            )),
            SubscribeFailure::ServerBusy {
                message: code(ResponseCode::ServerBusy, Some(Duration::from_millis(5000)))
                    .to_string(),
                back_off: Duration::from_millis(5000),
            }
        );
        for refused in [
            code(ResponseCode::NonExistentMailbox, None),
            code(ResponseCode::ImpersonateUserDenied, None),
            code(ResponseCode::Other("ErrorAccessDenied".into()), None),
            EwsError::EwsDisabled,
            EwsError::Unauthorized { detail: "x".into() },
        ] {
            assert!(
                matches!(classify(&refused), SubscribeFailure::Refused(_)),
                "{refused}"
            );
        }
        let disabled = classify(&EwsError::EwsDisabled);
        assert!(
            disabled.message().contains("allow-list"),
            "operators read why"
        );
        for transient in [
            code(ResponseCode::MailboxMoveInProgress, None),
            EwsError::Timeout {
                after: Duration::from_secs(30),
                request_sent: true,
            },
            EwsError::Http {
                status: 503,
                retry_after: Some(Duration::from_secs(60)),
            },
        ] {
            assert!(
                matches!(classify(&transient), SubscribeFailure::Transient { .. }),
                "{transient}"
            );
        }
        assert!(matches!(
            classify(&EwsError::Http { status: 429, retry_after: Some(Duration::from_secs(60)) }),
            SubscribeFailure::Transient { back_off: Some(d), .. } if d == Duration::from_secs(60)
        ));
    }
}
