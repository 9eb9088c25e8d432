//! Named marks an edge keeps beside its work, written in the same transaction as that work:
//! the backbone's position in its NATS stream, committed with the apply that read up to it
//! (so a restart resumes exactly where the store is, whatever the stream's consumer says), and
//! the gaps it found in an origin's log. Kept in `meta` under a prefix of their own.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;
use crate::store::Tx;

const PREFIX: &str = "mark:";

/// The mark `key`, if set.
pub fn get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([format!("{PREFIX}{key}")], |r| r.get(0))
        .optional()?)
}

/// Sets the mark `key` inside the caller's transaction.
pub fn set(tx: &Tx<'_>, key: &str, value: &str) -> Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![format!("{PREFIX}{key}"), value])?;
    Ok(())
}

/// Removes the mark `key` inside the caller's transaction.
pub fn clear(tx: &Tx<'_>, key: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM meta WHERE key = ?1")?
        .execute([format!("{PREFIX}{key}")])?;
    Ok(())
}

/// Every mark whose key starts with `prefix`: (key without the marks' own prefix, value).
pub fn with_prefix(conn: &Connection, prefix: &str) -> Result<Vec<(String, String)>> {
    let like = format!("{PREFIX}{}%", prefix.replace(['%', '_'], ""));
    let rows = conn
        .prepare_cached("SELECT key, value FROM meta WHERE key LIKE ?1 ORDER BY key")?
        .query_map([like], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix(PREFIX)?;
            k.starts_with(prefix).then(|| (k.to_owned(), v))
        })
        .collect())
}
