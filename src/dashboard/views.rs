//! The store reads behind the dashboard's views. An operator (the local secret's holder, who
//! can read the SQLite file anyway, or an operator token's) sees every message, so these read
//! across inboxes, unlike the agent-scoped reads in `store::queries`. Each runs on the store's
//! reader thread, off the writer, so an open dashboard never holds up a delivery.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::store::{MESSAGE_COLUMNS, message_row};

/// Rows a stream update carries at most; more new messages than this in one update are
/// counted, not sent (the page keeps the last 500 rows anyway).
pub const STREAM_BATCH: u32 = 50;
/// Characters of a body the stream carries; the thread view shows it whole.
pub const STREAM_BODY: usize = 1000;
/// How far back (in arrivals) a filtered stream looks when it starts: a filter that matches
/// little must not scan a big store from its first message.
pub const LOOKBACK: i64 = 20_000;
/// Messages a thread view or a search returns at most.
const LIST_MAX: u32 = 500;

/// What the stream shows: every filter that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Messages from this agent or in its inbox.
    #[serde(default)]
    pub agent: Option<String>,
    /// Messages to this topic (with or without `#`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Messages of this thread.
    #[serde(default)]
    pub thread: Option<String>,
    /// Messages of this type.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Messages of this priority.
    #[serde(default)]
    pub priority: Option<String>,
}

impl Filter {
    /// Blank fields mean "any"; a topic loses its `#`.
    pub fn normalized(self) -> Filter {
        let clean = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        Filter {
            agent: clean(self.agent),
            topic: clean(self.topic).map(|t| t.trim_start_matches('#').to_owned()),
            thread: clean(self.thread),
            kind: clean(self.kind),
            priority: clean(self.priority),
        }
    }

    /// No filter is set.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// A message as the stream shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Arrival order at this node.
    pub seq: i64,
    /// The node that accepted it from its sender.
    pub origin: String,
    /// The body was cut to [`STREAM_BODY`] characters.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The message.
    #[serde(flatten)]
    pub message: Message,
}

/// The newest messages after `after` (by arrival, and within the last [`LOOKBACK`]) that
/// match, oldest first, at most [`STREAM_BATCH`]; and the newest arrival in the store, where
/// the next call goes on from.
pub fn stream(conn: &Connection, after: i64, f: &Filter) -> Result<(Vec<Row>, i64)> {
    let head: i64 = conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM messages")?
        .query_row([], |r| r.get(0))?;
    if head <= after {
        return Ok((Vec::new(), head));
    }
    let after = after.max(head - LOOKBACK);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS}, m.seq FROM messages m WHERE m.seq > ?1 AND m.seq <= ?2 \
         AND (?3 IS NULL OR m.sender = ?3 OR EXISTS \
              (SELECT 1 FROM inbox i WHERE i.agent = ?3 AND i.msg_id = m.id)) \
         AND (?4 IS NULL OR m.topic = ?4) AND (?5 IS NULL OR m.thread_id = ?5) \
         AND (?6 IS NULL OR m.type = ?6) AND (?7 IS NULL OR m.priority = ?7) \
         ORDER BY m.seq DESC LIMIT ?8"
    ))?;
    let mut rows = stmt
        .query_map(
            params![
                after,
                head,
                f.agent,
                f.topic,
                f.thread,
                f.kind,
                f.priority,
                STREAM_BATCH
            ],
            |r| {
                let seq: i64 = r.get(crate::store::AFTER_MESSAGE)?;
                let stored = message_row(r)?;
                let origin = stored.origin.clone();
                let mut message = stored.into_message(false);
                let truncated = message.body.chars().count() > STREAM_BODY;
                if truncated {
                    message.body = message.body.chars().take(STREAM_BODY).collect();
                }
                Ok(Row {
                    seq,
                    origin,
                    truncated,
                    message,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.reverse();
    Ok((rows, head))
}

fn messages(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(p, |r| Ok(message_row(r)?.into_message(false)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The whole thread of message `id`, in the order agents read it.
pub fn thread(conn: &Connection, id: &str) -> Result<Vec<Message>> {
    let thread_id: String = conn
        .prepare_cached("SELECT thread_id FROM messages WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::UnknownMessage {
            field: "id",
            id: id.to_owned(),
        })?;
    messages(
        conn,
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE {} \
             ORDER BY substr(m.id, 1, 10), m.seq LIMIT ?2",
            crate::store::queries::in_thread("?1")
        ),
        params![thread_id, LIST_MAX],
    )
}

/// Full-text search over every message (`fts` from `queries::check_search`), best first.
pub fn search(conn: &Connection, fts: &str) -> Result<Vec<Message>> {
    messages(
        conn,
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages_fts f JOIN messages m ON m.seq = f.rowid \
             WHERE messages_fts MATCH ?1 ORDER BY f.rank LIMIT ?2"
        ),
        params![fts, LIST_MAX],
    )
}

/// Unread messages per agent (agents with none are left out).
pub fn unread(conn: &Connection) -> Result<BTreeMap<String, u64>> {
    let mut stmt = conn
        .prepare_cached("SELECT agent, count(*) FROM inbox WHERE read_at IS NULL GROUP BY agent")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
    Ok(rows)
}

/// One topic and who is subscribed.
#[derive(Debug, Clone, Serialize)]
pub struct Topic {
    /// The topic, without `#`.
    pub topic: String,
    /// Its subscribers.
    pub subscribers: Vec<String>,
}

/// Every topic with a subscriber, by name.
pub fn topics(conn: &Connection) -> Result<Vec<Topic>> {
    let mut by_topic: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (topic, agent) in crate::store::queries::subscriptions(conn)? {
        by_topic.entry(topic).or_default().push(agent);
    }
    Ok(by_topic
        .into_iter()
        .map(|(topic, mut subscribers)| {
            subscribers.sort();
            Topic { topic, subscribers }
        })
        .collect())
}
