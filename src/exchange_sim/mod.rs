//! A simulated Exchange for tests, the demo and benchmarks: a real EWS SOAP server on loopback
//! over in-memory calendars, push delivery as PROTOCOL.md §4 says, an OAuth token endpoint and a
//! control API. Uses `notification`, nothing else of pushgate (never the product's EWS client).
//!
//! Layers: pure reading and writing (`xml`, `schema`, `request`, `answer`, `codec`), pure rules
//! (`store`: mailboxes and their event logs; `subscriptions`: what a subscription sees and sends;
//! `ews`: what each operation does; `auth`), thin glue (`server`, `delivery`, `control`,
//! `handle`, `simulate`). `client` and `push` are the raw client and Exchange's delivery rules,
//! also used on their own by the gateway tests, the demo and the benchmarks.
//!
//! Clocks: `time_scale` compresses Exchange's clock (heartbeats, the first StatusEvent, retry
//! waits); the answer timeout, `busy_for`, `stall_for`, `answer_next_create_after`, latency and
//! token lifetimes are real time.
//!
//! Deliberate choices where the sources are silent (each also said where it is made):
//! - Impersonation failures are response messages by default (`impersonation_errors_as_faults`
//!   switches to HTTP 500 faults); with impersonation, a missing or different `X-AnchorMailbox`
//!   is refused with an `ErrorInvalidRequest` fault (`require_anchor_mailbox`). A denied mailbox
//!   is denied to every account. An app token without impersonation acts for the mailbox a
//!   folder id names, else gets `ErrorInvalidExchangeImpersonationHeaderData`; a Basic user acts
//!   for the mailbox of the same address.
//! - A request without `RequestServerVersion` is accepted (Exchange assumes Exchange2007_SP1).
//! - `ErrorServerBusy` is a fault for the operations in `busy_fault_operations` (the writes,
//!   Subscribe, GetFolder) and in-body, one message per input, for the others (GetItem, FindItem).
//! - A stalled request is never carried out: the connection closes unanswered when the stall ends.
//!   Latency is added after the operation took effect, before the answer.
//! - A Subscribe with a watermark answers that watermark; events replay from its position. The
//!   first notification goes out at once when events wait, else as a StatusEvent
//!   `first_status_after` Subscribe.
//! - Notifications do not collapse repeated ModifiedEvents (Exchange may).
//! - Only calendar items are stored, in the calendar; recurring items do not exist (occurrence ids
//!   are not found). A new item needs Start and End. Folders: msgfolderroot, calendar,
//!   deleteditems, recoverableitemsroot, recoverableitemsdeletions; others are not found.
//! - Calendar item properties the simulator does not model are checked for order only and
//!   ignored; `IsCancelled` is read-only over EWS (the organiser's cancellation is a control verb).
//! - UpdateItem: a stale ChangeKey fails with NeverOverwrite (ErrorIrresolvableConflict),
//!   AutoResolve needs a ChangeKey (ErrorChangeKeyRequired); DeleteItem ignores stale ChangeKeys.
//!   MoveToDeletedItems of an item in Deleted Items soft-deletes it; deleting an item in the
//!   recoverable items removes it.
//! - FindItem: Shallow traversal, CalendarView or no view; paging views, restrictions, sorting
//!   and grouping, like operations the simulator does not implement, get an `ErrorInvalidRequest`
//!   fault that names them.

pub mod answer;
mod auth;
pub mod client;
pub mod codec;
mod control;
mod delivery;
pub mod ews;
mod handle;
mod options;
pub mod push;
pub mod request;
pub mod schema;
mod server;
pub mod simulate;
mod state;
pub mod store;
pub mod subscriptions;
mod tls;
pub mod xml;

pub use answer::PropertySetForm;
pub use handle::{ItemSnapshot, ItemSpec, ItemUpdate, SimError, SimHandle, Simulator};
pub use options::{SimOptions, OPERATIONS};
pub use state::{CallCounts, CallRecord, DeliveryRecord, ScriptedFailure, SubscriptionInfo};

/// A test whose dependency is missing says so; with `PUSHGATE_REQUIRE_ALL=1` it fails instead.
#[cfg(test)]
pub(crate) fn missing_dependency(reason: &str) {
    crate::test_skip::skip(reason);
}
