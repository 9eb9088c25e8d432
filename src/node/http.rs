//! The node's one port: the accept loop, and the routes `/ws` (clients and peers, see
//! [`upgrade`](super::upgrade)), `/health`, `/metrics`, and the web dashboard's (`/`, see
//! [`crate::dashboard`]). hyper and axum do the HTTP.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::Router;
use crate::tls::{ChannelBinding, ServerTls};

/// How a request's connection came in, for the handlers: whether it is TLS, and the
/// session's channel binding (what a peer's mesh proof is bound to).
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// The connection is TLS.
    pub tls: bool,
    /// Its `tls-exporter` value (none on plain connections).
    pub binding: ChannelBinding,
}

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The node's state.
    pub router: Arc<Router>,
    /// Cancelled when the node stops.
    pub shutdown: CancellationToken,
    /// Owns every session task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Peer links, when the node is part of a mesh.
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
    /// The NATS backbone, when the node replicates through one.
    pub backbone: Option<Arc<crate::backbone::Backbone>>,
    /// One permit per open WebSocket: the connection cap.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// The port's TLS, if it speaks TLS.
    pub tls: Option<ServerTls>,
    /// The web dashboard's logins and sessions.
    pub dashboard: Arc<crate::dashboard::Dashboard>,
}

/// Serves `app` on `listener` until `stop` is cancelled: what axum's `serve` does, plus a
/// deadline for request headers (`handshake_timeout`: axum sets none, so a client that
/// connected and then said nothing held its socket forever) and Nagle off (it would add up to
/// 40 ms to small frames). With `tls`, every connection is TLS first (within the same
/// deadline); one that is not is answered in plain text and closed. Each request carries the
/// peer address as `ConnectInfo` and its [`Transport`]. Upgraded connections (WebSockets) leave
/// hyper and live on as session tasks.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: std::time::Duration,
    tls: Option<ServerTls>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let Some(tls) = tls else {
                let plain = Transport {
                    tls: false,
                    binding: None,
                };
                return serve_connection(tcp, remote, plain, app, header_timeout, stop).await;
            };
            let accepted = tokio::select! {
                a = crate::tls::accept(&tls, tcp, remote, header_timeout) => a,
                _ = stop.cancelled() => None,
            };
            if let Some((stream, binding)) = accepted {
                let t = Transport { tls: true, binding };
                serve_connection(stream, remote, t, app, header_timeout, stop).await;
            }
        });
    }
}

/// HTTP/1.1 on one connection, plain or TLS, until it ends or the node stops.
async fn serve_connection<I>(
    io: I,
    remote: std::net::SocketAddr,
    transport: Transport,
    app: axum::Router,
    header_timeout: std::time::Duration,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(
        move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(remote));
            req.extensions_mut().insert(transport);
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, req.map(axum::body::Body::new)).await }
        },
    );
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
    }
}

/// The HTTP routes.
pub fn app(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/ws", get(super::upgrade::ws))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .with_state(state)
}

/// The node's resident memory, read from the kernel.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn health(State(s): State<AppState>) -> Response {
    let (online, sessions) = s.router.counts();
    let conflicts = s.mesh.as_ref().map(|m| m.conflicts()).unwrap_or_default();
    let fault = s.router.store.fault().map(|f| f.reason());
    let backbone_problems = s
        .backbone
        .as_ref()
        .map(|b| b.problems())
        .unwrap_or_default();
    let status = if s.shutdown.is_cancelled() {
        "stopping"
    } else if !conflicts.is_empty() || fault.is_some() || !backbone_problems.is_empty() {
        // Another data dir claims a peer's node id: its mail is held back until one is renamed.
        // Or the store cannot write: sends are refused until it can. Or the backbone's stream
        // dropped entries this node never read, or no NATS server can be reached.
        "degraded"
    } else {
        "ok"
    };
    let mut reasons: Vec<String> = fault.iter().cloned().collect();
    if !conflicts.is_empty() {
        reasons.push("another data dir claims a peer's node id (see conflicts)".into());
    }
    reasons.extend(backbone_problems);
    let size = store_size(&s).await;
    let body = serde_json::json!({
        "node_id": s.router.node_id,
        "instance": s.router.store.instance(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.router.uptime().as_secs(),
        "agents_online": online,
        "sessions": sessions,
        "connections": s.router.metrics.connections_active.load(Ordering::Relaxed),
        "rss_bytes": rss_bytes(),
        "peers": s.mesh.as_ref().map(|m| m.status()).unwrap_or_default(),
        "nodes": match (&s.mesh, &s.backbone) {
            (Some(m), _) => m.nodes(),
            (None, Some(b)) => b.nodes(),
            (None, None) => Vec::new(),
        },
        "backbone": s.backbone.as_ref().map(|b| b.status()),
        "conflicts": conflicts,
        "store": {
            "bytes": size.bytes,
            "messages": size.messages,
            "log_entries": size.log_entries,
            "fault": fault,
        },
        "reasons": reasons,
        "tls": s.tls.as_ref().map(|t| serde_json::json!({
            "fingerprint_sha256": t.fingerprint,
            "self_signed": t.self_signed,
        })),
        "status": status,
    });
    axum::Json(body).into_response()
}

/// The store's size; on a failed count (the store stopping) the file size alone.
async fn store_size(s: &AppState) -> crate::store::Size {
    match s.router.store.size().await {
        Ok(size) => size,
        Err(_) => crate::store::Size {
            bytes: s.router.store.file_bytes(),
            ..Default::default()
        },
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let size = store_size(&s).await;
    let r = &s.router;
    let (online, sessions) = r.counts();
    let stats = r.store.stats();
    let (linked, known) = match (&s.mesh, &s.backbone) {
        (Some(m), _) => m.counts(),
        (None, Some(b)) => b.counts(),
        (None, None) => (0, 0),
    };
    let text = r.metrics.render(&[
        (
            "peers_linked",
            "Peer nodes with a live link now.",
            linked as u64,
        ),
        (
            "peers_known",
            "Peer nodes this node has linked to or heard of; more than peers_linked means part of the mesh is out of reach.",
            known as u64,
        ),
        (
            "agents_online",
            "Agents with an open agent session.",
            online as u64,
        ),
        ("sessions", "Open authenticated sessions.", sessions as u64),
        (
            "store_commits",
            "Store transactions committed.",
            stats.commits.load(Ordering::Relaxed),
        ),
        (
            "store_jobs",
            "Store jobs run (group commit packs many per transaction).",
            stats.jobs.load(Ordering::Relaxed),
        ),
        (
            "store_bytes",
            "The store's database and WAL files on disk.",
            size.bytes,
        ),
        ("store_messages", "Messages stored.", size.messages),
        (
            "store_log_entries",
            "Entries in this node's replication log.",
            size.log_entries,
        ),
        (
            "store_degraded",
            "1 while the store cannot write (full disk, I/O errors): sends are refused.",
            u64::from(r.store.fault().is_some()),
        ),
        ("rss_bytes", "Resident memory.", rss_bytes().unwrap_or(0)),
        (
            "uptime_seconds",
            "Seconds since start.",
            r.uptime().as_secs(),
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
