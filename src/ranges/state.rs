//! The updater's state directory: the machine's client request id, and the version and selection
//! of the last list written.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::write::{write_atomically, WriteError};

const CLIENT_REQUEST_ID: &str = "client-request-id";
const VERSION: &str = "version";
const SELECTION: &str = "selection";

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
