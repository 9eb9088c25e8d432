//! The replication log: what this node accepted, in order, for its peers.
//!
//! Every change a node makes on behalf of its own clients — a message, read marks, a directory
//! row, a subscription, a token, a forgotten agent — is appended to `events` in the same transaction as the change,
//! numbered per origin node. Peers ask for "your events after N" and apply them idempotently
//! (see `apply`). The entries a transaction appends are held by the writer's [`LogState`],
//! reached through the job's [`Tx`], and reach the in-memory tail only once it commits: a peer
//! is never shipped an entry that a rollback took back.
//!
//! [`EventBody`] is the log's own record format: it is what the `events` table stores, so the
//! store owns it. The mesh ships these records verbatim inside its `events` frames (the frame
//! envelope lives in `mesh::frames`), which is why a log payload never has to be parsed again on
//! its way to a peer.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::message::Status;
use crate::store::Tx;
use crate::store::rows::{LogAs, MESSAGE_COLUMNS, NewMessage, message_row};
use crate::store::stamps::{self, Stamp, Stamped};

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
    /// The operator forgot an agent: its directory row, token, subscriptions and inbox go
    /// (see `store::forget`); changes to them stamped before this one lose to it.
    Forget {
        /// The agent.
        name: String,
        /// Orders the forget against other changes to the agent's rows.
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

/// The log's state on the writer thread: whether this store logs at all, how far the log has
/// committed, and what the current transaction appended. The writer owns it and hands it to
/// every job inside its [`Tx`], so two stores in one process never share it.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    /// Whether this store logs changes: only a node in a mesh has anyone to ship them to, and
    /// logging costs a tenth of a single node's throughput.
    enabled: Cell<bool>,
    /// The last seq of this node's log that is committed (None until first read from disk).
    committed: Cell<Option<u64>>,
    /// Entries appended by the current transaction, published to the in-memory tail only once
    /// it commits (see `Store::tail_after`).
    pending: RefCell<Vec<(u64, TailBody)>>,
}

impl LogState {
    /// How many entries the current transaction has appended so far.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Forgets entries appended after `len` (their savepoint was rolled back).
    pub(crate) fn truncate_pending(&self, len: usize) {
        self.pending.borrow_mut().truncate(len);
    }

    /// Takes the entries of the transaction that just ended; `committed` says whether it did.
    pub(crate) fn take_pending(&self, committed: bool) -> Vec<(u64, TailBody)> {
        let taken = std::mem::take(&mut *self.pending.borrow_mut());
        if !committed {
            return Vec::new();
        }
        if let Some(last) = taken.last() {
            self.committed.set(Some(last.0));
        }
        taken
    }

    /// The seq the next appended entry gets: committed head + entries pending in this
    /// transaction.
    fn next_seq(&self, conn: &Connection) -> Result<u64> {
        let committed = match self.committed.get() {
            Some(c) => c,
            None => {
                let c = head(conn)?;
                self.committed.set(Some(c));
                c
            }
        };
        Ok(committed + self.pending_len() as u64 + 1)
    }
}

/// Switches logging on (a node with a mesh) or off. Run as a store job.
/// Switching on after a period without a mesh first logs the whole current state, so peers get
/// everything that happened meanwhile (they apply it idempotently). Which messages that period
/// stored is marked by position, not by node id: a node hosted by a command from config.toml
/// alone runs under the host name, and every message stored while nothing was logged was
/// accepted here (without a mesh nothing is applied from peers).
pub fn configure(tx: &Tx<'_>, origin: &str, meshed: bool) -> Result<()> {
    let meta = |key: &str| -> Result<Option<String>> {
        Ok(tx
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    };
    let complete = meta("log_complete")?.unwrap_or_else(|| "1".into());
    if !meshed {
        tx.log().enabled.set(false);
        if complete != "0" {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('log_complete', '0'), \
                 ('unlogged_after', (SELECT coalesce(max(seq), 0) FROM messages))",
                [],
            )?;
        }
        return Ok(());
    }
    tx.log().enabled.set(true);
    if complete == "0" {
        // Without the mark (a store left un-meshed by an older version) every message is
        // logged again; peers store each once.
        let after = meta("unlogged_after")?.and_then(|v| v.parse::<i64>().ok());
        crate::store::apply::backfill(tx, origin, after.unwrap_or(0))?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('log_complete', '1')",
            [],
        )?;
        tx.execute("DELETE FROM meta WHERE key = 'unlogged_after'", [])?;
    }
    Ok(())
}

/// Appends a change to this node's log (inside the caller's transaction). Only the node's own
/// changes are logged, always under its one node id.
pub fn append(tx: &Tx<'_>, origin: &str, body: &EventBody) -> Result<()> {
    let log = tx.log();
    if !log.enabled.get() {
        return Ok(());
    }
    let payload = serde_json::to_string(body).unwrap_or_default();
    let seq = log.next_seq(tx)?;
    tx.prepare_cached("INSERT INTO events (seq, origin, payload) VALUES (?2, ?1, ?3)")?
        .execute(params![origin, seq as i64, payload])?;
    log.pending
        .borrow_mut()
        .push((seq, TailBody::Json(Arc::from(payload))));
    Ok(())
}

/// Appends a message to this node's log. The row stores only a reference — the message itself
/// is already in `messages` and `inbox`, and writing it twice cost a quarter of the throughput
/// — while the in-memory tail keeps the full entry that peers are sent.
pub fn append_message(
    tx: &Tx<'_>,
    origin: &str,
    m: impl FnOnce() -> ReplicatedMessage,
    id: &str,
) -> Result<()> {
    let log = tx.log();
    if !log.enabled.get() {
        return Ok(());
    }
    let payload = message_ref(id);
    let seq = log.next_seq(tx)?;
    tx.prepare_cached("INSERT INTO events (seq, origin, payload) VALUES (?2, ?1, ?3)")?
        .execute(params![origin, seq as i64, payload])?;
    log.pending
        .borrow_mut()
        .push((seq, TailBody::Message(Arc::new(m()))));
    Ok(())
}

/// Records a local change in this node's log; a change that came from a peer (`log_as` is
/// `None`) is in that peer's log already.
pub(crate) fn log_local(
    tx: &Tx<'_>,
    log_as: LogAs<'_>,
    body: impl FnOnce() -> EventBody,
) -> Result<()> {
    match log_as {
        Some(origin) => append(tx, origin, &body()),
        None => Ok(()),
    }
}

/// Logs a local change to a stamped row, with a new stamp; a peer's change (`log_as` is
/// `None`) had its stamp checked and recorded by the caller.
pub(crate) fn log_stamped(
    tx: &Tx<'_>,
    log_as: LogAs<'_>,
    row: Stamped<'_>,
    now: i64,
    body: impl FnOnce(Stamp) -> EventBody,
) -> Result<()> {
    match log_as {
        Some(origin) => {
            let stamp = stamps::stamp_local(tx, row, origin, now)?;
            append(tx, origin, &body(stamp))
        }
        None => Ok(()),
    }
}

/// The stored form of a message entry.
const MESSAGE_REF: &str = "message_ref";

/// Rebuilds a message entry from the store.
pub(crate) fn load_message(conn: &Connection, id: &str) -> Result<Option<ReplicatedMessage>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?1"
        ))?
        .query_row([id], message_row)
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

/// This data dir's log after `after`, oldest first. The log is only ever this data dir's own,
/// whatever node ids it ran under: a node renamed (say, to end a node-id conflict) still ships
/// everything it logged before, since peers follow its instance, not its node id.
pub fn events_after(conn: &Connection, mut after: u64, limit: u32) -> Result<Vec<Event>> {
    loop {
        let (events, read) = events_in(conn, after, limit)?;
        // A page of nothing but pruned messages is no end of the log: look further.
        match read {
            Some(last) if events.is_empty() => after = last,
            _ => return Ok(events),
        }
    }
}

/// Like [`events_after`], unless compaction has deleted entries after `after`: then `None`,
/// and the peer is to be sent a snapshot (`store::snapshot`) — entries with a hole before
/// them would be applied as if nothing were missing.
pub fn events_after_kept(conn: &Connection, after: u64, limit: u32) -> Result<Option<Vec<Event>>> {
    if after < crate::store::compact::floor(conn)? {
        return Ok(None);
    }
    events_after(conn, after, limit).map(Some)
}

/// One page of the log after `after`, and the last seq it read when the page was full.
fn events_in(conn: &Connection, after: u64, limit: u32) -> Result<(Vec<Event>, Option<u64>)> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt
        .query_map(params![after as i64, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let read = (rows.len() as u32 == limit)
        .then(|| rows.last().map(|r| r.0 as u64))
        .flatten();
    let mut events = Vec::with_capacity(rows.len());
    for (seq, p) in rows {
        match decode(conn, &p)? {
            Decoded::Body(body) => events.push(Event {
                seq: seq as u64,
                body: *body,
            }),
            // Retention deleted it here; a peer that has not had it by now goes without (it
            // was past this node's retention), and the entries after it still flow.
            Decoded::MissingMessage(id) => {
                tracing::debug!(seq, %id, "a logged message was pruned");
            }
            Decoded::Unreadable(e) => {
                tracing::error!(seq, error = %e, "unreadable replication log entry");
                return Ok((events, None));
            }
        }
    }
    Ok((events, read))
}

/// The stored form of a message entry: a reference to the message.
pub(crate) fn message_ref(id: &str) -> String {
    format!("{{\"event\":\"{MESSAGE_REF}\",\"id\":\"{id}\"}}")
}

/// What a stored log payload holds.
pub(crate) enum Decoded {
    /// The entry, a message loaded from the store.
    Body(Box<EventBody>),
    /// A message entry whose message is not in the store (by its id).
    MissingMessage(String),
    /// Not an entry this version can read.
    Unreadable(serde_json::Error),
}

/// Reads a stored payload (this node's log or an entry it relays).
pub(crate) fn decode(conn: &Connection, payload: &str) -> Result<Decoded> {
    if let Ok(r) = serde_json::from_str::<StoredRef>(payload)
        && r.event == MESSAGE_REF
    {
        return Ok(match load_message(conn, &r.id)? {
            Some(m) => Decoded::Body(Box::new(EventBody::Message(m))),
            None => Decoded::MissingMessage(r.id),
        });
    }
    Ok(match serde_json::from_str(payload) {
        Ok(body) => Decoded::Body(Box::new(body)),
        Err(e) => Decoded::Unreadable(e),
    })
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
