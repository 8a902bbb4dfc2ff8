//! The whole product on loopback for the Exchange-side tests: the simulated Exchange (EWS over
//! TLS, OAuth, push delivery from 127.0.0.2 over TLS), the real gateway in front of the real
//! worker, and the worker's database (SQLite file or PostgreSQL schema). Exchange's clock and the
//! worker's clock run at the same compressed scale.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use pushgate::config::{Config, UnknownSubscriptions};
use pushgate::demo::wiring::{self, OauthClient};
use pushgate::exchange_sim::{SimHandle, Simulator};
use pushgate::store::{MailboxState, MailboxView, Store};
use pushgate::worker::{self, Tuning, WorkerHandle};

use crate::common::{Harness, Options, ALLOWED};
use crate::worker_support::{free_port, worker_config_with_api, TestDb};

pub const CLIENT_ID: &str = "pushgate-test-app";
pub const CLIENT_SECRET: &str = "test-client-secret-42";

/// How a stack is set up.
#[derive(Clone)]
pub struct StackOptions {
    /// Exchange's and the worker's clock: 0.01 makes a minute last 600 ms.
    pub time_scale: f64,
    /// StatusFrequency in minutes.
    pub status_frequency: u32,
    /// When the simulator sends the first StatusEvent after Subscribe (Exchange clock).
    pub first_status_after: Duration,
    pub mailboxes: Vec<String>,
    pub subscribe_rate: u32,
    /// Sets `[subscriptions]` (default: `endpoint_url` = the gateway's notification URL).
    pub callback: Callback,
    /// Start the gateway and point callbacks at it (off for tests of subscribing alone).
    pub gateway: bool,
}

/// Which rule names the callback URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Callback {
    /// Rule 1: `endpoint_url`, the gateway's `/api/webhooks/exchange?tenant=Default`.
    EndpointUrl,
    /// Rule 2: `use_legacy_endpoint` with `idp_root_url` = the gateway.
    Legacy,
    /// Rule 3: `idp_root_url` = the gateway.
    Root,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            time_scale: 0.01,
            status_frequency: 1,
            first_status_after: Duration::from_secs(30),
            mailboxes: Vec::new(),
            subscribe_rate: 200,
            callback: Callback::EndpointUrl,
            gateway: true,
        }
    }
}

pub struct Stack {
    pub sim: SimHandle,
    pub gateway: Option<Harness>,
    pub worker: Option<WorkerHandle>,
    /// The worker as the real `pushgate worker` process, for tests that SIGKILL it.
    pub process: Option<tokio::process::Child>,
    pub db: TestDb,
    pub config: Config,
    pub tuning: Tuning,
    pub options: StackOptions,
}

impl Stack {
    pub async fn start(db: TestDb, options: StackOptions) -> Stack {
        let worker_port = free_port();
        let gateway = if options.gateway {
            Some(
                Harness::with(Options {
                    upstream: Some(format!("http://127.0.0.1:{worker_port}")),
                    ..Options::default()
                })
                .await,
            )
        } else {
            None
        };
        let client = OauthClient {
            id: CLIENT_ID,
            secret: CLIENT_SECRET,
        };
        let sim = Simulator::start(wiring::simulator_options(
            options.time_scale,
            options.first_status_after,
            gateway.as_ref().map(|g| g.ca_pem.clone()),
            ALLOWED,
            options.mailboxes.clone(),
            &client,
        ))
        .await
        .expect("simulator starts");

        let dir = db.dir().to_path_buf();
        let mut config = worker_config_with_api(&dir, &db.url());
        config.worker.listen = format!("127.0.0.1:{worker_port}");
        config.worker.unknown_subscriptions = UnknownSubscriptions::Unsubscribe;
        config.worker.time_scale = options.time_scale;
        wiring::point_ews_at(&mut config, &sim, &dir, &client).expect("[ews] wired");
        let s = &mut config.subscriptions;
        s.status_frequency = options.status_frequency;
        s.subscribe_rate = options.subscribe_rate;
        let root = match &gateway {
            Some(g) => format!("https://127.0.0.1:{}", g.tls_addr().port()),
            // Nothing listens there: subscriptions are made, deliveries fail.
            None => format!("https://127.0.0.1:{}", free_port()),
        };
        match options.callback {
            Callback::EndpointUrl => {
                s.endpoint_url = format!("{root}/api/webhooks/exchange?tenant=Default")
            }
            Callback::Legacy => {
                s.idp_root_url = root;
                s.use_legacy_endpoint = true;
            }
            Callback::Root => s.idp_root_url = root,
        }
        config.check().expect("stack configuration is valid");
        let tuning = wiring::compressed_tuning();
        let mut stack = Stack {
            sim,
            gateway,
            worker: None,
            process: None,
            db,
            config,
            tuning,
            options,
        };
        stack.start_worker().await;
        stack
    }

    pub async fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "worker already running");
        let handle = worker::start_with(self.config.clone(), self.tuning.clone())
            .await
            .expect("worker starts");
        self.worker = Some(handle);
    }

    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await.expect("worker stops");
        }
    }

    pub fn worker(&self) -> &WorkerHandle {
        self.worker.as_ref().expect("worker running")
    }

    /// The worker's listener (the same port in-process and as a process).
    pub fn api_addr(&self) -> std::net::SocketAddr {
        match &self.worker {
            Some(worker) => worker.listen_addr,
            None => self.config.worker.listen.parse().expect("listen address"),
        }
    }

    /// Runs the worker as the real `pushgate worker` process on the stack's configuration (the
    /// in-process worker, if running, is stopped first); returns once its health check answers.
    pub async fn start_worker_process(&mut self) {
        self.stop_worker().await;
        assert!(self.process.is_none(), "worker process already running");
        let dir = self.db.dir().to_path_buf();
        let config_file = dir.join("worker-process.toml");
        if !config_file.exists() {
            let metrics = free_port();
            self.config.worker.metrics_listen = format!("127.0.0.1:{metrics}");
            let text = toml::to_string(&self.config).expect("configuration as TOML");
            std::fs::write(&config_file, text).unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("worker-process.log"))
            .unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .args(["worker", "--config"])
            .arg(&config_file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pushgate worker");
        self.process = Some(child);
        let health: std::net::SocketAddr = self.config.worker.metrics_listen.parse().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(answer) = crate::worker_support::get(health, "/healthz").await {
                if answer.status == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker process did not come up; log: {}",
                std::fs::read_to_string(dir.join("worker-process.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the worker process gets no chance to finish or release anything.
    pub async fn kill_worker_process(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.kill().await.expect("SIGKILL the worker");
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        self.db.inspect().await
    }

    /// An Exchange-clock span on the real clock.
    pub fn scaled(&self, exchange: Duration) -> Duration {
        exchange.mul_f64(self.options.time_scale)
    }

    /// Switches sync on through the API.
    pub async fn sync_on(&self, address: &str) {
        let answer = crate::worker_support::api(
            self.api_addr(),
            "PUT",
            &format!("/api/v1/mailboxes/{address}"),
            Some(crate::worker_support::API_TOKEN),
            Some(r#"{"sync": true, "tenant": "Default"}"#),
        )
        .await
        .unwrap();
        assert!(matches!(answer.status, 200 | 201), "{answer:?}");
    }

    pub async fn sync_off(&self, address: &str) {
        let answer = crate::worker_support::api(
            self.worker().listen_addr,
            "PUT",
            &format!("/api/v1/mailboxes/{address}"),
            Some(crate::worker_support::API_TOKEN),
            Some(r#"{"sync": false}"#),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }

    pub async fn mailbox(&self, address: &str) -> MailboxView {
        self.store()
            .await
            .mailbox(address)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no mailbox {address}"))
    }

    /// Waits (bounded) until `check` holds for the mailbox; returns it.
    pub async fn wait_mailbox(
        &self,
        address: &str,
        what: &str,
        check: impl Fn(&MailboxView) -> bool,
    ) -> MailboxView {
        let store = self.store().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let view = store.mailbox(address).await.unwrap();
            if let Some(view) = view.filter(|v| check(v)) {
                return view;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{address}: {what} did not happen within {WAIT:?}; mailbox: {:?}",
                    store.mailbox(address).await.unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the mailbox is active on a subscription the simulator has alive, and Exchange
    /// has been heard from on it.
    pub async fn wait_active_and_heard(&self, address: &str) -> MailboxView {
        self.wait_mailbox(address, "active and heard from", |v| {
            v.mailbox.state == MailboxState::Active
                && v.subscription
                    .as_ref()
                    .is_some_and(|s| s.last_notification_at.is_some())
        })
        .await
    }

    pub async fn stop(mut self) {
        self.kill_worker_process().await;
        self.stop_worker().await;
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
        self.sim.shutdown().await;
    }
}

/// Longest any single expectation may take to come true.
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits (bounded) until `check` returns true.
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
