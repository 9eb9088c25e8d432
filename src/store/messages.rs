//! Messages: storing one (deduplicated by id, so a retried send is exactly-once), inboxes,
//! read and delivered marks, threads and full-text search. Each function runs inside the
//! caller's transaction; none of them commits.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::message::{Message, rfc3339};
use crate::store::Tx;
use crate::store::log::{EventBody, append_message, log_local};
use crate::store::rows::{
    InboxQuery, LogAs, MESSAGE_COLUMNS, NewMessage, Stored, client_message_row, message_row,
};

/// Whether `agent` may read message `id`: it sent it or has it in its inbox.
const VISIBLE: &str =
    "(m.sender = ?1 OR EXISTS (SELECT 1 FROM inbox v WHERE v.agent = ?1 AND v.msg_id = m.id))";

/// The read flag as `agent` (?1) sees it: own messages are read.
const READ_FLAG: &str = "(m.sender = ?1 OR EXISTS (SELECT 1 FROM inbox r WHERE r.agent = ?1 AND r.msg_id = m.id AND r.read_at IS NOT NULL))";

/// `m` is in the thread `param` (an SQL parameter): its root, or one of its replies. Only
/// replies are in the thread index (`messages_replies`, a partial index): most messages are
/// roots, and each saved a b-tree insert (and a page per commit at low load).
pub fn in_thread(param: &str) -> String {
    format!("(m.id = {param} OR (m.thread_id = {param} AND m.thread_id <> m.id))")
}

/// Messages of the last minute in the thread of message ?1 (created after ?2).
fn thread_rate_sql() -> String {
    format!(
        "SELECT count(*) FROM (SELECT thread_id AS t FROM messages WHERE id = ?1) p \
         JOIN messages m ON {} WHERE m.created_at > ?2",
        in_thread("p.t")
    )
}

/// The thread ?2 as agent ?1 may read it.
fn thread_sql() -> String {
    format!(
        "SELECT {MESSAGE_COLUMNS}, {READ_FLAG} FROM messages m WHERE {} AND {VISIBLE} \
         ORDER BY substr(m.id, 1, 10), m.seq",
        in_thread("?2")
    )
}

/// Stores a message and its inbox rows, deduplicating by id.
pub fn insert_message(conn: &Tx<'_>, m: NewMessage, log_as: LogAs<'_>) -> Result<Stored> {
    let thread_id = match (&m.thread_id, &m.reply_to) {
        (Some(t), _) => t.clone(),
        (None, Some(parent)) => {
            let parent_thread = conn
                .prepare_cached(&format!(
                    "SELECT m.thread_id FROM messages m WHERE m.id = ?2 AND {VISIBLE}"
                ))?
                .query_row(params![m.sender, parent], |r| r.get(0))
                .optional()?;
            match parent_thread {
                Some(t) => t,
                // A retry of a reply stored before its parent went (retention) is still the
                // same message.
                None => {
                    return already_stored(conn, &m)?.ok_or_else(|| Error::UnknownMessage {
                        field: "reply_to",
                        id: parent.clone(),
                    });
                }
            }
        }
        (None, None) => m.id.clone(),
    };
    let data = m
        .data
        .as_ref()
        .map(|d| serde_json::to_string(d).unwrap_or_default());
    // A retried send finds its id taken: only then is the stored row read (most sends are new,
    // and a look-up before every insert cost a second search of the id index).
    let inserted = conn
        .prepare_cached(
            "INSERT INTO messages (id, origin, sender, target, topic, type, priority, subject, \
             body, data, reply_to, thread_id, created_at) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13) ON CONFLICT(id) DO NOTHING",
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
    if inserted == 0 {
        return already_stored(conn, &m)?.ok_or_else(|| Error::unusable_id(&m.id));
    }
    {
        let mut stmt =
            conn.prepare_cached("INSERT OR IGNORE INTO inbox (agent, msg_id) VALUES (?1, ?2)")?;
        for r in &m.recipients {
            stmt.execute(params![r, m.id])?;
        }
    }
    if let Some(origin) = log_as {
        append_message(
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

/// The stored message with `m`'s id, as the answer to a retried send of it; an error if
/// another sender's message has that id; `None` if no message has it.
fn already_stored(conn: &Connection, m: &NewMessage) -> Result<Option<Stored>> {
    let existing = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?1"
        ))?
        .query_row([&m.id], message_row)
        .optional()?;
    let Some(message) = existing else {
        return Ok(None);
    };
    if message.sender != m.sender {
        // An id names one message mesh-wide; another sender's retry cannot claim it, and
        // the answer is the one for any unusable id, so it does not tell the id exists.
        return Err(Error::unusable_id(&m.id));
    }
    let recipients = conn
        .prepare_cached("SELECT agent FROM inbox WHERE msg_id = ?1")?
        .query_map([&m.id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Some(Stored {
        message: message.into_message(false),
        recipients,
        duplicate: true,
        origin: m.origin.clone(),
    }))
}

/// The loop guard: a thread that got `per_minute` messages in the last minute takes no more
/// replies for now. Agents that thank each other for thanking each other burn money; the
/// thread id makes such a loop visible, and this stops it. 0 turns the guard off.
pub fn check_thread_rate(conn: &Connection, parent: &str, per_minute: u32, now: i64) -> Result<()> {
    if per_minute == 0 {
        return Ok(());
    }
    let recent: Option<u32> = conn
        .prepare_cached(&thread_rate_sql())?
        .query_row(params![parent, now - 60_000], |r| r.get(0))
        .optional()?;
    match recent {
        Some(count) if count >= per_minute => Err(Error::LoopGuard {
            count,
            limit: per_minute,
        }),
        _ => Ok(()),
    }
}

/// Reads an inbox, oldest first; returns the messages and the unread count left over.
pub fn inbox(
    conn: &Tx<'_>,
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
            client_message_row,
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
    conn: &Tx<'_>,
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
        log_local(conn, log_as, || EventBody::Read {
            agent: agent.to_owned(),
            ids: marked,
            at: now,
        })?;
    }
    Ok(n)
}

/// The whole thread of message `id`, as far as `agent` may read it.
pub fn thread(conn: &Connection, agent: &str, id: &str) -> Result<Vec<Message>> {
    let thread_id: String = conn
        .prepare_cached(&format!(
            "SELECT m.thread_id FROM messages m WHERE m.id = ?2 AND {VISIBLE}"
        ))?
        .query_row(params![agent, id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::UnknownMessage {
            field: "id",
            id: id.to_owned(),
        })?;
    // By the millisecond of the id, then by arrival: ids come from each sender's own ULID
    // generator, so a reply sent within the millisecond of its question can carry a smaller
    // id; the store received the question first.
    let mut stmt = conn.prepare_cached(&thread_sql())?;
    let rows = stmt
        .query_map(params![agent, thread_id], client_message_row)?
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
            // The index holds runs of letters and digits: a term with none (`.`, `???`, a
            // lone `*`) can match nothing, so it is no word at all.
            let searchable = word.chars().any(char::is_alphanumeric);
            let word = word.replace('"', "\"\"");
            searchable.then(|| format!("\"{word}\"{}", if prefix { "*" } else { "" }))
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
    if let Some(c) = query.chars().find(|c| c.is_control() && !c.is_whitespace()) {
        return Err(Error::Invalid(format!(
            "query: must not contain control characters (found U+{:04X})",
            u32::from(c)
        )));
    }
    fts_query(query).ok_or_else(|| {
        Error::Invalid("query: must contain at least one word (letters or digits)".into())
    })
}

/// Full-text search (`fts` from [`check_search`]) over what `agent` may read, best match
/// first, in what the index holds (run [`index_new_messages`] first for the newest messages).
pub fn search(conn: &Connection, agent: &str, fts: &str, limit: u32) -> Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS}, {READ_FLAG} FROM messages_fts f JOIN messages m ON m.seq = f.rowid \
         WHERE messages_fts MATCH ?2 AND {VISIBLE} ORDER BY f.rank LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(params![agent, fts, limit], client_message_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::Db;

    /// Threads are found through the id index and the replies index, never by reading every
    /// message.
    #[test]
    fn thread_queries_use_the_indexes() {
        let db = Db::in_memory();
        let tx = db.tx();
        for sql in [thread_sql(), thread_rate_sql()] {
            let plan: Vec<String> = tx
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(params!["a", "b"], |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(
                plan.iter()
                    .any(|l| l.contains("USING INDEX messages_replies")),
                "{plan:#?}"
            );
            assert!(!plan.iter().any(|l| l.starts_with("SCAN m")), "{plan:#?}");
        }
    }
}
