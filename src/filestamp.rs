//! What identifies one version of a file on disk, for the watchers that reload the ranges file
//! and the TLS certificate: modification time, length, device and inode. Polling these sees atomic
//! renames, in-place writes, symlink flips and bind mounts alike, where file-system events miss
//! some of them.

use std::io;
use std::path::Path;
use std::time::SystemTime;

/// Compared for equality only: a change in any field means "read the file again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    device: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file `path` points to now (symlinks followed).
    pub fn of(path: &Path) -> io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            device: meta.dev(),
            inode: meta.ino(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_and_rewrite_change_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "a").unwrap();
        let first = FileStamp::of(&path).unwrap();
        assert_eq!(first, FileStamp::of(&path).unwrap());
        let other = dir.path().join("g");
        std::fs::write(&other, "a").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_ne!(
            first,
            FileStamp::of(&path).unwrap(),
            "a rename gives a new inode"
        );
        let renamed = FileStamp::of(&path).unwrap();
        std::fs::write(&path, "ab").unwrap();
        assert_ne!(renamed, FileStamp::of(&path).unwrap(), "a longer file");
        assert!(FileStamp::of(&dir.path().join("missing")).is_err());
    }
}
