//! `pushgate mailboxes add|remove|list`: the operators' door to the mailbox table, over the same
//! store and the same rules as the API. A running worker picks the change up at its next scan.

use anyhow::Context;
use time::OffsetDateTime;

use super::api::mailbox_address;
use crate::config::Config;
use crate::store::{self, MailboxView, PutMailbox};

/// What the command was asked to do.
#[derive(Debug, Clone)]
pub enum MailboxCommand {
    Add {
        addresses: Vec<String>,
        /// More addresses, one per line.
        file: Option<std::path::PathBuf>,
        tenant: Option<String>,
    },
    Remove {
        address: String,
    },
    List {
        json: bool,
    },
}

/// Runs the command; the text goes to stdout.
pub fn run(config: &Config, command: MailboxCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a runtime")?;
    runtime.block_on(async move {
        let store = store::open(&config.worker.database_url)
            .await
            .context("opening the worker's database")?;
        let now = OffsetDateTime::now_utc();
        match command {
            MailboxCommand::Add {
                addresses,
                file,
                tenant,
            } => {
                if let Some(tenant) = &tenant {
                    if !crate::endpoint::is_tenant_name(tenant.as_bytes()) {
                        anyhow::bail!("--tenant must be 1 to 64 characters of A-Z a-z 0-9 _ . -");
                    }
                }
                let mut all = addresses;
                if let Some(file) = &file {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    all.extend(address_lines(&text));
                }
                let mut requests = Vec::with_capacity(all.len());
                for raw in &all {
                    let address = mailbox_address(raw)
                        .map_err(|e| anyhow::anyhow!("{raw:?}: {}", e.message))?;
                    requests.push(PutMailbox {
                        address,
                        tenant: tenant.clone(),
                        sync: true,
                    });
                }
                // Nothing is changed unless every address is fit: one transaction.
                let outcomes = store.put_mailboxes(&requests, now).await?;
                let created = outcomes.iter().filter(|o| o.created).count();
                if outcomes.len() == 1 {
                    let view = &outcomes[0].view;
                    let verb = if created == 1 { "added" } else { "sync on" };
                    println!(
                        "{}: {verb} ({})",
                        view.mailbox.address,
                        view.mailbox.state.as_str()
                    );
                } else {
                    println!(
                        "{} mailboxes: {created} added, {} already known, sync on for all",
                        outcomes.len(),
                        outcomes.len() - created
                    );
                }
            }
            MailboxCommand::Remove { address } => {
                let address = mailbox_address(&address).map_err(|e| anyhow::anyhow!(e.message))?;
                if !store.delete_mailbox(&address, now).await? {
                    anyhow::bail!("{address}: no such mailbox");
                }
                println!("{address}: removed");
            }
            MailboxCommand::List { json } => {
                let mut after: Option<String> = None;
                if !json {
                    println!(
                        "{:<40} {:<12} {:<11} {:<22} LAST ERROR",
                        "ADDRESS", "TENANT", "STATE", "LAST HEARD"
                    );
                }
                loop {
                    let page = store.mailboxes(after.as_deref(), 1000).await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.mailbox.address.clone());
                    for view in &page {
                        if json {
                            println!("{}", super::api::mailbox_json(view));
                        } else {
                            println!("{}", table_row(view));
                        }
                    }
                }
            }
        }
        Ok(())
    })
}

/// The addresses of a list file: one per line, blank lines and `#` comments ignored.
fn address_lines(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_string)
}

fn table_row(view: &MailboxView) -> String {
    let m = &view.mailbox;
    let heard = view
        .subscription
        .as_ref()
        .and_then(|s| s.last_notification_at)
        .map_or_else(|| "-".to_string(), super::api::utc);
    format!(
        "{:<40} {:<12} {:<11} {:<22} {}",
        m.address,
        m.tenant,
        m.state.as_str(),
        heard,
        m.last_error.as_deref().unwrap_or("-")
    )
}
