//! The ranges file: one CIDR (or bare address) a line, `#` comments, and a header of
//! `# key: value` comments written by `pushgate ranges update`.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::{AllowlistError, CidrSet};

/// A ranges file larger than this is refused unread: the real list is a few KiB, and a path that
/// points at the wrong file must not exhaust memory.
pub const MAX_RANGES_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What the comment header says about where the list came from. Every key is optional: a
/// hand-written file needs none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangesHeader {
    /// `# source:` the feed URL (without the client id) or the file the list was built from.
    pub source: Option<String>,
    /// `# instance:` Worldwide, USGovDoD, USGovGCCHigh or China.
    pub instance: Option<String>,
    /// `# version:` Microsoft's feed version, e.g. `2025043000`.
    pub version: Option<String>,
    /// `# fetched:` RFC 3339 time of the download.
    pub fetched: Option<String>,
    /// `# count:` how many ranges the writer listed; checked against the lines that follow, so a
    /// truncated copy is refused instead of silently admitting less.
    pub count: Option<usize>,
}

/// A parsed ranges file.
#[derive(Debug, Clone)]
pub struct RangesFile {
    pub set: CidrSet,
    pub header: RangesHeader,
}

impl RangesFile {
    pub fn version(&self) -> Option<&str> {
        self.header.version.as_deref()
    }
}

/// Why a ranges file was refused. Line numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangesFileError {
    #[error("line {line}: {text:?} is not a CIDR or address")]
    BadEntry { line: usize, text: String },
    #[error("line {line}: `# count:` needs a number, found {text:?}")]
    BadCount { line: usize, text: String },
    #[error(
        "the header says `# count: {declared}` but the file lists {listed} ranges \
         (a truncated copy? after editing by hand, fix or remove the count line)"
    )]
    CountMismatch { declared: usize, listed: usize },
    #[error("no ranges listed: a file that admits nothing is refused")]
    Empty,
}

/// Parses the text of a ranges file. An entry may carry a trailing `# comment`. Header keys are
/// read from `# key: value` comments before the first entry; unknown keys are ignored.
pub fn parse_ranges_file(text: &str) -> Result<RangesFile, RangesFileError> {
    let mut header = RangesHeader::default();
    let mut nets = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let (content, comment) = match raw.split_once('#') {
            Some((content, comment)) => (content.trim(), Some(comment)),
            None => (raw.trim(), None),
        };
        if content.is_empty() {
            if nets.is_empty() {
                if let Some(comment) = comment {
                    read_header_line(comment, line, &mut header)?;
                }
            }
            continue;
        }
        let net = parse_entry(content).ok_or_else(|| RangesFileError::BadEntry {
            line,
            text: content.to_string(),
        })?;
        nets.push(net);
    }
    if nets.is_empty() {
        return Err(RangesFileError::Empty);
    }
    if let Some(declared) = header.count {
        if declared != nets.len() {
            return Err(RangesFileError::CountMismatch {
                declared,
                listed: nets.len(),
            });
        }
    }
    Ok(RangesFile {
        set: CidrSet::from_nets(nets),
        header,
    })
}

/// One CIDR, or a bare address taken as its own /32 or /128.
pub fn parse_entry(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn read_header_line(
    comment: &str,
    line: usize,
    header: &mut RangesHeader,
) -> Result<(), RangesFileError> {
    let Some((key, value)) = comment.split_once(':') else {
        return Ok(());
    };
    let value = value.trim();
    let slot = match key.trim() {
        "source" => &mut header.source,
        "instance" => &mut header.instance,
        "version" => &mut header.version,
        "fetched" => &mut header.fetched,
        "count" => {
            let count = value
                .parse::<usize>()
                .map_err(|_| RangesFileError::BadCount {
                    line,
                    text: value.to_string(),
                })?;
            header.count.get_or_insert(count);
            return Ok(());
        }
        _ => return Ok(()),
    };
    if slot.is_none() && !value.is_empty() {
        *slot = Some(value.to_string());
    }
    Ok(())
}

/// Reads and parses the ranges file at `path`.
pub fn read_ranges_file(path: &Path) -> Result<RangesFile, AllowlistError> {
    let text = read_limited(path)?;
    parse_ranges_file(&text).map_err(|source| AllowlistError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

fn read_limited(path: &Path) -> Result<String, AllowlistError> {
    let io = |source| AllowlistError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_RANGES_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_RANGES_FILE_BYTES {
        return Err(AllowlistError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_RANGES_FILE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|_| AllowlistError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITTEN: &str = "\
# pushgate ranges file
# source: https://endpoints.office.com/endpoints/Worldwide?ServiceAreas=Exchange
# instance: Worldwide
# version: 2025043000
# fetched: 2025-05-01T02:00:00Z
# count: 3

13.107.6.152/31
2603:1026::/36
131.253.33.215
";

    #[test]
    fn reads_header_and_entries() {
        let file = parse_ranges_file(WRITTEN).unwrap();
        assert_eq!(file.version(), Some("2025043000"));
        assert_eq!(file.header.instance.as_deref(), Some("Worldwide"));
        assert_eq!(file.header.fetched.as_deref(), Some("2025-05-01T02:00:00Z"));
        assert_eq!(file.header.count, Some(3));
        assert_eq!(file.set.len(), 3);
        assert!(file.set.contains("131.253.33.215".parse().unwrap()));
        assert_eq!(file.set.entries()[2].to_string(), "131.253.33.215/32");
    }

    #[test]
    fn hand_written_file_needs_no_header() {
        let file = parse_ranges_file("10.0.0.0/8   # office\n\n  ::1  \n").unwrap();
        assert_eq!(file.version(), None);
        assert_eq!(file.set.len(), 2);
    }

    #[test]
    fn crlf_lines_are_accepted() {
        let file = parse_ranges_file("# version: 7\r\n10.0.0.0/8\r\n").unwrap();
        assert_eq!(file.version(), Some("7"));
        assert_eq!(file.set.len(), 1);
    }

    #[test]
    fn bad_entry_names_its_line() {
        let err = parse_ranges_file("# c\n10.0.0.0/8\n10.0.0.0/33\n").unwrap_err();
        assert_eq!(
            err,
            RangesFileError::BadEntry {
                line: 3,
                text: "10.0.0.0/33".into()
            }
        );
        assert!(err.to_string().starts_with("line 3:"), "{err}");
        for bad in [
            "10.0.0.0/8 10.1.0.0/16",
            "example.com",
            "fe80::1%eth0",
            "10.0.0.0/",
        ] {
            assert!(parse_ranges_file(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_or_comment_only_file_is_refused() {
        assert_eq!(parse_ranges_file("").unwrap_err(), RangesFileError::Empty);
        assert_eq!(
            parse_ranges_file("# version: 1\n# count: 0\n\n").unwrap_err(),
            RangesFileError::Empty
        );
    }

    #[test]
    fn truncated_file_is_refused_by_its_count() {
        let truncated = &WRITTEN[..WRITTEN.find("2603").unwrap()];
        assert_eq!(
            parse_ranges_file(truncated).unwrap_err(),
            RangesFileError::CountMismatch {
                declared: 3,
                listed: 1
            }
        );
        let err = parse_ranges_file("# count: many\n10.0.0.0/8\n").unwrap_err();
        assert!(
            matches!(err, RangesFileError::BadCount { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn comments_after_the_first_entry_are_not_header() {
        let file = parse_ranges_file("10.0.0.0/8\n# version: 9\n# count: 5\n").unwrap();
        assert_eq!(file.version(), None);
        assert_eq!(file.header.count, None);
    }
}
