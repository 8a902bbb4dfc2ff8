//! The updater's state directory: the machine's client request id, the version and selection
//! of the last list written, and when the updater last ran and last succeeded (for monitoring).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::write::{write_atomically, WriteError};

const CLIENT_REQUEST_ID: &str = "client-request-id";
const VERSION: &str = "version";
const SELECTION: &str = "selection";
const LAST_RUN: &str = "last-run";
const LAST_SUCCESS: &str = "last-success";

/// What the state directory says about the updater's runs, as the gateway's metrics show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunRecord {
    /// Unix time of the last run and its exit status, if one was recorded.
    pub last_run: Option<(i64, u8)>,
    /// Unix time of the last run that ended with exit status 0 (updated or already current).
    pub last_success: Option<i64>,
}

/// `"<unix seconds> <exit status>"`, as `last-run` holds it.
pub fn parse_last_run(text: &str) -> Option<(i64, u8)> {
    let mut fields = text.split_ascii_whitespace();
    let at = fields.next()?.parse().ok()?;
    let status = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((at, status))
}

/// `"<unix seconds>"`, as `last-success` holds it.
pub fn parse_last_success(text: &str) -> Option<i64> {
    text.trim().parse().ok()
}

/// A state file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state: {0}")]
    Write(#[from] WriteError),
}

/// The state directory (`[ranges] state_dir`).
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The GUID this machine sends as `ClientRequestId`, created on first use and kept. A file
    /// that does not hold a GUID is replaced by a new one.
    pub fn client_request_id(&self) -> Result<Uuid, StateError> {
        let path = self.dir.join(CLIENT_REQUEST_ID);
        if let Some(text) = self.read(CLIENT_REQUEST_ID)? {
            if let Ok(id) = Uuid::parse_str(text.trim()) {
                return Ok(id);
            }
        }
        let id = Uuid::new_v4();
        write_atomically(&path, format!("{id}\n").as_bytes())?;
        Ok(id)
    }

    /// The version of the last list written, if any.
    pub fn recorded_version(&self) -> Result<Option<String>, StateError> {
        Ok(self.read(VERSION)?.map(|text| text.trim().to_string()))
    }

    /// The selection the last list was built with (see [`super::selection_fingerprint`]).
    pub fn recorded_selection(&self) -> Result<Option<String>, StateError> {
        Ok(self.read(SELECTION)?.map(|text| text.trim().to_string()))
    }

    /// Records a written list. Call only after the ranges file itself is safely written.
    pub fn record(&self, version: &str, selection: &str) -> Result<(), StateError> {
        write_atomically(
            &self.dir.join(SELECTION),
            format!("{selection}\n").as_bytes(),
        )?;
        write_atomically(&self.dir.join(VERSION), format!("{version}\n").as_bytes())?;
        Ok(())
    }

    /// Records a run of the updater: when it ended and its exit status; a status of 0 (updated
    /// or already current) is also the last success. Written even when nothing else is, so that
    /// monitoring can tell a current list from an updater that stopped running.
    pub fn record_run(&self, at_unix: i64, exit_status: u8) -> Result<(), StateError> {
        if exit_status == 0 {
            write_atomically(
                &self.dir.join(LAST_SUCCESS),
                format!("{at_unix}\n").as_bytes(),
            )?;
        }
        write_atomically(
            &self.dir.join(LAST_RUN),
            format!("{at_unix} {exit_status}\n").as_bytes(),
        )?;
        Ok(())
    }

    /// The recorded runs; a missing or unreadable file, or one that does not parse, is `None`.
    pub fn run_record(&self) -> RunRecord {
        let read = |name| self.read(name).ok().flatten();
        RunRecord {
            last_run: read(LAST_RUN).as_deref().and_then(parse_last_run),
            last_success: read(LAST_SUCCESS).as_deref().and_then(parse_last_success),
        }
    }

    fn read(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let first = state.client_request_id().unwrap();
        assert_eq!(state.client_request_id().unwrap(), first);
        assert_eq!(first.get_version_num(), 4);
    }

    #[test]
    fn damaged_client_request_id_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CLIENT_REQUEST_ID), "not a guid").unwrap();
        let state = StateDir::new(dir.path());
        let id = state.client_request_id().unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(CLIENT_REQUEST_ID)).unwrap(),
            format!("{id}\n")
        );
    }

    #[test]
    fn runs_are_recorded_and_a_failure_keeps_the_last_success() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert_eq!(state.run_record(), RunRecord::default());
        state.record_run(1_700_000_000, 0).unwrap();
        assert_eq!(
            state.run_record(),
            RunRecord {
                last_run: Some((1_700_000_000, 0)),
                last_success: Some(1_700_000_000),
            }
        );
        state.record_run(1_700_003_600, 2).unwrap();
        assert_eq!(
            state.run_record(),
            RunRecord {
                last_run: Some((1_700_003_600, 2)),
                last_success: Some(1_700_000_000),
            }
        );
    }

    #[test]
    fn run_files_parse_strictly() {
        assert_eq!(parse_last_run("1700000000 3\n"), Some((1_700_000_000, 3)));
        assert_eq!(parse_last_run("1700000000"), None);
        assert_eq!(parse_last_run("1700000000 3 x"), None);
        assert_eq!(parse_last_run("soon 0"), None);
        assert_eq!(parse_last_run("1700000000 300"), None);
        assert_eq!(parse_last_success(" 1700000000\n"), Some(1_700_000_000));
        assert_eq!(parse_last_success(""), None);
    }

    #[test]
    fn version_and_selection_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert_eq!(state.recorded_version().unwrap(), None);
        state.record("2025043000", "instance=Worldwide").unwrap();
        assert_eq!(
            state.recorded_version().unwrap().as_deref(),
            Some("2025043000")
        );
        assert_eq!(
            state.recorded_selection().unwrap().as_deref(),
            Some("instance=Worldwide")
        );
    }
}
