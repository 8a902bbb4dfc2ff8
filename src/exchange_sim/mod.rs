//! A simulated Exchange for tests, the demo and benchmarks: it sends notifications the way
//! Exchange does (one TLS connection per notification, the exact headers, PROTOCOL.md's retry
//! schedule) and judges the answers the way Exchange does. Uses `notification`, nothing else.

pub mod client;
pub mod push;
