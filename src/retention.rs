//! How long a node keeps messages: the setting, its parsing, and how flags and the
//! `[retention]` table combine. Deleting is the store's (`store::retention`); when it runs is
//! the core's (`core::retention`).

use std::time::Duration;

use crate::error::{Error, Result};

/// How long a node keeps messages; `None` keeps them forever. A local decision of each node:
/// replicated messages are deleted by every node's own policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Since the last of its recipients read it (a message nobody can read counts as read
    /// when it was sent).
    pub read: Option<Duration>,
    /// Since it was sent, for a message some recipient has not read.
    pub unread: Option<Duration>,
    /// How often passes run, when not derived from the ages (tests: a pass that never comes
    /// by itself, so `prune --dry-run` sees what is due).
    pub every: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            read: Some(Duration::from_secs(30 * 86_400)),
            unread: None,
            every: None,
        }
    }
}

impl Retention {
    /// The shortest age at which anything becomes deletable, if anything ever does.
    pub fn shortest(&self) -> Option<Duration> {
        match (self.read, self.unread) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// How long the replication log is kept for peers, and how often it is compacted. Entries
/// every peer has applied go at the next pass; a peer not heard from for `keep_absent` stops
/// holding entries back and, when it returns past what is kept, catches up from a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// How long a known peer that is away keeps its backlog (`--retain-log`); `None`: until it
    /// returns or is forgotten (`switchboard mesh forget`).
    pub keep_absent: Option<Duration>,
    /// Time between passes (`--compact-interval`, hidden: tests).
    pub every: Duration,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            keep_absent: Some(Duration::from_secs(7 * 86_400)),
            every: Duration::from_secs(30),
        }
    }
}

impl Compaction {
    /// From `--retain-log` (else `[retention] log`, else 7 days) and `--compact-interval`.
    pub(crate) fn resolve(
        flag: Option<&str>,
        file: Option<&str>,
        every: Option<&str>,
    ) -> Result<Compaction> {
        let d = Compaction::default();
        let every = match every {
            Some(t) => parse_retention(t)
                .map_err(|e| Error::Config(format!("--compact-interval: {e}")))?
                .unwrap_or(d.every),
            None => d.every,
        };
        Ok(Compaction {
            keep_absent: retention_of(flag, file, "log", d.keep_absent)?,
            every,
        })
    }
}

/// Parses a retention duration: `never`, or a number with a unit (`30d`, `12h`, `90m`, `45s`,
/// combinations like `1h30m`). A bare number is refused: seconds or days would both be a
/// plausible reading, and a wrong guess deletes mail.
pub fn parse_retention(text: &str) -> std::result::Result<Option<Duration>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    if t.parse::<f64>().is_ok() {
        return Err(format!(
            "'{t}' needs a unit: e.g. 30d, 12h, 90m, 45s (or never)"
        ));
    }
    match humantime::parse_duration(t) {
        Ok(d) if d.is_zero() => Err(format!(
            "'{t}' would delete every message at once; give a positive duration or never"
        )),
        Ok(d) => Ok(Some(d)),
        Err(e) => Err(format!(
            "'{t}' is not a duration ({e}; e.g. 30d, 12h, 90m, 45s, or never)"
        )),
    }
}

/// A retention setting from its flag, else the `[retention]` table, else the default.
pub(crate) fn retention_of(
    flag: Option<&str>,
    file: Option<&str>,
    name: &str,
    default: Option<Duration>,
) -> Result<Option<Duration>> {
    match (flag, file) {
        (Some(f), _) => {
            parse_retention(f).map_err(|e| Error::Config(format!("--retain-{name}: {e}")))
        }
        (None, Some(f)) => {
            parse_retention(f).map_err(|e| Error::Config(format!("[retention] {name}: {e}")))
        }
        (None, None) => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{CONFIG_FILE, NodeConfig, NodeOverrides, parse_retention};

    #[test]
    fn retention_settings() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |o: NodeOverrides| NodeConfig::resolve(dir.path().into(), o);
        let d = resolve(NodeOverrides::default()).unwrap().limits.retention;
        assert_eq!(d.read, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(d.unread, None);
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[retention]\nread = \"7d\"\nunread = \"90d\"\n",
        )
        .unwrap();
        let r = resolve(NodeOverrides {
            retain_read: Some("never".into()),
            ..Default::default()
        })
        .unwrap()
        .limits
        .retention;
        assert_eq!(r.read, None);
        assert_eq!(r.unread, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(r.shortest(), Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(
            parse_retention("1h30m"),
            Ok(Some(Duration::from_secs(5400)))
        );
        assert_eq!(parse_retention("1s"), Ok(Some(Duration::from_secs(1))));
        for bad in ["30", "0s", "soon", ""] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
        let e = resolve(NodeOverrides {
            retain_unread: Some("3".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("--retain-unread: '3' needs a unit"),
            "{e}"
        );
        std::fs::write(dir.path().join(CONFIG_FILE), "[retention]\nread = \"x\"\n").unwrap();
        let e = resolve(NodeOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("[retention] read"), "{e}");
    }
}
