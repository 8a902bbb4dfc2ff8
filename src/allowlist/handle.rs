//! [`Allowlist`]: the shared handle the gateway reads on every connection, and the reloader that
//! swaps a new list in when the ranges file changes.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};
use tokio::task::JoinHandle;

use crate::filestamp::FileStamp;

use super::{read_ranges_file, AllowlistError, AllowlistMetrics, CidrSet, RangesHeader};

/// One loaded ranges file. Immutable: a reload builds a new one and swaps the pointer, so a
/// request that holds an `Arc<Loaded>` keeps a consistent list until it drops it.
#[derive(Debug)]
pub struct Loaded {
    pub set: CidrSet,
    pub header: RangesHeader,
    pub loaded_at: SystemTime,
    pub path: PathBuf,
}

impl Loaded {
    /// The feed version from the file's header, if it names one.
    pub fn version(&self) -> Option<&str> {
        self.header.version.as_deref()
    }
}

/// What a reload check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file looks as it did at the last check: nothing read.
    Unchanged,
    /// A new list was swapped in.
    Reloaded {
        entries: usize,
        version: Option<String>,
    },
}

/// What the last check saw at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    File(FileStamp),
    StatFailed(io::ErrorKind),
}

/// The allowlist shared by every connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Allowlist {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    current: ArcSwap<Loaded>,
    metrics: AllowlistMetrics,
    /// Serialises reloads and remembers what the last one saw, so a refused file is reported
    /// once, not at every poll.
    last_observed: Mutex<Observed>,
}

impl Allowlist {
    /// Loads the ranges file at start-up. Any error (missing, unreadable, unparsable, empty) is
    /// returned: the gateway must not start without a list.
    pub fn load(
        path: impl Into<PathBuf>,
        metrics: AllowlistMetrics,
    ) -> Result<Self, AllowlistError> {
        let path = path.into();
        let observed = FileStamp::of(&path).map_err(|source| AllowlistError::Io {
            path: path.clone(),
            source,
        })?;
        let loaded = read_loaded(&path)?;
        metrics.record_loaded(
            loaded.set.len(),
            loaded.version(),
            None,
            unix_seconds(loaded.loaded_at),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                current: ArcSwap::from_pointee(loaded),
                metrics,
                last_observed: Mutex::new(Observed::File(observed)),
            }),
        })
    }

    /// The list in force, for a quick check (`current().set.contains(ip)`). Do not hold the guard
    /// across an `.await`; use [`Allowlist::snapshot`] for that.
    #[inline]
    pub fn current(&self) -> Guard<Arc<Loaded>> {
        self.shared.current.load()
    }

    /// The list in force as an owned `Arc`, for a request that checks more than once.
    pub fn snapshot(&self) -> Arc<Loaded> {
        self.shared.current.load_full()
    }

    /// The ranges file this handle watches.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn metrics(&self) -> &AllowlistMetrics {
        &self.shared.metrics
    }

    /// Checks the file once and swaps in a new list if it changed. A file that cannot be read or
    /// parsed, or lists nothing, is refused: the old list stays, the refusal is logged and
    /// counted once per change of the file, and the error is returned.
    pub fn reload_if_changed(&self) -> Result<ReloadOutcome, AllowlistError> {
        let shared = &self.shared;
        let mut last = shared
            .last_observed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let observed = match FileStamp::of(&shared.path) {
            Ok(stamp) => Observed::File(stamp),
            Err(error) => Observed::StatFailed(error.kind()),
        };
        if *last == observed {
            return Ok(ReloadOutcome::Unchanged);
        }
        // Remember the stamp taken before reading: if the file changes while it is read, the
        // next check sees a different stamp and reads it again.
        *last = observed;
        let result = match observed {
            Observed::StatFailed(kind) => Err(AllowlistError::Io {
                path: shared.path.clone(),
                source: io::Error::from(kind),
            }),
            Observed::File(_) => read_loaded(&shared.path),
        };
        match result {
            Ok(loaded) => {
                let entries = loaded.set.len();
                let version = loaded.header.version.clone();
                let loaded_at = unix_seconds(loaded.loaded_at);
                let previous = shared.current.swap(Arc::new(loaded));
                shared.metrics.record_loaded(
                    entries,
                    version.as_deref(),
                    Some(previous.version().unwrap_or(super::UNKNOWN_VERSION)),
                    loaded_at,
                );
                shared.metrics.record_reload();
                tracing::info!(
                    path = %shared.path.display(),
                    entries,
                    version = version.as_deref().unwrap_or(super::UNKNOWN_VERSION),
                    "allowlist reloaded"
                );
                Ok(ReloadOutcome::Reloaded { entries, version })
            }
            Err(error) => {
                shared.metrics.record_failure();
                let kept = self.current();
                tracing::error!(
                    path = %shared.path.display(),
                    error = %error,
                    kept_entries = kept.set.len(),
                    kept_version = kept.version().unwrap_or(super::UNKNOWN_VERSION),
                    "ranges file refused; the loaded allowlist stays in force"
                );
                Err(error)
            }
        }
    }
}

/// Polls the ranges file every `interval` and swaps in a new list when it changes, until
/// `shutdown` completes.
///
/// Polling `stat` (modification and status-change times, length, inode, device) rather than subscribing to
/// file-system events is deliberate: it sees atomic renames, editors that write in place or
/// replace the file, symlink flips and bind mounts (where inotify misses changes made from the
/// other side) alike, and costs one `stat` per interval.
pub fn spawn_reloader(
    handle: Allowlist,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticker.tick() => {
                    let handle = handle.clone();
                    // Errors are logged and counted inside; the loop keeps polling.
                    let _ = tokio::task::spawn_blocking(move || handle.reload_if_changed()).await;
                }
            }
        }
    })
}

fn read_loaded(path: &Path) -> Result<Loaded, AllowlistError> {
    let file = read_ranges_file(path)?;
    Ok(Loaded {
        set: file.set,
        header: file.header,
        loaded_at: SystemTime::now(),
        path: path.to_path_buf(),
    })
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
