//! The loopback wiring the demo and the Exchange-side tests share: a simulator that pushes
//! through the gateway, a worker whose `[ews]` points at the simulator over TLS with the OAuth
//! client-credentials grant (as a deployment points it at Exchange Online), and its timings.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, EwsAuth};
use crate::exchange_sim::{SimHandle, SimOptions};
use crate::worker::Tuning;

/// The OAuth client the simulator knows and the worker authenticates as.
pub struct OauthClient<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// Simulator options for Exchange pushing to a gateway: HTTPS deliveries that must chain to
/// `gateway_ca_pem` (none: deliveries fail the handshake), sent from `push_source`.
pub fn simulator_options(
    time_scale: f64,
    first_status_after: Duration,
    gateway_ca_pem: Option<String>,
    push_source: IpAddr,
    mailboxes: Vec<String>,
    client: &OauthClient<'_>,
) -> SimOptions {
    SimOptions {
        tls: true,
        time_scale,
        first_status_after,
        push_ca_pem: gateway_ca_pem,
        push_source: Some(push_source),
        mailboxes,
        oauth_clients: vec![(client.id.into(), client.secret.into())],
        ..SimOptions::default()
    }
}

/// Sets `[ews]` to the simulator's EWS and token URLs, writing its CA and the client secret
/// into `dir` (the worker reads both from files, as in production).
pub fn point_ews_at(
    config: &mut Config,
    sim: &SimHandle,
    dir: &Path,
    client: &OauthClient<'_>,
) -> anyhow::Result<()> {
    let ca_pem = sim
        .ca_pem()
        .context("the simulator must serve HTTPS (SimOptions::tls)")?;
    let ca_file = dir.join("sim-ca.pem");
    std::fs::write(&ca_file, ca_pem).with_context(|| format!("writing {}", ca_file.display()))?;
    let secret_file = dir.join("client.secret");
    std::fs::write(&secret_file, client.secret)
        .with_context(|| format!("writing {}", secret_file.display()))?;
    let ews = &mut config.ews;
    ews.url = sim.ews_url();
    ews.auth = EwsAuth::Oauth2;
    ews.token_url = sim.token_url();
    ews.client_id = client.id.into();
    ews.client_secret_file = secret_file;
    ews.ca_file = ca_file;
    ews.timeout = Duration::from_secs(5);
    Ok(())
}

/// The gateway's current notification URL (rule 1's `endpoint_url`) on loopback.
pub fn gateway_callback_url(gateway_tls_port: u16) -> String {
    format!("https://127.0.0.1:{gateway_tls_port}/api/webhooks/exchange?tenant=Default")
}

/// Worker timings for a compressed clock: the backlog gauge refreshed often, and a Subscribe
/// lease short enough that a restarted worker takes its mailboxes back within seconds.
pub fn compressed_tuning() -> Tuning {
    Tuning {
        backlog_interval: Duration::from_millis(100),
        subscribe_lease: Duration::from_secs(20),
        ..Tuning::default()
    }
}

/// A loopback port the OS just had free (bound, then released), for a part that must be
/// configured with its address before it starts.
pub fn free_loopback_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
}
