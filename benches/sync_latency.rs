//! Process F under load, end to end: an Outlook-side change of a calendar item in the simulated
//! Exchange until the reservation is updated in the worker's database, at a paced 100 changes/s
//! spread over 1,000 mailboxes, with 20 ms of (real-time) EWS latency. SQLite, then PostgreSQL
//! (when a server answers on 127.0.0.1:5432 or at PUSHGATE_TEST_POSTGRES_URL; SKIPPED otherwise).
//!
//! The stack is the tests' (tests/exchange_support): the simulator (EWS over TLS, OAuth, push
//! delivery from 127.0.0.2 over TLS), the real gateway, the real worker (subscription manager,
//! ingest, sync step) and a real database, all on loopback in this process. Unlike the tests the
//! clock is not compressed: heartbeats, leases, polls and back-offs run on production time, and
//! the worker runs with its default tuning.
//!
//! Set-up (not measured): sync switched on for every mailbox through the API, each subscribed by
//! the worker and its calendar resynchronised; two reservations per mailbox booked through the API
//! with `source = addin`, their items created in the simulator with the reservation id (process
//! C) and linked by the worker. Then the EWS latency goes to 20 ms and the measured run starts.
//!
//! Measurement: change `i` is made at its scheduled time, `i × 10 ms` after the start (open
//! loop: a slow worker does not slow the changes down), on mailbox `i mod 1000`, alternating its
//! two items, by the simulator's Outlook verb (`update_item`: a new subject). Its clock starts just before that call. A watcher thread with
//! its own runtime and its own database connection asks every 5 ms, in one query, for the
//! versions of the reservations still waiting (`id IN (...)`: a handful of primary-key reads); a
//! change is done when its reservation's version reached the one the change makes. Its latency
//! is taken when that query returned, so it overstates the true latency by up to one poll
//! period plus one query (≤ ~6 ms), never understates it. As a cross-check the reservation's
//! `updated_at` (stamped by the worker just before its transaction) minus the wall-clock time
//! of the change is reported too ("stamped"). GetItem calls per change come from the simulator's
//! call counts over the measured run.
//!
//! `PUSHGATE_BENCH_SYNC_SECS`: length of the paced run (default 30, at most 120).
//! `PUSHGATE_BENCH_SYNC_BACKENDS`: `sqlite,postgres` (default) or one of them.
//! `PUSHGATE_BENCH_REPORT`: a file the result table is appended to (scripts/bench-sync.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may panic on setup failures

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/exchange_support/mod.rs"]
mod exchange_support;
#[path = "../tests/worker_support/mod.rs"]
mod worker_support;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_support::{Stack, StackOptions};
use pushgate::exchange_sim::{ItemSpec, ItemUpdate};
use pushgate::store::{MailboxState, Store, SyncState};
use pushgate::worker::Tuning;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, Time};
use tokio::sync::{mpsc, Semaphore};
use worker_support::{TestDb, API_TOKEN};

const MAILBOXES: usize = 1_000;
const RESERVATIONS_PER_MAILBOX: usize = 2;
const RATE: u64 = 100;
const EWS_LATENCY: Duration = Duration::from_millis(20);
const DEFAULT_SECS: u64 = 30;
const MAX_SECS: u64 = 120;
/// How often the watcher looks at the reservations still waiting.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// How long changes still waiting after the paced run get to arrive.
const DRAIN: Duration = Duration::from_secs(30);
/// Longest the set-up may take per step.
const SETUP_WAIT: Duration = Duration::from_secs(300);
/// API calls in flight at once during the set-up.
const SETUP_CONCURRENCY: usize = 8;

fn main() {
    let secs = std::env::var("PUSHGATE_BENCH_SYNC_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECS)
        .clamp(1, MAX_SECS);
    let backends =
        std::env::var("PUSHGATE_BENCH_SYNC_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for backend in backends.split(',').map(str::trim) {
        let row = match backend {
            "sqlite" => Some(runtime.block_on(run(TestDb::sqlite(), "SQLite", secs))),
            "postgres" => match runtime.block_on(TestDb::postgres("sync_latency")) {
                Some(db) => Some(runtime.block_on(run(db, "PostgreSQL", secs))),
                None => {
                    println!("PostgreSQL: SKIPPED (no server answers)");
                    rows.push(format!(
                        "| PostgreSQL | SKIPPED: no server at {} | | | | | | | |",
                        worker_support::redact(&worker_support::postgres_base_url())
                    ));
                    None
                }
            },
            "" => None,
            other => panic!("unknown backend {other:?} (sqlite, postgres)"),
        };
        rows.extend(row);
    }
    let mut table = vec![
        format!(
            "{MAILBOXES} mailboxes, {} reservations, {RATE} changes/s for {secs} s, EWS latency \
             {} ms, watcher poll {} ms",
            MAILBOXES * RESERVATIONS_PER_MAILBOX,
            EWS_LATENCY.as_millis(),
            WATCH_EVERY.as_millis()
        ),
        String::new(),
        "| database | changes made (achieved rate) | completed | p50 | p90 | p99 | max | stamped p50 / p99 | GetItem per change | other EWS calls |".into(),
        "|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    table.extend(rows);
    let table = table.join("\n");
    println!("\n{table}\n");
    if let Ok(path) = std::env::var("PUSHGATE_BENCH_REPORT") {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        writeln!(file, "{table}").unwrap();
    }
}

fn mailbox(index: usize) -> String {
    format!("room{index:04}@contoso.com")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Asks `done` about each pending entry until none is left (bounded by `SETUP_WAIT`).
async fn wait_all<T: Clone>(what: &str, mut pending: Vec<T>, mut done: impl AsyncFnMut(T) -> bool) {
    let deadline = Instant::now() + SETUP_WAIT;
    let started = Instant::now();
    while !pending.is_empty() {
        let mut left = Vec::new();
        for item in pending {
            if !done(item.clone()).await {
                left.push(item);
            }
        }
        pending = left;
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "set-up: {what}: {} still waiting after {SETUP_WAIT:?}",
            pending.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("  {what}: {:.1} s", started.elapsed().as_secs_f64());
}

async fn api(addr: SocketAddr, method: &str, path: &str, body: Value) -> (u16, Value) {
    let answer = worker_support::api(addr, method, path, Some(API_TOKEN), Some(&body.to_string()))
        .await
        .unwrap();
    let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, json)
}

/// A reservation and the item it follows.
#[derive(Clone)]
struct Linked {
    mailbox: String,
    reservation_id: String,
    item_id: String,
}

async fn set_up(stack: &Stack) -> Vec<Linked> {
    let addr = stack.worker().listen_addr;
    let store = stack.store().await;
    let limit = Arc::new(Semaphore::new(SETUP_CONCURRENCY));

    // Sync on, through the API; the worker subscribes each mailbox and resyncs its calendar.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..MAILBOXES {
        let permit = limit.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let (status, answer) = api(
                addr,
                "PUT",
                &format!("/api/v1/mailboxes/{}", mailbox(index)),
                json!({"sync": true, "tenant": "Default"}),
            )
            .await;
            assert!(matches!(status, 200 | 201), "{answer}");
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "  sync on for {MAILBOXES} mailboxes: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let all: Vec<usize> = (0..MAILBOXES).collect();
    wait_all("subscribed (active)", all.clone(), async |i| {
        store
            .mailbox(&mailbox(i))
            .await
            .unwrap()
            .is_some_and(|v| v.mailbox.state == MailboxState::Active)
    })
    .await;
    wait_all("calendars resynchronised", all, async |i| {
        store
            .mailbox_calendar(&mailbox(i))
            .await
            .unwrap()
            .is_some_and(|c| c.resynced_at.is_some())
    })
    .await;

    // Process C: booked by the add-in, the item written by Outlook with the reservation id.
    let started = Instant::now();
    let tomorrow = (OffsetDateTime::now_utc() + time::Duration::days(1))
        .replace_time(Time::from_hms(8, 0, 0).unwrap());
    let mut tasks = Vec::new();
    for index in 0..MAILBOXES * RESERVATIONS_PER_MAILBOX {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let sim = stack.sim.clone();
        tasks.push(tokio::spawn(async move {
            let mailbox = mailbox(index % MAILBOXES);
            let start = tomorrow + time::Duration::hours((index / MAILBOXES) as i64 * 2);
            let end = start + time::Duration::hours(1);
            let subject = format!("Booked {index}");
            let (status, answer) = api(
                addr,
                "POST",
                "/api/v1/reservations",
                json!({
                    "mailbox": mailbox,
                    "resource": "Room",
                    "subject": subject,
                    "start": start.format(&Rfc3339).unwrap(),
                    "end": end.format(&Rfc3339).unwrap(),
                    "source": "addin",
                }),
            )
            .await;
            assert_eq!(status, 201, "{answer}");
            let reservation_id = answer["id"].as_str().unwrap().to_string();
            let item = sim
                .create_item(
                    &mailbox,
                    ItemSpec {
                        subject,
                        start,
                        end,
                        location: Some("Room".into()),
                        reservation_id: Some(reservation_id.clone()),
                    },
                )
                .unwrap();
            drop(permit);
            Linked {
                mailbox,
                reservation_id,
                item_id: item.id,
            }
        }));
    }
    let mut linked = Vec::new();
    for task in tasks {
        linked.push(task.await.unwrap());
    }
    println!(
        "  {} reservations booked, their items made: {:.1} s",
        linked.len(),
        started.elapsed().as_secs_f64()
    );
    wait_all("items linked (process C)", linked.clone(), async |l| {
        store
            .reservation(&l.reservation_id)
            .await
            .unwrap()
            .is_some_and(|r| {
                r.item_id.as_deref() == Some(l.item_id.as_str())
                    && r.sync_state == SyncState::Synced
            })
    })
    .await;
    wait_all("sync step quiet", vec![()], async |()| {
        let backlog = store.sync_backlog().await.unwrap();
        backlog.events_pending == 0 && backlog.outbox_pending == 0
    })
    .await;
    linked
}

/// A change made in the simulator, waiting for its reservation.
struct Change {
    reservation_id: String,
    /// The reservation's version once this change is applied.
    version: i64,
    at: Instant,
    wall: OffsetDateTime,
}

/// What the watcher saw of one change.
struct Seen {
    latency: Duration,
    /// The reservation's `updated_at` minus the wall-clock time of the change.
    stamped: Duration,
    by_exchange: bool,
}

/// The watcher's own connection to the worker's database.
enum Reader {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

/// (id, version, updated_at, last_change) of the reservations named.
async fn read_versions(
    reader: &Reader,
    ids: &[String],
) -> Vec<(String, i64, OffsetDateTime, String)> {
    match reader {
        Reader::Sqlite(connection) => {
            let marks = vec!["?"; ids.len()].join(",");
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT id, version, updated_at, last_change FROM reservations \
                     WHERE id IN ({marks})"
                ))
                .unwrap();
            statement
                .query_map(rusqlite::params_from_iter(ids.iter()), |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .unwrap()
                .map(|row| {
                    let (id, version, updated, last_change) = row.unwrap();
                    let updated = time::PrimitiveDateTime::parse(
                        &updated,
                        time::macros::format_description!(
                            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]Z"
                        ),
                    )
                    .unwrap()
                    .assume_utc();
                    (id, version, updated, last_change)
                })
                .collect()
        }
        Reader::Postgres(client) => client
            .query(
                "SELECT id, version, (extract(epoch FROM updated_at) * 1000000)::int8, \
                 last_change FROM reservations WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|row| {
                let micros: i64 = row.get(2);
                (
                    row.get(0),
                    row.get(1),
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).unwrap(),
                    row.get(3),
                )
            })
            .collect(),
    }
}

/// Polls the reservations of the changes still waiting until the sender is done and every
/// change arrived (or `DRAIN` after the sender finished). Runs on its own thread and runtime.
async fn watch(reader: Reader, mut changes: mpsc::UnboundedReceiver<Change>) -> (Vec<Seen>, usize) {
    let mut waiting: Vec<Change> = Vec::new();
    let mut seen = Vec::new();
    let mut closed_at: Option<Instant> = None;
    loop {
        loop {
            match changes.try_recv() {
                Ok(change) => waiting.push(change),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed_at.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        if closed_at.is_some() && waiting.is_empty() {
            break;
        }
        if closed_at.is_some_and(|at| at.elapsed() > DRAIN) {
            break;
        }
        if !waiting.is_empty() {
            let ids: Vec<String> = waiting
                .iter()
                .map(|c| c.reservation_id.clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let rows = read_versions(&reader, &ids).await;
            let now = Instant::now();
            let current: HashMap<String, (i64, OffsetDateTime, String)> = rows
                .into_iter()
                .map(|(id, version, updated, last)| (id, (version, updated, last)))
                .collect();
            waiting.retain(|change| match current.get(&change.reservation_id) {
                Some((version, updated, last)) if *version >= change.version => {
                    seen.push(Seen {
                        latency: now - change.at,
                        stamped: Duration::try_from(*updated - change.wall)
                            .unwrap_or(Duration::ZERO),
                        by_exchange: last == "exchange",
                    });
                    false
                }
                _ => true,
            });
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
    (seen, waiting.len())
}

async fn reader_for(url: &str) -> Reader {
    match url.strip_prefix("sqlite://") {
        Some(path) => {
            let connection = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            connection.busy_timeout(Duration::from_secs(5)).unwrap();
            Reader::Sqlite(connection)
        }
        None => Reader::Postgres(worker_support::pg_connect(url).await.unwrap()),
    }
}

async fn run(db: TestDb, name: &str, secs: u64) -> String {
    println!("== {name}: set-up");
    let mailboxes: Vec<String> = (0..MAILBOXES).map(mailbox).collect();
    let mut stack = Stack::start(
        db,
        StackOptions {
            time_scale: 1.0,
            status_frequency: 1,
            first_status_after: Duration::from_secs(1),
            mailboxes,
            subscribe_rate: 200,
            ..StackOptions::default()
        },
    )
    .await;
    // The worker's own timings (the tests shorten some), before any mailbox is synced.
    stack.stop_worker().await;
    stack.tuning = Tuning::default();
    stack.start_worker().await;
    let linked = set_up(&stack).await;

    // The watcher: its own thread, runtime and connection, so that its polls neither wait for
    // the worker's tasks nor hold them up beyond the reads themselves.
    let (sender, receiver) = mpsc::unbounded_channel();
    let database_url = stack.db.url();
    let watcher = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move { watch(reader_for(&database_url).await, receiver).await })
    });

    let store: Arc<dyn Store> = stack.store().await;
    let mut versions: HashMap<String, i64> = HashMap::new();
    for l in &linked {
        let r = store.reservation(&l.reservation_id).await.unwrap().unwrap();
        versions.insert(l.reservation_id.clone(), r.version);
    }
    stack.sim.set_latency(EWS_LATENCY);
    let calls_before = stack.sim.call_counts();

    println!("== {name}: {RATE} changes/s for {secs} s");
    let total = (RATE * secs) as usize;
    let period = Duration::from_nanos(1_000_000_000 / RATE);
    let started = tokio::time::Instant::now();
    let mut failed = 0usize;
    for i in 0..total {
        tokio::time::sleep_until(started + period * i as u32).await;
        // Mailbox i mod 1000, alternating its two reservations.
        let target =
            &linked[(i % MAILBOXES) + MAILBOXES * ((i / MAILBOXES) % RESERVATIONS_PER_MAILBOX)];
        let at = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let update = ItemUpdate {
            subject: Some(format!("Changed in Outlook #{i}")),
            ..ItemUpdate::default()
        };
        match stack
            .sim
            .update_item(&target.mailbox, &target.item_id, update)
        {
            Ok(_) => {
                let version = versions.get_mut(&target.reservation_id).unwrap();
                *version += 1;
                sender
                    .send(Change {
                        reservation_id: target.reservation_id.clone(),
                        version: *version,
                        at,
                        wall,
                    })
                    .unwrap();
            }
            Err(error) => {
                failed += 1;
                eprintln!("change {i}: {error}");
            }
        }
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    drop(sender);
    let (seen, missing) = tokio::task::spawn_blocking(move || watcher.join().unwrap())
        .await
        .unwrap();
    let calls_after = stack.sim.call_counts();
    let delta = |op: &str| calls_after.operation(op) - calls_before.operation(op);
    let get_items = delta("GetItem");
    let others: Vec<String> = pushgate::exchange_sim::OPERATIONS
        .iter()
        .filter(|op| **op != "GetItem")
        .map(|op| (op, delta(op)))
        .filter(|(_, n)| *n > 0)
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    let made = total - failed;
    let not_by_exchange = seen.iter().filter(|s| !s.by_exchange).count();
    let mut latencies: Vec<Duration> = seen.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let mut stamped: Vec<Duration> = seen.iter().map(|s| s.stamped).collect();
    stamped.sort_unstable();
    let alive = stack.sim.subscriptions().iter().filter(|s| s.alive).count();
    println!(
        "{name}: made {made} ({achieved:.1}/s, {failed} failed), completed {}, still waiting \
         after {DRAIN:?}: {missing}; last_change not exchange: {not_by_exchange}; \
         p50 {} p90 {} p99 {} max {}; stamped p50 {} p99 {}; GetItem {get_items} \
         ({:.2} per change); other EWS calls: {}; subscriptions alive: {alive}",
        seen.len(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        ms(percentile(&stamped, 50.0)),
        ms(percentile(&stamped, 99.0)),
        get_items as f64 / made.max(1) as f64,
        if others.is_empty() {
            "none".into()
        } else {
            others.join(", ")
        },
    );
    let row =
        format!(
        "| {name} | {made} ({achieved:.1}/s) | {}{} | {} | {} | {} | {} | {} / {} | {:.2} | {} |",
        seen.len(),
        if missing > 0 || not_by_exchange > 0 {
            format!(" ({missing} not within {DRAIN:?}, {not_by_exchange} not last_change=exchange)")
        } else {
            String::new()
        },
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        ms(percentile(&stamped, 50.0)),
        ms(percentile(&stamped, 99.0)),
        get_items as f64 / made.max(1) as f64,
        if others.is_empty() { "none".into() } else { others.join(", ") },
    );
    stack.stop().await;
    row
}
