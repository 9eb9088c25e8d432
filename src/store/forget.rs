//! Forgetting an agent: its directory row, token, subscriptions and inbox go, in one
//! transaction, and a `forget` entry tells every peer to do the same.
//!
//! What stays: the messages themselves (rows in `messages`), so every other agent's threads,
//! inbox and search are unchanged. What goes with the inbox: the forgotten agent's unread
//! mail and read marks — a name brought back later starts empty, as a new agent would.
//!
//! A forget is ordered like every other change to the agent's rows: it carries one stamp,
//! recorded for the directory row and the token (and each subscription this node knows), so
//! a change made earlier that reaches a node later loses, and a later re-add (or connection)
//! wins. A directory row's stamp with no row is the forget's *tombstone*: mail, read marks and
//! subscriptions for the name that were made before it and arrive after it (from a node that
//! had not seen the forget yet) are dropped on arrival, so every node ends the same.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;
use crate::store::Tx;
use crate::store::log::{EventBody, append};
use crate::store::stamps::{Stamp, Stamped, put_stamp, stamp_of, stamp_wins};

/// Forgets `name` on behalf of this node's operator: stamps, deletes and logs it. Returns how
/// many unread messages its inbox held (now gone), or None if the name has no directory row.
pub fn forget_agent(tx: &Tx<'_>, name: &str, now: i64, origin: &str) -> Result<Option<u64>> {
    let known = tx
        .prepare_cached("SELECT 1 FROM agents WHERE name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()?
        .is_some();
    if !known {
        return Ok(None);
    }
    let topics = topics_of(tx, name)?;
    // After every stamp this node has seen for the rows it removes, so none of them can win
    // over the forget here or anywhere.
    let mut at = now;
    let mut rows = vec![Stamped::Agent(name), Stamped::Token(name)];
    rows.extend(topics.iter().map(|t| Stamped::Subscription(t, name)));
    for row in &rows {
        if let Some(prev) = stamp_of(tx, *row)? {
            at = at.max(prev.at + 1);
        }
    }
    let stamp = Stamp {
        at,
        by: origin.to_owned(),
    };
    for row in &rows {
        put_stamp(tx, *row, &stamp)?;
    }
    let unread = remove(tx, name, &topics, stamp.at)?;
    append(
        tx,
        origin,
        &EventBody::Forget {
            name: name.to_owned(),
            stamp,
        },
    )?;
    Ok(Some(unread))
}

/// A peer's forget of `name`. Each row goes only if the forget is newer than what this node
/// has for it (an agent re-added here later stays). Returns whether the directory row went,
/// and the topics whose subscriptions did.
pub(crate) fn apply_forget(
    tx: &Connection,
    name: &str,
    stamp: &Stamp,
) -> Result<(bool, Vec<String>)> {
    let row_goes = stamp_wins(tx, Stamped::Agent(name), stamp)?;
    if stamp_wins(tx, Stamped::Token(name), stamp)? {
        tx.prepare_cached("DELETE FROM tokens WHERE name = ?1")?
            .execute([name])?;
    }
    let mut gone = Vec::new();
    for topic in topics_of(tx, name)? {
        if stamp_wins(tx, Stamped::Subscription(&topic, name), stamp)? {
            gone.push(topic);
        }
    }
    if row_goes {
        tx.prepare_cached("DELETE FROM agents WHERE name = ?1")?
            .execute([name])?;
    }
    remove_subscriptions(tx, name, &gone)?;
    remove_inbox(tx, name, stamp.at)?;
    Ok((row_goes, gone))
}

/// The stamp of `name`'s forget while the name stays forgotten (no directory row), else None.
pub(crate) fn tombstone(conn: &Connection, name: &str) -> Result<Option<Stamp>> {
    let row = conn
        .prepare_cached("SELECT 1 FROM agents WHERE name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()?;
    match row {
        Some(()) => Ok(None),
        None => stamp_of(conn, Stamped::Agent(name)),
    }
}

/// How a forgotten name was spelled, if `name` (in any case) is forgotten and not known again.
pub fn forgotten_name(conn: &Connection, name: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT a FROM stamps WHERE kind = 'agent' AND a = ?1 COLLATE NOCASE \
             AND NOT EXISTS (SELECT 1 FROM agents WHERE name = ?1 COLLATE NOCASE)",
        )?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// Whether a change about `name` made at `at` (ms) predates the name's forget, and so must
/// not bring anything of it back.
pub(crate) fn forgotten_at(conn: &Connection, name: &str, at: i64) -> Result<bool> {
    Ok(tombstone(conn, name)?.is_some_and(|t| at <= t.at))
}

/// Forgotten names after `after`, by name, with their forgets' stamps (for logging or
/// snapshotting a whole store: `backfill`, `snapshot`).
pub(crate) fn tombstones_after(
    conn: &Connection,
    after: &str,
    limit: u32,
) -> Result<Vec<(String, Stamp)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a, at, by FROM stamps WHERE kind = 'agent' AND a > ?1 \
         AND a NOT IN (SELECT name FROM agents) ORDER BY a LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![after, limit], |r| {
            Ok((
                r.get(0)?,
                Stamp {
                    at: r.get(1)?,
                    by: r.get(2)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn topics_of(conn: &Connection, name: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT topic FROM subscriptions WHERE agent = ?1")?;
    let topics = stmt
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(topics)
}

/// Deletes the agent's rows; returns how many unread messages its inbox held.
fn remove(conn: &Connection, name: &str, topics: &[String], before: i64) -> Result<u64> {
    let unread: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM inbox i JOIN messages m ON m.id = i.msg_id \
             WHERE i.agent = ?1 AND i.read_at IS NULL",
        )?
        .query_row([name], |r| r.get(0))?;
    conn.prepare_cached("DELETE FROM agents WHERE name = ?1")?
        .execute([name])?;
    conn.prepare_cached("DELETE FROM tokens WHERE name = ?1")?
        .execute([name])?;
    remove_subscriptions(conn, name, topics)?;
    remove_inbox(conn, name, before)?;
    Ok(unread as u64)
}

fn remove_subscriptions(conn: &Connection, name: &str, topics: &[String]) -> Result<()> {
    let mut stmt =
        conn.prepare_cached("DELETE FROM subscriptions WHERE topic = ?1 AND agent = ?2")?;
    for topic in topics {
        stmt.execute(params![topic, name])?;
    }
    Ok(())
}

/// The agent's inbox rows of messages created up to `before` (ms), and its read marks of
/// messages not here yet.
fn remove_inbox(conn: &Connection, name: &str, before: i64) -> Result<()> {
    conn.prepare_cached(
        "DELETE FROM inbox WHERE agent = ?1 AND NOT EXISTS \
         (SELECT 1 FROM messages m WHERE m.id = inbox.msg_id AND m.created_at > ?2)",
    )?
    .execute(params![name, before])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{MessageType, Priority, Status};
    use crate::store::AgentRow;
    use crate::store::apply::apply;
    use crate::store::log::{Event, ReplicatedMessage};
    use crate::store::queries;
    use crate::store::tests::Db;

    fn bob() -> AgentRow {
        AgentRow {
            name: "bob".into(),
            node: "n1".into(),
            status: Status::Available,
            status_text: None,
            last_seen: None,
        }
    }

    fn mail(id: &str, at: i64) -> ReplicatedMessage {
        ReplicatedMessage {
            id: id.into(),
            origin: "n2".into(),
            sender: "alice".into(),
            target: "bob".into(),
            topic: None,
            kind: MessageType::Message,
            priority: Priority::Normal,
            subject: None,
            body: "for bob".into(),
            data: None,
            reply_to: None,
            thread_id: Some(id.into()),
            created_at: at,
            recipients: vec!["bob".into()],
        }
    }

    fn event(seq: u64, body: EventBody) -> Event {
        Event { seq, body }
    }

    /// The forget entry `db` would have logged for bob.
    fn forget_of_bob(db: &Db) -> EventBody {
        EventBody::Forget {
            name: "bob".into(),
            stamp: stamp_of(&db.tx(), Stamped::Agent("bob")).unwrap().unwrap(),
        }
    }

    fn count(db: &Db, sql: &str) -> i64 {
        db.tx().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn known(db: &Db) -> bool {
        queries::agents(&db.tx())
            .unwrap()
            .iter()
            .any(|a| a.name == "bob")
    }

    #[test]
    fn mail_sent_before_a_forget_leaves_the_inbox_whichever_arrives_first() {
        let (n1, n2) = (Db::in_memory(), Db::in_memory());
        for (n, origin) in [(&n1, "n1"), (&n2, "n2")] {
            queries::introduce_agent(&n.tx(), &bob(), 10, Some(origin)).unwrap();
        }
        // n2 accepted mail for bob that has not reached n1 when n1 forgets him.
        queries::insert_message(&n2.tx(), mail("m1", 1000), Some("n2")).unwrap();
        assert_eq!(forget_agent(&n1.tx(), "bob", 2000, "n1").unwrap(), Some(0));
        let forget = forget_of_bob(&n1);
        // Each node applies the other's change.
        apply(
            &n1.tx(),
            "n2",
            vec![event(1, EventBody::Message(mail("m1", 1000)))],
        )
        .unwrap();
        let applied = apply(&n2.tx(), "n1", vec![event(1, forget)]).unwrap();
        assert_eq!(applied.forgotten, ["bob"]);
        for n in [&n1, &n2] {
            assert!(!known(n));
            assert_eq!(
                count(n, "SELECT count(*) FROM inbox WHERE agent = 'bob'"),
                0
            );
            // The message itself stays (alice's thread).
            assert_eq!(count(n, "SELECT count(*) FROM messages WHERE id = 'm1'"), 1);
        }
        // Mail sent after the forget (by a node that knew bob again) is kept.
        let later = mail("m2", 3000);
        apply(&n1.tx(), "n2", vec![event(2, EventBody::Message(later))]).unwrap();
        assert_eq!(
            count(&n1, "SELECT count(*) FROM inbox WHERE agent = 'bob'"),
            1
        );
    }

    #[test]
    fn changes_from_before_a_forget_do_not_revive_it_and_a_later_add_wins() {
        let (n1, n2, n3) = (Db::in_memory(), Db::in_memory(), Db::in_memory());
        queries::introduce_agent(&n1.tx(), &bob(), 10, Some("n1")).unwrap();
        // Before the forget, n3 subscribed bob and issued his token; n2 sees that only later.
        queries::set_subscription(&n3.tx(), "ops", "bob", true, 1000, Some("n3")).unwrap();
        queries::put_token(&n3.tx(), "bob", "hash", 1000, Some("n3")).unwrap();
        let stamp = |row| stamp_of(&n3.tx(), row).unwrap().unwrap();
        let old = vec![
            event(
                1,
                EventBody::Subscription {
                    topic: "ops".into(),
                    agent: "bob".into(),
                    on: true,
                    stamp: stamp(Stamped::Subscription("ops", "bob")),
                },
            ),
            event(
                2,
                EventBody::Token {
                    name: "bob".into(),
                    hash: Some("hash".into()),
                    stamp: stamp(Stamped::Token("bob")),
                },
            ),
        ];
        forget_agent(&n1.tx(), "bob", 2000, "n1").unwrap();
        apply(&n2.tx(), "n1", vec![event(1, forget_of_bob(&n1))]).unwrap();
        let applied = apply(&n2.tx(), "n3", old).unwrap();
        assert!(applied.subscriptions.is_empty(), "{applied:?}");
        assert_eq!(count(&n2, "SELECT count(*) FROM subscriptions"), 0);
        assert_eq!(count(&n2, "SELECT count(*) FROM tokens"), 0);

        // Added again at n1 (its clock behind the forget, even): the add wins at n2.
        queries::introduce_agent(&n1.tx(), &bob(), 1500, Some("n1")).unwrap();
        let row = queries::agents(&n1.tx()).unwrap().remove(0);
        let add = EventBody::Agent {
            name: row.name,
            node: row.node,
            status: row.status,
            status_text: row.status_text,
            last_seen: row.last_seen,
            stamp: stamp_of(&n1.tx(), Stamped::Agent("bob")).unwrap().unwrap(),
        };
        assert!(matches!(&add, EventBody::Agent { stamp, .. } if stamp.at == 2001));
        apply(&n2.tx(), "n1", vec![event(2, add)]).unwrap();
        assert!(known(&n2));
    }
}
