//! The rows the store hands out and takes in, and the one mapper from a `messages` row to a
//! message: what a client reads and what a peer is sent are the same stored columns, so one
//! mapper keeps them from drifting apart.

use rusqlite::Row;

use crate::message::{Message, MessageType, Priority, Status, rfc3339};

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

impl NewMessage {
    /// The message as a client sees it (`read` as the asking agent sees it).
    pub fn into_message(self, read: bool) -> Message {
        Message {
            id: self.id,
            from: self.sender,
            to: self.target,
            topic: self.topic,
            kind: self.kind,
            priority: self.priority,
            subject: self.subject,
            body: self.body,
            data: self.data,
            reply_to: self.reply_to,
            thread_id: self.thread_id.unwrap_or_default(),
            created_at: rfc3339(self.created_at),
            read,
        }
    }
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

/// The columns [`message_row`] reads, in its order; a query may add more after them.
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.origin, m.sender, m.target, m.topic, m.type, \
     m.priority, m.subject, m.body, m.data, m.reply_to, m.thread_id, m.created_at";

/// The column index right after [`MESSAGE_COLUMNS`] (a query's read flag).
pub(crate) const AFTER_MESSAGE: usize = 13;

/// Maps a row that starts with [`MESSAGE_COLUMNS`]; recipients are not among them.
pub(crate) fn message_row(r: &Row<'_>) -> rusqlite::Result<NewMessage> {
    let kind: String = r.get(5)?;
    let priority: String = r.get(6)?;
    let data: Option<String> = r.get(9)?;
    Ok(NewMessage {
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
}

/// Maps a row of [`MESSAGE_COLUMNS`] followed by the asking agent's read flag.
pub(crate) fn client_message_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    let read: bool = r.get(AFTER_MESSAGE)?;
    Ok(message_row(r)?.into_message(read))
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

/// A stored token: only its hash is kept.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// The agent it is bound to.
    pub name: String,
    /// ms since the epoch.
    pub created_at: i64,
}
