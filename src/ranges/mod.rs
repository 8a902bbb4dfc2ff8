//! The Microsoft 365 endpoints feed and the cron command that turns it into the gateway's ranges
//! file: fetch (version first, endpoints only when it changed), select, sanity checks, atomic
//! write, and `ranges check`. Uses `allowlist` for the file format and set arithmetic.

mod command;
pub mod feed;
pub mod fetch;
pub mod monitor;
pub mod select;
pub mod state;
pub mod write;

use ipnet::IpNet;

pub use command::{
    run_check, run_update, selection_fingerprint, update, UpdateOptions, UpdateOutcome,
    CHECK_ADMITTED, CHECK_BAD_INPUT, CHECK_DENIED,
};

/// Exit status: updated, or already current.
pub const EXIT_OK: u8 = 0;
/// Exit status: anything not covered by the others (configuration, state directory, disk).
pub const EXIT_OTHER: u8 = 1;
/// Exit status: the feed was unreachable or answered something unusable.
pub const EXIT_FEED: u8 = 2;
/// Exit status: a sanity check refused the new list.
pub const EXIT_REFUSED: u8 = 3;

/// The feed could not be reached, or its answer is unusable.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: HTTP 429 Too Many Requests, not retried; try again {when}")]
    RateLimited { url: String, when: String },
    #[error("{url}: empty answer")]
    Empty { url: String },
    #[error("{url}: answer larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("bad answer: {0}")]
    BadAnswer(String),
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp { attempts: u32, last: Box<FeedError> },
    /// The HTTP client could not be set up: a local problem, not the feed's.
    #[error("{0}")]
    Client(String),
}

impl FeedError {
    /// Worth another attempt: the network or the service hiccuped. A 429 is not: Microsoft asks
    /// for an hour's pause.
    pub fn is_transient(&self) -> bool {
        match self {
            FeedError::Unreachable { .. } | FeedError::Empty { .. } => true,
            FeedError::Status { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }
}

/// A sanity check refused the new list; the current file stays as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the selection is empty: {selection} of service area Exchange list no IP ranges")]
    EmptySelection { selection: String },
    #[error("endpoint set {set} lists {text:?}, which is not a CIDR")]
    BadCidr { set: u32, text: String },
    #[error("nothing is left to admit after `ranges.exclude_ranges`")]
    EmptyAfterExclusions,
    #[error("{net} is broader than /{minimum} (`ranges.min_prefix_v4` / `ranges.min_prefix_v6`)")]
    TooBroad { net: IpNet, minimum: u8 },
    #[error(
        "{net} covers IPv4-mapped addresses (::ffff:0:0/96), which the gateway admits as IPv4 \
         clients untouched by `ranges.min_prefix_v4` and `ranges.exclude_ranges`; list IPv4 \
         ranges as IPv4"
    )]
    MappedIpv4 { net: IpNet },
    #[error(
        "the new list drops {percent:.1}% of the {family} addresses the current file admits \
         (limit {max_percent}%, `ranges.max_shrink_percent`); run with --force if this is expected"
    )]
    Shrink {
        family: &'static str,
        percent: f64,
        max_percent: f64,
    },
}

/// Why `ranges update` did not complete.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("feed: {0}")]
    Feed(#[from] FeedError),
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    State(#[from] state::StateError),
    #[error("{0}")]
    Write(#[from] write::WriteError),
    #[error(
        "wrote {}, but recording its version failed ({source}); the next run fetches again",
        path.display()
    )]
    RecordFailed {
        path: std::path::PathBuf,
        #[source]
        source: state::StateError,
    },
    #[error("reading {}: {source}", path.display())]
    ReadInput {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl UpdateError {
    /// The exit status cron sees.
    pub fn exit_code(&self) -> u8 {
        match self {
            UpdateError::Feed(FeedError::Client(_)) => EXIT_OTHER,
            UpdateError::Feed(_) => EXIT_FEED,
            UpdateError::Refused(_) => EXIT_REFUSED,
            _ => EXIT_OTHER,
        }
    }
}
