//! The replication log: what this node accepted, in order, for its peers.
//!
//! Every change a node makes on behalf of its own clients — a message, read marks, a directory
//! row, a subscription, a token — is appended to `events` in the same transaction as the change,
//! numbered per origin node. Peers ask for "your events after N" and apply them idempotently
//! (messages dedup by id; the rest are upserts), recording in `peer_cursors` how far they got
//! from each origin in the same transaction as the apply. So a crash anywhere neither loses nor
//! repeats an effect, and a link that comes back resumes where it stopped.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::message::{MessageType, Priority};
use crate::protocol::Status;
use crate::store::queries::{self, AgentRow, NewMessage, Stored};

/// One replicated change.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventBody {
    /// A message accepted from a sender at the origin, with its resolved recipients.
    Message(ReplicatedMessage),
    /// An agent read these messages.
    Read {
        /// The reader.
        agent: String,
        /// Message ids.
        ids: Vec<String>,
        /// ms since the epoch.
        at: i64,
    },
    /// A directory row (new agent, status, last seen).
    Agent {
        /// Name.
        name: String,
        /// Node it was last connected to.
        node: String,
        /// Status.
        status: Status,
        /// Status text.
        status_text: Option<String>,
        /// ms since the epoch.
        last_seen: Option<i64>,
    },
    /// A subscription was added or removed.
    Subscription {
        /// Topic without `#`.
        topic: String,
        /// Subscriber.
        agent: String,
        /// Added (true) or removed.
        on: bool,
    },
    /// A token was issued (hash) or revoked (no hash).
    Token {
        /// The agent it is bound to.
        name: String,
        /// SHA-256 hex of the token; `None` revokes.
        hash: Option<String>,
    },
}

/// A message as it travels between nodes: everything needed to store it exactly as the origin did.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReplicatedMessage {
    /// ULID.
    pub id: String,
    /// Node that accepted it.
    pub origin: String,
    /// Sender.
    pub sender: String,
    /// `to` as written.
    pub target: String,
    /// Topic, for topic messages.
    pub topic: Option<String>,
    /// Type.
    pub kind: MessageType,
    /// Priority.
    pub priority: Priority,
    /// Subject.
    pub subject: Option<String>,
    /// Body.
    pub body: String,
    /// Payload.
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    /// Parent message.
    pub reply_to: Option<String>,
    /// Thread.
    pub thread_id: String,
    /// ms since the epoch.
    pub created_at: i64,
    /// Inboxes it goes to.
    pub recipients: Vec<String>,
}

/// A numbered event from one origin.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    /// Position in the origin's log, from 1.
    pub seq: u64,
    /// The change.
    pub body: EventBody,
}

thread_local! {
    /// Entries appended by the writer thread's current transaction, published to the in-memory
    /// tail only once it commits (see `store::Store::tail_after`).
    static PENDING: std::cell::RefCell<Vec<(u64, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many entries the current transaction has appended so far.
pub(crate) fn pending_len() -> usize {
    PENDING.with(|p| p.borrow().len())
}

/// Forgets entries appended after `len` (their savepoint was rolled back).
pub(crate) fn truncate_pending(len: usize) {
    PENDING.with(|p| p.borrow_mut().truncate(len));
}

/// Takes the entries of the transaction that just ended.
pub(crate) fn take_pending() -> Vec<(u64, String)> {
    PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

/// Appends a change to this node's log (inside the caller's transaction).
pub fn append(conn: &Connection, origin: &str, body: &EventBody) -> Result<()> {
    let payload = serde_json::to_string(body).unwrap_or_default();
    let seq: i64 = conn
        .prepare_cached(
            "INSERT INTO events (origin, seq, payload) VALUES \
             (?1, (SELECT coalesce(max(seq), 0) + 1 FROM events WHERE origin = ?1), ?2) RETURNING seq",
        )?
        .query_row(params![origin, payload], |r| r.get(0))?;
    PENDING.with(|p| p.borrow_mut().push((seq as u64, payload)));
    Ok(())
}

/// Events of `origin` after `after`, oldest first.
pub fn events_after(conn: &Connection, origin: &str, after: u64, limit: u32) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, payload FROM events WHERE origin = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![origin, after as i64, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut events = Vec::with_capacity(rows.len());
    for (seq, p) in rows {
        match serde_json::from_str(&p) {
            Ok(body) => events.push(Event {
                seq: seq as u64,
                body,
            }),
            Err(e) => {
                // Shipping past it would leave a gap peers never fill; stop here loudly.
                tracing::error!(origin, seq, error = %e, "unreadable replication log entry");
                break;
            }
        }
    }
    Ok(events)
}

/// The last seq of `origin` applied here.
pub fn cursor(conn: &Connection, origin: &str) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT seq FROM peer_cursors WHERE origin = ?1")?
        .query_row([origin], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

/// The newest seq in this node's own log.
pub fn head(conn: &Connection, origin: &str) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM events WHERE origin = ?1")?
        .query_row([origin], |r| r.get::<_, i64>(0))? as u64)
}

/// What applying remote events changed, for the router's in-memory state.
#[derive(Debug, Default)]
pub struct Applied {
    /// Messages newly stored (to push to local sessions).
    pub messages: Vec<Stored>,
    /// Directory rows.
    pub agents: Vec<AgentRow>,
    /// (topic, agent, on).
    pub subscriptions: Vec<(String, String, bool)>,
    /// Events skipped because they were already applied.
    pub duplicates: u64,
    /// The cursor after applying.
    pub cursor: u64,
}

/// Applies events from `origin` that are newer than its cursor, in order, and advances it.
pub fn apply(conn: &Connection, origin: &str, events: Vec<Event>) -> Result<Applied> {
    let mut at = cursor(conn, origin)?;
    let mut out = Applied::default();
    for e in events {
        if e.seq <= at {
            out.duplicates += 1;
            continue;
        }
        if e.seq != at + 1 {
            // A gap: stop here; the rest comes again from the cursor.
            break;
        }
        match e.body {
            EventBody::Message(m) => {
                let stored = queries::insert_message(
                    conn,
                    NewMessage {
                        id: m.id,
                        origin: m.origin,
                        sender: m.sender,
                        target: m.target,
                        topic: m.topic,
                        kind: m.kind,
                        priority: m.priority,
                        subject: m.subject,
                        body: m.body,
                        data: m.data,
                        reply_to: m.reply_to,
                        thread_id: Some(m.thread_id),
                        created_at: m.created_at,
                        recipients: m.recipients,
                    },
                    None,
                );
                match stored {
                    Ok(s) if s.duplicate => out.duplicates += 1,
                    Ok(s) => out.messages.push(s),
                    // A message that cannot be stored here (an id clash) is skipped, not retried
                    // forever; the origin still has it.
                    Err(crate::Error::Store(e)) => return Err(crate::Error::Store(e)),
                    Err(e) => tracing::warn!(error = %e, "skipping a replicated message"),
                }
            }
            EventBody::Read { agent, ids, at } => {
                queries::mark_read(conn, &agent, &ids, false, at, None)?;
            }
            EventBody::Agent {
                name,
                node,
                status,
                status_text,
                last_seen,
            } => {
                let row = AgentRow {
                    name,
                    node,
                    status,
                    status_text,
                    last_seen,
                };
                queries::upsert_agent(conn, &row, crate::message::now_ms(), None)?;
                out.agents.push(row);
            }
            EventBody::Subscription { topic, agent, on } => {
                queries::set_subscription(
                    conn,
                    &topic,
                    &agent,
                    on,
                    crate::message::now_ms(),
                    None,
                )?;
                out.subscriptions.push((topic, agent, on));
            }
            EventBody::Token { name, hash } => match hash {
                Some(h) => queries::put_token(conn, &name, &h, crate::message::now_ms(), None)?,
                None => {
                    queries::delete_token(conn, &name, None)?;
                }
            },
        }
        at = e.seq;
    }
    conn.prepare_cached(
        "INSERT INTO peer_cursors (origin, seq) VALUES (?1, ?2) \
         ON CONFLICT(origin) DO UPDATE SET seq = ?2",
    )?
    .execute(params![origin, at as i64])?;
    out.cursor = at;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_through_json() {
        let bodies = vec![
            EventBody::Message(ReplicatedMessage {
                id: "01J0000000000000000000000A".into(),
                origin: "n1".into(),
                sender: "alice".into(),
                target: "bob".into(),
                topic: None,
                kind: MessageType::Task,
                priority: Priority::High,
                subject: Some("s".into()),
                body: "b".into(),
                data: None,
                reply_to: None,
                thread_id: "01J0000000000000000000000A".into(),
                created_at: 1,
                recipients: vec!["bob".into()],
            }),
            EventBody::Read {
                agent: "bob".into(),
                ids: vec!["x".into()],
                at: 2,
            },
            EventBody::Subscription {
                topic: "t".into(),
                agent: "bob".into(),
                on: true,
            },
            EventBody::Token {
                name: "bob".into(),
                hash: None,
            },
        ];
        for b in bodies {
            let text = serde_json::to_string(&b).unwrap();
            let back: EventBody = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
    }
}
