//! Rendering the ranges file and writing files atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// Where a list came from, for the file's comment header.
#[derive(Debug, Clone)]
pub struct ListOrigin {
    /// The feed URL without the client id, or the file the list was built from.
    pub source: String,
    pub instance: String,
    pub version: String,
    /// RFC 3339.
    pub fetched: String,
    /// `endpoint sets 1, 2`, for readers of the file.
    pub selection: String,
}

/// The ranges file's text: the header the allowlist reads back, then one CIDR a line.
pub fn render_ranges_file(
    origin: &ListOrigin,
    nets: &[IpNet],
    extra: usize,
    excluded: usize,
) -> String {
    let mut text = String::with_capacity(256 + nets.len() * 24);
    text.push_str(
        "# pushgate allowlist: the source addresses the gateway admits, one CIDR a line.\n",
    );
    text.push_str(
        "# Written by `pushgate ranges update`; add ranges with `[ranges] extra_ranges`,\n",
    );
    text.push_str("# not here: the next update replaces this file.\n");
    for (key, value) in [
        ("source", origin.source.as_str()),
        ("instance", origin.instance.as_str()),
        ("version", origin.version.as_str()),
        ("fetched", origin.fetched.as_str()),
        ("selection", origin.selection.as_str()),
    ] {
        text.push_str(&format!("# {key}: {}\n", one_line(value)));
    }
    text.push_str(&format!(
        "# operator ranges: {extra} extra, {excluded} excluded\n"
    ));
    text.push_str(&format!("# count: {}\n\n", nets.len()));
    for net in nets {
        text.push_str(&net.to_string());
        text.push('\n');
    }
    text
}

fn one_line(value: &str) -> String {
    value.replace(['\n', '\r', '#'], " ")
}

/// A file that could not be written, with the step that failed.
#[derive(Debug, thiserror::Error)]
#[error("writing {}: {step}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

/// Replaces `path` with `contents` so that readers see the old file or the new one, never a mix,
/// and the new one survives a crash: temporary file in the same directory, fsync, rename over
/// the old file, fsync of the directory. A failure leaves the old file untouched.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let fail = |step: &'static str| {
        move |source| WriteError {
            path: path.to_path_buf(),
            step,
            source,
        }
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path names no file"))
        .map_err(fail("naming the file"))?;
    fs::create_dir_all(&directory).map_err(fail("creating the directory"))?;
    let temporary = directory.join(format!(
        ".{}.tmp-{}-{:08x}",
        file_name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o644);
        }
        let mut file = options
            .open(&temporary)
            .map_err(fail("creating the temporary file"))?;
        file.write_all(contents)
            .map_err(fail("writing the temporary file"))?;
        file.sync_all()
            .map_err(fail("syncing the temporary file"))?;
        drop(file);
        fs::rename(&temporary, path).map_err(fail("renaming the temporary file over it"))?;
        Ok(())
    })();
    if result.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&temporary);
        return result;
    }
    sync_directory(&directory).map_err(fail("syncing the directory"))
}

#[cfg(unix)]
fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::parse_ranges_file;

    fn origin() -> ListOrigin {
        ListOrigin {
            source: "https://endpoints.office.com/endpoints/Worldwide?ServiceAreas=Exchange".into(),
            instance: "Worldwide".into(),
            version: "2025043000".into(),
            fetched: "2025-05-01T02:00:00Z".into(),
            selection: "endpoint sets 1, 2".into(),
        }
    }

    #[test]
    fn rendered_file_reads_back() {
        let nets: Vec<IpNet> = ["40.96.0.0/13", "2603:1026::/36"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let text = render_ranges_file(&origin(), &nets, 0, 0);
        let file = parse_ranges_file(&text).unwrap();
        assert_eq!(file.version(), Some("2025043000"));
        assert_eq!(file.header.instance.as_deref(), Some("Worldwide"));
        assert_eq!(file.header.fetched.as_deref(), Some("2025-05-01T02:00:00Z"));
        assert_eq!(file.header.count, Some(2));
        assert_eq!(file.set.entries(), &nets[..]);
    }

    #[test]
    fn header_values_stay_on_one_line() {
        let mut o = origin();
        o.source = "file\n10.0.0.0/8 # x".into();
        let nets: Vec<IpNet> = vec!["40.96.0.0/13".parse().unwrap()];
        let file = parse_ranges_file(&render_ranges_file(&o, &nets, 0, 0)).unwrap();
        assert_eq!(file.set.len(), 1);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/list.txt");
        write_atomically(&path, b"one\n").unwrap();
        write_atomically(&path, b"two\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two\n");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["list.txt"]);
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.txt");
        fs::write(&path, b"old\n").unwrap();
        // A directory where the file should go makes the rename fail.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inner")).unwrap();
        let err = write_atomically(&blocked, b"new\n").unwrap_err();
        assert_eq!(err.step, "renaming the temporary file over it");
        assert_eq!(fs::read(&path).unwrap(), b"old\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
