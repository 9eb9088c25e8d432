//! What a node answers with: the result payloads of the wire frames, which are also what the
//! MCP tools return.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, Status};

/// How far a sent message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// A session of a recipient has confirmed it holds the message.
    Delivered,
    /// Stored durably; no recipient session has confirmed it yet.
    Queued,
    /// Published to a topic's subscribers.
    Published,
}

/// Result of sending a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SendResult {
    /// The message id.
    pub id: String,
    /// `delivered`, `queued` or `published`.
    pub status: DeliveryStatus,
    /// How many inboxes it went to.
    pub recipients: u32,
    /// The thread it belongs to.
    pub thread_id: String,
}

/// Messages from an inbox.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InboxResult {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Unread messages not returned by this call.
    pub unread_remaining: u32,
}

/// Result of marking messages read.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MarkResult {
    /// Messages newly marked read.
    pub marked: u32,
}

/// Everyone known.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PresenceResult {
    /// One entry per known agent.
    pub agents: Vec<PresenceEntry>,
}

/// One agent's presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresenceEntry {
    /// Agent name.
    pub name: String,
    /// Has an open session now.
    pub online: bool,
    /// Node the agent is (or was last) connected to.
    pub node: String,
    /// New status.
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Free text with the status.
    pub status_text: Option<String>,
    /// RFC 3339; now, while online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// RFC 3339; while online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_since: Option<String>,
}

/// An agent's topic subscriptions.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TopicsResult {
    /// Topic names, without `#`.
    pub topics: Vec<String>,
}

/// A list of messages (thread or search results).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessagesResult {
    /// The messages.
    pub messages: Vec<Message>,
}

/// Result of a token operation.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TokenResult {
    /// The new token (`issue` only); shown once, stored hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Agents holding tokens (`list`), or the one changed.
    pub names: Vec<String>,
}

/// Result of forgetting an agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ForgetResult {
    /// The agent forgotten, as the directory spelled it.
    pub name: String,
    /// Unread messages its inbox held, now gone (their senders' threads keep them).
    pub unread_dropped: u64,
}

/// What `mesh_forget` dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MeshForgetResult {
    /// The node dropped.
    pub node: String,
    /// It had a live link, which is closed now (a node still running links again).
    pub was_linked: bool,
    /// A configured `--peer` URL led to it: that URL is not dialed until the node links
    /// again or this node restarts.
    pub configured: bool,
    /// Its node id was bound to an instance (data dir) here and is free now: the next data
    /// dir to link under it holds it.
    pub released: bool,
}

/// What `prune` deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PruneResult {
    /// Nothing was deleted: these are the counts of what would go.
    pub dry_run: bool,
    /// Messages.
    pub messages: u64,
    /// Their inbox rows (one per recipient).
    pub inbox_rows: u64,
    /// The bytes of their subjects, bodies and data.
    pub bytes: u64,
    /// The store's files (database + WAL) on disk before.
    pub store_bytes_before: u64,
    /// And after (the same in a dry run).
    pub store_bytes_after: u64,
    /// The retention in force: read messages go this many seconds after their last read
    /// (none: kept).
    pub retain_read_seconds: Option<u64>,
    /// Unread messages go this many seconds after they were sent (none: kept).
    pub retain_unread_seconds: Option<u64>,
}
