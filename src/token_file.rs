//! A bearer-token file that is read again when it changes, so the token shared by the gateway and
//! the worker can be rotated without a restart. Used by both; depends on `config` (the file's
//! format) and `filestamp` only.

use std::path::{Path, PathBuf};

use crate::config::{read_token_file, ConfigError};
use crate::filestamp::FileStamp;

/// How often the gateway and the worker look at their token file.
pub const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches one token file; [`TokenFile::check`] says when it holds a new token.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    stamp: Option<FileStamp>,
    token: String,
}

/// What one look at the file found.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Unchanged,
    /// The file holds a different token now.
    Rotated(String),
    /// The file changed but does not hold a usable token; the previous one stays in use.
    Refused(String),
}

impl TokenFile {
    /// Reads the token now; an unreadable or empty file is an error (at start-up nothing else
    /// could be used).
    pub fn open(path: &Path) -> Result<(TokenFile, String), ConfigError> {
        let stamp = FileStamp::of(path).ok();
        let token = read_token_file(path)?;
        Ok((
            TokenFile {
                path: path.to_path_buf(),
                stamp,
                token: token.clone(),
            },
            token,
        ))
    }

    /// Reads the file again if its stamp changed. A rewrite with the same token is `Unchanged`.
    /// A broken file is reported once per version of the file.
    pub fn check(&mut self) -> TokenCheck {
        let stamp = FileStamp::of(&self.path).ok();
        if stamp == self.stamp {
            return TokenCheck::Unchanged;
        }
        self.stamp = stamp;
        match read_token_file(&self.path) {
            Ok(token) if token == self.token => TokenCheck::Unchanged,
            Ok(token) => {
                self.token = token.clone();
                TokenCheck::Rotated(token)
            }
            Err(e) => TokenCheck::Refused(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_seen_once_and_broken_files_keep_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let (mut file, token) = TokenFile::open(&path).unwrap();
        assert_eq!(token, "first");
        assert_eq!(file.check(), TokenCheck::Unchanged);
        // Written through a rename, as operators and tools replace secrets.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(file.check(), TokenCheck::Rotated("second".into()));
        assert_eq!(file.check(), TokenCheck::Unchanged);
        std::fs::write(&next, "\n\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(matches!(file.check(), TokenCheck::Refused(_)));
        assert_eq!(file.check(), TokenCheck::Unchanged, "reported once");
        std::fs::write(&next, "second").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(
            file.check(),
            TokenCheck::Unchanged,
            "the same token again is no rotation"
        );
        assert!(TokenFile::open(&dir.path().join("missing")).is_err());
    }
}
