//! Names are one name whatever their case. Stores from before that rule may hold `bob` and
//! `Bob` as two agents; opening merges each such group into the spelling written first (the
//! oldest directory row), so their mail, read marks and subscriptions are one inbox again.
//! Peers' events are folded the same way as they apply ([`Spellings`]): two nodes that made
//! `Bob` and `bob` before they were linked, or a peer of an older version, send names in
//! another case than this node's, and each would otherwise start a second agent here.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

/// One merge: `from` became `into`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The spelling kept.
    pub into: String,
    /// The spelling merged into it.
    pub from: String,
}

/// Merges agents whose names differ only in case. Each node merges its own store the same
/// way (by the rows' creation time, then by name); the other spelling's token, if the kept
/// one has its own, is revoked.
pub fn merge_case_duplicates(conn: &Connection) -> Result<Vec<Merged>> {
    let mut groups = conn.prepare(
        "SELECT name FROM agents WHERE lower(name) IN \
           (SELECT lower(name) FROM agents GROUP BY lower(name) HAVING count(*) > 1) \
         ORDER BY lower(name), created_at, name",
    )?;
    let names = groups
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let mut merged = Vec::new();
    let mut keep: Option<String> = None;
    for name in names {
        match &keep {
            Some(k) if k.eq_ignore_ascii_case(&name) => {
                merge(conn, k, &name)?;
                merged.push(Merged {
                    into: k.clone(),
                    from: name,
                });
            }
            _ => keep = Some(name),
        }
    }
    Ok(merged)
}

/// The spelling this store has for names, looked up once per name within an apply. Names are
/// ASCII (see `validate_name`), and SQLite's `lower` folds ASCII only: the same fold as the
/// directory's in memory.
#[derive(Debug, Default)]
pub(crate) struct Spellings(HashMap<String, String>);

impl Spellings {
    /// `name` as this store spells it; `name` itself if no agent here has it in any case.
    pub(crate) fn local(&mut self, conn: &Connection, name: &str) -> Result<String> {
        if let Some(known) = self.0.get(name) {
            return Ok(known.clone());
        }
        let exact = conn
            .prepare_cached("SELECT name FROM agents WHERE name = ?1")?
            .query_row([name], |r| r.get::<_, String>(0))
            .optional()?;
        let found = match exact {
            Some(n) => Some(n),
            None => conn
                .prepare_cached(
                    "SELECT name FROM agents WHERE lower(name) = ?1 ORDER BY created_at, name LIMIT 1",
                )?
                .query_row([name.to_ascii_lowercase()], |r| r.get::<_, String>(0))
                .optional()?,
        };
        // A name not known yet is not remembered: the apply may create it in the next event.
        let Some(found) = found else {
            return Ok(name.to_owned());
        };
        self.0.insert(name.to_owned(), found.clone());
        Ok(found)
    }

    /// Every name of `names` as this store spells it, each once, in their order.
    pub(crate) fn local_all(&mut self, conn: &Connection, names: &mut Vec<String>) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(names.len());
        for n in names.drain(..) {
            let local = self.local(conn, &n)?;
            if seen.insert(local.clone()) {
                out.push(local);
            }
        }
        *names = out;
        Ok(())
    }
}

fn merge(conn: &Connection, into: &str, from: &str) -> Result<()> {
    for sql in [
        "UPDATE OR IGNORE inbox SET agent = ?1 WHERE agent = ?2",
        "DELETE FROM inbox WHERE agent = ?2",
        "UPDATE OR IGNORE subscriptions SET agent = ?1 WHERE agent = ?2",
        "DELETE FROM subscriptions WHERE agent = ?2",
        "UPDATE OR IGNORE tokens SET name = ?1 WHERE name = ?2",
        "DELETE FROM tokens WHERE name = ?2",
        "DELETE FROM agents WHERE name = ?2",
    ] {
        conn.execute(sql, params![into, from])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_duplicates_become_one_agent_with_all_their_mail() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("db")).unwrap();
        crate::store::schema::migrate(&mut c).unwrap();
        c.execute_batch(
            "INSERT INTO agents (name, node, created_at) VALUES ('bob', 'n1', 1), ('Bob', 'n1', 2),
                 ('BOB', 'n1', 3), ('alice', 'n1', 1);
             INSERT INTO inbox (agent, msg_id) VALUES ('bob', 'm1'), ('Bob', 'm2'), ('BOB', 'm1');
             INSERT INTO subscriptions (topic, agent, created_at) VALUES ('ops', 'Bob', 1);
             INSERT INTO tokens (name, hash, created_at) VALUES ('BOB', 'h', 1);",
        )
        .unwrap();
        let merged = merge_case_duplicates(&c).unwrap();
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().all(|m| m.into == "bob"), "{merged:?}");
        let agents: Vec<String> = c
            .prepare("SELECT name FROM agents ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(agents, ["alice", "bob"]);
        let inbox: Vec<String> = c
            .prepare("SELECT agent || ':' || msg_id FROM inbox ORDER BY msg_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(inbox, ["bob:m1", "bob:m2"]);
        let sub: String = c
            .query_row("SELECT agent FROM subscriptions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sub, "bob");
        let token: String = c
            .query_row("SELECT name FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(token, "bob");
        assert!(merge_case_duplicates(&c).unwrap().is_empty());
    }
}
