//! A node: the network edges for clients (the port, the WebSocket upgrade, sessions and their
//! requests) and the wiring of one data dir's store, core and mesh into a process.
//!
//! [`Node::start`] takes the data dir's lock *before* opening the store and binding the port,
//! so two nodes can never write one SQLite file. Shutdown is ordered: stop accepting, say
//! goodbye to every session, let in-flight sends commit, flush the store, then drop the lock.

pub mod dispatch;
pub mod http;
pub mod session;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, DataDirLock};
use crate::config::{DB_FILE, NodeConfig};
use crate::core::Router;
use crate::error::{Error, Result};
use crate::mesh::Mesh;
use crate::store::Store;
use crate::tls::{ClientTls, ServerTls};

/// The names a self-signed certificate is made for (besides `localhost` and the loopback
/// addresses): the host name, and the listen address's host unless it is a wildcard.
fn certificate_names(listen: &str) -> Vec<String> {
    let mut names = vec![gethostname::gethostname().to_string_lossy().into_owned()];
    if let Some((host, _)) = listen.rsplit_once(':')
        && !matches!(host, "0.0.0.0" | "[::]" | "::")
    {
        names.push(host.to_owned());
    }
    names
}

/// How long shutdown waits for its tasks (sessions saying goodbye, links, the accept loop)
/// before it flushes the store and releases the lock anyway. They end in milliseconds: every
/// wait ends when the node stops, and a goodbye to a client that does not read is given up after
/// 250 ms; this is the backstop that keeps a stop (and a restart after it) within about a second.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Pending connections the kernel may queue. A restarted node is hit by all its agents at
/// once; with tokio's default of 1024 the overflow waits for a SYN retransmit (1 s).
const LISTEN_BACKLOG: u32 = 4096;

async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "the address resolves to nothing",
        )
    }))
}

/// A running node.
pub struct Node {
    addr: SocketAddr,
    tls: bool,
    router: Arc<Router>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    server: tokio::task::JoinHandle<()>,
    lock: Option<DataDirLock>,
}

impl Node {
    /// Starts a node. Fails with [`Error::Locked`] if another node holds the data dir, and with a
    /// clear message if the address cannot be bound.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let secret = auth::load_or_create_secret(&config.data_dir)?;
        let store = Store::open(&config.data_dir.join(DB_FILE), config.sync)?;
        let listener = listen(&config.listen)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {}", config.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))?;
        let tls = match &config.tls {
            Some(source) => Some(ServerTls::load(
                source,
                &config.data_dir,
                &certificate_names(&config.listen),
            )?),
            None => None,
        };
        let (origin, meshed) = (
            config.node_id.clone(),
            config.mesh_secret_file.is_some() || config.backbone.is_some(),
        );
        store
            .write(move |c| crate::store::replication::configure(c, &origin, meshed))
            .await?;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        for m in store
            .write(|c| crate::store::names::merge_case_duplicates(c))
            .await?
        {
            tracing::warn!(kept = ?m.into, merged = ?m.from, "agent names that differ only in case are one agent now: merged");
        }
        let dashboard = Arc::new(crate::dashboard::Dashboard::new(
            secret.clone(),
            store.clone(),
            addr.port(),
            tls.is_some(),
        ));
        let router = Arc::new(
            Router::load(
                config.node_id.clone(),
                store,
                config.limits.clone(),
                secret,
                tracker.clone(),
            )
            .await?,
        );
        tracker.spawn(crate::core::retention::run(
            router.clone(),
            shutdown.clone(),
        ));
        let mesh = match &config.mesh_secret_file {
            Some(f) => Some(Mesh::start(
                router.clone(),
                crate::mesh::read_secret(f)?,
                config.peers.clone(),
                crate::mesh::Reach {
                    port: addr.port(),
                    tls: ClientTls::mesh(&config.tls_ca, Vec::new())?,
                    serves_tls: tls.is_some(),
                    allow_plaintext: config.allow_plaintext,
                    advertise: config.advertise.clone(),
                },
                shutdown.clone(),
                &tracker,
            )),
            None if !config.peers.is_empty() => {
                return Err(Error::Config(
                    "peers need a shared mesh secret: pass --mesh-secret-file (or mesh_secret_file in config.toml)".into(),
                ));
            }
            None => None,
        };
        let backbone = match config.backbone.clone() {
            Some(b) => Some(Arc::new(
                crate::backbone::Backbone::start(
                    router.clone(),
                    b,
                    &config.tls_ca,
                    shutdown.clone(),
                    &tracker,
                )
                .await?,
            )),
            None => None,
        };
        let app = http::app(http::AppState {
            backbone,
            router: router.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            mesh,
            connections: Arc::new(tokio::sync::Semaphore::new(router.limits.max_connections)),
            tls: tls.clone(),
            dashboard,
        });
        let server = tracker.spawn(http::serve(
            listener,
            app,
            router.limits.handshake_timeout,
            tls.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
        match &tls {
            Some(t) => tracing::info!(
                fingerprint_sha256 = %t.fingerprint,
                cert = %t.cert_path.display(),
                self_signed = t.self_signed,
                "TLS only on this port (wss://, https://)"
            ),
            None if !crate::plaintext::is_loopback_ip(addr.ip()) => tracing::warn!(
                %addr,
                "listening beyond this machine without TLS: tokens and mail cross the network in clear text (use --tls-cert/--tls-key or --tls-self-signed)"
            ),
            None => {}
        }
        tracing::info!(node = %config.node_id, %addr, data_dir = %config.data_dir.display(), "node listening");
        Ok(Node {
            addr,
            tls: tls.is_some(),
            router,
            shutdown,
            tracker,
            server,
            lock: Some(lock),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR` (`wss://` with TLS) for clients.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }

    /// The node's shared state.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// A token that, when cancelled, stops the node (what signal handlers cancel).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the shutdown token is cancelled, then stops in order.
    pub async fn run_until_stopped(self) -> Result<()> {
        self.shutdown.cancelled().await;
        self.stop().await
    }

    /// Stops the node: no new connections, goodbye to sessions, flush the store, release the lock.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        self.router.close_all();
        self.tracker.close();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not close in time");
        }
        let _ = tokio::time::timeout_at(deadline, &mut self.server).await;
        // Everything queued before this point is committed when it returns.
        let flushed = self.router.flush().await;
        // A WAL left behind keeps its size (tens of MB after a burst) until the next start.
        if let Err(e) = self.router.store.truncate_wal().await {
            tracing::debug!(error = %e, "could not empty the WAL at shutdown");
        }
        drop(self.lock.take());
        tracing::info!("node stopped");
        flushed
    }
}
