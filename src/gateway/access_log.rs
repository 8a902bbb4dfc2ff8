//! The access log: one JSON object per line for every request the gateway answered or forwarded.
//! Never the body; the raw target is cut at a fixed length so a hostile request cannot flood it.

use std::io::{LineWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

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
    pub method: String,
    pub path: String,
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

/// Where the access log goes.
pub struct AccessLog {
    sink: Option<Mutex<Box<dyn Write + Send>>>,
}

impl AccessLog {
    /// `stdout`, `off`, or a file path (created if missing, appended to).
    pub fn open(destination: &str) -> std::io::Result<Self> {
        let sink: Option<Box<dyn Write + Send>> = match destination {
            "off" => None,
            "stdout" | "" => Some(Box::new(LineWriter::new(std::io::stdout()))),
            path => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(path))?;
                Some(Box::new(LineWriter::new(file)))
            }
        };
        Ok(Self {
            sink: sink.map(Mutex::new),
        })
    }

    pub fn disabled() -> Self {
        Self { sink: None }
    }

    pub fn write(&self, record: &AccessRecord<'_>) {
        let Some(sink) = &self.sink else {
            return;
        };
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "serialising access log record");
                return;
            }
        };
        line.push(b'\n');
        // A poisoned lock only means another writer panicked mid-line; keep logging.
        let mut guard = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = guard.write_all(&line) {
            tracing::error!(error = %e, "writing access log");
        }
    }
}

/// Current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&format).unwrap_or_default()
}
