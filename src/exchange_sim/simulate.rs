//! `pushgate simulate`: the simulator as a process, for trying the product by hand or driving it
//! from scripts through the JSON control API. Loopback only; runs until SIGINT or SIGTERM.

use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{PropertySetForm, SimOptions, Simulator};

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Where to listen (a loopback address).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    pub plain_http: bool,
    /// Write the CA of the simulator's HTTPS certificate to this file (clients trust it).
    #[arg(long, value_name = "FILE")]
    pub ca_out: Option<PathBuf>,
    /// 1.0 is real time; 0.01 makes Exchange's 30 s retry wait 300 ms (heartbeats, the first
    /// StatusEvent and retry waits).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// When the first StatusEvent follows a Subscribe, on Exchange's clock (0s: at once).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub first_status_after: Duration,
    /// A mailbox to create (repeatable).
    #[arg(long = "mailbox", value_name = "ADDRESS")]
    pub mailboxes: Vec<String>,
    /// The CA (PEM) HTTPS callback URLs must chain to.
    #[arg(long, value_name = "FILE")]
    pub push_ca: Option<PathBuf>,
    /// Loopback address notifications are sent from.
    #[arg(long, value_name = "IP")]
    pub push_source: Option<IpAddr>,
    /// A bearer token that is always accepted (repeatable).
    #[arg(
        long = "bearer-token",
        value_name = "TOKEN",
        env = "PUSHGATE_SIM_BEARER_TOKEN"
    )]
    pub bearer_tokens: Vec<String>,
    /// Basic credentials that are accepted.
    #[arg(long, value_name = "USER:PASSWORD", env = "PUSHGATE_SIM_BASIC")]
    pub basic: Option<String>,
    /// An OAuth client of the token endpoint (repeatable).
    #[arg(
        long = "oauth-client",
        value_name = "ID:SECRET",
        env = "PUSHGATE_SIM_OAUTH_CLIENT"
    )]
    pub oauth_clients: Vec<String>,
    /// Lifetime of issued tokens (real time).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3599s")]
    pub token_lifetime: Duration,
    /// Bearer token of the control API (generated and printed when not given).
    #[arg(long, env = "PUSHGATE_SIM_CONTROL_TOKEN")]
    pub control_token: Option<String>,
    /// Name of the PublicStrings property holding the reservation id.
    #[arg(long, default_value = "AppointmentOid")]
    pub reservation_property: String,
    /// Answer the PublicStrings set by its GUID (PropertySetId) instead of its name.
    #[arg(long)]
    pub property_set_guid: bool,
    /// Do not insist on X-AnchorMailbox with impersonation.
    #[arg(long)]
    pub no_anchor_check: bool,
    /// Answer impersonation failures as SOAP faults instead of response messages.
    #[arg(long)]
    pub impersonation_faults: bool,
}

fn pair(text: &str, what: &str) -> anyhow::Result<(String, String)> {
    text.split_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .with_context(|| format!("{what} must be written as A:B"))
}

impl SimulateArgs {
    pub fn options(&self) -> anyhow::Result<SimOptions> {
        let push_ca_pem = match &self.push_ca {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading --push-ca {}", path.display()))?,
            ),
            None => None,
        };
        Ok(SimOptions {
            listen: self.listen,
            tls: !self.plain_http,
            time_scale: self.time_scale,
            first_status_after: self.first_status_after,
            push_ca_pem,
            push_source: self.push_source,
            mailboxes: self.mailboxes.clone(),
            static_tokens: self.bearer_tokens.clone(),
            basic: self
                .basic
                .as_deref()
                .map(|b| pair(b, "--basic"))
                .transpose()?,
            oauth_clients: self
                .oauth_clients
                .iter()
                .map(|c| pair(c, "--oauth-client"))
                .collect::<anyhow::Result<_>>()?,
            token_lifetime: self.token_lifetime,
            control_token: self.control_token.clone(),
            reservation_property: self.reservation_property.clone(),
            property_set_form: if self.property_set_guid {
                PropertySetForm::Guid
            } else {
                PropertySetForm::Name
            },
            require_anchor_mailbox: !self.no_anchor_check,
            impersonation_errors_as_faults: self.impersonation_faults,
            ..SimOptions::default()
        })
    }
}

/// Runs the simulator until `shutdown` resolves; prints where it listens.
pub fn run<F, S>(args: SimulateArgs, shutdown: S) -> anyhow::Result<()>
where
    S: FnOnce() -> F,
    F: Future<Output = ()>,
{
    let options = args.options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async {
        let sim = Simulator::start(options).await?;
        let ca = match (&args.ca_out, sim.ca_pem()) {
            (Some(path), Some(pem)) => {
                std::fs::write(path, pem)
                    .with_context(|| format!("writing --ca-out {}", path.display()))?;
                path.display().to_string()
            }
            (None, Some(_)) => "not written (use --ca-out FILE)".into(),
            (_, None) => "none (plain HTTP)".into(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "pushgate simulate: the Exchange simulator is running")?;
        writeln!(out, "  EWS URL      {}", sim.ews_url())?;
        writeln!(out, "  token URL    {}", sim.token_url())?;
        writeln!(out, "  control URL  {}", sim.control_url())?;
        writeln!(out, "  control token {}", sim.control_token())?;
        writeln!(out, "  CA           {ca}")?;
        writeln!(
            out,
            "  mailboxes    {}",
            if args.mailboxes.is_empty() {
                "(none yet: POST /control/mailboxes)".to_string()
            } else {
                args.mailboxes.join(", ")
            }
        )?;
        writeln!(out, "  time scale   {}", args.time_scale)?;
        out.flush()?;
        drop(out);
        shutdown().await;
        sim.shutdown().await;
        println!("pushgate simulate: stopped");
        Ok(())
    })
}
