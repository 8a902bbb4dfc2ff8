//! The access log: one JSON object per line for every request the gateway answered or forwarded.
//! Never the body; the raw target is cut at a fixed length so a hostile request cannot flood it.
//! Lines are written by a thread of their own through a bounded queue, off the request path.

use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};

use prometheus::IntCounter;
use serde::Serialize;

use super::reject::PerSecond;

/// Longest request target written to the log.
const MAX_LOGGED_TARGET: usize = 512;
/// Longest method written to the log.
const MAX_LOGGED_METHOD: usize = 16;

/// One access-log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub time: String,
    pub request_id: &'a str,
    /// The client the request speaks for (after PROXY protocol / trusted `X-Forwarded-For`).
    pub client: Option<IpAddr>,
    /// The address that opened the TCP connection.
    pub peer: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub outcome: &'a str,
    pub reason: &'a str,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'a str>,
}

impl AccessRecord<'_> {
    /// Sanitised method and target for logging: lossy UTF-8, cut to a fixed length.
    pub fn method_and_target(method: &str, target: &[u8]) -> (String, String) {
        let method: String = method.chars().take(MAX_LOGGED_METHOD).collect();
        let cut = &target[..target.len().min(MAX_LOGGED_TARGET)];
        (method, String::from_utf8_lossy(cut).into_owned())
    }
}

/// Lines waiting for the writer thread at most; beyond this they are dropped and counted. About
/// 300 bytes each, so the queue holds at most a few megabytes.
pub const QUEUE_LINES: usize = 16 * 1024;

/// Where the access log goes. Requests only queue their line (never block on it); one thread
/// writes the queue out. A destination that stalls (a full pipe, a stuck disk) therefore costs
/// lines, counted in `dropped`, and never the gateway's requests.
pub struct AccessLog {
    queue: Option<SyncSender<Vec<u8>>>,
    dropped: IntCounter,
    /// Set while lines are being dropped, so the warning is logged once per stretch.
    dropping: AtomicBool,
}

impl AccessLog {
    /// `stdout`, `off`, or a file path (created if missing, appended to). `dropped` counts the
    /// lines lost to a full queue.
    pub fn open(destination: &str, dropped: IntCounter) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match destination {
            "off" => return Ok(Self::disabled(dropped)),
            "stdout" | "" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(path))?,
            ),
        };
        Self::with_sink(sink, QUEUE_LINES, dropped)
    }

    /// Writes to `sink` through a queue of `capacity` lines.
    pub fn with_sink(
        sink: Box<dyn Write + Send>,
        capacity: usize,
        dropped: IntCounter,
    ) -> std::io::Result<Self> {
        let (queue, lines) = sync_channel::<Vec<u8>>(capacity);
        std::thread::Builder::new()
            .name("pushgate-access-log".into())
            .spawn(move || write_lines(sink, lines))?;
        Ok(Self {
            queue: Some(queue),
            dropped,
            dropping: AtomicBool::new(false),
        })
    }

    pub fn disabled(dropped: IntCounter) -> Self {
        Self {
            queue: None,
            dropped,
            dropping: AtomicBool::new(false),
        }
    }

    /// Queues the record's line; never waits.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let Some(queue) = &self.queue else {
            return;
        };
        // A line is about 350 bytes: one allocation instead of growing from nothing.
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        match serde_json::to_writer(&mut line, record) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "serialising access log record");
                return;
            }
        };
        line.push(b'\n');
        match queue.try_send(line) {
            Ok(()) => {
                if self.dropping.load(Ordering::Relaxed) {
                    self.dropping.store(false, Ordering::Relaxed);
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "access log destination is not keeping up: lines are dropped (pushgate_gateway_access_log_dropped_total)"
                    );
                }
            }
        }
    }
}

/// Room reserved for one line; longer lines grow as needed.
const LINE_CAPACITY: usize = 512;

/// How often the writer thread wakes to write out what was queued. Requests never wake it (a
/// wake per line costs a futex call and a context switch, more than the line itself), so a line
/// reaches the destination at most this much later.
const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The writer thread: every `WRITE_INTERVAL`, writes out every queued line and flushes, until
/// every sender is gone (then what is left is written). A write error is logged once and the line
/// lost; the thread goes on.
fn write_lines(sink: Box<dyn Write + Send>, lines: Receiver<Vec<u8>>) {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let mut failing = false;
    let mut report = |result: std::io::Result<()>| match result {
        Ok(()) => failing = false,
        Err(e) => {
            if !std::mem::replace(&mut failing, true) {
                tracing::error!(error = %e, "writing access log");
            }
        }
    };
    loop {
        std::thread::sleep(WRITE_INTERVAL);
        let mut wrote = false;
        let closed = loop {
            match lines.try_recv() {
                Ok(line) => {
                    report(out.write_all(&line));
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote || closed {
            report(out.flush());
        }
        if closed {
            return;
        }
    }
}

/// Current time as RFC 3339 with milliseconds, UTC. The part down to the second is formatted once
/// per second per thread; only the milliseconds are written each time.
pub fn now_rfc3339() -> String {
    thread_local! {
        static CACHED: PerSecond = const { PerSecond::new() };
    }
    let now = time::OffsetDateTime::now_utc();
    let seconds = CACHED.with(|cached| {
        cached.get(now, |now| {
            let format =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            now.format(&format).unwrap_or_default()
        })
    });
    rfc3339_with_millis(seconds, now.millisecond())
}

/// `seconds` (RFC 3339 down to the second) followed by `.mmmZ`.
fn rfc3339_with_millis(mut seconds: String, millis: u16) -> String {
    use std::fmt::Write as _;
    // Writing into a String cannot fail.
    let _ = write!(seconds, ".{millis:03}Z");
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            rfc3339_with_millis("2026-12-01T07:05:03".into(), 7),
            "2026-12-01T07:05:03.007Z"
        );
        let now = now_rfc3339();
        let parsed =
            time::OffsetDateTime::parse(&now, &time::format_description::well_known::Rfc3339)
                .unwrap();
        let age = time::OffsetDateTime::now_utc() - parsed;
        assert!(
            age >= time::Duration::ZERO && age < time::Duration::seconds(5),
            "{now}"
        );
        assert_eq!(now.len(), "2026-12-01T07:05:03.007Z".len());
    }

    fn record(request_id: &str) -> AccessRecord<'_> {
        AccessRecord {
            time: now_rfc3339(),
            request_id,
            client: None,
            peer: "127.0.0.1:1".parse().unwrap(),
            method: "POST",
            path: "/",
            status: 200,
            outcome: "forwarded",
            reason: "ok",
            bytes_in: 1,
            bytes_out: 1,
            duration_ms: 0.1,
            upstream_ms: None,
            tls: None,
        }
    }

    /// A destination that takes nothing until released: each write waits on the gate.
    struct Stalled {
        gate: Arc<Mutex<()>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            let _open = self.gate.lock().unwrap();
            Ok(())
        }
    }

    #[test]
    fn a_stalled_destination_costs_lines_never_the_writer() {
        let gate = Arc::new(Mutex::new(()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let held = gate.lock().unwrap();
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let sink = Stalled {
            gate: gate.clone(),
            written: written.clone(),
        };
        let log = AccessLog::with_sink(Box::new(sink), 8, dropped.clone()).unwrap();
        // The destination takes nothing, yet every write returns: this loop ends (with the old
        // mutex-guarded writer it would wait forever on the first line the sink did not take).
        for i in 0..1000 {
            log.write(&record(&format!("r{i}")));
        }
        // The queue holds 8 lines and the writer thread's buffer some more: the rest is counted.
        let lost = dropped.get();
        assert!(lost > 0 && lost < 1000, "dropped {lost}");
        drop(held);
        drop(log);
        // Once the destination takes lines again, what was queued arrives whole.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let kept = loop {
            let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
            let lines = text.lines().count() as u64;
            if lines + lost == 1000 || std::time::Instant::now() > deadline {
                break (text, lines);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(
            kept.1 + lost,
            1000,
            "every line written or counted: {}",
            kept.0
        );
        for line in kept.0.lines() {
            let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(parsed["outcome"], "forwarded");
        }
    }
}
