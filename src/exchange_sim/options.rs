//! How a simulator is set up. Durations say which clock they are on: "Exchange clock" ones are
//! multiplied by `time_scale` (Exchange's minutes in milliseconds for tests), "real" ones are not.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use super::answer::PropertySetForm;

/// The operations the simulator answers.
pub const OPERATIONS: &[&str] = &[
    "Subscribe",
    "GetItem",
    "CreateItem",
    "UpdateItem",
    "DeleteItem",
    "FindItem",
    "GetFolder",
];

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Where to listen (loopback only). Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// HTTPS with a certificate for `localhost` and `127.0.0.1` issued by a CA generated at
    /// start ([`super::SimHandle::ca_pem`]). Default true.
    pub tls: bool,
    /// 1.0: real time; 0.001: Exchange's 30 s last 30 ms. Applies to heartbeats
    /// (StatusFrequency), the first StatusEvent and the retry waits.
    pub time_scale: f64,
    /// Exchange clock: when the first StatusEvent goes out after Subscribe (Exchange: about
    /// 30 s). `Duration::ZERO`: at once, possibly before the client has read the Subscribe answer.
    pub first_status_after: Duration,
    /// Real time: an answer slower than this is a failed delivery (Exchange: 60 s).
    pub answer_timeout: Duration,
    /// The CA that HTTPS callback URLs must chain to. Without it, HTTPS deliveries fail the TLS
    /// handshake, as they would for Exchange facing an untrusted certificate.
    pub push_ca_pem: Option<String>,
    /// Loopback source address of deliveries (tests: 127.0.0.2, in the gateway's allowlist).
    pub push_source: Option<IpAddr>,
    /// Mailboxes created at start.
    pub mailboxes: Vec<String>,
    /// Bearer tokens that are always valid (besides those the OAuth endpoint issues).
    pub static_tokens: Vec<String>,
    /// Basic credentials (user, password). The user is also the mailbox acted for when a
    /// request impersonates nobody.
    pub basic: Option<(String, String)>,
    /// OAuth clients (client id, secret) of the client-credentials grant.
    pub oauth_clients: Vec<(String, String)>,
    /// Real time: the lifetime of issued tokens (Azure AD: about an hour).
    pub token_lifetime: Duration,
    /// The bearer token of the `/control/...` API; generated when `None`.
    pub control_token: Option<String>,
    /// Name of the PublicStrings String property the Outlook add-in writes the reservation id
    /// into (`create_item` with `reservation_id`). Default `AppointmentOid`.
    pub reservation_property: String,
    /// How the PublicStrings set is written back in answers.
    pub property_set_form: PropertySetForm,
    /// With impersonation, refuse requests whose `X-AnchorMailbox` is missing or names another
    /// mailbox (Microsoft documents the header as mandatory). Default true.
    pub require_anchor_mailbox: bool,
    /// Answer ErrorNonExistentMailbox and ErrorImpersonateUserDenied as SOAP faults (HTTP 500)
    /// instead of response messages. Default false (response messages).
    pub impersonation_errors_as_faults: bool,
    /// Operations answered with an HTTP 500 SOAP fault when busy; the others get ErrorServerBusy
    /// inside the response messages. Default: the writes, Subscribe and GetFolder.
    pub busy_fault_operations: Vec<String>,
    /// Exchange Online's EWSMaxSubscriptions per mailbox: 20.
    pub max_subscriptions_per_mailbox: usize,
    /// Real time added to every EWS answer (a simulated server's latency).
    pub latency: Duration,
    /// Seeds ids and tokens; random when `None`.
    pub seed: Option<u64>,
    /// Largest request body read.
    pub max_body_bytes: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            tls: true,
            time_scale: 1.0,
            first_status_after: Duration::from_secs(30),
            answer_timeout: Duration::from_secs(60),
            push_ca_pem: None,
            push_source: None,
            mailboxes: Vec::new(),
            static_tokens: Vec::new(),
            basic: None,
            oauth_clients: Vec::new(),
            token_lifetime: Duration::from_secs(3599),
            control_token: None,
            reservation_property: "AppointmentOid".into(),
            property_set_form: PropertySetForm::Name,
            require_anchor_mailbox: true,
            impersonation_errors_as_faults: false,
            busy_fault_operations: [
                "Subscribe",
                "CreateItem",
                "UpdateItem",
                "DeleteItem",
                "GetFolder",
            ]
            .map(String::from)
            .to_vec(),
            max_subscriptions_per_mailbox: 20,
            latency: Duration::ZERO,
            seed: None,
            max_body_bytes: 8 * 1024 * 1024,
        }
    }
}

impl SimOptions {
    /// An Exchange-clock duration on the real clock.
    pub fn scaled(&self, exchange: Duration) -> Duration {
        exchange.mul_f64(self.time_scale.max(0.0))
    }
}
