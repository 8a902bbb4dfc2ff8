//! pushgate: a hardened edge gateway that admits Exchange push notifications into a company
//! network, and the worker behind it that stores them durably and keeps reservations in step.
//!
//! Module map (arrows point one way: `gateway` never uses `store` or `worker`):
//! `notification` (pure EWS message rules), `allowlist` (CIDR set and its hot reload), `ranges`
//! (the Microsoft feed updater), `gateway` (pingora edge), `worker` (durable ingest), `ews` (the
//! EWS client the worker calls Exchange with), `subscriptions` (process A), `sync` (processes
//! B–F: reservations and calendar items in step), `config`,
//! `cli`, `metrics`, `telemetry`, `demo`.

pub mod allowlist;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod ews;
pub mod exchange_sim;
pub mod filestamp;
pub mod gateway;
pub mod metrics;
pub mod notification;
pub mod ranges;
pub mod store;
pub mod subscriptions;
pub mod sync;
pub mod telemetry;
pub mod worker;
