//! A snapshot of the current state, for a node that needs entries a log no longer holds: one
//! that joins after compaction, or comes back after the backlog window (`store::compact`).
//! It is what applying every log this node has applied would have built — the messages still
//! kept with their inboxes and read marks, read marks of messages not here, the directory,
//! subscriptions and tokens (with the stamps of their removals), and forgotten names — as
//! ordinary [`EventBody`] changes, so the receiver applies each with the very code that
//! applies log entries (`apply::apply_body`): a row it has already changes nothing, and
//! stamps decide conflicts exactly as they do for the log.
//!
//! Nothing here knows how a snapshot travels: the mesh pages it over a link, and any other
//! carrier (a backbone stream) can do the same. The protocol is:
//! 1. the producer calls [`begin`]: its log head and its cursor of every other origin, taken
//!    *before* any row is read;
//! 2. it reads [`page`]s, from [`Pos::default`], each on its own read (pages need not come from
//!    one transaction: every row read after `begin` is at least as new as that point, and the
//!    entries after it that are sent next apply again idempotently);
//! 3. the receiver applies each page with [`apply_page`], then [`finish`] with what `begin`
//!    said: only then do its cursors move (to the producer's head, and to the producer's
//!    cursor of each other origin, never back), so a snapshot cut short leaves the cursors
//!    where they were and is simply sent again.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::Tx;
use crate::store::apply::{Applied, apply_body, fold_names};
use crate::store::directory::agents_after;
use crate::store::log::{EventBody, cursor, head, load_message};
use crate::store::names::Spellings;
use crate::store::rows::AgentRow;
use crate::store::stamps::{Stamped, stamp_of};

/// Where the producer's log and cursors stood when its snapshot began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Start {
    /// Its own log's head: the receiver's cursor of the producer after the snapshot.
    pub head: u64,
    /// How far it had applied each other origin: (log key, last seq).
    pub cursors: Vec<(String, u64)>,
}

/// The parts of a snapshot, in the order they are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Part {
    #[default]
    Messages,
    Marks,
    Agents,
    Subscriptions,
    Tokens,
    Forgets,
}

impl Part {
    fn next(self) -> Option<Part> {
        Some(match self {
            Part::Messages => Part::Marks,
            Part::Marks => Part::Agents,
            Part::Agents => Part::Subscriptions,
            Part::Subscriptions => Part::Tokens,
            Part::Tokens => Part::Forgets,
            Part::Forgets => return None,
        })
    }
}

/// How far a snapshot has been read: a part and the last key read of it. It travels (a
/// carrier that pages on request hands it back with each request), so the producer keeps no
/// state between pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    part: Part,
    /// `messages.seq` (messages).
    seq: i64,
    /// First and second key (agent and message id, name, topic and agent).
    a: String,
    b: String,
}

/// Rows read from one part per query.
const ROWS: u32 = 128;

/// What a snapshot starts from: this node's log head and its cursor of every other origin.
pub fn begin(conn: &Connection) -> Result<Start> {
    Ok(Start {
        head: head(conn)?,
        cursors: crate::store::relayed::cursors(conn)?,
    })
}

/// One page of the snapshot from `pos`: changes adding up to about `max_bytes` of JSON (a
/// message with its read marks is never split), and where the next page starts (`None`: this
/// was the last).
pub fn page(
    conn: &Connection,
    pos: &Pos,
    max_bytes: usize,
) -> Result<(Vec<EventBody>, Option<Pos>)> {
    let mut pos = pos.clone();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    loop {
        let rows = rows(conn, &pos)?;
        let full = rows.len() as u32 == ROWS;
        for (key, group) in rows {
            bytes += group
                .iter()
                .map(|b| serde_json::to_string(b).map_or(0, |s| s.len()))
                .sum::<usize>();
            out.extend(group);
            pos = key;
            if bytes >= max_bytes {
                return Ok((out, Some(pos)));
            }
        }
        if !full {
            match pos.part.next() {
                Some(part) => {
                    pos = Pos {
                        part,
                        ..Pos::default()
                    }
                }
                None => return Ok((out, None)),
            }
        }
    }
}

/// The next rows of `pos`'s part after its key, each with its key and its changes.
fn rows(conn: &Connection, pos: &Pos) -> Result<Vec<(Pos, Vec<EventBody>)>> {
    let key = |seq: i64, a: &str, b: &str| Pos {
        part: pos.part,
        seq,
        a: a.to_owned(),
        b: b.to_owned(),
    };
    let (a, b) = (pos.a.as_str(), pos.b.as_str());
    let mut out = Vec::new();
    match pos.part {
        Part::Messages => {
            let ids: Vec<(i64, String)> = conn
                .prepare_cached(
                    "SELECT seq, id FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![pos.seq, ROWS], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut marks = conn.prepare_cached(
                "SELECT agent, read_at FROM inbox WHERE msg_id = ?1 AND read_at IS NOT NULL",
            )?;
            for (seq, id) in ids {
                let Some(m) = load_message(conn, &id)? else {
                    continue;
                };
                let mut group = vec![EventBody::Message(m)];
                for mark in marks.query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))? {
                    let (agent, at) = mark?;
                    group.push(EventBody::Read {
                        agent,
                        ids: vec![id.clone()],
                        at,
                    });
                }
                out.push((key(seq, "", ""), group));
            }
        }
        // Marks that wait for a message not here (yet): kept so it is read when it comes.
        Part::Marks => {
            let rows: Vec<(String, String, i64)> = conn
                .prepare_cached(
                    "SELECT agent, msg_id, read_at FROM inbox WHERE read_at IS NOT NULL \
                     AND (agent, msg_id) > (?1, ?2) \
                     AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = inbox.msg_id) \
                     ORDER BY agent, msg_id LIMIT ?3",
                )?
                .query_map(params![a, b, ROWS], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            for (agent, id, at) in rows {
                let k = key(0, &agent, &id);
                out.push((
                    k,
                    vec![EventBody::Read {
                        agent,
                        ids: vec![id],
                        at,
                    }],
                ));
            }
        }
        Part::Agents => {
            for row in agents_after(conn, a, ROWS)? {
                let k = key(0, &row.name, "");
                out.push((k, vec![agent_body(conn, row)?]));
            }
        }
        Part::Subscriptions => {
            for (topic, agent, on) in subscriptions_after(conn, (a, b), ROWS)? {
                let k = key(0, &topic, &agent);
                out.push((k, vec![subscription_body(conn, topic, agent, on)?]));
            }
        }
        Part::Tokens => {
            for (name, hash) in tokens_after(conn, a, ROWS)? {
                let stamp = stamp_of(conn, Stamped::Token(&name))?.unwrap_or_default();
                let k = key(0, &name, "");
                out.push((k, vec![EventBody::Token { name, hash, stamp }]));
            }
        }
        Part::Forgets => {
            for (name, stamp) in crate::store::forget::tombstones_after(conn, a, ROWS)? {
                let k = key(0, &name, "");
                out.push((k, vec![EventBody::Forget { name, stamp }]));
            }
        }
    }
    Ok(out)
}

/// A directory row as the change that makes it, with its stamp.
pub(crate) fn agent_body(conn: &Connection, a: AgentRow) -> Result<EventBody> {
    let stamp = stamp_of(conn, Stamped::Agent(&a.name))?.unwrap_or_default();
    Ok(EventBody::Agent {
        name: a.name,
        node: a.node,
        status: a.status,
        status_text: a.status_text,
        last_seen: a.last_seen,
        stamp,
    })
}

/// A subscription (or its removal) as the change that makes it, with its stamp.
pub(crate) fn subscription_body(
    conn: &Connection,
    topic: String,
    agent: String,
    on: bool,
) -> Result<EventBody> {
    let stamp = stamp_of(conn, Stamped::Subscription(&topic, &agent))?.unwrap_or_default();
    Ok(EventBody::Subscription {
        topic,
        agent,
        on,
        stamp,
    })
}

/// Subscriptions after `(topic, agent)`, with removals (their stamps outlive the row).
pub(crate) fn subscriptions_after(
    conn: &Connection,
    (topic, agent): (&str, &str),
    limit: u32,
) -> Result<Vec<(String, String, bool)>> {
    Ok(conn
        .prepare_cached(
            "SELECT t, a, o FROM (SELECT topic AS t, agent AS a, 1 AS o FROM subscriptions \
             UNION ALL SELECT a, b, 0 FROM stamps WHERE kind = 'subscription' AND NOT EXISTS \
             (SELECT 1 FROM subscriptions s WHERE s.topic = stamps.a AND s.agent = stamps.b)) \
             WHERE (t, a) > (?1, ?2) ORDER BY t, a LIMIT ?3",
        )?
        .query_map(params![topic, agent, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Tokens after `name` (a hash each), with revocations (none).
pub(crate) fn tokens_after(
    conn: &Connection,
    name: &str,
    limit: u32,
) -> Result<Vec<(String, Option<String>)>> {
    Ok(conn
        .prepare_cached(
            "SELECT n, h FROM (SELECT name AS n, hash AS h FROM tokens UNION ALL \
             SELECT a, NULL FROM stamps WHERE kind = 'token' AND a NOT IN (SELECT name FROM tokens)) \
             WHERE n > ?1 ORDER BY n LIMIT ?2",
        )?
        .query_map(params![name, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Applies one page. The messages it stores come back only for recipients that have not read
/// them (a snapshot carries old mail; only what waits to be read is pushed to sessions).
pub fn apply_page(conn: &Tx<'_>, items: Vec<EventBody>) -> Result<Applied> {
    let mut out = Applied::default();
    let mut names = Spellings::default();
    for body in items {
        let body = fold_names(conn, &mut names, body)?;
        apply_body(conn, body, &mut out)?;
    }
    let mut unread = conn.prepare_cached(
        "SELECT 1 FROM inbox WHERE agent = ?1 AND msg_id = ?2 AND read_at IS NULL",
    )?;
    for s in &mut out.messages {
        let id = s.message.id.clone();
        let mut keep = Vec::with_capacity(s.recipients.len());
        for r in std::mem::take(&mut s.recipients) {
            if unread
                .query_row(params![r, id], |_| Ok(()))
                .optional()?
                .is_some()
            {
                keep.push(r);
            }
        }
        s.recipients = keep;
    }
    out.messages.retain(|s| !s.recipients.is_empty());
    Ok(out)
}

/// Ends a snapshot of `producer` (its log key) whose pages are applied: moves this node's
/// cursor of the producer to its head and of every other origin to the producer's cursor,
/// never back (this node may have got further by another path meanwhile). Returns the new
/// cursors, the producer's first: (log key, seq).
pub fn finish(conn: &Tx<'_>, producer: &str, start: &Start) -> Result<Vec<(String, u64)>> {
    let own = crate::store::instances::own(conn)?;
    let mut moved = Vec::new();
    let all = std::iter::once((producer.to_owned(), start.head))
        .chain(start.cursors.iter().filter(|(o, _)| o != producer).cloned());
    let mut set = conn.prepare_cached(
        "INSERT INTO peer_cursors (origin, seq) VALUES (?1, ?2) \
         ON CONFLICT(origin) DO UPDATE SET seq = max(seq, ?2)",
    )?;
    for (origin, seq) in all {
        if origin == own {
            continue;
        }
        set.execute(params![origin, seq as i64])?;
        moved.push((origin.clone(), cursor(conn, &origin)?));
    }
    Ok(moved)
}
