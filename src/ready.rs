//! The ready file (`--ready-file PATH`): a machine-readable signal that the node is up.
//!
//! Scripts, supervisors and tests that start kvnode wait for this file to appear and read the
//! node's name and ports from it; they never scrape the logs, whose wording may change. The
//! file is written once the node is ready (listening, registered with EPMD, storage recovered,
//! processes started), atomically (written to `PATH.tmp`, then renamed), so a reader sees
//! either no file or the whole line. It is removed on an orderly stop.
//!
//! Format: one line of space-separated `key=value` pairs, ending in a newline, for example
//!
//! ```text
//! node=kv@127.0.0.1 dist_port=39211 epmd_port=4369 pid=4242 creation=1733083321
//! ```
//!
//! Keys: `node` (full node name), `dist_port` (the bound distribution port, useful with
//! `--port 0`), `epmd_port`, `pid` (of the kvnode process), `creation` (handed out by the first
//! EPMD registration). Values never hold spaces or `=` (node names are validated by the CLI).
//! Readers should ignore keys they do not know: keys may be added, never renamed or dropped.

use std::path::{Path, PathBuf};

/// What the ready file says about a running node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Full node name, `name@host`.
    pub node: String,
    /// The bound distribution port.
    pub dist_port: u16,
    /// The EPMD port the node registered with (or serves itself).
    pub epmd_port: u16,
    /// The kvnode process id.
    pub pid: u32,
    /// Creation of the first EPMD registration.
    pub creation: u32,
}

/// Errors reading a ready line back ([`Ready::parse`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(not(test), allow(dead_code))] // read back by the unit tests; tests/ parse their own
pub enum ParseError {
    /// A key the format requires is absent.
    #[error("ready line has no {key}=")]
    Missing {
        /// The missing key.
        key: &'static str,
    },
    /// A numeric value does not parse.
    #[error("ready line has a bad {key}= value {value:?}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value, cut to a few dozen bytes.
        value: String,
    },
}

impl Ready {
    /// The line written to the file, newline included.
    pub fn to_line(&self) -> String {
        format!(
            "node={} dist_port={} epmd_port={} pid={} creation={}\n",
            self.node, self.dist_port, self.epmd_port, self.pid, self.creation
        )
    }

    /// Reads a line written by [`Ready::to_line`]; unknown keys are ignored.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn parse(line: &str) -> Result<Ready, ParseError> {
        let field = |key: &'static str| {
            line.split_whitespace()
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .ok_or(ParseError::Missing { key })
        };
        fn number<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<T, ParseError> {
            value.parse().map_err(|_| ParseError::BadValue {
                key,
                value: value.chars().take(32).collect(),
            })
        }
        Ok(Ready {
            node: field("node")?.to_owned(),
            dist_port: number("dist_port", field("dist_port")?)?,
            epmd_port: number("epmd_port", field("epmd_port")?)?,
            pid: number("pid", field("pid")?)?,
            creation: number("creation", field("creation")?)?,
        })
    }

    /// Describes the running `node`, in this process.
    pub fn of(node: &crate::Node) -> Ready {
        Ready {
            node: node.config().node_name.clone(),
            dist_port: node.port(),
            epmd_port: node.config().epmd_port,
            pid: std::process::id(),
            creation: node.creation(),
        }
    }
}

/// The written ready file; removes it when dropped (on an orderly stop, or when `run`
/// returns early).
#[derive(Debug)]
pub struct ReadyFile {
    path: PathBuf,
}

impl ReadyFile {
    /// Writes `ready` to `path` atomically: to `PATH.tmp` first, then renamed over `path`.
    pub fn write(path: &Path, ready: &Ready) -> std::io::Result<ReadyFile> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, ready.to_line())?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(ReadyFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the ready file");
        }
    }
}

/// Writes the ready file for `node` when `path` is given (`--ready-file`).
pub(crate) fn publish(
    path: Option<PathBuf>,
    node: &crate::Node,
) -> Result<Option<ReadyFile>, crate::Error> {
    let Some(path) = path else { return Ok(None) };
    match ReadyFile::write(&path, &Ready::of(node)) {
        Ok(file) => {
            tracing::debug!(path = %path.display(), "ready file written");
            Ok(Some(file))
        }
        Err(source) => Err(crate::Error::ReadyFile { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ready {
        Ready {
            node: "kv_1@127.0.0.1".into(),
            dist_port: 39211,
            epmd_port: 4369,
            pid: 4242,
            creation: 1_733_083_321,
        }
    }

    #[test]
    fn line_round_trips_and_is_one_line() {
        let line = sample().to_line();
        assert_eq!(
            line,
            "node=kv_1@127.0.0.1 dist_port=39211 epmd_port=4369 pid=4242 creation=1733083321\n"
        );
        assert_eq!(line.lines().count(), 1);
        assert_eq!(Ready::parse(&line), Ok(sample()));
    }

    #[test]
    fn parse_ignores_unknown_keys_and_order() {
        let r = Ready::parse("pid=4242 future=x creation=1733083321 epmd_port=4369 dist_port=39211 node=kv_1@127.0.0.1")
            .expect("parses");
        assert_eq!(r, sample());
    }

    #[test]
    fn parse_rejects_missing_and_bad_values() {
        assert_eq!(
            Ready::parse("node=a@b dist_port=1 epmd_port=2 pid=3"),
            Err(ParseError::Missing { key: "creation" })
        );
        assert!(matches!(
            Ready::parse("node=a@b dist_port=70000 epmd_port=2 pid=3 creation=4"),
            Err(ParseError::BadValue {
                key: "dist_port",
                ..
            })
        ));
    }

    #[test]
    fn write_is_atomic_and_drop_removes() {
        let dir = std::env::temp_dir().join(format!("kvnode_ready_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("ready");
        let file = ReadyFile::write(&path, &sample()).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(Ready::parse(&text), Ok(sample()));
        assert!(
            !dir.join("ready.tmp").exists(),
            "the temporary file is renamed"
        );
        // Writing again replaces the file whole.
        let mut again = sample();
        again.dist_port = 1;
        let file2 = ReadyFile::write(&path, &again).expect("rewrite");
        assert_eq!(
            Ready::parse(&std::fs::read_to_string(&path).expect("read")),
            Ok(again)
        );
        drop(file2);
        assert!(!path.exists(), "dropping the guard removes the file");
        drop(file); // already gone: no panic, no error
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_into_missing_dir_fails_cleanly() {
        let path = std::env::temp_dir()
            .join(format!("kvnode_ready_missing_{}", std::process::id()))
            .join("sub")
            .join("ready");
        assert!(ReadyFile::write(&path, &sample()).is_err());
    }
}
