//! The EWS push message: its typed model, the streaming validator that decides whether a body is a
//! well-formed, schema-conformant `SendNotification` (bytes in, verdict out), and the answer envelopes.
//! Pure code: no I/O, no clock, nothing of the rest of pushgate.
//!
//! Rejection reasons ([`Rejection::reason`], the metric label; deviations are refusals stricter
//! than `xmllint --schema`, [`Rejection::is_xsd_deviation`]):
//!
//! | reason | deviation | what |
//! |---|---|---|
//! | `xml_not_well_formed` | no | not well-formed XML 1.0 (syntax, invalid UTF-8, forbidden characters, undeclared entities) |
//! | `xml_namespace_error` | yes | namespace error libxml2 recovers from: undeclared prefix, non-QName, `xmlns:p=""`, `xml`/`xmlns` misuse, attribute twice under two prefixes |
//! | `xml_unsupported_declaration` | yes | declared encoding other than UTF-8, UTF-16/32 body, XML version other than 1.0 |
//! | `xml_forbidden_markup` | yes | DOCTYPE or processing instruction |
//! | `limit_exceeded` | yes | a `[validator]` bound: depth, name, attribute or text size, attribute count, events, response messages |
//! | `schema_unsupported_extension` | yes | EWS/SOAP elements in the header or `m:MessageXml` wildcards other than `t:RequestServerVersion`/`t:Value`, response message types other than `SendNotificationResponseMessage`, `xsi:*` attributes |
//! | `schema_invalid_structure` | no | element, attribute or character data the schema does not allow here, or a required one missing |
//! | `schema_invalid_value` | no | a value outside its datatype (enumerations, `xs:dateTime`, `xs:int`, `xs:boolean`, non-empty string, `xs:language`) |
//!
//! Accepted although the XSD refuses it: `ResponseClass="Error"` without `m:Notification`
//! ([`Summary::error_without_notification`]), which Exchange really sends.

mod datatypes;
pub mod envelope;
pub mod model;
mod rejection;
mod tokenizer;
mod validator;
mod vocabulary;
pub mod write;

pub use envelope::{result_envelope, SubscriptionStatus};
pub use model::{
    Event, EventKind, Notification, NotificationContent, ObjectId, ObjectKind, ResponseClass,
    ResponseMessage,
};
pub use validator::{parse, validate, Rejection, RejectionKind, Summary};
/// The schema's `ExchangeVersionType` values (types.xsd), the only ones `RequestServerVersion`
/// takes; the worker's `[ews] server_version` and the simulator check against the same list.
pub use vocabulary::EXCHANGE_VERSIONS;
pub use write::notification_xml;

/// One line of `pushgate validate` output for `body`: `"<label>: valid"` or
/// `"<label>: invalid: <reason>: <detail>"`, and whether the body is valid. The gateway's verdict,
/// word for word.
pub fn verdict_line(label: &str, body: &[u8], limits: &Limits) -> (String, bool) {
    match validate(body, limits) {
        Ok(_) => (format!("{label}: valid"), true),
        Err(rejection) => (format!("{label}: invalid: {rejection}"), false),
    }
}

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
    /// Far above anything Exchange sends (depth 9, names under 40 bytes, ids under 200 bytes,
    /// 50 events); `[validator]` in the configuration starts from these.
    fn default() -> Self {
        Limits {
            max_depth: 32,
            max_name_bytes: 256,
            max_attribute_bytes: 8192,
            max_attributes: 32,
            max_text_bytes: 16384,
            max_events: 512,
            max_response_messages: 64,
        }
    }
}
