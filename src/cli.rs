//! The `pushgate` command line: one binary, one subcommand per part. Each subcommand loads the
//! configuration (file, then `PUSHGATE__*` environment), sets up logging and hands over to its
//! part; exit statuses are the ones operators script against.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "pushgate",
    version,
    about = "Hardened gateway and worker for Exchange push notifications"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[cfg(feature = "gateway")]
    /// Run the gateway (DMZ): TLS, source allowlist, request rules, schema check, forwarding.
    Gateway {
        /// Configuration file (TOML); `PUSHGATE__SECTION__KEY` variables override its keys.
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    #[cfg(feature = "worker")]
    /// Run the worker (intranet): durable ingest of notifications.
    Worker {
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check captured notification bodies with exactly the gateway's validator.
    ///
    /// Prints `FILE: valid` or `FILE: invalid: <reason>` per file; exits 0 when all are valid.
    Validate {
        /// Take the validator limits from this configuration file.
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    #[cfg(feature = "gateway")]
    /// The Microsoft ranges list: update it (cron) or check an address against it.
    Ranges {
        #[command(subcommand)]
        command: RangesCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    #[cfg(feature = "worker")]
    /// Mailboxes the worker keeps subscribed (the same table as the worker's API).
    Mailboxes {
        #[command(subcommand)]
        command: MailboxesCommand,
    },
    #[cfg(feature = "worker")]
    /// Stored events the sync step has not processed, and its dead letters.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    #[cfg(feature = "worker")]
    /// The sync step (processes B–F): ask for a calendar to be read again.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    #[cfg(feature = "demo")]
    /// End-to-end demonstration on loopback with throw-away certificate, token and database.
    Demo {
        /// Keep the temporary directory (certificate, database, logs) and print where it is.
        #[arg(long)]
        keep: bool,
    },
    #[cfg(feature = "demo")]
    /// Run the Exchange simulator (EWS, push delivery, OAuth, JSON control API) on loopback
    /// until SIGINT or SIGTERM.
    Simulate(Box<crate::exchange_sim::simulate::SimulateArgs>),
}

#[cfg(feature = "gateway")]
#[derive(Debug, Subcommand)]
pub enum RangesCommand {
    /// Fetch the Microsoft 365 endpoints feed and rewrite the ranges file (for cron).
    ///
    /// Exit status: 0 updated or already current, 2 feed unreachable or bad answer,
    /// 3 refused by a sanity check, 1 anything else.
    Update {
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Download even when the version did not change, and accept a large shrink.
        #[arg(long)]
        force: bool,
        /// Read the endpoints answer from a file (hosts without internet access).
        #[arg(long, requires = "version")]
        from_file: Option<PathBuf>,
        /// The feed version the file belongs to (with --from-file).
        #[arg(long, requires = "from_file")]
        version: Option<String>,
        /// Say what was done in detail.
        #[arg(long)]
        verbose: bool,
    },
    /// Say whether an address is admitted by the ranges file, and by which range.
    Check {
        address: String,
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[cfg(feature = "worker")]
#[derive(Debug, Subcommand)]
pub enum MailboxesCommand {
    /// Switch sync on for mailboxes (created when new), all in one transaction; the worker
    /// subscribes them within seconds, within its Subscribe rate.
    Add {
        /// Mailbox addresses.
        #[arg(required_unless_present = "file")]
        addresses: Vec<String>,
        /// Also every address in this file, one per line (`#` starts a comment).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Tenant name (the legacy callback URL carries it); kept when not given.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Switch sync off and forget the mailbox: its subscription is answered Unsubscribe.
    Remove {
        address: String,
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Every mailbox and where its subscription stands.
    List {
        /// One JSON object per line, as the API shows a mailbox.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[cfg(feature = "worker")]
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Events waiting for the sync step (with their attempts and last error), or the dead
    /// letters: events parked after `[sync] max_attempts` failures.
    List {
        /// The dead letters instead.
        #[arg(long)]
        dead: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Make a dead letter pending again (attempts start afresh); the worker handles it next,
    /// reading the item as it is now.
    Replay {
        id: i64,
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[cfg(feature = "worker")]
#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Read the mailbox's calendar again and repair both sides (the worker does it once the
    /// mailbox's subscription is active).
    Resync {
        mailbox: String,
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and check a configuration; print the effective configuration as TOML.
    Check {
        #[arg(long, env = "PUSHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Exit status for a configuration that cannot be used.
const EXIT_BAD_CONFIG: u8 = 2;

/// Loads the configuration or prints the one-line reason it cannot be used.
fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    load_config_or(path, EXIT_BAD_CONFIG)
}

fn load_config_or(path: Option<&Path>, status: u8) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("pushgate: {e}");
        ExitCode::from(status)
    })
}

fn exit_on_error(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, with the chain of causes: what failed and why.
            eprintln!("pushgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are not errors; a usage error exits 1 ("anything else" for cron),
            // never 2, which `ranges update` reserves for an unreachable feed.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        #[cfg(feature = "gateway")]
        Command::Gateway { config } => {
            let config = match load_config(config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::telemetry::init(&config.log);
            exit_on_error(crate::gateway::run(config))
        }
        #[cfg(feature = "worker")]
        Command::Worker { config } => {
            let config = match load_config(config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::telemetry::init(&config.log);
            exit_on_error(crate::worker::run(config))
        }
        Command::Validate { config, files } => {
            let config = match load_config(config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            validate_files(&config, &files)
        }
        #[cfg(feature = "gateway")]
        Command::Ranges { command } => match command {
            RangesCommand::Update {
                config,
                force,
                from_file,
                version,
                verbose,
            } => {
                // For cron, 2 means "feed unreachable"; a bad configuration is "anything else".
                let config = match load_config_or(config.as_deref(), crate::ranges::EXIT_OTHER) {
                    Ok(config) => config,
                    Err(code) => return code,
                };
                let options = crate::ranges::UpdateOptions {
                    force,
                    from_file,
                    version,
                    verbose,
                };
                ExitCode::from(crate::ranges::run_update(&config, &options))
            }
            RangesCommand::Check { address, config } => {
                let config = match load_config(config.as_deref()) {
                    Ok(config) => config,
                    Err(code) => return code,
                };
                ExitCode::from(crate::ranges::run_check(&config, &address))
            }
        },
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            #[allow(unused_mut)] // only the worker's part has a secret to hide
            let mut config = match load_config(config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            // What would stop the worker's start at the database: a bad sslmode, a missing
            // CA file (never connecting: the check runs anywhere).
            #[cfg(feature = "worker")]
            if let Err(error) = crate::store::check_database_url(&config.worker.database_url) {
                eprintln!("pushgate: worker.database_url: {error}");
                return ExitCode::from(2);
            }
            // The printed configuration is often pasted into tickets: no database password.
            #[cfg(feature = "worker")]
            {
                config.worker.database_url =
                    crate::store::redact_database_url(&config.worker.database_url);
            }
            match toml::to_string_pretty(&config) {
                Ok(text) => {
                    print!("{text}");
                    #[cfg(feature = "worker")]
                    println!("{}", callback_summary(&config));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pushgate: rendering the configuration: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "worker")]
        Command::Mailboxes { command } => {
            use crate::worker::admin::MailboxCommand;
            let (config, command) = match command {
                MailboxesCommand::Add {
                    addresses,
                    file,
                    tenant,
                    config,
                } => (
                    config,
                    MailboxCommand::Add {
                        addresses,
                        file,
                        tenant,
                    },
                ),
                MailboxesCommand::Remove { address, config } => {
                    (config, MailboxCommand::Remove { address })
                }
                MailboxesCommand::List { json, config } => (config, MailboxCommand::List { json }),
            };
            let config = match load_config(config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            exit_on_error(crate::worker::admin::run(&config, command))
        }
        #[cfg(feature = "worker")]
        Command::Events { command } => {
            use crate::sync::admin::SyncCommand as Run;
            let (config, command) = match command {
                EventsCommand::List {
                    dead,
                    limit,
                    config,
                } => (config, Run::ListEvents { dead, limit }),
                EventsCommand::Replay { id, config } => (config, Run::Replay { id }),
            };
            let config = match load_config(config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            exit_on_error(crate::sync::admin::run(&config, command))
        }
        #[cfg(feature = "worker")]
        Command::Sync {
            command: SyncCommand::Resync { mailbox, config },
        } => {
            let config = match load_config(config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            exit_on_error(crate::sync::admin::run(
                &config,
                crate::sync::admin::SyncCommand::Resync { mailbox },
            ))
        }
        #[cfg(feature = "demo")]
        Command::Demo { keep } => exit_on_error(crate::demo::run(keep)),
        #[cfg(feature = "demo")]
        Command::Simulate(args) => exit_on_error(crate::exchange_sim::simulate::run(
            *args,
            crate::telemetry::wait_for_shutdown_signal,
        )),
    }
}

/// The callback URL subscriptions register and the rule that chose it, as a TOML comment.
#[cfg(feature = "worker")]
fn callback_summary(config: &Config) -> String {
    match crate::subscriptions::CallbackUrl::from_config(&config.subscriptions) {
        Ok(url) => format!(
            "# callback URL: {} ({})",
            url.for_tenant(crate::store::mailboxes::DEFAULT_TENANT),
            url.rule.describe()
        ),
        Err(_) => "# callback URL: none (set [subscriptions] idp_root_url or endpoint_url before \
                   switching on [ews])"
            .to_string(),
    }
}

/// `pushgate validate`: the gateway's verdict per file, one line each.
fn validate_files(config: &Config, files: &[PathBuf]) -> ExitCode {
    let limits = crate::notification::Limits::from(&config.validator);
    let mut all_valid = true;
    for file in files {
        let label = file.display().to_string();
        let line = match std::fs::read(file) {
            Ok(body) => {
                let (line, valid) = crate::notification::verdict_line(&label, &body, &limits);
                all_valid &= valid;
                line
            }
            Err(e) => {
                all_valid = false;
                format!("{label}: invalid: unreadable: {e}")
            }
        };
        println!("{line}");
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
