//! A WebSocket client of a node, shared by `switchboard mcp`, the CLI and `bench`.
//!
//! One background task ([`connection`]) owns the socket. Callers send requests through a
//! bounded channel and await their answer by `req` number, so many requests can be in flight
//! at once; when the connection drops the task reconnects (first retry well under 250 ms) and
//! re-sends what was never answered. A caller waits at most `request_timeout` (including any
//! reconnecting) and then gets a clear error.
//!
//! A request over the node's frame limit (`welcome.max_frame_bytes`) is refused here, before it
//! is sent: the node would close the connection on it, and re-sending it after the reconnect
//! would only repeat that, as fast as the node accepts connections.

mod connection;
mod options;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::protocol::*;
use connection::{Cmd, fatal, open, run};
pub use options::{ClientOptions, ConnState, UnreachableHook};

/// A connection to a node that survives node restarts.
pub struct Client {
    cmds: mpsc::Sender<Cmd>,
    /// Monotonic, so one client's messages are ordered by id even within a millisecond.
    ids: std::sync::Mutex<ulid::Generator>,
    next_req: AtomicU64,
    pushes: broadcast::Sender<Message>,
    state: watch::Receiver<ConnState>,
    opts: ClientOptions,
    /// The node's frame limit, from the latest welcome (a restarted node may change it).
    max_frame: Arc<AtomicUsize>,
    /// The name as the node's directory spells it, from the first welcome.
    welcomed_as: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A typed answer: the result carried by the one server frame that answers its request.
trait Answer: Sized {
    /// The result, or the frame back when it is some other answer.
    fn from_frame(frame: ServerFrame) -> std::result::Result<Self, Box<ServerFrame>>;
}

macro_rules! answers {
    ($($result:ty => $variant:ident),* $(,)?) => {$(
        impl Answer for $result {
            fn from_frame(frame: ServerFrame) -> std::result::Result<Self, Box<ServerFrame>> {
                match frame {
                    ServerFrame::$variant { result, .. } => Ok(result),
                    other => Err(Box::new(other)),
                }
            }
        }
    )*};
}

answers!(
    SendResult => Sent,
    InboxResult => Inbox,
    MarkResult => Marked,
    PresenceResult => Presence,
    PresenceEntry => Status,
    TopicsResult => Topics,
    MessagesResult => Messages,
    TokenResult => Tokens,
    ForgetResult => Forgotten,
    MeshForgetResult => MeshForgot,
    PruneResult => Pruned,
);

impl Client {
    /// Connects (retrying, and running the unreachable hook, until `connect_timeout`) and starts
    /// the background task.
    pub async fn connect(opts: ClientOptions) -> Result<Client> {
        let deadline = tokio::time::Instant::now() + opts.connect_timeout;
        let backoff = opts.backoff();
        let mut attempt = 0;
        let (ws, welcome) = loop {
            match open(&opts).await {
                Ok(ok) => break ok,
                Err(e) if fatal(&e) => return Err(e),
                Err(e) => {
                    if let Some(hook) = &opts.on_unreachable {
                        hook().await;
                    }
                    let pause = backoff.delay(attempt);
                    attempt += 1;
                    // Try again at once after the hook (it may have started a node), even if
                    // starting it took past the deadline on a loaded machine.
                    if opts.on_unreachable.is_some() && attempt == 1 {
                        continue;
                    }
                    if tokio::time::Instant::now() + pause > deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        };
        let (cmds, rx) = mpsc::channel(1024);
        let (pushes, _) = broadcast::channel(1024);
        let (state_tx, state) = watch::channel(ConnState::Connected(welcome.node.clone()));
        let max_frame = Arc::new(AtomicUsize::new(welcome.max_frame_bytes));
        let task = tokio::spawn(run(
            opts.clone(),
            ws,
            rx,
            pushes.clone(),
            state_tx,
            max_frame.clone(),
        ));
        Ok(Client {
            cmds,
            ids: std::sync::Mutex::new(ulid::Generator::new()),
            next_req: AtomicU64::new(1),
            pushes,
            state,
            opts,
            max_frame,
            welcomed_as: welcome.agent,
            task,
        })
    }

    /// The agent this client acts as.
    pub fn agent(&self) -> &str {
        &self.opts.agent
    }

    /// The agent as the node spells it (`BOB` connecting acts as an existing `bob`).
    pub fn welcomed_as(&self) -> &str {
        &self.welcomed_as
    }

    /// The largest frame the node accepts, in bytes (from its latest welcome).
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame.load(Ordering::Relaxed)
    }

    /// Messages pushed by the node as they arrive (already acknowledged to the node).
    pub fn pushes(&self) -> broadcast::Receiver<Message> {
        self.pushes.subscribe()
    }

    /// Connection state changes.
    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.state.clone()
    }

    /// Sends a request frame and waits for its answer.
    pub async fn call(&self, build: impl FnOnce(u64) -> ClientFrame) -> Result<ServerFrame> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let frame =
            serde_json::to_string(&build(req)).map_err(|e| Error::Invalid(e.to_string()))?;
        let max = self.max_frame_bytes();
        if frame.len() > max {
            return Err(too_large(frame.len(), max));
        }
        let (reply, rx) = oneshot::channel();
        let wait = async {
            self.cmds
                .send(Cmd::Request { req, frame, reply })
                .await
                .map_err(|_| Error::Connection("the client has stopped".into()))?;
            rx.await
                .map_err(|_| Error::Connection("the connection to the node was lost".into()))?
        };
        match tokio::time::timeout(self.opts.request_timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(match &*self.state.borrow() {
                ConnState::Disconnected(why) => Error::Connection(format!(
                    "the switchboard node at {} is unreachable ({why}); still retrying in the background",
                    self.opts.url
                )),
                ConnState::Connected(_) => Error::Connection(format!(
                    "the node did not answer within {} s",
                    self.opts.request_timeout.as_secs()
                )),
            }),
        }
    }

    /// [`Client::call`], expecting the answer that carries a `T`.
    async fn ask<T: Answer>(&self, build: impl FnOnce(u64) -> ClientFrame) -> Result<T> {
        T::from_frame(self.call(build).await?).map_err(|frame| {
            Error::Connection(format!("unexpected answer from the node: {frame:?}"))
        })
    }

    /// Sends a message; a missing id is filled in so retries cannot duplicate it.
    pub async fn send(&self, mut req: SendRequest) -> Result<SendResult> {
        if req.id.is_none() {
            let id = self
                .ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .generate()
                .unwrap_or_else(|_| ulid::Ulid::new());
            req.id = Some(id.to_string());
        }
        self.ask(|req_n| ClientFrame::Send(SendRequest { req: req_n, ..req }))
            .await
    }

    /// Reads the inbox (the node marks read only if `mark_read` is set).
    pub async fn inbox(&self, q: InboxRequest) -> Result<InboxResult> {
        self.ask(|req| ClientFrame::Inbox(InboxRequest { req, ..q }))
            .await
    }

    /// Marks messages read (`all` marks the whole inbox).
    pub async fn mark_read(&self, ids: Vec<String>, all: bool) -> Result<MarkResult> {
        self.ask(|req| ClientFrame::MarkRead(MarkReadRequest { req, ids, all }))
            .await
    }

    /// Presence of everyone, or of one agent.
    pub async fn presence(&self, agent: Option<String>) -> Result<PresenceResult> {
        self.ask(|req| ClientFrame::Presence(PresenceRequest { req, agent }))
            .await
    }

    /// Sets this agent's status.
    pub async fn set_status(&self, status: Status, text: Option<String>) -> Result<PresenceEntry> {
        self.ask(|req| ClientFrame::SetStatus(SetStatusRequest { req, status, text }))
            .await
    }

    /// Subscribes (`on`) or unsubscribes; returns the topics afterwards.
    pub async fn subscribe(&self, topic: String, on: bool) -> Result<TopicsResult> {
        self.ask(|req| {
            let t = TopicRequest { req, topic };
            if on {
                ClientFrame::Subscribe(t)
            } else {
                ClientFrame::Unsubscribe(t)
            }
        })
        .await
    }

    /// The thread of a message.
    pub async fn thread(&self, id: String) -> Result<MessagesResult> {
        self.ask(|req| ClientFrame::Thread(ThreadRequest { req, id }))
            .await
    }

    /// Full-text search.
    pub async fn search(&self, query: String, limit: u32) -> Result<MessagesResult> {
        self.ask(|req| ClientFrame::Search(SearchRequest { req, query, limit }))
            .await
    }

    /// Token management (needs the local secret).
    pub async fn token(&self, action: TokenAction, name: Option<String>) -> Result<TokenResult> {
        self.ask(|req| {
            ClientFrame::Token(TokenRequest {
                req,
                action,
                name,
                operator: false,
            })
        })
        .await
    }

    /// Issues an operator token for `name`: an agent token that also logs in to the web
    /// dashboard (needs the local secret).
    pub async fn operator_token(&self, name: String) -> Result<TokenResult> {
        self.ask(|req| {
            ClientFrame::Token(TokenRequest {
                req,
                action: TokenAction::Issue,
                name: Some(name),
                operator: true,
            })
        })
        .await
    }

    /// Forgets an agent that has no session open (local secret only).
    pub async fn forget(&self, name: String) -> Result<ForgetResult> {
        self.ask(|req| ClientFrame::Forget(ForgetRequest { req, name }))
            .await
    }

    /// Drops a departed peer node from the node's mesh (needs the local secret).
    pub async fn mesh_forget(&self, node: String) -> Result<MeshForgetResult> {
        self.ask(|req| ClientFrame::MeshForget(MeshForgetRequest { req, node }))
            .await
    }

    /// Deletes (or counts, `dry_run`) what the node's retention deletes now (needs the local
    /// secret).
    pub async fn prune(&self, dry_run: bool) -> Result<PruneResult> {
        self.ask(|req| ClientFrame::Prune(PruneRequest { req, dry_run }))
            .await
    }
}

/// The refusal of a request over the node's frame limit; nothing of it was sent.
pub(crate) fn too_large(len: usize, max: usize) -> Error {
    Error::Remote {
        code: ErrorCode::FrameTooLarge,
        message: format!(
            "the request is {len} bytes, over the node's limit of {max} bytes (max_frame_bytes); \
             shorten the body or split it. Nothing was sent."
        ),
    }
}
