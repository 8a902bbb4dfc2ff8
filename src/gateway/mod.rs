//! The gateway in the DMZ: TLS termination, the source allowlist before TLS, the request rules,
//! the schema check of every body before any upstream is chosen, forwarding to the worker, and the
//! gateway's metrics, access log and health check. Uses `notification` and `allowlist`, never
//! `store` or `worker`.

pub mod access_log;
pub mod body;
pub mod client;
pub mod forward;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod proxy_protocol;
pub mod reject;
pub mod rules;
pub mod tls;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora_core::listeners::tls::Acceptor;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::allowlist::{Allowlist, AllowlistMetrics};
use crate::config::{parse_cidrs, parse_upstream, Config};
use crate::notification::Limits;
use crate::ranges::monitor::UpdaterMetrics;
use crate::ranges::state::StateDir;
use crate::token_file::{TokenCheck, TokenFile};
use client::NetList;
use limits::{LimitPolicy, SourceLimits};
use metrics::GatewayMetrics;
use rules::RulePolicy;
use tls::{CertCheck, CertWatcher, ReloadingCertResolver};
use upstream::{WorkerPool, WorkerTarget};

/// State every connection of the gateway reads; built once from the configuration.
pub struct Shared {
    pub(crate) allowlist: Allowlist,
    pub(crate) trusted: NetList,
    pub(crate) probes: NetList,
    pub(crate) proxy_protocol: bool,
    pub(crate) rules: RulePolicy,
    pub(crate) limits: Limits,
    pub(crate) max_body_bytes: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    /// The worker's address as forwarded requests name it in `Host`.
    pub(crate) upstream_host: String,
    /// `Bearer <token>` for the worker, replaced when the token file changes.
    pub(crate) authorization: Arc<ArcSwap<String>>,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) access_log: access_log::AccessLog,
    pub(crate) connection_log: RateLimitedLog,
    /// Requests per connection from trusted proxies (1: no keep-alive).
    pub(crate) keepalive_max_requests: u32,
    pub(crate) keepalive_idle_timeout: Duration,
    pub(crate) source_limits: Arc<SourceLimits>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Whether the allowlist loaded now admits `ip`.
    pub fn admits(&self, ip: IpAddr) -> bool {
        // The set looks `::ffff:a.b.c.d` up as IPv4 itself.
        self.allowlist.current().set.contains(ip)
    }

    /// Healthy while a non-empty list is loaded (a reload never swaps in an empty one).
    pub fn healthy(&self) -> bool {
        !self.allowlist.current().set.is_empty()
    }
}

/// Connection-level refusals can come by the thousand from scanners; they are always counted,
/// but logged at most a few times a second, with the number left out.
pub struct RateLimitedLog {
    window: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    const PER_SECOND: u64 = 5;

    pub fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    pub fn note(&self, reason: &str, peer: SocketAddr) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::info!(%peer, reason, suppressed_before = suppressed, "connection refused");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new()
    }
}

/// A running gateway: its bound addresses and the means to stop it.
pub struct GatewayHandle {
    /// The TLS listener, when configured.
    pub tls_addr: Option<SocketAddr>,
    /// The plain-HTTP listener, when configured.
    pub plain_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    pub allowlist: Allowlist,
    pub metrics: GatewayMetrics,
    shutdown: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    grace: Duration,
}

impl GatewayHandle {
    /// Stops accepting, lets connections in flight finish (up to the grace period), stops the
    /// watchers and the metrics listener.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.accept_tasks {
            let _ = task.await;
        }
        let permits = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(self.grace, self.connections.acquire_many(permits)).await {
            Ok(_) => {}
            Err(_) => tracing::warn!("connections still open after the grace period; closing"),
        }
        for task in self.background {
            task.abort();
            let _ = task.await;
        }
    }
}

/// What every accept loop of the gateway is started with: the serving runtimes, each with the
/// proxy (and so the pool of connections to the worker) that all its accept loops share.
struct ServeSpec {
    runtimes: Vec<(tokio::runtime::Handle, Arc<WorkerPool>)>,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl ServeSpec {
    /// One accept loop per serving runtime on the same listening socket: the kernel hands each
    /// connection to one of them, and it is served there to the end, with no task moving between
    /// threads (as nginx's workers, or pingora without work stealing). The pooled connections to
    /// the worker a runtime reuses are registered with its own event loop.
    fn spawn_accept_loops(
        &self,
        listener: TcpListener,
        tls: Option<Arc<Acceptor>>,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let listener = listener
            .into_std()
            .context("taking the listening socket off the runtime")?;
        let mut tasks = Vec::with_capacity(self.runtimes.len());
        for (runtime, pool) in &self.runtimes {
            let socket = listener
                .try_clone()
                .context("sharing the listening socket")?;
            let (shared, pool, connections, shutdown, tls) = (
                self.shared.clone(),
                pool.clone(),
                self.connections.clone(),
                self.shutdown.clone(),
                tls.clone(),
            );
            tasks.push(runtime.spawn(async move {
                // Registered with the event loop of the runtime that runs this loop.
                let listener = match TcpListener::from_std(socket) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(error = %e, "listening socket refused by a serving runtime");
                        return;
                    }
                };
                let spec = listener::ListenerSpec { listener, tls };
                listener::accept_loop(spec, shared, pool, connections, shutdown).await;
            }));
        }
        Ok(tasks)
    }
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Starts every part of the gateway on the current tokio runtime. Addresses may use port 0.
pub async fn start(config: &Config) -> anyhow::Result<GatewayHandle> {
    start_on(config, &[tokio::runtime::Handle::current()]).await
}

/// Starts the gateway: its connections are served on `serving` (each runtime accepts from the
/// same listening sockets and keeps its own pool of connections to the worker), its watchers and
/// metrics listener on the current runtime.
pub async fn start_on(
    config: &Config,
    serving: &[tokio::runtime::Handle],
) -> anyhow::Result<GatewayHandle> {
    tls::install_process_provider();
    anyhow::ensure!(!serving.is_empty(), "no runtime to serve connections on");
    let g = &config.gateway;
    let upstream = parse_upstream(&g.upstream).map_err(anyhow::Error::msg)?;
    let (token_file, token) = TokenFile::open(&g.upstream_token_file)?;
    let metrics = GatewayMetrics::new().context("registering gateway metrics")?;
    let allowlist_metrics =
        AllowlistMetrics::register(&metrics.registry).context("registering allowlist metrics")?;
    let allowlist =
        Allowlist::load(&g.ranges_file, allowlist_metrics).context("loading the ranges file")?;
    let access_log = access_log::AccessLog::open(&g.access_log, metrics.access_log_dropped.clone())
        .with_context(|| format!("opening the access log {}", g.access_log))?;

    let authorization = Arc::new(ArcSwap::from_pointee(format!("Bearer {token}")));
    let shared = Arc::new(Shared {
        authorization: authorization.clone(),
        allowlist: allowlist.clone(),
        trusted: NetList::new(parse_cidrs(&g.trusted_proxies).map_err(anyhow::Error::msg)?),
        probes: NetList::new(parse_cidrs(&g.probe_ranges).map_err(anyhow::Error::msg)?),
        proxy_protocol: g.proxy_protocol,
        rules: RulePolicy {
            paths: g.paths.clone(),
            max_body_bytes: g.max_body_bytes as u64,
        },
        limits: Limits::from(&config.validator),
        max_body_bytes: g.max_body_bytes,
        handshake_timeout: g.handshake_timeout,
        header_timeout: g.header_timeout,
        body_timeout: g.body_timeout,
        upstream_host: upstream.addr.to_string(),
        metrics: metrics.clone(),
        access_log,
        connection_log: RateLimitedLog::new(),
        keepalive_max_requests: g.keepalive_max_requests,
        keepalive_idle_timeout: g.keepalive_idle_timeout,
        source_limits: Arc::new(SourceLimits::new(LimitPolicy {
            rate_per_second: g.rate_limit_per_source,
            burst: g.rate_limit_burst,
            connections_per_source: g.max_connections_per_source,
        })),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(g.max_connections));
    let target = WorkerTarget {
        addr: upstream.addr,
        connect_timeout: g.upstream_connect_timeout,
        exchange_timeout: g.upstream_timeout,
        // Pooled connections to the worker are reused for a while, not forever.
        idle_timeout: Duration::from_secs(30),
    };
    let serve = ServeSpec {
        runtimes: serving
            .iter()
            .map(|runtime| (runtime.clone(), Arc::new(WorkerPool::new(target))))
            .collect(),
        shared: shared.clone(),
        connections: connections.clone(),
        shutdown: shutdown_rx.clone(),
    };

    let mut accept_tasks = Vec::new();
    let mut background = Vec::new();

    // Bound first, served last: a connection is accepted only once every other part (metrics,
    // watchers) is up, and nothing is left serving if one of them fails to start.
    let mut listeners = Vec::new();
    let mut tls_addr = None;
    if !g.listen.is_empty() {
        let key = tls::load_certified_key(&g.tls_cert, &g.tls_key)
            .context("loading the TLS certificate")?;
        let expiry = tls::expiry_timestamp(&key);
        let resolver = Arc::new(ReloadingCertResolver::new(key));
        metrics.tls_certificate_loaded_timestamp.set(unix_now());
        set_expiry(&metrics, expiry);
        let server_config = tls::server_config(resolver.clone())?;
        let acceptor = Arc::new(Acceptor::from_server_config(server_config));
        let listener = bind(&g.listen, "TLS").await?;
        tls_addr = Some(listener.local_addr()?);
        listeners.push((listener, Some(acceptor)));
        background.push(spawn_cert_watcher(
            CertWatcher::new(resolver, g.tls_cert.clone(), g.tls_key.clone()),
            g.tls_reload_interval,
            metrics.clone(),
        ));
    }
    let mut plain_addr = None;
    if !g.plain_listen.is_empty() {
        let listener = bind(&g.plain_listen, "plain HTTP").await?;
        plain_addr = Some(listener.local_addr()?);
        listeners.push((listener, None));
    }

    let (metrics_listener, metrics_addr) = crate::metrics::bind(&g.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener on {}", g.metrics_listen))?;
    let health_shared = shared.clone();
    let mut metrics_shutdown = shutdown_rx.clone();
    background.push(tokio::spawn(async move {
        let served = crate::metrics::serve_metrics(
            metrics_listener,
            metrics.registry.clone(),
            Arc::new(move || {
                let healthy = health_shared.healthy();
                Box::pin(async move {
                    if healthy {
                        Ok(())
                    } else {
                        Err("no ranges list loaded".to_string())
                    }
                })
            }),
            async move {
                let _ = metrics_shutdown.changed().await;
            },
        )
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics listener failed");
        }
    }));
    background.push(spawn_token_watcher(token_file, authorization));
    let sweep_limits = shared.source_limits.clone();
    background.push(tokio::spawn(async move {
        // Buckets of senders gone quiet are forgotten, so the table holds only recent ones.
        let mut ticker = tokio::time::interval(Duration::from_secs(10));
        loop {
            ticker.tick().await;
            sweep_limits.sweep(Instant::now());
        }
    }));
    let updater_metrics = UpdaterMetrics::register(&shared.metrics.registry)
        .context("registering the ranges updater metrics")?;
    background.push(spawn_updater_watcher(
        StateDir::new(&config.ranges.state_dir),
        g.ranges_reload_interval,
        updater_metrics,
    ));
    let mut reload_shutdown = shutdown_rx.clone();
    background.push(crate::allowlist::spawn_reloader(
        allowlist.clone(),
        g.ranges_reload_interval,
        async move {
            let _ = reload_shutdown.changed().await;
        },
    ));

    for (listener, tls) in listeners {
        accept_tasks.extend(serve.spawn_accept_loops(listener, tls)?);
    }
    tracing::info!(
        tls = tls_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        plain = plain_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        metrics = %metrics_addr,
        upstream = %upstream.addr,
        allowlist_entries = allowlist.current().set.len(),
        allowlist_version = allowlist.current().version().unwrap_or("unknown"),
        "gateway started"
    );
    Ok(GatewayHandle {
        tls_addr,
        plain_addr,
        metrics_addr,
        allowlist,
        metrics: shared.metrics.clone(),
        shutdown: shutdown_tx,
        accept_tasks,
        background,
        connections,
        max_connections: g.max_connections,
        grace: g.shutdown_grace,
    })
}

/// Every `interval`, runs `check` on `state` off the runtime's worker threads (it reads files)
/// and hands its outcome to `react`. Stops, saying so, only if `check` panicked.
fn spawn_file_poll<S, O>(
    what: &'static str,
    interval: Duration,
    mut state: S,
    check: fn(&mut S) -> O,
    mut react: impl FnMut(&S, O) + Send + 'static,
) -> JoinHandle<()>
where
    S: Send + 'static,
    O: Send + 'static,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let checked = tokio::task::spawn_blocking(move || {
                let outcome = check(&mut state);
                (state, outcome)
            })
            .await;
            match checked {
                Ok((returned, outcome)) => {
                    state = returned;
                    react(&state, outcome);
                }
                Err(e) => {
                    tracing::error!(error = %e, "{what} stopped");
                    return;
                }
            }
        }
    })
}

fn spawn_cert_watcher(
    watcher: CertWatcher,
    interval: Duration,
    metrics: GatewayMetrics,
) -> JoinHandle<()> {
    spawn_file_poll(
        "certificate watcher",
        interval,
        watcher,
        CertWatcher::check,
        move |watcher, outcome| match outcome {
            CertCheck::Unchanged => {}
            CertCheck::Reloaded => {
                metrics.tls_reloads.with_label_values(&["reloaded"]).inc();
                metrics.tls_certificate_loaded_timestamp.set(unix_now());
                set_expiry(&metrics, tls::expiry_timestamp(&watcher.current()));
                tracing::info!("TLS certificate reloaded");
            }
            CertCheck::Refused(e) => {
                metrics.tls_reloads.with_label_values(&["refused"]).inc();
                tracing::error!(error = %e, "new TLS certificate refused; the previous one stays in use");
            }
        },
    )
}

/// Shows what the ranges updater recorded in its state directory (same host, same working
/// directory), so that a failing or stopped updater is seen while its last list is in force.
fn spawn_updater_watcher(
    state: StateDir,
    interval: Duration,
    metrics: UpdaterMetrics,
) -> JoinHandle<()> {
    spawn_file_poll(
        "ranges updater watcher",
        interval.max(Duration::from_millis(100)),
        state,
        |state| state.run_record(),
        move |_, record| metrics.set(&record),
    )
}

fn set_expiry(metrics: &GatewayMetrics, expiry: Option<i64>) {
    match expiry {
        Some(expiry) => metrics.tls_certificate_expiry_timestamp.set(expiry),
        None => tracing::warn!(
            "the certificate's expiry date cannot be read; the expiry metric keeps its last value"
        ),
    }
}

/// Re-reads the upstream token file when it changes: forwarded requests carry the new token from
/// then on (the worker accepts the previous one for `[worker] token_grace`).
fn spawn_token_watcher(file: TokenFile, authorization: Arc<ArcSwap<String>>) -> JoinHandle<()> {
    spawn_file_poll(
        "token watcher",
        crate::token_file::CHECK_INTERVAL,
        file,
        TokenFile::check,
        move |_, outcome| match outcome {
            TokenCheck::Unchanged => {}
            TokenCheck::Rotated(token) => {
                authorization.store(Arc::new(format!("Bearer {token}")));
                tracing::info!("upstream token file changed; forwarding with the new token");
            }
            TokenCheck::Refused(e) => tracing::error!(
                error = %e,
                "new upstream token refused; the previous one stays in use"
            ),
        },
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `pushgate gateway`: runs until SIGINT or SIGTERM, then shuts down gracefully.
pub fn run(config: Config) -> anyhow::Result<()> {
    let threads = if config.gateway.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        config.gateway.threads
    };
    let serving = ServingThreads::start(threads)?;
    // The watchers, the metrics listener and the signal handling: light work, one thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let outcome = runtime.block_on(async {
        let handle = start_on(&config, serving.handles()).await?;
        crate::telemetry::wait_for_shutdown_signal().await;
        tracing::info!("shutting down");
        handle.shutdown().await;
        anyhow::Ok(())
    });
    serving.stop();
    outcome
}

/// Threads that each drive a single-threaded runtime serving connections. A connection never
/// leaves the thread that accepted it: no work stealing between cores, no wake-up sent to
/// another core for a task's next step.
pub struct ServingThreads {
    handles: Vec<tokio::runtime::Handle>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ServingThreads {
    /// Starts `count` serving threads (at least one).
    pub fn start(count: usize) -> anyhow::Result<Self> {
        let mut serving = ServingThreads {
            handles: Vec::new(),
            stop: Vec::new(),
            threads: Vec::new(),
        };
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a serving runtime")?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            serving.handles.push(runtime.handle().clone());
            serving.stop.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("pushgate-gw-{index}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })
                .context("starting a serving thread")?;
            serving.threads.push(thread);
        }
        Ok(serving)
    }

    /// The runtimes to pass to [`start_on`].
    pub fn handles(&self) -> &[tokio::runtime::Handle] {
        &self.handles
    }

    /// Ends every serving runtime (after the gateway's own graceful shutdown); blocks until
    /// their threads have ended.
    pub fn stop(self) {
        drop(self.stop);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}
