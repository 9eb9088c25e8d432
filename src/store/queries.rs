//! The SQL behind every store job. Each function takes the writer's connection and runs inside
//! the caller's transaction; none of them commits.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{Error, Result};
use crate::message::{Message, MessageType, Priority, rfc3339};
use crate::protocol::{ErrorCode, Status};
use crate::store::replication::{self, EventBody, Stamp, Stamped};

/// Which node's replication log a local change is recorded in; `None` for changes that came
/// from a peer (they are in the peer's log already).
pub type LogAs<'a> = Option<&'a str>;

/// A message about to be stored, with its recipients already resolved by the router; also the
/// form in which messages travel between nodes (then with `thread_id` set).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct NewMessage {
    /// ULID.
    pub id: String,
    /// Node that accepted it from the sender.
    pub origin: String,
    /// Authenticated sender.
    pub sender: String,
    /// The `to` as written.
    pub target: String,
    /// Topic name when `target` is `#topic`.
    pub topic: Option<String>,
    /// Message type.
    pub kind: MessageType,
    /// Priority.
    pub priority: Priority,
    /// Optional subject.
    pub subject: Option<String>,
    /// Body.
    pub body: String,
    /// Optional JSON object.
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    /// Message this replies to.
    pub reply_to: Option<String>,
    /// Thread, when already known (replicated messages); derived from `reply_to` otherwise.
    pub thread_id: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Inboxes it goes to.
    pub recipients: Vec<String>,
}

/// What storing a message did.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The message as recipients see it (unread).
    pub message: Message,
    /// Inboxes it went to.
    pub recipients: Vec<String>,
    /// It was already stored (a retried send): nothing changed.
    pub duplicate: bool,
    /// The node that accepted it from its sender.
    pub origin: String,
}

const MESSAGE_COLUMNS: &str = "m.id, m.sender, m.target, m.topic, m.type, m.priority, m.subject, \
     m.body, m.data, m.reply_to, m.thread_id, m.created_at";

fn message_from_row(row: &Row<'_>, read: bool) -> rusqlite::Result<Message> {
    let kind: String = row.get(4)?;
    let priority: String = row.get(5)?;
    let data: Option<String> = row.get(8)?;
    Ok(Message {
        id: row.get(0)?,
        from: row.get(1)?,
        to: row.get(2)?,
        topic: row.get(3)?,
        kind: kind.parse().unwrap_or_default(),
        priority: priority.parse().unwrap_or_default(),
        subject: row.get(6)?,
        body: row.get(7)?,
        data: data.and_then(|d| serde_json::from_str(&d).ok()),
        reply_to: row.get(9)?,
        thread_id: row.get(10)?,
        created_at: rfc3339(row.get(11)?),
        read,
    })
}

/// Whether `agent` may read message `id`: it sent it or has it in its inbox.
const VISIBLE: &str =
    "(m.sender = ?1 OR EXISTS (SELECT 1 FROM inbox v WHERE v.agent = ?1 AND v.msg_id = m.id))";

/// The read flag as `agent` (?1) sees it: own messages are read.
const READ_FLAG: &str = "(m.sender = ?1 OR EXISTS (SELECT 1 FROM inbox r WHERE r.agent = ?1 AND r.msg_id = m.id AND r.read_at IS NOT NULL))";

/// Records a local change in this node's log; a change that came from a peer (`log_as` is
/// `None`) is in that peer's log already.
fn log(conn: &Connection, log_as: LogAs<'_>, body: impl FnOnce() -> EventBody) -> Result<()> {
    match log_as {
        Some(origin) => replication::append(conn, origin, &body()),
        None => Ok(()),
    }
}

/// Logs a local change to a stamped row, with a new stamp; a peer's change (`log_as` is
/// `None`) had its stamp checked and recorded by the caller.
fn log_stamped(
    conn: &Connection,
    log_as: LogAs<'_>,
    row: Stamped<'_>,
    now: i64,
    body: impl FnOnce(Stamp) -> EventBody,
) -> Result<()> {
    match log_as {
        Some(origin) => {
            let stamp = replication::stamp_local(conn, row, origin, now)?;
            replication::append(conn, origin, &body(stamp))
        }
        None => Ok(()),
    }
}

/// Stores a message and its inbox rows, deduplicating by id.
pub fn insert_message(conn: &Connection, m: NewMessage, log_as: LogAs<'_>) -> Result<Stored> {
    let existing = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?1"
        ))?
        .query_row([&m.id], |r| message_from_row(r, false))
        .optional()?;
    if let Some(message) = existing {
        if message.from != m.sender {
            // An id names one message mesh-wide; another sender's retry cannot claim it, and
            // the answer is the one for any unusable id, so it does not tell the id exists.
            return Err(Error::unusable_id(&m.id));
        }
        let recipients = conn
            .prepare_cached("SELECT agent FROM inbox WHERE msg_id = ?1")?
            .query_map([&m.id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        return Ok(Stored {
            message,
            recipients,
            duplicate: true,
            origin: m.origin,
        });
    }
    let thread_id = match (&m.thread_id, &m.reply_to) {
        (Some(t), _) => t.clone(),
        (None, Some(parent)) => conn
            .prepare_cached(&format!(
                "SELECT m.thread_id FROM messages m WHERE m.id = ?2 AND {VISIBLE}"
            ))?
            .query_row(params![m.sender, parent], |r| r.get(0))
            .optional()?
            .ok_or_else(|| {
                Error::refused(
                    ErrorCode::UnknownMessage,
                    format!("reply_to: no message '{parent}' that you can read"),
                )
            })?,
        (None, None) => m.id.clone(),
    };
    let data = m
        .data
        .as_ref()
        .map(|d| serde_json::to_string(d).unwrap_or_default());
    conn.prepare_cached(
        "INSERT INTO messages (id, origin, sender, target, topic, type, priority, subject, body, \
         data, reply_to, thread_id, created_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
    )?
    .execute(params![
        m.id,
        m.origin,
        m.sender,
        m.target,
        m.topic,
        m.kind.as_str(),
        m.priority.as_str(),
        m.subject,
        m.body,
        data,
        m.reply_to,
        thread_id,
        m.created_at
    ])?;
    {
        let mut stmt =
            conn.prepare_cached("INSERT OR IGNORE INTO inbox (agent, msg_id) VALUES (?1, ?2)")?;
        for r in &m.recipients {
            stmt.execute(params![r, m.id])?;
        }
    }
    if let Some(origin) = log_as {
        replication::append_message(
            conn,
            origin,
            || NewMessage {
                thread_id: Some(thread_id.clone()),
                ..m.clone()
            },
            &m.id,
        )?;
    }
    Ok(Stored {
        message: Message {
            id: m.id,
            from: m.sender,
            to: m.target,
            topic: m.topic,
            kind: m.kind,
            priority: m.priority,
            subject: m.subject,
            body: m.body,
            data: m.data,
            reply_to: m.reply_to,
            thread_id,
            created_at: rfc3339(m.created_at),
            read: false,
        },
        recipients: m.recipients,
        duplicate: false,
        origin: m.origin,
    })
}

/// The loop guard: a thread that got `per_minute` messages in the last minute takes no more
/// replies for now. Agents that thank each other for thanking each other burn money; the
/// thread id makes such a loop visible, and this stops it. 0 turns the guard off.
pub fn check_thread_rate(conn: &Connection, parent: &str, per_minute: u32, now: i64) -> Result<()> {
    if per_minute == 0 {
        return Ok(());
    }
    let recent: Option<u32> = conn
        .prepare_cached(
            "SELECT count(*) FROM messages WHERE created_at > ?2 AND thread_id = \
             (SELECT thread_id FROM messages WHERE id = ?1)",
        )?
        .query_row(params![parent, now - 60_000], |r| r.get(0))
        .optional()?;
    match recent {
        Some(n) if n >= per_minute => Err(Error::refused(
            ErrorCode::RateLimited,
            format!(
                "loop guard: this thread had {n} messages in the last minute (limit {per_minute}); \
                 nothing was sent. Do not answer acknowledgements with acknowledgements."
            ),
        )),
        _ => Ok(()),
    }
}

/// Filters for reading an inbox.
#[derive(Debug, Clone, Default)]
pub struct InboxQuery {
    /// Only unread messages.
    pub unread_only: bool,
    /// At most this many.
    pub limit: u32,
    /// Only from this sender.
    pub from: Option<String>,
    /// Only of this topic.
    pub topic: Option<String>,
    /// Mark what is returned read.
    pub mark_read: bool,
}

/// Reads an inbox, oldest first; returns the messages and the unread count left over.
pub fn inbox(
    conn: &Connection,
    agent: &str,
    q: &InboxQuery,
    now: i64,
    log_as: LogAs<'_>,
) -> Result<(Vec<Message>, u32)> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS}, i.read_at IS NOT NULL FROM inbox i JOIN messages m ON m.id = i.msg_id \
         WHERE i.agent = ?1 AND (?2 = 0 OR i.read_at IS NULL) AND (?3 IS NULL OR m.sender = ?3) \
         AND (?4 IS NULL OR m.topic = ?4) ORDER BY i.msg_id LIMIT ?5"
    ))?;
    let messages = stmt
        .query_map(
            params![agent, q.unread_only, q.from, q.topic, q.limit],
            |r| {
                let read: bool = r.get(12)?;
                message_from_row(r, read)
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let returned_unread = messages.iter().filter(|m| !m.read).count() as u32;
    if q.mark_read {
        let ids: Vec<String> = messages
            .iter()
            .filter(|m| !m.read)
            .map(|m| m.id.clone())
            .collect();
        mark_read(conn, agent, &ids, false, now, log_as)?;
    }
    let unread: u32 = conn
        .prepare_cached("SELECT count(*) FROM inbox WHERE agent = ?1 AND read_at IS NULL")?
        .query_row([agent], |r| r.get(0))?;
    let remaining = if q.mark_read {
        unread
    } else {
        unread.saturating_sub(returned_unread)
    };
    Ok((messages, remaining))
}

/// Marks messages read; `ids` empty and `all` set marks the whole inbox.
pub fn mark_read(
    conn: &Connection,
    agent: &str,
    ids: &[String],
    all: bool,
    now: i64,
    log_as: LogAs<'_>,
) -> Result<u32> {
    let all_ids;
    let ids = if all {
        all_ids = conn
            .prepare_cached("SELECT msg_id FROM inbox WHERE agent = ?1 AND read_at IS NULL")?
            .query_map([agent], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        &all_ids[..]
    } else {
        ids
    };
    let mut stmt = conn.prepare_cached(
        "UPDATE inbox SET read_at = ?3 WHERE agent = ?1 AND msg_id = ?2 AND read_at IS NULL",
    )?;
    let mut marked = Vec::new();
    for id in ids {
        if stmt.execute(params![agent, id, now])? > 0 {
            marked.push(id.clone());
        }
    }
    let n = marked.len() as u32;
    if !marked.is_empty() {
        log(conn, log_as, || EventBody::Read {
            agent: agent.to_owned(),
            ids: marked,
            at: now,
        })?;
    }
    Ok(n)
}

/// Records that a session of the agent held the message at the time: (agent, id, ms).
pub fn mark_delivered(conn: &Connection, acks: &[(String, String, i64)]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE inbox SET delivered_at = ?3 WHERE agent = ?1 AND msg_id = ?2 AND delivered_at IS NULL",
    )?;
    for (agent, id, at) in acks {
        stmt.execute(params![agent, id, at])?;
    }
    Ok(())
}

/// The whole thread of message `id`, as far as `agent` may read it.
pub fn thread(conn: &Connection, agent: &str, id: &str) -> Result<Vec<Message>> {
    let thread_id: String = conn
        .prepare_cached(&format!(
            "SELECT m.thread_id FROM messages m WHERE m.id = ?2 AND {VISIBLE}"
        ))?
        .query_row(params![agent, id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| {
            Error::refused(
                ErrorCode::UnknownMessage,
                format!("id: no message '{id}' that you can read"),
            )
        })?;
    // By the millisecond of the id, then by arrival: ids come from each sender's own ULID
    // generator, so a reply sent within the millisecond of its question can carry a smaller
    // id; the store received the question first.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS}, {READ_FLAG} FROM messages m WHERE m.thread_id = ?2 AND {VISIBLE} \
         ORDER BY substr(m.id, 1, 10), m.seq"
    ))?;
    let rows = stmt
        .query_map(params![agent, thread_id], |r| {
            let read: bool = r.get(12)?;
            message_from_row(r, read)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Turns free text into an FTS5 query of quoted terms (all must match), so that punctuation in
/// what an agent types is never an FTS syntax error. A trailing `*` keeps prefix search.
pub fn fts_query(text: &str) -> Option<String> {
    let terms: Vec<String> = text
        .split_whitespace()
        .filter_map(|t| {
            let (word, prefix) = match t.strip_suffix('*') {
                Some(w) => (w, true),
                None => (t, false),
            };
            let word = word.replace('"', "\"\"");
            (!word.is_empty()).then(|| format!("\"{word}\"{}", if prefix { "*" } else { "" }))
        })
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// Adds messages stored since the last periodic indexing run to the full-text index, so a
/// search that follows sees them.
pub fn index_new_messages(conn: &Connection) -> Result<()> {
    conn.execute_batch(crate::store::schema::INDEX_NEW_MESSAGES)?;
    Ok(())
}

/// Turns what an agent typed into the FTS query [`search`] takes, or says why it cannot.
pub fn check_search(query: &str) -> Result<String> {
    fts_query(query).ok_or_else(|| Error::Invalid("query: must contain at least one word".into()))
}

/// Full-text search (`fts` from [`check_search`]) over what `agent` may read, best match
/// first, in what the index holds (run [`index_new_messages`] first for the newest messages).
pub fn search(conn: &Connection, agent: &str, fts: &str, limit: u32) -> Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS}, {READ_FLAG} FROM messages_fts f JOIN messages m ON m.seq = f.rowid \
         WHERE messages_fts MATCH ?2 AND {VISIBLE} ORDER BY f.rank LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(params![agent, fts, limit], |r| {
            let read: bool = r.get(12)?;
            message_from_row(r, read)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// An agent as the directory remembers it.
#[derive(Debug, Clone)]
pub struct AgentRow {
    /// Name.
    pub name: String,
    /// Node it was last connected to.
    pub node: String,
    /// Self-declared status.
    pub status: Status,
    /// Free text with the status.
    pub status_text: Option<String>,
    /// ms since the epoch.
    pub last_seen: Option<i64>,
}

/// Every known agent.
pub fn agents(conn: &Connection) -> Result<Vec<AgentRow>> {
    let mut stmt =
        conn.prepare_cached("SELECT name, node, status, status_text, last_seen FROM agents")?;
    let rows = stmt
        .query_map([], |r| {
            let status: String = r.get(2)?;
            Ok(AgentRow {
                name: r.get(0)?,
                node: r.get(1)?,
                status: Status::from_stored(&status),
                status_text: r.get(3)?,
                last_seen: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Creates or updates an agent's directory row.
pub fn upsert_agent(conn: &Connection, a: &AgentRow, now: i64, log_as: LogAs<'_>) -> Result<()> {
    log_stamped(conn, log_as, Stamped::Agent(&a.name), now, |stamp| {
        agent_event(a, stamp)
    })?;
    write_agent(
        conn,
        a,
        now,
        "DO UPDATE SET node = ?2, status = ?3, status_text = ?4, last_seen = ?5",
    )
}

/// Makes a name known without saying anything about the agent (a token issued for it, a
/// watcher following it). The row carries the lowest stamp, so any real change to it — made
/// here later, or made on a node whose log has not reached this one yet — wins on every node;
/// a plain upsert would have overwritten that agent's node and status everywhere.
pub fn introduce_agent(conn: &Connection, a: &AgentRow, now: i64, log_as: LogAs<'_>) -> Result<()> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM agents WHERE name = ?1")?
        .query_row([&a.name], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        return Ok(());
    }
    // No row means no stamp either: stamps are written with their rows, which stay.
    if let Some(origin) = log_as {
        let stamp = Stamp {
            at: 1,
            by: origin.to_owned(),
        };
        replication::put_stamp(conn, Stamped::Agent(&a.name), &stamp)?;
        replication::append(conn, origin, &agent_event(a, stamp))?;
    }
    write_agent(conn, a, now, "DO NOTHING")
}

fn agent_event(a: &AgentRow, stamp: Stamp) -> EventBody {
    EventBody::Agent {
        name: a.name.clone(),
        node: a.node.clone(),
        status: a.status,
        status_text: a.status_text.clone(),
        last_seen: a.last_seen,
        stamp,
    }
}

/// Inserts the row; `on_conflict` says what happens to an existing one.
fn write_agent(conn: &Connection, a: &AgentRow, now: i64, on_conflict: &str) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO agents (name, node, status, status_text, last_seen, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(name) {on_conflict}"
    ))?
    .execute(params![
        a.name,
        a.node,
        a.status.as_str(),
        a.status_text,
        a.last_seen,
        now
    ])?;
    Ok(())
}

/// Every (topic, agent) subscription.
pub fn subscriptions(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached("SELECT topic, agent FROM subscriptions")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Adds or removes one subscription.
pub fn set_subscription(
    conn: &Connection,
    topic: &str,
    agent: &str,
    on: bool,
    now: i64,
    log_as: LogAs<'_>,
) -> Result<()> {
    log_stamped(
        conn,
        log_as,
        Stamped::Subscription(topic, agent),
        now,
        |stamp| EventBody::Subscription {
            topic: topic.to_owned(),
            agent: agent.to_owned(),
            on,
            stamp,
        },
    )?;
    if on {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO subscriptions (topic, agent, created_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![topic, agent, now])?;
    } else {
        conn.prepare_cached("DELETE FROM subscriptions WHERE topic = ?1 AND agent = ?2")?
            .execute(params![topic, agent])?;
    }
    Ok(())
}

/// A stored token: only its hash is kept.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// The agent it is bound to.
    pub name: String,
    /// ms since the epoch.
    pub created_at: i64,
}

/// Stores a token hash for `name`, replacing any earlier one.
pub fn put_token(
    conn: &Connection,
    name: &str,
    hash: &str,
    now: i64,
    log_as: LogAs<'_>,
) -> Result<()> {
    log_stamped(conn, log_as, Stamped::Token(name), now, |stamp| {
        EventBody::Token {
            name: name.to_owned(),
            hash: Some(hash.to_owned()),
            stamp,
        }
    })?;
    conn.prepare_cached(
        "INSERT INTO tokens (name, hash, created_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT(name) DO UPDATE SET hash = ?2, created_at = ?3",
    )?
    .execute(params![name, hash, now])?;
    Ok(())
}

/// Removes `name`'s token; false if it had none.
pub fn delete_token(conn: &Connection, name: &str, log_as: LogAs<'_>) -> Result<bool> {
    let removed = conn
        .prepare_cached("DELETE FROM tokens WHERE name = ?1")?
        .execute([name])?
        > 0;
    if removed {
        let now = crate::message::now_ms();
        log_stamped(conn, log_as, Stamped::Token(name), now, |stamp| {
            EventBody::Token {
                name: name.to_owned(),
                hash: None,
                stamp,
            }
        })?;
    }
    Ok(removed)
}

/// Every agent holding a token.
pub fn tokens(conn: &Connection) -> Result<Vec<TokenRow>> {
    let mut stmt = conn.prepare_cached("SELECT name, created_at FROM tokens ORDER BY name")?;
    let rows = stmt
        .query_map([], |r| {
            Ok(TokenRow {
                name: r.get(0)?,
                created_at: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The agent a token hash is bound to.
pub fn token_owner(conn: &Connection, hash: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT name FROM tokens WHERE hash = ?1")?
        .query_row([hash], |r| r.get(0))
        .optional()?)
}
