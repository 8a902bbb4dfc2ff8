//! `pushgate ranges update` and `pushgate ranges check`: the glue between the configuration, the
//! feed, the rules in `select` and the file on disk.

use std::collections::HashSet;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::feed::{check_version, parse_endpoints};
use super::fetch::{FeedClient, MAX_ANSWER_BYTES};
use super::select::{
    apply_operator_ranges, check_prefixes, check_shrink, measure_shrink, select_ranges, Selection,
};
use super::state::StateDir;
use super::write::{render_ranges_file, write_atomically, ListOrigin};
use super::{Refusal, UpdateError, EXIT_FEED, EXIT_OK, EXIT_REFUSED};
use crate::allowlist::{read_ranges_file, AllowlistError, CidrSet, RangesFile};
use crate::config::{parse_cidrs, Config, RangesConfig};

/// `println!` without the panic: cron may run the command with stdout closed, or piped into a
/// `logger` that has gone away, and a lost status line must not turn into exit status 101.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` without the panic, for the same reason.
macro_rules! complain {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Options of `pushgate ranges update`.
#[derive(Debug, Clone, Default)]
pub struct UpdateOptions {
    /// Fetch and write even when the version is unchanged, and accept a list that shrinks more
    /// than `max_shrink_percent`. Never overrides the other checks.
    pub force: bool,
    /// Build the list from a saved endpoints answer instead of the network.
    pub from_file: Option<PathBuf>,
    /// The feed version of `from_file` (required with it, refused without it).
    pub version: Option<String>,
    /// Print what the update did, step by step, to stdout.
    pub verbose: bool,
}

/// What a successful update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated {
        path: PathBuf,
        version: String,
        count: usize,
        added: usize,
        removed: usize,
    },
    AlreadyCurrent {
        path: PathBuf,
        version: String,
    },
}

impl UpdateOutcome {
    /// The one line `ranges update` prints on success.
    pub fn summary(&self) -> String {
        match self {
            UpdateOutcome::Updated {
                path,
                version,
                count,
                added,
                removed,
            } => format!(
                "updated {} to version {version}: {count} ranges ({added} added, {removed} removed)",
                path.display()
            ),
            UpdateOutcome::AlreadyCurrent { path, version } => {
                format!("{} already current at version {version}", path.display())
            }
        }
    }
}

/// `pushgate ranges update`. Returns the exit status: 0 updated or already current, 2 feed
/// unreachable or bad answer, 3 refused by a sanity check, 1 anything else.
///
/// Output: on success exactly one line on stdout saying which (`updated ...` or `... already
/// current ...`), so a journal or `logger` records every run; `--verbose` adds the steps before
/// it. Errors and warnings go to stderr only, so cron mails exactly the runs that need a person.
/// Must be called outside any tokio runtime (it runs its own for the HTTP calls).
pub fn run_update(config: &Config, options: &UpdateOptions) -> u8 {
    let verbose = options.verbose;
    let mut note = |line: &str| {
        if verbose {
            say!("{line}");
        }
    };
    let status = match update(config, options, &mut note) {
        Ok(outcome) => {
            say!("{}", outcome.summary());
            EXIT_OK
        }
        Err(error) => {
            let kept = match error.exit_code() {
                EXIT_FEED | EXIT_REFUSED => {
                    format!("; {} left unchanged", config.gateway.ranges_file.display())
                }
                _ => String::new(),
            };
            complain!("pushgate ranges update: {error}{kept}");
            error.exit_code()
        }
    };
    // The gateway shows these in its metrics, so that an updater that fails or stopped running
    // is seen even while the list it left is still in force. Not recording changes no exit status.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if let Err(error) = StateDir::new(&config.ranges.state_dir).record_run(now, status) {
        complain!("pushgate ranges update: recording the run for monitoring: {error}");
    }
    status
}

/// The update itself. `note` receives the verbose lines.
pub fn update(
    config: &Config,
    options: &UpdateOptions,
    note: &mut dyn FnMut(&str),
) -> Result<UpdateOutcome, UpdateError> {
    let ranges = &config.ranges;
    let path = config.gateway.ranges_file.as_path();
    let extra = parse_cidrs(&ranges.extra_ranges)
        .map_err(|e| UpdateError::Usage(format!("`ranges.extra_ranges`: {e}")))?;
    let exclude = parse_cidrs(&ranges.exclude_ranges)
        .map_err(|e| UpdateError::Usage(format!("`ranges.exclude_ranges`: {e}")))?;
    let selection = Selection {
        endpoint_sets: ranges.endpoint_sets.clone(),
        categories: ranges.categories.clone(),
        include_required: ranges.include_required,
    };
    let fingerprint = selection_fingerprint(ranges);
    let state = StateDir::new(&ranges.state_dir);

    let (version, body, source) = match &options.from_file {
        Some(input) => {
            let version = options.version.clone().ok_or_else(|| {
                UpdateError::Usage(
                    "--from-file needs --version V, the feed version the file was saved at".into(),
                )
            })?;
            check_version(&version).map_err(|e| UpdateError::Usage(format!("--version: {e}")))?;
            if !options.force && is_current(&state, &version, &fingerprint, path)? {
                return Ok(UpdateOutcome::AlreadyCurrent {
                    path: path.to_path_buf(),
                    version,
                });
            }
            let body = read_input(input)?;
            note(&format!(
                "read {} bytes from {}",
                body.len(),
                input.display()
            ));
            (version, body, input.display().to_string())
        }
        None => {
            if options.version.is_some() {
                return Err(UpdateError::Usage(
                    "--version goes only with --from-file; the feed names its own version".into(),
                ));
            }
            let client_id = state.client_request_id()?;
            let client = FeedClient::new(ranges)?;
            let version = client.latest_version(&ranges.instance, client_id)?;
            note(&format!("feed version for {}: {version}", ranges.instance));
            if !options.force && is_current(&state, &version, &fingerprint, path)? {
                return Ok(UpdateOutcome::AlreadyCurrent {
                    path: path.to_path_buf(),
                    version,
                });
            }
            let body = client.endpoints(&ranges.instance, client_id)?;
            let source = client.endpoints_source(&ranges.instance);
            note(&format!("fetched {} bytes from {source}", body.len()));
            (version, body, source)
        }
    };

    let sets = parse_endpoints(&body)?;
    let feed_nets = select_ranges(&sets, &selection)?;
    note(&format!(
        "selected {} ranges from {} ({} endpoint sets in the answer)",
        feed_nets.len(),
        selection.describe(),
        sets.len()
    ));
    let nets = apply_operator_ranges(&feed_nets, &extra, &exclude);
    if nets.is_empty() {
        return Err(Refusal::EmptyAfterExclusions.into());
    }
    check_prefixes(&nets, ranges.min_prefix_v4, ranges.min_prefix_v6)?;
    let new_set = CidrSet::from_nets(nets.iter().copied());

    let current = read_current(path);
    if let Some(current) = &current {
        let shrink = measure_shrink(&current.set, &new_set);
        note(&format!(
            "shrink against {}: IPv4 {:.1}%, IPv6 {:.1}%",
            path.display(),
            shrink.v4_percent,
            shrink.v6_percent
        ));
        if let Err(refusal) = check_shrink(shrink, ranges.max_shrink_percent) {
            if !options.force {
                return Err(refusal.into());
            }
            note(&format!("--force accepts: {refusal}"));
        }
    } else {
        note(&format!(
            "no current list at {}: no shrink check",
            path.display()
        ));
    }
    let (added, removed) = entry_changes(
        current.as_ref().map(|c| c.set.entries()).unwrap_or(&[]),
        &nets,
    );

    let origin = ListOrigin {
        source,
        instance: ranges.instance.clone(),
        version: version.clone(),
        fetched: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default(),
        selection: selection.describe(),
    };
    let text = render_ranges_file(&origin, &nets, extra.len(), exclude.len());
    write_atomically(path, text.as_bytes())?;
    note(&format!("wrote {} ({} bytes)", path.display(), text.len()));
    // Only now: a version recorded before the file is safely written would make the next run
    // skip a list it never got.
    state
        .record(&version, &fingerprint)
        .map_err(|source| UpdateError::RecordFailed {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(UpdateOutcome::Updated {
        path: path.to_path_buf(),
        version,
        count: nets.len(),
        added,
        removed,
    })
}

/// One line naming everything that decides which ranges a list holds, apart from the feed
/// version. Recorded with the version: a changed selection makes the next run rebuild the list
/// even when Microsoft's version stayed the same.
pub fn selection_fingerprint(ranges: &RangesConfig) -> String {
    let normalised = |values: &[String]| -> Vec<String> {
        parse_cidrs(values)
            .map(|nets| nets.iter().map(IpNet::to_string).collect())
            .unwrap_or_else(|_| values.to_vec())
    };
    format!(
        "instance={} endpoint_sets={:?} categories={:?} include_required={} extra_ranges={:?} exclude_ranges={:?}",
        ranges.instance,
        ranges.endpoint_sets,
        ranges.categories,
        ranges.include_required,
        normalised(&ranges.extra_ranges),
        normalised(&ranges.exclude_ranges),
    )
}

/// Current means: the state records this version and selection, and the ranges file on disk is
/// intact and says the same version. A deleted or damaged file is rebuilt.
fn is_current(
    state: &StateDir,
    version: &str,
    fingerprint: &str,
    path: &Path,
) -> Result<bool, UpdateError> {
    if state.recorded_version()?.as_deref() != Some(version)
        || state.recorded_selection()?.as_deref() != Some(fingerprint)
    {
        return Ok(false);
    }
    Ok(read_ranges_file(path).is_ok_and(|file| file.version() == Some(version)))
}

/// The list the new one must be compared with. A missing file has none; a damaged one has none
/// either, with a warning, because the update is how it gets repaired.
fn read_current(path: &Path) -> Option<RangesFile> {
    match read_ranges_file(path) {
        Ok(file) => Some(file),
        Err(AllowlistError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            None
        }
        Err(error) => {
            complain!(
                "pushgate ranges update: warning: {error}; replacing it without a shrink check"
            );
            None
        }
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, UpdateError> {
    let fail = |source| UpdateError::ReadInput {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(fail)?;
    let mut body = Vec::new();
    file.take(MAX_ANSWER_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(fail)?;
    if body.len() > MAX_ANSWER_BYTES {
        return Err(super::FeedError::TooLarge {
            url: path.display().to_string(),
            limit: MAX_ANSWER_BYTES,
        }
        .into());
    }
    Ok(body)
}

fn entry_changes(old: &[IpNet], new: &[IpNet]) -> (usize, usize) {
    let old_set: HashSet<&IpNet> = old.iter().collect();
    let new_set: HashSet<&IpNet> = new.iter().collect();
    (
        new_set.difference(&old_set).count(),
        old_set.difference(&new_set).count(),
    )
}

/// `ranges check` exit status: the address is admitted.
pub const CHECK_ADMITTED: u8 = 0;
/// `ranges check` exit status: the address is not admitted.
pub const CHECK_DENIED: u8 = 1;
/// `ranges check` exit status: bad address, or the ranges file cannot be read.
pub const CHECK_BAD_INPUT: u8 = 2;

/// `pushgate ranges check ADDRESS`: 0 admitted (prints the range), 1 not admitted, 2 bad address
/// or unreadable ranges file.
pub fn run_check(config: &Config, address: &str) -> u8 {
    let Some(ip) = parse_address(address) else {
        complain!("pushgate ranges check: {address:?} is not an IPv4 or IPv6 address");
        return CHECK_BAD_INPUT;
    };
    let path = &config.gateway.ranges_file;
    let file = match read_ranges_file(path) {
        Ok(file) => file,
        Err(error) => {
            complain!("pushgate ranges check: {error}");
            return CHECK_BAD_INPUT;
        }
    };
    let version = file.version().unwrap_or(crate::allowlist::UNKNOWN_VERSION);
    if file.set.contains(ip) {
        let matching: Vec<String> = file.set.matching(ip).iter().map(IpNet::to_string).collect();
        say!(
            "{ip} is admitted by {} ({}, version {version})",
            matching.join(", "),
            path.display()
        );
        CHECK_ADMITTED
    } else {
        say!(
            "{ip} is not admitted: none of the {} ranges in {} (version {version}) lists it",
            file.set.len(),
            path.display()
        );
        CHECK_DENIED
    }
}

fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_for_check() {
        assert!(parse_address(" 40.96.1.2 ").is_some());
        assert!(parse_address("[2603:1026::5]").is_some());
        assert!(parse_address("::ffff:40.96.1.2").is_some());
        for bad in ["", "40.96.1", "example.com", "40.96.0.0/13", "[40.96.1.2"] {
            assert!(parse_address(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_changes_with_the_selection_only() {
        let base = RangesConfig::default();
        let mut more = base.clone();
        more.extra_ranges = vec!["192.0.2.1".into()];
        assert_ne!(selection_fingerprint(&base), selection_fingerprint(&more));
        let mut same = base.clone();
        same.max_shrink_percent = 50.0;
        same.timeout = std::time::Duration::from_secs(1);
        assert_eq!(selection_fingerprint(&base), selection_fingerprint(&same));
        assert!(!selection_fingerprint(&more).contains('\n'));
    }

    #[test]
    fn summaries() {
        let updated = UpdateOutcome::Updated {
            path: "r.txt".into(),
            version: "2025043000".into(),
            count: 27,
            added: 27,
            removed: 0,
        };
        assert_eq!(
            updated.summary(),
            "updated r.txt to version 2025043000: 27 ranges (27 added, 0 removed)"
        );
        let current = UpdateOutcome::AlreadyCurrent {
            path: "r.txt".into(),
            version: "2025043000".into(),
        };
        assert_eq!(
            current.summary(),
            "r.txt already current at version 2025043000"
        );
    }
}
