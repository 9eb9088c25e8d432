//! Applying a peer's events, and the backfill that logs a whole store at once. Apart from the
//! log itself: the log records this node's own changes; this is what happens to another
//! node's. Peers' events apply idempotently (messages dedup by id; the rest are upserts that
//! their stamps order), and `peer_cursors` records how far this node got from each origin in
//! the same transaction as the apply, so a crash neither loses nor repeats an effect and a link
//! that comes back resumes where it stopped.

use rusqlite::params;

use crate::error::Result;
use crate::store::Tx;
use crate::store::directory::{agents, delete_token, put_token, set_subscription, upsert_agent};
use crate::store::forget::{apply_forget, forgotten_at, tombstones_after};
use crate::store::log::{Event, EventBody, append, append_message, cursor, load_message};
use crate::store::messages::insert_message;
use crate::store::names::Spellings;
use crate::store::relayed::record;
use crate::store::rows::{AgentRow, Stored};
use crate::store::snapshot::{agent_body, subscription_body, subscriptions_after, tokens_after};
use crate::store::stamps::{Stamped, stamp_of, stamp_wins};

/// What applying remote events changed, for the router's in-memory state.
#[derive(Debug, Default)]
pub struct Applied {
    /// Messages newly stored (to push to local sessions).
    pub messages: Vec<Stored>,
    /// Directory rows.
    pub agents: Vec<AgentRow>,
    /// (topic, agent, on).
    pub subscriptions: Vec<(String, String, bool)>,
    /// Agents forgotten (their directory rows are gone).
    pub forgotten: Vec<String>,
    /// Events skipped because they were already applied.
    pub duplicates: u64,
    /// The cursor after applying.
    pub cursor: u64,
    /// The cursors a snapshot's end moved: (log key, seq).
    pub cursors: Vec<(String, u64)>,
}

/// Applies events from `origin` that are newer than its cursor, in order, and advances it.
/// Every agent name in them is taken in this node's spelling (names are one name in any
/// case), so the mail, read marks, rows, subscriptions and tokens of `Bob` land on `bob`'s.
pub fn apply(conn: &Tx<'_>, origin: &str, events: Vec<Event>) -> Result<Applied> {
    let mut at = cursor(conn, origin)?;
    let mut out = Applied::default();
    let mut names = Spellings::default();
    for e in events {
        if e.seq <= at {
            out.duplicates += 1;
            continue;
        }
        let body = fold_names(conn, &mut names, e.body)?;
        // Kept to relay to peers not linked to the origin (see `relayed`).
        record(conn, origin, e.seq, at, &body)?;
        // Numbers may skip (the log's numbering is shared with entries of an earlier node id of
        // the same data dir); the origin always ships everything after our cursor, in order.
        apply_body(conn, body, &mut out)?;
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

/// Applies one change, whoever's it is: a log entry or a row of a snapshot. What it changed
/// goes into `out`; every check a change needs (stamps, forgotten names) is made here, so a
/// snapshot decides conflicts exactly as the log does. Names must be folded already.
pub(crate) fn apply_body(conn: &Tx<'_>, body: EventBody, out: &mut Applied) -> Result<()> {
    match body {
        EventBody::Message(mut m) => {
            // Mail for a name forgotten after it was sent stays out of its inbox here, as
            // the forget took it out of the inbox where the mail came first.
            let mut kept = Vec::with_capacity(m.recipients.len());
            for r in std::mem::take(&mut m.recipients) {
                if !forgotten_at(conn, &r, m.created_at)? {
                    kept.push(r);
                }
            }
            m.recipients = kept;
            let stored = insert_message(conn, m, None);
            match stored {
                Ok(s) if s.duplicate => out.duplicates += 1,
                Ok(s) => out.messages.push(s),
                // A message that cannot be stored here (an id clash) is skipped, not retried
                // forever; the origin still has it.
                Err(crate::Error::Store(e)) => return Err(crate::Error::Store(e)),
                Err(e) => tracing::warn!(error = %e, "skipping a replicated message"),
            }
        }
        // Marks of an agent forgotten since: its inbox is gone.
        EventBody::Read { agent, at, .. } if forgotten_at(conn, &agent, at)? => {}
        EventBody::Read { agent, ids, at } => {
            // The message may not be here yet (it comes from its own origin, maybe later):
            // record the mark anyway, so it is read when it arrives.
            let mut stmt = conn.prepare_cached(
                "INSERT INTO inbox (agent, msg_id, read_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(agent, msg_id) DO UPDATE SET read_at = coalesce(inbox.read_at, excluded.read_at)",
            )?;
            for id in &ids {
                stmt.execute(params![agent, id, at])?;
            }
        }
        EventBody::Agent {
            name,
            node,
            status,
            status_text,
            last_seen,
            stamp,
        } => {
            if stamp_wins(conn, Stamped::Agent(&name), &stamp)? {
                let row = AgentRow {
                    name,
                    node,
                    status,
                    status_text,
                    last_seen,
                };
                upsert_agent(conn, &row, crate::message::now_ms(), None)?;
                out.agents.push(row);
            }
        }
        EventBody::Subscription {
            topic,
            agent,
            on,
            stamp,
        } => {
            // An add made before its agent was forgotten does not bring the agent back.
            let stale = on && !stamp.is_unset() && forgotten_at(conn, &agent, stamp.at)?;
            if !stale && stamp_wins(conn, Stamped::Subscription(&topic, &agent), &stamp)? {
                set_subscription(conn, &topic, &agent, on, crate::message::now_ms(), None)?;
                out.subscriptions.push((topic, agent, on));
            }
        }
        EventBody::Forget { name, stamp } => {
            let (row_gone, topics) = apply_forget(conn, &name, &stamp)?;
            out.subscriptions
                .extend(topics.into_iter().map(|t| (t, name.clone(), false)));
            if row_gone {
                out.forgotten.push(name);
            }
        }
        EventBody::Token { name, hash, stamp } => {
            if stamp_wins(conn, Stamped::Token(&name), &stamp)? {
                match hash {
                    Some(h) => put_token(conn, &name, &h, crate::message::now_ms(), None)?,
                    None => {
                        delete_token(conn, &name, None)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Applies `origin`'s entries relayed by a peer that applied them after entry `after`; `None`
/// (nothing applied) if this node has not applied that far, since taking them would skip the
/// entries between.
pub fn apply_relayed(
    conn: &Tx<'_>,
    origin: &str,
    after: u64,
    events: Vec<Event>,
) -> Result<Option<Applied>> {
    if after > cursor(conn, origin)? {
        return Ok(None);
    }
    apply(conn, origin, events).map(Some)
}

/// The event with every agent name in this node's spelling. A message's `to` stays as its
/// sender wrote it.
pub(crate) fn fold_names(
    conn: &Tx<'_>,
    names: &mut Spellings,
    mut body: EventBody,
) -> Result<EventBody> {
    match &mut body {
        EventBody::Message(m) => {
            m.sender = names.local(conn, &m.sender)?;
            names.local_all(conn, &mut m.recipients)?;
        }
        EventBody::Read { agent, .. } | EventBody::Subscription { agent, .. } => {
            *agent = names.local(conn, agent)?;
        }
        EventBody::Agent { name, .. }
        | EventBody::Token { name, .. }
        | EventBody::Forget { name, .. } => {
            *name = names.local(conn, name)?;
        }
    }
    Ok(body)
}

/// Logs the whole current state (switching logging on after a period without a mesh): every
/// message stored after position `after` (those the log does not hold), and every directory
/// row, subscription, token and read mark.
pub(crate) fn backfill(conn: &Tx<'_>, origin: &str, after: i64) -> Result<()> {
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM messages WHERE seq > ?1 ORDER BY seq")?
        .query_map([after], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in ids {
        if let Some(m) = load_message(conn, &id)? {
            append_message(conn, origin, || m, &id)?;
        }
    }
    // Every row of the directory, subscriptions and tokens, and forgotten names, as a
    // snapshot has them.
    let all = u32::MAX;
    for a in agents(conn)? {
        append(conn, origin, &agent_body(conn, a)?)?;
    }
    for (topic, agent, on) in subscriptions_after(conn, ("", ""), all)? {
        append(conn, origin, &subscription_body(conn, topic, agent, on)?)?;
    }
    for (name, hash) in tokens_after(conn, "", all)? {
        let stamp = stamp_of(conn, Stamped::Token(&name))?.unwrap_or_default();
        append(conn, origin, &EventBody::Token { name, hash, stamp })?;
    }
    for (name, stamp) in tombstones_after(conn, "", all)? {
        append(conn, origin, &EventBody::Forget { name, stamp })?;
    }
    let reads: Vec<(String, String, i64)> = conn
        .prepare("SELECT agent, msg_id, read_at FROM inbox WHERE read_at IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (agent, id, at) in reads {
        append(
            conn,
            origin,
            &EventBody::Read {
                agent,
                ids: vec![id],
                at,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{MessageType, Priority, Status};
    use crate::store::log::ReplicatedMessage;
    use crate::store::queries;
    use crate::store::stamps::Stamp;
    use crate::store::tests::Db;
    use rusqlite::Connection;

    fn store() -> Db {
        Db::in_memory()
    }

    fn bob(status: Status) -> AgentRow {
        AgentRow {
            name: "bob".into(),
            node: "n".into(),
            status,
            status_text: None,
            last_seen: Some(1),
        }
    }

    /// The event a node would log for its own latest change of bob's row.
    fn bob_event(c: &Connection, seq: u64) -> Event {
        let row = queries::agents(c)
            .unwrap()
            .into_iter()
            .find(|a| a.name == "bob")
            .unwrap();
        Event {
            seq,
            body: EventBody::Agent {
                name: row.name,
                node: row.node,
                status: row.status,
                status_text: row.status_text,
                last_seen: row.last_seen,
                stamp: stamp_of(c, Stamped::Agent("bob")).unwrap().unwrap(),
            },
        }
    }

    fn bob_status(c: &Connection) -> Status {
        queries::agents(c).unwrap()[0].status
    }

    #[test]
    fn concurrent_changes_to_one_row_end_the_same_on_every_node() {
        // Partitioned, n1 and n2 change bob in the same millisecond.
        let (n1, n2) = (store(), store());
        queries::upsert_agent(&n1.tx(), &bob(Status::Busy), 1000, Some("n1")).unwrap();
        queries::upsert_agent(&n2.tx(), &bob(Status::Away), 1000, Some("n2")).unwrap();
        let (from1, from2) = (bob_event(&n1.tx(), 1), bob_event(&n2.tx(), 1));
        // The link heals: each applies the other's change.
        let applied = apply(&n1.tx(), "n2", vec![from2]).unwrap();
        assert_eq!(applied.agents.len(), 1, "n2's change wins on n1");
        let applied = apply(&n2.tx(), "n1", vec![from1]).unwrap();
        assert!(applied.agents.is_empty(), "n1's change loses on n2");
        assert_eq!(
            (bob_status(&n1.tx()), bob_status(&n2.tx())),
            (Status::Away, Status::Away)
        );

        // A later local change wins everywhere, even with a clock running behind the stamp.
        queries::upsert_agent(&n1.tx(), &bob(Status::Available), 10, Some("n1")).unwrap();
        let e = bob_event(&n1.tx(), 2);
        assert!(matches!(&e.body, EventBody::Agent { stamp, .. } if stamp.at == 1001));
        apply(&n2.tx(), "n1", vec![e]).unwrap();
        assert_eq!(bob_status(&n2.tx()), Status::Available);
    }

    #[test]
    fn a_name_introduced_by_a_watcher_never_overrides_the_agent_itself() {
        // bob is busy on n2; before n2's log reaches n1, someone tails bob on n1.
        let (n1, n2) = (store(), store());
        queries::upsert_agent(&n2.tx(), &bob(Status::Busy), 1000, Some("n2")).unwrap();
        queries::introduce_agent(&n1.tx(), &bob(Status::Available), 2000, Some("n1")).unwrap();
        let (from1, from2) = (bob_event(&n1.tx(), 1), bob_event(&n2.tx(), 1));
        apply(&n2.tx(), "n1", vec![from1]).unwrap();
        apply(&n1.tx(), "n2", vec![from2]).unwrap();
        assert_eq!(
            (bob_status(&n1.tx()), bob_status(&n2.tx())),
            (Status::Busy, Status::Busy)
        );
        // Introducing a name that is already known changes nothing.
        queries::introduce_agent(&n2.tx(), &bob(Status::Away), 3000, Some("n2")).unwrap();
        assert_eq!(bob_status(&n2.tx()), Status::Busy);
    }

    #[test]
    fn a_removed_subscription_is_not_revived_by_an_older_add() {
        let (n1, n2) = (store(), store());
        queries::set_subscription(&n1.tx(), "ops", "bob", true, 1000, Some("n1")).unwrap();
        let add = Event {
            seq: 1,
            body: EventBody::Subscription {
                topic: "ops".into(),
                agent: "bob".into(),
                on: true,
                stamp: stamp_of(&n1.tx(), Stamped::Subscription("ops", "bob"))
                    .unwrap()
                    .unwrap(),
            },
        };
        // n2 removed it later (it had seen the add through another path, say).
        queries::set_subscription(&n2.tx(), "ops", "bob", false, 2000, Some("n2")).unwrap();
        apply(&n2.tx(), "n1", vec![add]).unwrap();
        assert!(queries::subscriptions(&n2.tx()).unwrap().is_empty());
    }

    #[test]
    fn unstamped_entries_from_older_versions_still_apply_in_order() {
        let n2 = store();
        let unstamped = |seq, status| Event {
            seq,
            body: EventBody::Agent {
                name: "bob".into(),
                node: "n1".into(),
                status,
                status_text: None,
                last_seen: None,
                stamp: Stamp::default(),
            },
        };
        apply(
            &n2.tx(),
            "n1",
            vec![unstamped(1, Status::Busy), unstamped(2, Status::Away)],
        )
        .unwrap();
        assert_eq!(bob_status(&n2.tx()), Status::Away);
    }

    fn note(id: &str, origin: &str) -> ReplicatedMessage {
        ReplicatedMessage {
            id: id.into(),
            origin: origin.into(),
            sender: "alice".into(),
            target: "bob".into(),
            topic: None,
            kind: MessageType::Message,
            priority: Priority::Normal,
            subject: None,
            body: id.into(),
            data: None,
            reply_to: None,
            thread_id: None,
            created_at: 1,
            recipients: vec!["bob".into()],
        }
    }

    #[test]
    fn meshing_again_logs_each_message_stored_unlogged_once_whatever_its_node_id() {
        use crate::store::log::{configure, events_after};
        let db = store();
        let tx = db.tx();
        let logged_ids = |tx: &Tx<'_>| -> Vec<String> {
            events_after(tx, 0, 100)
                .unwrap()
                .into_iter()
                .filter_map(|e| match e.body {
                    EventBody::Message(m) => Some(m.id),
                    _ => None,
                })
                .collect()
        };
        configure(&tx, "n1", true).unwrap();
        insert_message(&tx, note("a", "n1"), Some("n1")).unwrap();
        // Two runs without a mesh, under the host name: nothing is logged.
        configure(&tx, "laptop", false).unwrap();
        insert_message(&tx, note("b", "laptop"), Some("laptop")).unwrap();
        configure(&tx, "laptop", false).unwrap();
        insert_message(&tx, note("c", "laptop"), Some("laptop")).unwrap();
        assert_eq!(logged_ids(&tx), ["a"]);
        // Meshed again as n1: what the log lacks is logged, and nothing twice.
        configure(&tx, "n1", true).unwrap();
        assert_eq!(logged_ids(&tx), ["a", "b", "c"]);
        configure(&tx, "n1", true).unwrap();
        assert_eq!(logged_ids(&tx), ["a", "b", "c"]);
    }

    #[test]
    fn names_from_a_peer_in_another_case_land_on_the_local_spelling() {
        let n2 = store();
        let tx = n2.tx();
        queries::upsert_agent(&tx, &bob(Status::Available), 1000, Some("n2")).unwrap();
        let stamp = |at| Stamp {
            at,
            by: "n1".into(),
        };
        let mut to_bob = note("m1", "n1");
        to_bob.recipients = vec!["Bob".into(), "BOB".into()];
        let events = vec![
            EventBody::Agent {
                name: "Bob".into(),
                node: "n1".into(),
                status: Status::Busy,
                status_text: None,
                last_seen: Some(5),
                stamp: stamp(2000),
            },
            EventBody::Message(to_bob),
            EventBody::Read {
                agent: "BOB".into(),
                ids: vec!["m1".into()],
                at: 9,
            },
            EventBody::Subscription {
                topic: "ops".into(),
                agent: "Bob".into(),
                on: true,
                stamp: stamp(2001),
            },
            EventBody::Token {
                name: "bOB".into(),
                hash: Some("h".into()),
                stamp: stamp(2002),
            },
        ];
        let events = events
            .into_iter()
            .enumerate()
            .map(|(i, body)| Event {
                seq: i as u64 + 1,
                body,
            })
            .collect();
        let applied = apply(&tx, "n1", events).unwrap();
        assert_eq!(applied.messages[0].recipients, ["bob"]);
        assert_eq!(applied.agents[0].name, "bob");
        assert_eq!(applied.subscriptions, [("ops".into(), "bob".into(), true)]);
        let one = |sql: &str| -> Vec<String> {
            tx.prepare(sql)
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(
            one("SELECT name || ':' || status FROM agents"),
            ["bob:busy"]
        );
        assert_eq!(
            one("SELECT agent || ':' || (read_at IS NOT NULL) FROM inbox"),
            ["bob:1"]
        );
        assert_eq!(one("SELECT agent FROM subscriptions"), ["bob"]);
        assert_eq!(one("SELECT name FROM tokens"), ["bob"]);
    }

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
                thread_id: Some("01J0000000000000000000000A".into()),
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
                stamp: Stamp {
                    at: 3,
                    by: "n1".into(),
                },
            },
            EventBody::Token {
                name: "bob".into(),
                hash: None,
                stamp: Stamp::default(),
            },
        ];
        for b in bodies {
            let text = serde_json::to_string(&b).unwrap();
            let back: EventBody = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
    }
}
