//! The allowlist of source addresses the gateway admits: an immutable CIDR set, the ranges file
//! it is read from, and the handle that swaps a new set in atomically when that file changes.
//! Uses nothing else of pushgate.

mod file;
mod handle;
mod metrics;
mod set;

use std::path::PathBuf;

pub use file::{
    parse_entry, parse_ranges_file, read_ranges_file, RangesFile, RangesFileError, RangesHeader,
    MAX_RANGES_FILE_BYTES,
};
pub use handle::{spawn_reloader, Allowlist, Loaded, ReloadOutcome};
pub use metrics::{AllowlistMetrics, UNKNOWN_VERSION};
pub use set::CidrSet;

/// Why a ranges file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("ranges file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ranges file {}: larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("ranges file {}: not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("ranges file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: RangesFileError,
    },
}
