//! A WebSocket client of a node, shared by `switchboard mcp`, the CLI and `bench`.
//!
//! One background task owns the socket. Callers send requests through a bounded channel and
//! await their answer by `req` number, so many requests can be in flight at once. When the
//! connection drops, the task reconnects with exponential backoff and jitter (first retry well
//! under 250 ms) and re-sends every unanswered request: all requests are safe to repeat — a
//! send carries its message id, so the node stores it once however often it arrives. A caller
//! waits at most `request_timeout` (including any reconnecting) and then gets a clear error.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::ws_endpoint;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::protocol::*;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// A hook run when the node cannot be reached, before the next attempt.
pub type UnreachableHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How to reach a node and who to be.
#[derive(Clone)]
pub struct ClientOptions {
    /// `ws://host:port` (the `/ws` path is added when missing).
    pub url: String,
    /// The agent this client acts as.
    pub agent: String,
    /// The local secret or an agent token.
    pub token: String,
    /// What the connection is for.
    pub role: Role,
    /// How long a request may wait for its answer, reconnecting included.
    pub request_timeout: Duration,
    /// How long [`Client::connect`] keeps trying before it gives up.
    pub connect_timeout: Duration,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
    /// Reconnect after the connection drops (false for one-shot commands).
    pub reconnect: bool,
    /// Runs when the node cannot be reached (the embedded default hosts a node here).
    pub on_unreachable: Option<UnreachableHook>,
}

impl ClientOptions {
    /// Options with the defaults: agent role, reconnecting, 10 s requests.
    pub fn new(url: impl Into<String>, agent: impl Into<String>, token: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            agent: agent.into(),
            token: token.into(),
            role: Role::Agent,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_millis(500),
            reconnect: true,
            on_unreachable: None,
        }
    }
}

/// Whether the client is connected now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Connected to the node with this id.
    Connected(String),
    /// Not connected; the text says why.
    Disconnected(String),
}

enum Cmd {
    Request {
        req: u64,
        frame: String,
        reply: oneshot::Sender<Result<ServerFrame>>,
    },
}

/// A connection to a node that survives node restarts.
pub struct Client {
    cmds: mpsc::Sender<Cmd>,
    /// Monotonic, so one client's messages are ordered by id even within a millisecond.
    ids: std::sync::Mutex<ulid::Generator>,
    next_req: AtomicU64,
    pushes: broadcast::Sender<Message>,
    state: watch::Receiver<ConnState>,
    opts: ClientOptions,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Errors that retrying cannot fix.
fn is_fatal(e: &Error) -> bool {
    matches!(
        e,
        Error::Remote {
            code: ErrorCode::Unauthorized
                | ErrorCode::UnsupportedVersion
                | ErrorCode::InvalidArgument
                | ErrorCode::Forbidden,
            ..
        }
    )
}

async fn open(opts: &ClientOptions) -> Result<(Ws, Welcome)> {
    let endpoint = ws_endpoint(&opts.url);
    let request = endpoint
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Connection(format!("bad node URL '{}': {e}", opts.url)))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let unreachable = |e: String| {
        Error::Connection(format!(
            "cannot reach the switchboard node at {}: {e}",
            opts.url
        ))
    };
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .map_err(|_| unreachable("timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let hello = ClientFrame::Hello(Hello {
        agent: opts.agent.clone(),
        token: Some(opts.token.clone()),
        v: PROTOCOL_VERSION,
        role: opts.role,
    });
    let text = serde_json::to_string(&hello).map_err(|e| Error::Connection(e.to_string()))?;
    ws.send(WsMessage::Text(text.into()))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .map_err(|_| unreachable("no answer to hello".into()))?;
        match next {
            Some(Ok(WsMessage::Text(t))) => {
                return match serde_json::from_str::<ServerFrame>(&t) {
                    Ok(ServerFrame::Welcome(w)) => Ok((ws, w)),
                    Ok(ServerFrame::Error(e)) => Err(Error::Remote {
                        code: e.code,
                        message: e.message,
                    }),
                    _ => Err(unreachable("unexpected answer to hello".into())),
                };
            }
            Some(Ok(WsMessage::Close(_))) | None => {
                return Err(unreachable("closed during hello".into()));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(unreachable(e.to_string())),
        }
    }
}

fn backoff(attempt: u32, max: Duration) -> Duration {
    // 100 ms, 200 ms, 400 ms, ... capped, each with ±50% jitter so that many clients of a
    // restarted node do not reconnect in lockstep.
    let base = Duration::from_millis(100).saturating_mul(1u32 << attempt.min(10));
    let base = base.min(max);
    let jitter = rand::rng().random_range(0.5..1.5);
    base.mul_f64(jitter).min(max)
}

impl Client {
    /// Connects (retrying, and running the unreachable hook, until `connect_timeout`) and starts
    /// the background task.
    pub async fn connect(opts: ClientOptions) -> Result<Client> {
        let deadline = tokio::time::Instant::now() + opts.connect_timeout;
        let mut attempt = 0;
        let (ws, welcome) = loop {
            match open(&opts).await {
                Ok(ok) => break ok,
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    if let Some(hook) = &opts.on_unreachable {
                        hook().await;
                    }
                    let pause = backoff(attempt, opts.max_backoff);
                    if tokio::time::Instant::now() + pause > deadline {
                        return Err(e);
                    }
                    attempt += 1;
                    // Try again at once after the hook (it may have started a node).
                    if opts.on_unreachable.is_some() && attempt == 1 {
                        continue;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        };
        let (cmds, rx) = mpsc::channel(1024);
        let (pushes, _) = broadcast::channel(1024);
        let (state_tx, state) = watch::channel(ConnState::Connected(welcome.node.clone()));
        let task = tokio::spawn(run(opts.clone(), ws, rx, pushes.clone(), state_tx));
        Ok(Client {
            cmds,
            ids: std::sync::Mutex::new(ulid::Generator::new()),
            next_req: AtomicU64::new(1),
            pushes,
            state,
            opts,
            task,
        })
    }

    /// The agent this client acts as.
    pub fn agent(&self) -> &str {
        &self.opts.agent
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
        match self
            .call(|n| {
                req.req = n;
                ClientFrame::Send(req)
            })
            .await?
        {
            ServerFrame::Sent { result, .. } => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Reads the inbox (the node marks read only if `mark_read` is set).
    pub async fn inbox(&self, mut q: InboxRequest) -> Result<InboxResult> {
        match self
            .call(|n| {
                q.req = n;
                ClientFrame::Inbox(q)
            })
            .await?
        {
            ServerFrame::Inbox { result, .. } => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Marks messages read (`all` marks the whole inbox).
    pub async fn mark_read(&self, ids: Vec<String>, all: bool) -> Result<MarkResult> {
        match self
            .call(|req| ClientFrame::MarkRead(MarkReadRequest { req, ids, all }))
            .await?
        {
            ServerFrame::Marked { result, .. } => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Presence of everyone, or of one agent.
    pub async fn presence(&self, agent: Option<String>) -> Result<PresenceResult> {
        match self
            .call(|req| ClientFrame::Presence(PresenceRequest { req, agent }))
            .await?
        {
            ServerFrame::Presence { result, .. } => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Sets this agent's status.
    pub async fn set_status(&self, status: Status, text: Option<String>) -> Result<PresenceEntry> {
        match self
            .call(|req| ClientFrame::SetStatus(SetStatusRequest { req, status, text }))
            .await?
        {
            ServerFrame::Status { result, .. } => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Subscribes (`on`) or unsubscribes; returns the topics afterwards.
    pub async fn subscribe(&self, topic: String, on: bool) -> Result<TopicsResult> {
        match self
            .call(|req| {
                let t = TopicRequest { req, topic };
                if on {
                    ClientFrame::Subscribe(t)
                } else {
                    ClientFrame::Unsubscribe(t)
                }
            })
            .await?
        {
            ServerFrame::Topics { result, .. } => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// The thread of a message.
    pub async fn thread(&self, id: String) -> Result<MessagesResult> {
        match self
            .call(|req| ClientFrame::Thread(ThreadRequest { req, id }))
            .await?
        {
            ServerFrame::Messages { result, .. } => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Full-text search.
    pub async fn search(&self, query: String, limit: u32) -> Result<MessagesResult> {
        match self
            .call(|req| ClientFrame::Search(SearchRequest { req, query, limit }))
            .await?
        {
            ServerFrame::Messages { result, .. } => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Token management (needs the local secret).
    pub async fn token(&self, action: TokenAction, name: Option<String>) -> Result<TokenResult> {
        match self
            .call(|req| ClientFrame::Token(TokenRequest { req, action, name }))
            .await?
        {
            ServerFrame::Tokens { result, .. } => Ok(result),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(frame: ServerFrame) -> Error {
    Error::Connection(format!("unexpected answer from the node: {frame:?}"))
}

type Inflight = BTreeMap<u64, (String, oneshot::Sender<Result<ServerFrame>>)>;

/// How long the node may stay silent (it pings every 15 s) before the link counts as dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

enum Ended {
    /// Every `Client` handle is gone.
    Closed,
    /// The connection dropped.
    Lost(String),
}

async fn run(
    opts: ClientOptions,
    mut ws: Ws,
    mut cmds: mpsc::Receiver<Cmd>,
    pushes: broadcast::Sender<Message>,
    state: watch::Sender<ConnState>,
) {
    let mut inflight: Inflight = BTreeMap::new();
    loop {
        let ended = connection(&opts, &mut ws, &mut cmds, &pushes, &mut inflight).await;
        let why = match ended {
            Ended::Closed => return,
            Ended::Lost(why) => why,
        };
        tracing::info!(node = %opts.url, reason = %why, "lost the connection to the node");
        state.send_replace(ConnState::Disconnected(why.clone()));
        if !opts.reconnect {
            for (_, (_, reply)) in std::mem::take(&mut inflight) {
                let _ = reply.send(Err(Error::Connection(format!("connection lost: {why}"))));
            }
            // Keep answering new requests with the same error until dropped.
            while let Some(Cmd::Request { reply, .. }) = cmds.recv().await {
                let _ = reply.send(Err(Error::Connection(format!("connection lost: {why}"))));
            }
            return;
        }
        let mut attempt = 0;
        ws = loop {
            match open(&opts).await {
                Ok((ws, welcome)) => {
                    tracing::info!(node = %welcome.node, "reconnected");
                    state.send_replace(ConnState::Connected(welcome.node));
                    break ws;
                }
                Err(e) => {
                    state.send_replace(ConnState::Disconnected(e.to_string()));
                    if is_fatal(&e) {
                        for (_, (_, reply)) in std::mem::take(&mut inflight) {
                            let _ = reply.send(Err(Error::Connection(e.to_string())));
                        }
                    }
                    if let Some(hook) = &opts.on_unreachable {
                        hook().await;
                        if attempt == 0 {
                            attempt += 1;
                            continue;
                        }
                    }
                    tokio::time::sleep(backoff(attempt, opts.max_backoff)).await;
                    attempt += 1;
                    if cmds.is_closed() {
                        return;
                    }
                }
            }
        };
        // Re-send what was never answered, in the original order; drop what nobody awaits.
        inflight.retain(|_, (_, reply)| !reply.is_closed());
        let mut failed = false;
        for (frame, _) in inflight.values() {
            if ws
                .send(WsMessage::Text(frame.clone().into()))
                .await
                .is_err()
            {
                failed = true;
                break;
            }
        }
        if failed {
            continue;
        }
    }
}

async fn connection(
    opts: &ClientOptions,
    ws: &mut Ws,
    cmds: &mut mpsc::Receiver<Cmd>,
    pushes: &broadcast::Sender<Message>,
    inflight: &mut Inflight,
) -> Ended {
    let mut silence = Box::pin(tokio::time::sleep(SILENCE_LIMIT));
    loop {
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(first) = cmd else {
                    let _ = ws.close(None).await;
                    return Ended::Closed;
                };
                // Send every request already queued, then flush once.
                let mut next = Some(first);
                let mut n = 0;
                while let Some(Cmd::Request { req, frame, reply }) = next.take() {
                    let text = frame.clone();
                    inflight.insert(req, (frame, reply));
                    if let Err(e) = ws.feed(WsMessage::Text(text.into())).await {
                        return Ended::Lost(e.to_string());
                    }
                    n += 1;
                    if n < 128 {
                        next = cmds.try_recv().ok();
                    }
                }
                if let Err(e) = ws.flush().await {
                    return Ended::Lost(e.to_string());
                }
            },
            _ = &mut silence => return Ended::Lost("the node went silent".into()),
            frame = ws.next() => {
                silence.as_mut().reset(tokio::time::Instant::now() + SILENCE_LIMIT);
                // Handle this frame and every one already received, acking pushes in one frame.
                let mut acks = Vec::new();
                let mut next = Some(frame);
                while let Some(frame) = next.take() {
                    if let Err(ended) = on_frame(opts, frame, pushes, inflight, &mut acks) {
                        return ended;
                    }
                    if acks.len() < 256 {
                        next = ws.next().now_or_never();
                    }
                }
                if !acks.is_empty() {
                    let ack = ClientFrame::Ack(AckFrame { ids: acks });
                    if let Ok(t) = serde_json::to_string(&ack)
                        && let Err(e) = ws.send(WsMessage::Text(t.into())).await
                    {
                        return Ended::Lost(e.to_string());
                    }
                }
            }
        }
    }
}

type FrameResult = Option<std::result::Result<WsMessage, tokio_tungstenite::tungstenite::Error>>;

fn on_frame(
    opts: &ClientOptions,
    frame: FrameResult,
    pushes: &broadcast::Sender<Message>,
    inflight: &mut Inflight,
    acks: &mut Vec<String>,
) -> std::result::Result<(), Ended> {
    let text = match frame {
        None => return Err(Ended::Lost("closed by the node".into())),
        Some(Err(e)) => return Err(Ended::Lost(e.to_string())),
        Some(Ok(WsMessage::Text(t))) => t,
        Some(Ok(WsMessage::Close(_))) => return Err(Ended::Lost("closed by the node".into())),
        Some(Ok(_)) => return Ok(()),
    };
    let frame = match serde_json::from_str::<ServerFrame>(&text) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable frame from the node");
            return Ok(());
        }
    };
    match frame {
        ServerFrame::Msg { message } => {
            if opts.role != Role::Cli {
                acks.push(message.id.clone());
            }
            let _ = pushes.send(message);
        }
        ServerFrame::Bye { reason } => return Err(Ended::Lost(reason)),
        ServerFrame::Error(e) => match e.req.and_then(|r| inflight.remove(&r)) {
            Some((_, reply)) => {
                let _ = reply.send(Err(Error::Remote {
                    code: e.code,
                    message: e.message,
                }));
            }
            None => {
                tracing::warn!(code = e.code.as_str(), message = %e.message, "error from the node")
            }
        },
        ServerFrame::Welcome(_) => {}
        other => {
            if let Some(req) = answer_req(&other)
                && let Some((_, reply)) = inflight.remove(&req)
            {
                let _ = reply.send(Ok(other));
            }
        }
    }
    Ok(())
}

fn answer_req(frame: &ServerFrame) -> Option<u64> {
    match frame {
        ServerFrame::Sent { req, .. }
        | ServerFrame::Inbox { req, .. }
        | ServerFrame::Marked { req, .. }
        | ServerFrame::Presence { req, .. }
        | ServerFrame::Status { req, .. }
        | ServerFrame::Topics { req, .. }
        | ServerFrame::Messages { req, .. }
        | ServerFrame::Tokens { req, .. }
        | ServerFrame::Pong { req } => Some(*req),
        _ => None,
    }
}
