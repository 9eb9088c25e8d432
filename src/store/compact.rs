//! Compacting the logs a node keeps for its peers: its own `events` and the other origins'
//! entries in `relayed`. An entry is deleted once every peer heard from recently has applied
//! it; a peer away longer than the backlog window stops holding entries back, and when it
//! returns past what is kept it catches up from a snapshot (`store::snapshot`) instead.
//!
//! What each peer has applied is what it told this node (`peer_applied`): the cursor it acks
//! of this node's log, and the cursors of other origins it states to a node that relays for
//! it. The mesh hands those reports to [`record`] with every pass, so they survive a restart
//! and a peer that is down still holds its entries for the whole window. Deleting goes in
//! batches of [`BATCH`] rows, one writer job each, so a send waits behind one batch at most.
//!
//! The newest entry of the own log always stays: the log's head is its largest seq, and a
//! head that fell back to 0 would hand out seqs the peers have already applied. Below the
//! entries kept, `meta` `log_floor` says how far the log was compacted, so a peer asking for
//! entries after a point below it is sent a snapshot rather than a log with a hole.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

/// Rows deleted per writer job.
pub const BATCH: u64 = 1024;

/// What a peer told this node it has applied of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The peer's log key (instance id).
    pub peer: String,
    /// Whose log: this node's instance, or another origin's log key.
    pub origin: String,
    /// Applied up to and including this entry.
    pub seq: u64,
}

/// What one compaction job deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Entries of this node's log.
    pub events: u64,
    /// Relayed entries of other origins.
    pub relayed: u64,
}

impl Compacted {
    /// Nothing was left to delete.
    pub fn is_empty(&self) -> bool {
        self.events == 0 && self.relayed == 0
    }
}

/// Records peers' reports (a report never moves a peer's mark back: an older frame can come
/// after a newer one) and that the peers in `linked` are linked now; forgets peers not heard
/// from since `cutoff` (ms; `None`: kept however long they are away).
pub fn record(
    conn: &Connection,
    reports: &[Applied],
    linked: &[String],
    now: i64,
    cutoff: Option<i64>,
) -> Result<()> {
    let mut put = conn.prepare_cached(
        "INSERT INTO peer_applied (peer, origin, seq, seen_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT(peer, origin) DO UPDATE SET seq = max(seq, excluded.seq), seen_at = ?4",
    )?;
    for a in reports {
        put.execute(params![a.peer, a.origin, a.seq as i64, now])?;
    }
    let mut seen = conn.prepare_cached("UPDATE peer_applied SET seen_at = ?2 WHERE peer = ?1")?;
    for p in linked {
        seen.execute(params![p, now])?;
    }
    if let Some(cutoff) = cutoff {
        conn.prepare_cached("DELETE FROM peer_applied WHERE seen_at < ?1")?
            .execute([cutoff])?;
    }
    Ok(())
}

/// How far this node's log has been compacted: entries up to here may be gone.
pub fn floor(conn: &Connection) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'log_floor'")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Deletes one batch of entries every peer that counts has applied: of this node's log
/// (`own`: its instance), then of each relayed origin. Peers whose records [`record`] has
/// kept are the ones that count; with none, nobody is served from the log and it is emptied
/// (a peer that comes later is sent a snapshot).
pub fn compact_batch(conn: &Connection, own: &str) -> Result<Compacted> {
    let mut done = Compacted {
        events: compact_own(conn, own)?,
        relayed: 0,
    };
    if done.events >= BATCH {
        return Ok(done);
    }
    let origins: Vec<String> = conn
        .prepare_cached("SELECT DISTINCT origin FROM relayed")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for origin in origins {
        done.relayed += compact_relayed(conn, &origin, BATCH - done.relayed)?;
        if done.relayed >= BATCH {
            break;
        }
    }
    Ok(done)
}

/// One pass: records peers' reports (as [`record`]), then deletes in writer jobs of
/// [`BATCH`] rows until nothing is left to delete or `stopping` says the node is stopping.
pub async fn pass(
    store: &crate::store::Store,
    reports: Vec<Applied>,
    linked: Vec<String>,
    cutoff: Option<i64>,
    stopping: impl Fn() -> bool,
) -> Result<Compacted> {
    let now = crate::message::now_ms();
    store
        .write(move |tx| record(tx, &reports, &linked, now, cutoff))
        .await?;
    let mut all = Compacted::default();
    loop {
        let own = store.instance().to_owned();
        let d = store.write(move |tx| compact_batch(tx, &own)).await?;
        if d.is_empty() || stopping() {
            return Ok(all);
        }
        all.events += d.events;
        all.relayed += d.relayed;
    }
}

/// The lowest mark of `origin`'s log among the peers recorded (other than the origin
/// itself); `None`: no peer needs it.
fn watermark(conn: &Connection, origin: &str) -> Result<Option<u64>> {
    Ok(conn
        .prepare_cached("SELECT min(seq) FROM peer_applied WHERE origin = ?1 AND peer != ?1")?
        .query_row([origin], |r| r.get::<_, Option<i64>>(0))?
        .map(|s| s.max(0) as u64))
}

fn compact_own(conn: &Connection, own: &str) -> Result<u64> {
    let head = crate::store::log::head(conn)?;
    // The newest entry stays (see the module's doc).
    let mark = watermark(conn, own)?
        .unwrap_or(head)
        .min(head.saturating_sub(1));
    let floor = floor(conn)?;
    if mark <= floor {
        return Ok(0);
    }
    let upto = mark.min(floor + BATCH);
    let n = conn
        .prepare_cached("DELETE FROM events WHERE seq > ?1 AND seq <= ?2")?
        .execute(params![floor as i64, upto as i64])?;
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('log_floor', ?1)")?
        .execute([upto.to_string()])?;
    Ok(n as u64)
}

fn compact_relayed(conn: &Connection, origin: &str, limit: u64) -> Result<u64> {
    let mark = match watermark(conn, origin)? {
        Some(m) => m as i64,
        None => i64::MAX,
    };
    let upto: Option<i64> = conn
        .prepare_cached(
            "SELECT max(seq) FROM (SELECT seq FROM relayed WHERE origin = ?1 AND seq <= ?2 \
             ORDER BY seq LIMIT ?3)",
        )?
        .query_row(params![origin, mark, limit as i64], |r| r.get(0))?;
    let Some(upto) = upto else { return Ok(0) };
    let n = conn
        .prepare_cached("DELETE FROM relayed WHERE origin = ?1 AND seq <= ?2")?
        .execute(params![origin, upto])?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::{EventBody, append, configure, events_after};
    use crate::store::tests::Db;

    fn read(n: u64) -> EventBody {
        EventBody::Read {
            agent: "bob".into(),
            ids: vec![format!("m{n}")],
            at: n as i64,
        }
    }

    fn count(c: &Connection, sql: &str) -> u64 {
        c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64
    }

    fn run(c: &Connection) -> Compacted {
        let mut all = Compacted::default();
        loop {
            let d = compact_batch(c, "me").unwrap();
            if d.is_empty() {
                return all;
            }
            all.events += d.events;
            all.relayed += d.relayed;
        }
    }

    fn report(peer: &str, origin: &str, seq: u64) -> Applied {
        Applied {
            peer: peer.into(),
            origin: origin.into(),
            seq,
        }
    }

    #[test]
    fn the_own_log_is_cut_at_the_slowest_peer_and_keeps_its_head() {
        let db = Db::in_memory();
        let tx = db.tx();
        configure(&tx, "me", true).unwrap();
        for n in 1..=3000 {
            append(&tx, "me", &read(n)).unwrap();
        }
        // Written through the Tx's pending list: take them as committed.
        tx.log().take_pending(true);
        record(
            &tx,
            &[report("p1", "me", 2500), report("p2", "me", 1200)],
            &[],
            10,
            None,
        )
        .unwrap();
        assert_eq!(run(&tx).events, 1200);
        assert_eq!(floor(&tx).unwrap(), 1200);
        assert_eq!(events_after(&tx, 1200, 1).unwrap()[0].seq, 1201);
        // A stale report never moves a mark back.
        record(&tx, &[report("p2", "me", 5)], &[], 11, None).unwrap();
        record(&tx, &[report("p2", "me", 3000)], &[], 12, None).unwrap();
        run(&tx);
        // Everyone has everything: only the head is left.
        assert_eq!(count(&tx, "SELECT count(*) FROM events"), 500);
        record(&tx, &[report("p1", "me", 3000)], &[], 13, None).unwrap();
        run(&tx);
        assert_eq!(count(&tx, "SELECT count(*) FROM events"), 1);
        assert_eq!(crate::store::log::head(&tx).unwrap(), 3000);
    }

    #[test]
    fn a_peer_away_past_the_window_stops_holding_entries_back() {
        let db = Db::in_memory();
        let tx = db.tx();
        configure(&tx, "me", true).unwrap();
        for n in 1..=10 {
            append(&tx, "me", &read(n)).unwrap();
        }
        tx.log().take_pending(true);
        record(
            &tx,
            &[report("away", "me", 2), report("here", "me", 10)],
            &[],
            1_000,
            None,
        )
        .unwrap();
        run(&tx);
        assert_eq!(floor(&tx).unwrap(), 2);
        // "here" is linked and stays; "away" was last heard at 1,000.
        record(&tx, &[], &["here".into()], 9_000, Some(5_000)).unwrap();
        run(&tx);
        assert_eq!(floor(&tx).unwrap(), 9);
        assert_eq!(count(&tx, "SELECT count(*) FROM peer_applied"), 1);
    }

    #[test]
    fn relayed_entries_go_once_every_relaying_peer_has_them() {
        use crate::store::apply::apply;
        use crate::store::log::Event;
        let db = Db::in_memory();
        let tx = db.tx();
        let events = (1..=20)
            .map(|seq| Event {
                seq,
                body: read(seq),
            })
            .collect();
        apply(&tx, "o1", events).unwrap();
        // p1 wants o1 relayed and has 15; o1 itself does not count.
        record(
            &tx,
            &[report("p1", "o1", 15), report("o1", "o1", 0)],
            &[],
            1,
            None,
        )
        .unwrap();
        assert_eq!(run(&tx).relayed, 15);
        let left = crate::store::relayed::relayed_after(&tx, "o1", 0, 100)
            .unwrap()
            .unwrap();
        assert_eq!((left.after, left.events.len()), (15, 5));
        // Nobody left to relay to (an operator forgot p1's node): all of it goes.
        tx.execute_batch("INSERT INTO peer_instances (node, instance) VALUES ('n2', 'p1')")
            .unwrap();
        assert!(crate::store::release(&tx, "n2").unwrap());
        assert_eq!(run(&tx).relayed, 5);
    }

    #[test]
    fn a_forgotten_node_holds_nothing_back() {
        let db = Db::in_memory();
        let tx = db.tx();
        tx.execute_batch("INSERT INTO peer_instances (node, instance) VALUES ('n2', 'p1')")
            .unwrap();
        record(&tx, &[report("p1", "me", 3)], &[], 1, None).unwrap();
        assert!(crate::store::release(&tx, "n2").unwrap());
        assert_eq!(count(&tx, "SELECT count(*) FROM peer_applied"), 0);
    }
}
