//! One client connection, from `hello` to the close: I/O only.
//!
//! A single task reads frames, writes the session's queue and sends keep-alive pings,
//! `select!`ing between them, so an idle connection costs one small task. Every request goes
//! to the core ([`dispatch`](super::dispatch)); answers to sends, and pushes, come back through
//! the session's bounded queue, in order.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dispatch::Conn;
use super::http::AppState;
use super::upgrade::Socket;
use crate::core::{Frame, Metrics};
use crate::protocol::{ErrorCode, Hello, PROTOCOL_VERSION, Role, ServerFrame, Welcome};
use crate::transport::{Incoming, Reader, Writer};

/// How long a session that is cut off may take for its goodbye (frames already queued, `bye`,
/// the close), and a write under way when it is cut off may still take, before the socket is
/// simply dropped: a client that does not read would otherwise hold the node's shutdown for
/// the 10 s write timeout.
pub(super) const GOODBYE: Duration = Duration::from_millis(250);

/// `write`, unless the session is cut off while it waits and it does not end within
/// [`GOODBYE`] after that; false, as for a failed write, then.
async fn unless_cut_off(kill: &CancellationToken, write: impl Future<Output = bool>) -> bool {
    tokio::pin!(write);
    tokio::select! {
        ok = &mut write => ok,
        _ = kill.cancelled() => tokio::time::timeout(GOODBYE, write).await.unwrap_or(false),
    }
}

/// Why a session ended on the node's side, as told in its `bye`.
#[derive(Debug, Clone, Copy)]
enum Bye {
    ShuttingDown,
    TooSlow,
}

impl Bye {
    fn reason(self) -> &'static str {
        match self {
            Bye::ShuttingDown => "the node is shutting down",
            Bye::TooSlow => {
                "too slow: the outbound queue overflowed; unread mail stays in the inbox"
            }
        }
    }
}

/// Runs an authenticated client session to its end; `hello` is its first frame, already read.
pub async fn run(
    mut writer: Writer<Socket>,
    reader: Reader<Socket>,
    hello: Hello,
    header_token: Option<String>,
    s: &AppState,
) {
    let router = &s.router;
    let admin = match router.authenticate(&hello, header_token.as_deref()).await {
        Ok(a) => a,
        Err(e) => {
            Metrics::inc(&router.metrics.auth_failures_total);
            tracing::info!(agent = ?hello.agent, error = ?e.to_string(), "refused a connection");
            return writer.refuse(e.code(), e.client_message()).await;
        }
    };
    if s.shutdown.is_cancelled() {
        let refuse = writer.refuse(ErrorCode::ShuttingDown, "the node is shutting down".into());
        let _ = tokio::time::timeout(GOODBYE, refuse).await;
        return;
    }
    let (tx, mut rx) = mpsc::channel(router.limits.outbound_queue);
    let kill = s.shutdown.child_token();
    let session = match router.register(&hello.agent, hello.role, tx, kill).await {
        Ok(s) => s,
        Err(e) => return writer.refuse(e.code(), e.client_message()).await,
    };
    // The name as the directory spells it: `BOB` connecting acts as `bob`.
    let agent = session.name.clone();
    tracing::debug!(%agent, role = ?hello.role, session = session.id, "session open");
    let welcome = ServerFrame::Welcome(Welcome {
        agent: agent.clone(),
        node: router.node_id.clone(),
        v: PROTOCOL_VERSION,
        max_frame_bytes: router.limits.max_frame_bytes,
    });
    let kill = &session.kill;
    let mut ok = unless_cut_off(kill, writer.send_frame(&welcome)).await;
    // Mail committed while the replay is read is both replayed and queued as a push: the
    // queued copy of what was replayed is dropped (see `serve`).
    let mut replayed = HashSet::new();
    if ok && hello.role != Role::Cli {
        // A replay that fails to load leaves the mail unread; the session goes on.
        for message in router.replay(&agent).await.unwrap_or_default() {
            if kill.is_cancelled() {
                break;
            }
            replayed.insert(message.id.clone());
            if !unless_cut_off(kill, writer.send_frame(&ServerFrame::Msg { message })).await {
                ok = false;
                break;
            }
        }
    }
    if ok {
        let conn = Conn {
            sends: router.send_queue(session.clone()),
            router: router.clone(),
            agent: agent.clone(),
            role: hello.role,
            admin,
            mesh: s.mesh.clone(),
        };
        let shutdown = s.shutdown.clone();
        serve(&conn, writer, reader, &mut rx, replayed, kill, &shutdown).await;
        // Sends already queued are still answered (into the queue) before the agent leaves.
        conn.sends.close().await;
    }
    router.unregister(&agent, session.id);
    tracing::debug!(%agent, session = session.id, "session closed");
}

async fn serve(
    conn: &Conn,
    mut writer: Writer<Socket>,
    mut reader: Reader<Socket>,
    rx: &mut mpsc::Receiver<Frame>,
    mut replayed: HashSet<String>,
    kill: &CancellationToken,
    shutdown: &CancellationToken,
) {
    let metrics = &conn.router.metrics;
    let interval = conn.router.limits.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = kill.cancelled() => {
                let bye = if shutdown.is_cancelled() { Bye::ShuttingDown } else { Bye::TooSlow };
                let goodbye = async {
                    // Frames already queued (answers, pushes) go out before the goodbye.
                    while let Ok(f) = rx.try_recv() {
                        if f.message_id().is_some_and(|id| replayed.remove(id)) { continue; }
                        if !writer.send_queued(f).await { return; }
                    }
                    let _ = writer.send_frame(&ServerFrame::Bye { reason: bye.reason().into() }).await;
                    writer.close().await;
                };
                let _ = tokio::time::timeout(GOODBYE, goodbye).await;
                return;
            }
            out = rx.recv() => match out {
                Some(frame) => {
                    // True for a push of mail already replayed (each is dropped once).
                    let skip = |f: &Frame| !replayed.is_empty()
                        && f.message_id().is_some_and(|id| replayed.remove(id));
                    if !unless_cut_off(kill, writer.send_batch(frame, rx, skip)).await { return }
                }
                None => return,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > interval * 2 {
                    Metrics::inc(&metrics.slow_consumers_total);
                    tracing::info!(agent = %conn.agent, "no pong in time; closing");
                    return;
                }
                if !unless_cut_off(kill, writer.ping()).await { return; }
            }
            incoming = reader.next() => {
                last_heard = Instant::now();
                match incoming {
                    Incoming::Text(text) => {
                        if let Some(reply) = conn.handle(&text).await
                            && !unless_cut_off(kill, writer.send_frame(&reply)).await
                        {
                            return;
                        }
                    }
                    Incoming::Binary => {
                        Metrics::inc(&metrics.frames_rejected_total);
                        let (code, message) = incoming.refusal();
                        let refusal = ServerFrame::error(None, code, message);
                        if !unless_cut_off(kill, writer.send_frame(&refusal)).await { return; }
                    }
                    Incoming::TooLarge(_) => {
                        Metrics::inc(&metrics.frames_rejected_total);
                        let (code, message) = incoming.refusal();
                        return writer.refuse(code, message).await;
                    }
                    Incoming::Alive => {}
                    Incoming::Closed | Incoming::Broken(_) => return,
                }
            }
        }
    }
}
