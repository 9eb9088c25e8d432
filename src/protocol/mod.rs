//! The wire protocol: JSON text frames over WebSocket, each an object with an `op`.
//!
//! Requests carry a client-chosen `req` number that the answer echoes, so a client may pipeline
//! many requests on one socket. The result payloads are the same structs the MCP tools return,
//! so the two faces of switchboard cannot drift apart. `docs/PROTOCOL.md` is the prose version;
//! `schemas/wire.schema.json` is generated from these types.

pub use crate::message::Status;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Message, MessageType, Priority};

mod parse;
mod results;

/// The protocol version this build speaks; `hello.v` must equal it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Frames a client (agent, CLI, script) sends to a node.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Must be the first frame: who this connection acts as, and the proof.
    Hello(Hello),
    /// Send a message; answered by `sent` once it is durable.
    Send(SendRequest),
    /// Read the inbox; answered by `inbox`.
    Inbox(InboxRequest),
    /// Mark messages read; answered by `marked`.
    MarkRead(MarkReadRequest),
    /// Who is known and who is online; answered by `presence`.
    Presence(PresenceRequest),
    /// Change this agent's status; answered by `status`.
    SetStatus(SetStatusRequest),
    /// Subscribe to a topic; answered by `topics`.
    Subscribe(TopicRequest),
    /// Unsubscribe from a topic; answered by `topics`.
    Unsubscribe(TopicRequest),
    /// A whole thread; answered by `thread`.
    Thread(ThreadRequest),
    /// Full-text search; answered by `search`.
    Search(SearchRequest),
    /// Confirms that this connection holds pushed messages: what makes a send `delivered`.
    Ack(AckFrame),
    /// Token management (local-secret connections only); answered by `tokens`.
    Token(TokenRequest),
    /// Forget an offline agent (local-secret connections only); answered by `forgotten`.
    Forget(ForgetRequest),
    /// Drop a departed peer node now instead of dialing it for an hour (local-secret
    /// connections only); answered by `mesh_forgot`.
    MeshForget(MeshForgetRequest),
    /// Delete (or, with `dry_run`, count) what retention deletes now (local-secret
    /// connections only); answered by `pruned`.
    Prune(PruneRequest),
    /// Application-level liveness check; answered by `pong`.
    Ping(Ping),
}

/// The first frame of every client connection.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The agent name this connection acts as.
    pub agent: String,
    /// The local secret or a token issued for `agent`; may instead come in an
    /// `Authorization: Bearer` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Protocol version; must be 1.
    pub v: u32,
    /// What the connection is for; `agent` unless said otherwise.
    #[serde(default)]
    pub role: Role,
}

/// Why a connection is open, which decides whether it counts as the agent being present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The agent itself: shown online, gets every new message pushed, and its acks make a send
    /// `delivered`.
    #[default]
    Agent,
    /// A watcher (e.g. `switchboard tail`): gets pushes but is not presence and does not make a
    /// send `delivered`.
    Watch,
    /// A one-shot command (e.g. `switchboard send`): requests only.
    Cli,
}

/// Send a message. `from` is never a field: it is the connection's authenticated agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Correlates the answer.
    pub req: u64,
    /// Optional client-chosen ULID; retrying a send with the same id never duplicates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Agent name, `#topic`, or `*`.
    pub to: String,
    /// The text.
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Optional one-line subject.
    pub subject: Option<String>,
    #[serde(default, rename = "type")]
    /// Kind of message.
    pub kind: MessageType,
    #[serde(default)]
    /// How urgent.
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The message this answers.
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Optional structured payload.
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Read the inbox. Unlike the MCP tool, the wire `inbox` never marks anything read by default:
/// peeking must be free. Clients mark with `mark_read` after they have shown the messages.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    #[serde(default = "yes")]
    /// Only unread messages.
    pub unread_only: bool,
    #[serde(default = "default_limit")]
    /// At most this many (1-200).
    pub limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Only from this sender.
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Only this topic.
    pub topic: Option<String>,
    /// Mark the returned messages read in the same transaction.
    #[serde(default)]
    pub mark_read: bool,
}

impl InboxRequest {
    /// Up to `limit` unread messages, oldest first, left unread: the usual peek.
    pub fn unread(limit: u32) -> Self {
        InboxRequest {
            req: 0,
            unread_only: true,
            limit,
            from: None,
            topic: None,
            mark_read: false,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_limit() -> u32 {
    20
}

/// Mark messages read: either `ids` or `all`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkReadRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Message ids.
    pub ids: Vec<String>,
    #[serde(default)]
    /// Every message.
    pub all: bool,
}

/// Presence, optionally of one agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Agent name.
    pub agent: Option<String>,
}

/// Set this agent's status.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStatusRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    /// New status.
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Status text, at most 200 characters.
    pub text: Option<String>,
}

/// Subscribe to or unsubscribe from a topic (`#` prefix optional).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    /// Only this topic.
    pub topic: String,
}

/// The thread of any message.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThreadRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    /// A message id.
    pub id: String,
}

/// Full-text search over what this agent may read.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    /// Words to find.
    pub query: String,
    #[serde(default = "default_limit")]
    /// At most this many (1-200).
    pub limit: u32,
}

/// Acknowledges pushed messages by id.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AckFrame {
    /// Message ids.
    pub ids: Vec<String>,
}

/// Token management.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    /// What to do.
    pub action: TokenAction,
    /// The agent the token is for (`issue`, `revoke`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `issue`: an operator token, which also logs in to the web dashboard as `name`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operator: bool,
}

/// `switchboard mesh forget NODE`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshForgetRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    /// The node id to drop.
    pub node: String,
}

/// `switchboard prune [--dry-run]`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    /// Only count what would go.
    #[serde(default)]
    pub dry_run: bool,
}

/// What to do with tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenAction {
    /// Create a token bound to `name` (replacing any earlier one).
    Issue,
    /// Remove `name`'s token.
    Revoke,
    /// List agents holding tokens.
    List,
}

/// Forgetting an agent: its directory entry, token, subscriptions and inbox.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest {
    /// Correlates the answer with this request.
    pub req: u64,
    /// The agent to forget (it must have no session open anywhere).
    pub name: String,
}

/// A liveness probe.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ping {
    /// Correlates the answer with this request.
    pub req: u64,
}

/// Frames a node sends to a client.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to `hello`: the connection is authenticated.
    Welcome(Welcome),
    /// A message pushed as it arrives (and, right after `welcome`, every unread one). Answer with
    /// `ack`.
    Msg {
        /// The message.
        message: Message,
    },
    /// Answer to `send`.
    Sent {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: SendResult,
    },
    /// Answer to `inbox`.
    Inbox {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: InboxResult,
    },
    /// Answer to `mark_read`.
    Marked {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: MarkResult,
    },
    /// Answer to `presence`.
    Presence {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: PresenceResult,
    },
    /// Answer to `set_status`.
    Status {
        /// The request this answers.
        req: u64,
        /// The agent's presence entry after the change.
        #[serde(flatten)]
        result: PresenceEntry,
    },
    /// Answer to `subscribe`/`unsubscribe`.
    Topics {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: TopicsResult,
    },
    /// Answer to `thread` and `search`.
    Messages {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: MessagesResult,
    },
    /// Answer to `token`.
    Tokens {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: TokenResult,
    },
    /// Answer to `forget`.
    Forgotten {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: ForgetResult,
    },
    /// Answer to `mesh_forget`.
    MeshForgot {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: MeshForgetResult,
    },
    /// Answer to `prune`.
    Pruned {
        /// The request this answers.
        req: u64,
        /// The result.
        #[serde(flatten)]
        result: PruneResult,
    },
    /// Answer to `ping`.
    Pong {
        /// The request this answers.
        req: u64,
    },
    /// Something was refused. `code` is stable and machine-readable.
    Error(ErrorFrame),
    /// The node is closing this connection (shutdown, or this client was too slow).
    Bye {
        /// Why, for logs.
        reason: String,
    },
}

/// Sent once after a good `hello`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Welcome {
    /// The authenticated agent.
    pub agent: String,
    /// The node's id.
    pub node: String,
    /// Protocol version.
    pub v: u32,
    /// Largest frame the node accepts, in bytes.
    pub max_frame_bytes: usize,
}

/// An error frame. `req` is present when it answers a request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorFrame {
    /// The request this answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<u64>,
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// The stable error codes. Never renamed: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON, not an object, or not a known op with valid fields.
    BadFrame,
    /// The frame is larger than the node's limit.
    FrameTooLarge,
    /// A request came before `hello`.
    NotAuthenticated,
    /// Wrong or missing token, or a token bound to another agent.
    Unauthorized,
    /// No `hello` within the handshake timeout.
    HandshakeTimeout,
    /// `hello.v` is not a version this node speaks.
    UnsupportedVersion,
    /// An argument broke a rule; the message names it.
    InvalidArgument,
    /// The recipient agent is not known; the message suggests close names.
    UnknownAgent,
    /// The topic has no subscribers; the message suggests close names.
    UnknownTopic,
    /// No message with that id is visible to this agent.
    UnknownMessage,
    /// This sender is over its message rate.
    RateLimited,
    /// The operation needs the local secret.
    Forbidden,
    /// The agent has a session open (here or at a peer), so it cannot be forgotten now.
    AgentOnline,
    /// The node is shutting down.
    ShuttingDown,
    /// The node's store is out of disk space: nothing was stored (try again later).
    StorageFull,
    /// The node's store failed: nothing was stored (the node's log has the details).
    StorageError,
    /// The node failed; nothing was changed.
    Internal,
}

impl ErrorCode {
    /// The code's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::UnknownAgent => "unknown_agent",
            ErrorCode::UnknownTopic => "unknown_topic",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AgentOnline => "agent_online",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::Internal => "internal",
        }
    }
}

pub use results::*;

impl ServerFrame {
    /// An error frame answering `req`.
    pub fn error(req: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error(ErrorFrame {
            req,
            code,
            message: message.into(),
        })
    }
}

impl ClientFrame {
    /// The request number, for answering errors about this frame.
    pub fn req(&self) -> Option<u64> {
        match self {
            ClientFrame::Hello(_) | ClientFrame::Ack(_) => None,
            ClientFrame::Send(r) => Some(r.req),
            ClientFrame::Inbox(r) => Some(r.req),
            ClientFrame::MarkRead(r) => Some(r.req),
            ClientFrame::Presence(r) => Some(r.req),
            ClientFrame::SetStatus(r) => Some(r.req),
            ClientFrame::Subscribe(r) | ClientFrame::Unsubscribe(r) => Some(r.req),
            ClientFrame::Thread(r) => Some(r.req),
            ClientFrame::Search(r) => Some(r.req),
            ClientFrame::Token(r) => Some(r.req),
            ClientFrame::Forget(r) => Some(r.req),
            ClientFrame::MeshForget(r) => Some(r.req),
            ClientFrame::Prune(r) => Some(r.req),
            ClientFrame::Ping(r) => Some(r.req),
        }
    }
}
