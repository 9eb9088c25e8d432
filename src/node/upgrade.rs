//! From an HTTP request on `/ws` to a running connection: the WebSocket upgrade, then the
//! first frame decides what the connection is — a client's `hello` starts a session, a peer's
//! `peer_hello` a mesh link, `dashboard`/`dashboard_login` a web dashboard's connection.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::create_response_with_body;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};

use super::http::{AppState, Transport};
use super::session;
use crate::core::Metrics;
use crate::mesh::PeerFrame;
use crate::protocol::{ClientFrame, ErrorCode, Hello};
use crate::transport::{self, Incoming, Reader};

/// The socket under an accepted WebSocket.
pub type Socket = TokioIo<hyper::upgrade::Upgraded>;

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

/// `GET /ws`: upgrades, within the connection cap, and runs the connection as a tracked task.
pub async fn ws(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    if s.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is shutting down\n",
        )
            .into_response();
    }
    // The permit is taken before the upgrade and lives as long as the connection, so the cap
    // holds however many upgrades race.
    let Ok(permit) = s.connections.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let response = match create_response_with_body(&req, Body::empty) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a WebSocket upgrade: {e}\n"),
            )
                .into_response();
        }
    };
    let token = bearer(req.headers());
    let transport = req.extensions().get::<Transport>().copied();
    let browser =
        crate::dashboard::live::Browser::of(&s, req.headers(), transport.is_some_and(|t| t.tls));
    let upgrade = hyper::upgrade::on(&mut req);
    let max = s.router.limits.max_frame_bytes;
    // Small buffers: an idle connection should cost a few KiB, not the 128 KiB defaults.
    // Writes are buffered up to 16 KiB and flushed per batch.
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024);
    let tracker = s.tracker.clone();
    tracker.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    WsRole::Server,
                    Some(config),
                )
                .await;
                let how = How {
                    token,
                    remote,
                    transport,
                    browser,
                };
                run(ws, s, how, permit).await;
            }
            Err(e) => tracing::debug!(%remote, error = %e, "WebSocket upgrade failed"),
        }
    });
    response
}

/// What the first frame says the connection is.
enum First {
    /// A client's hello.
    Client(Hello),
    /// A peer node's `peer_hello` with its nonce.
    Peer(String),
    /// A dashboard's page or login command.
    Dashboard(crate::dashboard::login::First),
}

/// How a connection came in: what its upgrade request carried.
struct How {
    token: Option<String>,
    remote: SocketAddr,
    transport: Option<Transport>,
    browser: crate::dashboard::live::Browser,
}

async fn run(ws: WebSocketStream<Socket>, s: AppState, how: How, _permit: OwnedSemaphorePermit) {
    let How {
        token,
        remote,
        transport,
        browser,
    } = how;
    let metrics = &s.router.metrics;
    Metrics::inc(&metrics.connections_total);
    metrics
        .connections_active
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut writer, mut reader) = transport::split(ws);
    let first = first_frame(&mut reader, s.router.limits.handshake_timeout, &s.shutdown).await;
    match first {
        Ok(First::Client(hello)) => session::run(writer, reader, hello, token, &s).await,
        Ok(First::Dashboard(first)) => {
            crate::dashboard::live::run(writer, reader, first, browser, &s).await
        }
        Ok(First::Peer(nonce)) => match s.mesh.clone() {
            Some(mesh) => {
                let binding = transport.and_then(|t| t.binding);
                let tls = transport.is_some_and(|t| t.tls);
                mesh.accept(
                    nonce,
                    writer.into_text(),
                    reader.into_text(),
                    remote,
                    crate::mesh::Channel { tls, binding },
                )
                .await
            }
            None => {
                Metrics::inc(&metrics.auth_failures_total);
                tracing::warn!(%remote, "refused a peer link: this node has no mesh secret");
                let f = PeerFrame::refusal(
                    crate::mesh::PeerError::Unauthorized,
                    "mesh authentication failed".into(),
                );
                let _ = writer.send(f.text().into()).await;
            }
        },
        Err(None) => {}
        Err(Some((ErrorCode::ShuttingDown, message))) => {
            let refuse = writer.refuse(ErrorCode::ShuttingDown, message);
            let _ = tokio::time::timeout(session::GOODBYE, refuse).await;
        }
        Err(Some((code, message))) => {
            Metrics::inc(&metrics.frames_rejected_total);
            writer.refuse(code, message).await;
        }
    }
    metrics
        .connections_active
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Reads the first frame within the handshake timeout, or until the node stops (a socket that
/// says nothing must not hold the shutdown). `Err(None)`: the socket closed before saying
/// anything (nothing to answer).
async fn first_frame(
    reader: &mut Reader<Socket>,
    timeout: std::time::Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<First, Option<(ErrorCode, String)>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let text = loop {
        let next = tokio::select! {
            n = tokio::time::timeout_at(deadline, reader.next()) => n,
            _ = shutdown.cancelled() => {
                return Err(Some((ErrorCode::ShuttingDown, "the node is shutting down".into())));
            }
        };
        match next {
            Err(_) => {
                return Err(Some((
                    ErrorCode::HandshakeTimeout,
                    format!("no hello within {} s", timeout.as_secs()),
                )));
            }
            Ok(Incoming::Closed) => return Err(None),
            Ok(Incoming::Text(t)) => break t,
            // Keep-alives before hello are fine.
            Ok(Incoming::Alive) => continue,
            Ok(Incoming::Binary) => {
                return Err(Some((
                    ErrorCode::BadFrame,
                    "the first frame must be a JSON text frame {\"op\":\"hello\",...}".into(),
                )));
            }
            Ok(other) => return Err(Some(other.refusal())),
        }
    };
    if let Ok(PeerFrame::PeerHello { nonce, .. }) = serde_json::from_str::<PeerFrame>(&text) {
        return Ok(First::Peer(nonce));
    }
    if let Ok(d) = serde_json::from_str::<crate::dashboard::login::First>(&text) {
        return Ok(First::Dashboard(d));
    }
    match serde_json::from_str::<ClientFrame>(&text) {
        Ok(ClientFrame::Hello(h)) => Ok(First::Client(h)),
        Ok(_) => Err(Some((
            ErrorCode::NotAuthenticated,
            "the first frame must be hello: {\"op\":\"hello\",\"agent\":\"NAME\",\"token\":\"...\",\"v\":1}".into(),
        ))),
        Err(e) => Err(Some((ErrorCode::BadFrame, format!("bad hello frame: {e}")))),
    }
}
