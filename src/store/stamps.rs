//! Last-writer-wins stamps: how every node ends with the same directory row, subscription and
//! token whatever order concurrent changes reach it in. Kept in their own table so a removed
//! row's stamp outlives it (an older add must not revive it).

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// When and where a replicated row last changed. Two nodes may change the same row while
/// they cannot see each other (bob sets `busy` on one, `away` on the other); every node keeps
/// the change with the greater stamp — later `at`, then greater `by` — so all of them end
/// with the same row whatever order the changes arrive in. A node stamps its own change
/// after every stamp it has seen for that row, so its clock running behind cannot make a
/// newer change lose to an older one it already applied.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub struct Stamp {
    /// ms since the epoch.
    pub at: i64,
    /// The node that made the change.
    pub by: String,
}

impl Stamp {
    /// Entries logged before stamps existed carry none; they apply in arrival order.
    pub fn is_unset(&self) -> bool {
        self.at == 0 && self.by.is_empty()
    }
}

/// A row that carries a stamp: (kind, a, b) in the `stamps` table.
#[derive(Debug, Clone, Copy)]
pub enum Stamped<'a> {
    /// A directory row.
    Agent(&'a str),
    /// (topic, agent).
    Subscription(&'a str, &'a str),
    /// A token's owner.
    Token(&'a str),
}

impl Stamped<'_> {
    fn key(&self) -> (&'static str, &str, &str) {
        match *self {
            Stamped::Agent(a) => ("agent", a, ""),
            Stamped::Subscription(t, a) => ("subscription", t, a),
            Stamped::Token(n) => ("token", n, ""),
        }
    }
}

/// The stored stamp of a row, if it ever changed with one.
pub fn stamp_of(conn: &Connection, row: Stamped<'_>) -> Result<Option<Stamp>> {
    let (kind, a, b) = row.key();
    Ok(conn
        .prepare_cached("SELECT at, by FROM stamps WHERE kind = ?1 AND a = ?2 AND b = ?3")?
        .query_row(params![kind, a, b], |r| {
            Ok(Stamp {
                at: r.get(0)?,
                by: r.get(1)?,
            })
        })
        .optional()?)
}

/// Records `stamp` as the row's.
pub(crate) fn put_stamp(conn: &Connection, row: Stamped<'_>, stamp: &Stamp) -> Result<()> {
    let (kind, a, b) = row.key();
    conn.prepare_cached(
        "INSERT INTO stamps (kind, a, b, at, by) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT(kind, a, b) DO UPDATE SET at = ?4, by = ?5",
    )?
    .execute(params![kind, a, b, stamp.at, stamp.by])?;
    Ok(())
}

/// Stamps a change this node makes: now, or just after the row's last stamp if that is later.
pub fn stamp_local(conn: &Connection, row: Stamped<'_>, node: &str, now: i64) -> Result<Stamp> {
    let at = match stamp_of(conn, row)? {
        Some(prev) => now.max(prev.at + 1),
        None => now,
    };
    let stamp = Stamp {
        at,
        by: node.to_owned(),
    };
    put_stamp(conn, row, &stamp)?;
    Ok(stamp)
}

/// Whether a peer's change beats what this node has (and if so, records its stamp). Unstamped
/// changes (from an older version) always apply, as they did then.
pub fn stamp_wins(conn: &Connection, row: Stamped<'_>, stamp: &Stamp) -> Result<bool> {
    if stamp.is_unset() {
        return Ok(true);
    }
    if stamp_of(conn, row)?.is_some_and(|have| have >= *stamp) {
        return Ok(false);
    }
    put_stamp(conn, row, stamp)?;
    Ok(true)
}
