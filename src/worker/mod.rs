//! The worker (intranet side): the notification endpoint behind the gateway that stores every
//! notification durably before it answers, the metrics and health listener, and the background
//! jobs (backlog gauge, retention). Storage itself lives in `crate::store`.

pub mod admin;
pub mod api;
mod housekeeping;
mod ingest;
pub mod metrics;
pub mod rules;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Config;
use crate::ews::{EwsClient, EwsMetrics, EwsSettings};
use crate::notification::Limits;
use crate::store::{self, BatchObserver, GroupCommitOptions, GroupCommitter, Store};
use crate::subscriptions::{
    CallbackUrl, ManagerOptions, Subscriber, SubscriptionManager, SubscriptionMetrics, Timing,
};
use crate::sync::{SyncMetrics, SyncOptions, SyncStep};
use ingest::IngestState;
use metrics::WorkerMetrics;

pub use ingest::MAX_BODY_BYTES;

/// Timings the configuration file does not carry; [`start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How often `pushgate_worker_backlog_events` is refreshed.
    pub backlog_interval: Duration,
    /// How often processed events older than `retention_days` are purged.
    pub retention_interval: Duration,
    /// Longest a request waits for its commit before it is answered 503 (below the gateway's
    /// upstream timeout, far below Exchange's 60 s).
    pub answer_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Longest a notification for an unknown subscription is held while one of the worker's
    /// Subscribe calls is in flight (Exchange may deliver before the call's answer is stored).
    pub unknown_hold: Duration,
    /// Most Subscribe calls in flight at once.
    pub max_subscribe_in_flight: usize,
    /// How long a mailbox is held by this worker while its Subscribe runs; longer than a call
    /// can take, so another replica takes over only from a worker that died.
    pub subscribe_lease: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            backlog_interval: Duration::from_secs(5),
            retention_interval: Duration::from_secs(3600),
            answer_timeout: Duration::from_secs(25),
            shutdown_grace: Duration::from_secs(10),
            unknown_hold: Duration::from_secs(5),
            max_subscribe_in_flight: 8,
            subscribe_lease: Duration::from_secs(120),
        }
    }
}

/// A running worker.
pub struct WorkerHandle {
    pub listen_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    metrics_server: JoinHandle<std::io::Result<()>>,
    committer: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
    manager: Option<JoinHandle<()>>,
    sync: Option<JoinHandle<()>>,
    store: Arc<dyn Store>,
    grace: Duration,
}

/// Reads the token file, opens the database (running its migrations), binds both listeners
/// (port 0 allowed) and spawns the tasks.
pub async fn start(config: Config) -> anyhow::Result<WorkerHandle> {
    start_with(config, Tuning::default()).await
}

/// [`start`] with explicit timings.
pub async fn start_with(config: Config, tuning: Tuning) -> anyhow::Result<WorkerHandle> {
    start_with_subscriber(config, tuning, None).await
}

/// [`start_with`], subscribing the synced mailboxes through `subscriber`. With `None`, the EWS
/// client of `[ews]` subscribes them; without `[ews] url` nothing does (the worker only ingests
/// and serves the API).
pub async fn start_with_subscriber(
    config: Config,
    tuning: Tuning,
    subscriber: Option<Arc<dyn Subscriber>>,
) -> anyhow::Result<WorkerHandle> {
    let worker = &config.worker;
    let (token_file, token) = crate::token_file::TokenFile::open(&worker.gateway_token_file)
        .context("worker.gateway_token_file")?;
    let api_token = if worker.api_token_file.as_os_str().is_empty() {
        None
    } else {
        let api_token = crate::config::read_token_file(&worker.api_token_file)
            .context("worker.api_token_file")?;
        if api_token == token {
            anyhow::bail!(
                "worker.api_token_file holds the gateway's token: each door needs its own secret"
            );
        }
        Some(rules::BearerToken::new(&api_token))
    };
    let ews_settings = EwsSettings::from_config(&config.ews).context("[ews]")?;
    let callback = if subscriber.is_some() || ews_settings.is_some() {
        let callback = CallbackUrl::from_config(&config.subscriptions)
            .map_err(|e| anyhow::anyhow!("configuration: `{}`: {}", e.key, e.problem))?;
        Some(callback)
    } else {
        None
    };
    let listen: SocketAddr = worker
        .listen
        .parse()
        .with_context(|| format!("worker.listen {:?} is not an address:port", worker.listen))?;
    let metrics_listen: SocketAddr = worker.metrics_listen.parse().with_context(|| {
        format!(
            "worker.metrics_listen {:?} is not an address:port",
            worker.metrics_listen
        )
    })?;
    let store = store::open(&worker.database_url).await.with_context(|| {
        format!(
            "opening {}",
            store::redact_database_url(&worker.database_url)
        )
    })?;
    // Claims and leases are owned by `INSTANCE/RUN`: a restarted worker ends its previous run's
    // at once (a SIGKILL left them to expire, which takes minutes), never another replica's.
    let instance = worker.instance_name();
    let owner_prefix = format!("{instance}/");
    // The sync step and the subscription manager lease apart (both take mailbox leases).
    let run_owner = |part: &str| format!("{owner_prefix}{}-{part}", uuid::Uuid::new_v4());
    match store.release_leases_of_previous_run(&owner_prefix).await {
        Ok(0) => {}
        Ok(released) => tracing::info!(
            instance = %instance,
            released,
            "took back the claims and leases a previous run of this worker left behind"
        ),
        // Not fatal: the leases expire on their own.
        Err(error) => tracing::warn!(
            instance = %instance,
            error = %error,
            "could not release the claims of a previous run; they expire on their own"
        ),
    }
    let metrics = Arc::new(WorkerMetrics::new().context("registering worker metrics")?);
    let ews_client = match ews_settings {
        Some(settings) => {
            let ews_metrics =
                EwsMetrics::register(metrics.registry()).context("registering EWS metrics")?;
            Some(
                EwsClient::with_metrics(settings, Some(ews_metrics))
                    .context("starting the EWS client")?,
            )
        }
        None => None,
    };
    let subscriber = match (subscriber, &ews_client) {
        (Some(subscriber), _) => Some(subscriber),
        (None, Some(client)) => Some(Arc::new(client.clone()) as Arc<dyn Subscriber>),
        (None, None) => None,
    };
    let clock = Clock::scaled(worker.time_scale);
    // Processes B-F run wherever the worker can call EWS.
    let sync = match &ews_client {
        Some(client) => {
            let sync_metrics =
                Arc::new(SyncMetrics::new(metrics.registry()).context("registering sync metrics")?);
            Some(SyncStep::new(
                store.clone(),
                client.clone(),
                SyncOptions::from_config(
                    &config.sync,
                    clock,
                    run_owner("sync"),
                    config.ews.timeout,
                ),
                Some(sync_metrics),
            ))
        }
        None => None,
    };
    // Stored events wake the sync step's event loop.
    let observer: Arc<dyn BatchObserver> = match &sync {
        Some(sync) => Arc::new(WakeOnCommit {
            metrics: metrics.clone(),
            wake: sync.events_wake(),
        }),
        None => metrics.clone(),
    };

    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding worker.listen {listen}"))?;
    let metrics_listener = TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("binding worker.metrics_listen {metrics_listen}"))?;
    let listen_addr = listener.local_addr().context("worker.listen address")?;
    let metrics_addr = metrics_listener
        .local_addr()
        .context("worker.metrics_listen address")?;

    let (committer, committer_task) = GroupCommitter::spawn(
        store.clone(),
        GroupCommitOptions {
            wait: worker.group_commit_wait,
            max: worker.group_commit_max,
            unknown: worker.unknown_subscriptions.into(),
        },
        Some(observer),
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let manager = match (subscriber, callback) {
        (Some(subscriber), Some(callback)) => {
            let subscription_metrics = Arc::new(
                SubscriptionMetrics::new(metrics.registry())
                    .context("registering subscription metrics")?,
            );
            let status_frequency =
                Duration::from_secs(60 * u64::from(config.subscriptions.status_frequency));
            subscription_metrics.set_status_frequency(status_frequency);
            Some(SubscriptionManager::new(
                store.clone(),
                subscriber,
                ManagerOptions {
                    timing: Timing {
                        status_frequency,
                        clock,
                        started_at: time::OffsetDateTime::now_utc(),
                    },
                    callback,
                    subscribe_rate: config.subscriptions.subscribe_rate,
                    max_in_flight: tuning.max_subscribe_in_flight,
                    lease: tuning.subscribe_lease,
                    owner: run_owner("subscribe"),
                },
                Some(subscription_metrics),
            ))
        }
        _ => None,
    };
    let state = Arc::new(IngestState {
        token: arc_swap::ArcSwap::from_pointee(rules::RotatingToken::new(&token)),
        token_file: std::sync::Mutex::new(token_file),
        token_grace: worker.token_grace,
        paths: worker.notification_paths(&config.gateway).to_vec(),
        limits: Limits::from(&config.validator),
        committer,
        metrics: metrics.clone(),
        answer_timeout: tuning.answer_timeout,
        store: store.clone(),
        unknown_hold: if manager.is_some() {
            tuning.unknown_hold
        } else {
            Duration::ZERO
        },
    });
    let api_state = Arc::new(api::ApiState {
        token: api_token,
        store: store.clone(),
        manager: manager.clone(),
        outbox_wake: sync.as_ref().map(SyncStep::outbox_wake),
    });

    tokio::spawn(ingest::watch_token_file(state.clone(), shutdown_rx.clone()));
    let app = api::router(api_state).merge(
        axum::Router::new()
            .fallback(ingest::handle)
            .with_state(state),
    );
    let server = tokio::spawn(serve(listener, app, shutdown_rx.clone()));
    let mut metrics_shutdown = shutdown_rx.clone();
    let metrics_server = tokio::spawn(crate::metrics::serve_metrics(
        metrics_listener,
        metrics.registry().clone(),
        metrics::database_health(store.clone()),
        async move {
            let _ = metrics_shutdown.wait_for(|stop| *stop).await;
        },
    ));
    let housekeeping = tokio::spawn(housekeeping::run(
        store.clone(),
        metrics,
        housekeeping::Schedule {
            backlog_interval: tuning.backlog_interval,
            retention_interval: tuning.retention_interval,
            retention_days: worker.retention_days,
        },
        shutdown_rx.clone(),
    ));
    let sync_task = sync.map(|sync| tokio::spawn(sync.run(shutdown_rx.clone())));
    let manager_task = manager.map(|manager| tokio::spawn(manager.run(shutdown_rx)));
    tracing::info!(
        listen = %listen_addr,
        metrics = %metrics_addr,
        database = store.backend(),
        unknown_subscriptions = ?worker.unknown_subscriptions,
        "worker started"
    );
    Ok(WorkerHandle {
        listen_addr,
        metrics_addr,
        shutdown,
        server,
        metrics_server,
        committer: committer_task,
        housekeeping,
        manager: manager_task,
        sync: sync_task,
        store,
        grace: tuning.shutdown_grace,
    })
}

/// The worker's commit metrics, plus a wake-up for the sync step after every commit that stored
/// something (a failed commit stored nothing).
struct WakeOnCommit {
    metrics: Arc<WorkerMetrics>,
    wake: Arc<tokio::sync::Notify>,
}

impl BatchObserver for WakeOnCommit {
    fn batch_committed(&self, size: usize, elapsed: Duration, ok: bool) {
        self.metrics.batch_committed(size, elapsed, ok);
        if ok {
            self.wake.notify_one();
        }
    }
}

async fn serve(
    listener: TcpListener,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

impl WorkerHandle {
    /// Graceful stop: no new connections; requests in flight get their commit and answer
    /// (bounded by the shutdown grace); queued commits finish; then the database is closed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let mut server = self.server;
        match tokio::time::timeout(self.grace, &mut server).await {
            Ok(result) => result
                .context("worker server task")?
                .context("worker server")?,
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "requests still open after the grace period; closing them");
                server.abort();
            }
        }
        // The server held the last handles on the committer: it now drains its queue and ends.
        self.committer.await.context("group committer task")?;
        let mut metrics_server = self.metrics_server;
        if tokio::time::timeout(self.grace, &mut metrics_server)
            .await
            .is_err()
        {
            metrics_server.abort();
        }
        let _ = self.housekeeping.await;
        if let Some(manager) = self.manager {
            let mut manager = manager;
            if tokio::time::timeout(self.grace, &mut manager)
                .await
                .is_err()
            {
                manager.abort();
            }
        }
        if let Some(mut sync) = self.sync {
            // Event work in progress is given back at once; calendar writes in flight finish
            // (each within the EWS timeout) so their answers are recorded.
            if tokio::time::timeout(self.grace, &mut sync).await.is_err() {
                sync.abort();
            }
        }
        drop(self.store);
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Blocking entry point of `pushgate worker`: runs until SIGINT or SIGTERM, then shuts down
/// gracefully.
pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pushgate-worker")
        .build()
        .context("building the worker's runtime")?;
    runtime.block_on(async move {
        let handle = start(config).await?;
        wait_for_stop_signal().await?;
        tracing::info!("stop signal received; shutting down");
        handle.shutdown().await
    })
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate =
            signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
