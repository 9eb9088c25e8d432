//! The background task that owns a client's socket: the hello, request/answer matching by
//! `req`, push acks, and reconnecting.
//!
//! When the connection drops, the task reconnects by [`crate::backoff`] and re-sends every
//! unanswered request in its original order: all requests are safe to repeat (a send carries
//! its message id, so the node stores it once however often it arrives). A refusal that
//! retrying cannot fix (a bad token, a certificate that does not verify, a token that would
//! go out in clear text) fails the waiting requests at once, and the next attempts wait
//! [`FATAL_PAUSE`] instead of the usual backoff; so does a connection the node closed because
//! of a request (a frame over its limit, an unreadable frame): re-sending that request would
//! only be refused again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::options::{ClientOptions, ConnState};
use crate::config::ws_endpoint;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::protocol::*;

pub(super) type Ws = WebSocketStream<crate::tls::Stream>;

/// The pause between attempts after a refusal retrying cannot fix: the node (or its
/// certificate, or the settings) must change first, and hammering it helps nobody.
const FATAL_PAUSE: Duration = Duration::from_secs(10);

pub(super) enum Cmd {
    Request {
        req: u64,
        frame: String,
        reply: oneshot::Sender<Result<ServerFrame>>,
    },
}

/// Errors that retrying cannot fix.
pub(super) fn fatal(e: &Error) -> bool {
    matches!(
        e,
        Error::Tls(_)
            | Error::Config(_)
            | Error::Remote {
                code: ErrorCode::Unauthorized
                    | ErrorCode::UnsupportedVersion
                    | ErrorCode::InvalidArgument
                    | ErrorCode::Forbidden,
                ..
            }
    )
}

/// The same fatal error again, for each request it fails.
fn again(e: &Error) -> Error {
    match e {
        Error::Remote { code, message } => Error::Remote {
            code: *code,
            message: message.clone(),
        },
        Error::Tls(m) => Error::Tls(m.clone()),
        Error::Config(m) => Error::Config(m.clone()),
        other => Error::Connection(other.to_string()),
    }
}

/// A failed WebSocket handshake in words: a TLS-only node's plain `400` answer says what to do.
fn handshake_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::Error as WsError;
    if let WsError::Http(response) = &e {
        let body = response
            .body()
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if body.contains("speaks TLS only") {
            let fixed = url.replacen("ws://", "wss://", 1);
            return Error::Tls(format!(
                "the switchboard node at {url} speaks TLS only: connect to {fixed}"
            ));
        }
        return Error::Connection(format!(
            "cannot reach the switchboard node at {url}: HTTP {} {}",
            response.status(),
            body.trim()
        ));
    }
    Error::Connection(format!("cannot reach the switchboard node at {url}: {e}"))
}

pub(super) async fn open(opts: &ClientOptions) -> Result<(Ws, Welcome)> {
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
    // Before anything leaves this process: no credential in clear text to another machine.
    crate::plaintext::check_client(&opts.url, opts.allow_plaintext)?;
    let handshake = async {
        let (socket, _) = crate::tls::connect(&endpoint, opts.tls.as_ref())
            .await
            .map_err(|e| match e {
                Error::Connection(m) => unreachable(m),
                fatal => fatal,
            })?;
        tokio_tungstenite::client_async_with_config(request, socket, Some(config))
            .await
            .map_err(|e| handshake_error(&opts.url, e))
    };
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| unreachable("timed out".into()))??;
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

type Inflight = BTreeMap<u64, (String, oneshot::Sender<Result<ServerFrame>>)>;

/// How long the node may stay silent (it pings every 15 s) before the link counts as dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

enum Ended {
    /// Every `Client` handle is gone.
    Closed,
    /// The connection dropped.
    Lost(String),
}

/// An error frame answering no request, with a code the node closes the connection after
/// because of something this client sent.
fn refusal_of_a_request(e: &ErrorFrame) -> bool {
    e.req.is_none() && matches!(e.code, ErrorCode::FrameTooLarge | ErrorCode::BadFrame)
}

/// Fails the requests the node refused instead of re-sending them: those over the limit for
/// `frame_too_large`, or every one in flight when it cannot tell which (they are failed, never
/// sent again, so nothing loops).
fn fail_refused(inflight: &mut Inflight, refusal: ErrorFrame, max: usize) {
    let over: Vec<u64> = inflight
        .iter()
        .filter(|(_, (frame, _))| frame.len() > max)
        .map(|(req, _)| *req)
        .collect();
    let culprits = if refusal.code == ErrorCode::FrameTooLarge && !over.is_empty() {
        over
    } else {
        inflight.keys().copied().collect()
    };
    for req in culprits {
        if let Some((frame, reply)) = inflight.remove(&req) {
            let error = if refusal.code == ErrorCode::FrameTooLarge && frame.len() > max {
                super::too_large(frame.len(), max)
            } else {
                Error::Remote {
                    code: refusal.code,
                    message: format!(
                        "{}; the node closed the connection and the request was not retried",
                        refusal.message
                    ),
                }
            };
            let _ = reply.send(Err(error));
        }
    }
}

pub(super) async fn run(
    opts: ClientOptions,
    mut ws: Ws,
    mut cmds: mpsc::Receiver<Cmd>,
    pushes: broadcast::Sender<Message>,
    state: watch::Sender<ConnState>,
    max_frame: Arc<AtomicUsize>,
) {
    let mut inflight: Inflight = BTreeMap::new();
    loop {
        let mut refused = None;
        let ended = connection(
            &opts,
            &mut ws,
            &mut cmds,
            &pushes,
            &mut inflight,
            &mut refused,
        )
        .await;
        let why = match ended {
            Ended::Closed => return,
            Ended::Lost(why) => why,
        };
        if let Some(refusal) = refused {
            fail_refused(&mut inflight, refusal, max_frame.load(Ordering::Relaxed));
        }
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
        let backoff = opts.backoff();
        let mut attempt = 0;
        ws = loop {
            match open(&opts).await {
                Ok((ws, welcome)) => {
                    tracing::info!(node = %welcome.node, "reconnected");
                    max_frame.store(welcome.max_frame_bytes, Ordering::Relaxed);
                    state.send_replace(ConnState::Connected(welcome.node));
                    break ws;
                }
                Err(e) => {
                    state.send_replace(ConnState::Disconnected(e.to_string()));
                    if fatal(&e) {
                        tracing::warn!(node = %opts.url, error = %e, "the node cannot be used as configured; trying again later");
                        for (_, (_, reply)) in std::mem::take(&mut inflight) {
                            let _ = reply.send(Err(again(&e)));
                        }
                        tokio::time::sleep(FATAL_PAUSE).await;
                        if cmds.is_closed() {
                            return;
                        }
                        continue;
                    }
                    if let Some(hook) = &opts.on_unreachable {
                        hook().await;
                        if attempt == 0 {
                            attempt += 1;
                            continue;
                        }
                    }
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt += 1;
                    if cmds.is_closed() {
                        return;
                    }
                }
            }
        };
        // Re-send what was never answered, in the original order; drop what nobody awaits.
        inflight.retain(|_, (_, reply)| !reply.is_closed());
        let max = max_frame.load(Ordering::Relaxed);
        let over: Vec<u64> = inflight
            .iter()
            .filter(|(_, (frame, _))| frame.len() > max)
            .map(|(req, _)| *req)
            .collect();
        for req in over {
            // The node came back with a smaller limit: this one would be refused.
            if let Some((frame, reply)) = inflight.remove(&req) {
                let _ = reply.send(Err(super::too_large(frame.len(), max)));
            }
        }
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
    refused: &mut Option<ErrorFrame>,
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
                    if let Err(ended) = on_frame(opts, frame, pushes, inflight, &mut acks, refused) {
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
    refused: &mut Option<ErrorFrame>,
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
                tracing::warn!(code = e.code.as_str(), message = %e.message, "error from the node");
                if refusal_of_a_request(&e) {
                    *refused = Some(e);
                }
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
        | ServerFrame::Forgotten { req, .. }
        | ServerFrame::MeshForgot { req, .. }
        | ServerFrame::Pruned { req, .. }
        | ServerFrame::Pong { req } => Some(*req),
        // Named one by one, so that a new answer cannot be left out unnoticed.
        ServerFrame::Welcome(_)
        | ServerFrame::Msg { .. }
        | ServerFrame::Error(_)
        | ServerFrame::Bye { .. } => None,
    }
}
