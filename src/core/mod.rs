//! The core of a node: what it knows and every decision it makes, apart from the network.
//!
//! The edges (`node/` for clients, `mesh/` for peers) decode frames and call the [`Router`];
//! the router validates, consults the in-memory directory, goes to the [`Store`] for anything
//! durable, and pushes serialized [`Frame`]s into sessions' bounded queues. It uses no HTTP or
//! WebSocket type, so the same core serves any transport. Jobs, one file each:
//!
//! - [`directory`]: agents, their live sessions, remote presence, topics (memory only);
//! - [`presence`]: joining, leaving, status, subscriptions, and presence from peers;
//! - [`send`]: a send from validation to its `sent` answer, and pushes of peers' messages;
//! - [`acks`]: waiting for the first ack, which makes a send `delivered`;
//! - [`reads`]: inbox, read marks, threads, search and tokens;
//! - [`forget`]: forgetting an agent that is gone for good;
//! - [`retention`]: when old messages are deleted, and probing a store that cannot write;
//! - [`rate`], [`suggest`], [`metrics`]: the rate limit, "did you mean", counters.

pub mod acks;
pub mod directory;
pub mod forget;
pub mod metrics;
pub mod presence;
pub mod rate;
pub mod reads;
pub mod retention;
pub mod send;
pub mod suggest;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::task::TaskTracker;

use crate::auth;
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::message::{now_ms, validate_name};
use crate::protocol::{ErrorCode, Hello, PROTOCOL_VERSION, ServerFrame};
use crate::store::{Store, queries};

pub use acks::ACK_WAIT;
pub use directory::{RemoteAgent, SessionTx};
pub use metrics::Metrics;
pub use send::{DeliveryNotice, SendQueue};

/// A serialized server frame. Cloning it for every session it is pushed to shares the bytes.
#[derive(Debug, Clone)]
pub struct Frame {
    text: bytes::Bytes,
    /// The message a `msg` frame pushes, so a session can drop a push of mail it has just
    /// replayed.
    message: Option<std::sync::Arc<str>>,
}

impl Frame {
    /// Serializes a frame (our own frames always serialize; `{}` would still be valid JSON).
    pub fn encode(frame: &ServerFrame) -> Frame {
        let message = match frame {
            ServerFrame::Msg { message } => Some(message.id.as_str().into()),
            _ => None,
        };
        Frame {
            text: to_bytes(frame, 256),
            message,
        }
    }

    /// The `msg` frame that pushes `message`, serialized from the borrow (the same text as
    /// `encode` of [`ServerFrame::Msg`], without a copy of the message first).
    pub fn msg(message: &crate::message::Message) -> Frame {
        #[derive(serde::Serialize)]
        #[serde(tag = "op", rename = "msg")]
        struct Msg<'a> {
            message: &'a crate::message::Message,
        }
        // The fixed fields come to about 250 bytes; the rest is the sender's text.
        let room = 320
            + message.body.len()
            + message.subject.as_ref().map_or(0, String::len)
            + message.data.as_ref().map_or(0, |_| 256);
        Frame {
            text: to_bytes(&Msg { message }, room),
            message: Some(message.id.as_str().into()),
        }
    }

    /// The id of the message this frame pushes, if it is a push.
    pub fn message_id(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The UTF-8 text of the frame.
    pub fn into_bytes(self) -> bytes::Bytes {
        self.text
    }
}

/// JSON into a buffer made big enough up front: grown step by step from empty, the buffer was
/// reallocated five or six times per frame (a tenth of the frame's cost).
fn to_bytes(value: &impl serde::Serialize, room: usize) -> bytes::Bytes {
    let mut text = Vec::with_capacity(room);
    if serde_json::to_writer(&mut text, value).is_err() {
        text = b"{}".to_vec();
    }
    text.into()
}

/// The error frame a client gets for `e`; failures of the node itself are logged here, with
/// what the client is not told.
pub fn error_frame(req: Option<u64>, e: &Error) -> ServerFrame {
    // A full or failing disk is logged once by the store, not once per refused request.
    if matches!(e, Error::Store(_) | Error::Io { .. }) && crate::store::fault::fault_in(e).is_none()
    {
        tracing::warn!(error = %e, "a request failed inside the node");
    }
    ServerFrame::error(req, e.code(), e.client_message())
}

/// What a node knows and decides; shared by every connection and peer link.
pub struct Router {
    /// This node's id.
    pub node_id: String,
    /// The durable store.
    pub store: Store,
    /// Limits in force.
    pub limits: Limits,
    /// Counters.
    pub metrics: Metrics,
    /// This run of the node; a restarted node's presence replaces its stale entries at peers.
    pub incarnation: u64,
    secret: String,
    started: Instant,
    /// Owns the core's own tasks (send completers, delayed writes) for an orderly shutdown.
    tracker: TaskTracker,
    directory: Mutex<directory::Directory>,
    acks: std::sync::Arc<acks::Acks>,
    notices: send::Notices,
    rate: Mutex<rate::RateLimiter>,
    /// Bumped whenever local presence changes, so links send a fresh snapshot at once.
    presence_version: tokio::sync::watch::Sender<u64>,
    ids: Mutex<ulid::Generator>,
    next_session: AtomicU64,
}

impl Router {
    /// Builds the core from what the store remembers.
    pub async fn load(
        node_id: String,
        store: Store,
        limits: Limits,
        secret: String,
        tracker: TaskTracker,
    ) -> Result<Router> {
        let (rows, subs) = store
            .read(|c| Ok((queries::agents(c)?, queries::subscriptions(c)?)))
            .await?;
        let acks = std::sync::Arc::new(acks::Acks::default());
        // Ends with `close_all`, before the node waits for its tasks.
        tracker.spawn(acks.clone().expire());
        Ok(Router {
            node_id,
            store,
            rate: Mutex::new(rate::RateLimiter::new(
                limits.send_per_second,
                limits.send_burst,
            )),
            limits,
            metrics: Metrics::default(),
            incarnation: u64::try_from(now_ms()).unwrap_or_default(),
            secret,
            started: Instant::now(),
            tracker,
            directory: Mutex::new(directory::Directory::load(rows, subs)),
            acks,
            notices: send::Notices::new(),
            presence_version: tokio::sync::watch::channel(0).0,
            ids: Mutex::new(ulid::Generator::new()),
            next_session: AtomicU64::new(1),
        })
    }

    /// Time since the node started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Checks a hello. Returns whether the connection holds the local secret (may act as anyone
    /// and manage tokens).
    pub async fn authenticate(&self, hello: &Hello, header_token: Option<&str>) -> Result<bool> {
        if hello.v != PROTOCOL_VERSION {
            return Err(Error::refused(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this node speaks v1",
                    hello.v
                ),
            ));
        }
        validate_name(&hello.agent)
            .map_err(|e| Error::refused(ErrorCode::InvalidArgument, format!("agent name {e}")))?;
        let Some(token) = hello.token.as_deref().or(header_token) else {
            return Err(Error::refused(
                ErrorCode::Unauthorized,
                "no token: put the local secret or an agent token in hello.token or an Authorization: Bearer header",
            ));
        };
        if auth::constant_time_eq(token, &self.secret) {
            return Ok(true);
        }
        let hash = auth::hash_token(token);
        let owner = self
            .store
            .read(move |c| queries::token_owner(c, &hash))
            .await?;
        match owner {
            // Names are one name in any case: a token of `bob` is the token of `BOB`.
            Some(name) if directory::fold(&name) == directory::fold(&hello.agent) => Ok(false),
            Some(_) => Err(Error::refused(
                ErrorCode::Unauthorized,
                format!("this token is not valid for agent '{}'", hello.agent),
            )),
            None => Err(Error::refused(ErrorCode::Unauthorized, "invalid token")),
        }
    }

    /// Counts for `/health`: (agents online, sessions).
    pub fn counts(&self) -> (usize, usize) {
        let d = self.directory.lock();
        let online = d.all().filter(|a| a.online()).count();
        let sessions = d.all().map(|a| a.sessions.len()).sum();
        (online, sessions)
    }

    /// Cuts every session off; each says goodbye (`bye`) as it closes. Sends waiting for an
    /// ack answer at once (`queued`: stored, and the recipients' sessions are closing).
    pub fn close_all(&self) {
        self.acks.close();
        let d = self.directory.lock();
        for s in d.all().flat_map(|a| &a.sessions) {
            s.kill.cancel();
        }
    }

    /// Waits for everything queued to the store before this point to commit (graceful
    /// shutdown).
    pub async fn flush(&self) -> Result<()> {
        self.store.write(|_| Ok(())).await
    }
}
