//! The EWS push message: its typed model, the streaming validator that decides whether a body is a
//! well-formed, schema-conformant `SendNotification` (bytes in, verdict out), and the answer envelopes.
//! Pure code: no I/O, no clock, nothing of the rest of pushgate.

pub mod envelope;
pub mod model;
mod validator;
pub mod write;

pub use envelope::{result_envelope, SubscriptionStatus};
pub use model::{
    Event, EventKind, Notification, NotificationContent, ObjectId, ObjectKind, ResponseClass,
    ResponseMessage,
};
pub use validator::{parse, validate, Rejection, RejectionKind, Summary};

/// Bounds of the hostile-input rules (see `[validator]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_depth: usize,
    pub max_name_bytes: usize,
    pub max_attribute_bytes: usize,
    pub max_attributes: usize,
    pub max_text_bytes: usize,
    pub max_events: usize,
    pub max_response_messages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&crate::config::ValidatorConfig::default())
    }
}

impl From<&crate::config::ValidatorConfig> for Limits {
    fn from(c: &crate::config::ValidatorConfig) -> Self {
        Limits {
            max_depth: c.max_depth,
            max_name_bytes: c.max_name_bytes,
            max_attribute_bytes: c.max_attribute_bytes,
            max_attributes: c.max_attributes,
            max_text_bytes: c.max_text_bytes,
            max_events: c.max_events,
            max_response_messages: c.max_response_messages,
        }
    }
}

/// SCAFFOLD: replaced when the validator lands.
pub fn verdict_line(label: &str, body: &[u8], limits: &Limits) -> (String, bool) {
    match validate(body, limits) {
        Ok(_) => (format!("{label}: valid"), true),
        Err(rejection) => (format!("{label}: invalid: {rejection}"), false),
    }
}
