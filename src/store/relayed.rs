//! Other origins' entries as this node applied them, kept so it can relay them: two nodes
//! that cannot link (both behind NAT) replicate through a node both are linked to.
//!
//! Every entry of another origin that `apply` takes is recorded here in the same transaction,
//! with `prev`, the entry of that origin applied just before it. The rows of one origin are
//! therefore a chain with no hole from the first one kept, and a batch read from them says
//! where it starts (`after`): a receiver that has not applied that far takes none of it, so a
//! relay can never make it skip entries. A node that applied an origin before this table
//! existed has a chain that starts late; its receivers get that origin's older entries from
//! another node, or from the origin itself.

use rusqlite::{Connection, params};

use crate::error::Result;
use crate::store::log::{Decoded, Event, EventBody, decode, message_ref};

/// A run of one origin's entries to relay.
#[derive(Debug)]
pub struct RelayBatch {
    /// The entry applied just before the first of `events`.
    pub after: u64,
    /// The entries, oldest first.
    pub events: Vec<Event>,
    /// The seq of the last row read (past a message no longer stored, which is left out).
    pub last: u64,
}

/// Records an entry of `origin` taken by `apply` (after `prev`); a message entry by reference.
pub(crate) fn record(
    conn: &Connection,
    origin: &str,
    seq: u64,
    prev: u64,
    body: &EventBody,
) -> Result<()> {
    let payload = match body {
        EventBody::Message(m) => message_ref(&m.id),
        other => serde_json::to_string(other).unwrap_or_default(),
    };
    conn.prepare_cached(
        "INSERT OR REPLACE INTO relayed (origin, seq, prev, payload) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![origin, seq as i64, prev as i64, payload])?;
    Ok(())
}

/// `origin`'s entries after `after`, oldest first, at most `limit`; `None` when there are none.
/// A message no longer stored is left out (retention deleted it here; it is old and gone
/// everywhere in time), so one deleted message cannot stop the relay.
pub fn relayed_after(
    conn: &Connection,
    origin: &str,
    after: u64,
    limit: u32,
) -> Result<Option<RelayBatch>> {
    let rows = conn
        .prepare_cached(
            "SELECT seq, prev, payload FROM relayed WHERE origin = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![origin, after as i64, limit], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let Some(&(_, first_prev, _)) = rows.first() else {
        return Ok(None);
    };
    let mut batch = RelayBatch {
        after: first_prev,
        events: Vec::with_capacity(rows.len()),
        last: after,
    };
    for (seq, _, payload) in rows {
        match decode(conn, &payload)? {
            Decoded::Body(body) => batch.events.push(Event { seq, body: *body }),
            Decoded::MissingMessage(id) => {
                tracing::debug!(origin, seq, %id, "not relaying a message no longer stored");
            }
            Decoded::Unreadable(e) => {
                tracing::error!(origin, seq, error = %e, "unreadable relayed entry");
                break;
            }
        }
        batch.last = seq;
    }
    Ok(Some(batch))
}

/// How far this node has applied each origin's log: (log key, last seq).
pub fn cursors(conn: &Connection) -> Result<Vec<(String, u64)>> {
    Ok(conn
        .prepare_cached("SELECT origin, seq FROM peer_cursors ORDER BY origin")?
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::apply::apply;
    use crate::store::tests::Db;

    fn read(agent: &str, seq: u64) -> Event {
        Event {
            seq,
            body: EventBody::Read {
                agent: agent.into(),
                ids: vec![format!("m{seq}")],
                at: seq as i64,
            },
        }
    }

    #[test]
    fn applied_entries_are_kept_as_a_chain_and_read_back_from_any_point() {
        let db = Db::in_memory();
        let tx = db.tx();
        // The origin's numbering may skip (3 is missing); a repeat is not kept twice.
        apply(&tx, "o1", vec![read("bob", 1), read("bob", 2)]).unwrap();
        apply(&tx, "o1", vec![read("bob", 2), read("bob", 4)]).unwrap();
        let all = relayed_after(&tx, "o1", 0, 10).unwrap().unwrap();
        assert_eq!(all.after, 0);
        let seqs: Vec<u64> = all.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 4]);
        let rest = relayed_after(&tx, "o1", 2, 10).unwrap().unwrap();
        assert_eq!((rest.after, rest.last, rest.events.len()), (2, 4, 1));
        assert!(relayed_after(&tx, "o1", 4, 10).unwrap().is_none());
        assert!(relayed_after(&tx, "o2", 0, 10).unwrap().is_none());
        assert_eq!(cursors(&tx).unwrap(), [("o1".to_owned(), 4)]);
    }
}
