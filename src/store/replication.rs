//! The replication log: what this node accepted, in order, for its peers.
//!
//! Every change a node makes on behalf of its own clients — a message, read marks, a directory
//! row, a subscription, a token — is appended to `events` in the same transaction as the change,
//! numbered per origin node. Peers ask for "your events after N" and apply them idempotently
//! (messages dedup by id; the rest are upserts), recording in `peer_cursors` how far they got
//! from each origin in the same transaction as the apply. So a crash anywhere neither loses nor
//! repeats an effect, and a link that comes back resumes where it stopped.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::Result;
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
        /// Orders this change against concurrent ones (absent from logs of older versions).
        #[serde(default, skip_serializing_if = "Stamp::is_unset")]
        stamp: Stamp,
    },
    /// A subscription was added or removed.
    Subscription {
        /// Topic without `#`.
        topic: String,
        /// Subscriber.
        agent: String,
        /// Added (true) or removed.
        on: bool,
        /// Orders this change against concurrent ones.
        #[serde(default, skip_serializing_if = "Stamp::is_unset")]
        stamp: Stamp,
    },
    /// A token was issued (hash) or revoked (no hash).
    Token {
        /// The agent it is bound to.
        name: String,
        /// SHA-256 hex of the token; `None` revokes.
        hash: Option<String>,
        /// Orders this change against concurrent ones.
        #[serde(default, skip_serializing_if = "Stamp::is_unset")]
        stamp: Stamp,
    },
}

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

/// A message as it travels between nodes: the stored form, with its thread always set, so a
/// peer stores it exactly as the origin did.
pub type ReplicatedMessage = NewMessage;

/// A numbered event from one origin.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    /// Position in the origin's log, from 1.
    pub seq: u64,
    /// The change.
    pub body: EventBody,
}

/// A committed log entry as the in-memory tail keeps it: messages stay typed (serialized only
/// when a link ships them, off the writer thread), everything else is its JSON.
#[derive(Debug, Clone)]
pub enum TailBody {
    /// An event's JSON.
    Json(Arc<str>),
    /// A message entry.
    Message(Arc<ReplicatedMessage>),
}

impl TailBody {
    /// The entry's `body` JSON, as peers receive it.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(tag = "event", rename_all = "snake_case")]
        enum Shape<'a> {
            Message(&'a ReplicatedMessage),
        }
        match self {
            TailBody::Json(j) => j.to_string(),
            TailBody::Message(m) => serde_json::to_string(&Shape::Message(m)).unwrap_or_default(),
        }
    }
}

thread_local! {
    /// Entries appended by the writer thread's current transaction, published to the in-memory
    /// tail only once it commits (see `store::Store::tail_after`).
    static PENDING: std::cell::RefCell<Vec<(u64, TailBody)>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The last seq of this node's log that is committed (None until first read from disk).
    static COMMITTED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

thread_local! {
    /// Whether this writer thread's store logs changes: only a node in a mesh has anyone to
    /// ship them to, and logging costs a tenth of a single node's throughput. Per writer
    /// thread, so two stores in one process never share it.
    static LOGGING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn tail_enabled() -> bool {
    LOGGING.with(|l| l.get())
}

/// Switches logging on (a node with a mesh) or off. Run as a store job, on the writer thread.
/// Switching on after a period without a mesh first logs the whole current state, so peers get
/// everything that happened meanwhile (they apply it idempotently).
pub fn configure(conn: &Connection, origin: &str, meshed: bool) -> Result<()> {
    let complete: String = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'log_complete'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or_else(|| "1".into());
    if !meshed {
        LOGGING.with(|l| l.set(false));
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'log_complete'", [])?;
        return Ok(());
    }
    LOGGING.with(|l| l.set(true));
    if complete == "0" {
        backfill(conn, origin)?;
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'log_complete'", [])?;
    }
    Ok(())
}

fn backfill(conn: &Connection, origin: &str) -> Result<()> {
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM messages WHERE origin = ?1 ORDER BY seq")?
        .query_map([origin], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in ids {
        if let Some(m) = load_message(conn, &id)? {
            append_message(conn, origin, || m, &id)?;
        }
    }
    for a in queries::agents(conn)? {
        let stamp = stamp_of(conn, Stamped::Agent(&a.name))?.unwrap_or_default();
        append(
            conn,
            origin,
            &EventBody::Agent {
                name: a.name,
                node: a.node,
                status: a.status,
                status_text: a.status_text,
                last_seen: a.last_seen,
                stamp,
            },
        )?;
    }
    // Subscriptions, including removals (their stamps outlive the row).
    let subs: Vec<(String, String, bool)> = conn
        .prepare(
            "SELECT topic, agent, 1 FROM subscriptions UNION \
             SELECT a, b, 0 FROM stamps WHERE kind = 'subscription' AND NOT EXISTS \
             (SELECT 1 FROM subscriptions s WHERE s.topic = stamps.a AND s.agent = stamps.b)",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (topic, agent, on) in subs {
        let stamp = stamp_of(conn, Stamped::Subscription(&topic, &agent))?.unwrap_or_default();
        append(
            conn,
            origin,
            &EventBody::Subscription {
                topic,
                agent,
                on,
                stamp,
            },
        )?;
    }
    let tokens: Vec<(String, Option<String>)> = conn
        .prepare(
            "SELECT name, hash FROM tokens UNION \
             SELECT a, NULL FROM stamps WHERE kind = 'token' AND a NOT IN (SELECT name FROM tokens)",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, hash) in tokens {
        let stamp = stamp_of(conn, Stamped::Token(&name))?.unwrap_or_default();
        append(conn, origin, &EventBody::Token { name, hash, stamp })?;
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

/// How many entries the current transaction has appended so far.
pub(crate) fn pending_len() -> usize {
    PENDING.with(|p| p.borrow().len())
}

/// Forgets entries appended after `len` (their savepoint was rolled back).
pub(crate) fn truncate_pending(len: usize) {
    PENDING.with(|p| p.borrow_mut().truncate(len));
}

/// Takes the entries of the transaction that just ended; `committed` says whether it did.
pub(crate) fn take_pending(committed: bool) -> Vec<(u64, TailBody)> {
    let taken = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if !committed {
        return Vec::new();
    }
    if let Some(last) = taken.last() {
        COMMITTED.with(|c| c.set(Some(last.0)));
    }
    taken
}

/// The seq the next appended entry gets: committed head + entries pending in this transaction.
fn next_seq(conn: &Connection) -> Result<u64> {
    let committed = match COMMITTED.with(|c| c.get()) {
        Some(c) => c,
        None => {
            let c = head(conn)?;
            COMMITTED.with(|cell| cell.set(Some(c)));
            c
        }
    };
    Ok(committed + pending_len() as u64 + 1)
}

/// Appends a change to this node's log (inside the caller's transaction). Only the node's own
/// changes are logged, always under its one node id.
pub fn append(conn: &Connection, origin: &str, body: &EventBody) -> Result<()> {
    if !tail_enabled() {
        return Ok(());
    }
    let payload = serde_json::to_string(body).unwrap_or_default();
    let seq = next_seq(conn)?;
    conn.prepare_cached("INSERT INTO events (seq, origin, payload) VALUES (?2, ?1, ?3)")?
        .execute(params![origin, seq as i64, payload])?;
    PENDING.with(|p| {
        p.borrow_mut()
            .push((seq, TailBody::Json(Arc::from(payload))))
    });
    Ok(())
}

/// Appends a message to this node's log. The row stores only a reference — the message itself
/// is already in `messages` and `inbox`, and writing it twice cost a quarter of the throughput
/// — while the in-memory tail keeps the full entry that peers are sent.
pub fn append_message(
    conn: &Connection,
    origin: &str,
    m: impl FnOnce() -> ReplicatedMessage,
    id: &str,
) -> Result<()> {
    if !tail_enabled() {
        return Ok(());
    }
    let payload = format!("{{\"event\":\"{MESSAGE_REF}\",\"id\":\"{id}\"}}");
    let seq = next_seq(conn)?;
    conn.prepare_cached("INSERT INTO events (seq, origin, payload) VALUES (?2, ?1, ?3)")?
        .execute(params![origin, seq as i64, payload])?;
    PENDING.with(|p| p.borrow_mut().push((seq, TailBody::Message(Arc::new(m())))));
    Ok(())
}

/// The stored form of a message entry.
const MESSAGE_REF: &str = "message_ref";

/// Rebuilds a message entry from the store.
fn load_message(conn: &Connection, id: &str) -> Result<Option<ReplicatedMessage>> {
    let row = conn
        .prepare_cached(
            "SELECT id, origin, sender, target, topic, type, priority, subject, body, data, \
             reply_to, thread_id, created_at FROM messages WHERE id = ?1",
        )?
        .query_row([id], |r| {
            let kind: String = r.get(5)?;
            let priority: String = r.get(6)?;
            let data: Option<String> = r.get(9)?;
            Ok(ReplicatedMessage {
                id: r.get(0)?,
                origin: r.get(1)?,
                sender: r.get(2)?,
                target: r.get(3)?,
                topic: r.get(4)?,
                kind: kind.parse().unwrap_or_default(),
                priority: priority.parse().unwrap_or_default(),
                subject: r.get(7)?,
                body: r.get(8)?,
                data: data.and_then(|d| serde_json::from_str(&d).ok()),
                reply_to: r.get(10)?,
                thread_id: Some(r.get(11)?),
                created_at: r.get(12)?,
                recipients: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut m) = row else { return Ok(None) };
    m.recipients = conn
        .prepare_cached("SELECT agent FROM inbox WHERE msg_id = ?1 ORDER BY agent")?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Some(m))
}

#[derive(Deserialize)]
struct StoredRef {
    event: String,
    id: String,
}

/// Events of `origin` after `after`, oldest first.
pub fn events_after(conn: &Connection, origin: &str, after: u64, limit: u32) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, payload FROM events WHERE seq > ?2 AND origin = ?1 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![origin, after as i64, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut events = Vec::with_capacity(rows.len());
    for (seq, p) in rows {
        if let Ok(r) = serde_json::from_str::<StoredRef>(&p)
            && r.event == MESSAGE_REF
        {
            match load_message(conn, &r.id)? {
                Some(m) => events.push(Event {
                    seq: seq as u64,
                    body: EventBody::Message(m),
                }),
                None => {
                    tracing::error!(origin, seq, id = %r.id, "a logged message is missing");
                    break;
                }
            }
            continue;
        }
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

/// The newest seq in this node's log (the numbering is per data dir, whatever the node id).
pub fn head(conn: &Connection) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM events")?
        .query_row([], |r| r.get::<_, i64>(0))? as u64)
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
        // Numbers may skip (the log's numbering is shared with entries of an earlier node id of
        // the same data dir); the origin always ships everything after our cursor, in order.
        match e.body {
            EventBody::Message(m) => {
                let stored = queries::insert_message(conn, m, None);
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
                    queries::upsert_agent(conn, &row, crate::message::now_ms(), None)?;
                    out.agents.push(row);
                }
            }
            EventBody::Subscription {
                topic,
                agent,
                on,
                stamp,
            } => {
                if stamp_wins(conn, Stamped::Subscription(&topic, &agent), &stamp)? {
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
            }
            EventBody::Token { name, hash, stamp } => {
                if stamp_wins(conn, Stamped::Token(&name), &stamp)? {
                    match hash {
                        Some(h) => {
                            queries::put_token(conn, &name, &h, crate::message::now_ms(), None)?
                        }
                        None => {
                            queries::delete_token(conn, &name, None)?;
                        }
                    }
                }
            }
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
    use crate::message::{MessageType, Priority};

    fn store() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut c).unwrap();
        c
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
        queries::upsert_agent(&n1, &bob(Status::Busy), 1000, Some("n1")).unwrap();
        queries::upsert_agent(&n2, &bob(Status::Away), 1000, Some("n2")).unwrap();
        let (from1, from2) = (bob_event(&n1, 1), bob_event(&n2, 1));
        // The link heals: each applies the other's change.
        let applied = apply(&n1, "n2", vec![from2]).unwrap();
        assert_eq!(applied.agents.len(), 1, "n2's change wins on n1");
        let applied = apply(&n2, "n1", vec![from1]).unwrap();
        assert!(applied.agents.is_empty(), "n1's change loses on n2");
        assert_eq!(
            (bob_status(&n1), bob_status(&n2)),
            (Status::Away, Status::Away)
        );

        // A later local change wins everywhere, even with a clock running behind the stamp.
        queries::upsert_agent(&n1, &bob(Status::Available), 10, Some("n1")).unwrap();
        let e = bob_event(&n1, 2);
        assert!(matches!(&e.body, EventBody::Agent { stamp, .. } if stamp.at == 1001));
        apply(&n2, "n1", vec![e]).unwrap();
        assert_eq!(bob_status(&n2), Status::Available);
    }

    #[test]
    fn a_name_introduced_by_a_watcher_never_overrides_the_agent_itself() {
        // bob is busy on n2; before n2's log reaches n1, someone tails bob on n1.
        let (n1, n2) = (store(), store());
        queries::upsert_agent(&n2, &bob(Status::Busy), 1000, Some("n2")).unwrap();
        queries::introduce_agent(&n1, &bob(Status::Available), 2000, Some("n1")).unwrap();
        let (from1, from2) = (bob_event(&n1, 1), bob_event(&n2, 1));
        apply(&n2, "n1", vec![from1]).unwrap();
        apply(&n1, "n2", vec![from2]).unwrap();
        assert_eq!(
            (bob_status(&n1), bob_status(&n2)),
            (Status::Busy, Status::Busy)
        );
        // Introducing a name that is already known changes nothing.
        queries::introduce_agent(&n2, &bob(Status::Away), 3000, Some("n2")).unwrap();
        assert_eq!(bob_status(&n2), Status::Busy);
    }

    #[test]
    fn a_removed_subscription_is_not_revived_by_an_older_add() {
        let (n1, n2) = (store(), store());
        queries::set_subscription(&n1, "ops", "bob", true, 1000, Some("n1")).unwrap();
        let add = Event {
            seq: 1,
            body: EventBody::Subscription {
                topic: "ops".into(),
                agent: "bob".into(),
                on: true,
                stamp: stamp_of(&n1, Stamped::Subscription("ops", "bob"))
                    .unwrap()
                    .unwrap(),
            },
        };
        // n2 removed it later (it had seen the add through another path, say).
        queries::set_subscription(&n2, "ops", "bob", false, 2000, Some("n2")).unwrap();
        apply(&n2, "n1", vec![add]).unwrap();
        assert!(queries::subscriptions(&n2).unwrap().is_empty());
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
            &n2,
            "n1",
            vec![unstamped(1, Status::Busy), unstamped(2, Status::Away)],
        )
        .unwrap();
        assert_eq!(bob_status(&n2), Status::Away);
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
