//! pushgate: a hardened edge gateway that admits Exchange push notifications into a company
//! network, and the worker behind it that stores them durably and keeps reservations in step.
//!
//! Features: `gateway` (the DMZ build: gateway, ranges, validate), `worker` (stores, EWS client,
//! subscriptions, the worker), `demo` (the simulator and the demo); all on by default.
//!
//! Module map (arrows point one way: `gateway` never uses `store` or `worker`):
//! `notification` (pure EWS message rules), `allowlist` (CIDR set and its hot reload), `ranges`
//! (the Microsoft feed updater), `gateway` (pingora edge), `worker` (durable ingest), `ews` (the
//! EWS client the worker calls Exchange with), `subscriptions` (process A), `sync` (processes
//! B–F: reservations and calendar items in step), `config`,
//! `cli`, `metrics`, `telemetry`, `demo`.

pub mod allowlist;
pub mod cli;
#[cfg(feature = "worker")]
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod endpoint;
#[cfg(feature = "worker")]
pub mod ews;
#[cfg(feature = "demo")]
pub mod exchange_sim;
pub mod filestamp;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod metrics;
pub mod notification;
#[cfg(feature = "gateway")]
pub mod ranges;
#[cfg(feature = "worker")]
pub mod store;
#[cfg(feature = "worker")]
pub mod subscriptions;
#[cfg(feature = "worker")]
pub mod sync;
pub mod telemetry;
pub mod token_file;
#[cfg(feature = "worker")]
pub mod worker;

/// The tests' skip helper (`tests/skip/mod.rs`), for unit tests that need the EWS schema or
/// examples: SKIPPED visibly, or a failure with `PUSHGATE_REQUIRE_ALL=1`.
#[cfg(test)]
#[path = "../tests/skip/mod.rs"]
pub(crate) mod test_skip;
