//! Which data dir is which. A node id is a name an operator (or a cloned VM's host name)
//! chooses, so two data dirs can carry the same one; the instance id is 128 random bits made
//! once per data dir and never changed. Peers key their cursors of a node's log by it, so two
//! logs are never applied against one cursor, and `peer_instances` remembers which instance
//! holds each node id, so a second one claiming it is refused rather than silently merged.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;
use crate::store::Tx;

/// This data dir's instance id, made on first open.
pub(crate) fn own(conn: &Connection) -> Result<String> {
    let fresh = crate::auth::random_hex()
        .chars()
        .take(32)
        .collect::<String>();
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?1)",
        [fresh],
    )?;
    Ok(
        conn.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
            r.get(0)
        })?,
    )
}

/// Whether a peer may link as the node id it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// It holds the node id (now recorded): its log is keyed by its instance.
    Holder,
    /// Another instance holds the node id.
    Conflict {
        /// The instance that holds it.
        holder: String,
    },
}

/// Records that `instance` links as `node`, unless another instance holds `node`. The first
/// instance to link under a node id adopts a cursor left keyed by that node id (from before
/// instance ids), so an upgraded mesh resumes instead of replaying every log. An instance that
/// comes back under a new node id gives up its old one.
pub fn bind_peer(tx: &Tx<'_>, node: &str, instance: &str, now: i64) -> Result<Bound> {
    let holder: Option<String> = tx
        .prepare_cached("SELECT instance FROM peer_instances WHERE node = ?1")?
        .query_row([node], |r| r.get(0))
        .optional()?;
    match holder {
        Some(h) if h != instance => return Ok(Bound::Conflict { holder: h }),
        Some(_) => {}
        None => {
            let mine: bool = tx
                .prepare_cached("SELECT count(*) FROM peer_cursors WHERE origin = ?1")?
                .query_row([instance], |r| r.get::<_, i64>(0))?
                > 0;
            if !mine {
                tx.prepare_cached("UPDATE peer_cursors SET origin = ?2 WHERE origin = ?1")?
                    .execute(params![node, instance])?;
            }
        }
    }
    tx.prepare_cached("DELETE FROM peer_instances WHERE instance = ?1 AND node != ?2")?
        .execute(params![instance, node])?;
    tx.prepare_cached(
        "INSERT INTO peer_instances (node, instance, seen_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT(node) DO UPDATE SET seen_at = ?3",
    )?
    .execute(params![node, instance, now])?;
    Ok(Bound::Holder)
}

/// Which instance holds each peer node id: (node, instance).
pub fn holders(conn: &Connection) -> Result<Vec<(String, String)>> {
    Ok(conn
        .prepare_cached("SELECT node, instance FROM peer_instances ORDER BY node")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Frees the node id `node` (an operator forgot the node): the next instance to link under it
/// holds it. Cursors stay with their instances, so the old one, if it ever comes back, resumes
/// where it stopped, and a new one starts from its log's first entry. What the forgotten
/// instance had applied no longer holds the log back from compaction (if it comes back past
/// what is kept, it is sent a snapshot).
pub fn release(conn: &Connection, node: &str) -> Result<bool> {
    conn.prepare_cached(
        "DELETE FROM peer_applied WHERE peer IN (SELECT instance FROM peer_instances WHERE node = ?1)",
    )?
    .execute([node])?;
    Ok(conn
        .prepare_cached("DELETE FROM peer_instances WHERE node = ?1")?
        .execute([node])?
        > 0)
}
