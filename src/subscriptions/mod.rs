//! Process A: one live push subscription per mailbox with sync switched on. Owns the callback
//! URL rule, the watchdog and renewal decisions (pure, in `plan`), and the manager loop that makes
//! the Subscribe calls within the rate, the concurrency bound and Exchange's back-off hints.

mod callback;
mod ews_subscriber;
mod manager;
mod metrics;
pub mod plan;

pub use callback::{CallbackError, CallbackRule, CallbackUrl, MAX_URL_CHARS};
pub use ews_subscriber::classify as classify_ews_failure;
pub use manager::{ManagerOptions, SubscribeRequest, Subscribed, Subscriber, SubscriptionManager};
pub use metrics::SubscriptionMetrics;
pub use plan::{SubscribeFailure, Timing};
