//! Retention: deleting messages past their age, with everything that points at them, and
//! giving the freed pages back to the file system.
//!
//! A message is *read* once every inbox row it has is read (one with no inbox row — a topic
//! nobody had subscribed to — was read by nobody and never will be: it counts as read when it
//! was sent); its age then runs from the last read mark. Otherwise its age runs from when it was
//! sent. What goes with it: its inbox rows, its full-text entry (an external-content FTS5 index
//! forgets a row only when told the row's old text), and the row itself. Replies keep their
//! `reply_to` and `thread_id`, so a thread whose root is gone still shows what is left.
//!
//! The newest message is kept until another arrives, whatever its age: `seq` is a rowid, and
//! SQLite numbers a new row after the largest one left, so deleting the newest would hand its
//! seq to the next message, which the full-text index would then take as indexed already.
//!
//! The scan walks `messages` in arrival order in small batches, each a writer job of its own,
//! so deliveries queue behind one batch at most, and stops at the first message younger than
//! the shortest retention: arrival order is (nearly) age order, so nothing past it can be due.
//! A message that arrived late from a peer with an old timestamp waits until the scan reaches
//! it, that is until the messages that arrived before it are old enough.

use std::time::Duration;

use rusqlite::{Connection, params};

use crate::config::Retention;
use crate::error::Result;

/// Messages one batch looks at. Deleting one costs a few index updates and its FTS entry: a
/// batch stays around a few milliseconds on the writer.
pub const BATCH: u32 = 256;

/// Free pages one vacuum job hands back (4 MiB at 4 KiB pages).
pub const VACUUM_PAGES: u32 = 1024;

/// What one batch (or a whole dry run) found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Messages deleted (or, in a dry run, that would be).
    pub messages: u64,
    /// Their inbox rows.
    pub inbox_rows: u64,
    /// The bytes of their text (subject, body, data): what they held, roughly what goes.
    pub bytes: u64,
}

impl std::ops::AddAssign for Pruned {
    fn add_assign(&mut self, o: Pruned) {
        self.messages += o.messages;
        self.inbox_rows += o.inbox_rows;
        self.bytes += o.bytes;
    }
}

/// Where a batch left the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Go on after this seq.
    After(i64),
    /// Nothing more is due now.
    Done,
}

/// One message as the scan sees it.
struct Candidate {
    seq: i64,
    id: String,
    created_at: i64,
    rows: u64,
    unread: u64,
    last_read: Option<i64>,
    bytes: u64,
}

/// Whether `c` is past its age at `now` (ms).
fn due(policy: &Retention, c: &Candidate, now: i64) -> bool {
    let older = |age: Option<Duration>, since: i64| {
        age.is_some_and(|a| {
            since <= now.saturating_sub(i64::try_from(a.as_millis()).unwrap_or(i64::MAX))
        })
    };
    if c.unread == 0 {
        older(policy.read, c.last_read.unwrap_or(c.created_at))
    } else {
        older(policy.unread, c.created_at)
    }
}

/// The ms before which messages may be due, or `None` when the policy keeps everything.
fn horizon(policy: &Retention, now: i64) -> Option<i64> {
    let shortest = i64::try_from(policy.shortest()?.as_millis()).unwrap_or(i64::MAX);
    Some(now.saturating_sub(shortest))
}

/// Looks at up to `limit` messages after `after`; deletes the due ones unless `dry`.
pub fn prune_batch(
    conn: &Connection,
    policy: &Retention,
    now: i64,
    after: i64,
    limit: u32,
    dry: bool,
) -> Result<(Pruned, Scan)> {
    let Some(horizon) = horizon(policy, now) else {
        return Ok((Pruned::default(), Scan::Done));
    };
    let candidates = conn
        .prepare_cached(
            "SELECT m.seq, m.id, m.created_at, \
               (SELECT count(*) FROM inbox i WHERE i.msg_id = m.id), \
               (SELECT count(*) FROM inbox i WHERE i.msg_id = m.id AND i.read_at IS NULL), \
               (SELECT max(i.read_at) FROM inbox i WHERE i.msg_id = m.id), \
               length(m.body) + coalesce(length(m.subject), 0) + coalesce(length(m.data), 0) \
             FROM messages m WHERE m.seq > ?1 ORDER BY m.seq LIMIT ?2",
        )?
        .query_map(params![after, limit], |r| {
            Ok(Candidate {
                seq: r.get(0)?,
                id: r.get(1)?,
                created_at: r.get(2)?,
                rows: r.get(3)?,
                unread: r.get(4)?,
                last_read: r.get(5)?,
                bytes: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let full = candidates.len() as u32 == limit;
    // The newest message stays until another arrives: a rowid table numbers the next row
    // after its largest, and a seq used twice would be taken as indexed already (and by
    // the mesh's backfill, as logged already).
    let newest: Option<i64> = conn
        .prepare_cached("SELECT max(seq) FROM messages")?
        .query_row([], |r| r.get(0))?;
    let mut out = Pruned::default();
    let mut last = after;
    for c in &candidates {
        if c.created_at > horizon {
            return Ok((out, Scan::Done));
        }
        last = c.seq;
        if Some(c.seq) == newest || !due(policy, c, now) {
            continue;
        }
        out.messages += 1;
        out.inbox_rows += c.rows;
        out.bytes += c.bytes;
        if !dry {
            delete(conn, c)?;
        }
    }
    Ok((out, if full { Scan::After(last) } else { Scan::Done }))
}

/// Deletes one message with its inbox rows and its full-text entry.
fn delete(conn: &Connection, c: &Candidate) -> Result<()> {
    // Only rows the index already holds have an entry: the rest are indexed later, by seq,
    // from `messages`, where they will no longer be.
    conn.prepare_cached(
        "INSERT INTO messages_fts (messages_fts, rowid, subject, body) \
         SELECT 'delete', seq, subject, body FROM messages \
         WHERE seq = ?1 AND seq <= (SELECT last_seq FROM fts_progress)",
    )?
    .execute([c.seq])?;
    conn.prepare_cached("DELETE FROM inbox WHERE msg_id = ?1")?
        .execute([&c.id])?;
    conn.prepare_cached("DELETE FROM messages WHERE seq = ?1")?
        .execute([c.seq])?;
    Ok(())
}

/// Everything the policy deletes now, counted without deleting (on a reader connection: one
/// pass over what may be due, however long, never holds up the writer).
pub fn dry_run(conn: &Connection, policy: &Retention, now: i64) -> Result<Pruned> {
    let mut total = Pruned::default();
    let mut after = 0;
    loop {
        let (found, scan) = prune_batch(conn, policy, now, after, 4096, true)?;
        total += found;
        match scan {
            Scan::After(s) => after = s,
            Scan::Done => return Ok(total),
        }
    }
}

/// Hands up to `pages` free pages back to the file system; returns how many are still free.
/// The file shrinks at the next checkpoint.
pub fn vacuum(conn: &Connection, pages: u32) -> Result<u64> {
    let free: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    if free > 0 {
        // The pragma returns a row per page freed; stepping through them is what frees them.
        let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    Ok(conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?)
}

/// Turns on incremental vacuum (`auto_vacuum = INCREMENTAL`), without which deleted pages stay
/// in the file forever. A new store gets it before its first table; an older one is rebuilt
/// once (`VACUUM`, which needs about the store's size free again on disk). If that fails, the
/// store works as before and the next start tries again.
pub fn enable_incremental_vacuum(conn: &Connection, path: &std::path::Path) -> Result<()> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode == 2 {
        return Ok(());
    }
    // Counted first: setting the mode writes the header page of a new store, which then
    // looked like an old one to rebuild (and said so on every first start).
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    if pages == 0 {
        return Ok(());
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    tracing::info!(
        bytes,
        "rebuilding the store once so that space freed by retention goes back to the disk"
    );
    if let Err(e) = conn.execute_batch("VACUUM") {
        tracing::warn!(error = %e, "could not rebuild the store (it works as before; the next start tries again)");
    }
    Ok(())
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
