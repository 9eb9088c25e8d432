//! `switchboard prune [--dry-run]`: what the data dir's node deletes by its retention, now.
//! It asks the running node (hosting it here when none runs, like every command), so the
//! policy is the node's own: its flags, else `[retention]` in config.toml, else the defaults.

use crate::cli::Global;
use crate::cli::commands::{CLI_AGENT, Step, json, out};
use crate::cli::connect::connect;
use crate::protocol::{PruneResult, Role};

/// `switchboard prune`.
pub(super) async fn prune(g: &Global, dry_run: bool, as_json: bool) -> Step {
    let conn = connect(g, CLI_AGENT, Role::Cli, false).await?;
    let r = conn.client.prune(dry_run).await;
    conn.close().await;
    let r = r?;
    if as_json { json(&r) } else { out(&text(&r)) }
}

fn age(secs: Option<u64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) => humantime::format_duration(std::time::Duration::from_secs(s)).to_string(),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KB", b as f64 / f64::from(1 << 10)),
        b => format!("{b} bytes"),
    }
}

fn text(r: &PruneResult) -> String {
    let policy = format!(
        "retention: read messages {} after their last read, unread {} after they were sent",
        age(r.retain_read_seconds),
        age(r.retain_unread_seconds)
    );
    let what = format!(
        "{} message(s) ({} inbox row(s), {} of text)",
        r.messages,
        r.inbox_rows,
        size(r.bytes)
    );
    if r.dry_run {
        format!(
            "Would delete {what}; nothing was deleted. The store is {} on disk.\n({policy})",
            size(r.store_bytes_before)
        )
    } else {
        format!(
            "Deleted {what}. The store went from {} to {} on disk.\n({policy})",
            size(r.store_bytes_before),
            size(r.store_bytes_after)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_went_and_by_which_policy() {
        let r = PruneResult {
            dry_run: true,
            messages: 3,
            inbox_rows: 4,
            bytes: 2048,
            store_bytes_before: 3 << 20,
            store_bytes_after: 3 << 20,
            retain_read_seconds: Some(30 * 86_400),
            retain_unread_seconds: None,
        };
        let t = text(&r);
        assert!(
            t.starts_with("Would delete 3 message(s) (4 inbox row(s), 2.0 KB of text)"),
            "{t}"
        );
        assert!(t.contains("3.0 MB"), "{t}");
        assert!(t.contains("read messages 30days after"), "{t}");
        assert!(t.contains("unread never"), "{t}");
    }
}
