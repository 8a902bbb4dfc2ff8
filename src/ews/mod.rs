//! The EWS client (connection 2: the worker calling Exchange Web Services): push Subscribe and
//! GetItem, CreateItem, UpdateItem, DeleteItem, FindItem (CalendarView), GetFolder on a mailbox's
//! calendar, for many mailboxes by impersonation. Uses only `config` (its edge) and `filestamp`.
//!
//! Requests are written and answers read by hand with quick-xml rather than with the `ews` crate
//! (thunderbird/ews-rs 0.1.2): that crate has no ExchangeImpersonation header, no
//! SendMeetingInvitations on CreateItem and no calendar fields (a CalendarItem is its Message
//! type), deserialises with serde by local name (not namespace URI), fails on a ResponseCode it
//! does not list, panics on an envelope without a header, and would add a second quick-xml
//! (0.41) plus its proc-macro and xml_struct crates under MPL-2.0 for seven small operations.
//!
//! Layout: `model` (values), `write` (pure request writers), `xml` + `read` (pure answer
//! readers), `error`, `settings` (`[ews]` at the edge), `auth`, `metrics`, `client` (transport).

mod auth;
mod client;
mod error;
mod metrics;
mod model;
pub mod read;
mod settings;
pub mod write;
mod xml;

pub use client::EwsClient;
pub use error::{EwsError, ResponseCode, EWS_DISABLED_EXPLANATION};
pub use metrics::EwsMetrics;
pub use model::{
    CalendarItem, CalendarItemChanges, CalendarView, CalendarViewPage, DeleteType, ItemId, Mailbox,
    NewCalendarItem, Operation, PushSubscriptionRequest, ReservationProperty, SubscribeResult,
    MAX_PUSH_URL_CHARS, PUBLIC_STRINGS_GUID, STATUS_FREQUENCY_MINUTES,
};
pub use settings::{AuthSettings, EwsSettings, RetryPolicy, Secret};
pub use xml::Element;
