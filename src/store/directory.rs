//! The directory: agents, subscriptions and tokens. Local changes are stamped and logged
//! (see `stamps`, `log`); a peer's change arrives with its stamp already checked by `apply`.
//! Each function runs inside the caller's transaction; none of them commits.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;
use crate::message::Status;
use crate::store::Tx;
use crate::store::forget::tombstone;
use crate::store::log::{EventBody, append, log_stamped};
use crate::store::rows::{AgentRow, LogAs, TokenRow};
use crate::store::stamps::{Stamp, Stamped, put_stamp, stamp_local};

/// Every known agent.
pub fn agents(conn: &Connection) -> Result<Vec<AgentRow>> {
    let mut stmt =
        conn.prepare_cached("SELECT name, node, status, status_text, last_seen FROM agents")?;
    let rows = stmt
        .query_map([], agent_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Agents after `name`, by name, at most `limit` (a snapshot's pages).
pub(crate) fn agents_after(conn: &Connection, name: &str, limit: u32) -> Result<Vec<AgentRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, node, status, status_text, last_seen FROM agents WHERE name > ?1 \
         ORDER BY name LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![name, limit], agent_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    let status: String = r.get(2)?;
    Ok(AgentRow {
        name: r.get(0)?,
        node: r.get(1)?,
        status: Status::from_stored(&status),
        status_text: r.get(3)?,
        last_seen: r.get(4)?,
    })
}

/// Creates or updates an agent's directory row.
pub fn upsert_agent(conn: &Tx<'_>, a: &AgentRow, now: i64, log_as: LogAs<'_>) -> Result<()> {
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
pub fn introduce_agent(conn: &Tx<'_>, a: &AgentRow, now: i64, log_as: LogAs<'_>) -> Result<()> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM agents WHERE name = ?1")?
        .query_row([&a.name], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        return Ok(());
    }
    // No row means no stamp either (stamps are written with their rows), unless the name was
    // forgotten: then this brings it back, so it must come after the forget everywhere.
    if let Some(origin) = log_as {
        let stamp = match tombstone(conn, &a.name)? {
            Some(_) => stamp_local(conn, Stamped::Agent(&a.name), origin, now)?,
            None => {
                let stamp = Stamp {
                    at: 1,
                    by: origin.to_owned(),
                };
                put_stamp(conn, Stamped::Agent(&a.name), &stamp)?;
                stamp
            }
        };
        append(conn, origin, &agent_event(a, stamp))?;
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
    conn: &Tx<'_>,
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

/// Stores a token hash for `name`, replacing any earlier one.
pub fn put_token(conn: &Tx<'_>, name: &str, hash: &str, now: i64, log_as: LogAs<'_>) -> Result<()> {
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
pub fn delete_token(conn: &Tx<'_>, name: &str, log_as: LogAs<'_>) -> Result<bool> {
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
