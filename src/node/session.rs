//! One client connection, from the first frame to the close.
//!
//! A single task reads frames, writes frames and sends keep-alive pings, `select!`ing between
//! them, so an idle connection costs one small task. Sends are queued to the store in arrival
//! order from this loop; a per-connection *completer* task awaits their commits in that same
//! order, pushes them to recipients and answers the sender, so a slow commit never stalls
//! reading and a sender's messages reach every recipient in the order they were sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::error::{Error, Result};
use crate::mesh::{Mesh, PeerFrame};
use crate::message::{now_ms, validate_name};
use crate::node::metrics::Metrics;
use crate::node::router::{Router, SessionTx};
use crate::protocol::{
    ClientFrame, ErrorCode, Hello, InboxResult, MarkResult, MessagesResult, PROTOCOL_VERSION,
    PresenceResult, Role, ServerFrame, TokenAction, TokenResult, TopicsResult, Welcome,
};
use crate::store::{InboxQuery, Stored, queries};

/// A write to a client that takes longer than this means the client is gone or stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends in flight (queued, not yet answered) per connection.
const MAX_IN_FLIGHT: usize = 1024;
/// Unread messages pushed right after `welcome`.
const REPLAY_LIMIT: u32 = 1000;

type Sink = SplitSink<WebSocket, WsMessage>;
type Pending = (u64, oneshot::Receiver<Result<Stored>>);

fn encode(frame: &ServerFrame) -> Utf8Bytes {
    // Our own frames always serialize; an empty object would still be valid JSON.
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_else(|_| "{}".into()))
}

async fn write(sink: &mut Sink, frame: Utf8Bytes) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, sink.send(WsMessage::Text(frame))).await,
        Ok(Ok(()))
    )
}

/// Frames written per flush at most; bounds how long one busy connection holds its task.
const WRITE_BATCH: usize = 128;

/// Writes `first` and whatever else is already queued, then flushes once: under load many
/// frames share one syscall instead of one each.
async fn write_batch(
    sink: &mut Sink,
    first: Utf8Bytes,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
) -> bool {
    let batch = async {
        sink.feed(WsMessage::Text(first)).await?;
        for _ in 1..WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => sink.feed(WsMessage::Text(f)).await?,
                Err(_) => break,
            }
        }
        sink.flush().await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, batch).await, Ok(Ok(())))
}

/// Sends an error frame and closes: used where the connection cannot go on.
async fn refuse(mut sink: Sink, code: ErrorCode, message: String) {
    let _ = write(
        &mut sink,
        encode(&ServerFrame::error(None, code, message.clone())),
    )
    .await;
    // A close reason may hold at most 123 bytes; cut on a character boundary.
    let mut reason = String::new();
    for c in message.chars() {
        if reason.len() + c.len_utf8() > 120 {
            break;
        }
        reason.push(c);
    }
    let close = CloseFrame {
        code: match code {
            ErrorCode::FrameTooLarge => 1009,
            ErrorCode::ShuttingDown => 1001,
            _ => 1008,
        },
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(WsMessage::Close(Some(close)))).await;
}

fn describe_read_error(e: &axum::Error) -> (ErrorCode, String) {
    let text = e.to_string();
    let inner = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tokio_tungstenite::tungstenite::Error>());
    match inner {
        Some(tokio_tungstenite::tungstenite::Error::Capacity(c)) => {
            (ErrorCode::FrameTooLarge, format!("frame too large: {c}"))
        }
        _ if text.contains("too long") || text.contains("too big") => {
            (ErrorCode::FrameTooLarge, format!("frame too large: {text}"))
        }
        _ => (ErrorCode::BadFrame, format!("unreadable frame: {text}")),
    }
}

/// Runs a connection to its end.
pub async fn run(
    socket: WebSocket,
    router: Arc<Router>,
    mesh: Option<Arc<Mesh>>,
    header_token: Option<String>,
    shutdown: CancellationToken,
    remote: String,
) {
    Metrics::inc(&router.metrics.connections_total);
    router
        .metrics
        .connections_active
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    serve(socket, &router, mesh, header_token, shutdown, remote).await;
    router
        .metrics
        .connections_active
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// What the first frame says the connection is.
enum First {
    /// A client's hello.
    Client(Hello),
    /// A peer node's `peer_hello` with its nonce.
    Peer(String),
}

async fn handshake(
    stream: &mut SplitStream<WebSocket>,
    router: &Router,
) -> std::result::Result<First, (ErrorCode, String)> {
    let deadline = tokio::time::Instant::now() + router.limits.handshake_timeout;
    let text = loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err((
                    ErrorCode::HandshakeTimeout,
                    format!(
                        "no hello within {} s",
                        router.limits.handshake_timeout.as_secs()
                    ),
                ));
            }
            Ok(None) | Ok(Some(Ok(WsMessage::Close(_)))) => {
                return Err((ErrorCode::BadFrame, String::new()));
            }
            Ok(Some(Err(e))) => return Err(describe_read_error(&e)),
            Ok(Some(Ok(WsMessage::Text(t)))) => break t,
            // Keep-alives before hello are fine (tungstenite answers pings itself).
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            Ok(Some(Ok(_))) => {
                return Err((
                    ErrorCode::BadFrame,
                    "the first frame must be a JSON text frame {\"op\":\"hello\",...}".into(),
                ));
            }
        }
    };
    if let Ok(PeerFrame::PeerHello { nonce, .. }) = serde_json::from_str::<PeerFrame>(&text) {
        return Ok(First::Peer(nonce));
    }
    match serde_json::from_str::<ClientFrame>(&text) {
        Ok(ClientFrame::Hello(h)) => Ok(First::Client(h)),
        Ok(_) => Err((
            ErrorCode::NotAuthenticated,
            "the first frame must be hello: {\"op\":\"hello\",\"agent\":\"NAME\",\"token\":\"...\",\"v\":1}".into(),
        )),
        Err(e) => Err((ErrorCode::BadFrame, format!("bad hello frame: {e}"))),
    }
}

async fn serve(
    socket: WebSocket,
    router: &Arc<Router>,
    mesh: Option<Arc<Mesh>>,
    header_token: Option<String>,
    shutdown: CancellationToken,
    remote: String,
) {
    let (mut sink, mut stream) = socket.split();
    let hello = match handshake(&mut stream, router).await {
        Ok(First::Client(h)) => h,
        Ok(First::Peer(nonce)) => {
            let Some(mesh) = mesh else {
                Metrics::inc(&router.metrics.auth_failures_total);
                tracing::warn!(%remote, "refused a peer link: this node has no mesh secret");
                let f = PeerFrame::Error {
                    code: "unauthorized".into(),
                    message: "mesh authentication failed".into(),
                };
                let _ = write(
                    &mut sink,
                    Utf8Bytes::from(serde_json::to_string(&f).unwrap_or_default()),
                )
                .await;
                return;
            };
            let sink = sink.with(|t: String| {
                futures_util::future::ready(Ok::<_, axum::Error>(WsMessage::Text(t.into())))
            });
            let stream = stream.filter_map(|m| {
                futures_util::future::ready(match m {
                    Ok(WsMessage::Text(t)) => Some(Ok(t.to_string())),
                    Ok(WsMessage::Close(_)) | Err(_) => Some(Err(())),
                    Ok(_) => None,
                })
            });
            return mesh
                .accept(nonce, Box::pin(sink), Box::pin(stream), remote)
                .await;
        }
        Err((_, m)) if m.is_empty() => return,
        Err((code, message)) => {
            Metrics::inc(&router.metrics.frames_rejected_total);
            return refuse(sink, code, message).await;
        }
    };
    let admin = match router.authenticate(&hello, header_token.as_deref()).await {
        Ok(a) => a,
        Err(e) => {
            Metrics::inc(&router.metrics.auth_failures_total);
            tracing::info!(agent = %hello.agent, error = %e, "refused a connection");
            return refuse(sink, e.code(), e.to_string()).await;
        }
    };
    if shutdown.is_cancelled() {
        return refuse(
            sink,
            ErrorCode::ShuttingDown,
            "the node is shutting down".into(),
        )
        .await;
    }
    let (tx, mut rx) = mpsc::channel(router.limits.outbound_queue);
    let kill = shutdown.child_token();
    let session = match router
        .register(&hello.agent, hello.role, tx.clone(), kill.clone())
        .await
    {
        Ok(s) => s,
        Err(e) => return refuse(sink, e.code(), e.to_string()).await,
    };
    let agent = hello.agent.clone();
    tracing::debug!(%agent, role = ?hello.role, session = session.id, "session open");
    let welcome = encode(&ServerFrame::Welcome(Welcome {
        agent: agent.clone(),
        node: router.node_id.clone(),
        v: PROTOCOL_VERSION,
        max_frame_bytes: router.limits.max_frame_bytes,
    }));
    let mut ok = write(&mut sink, welcome).await;
    if ok && hello.role != Role::Cli {
        ok = replay(&mut sink, router, &agent).await;
    }
    if ok {
        let conn = Conn {
            router: router.clone(),
            agent: agent.clone(),
            role: hello.role,
            admin,
            session: session.clone(),
        };
        conn.run(sink, stream, &mut rx, &shutdown).await;
    }
    router.unregister(&agent, session.id);
    tracing::debug!(%agent, session = session.id, "session closed");
}

async fn replay(sink: &mut Sink, router: &Router, agent: &str) -> bool {
    let a = agent.to_owned();
    let q = InboxQuery {
        unread_only: true,
        limit: REPLAY_LIMIT,
        ..Default::default()
    };
    let Ok((messages, _)) = router
        .store
        .read(move |c| queries::inbox(c, &a, &q, now_ms(), None))
        .await
    else {
        return true;
    };
    for message in messages {
        if !write(sink, encode(&ServerFrame::Msg { message })).await {
            return false;
        }
    }
    true
}

struct Conn {
    router: Arc<Router>,
    agent: String,
    role: Role,
    admin: bool,
    session: SessionTx,
}

impl Conn {
    async fn run(
        &self,
        mut sink: Sink,
        mut stream: SplitStream<WebSocket>,
        rx: &mut mpsc::Receiver<Utf8Bytes>,
        shutdown: &CancellationToken,
    ) {
        let (pending_tx, pending_rx) = mpsc::channel::<Pending>(MAX_IN_FLIGHT);
        let completer = tokio::spawn(complete_sends(
            self.router.clone(),
            pending_rx,
            self.session.clone(),
        ));
        let interval = self.router.limits.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut last_heard = Instant::now();
        let kill = self.session.kill.clone();
        loop {
            tokio::select! {
                _ = kill.cancelled() => {
                    let reason = if shutdown.is_cancelled() {
                        "the node is shutting down"
                    } else {
                        "too slow: the outbound queue overflowed; unread mail stays in the inbox"
                    };
                    // Frames already queued (answers, pushes) go out before the goodbye.
                    while let Ok(f) = rx.try_recv() {
                        if !write(&mut sink, f).await { break; }
                    }
                    let _ = write(&mut sink, encode(&ServerFrame::Bye { reason: reason.into() })).await;
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(WsMessage::Close(None))).await;
                    break;
                }
                out = rx.recv() => match out {
                    Some(frame) => if !write_batch(&mut sink, frame, rx).await { break },
                    None => break,
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > interval * 2 {
                        Metrics::inc(&self.router.metrics.slow_consumers_total);
                        tracing::info!(agent = %self.agent, "no pong in time; closing");
                        break;
                    }
                    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, sink.send(WsMessage::Ping(Default::default()))).await, Ok(Ok(()))) {
                        break;
                    }
                }
                incoming = stream.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        None | Some(Ok(WsMessage::Close(_))) => break,
                        Some(Err(e)) => {
                            let (code, message) = describe_read_error(&e);
                            if code == ErrorCode::FrameTooLarge {
                                Metrics::inc(&self.router.metrics.frames_rejected_total);
                                refuse(sink, code, message).await;
                                completer.abort();
                                return;
                            }
                            break;
                        }
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Some(reply) = self.handle(&text, &pending_tx).await
                                && !write(&mut sink, encode(&reply)).await
                            {
                                break;
                            }
                        }
                        Some(Ok(WsMessage::Binary(_))) => {
                            Metrics::inc(&self.router.metrics.frames_rejected_total);
                            let e = ServerFrame::error(None, ErrorCode::BadFrame, "binary frames are not supported; send JSON text frames");
                            if !write(&mut sink, encode(&e)).await { break; }
                        }
                        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself.
                    }
                }
            }
        }
        drop(pending_tx);
        // Answers for sends already committed still go out if the socket is alive; the
        // completer ends on its own once the queue drains.
        let _ = completer.await;
    }

    /// Handles one text frame; returns the answer to write, if any (sends answer later).
    async fn handle(&self, text: &str, pending: &mpsc::Sender<Pending>) -> Option<ServerFrame> {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                Metrics::inc(&self.router.metrics.frames_rejected_total);
                let req = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("req").and_then(serde_json::Value::as_u64));
                return Some(ServerFrame::error(
                    req,
                    ErrorCode::BadFrame,
                    format!("bad frame: {e}"),
                ));
            }
        };
        let req = frame.req();
        match self.dispatch(frame, pending).await {
            Ok(reply) => reply,
            Err(e) => {
                Metrics::inc(&self.router.metrics.frames_rejected_total);
                Some(ServerFrame::error(req, e.code(), e.to_string()))
            }
        }
    }

    async fn dispatch(
        &self,
        frame: ClientFrame,
        pending: &mpsc::Sender<Pending>,
    ) -> Result<Option<ServerFrame>> {
        let r = &self.router;
        let agent = self.agent.clone();
        let now = now_ms();
        Ok(Some(match frame {
            ClientFrame::Hello(_) => {
                return Err(Error::Invalid(
                    "hello: this connection is already authenticated".into(),
                ));
            }
            ClientFrame::Send(req) => {
                let id = req.req;
                let permit = pending.try_reserve().map_err(|_| {
                    Error::refused(
                        ErrorCode::RateLimited,
                        format!("more than {MAX_IN_FLIGHT} sends in flight on this connection; wait for answers"),
                    )
                })?;
                if self.role == Role::Cli {
                    // A command-line sender becomes a known agent, so replies can reach it.
                    r.ensure_agent(&agent).await?;
                }
                let prepared = r.prepare_send(&agent, req)?;
                let origin = r.node_id.clone();
                let per_minute = r.limits.thread_per_minute;
                let rx = r
                    .store
                    .submit(move |c| {
                        if let Some(parent) = &prepared.message.reply_to {
                            queries::check_thread_rate(c, parent, per_minute, now)?;
                        }
                        queries::insert_message(c, prepared.message, Some(&origin))
                    })
                    .await?;
                permit.send((id, rx));
                return Ok(None);
            }
            ClientFrame::Inbox(q) => {
                if !(1..=200).contains(&q.limit) {
                    return Err(Error::Invalid("limit: must be between 1 and 200".into()));
                }
                check_optional_name("from", q.from.as_deref())?;
                let topic = q.topic.map(|t| t.trim_start_matches('#').to_owned());
                check_optional_name("topic", topic.as_deref())?;
                let query = InboxQuery {
                    unread_only: q.unread_only,
                    limit: q.limit,
                    from: q.from,
                    topic,
                    mark_read: q.mark_read,
                };
                let origin = r.node_id.clone();
                let job = move |c: &rusqlite::Connection| {
                    queries::inbox(c, &agent, &query, now, Some(&origin))
                };
                let (messages, unread_remaining) = if q.mark_read {
                    r.store.write(job).await?
                } else {
                    r.store.read(job).await?
                };
                ServerFrame::Inbox {
                    req: q.req,
                    result: InboxResult {
                        messages,
                        unread_remaining,
                    },
                }
            }
            ClientFrame::MarkRead(m) => {
                if m.ids.is_empty() && !m.all {
                    return Err(Error::Invalid(
                        "ids: give a list of message ids, or all: true".into(),
                    ));
                }
                if m.ids.len() > 10_000 {
                    return Err(Error::Invalid("ids: at most 10000 per call".into()));
                }
                let (ids, all) = (m.ids, m.all);
                let origin = r.node_id.clone();
                let marked = r
                    .store
                    .write(move |c| queries::mark_read(c, &agent, &ids, all, now, Some(&origin)))
                    .await?;
                ServerFrame::Marked {
                    req: m.req,
                    result: MarkResult { marked },
                }
            }
            ClientFrame::Presence(p) => ServerFrame::Presence {
                req: p.req,
                result: PresenceResult {
                    agents: r.presence(p.agent.as_deref())?,
                },
            },
            ClientFrame::SetStatus(s) => ServerFrame::Status {
                req: s.req,
                result: r.set_status(&agent, s.status, s.text).await?,
            },
            ClientFrame::Subscribe(t) => ServerFrame::Topics {
                req: t.req,
                result: TopicsResult {
                    topics: r.subscribe(&agent, &t.topic, true).await?,
                },
            },
            ClientFrame::Unsubscribe(t) => ServerFrame::Topics {
                req: t.req,
                result: TopicsResult {
                    topics: r.subscribe(&agent, &t.topic, false).await?,
                },
            },
            ClientFrame::Thread(t) => {
                let id = t.id;
                let messages = r
                    .store
                    .read(move |c| queries::thread(c, &agent, &id))
                    .await?;
                ServerFrame::Messages {
                    req: t.req,
                    result: MessagesResult { messages },
                }
            }
            ClientFrame::Search(s) => {
                if !(1..=200).contains(&s.limit) {
                    return Err(Error::Invalid("limit: must be between 1 and 200".into()));
                }
                let (fts, limit) = (queries::check_search(&s.query)?, s.limit);
                // First index (on the writer, after every write queued before this search,
                // the sender's own included) what the periodic run has not; then look on the
                // reader thread, so an expensive search never holds up deliveries.
                r.store.write(queries::index_new_messages).await?;
                let messages = r
                    .store
                    .read_committed(move |c| queries::search(c, &agent, &fts, limit))
                    .await?;
                ServerFrame::Messages {
                    req: s.req,
                    result: MessagesResult { messages },
                }
            }
            ClientFrame::Ack(a) => {
                r.acked(&agent, self.role, a.ids).await?;
                return Ok(None);
            }
            ClientFrame::Token(t) => {
                if !self.admin {
                    return Err(Error::refused(
                        ErrorCode::Forbidden,
                        "token management needs the local secret",
                    ));
                }
                ServerFrame::Tokens {
                    req: t.req,
                    result: self.token(t.action, t.name).await?,
                }
            }
            ClientFrame::Ping(p) => ServerFrame::Pong { req: p.req },
        }))
    }

    async fn token(&self, action: TokenAction, name: Option<String>) -> Result<TokenResult> {
        let r = &self.router;
        let need_name = || {
            let n = name
                .clone()
                .ok_or_else(|| Error::Invalid("name: required for issue and revoke".into()))?;
            validate_name(&n).map_err(|e| Error::Invalid(format!("name: agent name {e}")))?;
            Ok::<_, Error>(n)
        };
        match action {
            TokenAction::Issue => {
                let n = need_name()?;
                let token = auth::new_token();
                let (hash, n2, now) = (auth::hash_token(&token), n.clone(), now_ms());
                let origin = r.node_id.clone();
                r.store
                    .write(move |c| queries::put_token(c, &n2, &hash, now, Some(&origin)))
                    .await?;
                r.ensure_agent(&n).await?;
                Ok(TokenResult {
                    token: Some(token),
                    names: vec![n],
                })
            }
            TokenAction::Revoke => {
                let n = need_name()?;
                let origin = r.node_id.clone();
                let n2 = n.clone();
                if !r
                    .store
                    .write(move |c| queries::delete_token(c, &n2, Some(&origin)))
                    .await?
                {
                    return Err(Error::Invalid(format!("name: '{n}' has no token")));
                }
                Ok(TokenResult {
                    token: None,
                    names: vec![n],
                })
            }
            TokenAction::List => Ok(TokenResult {
                token: None,
                names: r
                    .store
                    .read(queries::tokens)
                    .await?
                    .into_iter()
                    .map(|t| t.name)
                    .collect(),
            }),
        }
    }
}

fn check_optional_name(what: &str, name: Option<&str>) -> Result<()> {
    match name {
        Some(n) => validate_name(n).map_err(|e| Error::Invalid(format!("{what}: {e}"))),
        None => Ok(()),
    }
}

/// Awaits each queued send's commit in order, pushes it, and answers the sender once the
/// delivery outcome is known (without holding up the next send).
async fn complete_sends(
    router: Arc<Router>,
    mut pending: mpsc::Receiver<Pending>,
    session: SessionTx,
) {
    while let Some((req, rx)) = pending.recv().await {
        let reply_to = session.clone();
        match rx.await {
            Ok(Ok(stored)) => {
                let acked = if stored.duplicate {
                    Metrics::inc(&router.metrics.messages_duplicate_total);
                    None
                } else {
                    Metrics::inc(&router.metrics.messages_accepted_total);
                    router.dispatch(&stored)
                };
                let router = router.clone();
                match acked {
                    // Someone must ack first: wait off this loop so later sends are not held up.
                    Some(_) => {
                        tokio::spawn(async move {
                            let result = router.outcome(&stored, acked).await;
                            answer(&router, &reply_to, &ServerFrame::Sent { req, result });
                        });
                    }
                    None => {
                        let result = router.outcome(&stored, None).await;
                        answer(&router, &reply_to, &ServerFrame::Sent { req, result });
                    }
                }
            }
            Ok(Err(e)) => answer(
                &router,
                &reply_to,
                &ServerFrame::error(Some(req), e.code(), e.to_string()),
            ),
            Err(_) => answer(
                &router,
                &reply_to,
                &ServerFrame::error(
                    Some(req),
                    ErrorCode::ShuttingDown,
                    "the node is shutting down",
                ),
            ),
        }
    }
}

/// Queues an answer to the session; a full queue means the client stopped reading.
fn answer(router: &Router, s: &SessionTx, frame: &ServerFrame) {
    if let Err(mpsc::error::TrySendError::Full(_)) = s.tx.try_send(encode(frame))
        && !s.kill.is_cancelled()
    {
        Metrics::inc(&router.metrics.slow_consumers_total);
        s.kill.cancel();
    }
}
