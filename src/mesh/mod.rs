//! The mesh: nodes on many machines, each a full replica.
//!
//! Every node keeps a log of the changes it made for its own clients (`store::replication`).
//! A link to a peer — dialed from `--peer`, or accepted on `/ws` — authenticates with the mesh
//! secret ([`handshake`]), then each side says how far it has applied the other's log (`sync`),
//! and the other streams the rest and every new entry as it commits (`events`). Applying is
//! idempotent and records the cursor in the same transaction, so a link that drops (or a node
//! that is killed) resumes exactly where it stopped: no entry lost, none applied twice.
//! Presence is soft state: each node sends a snapshot of its online agents on every change and
//! as a heartbeat every second; a link that is silent for 10 s is closed, and its node's agents
//! stop counting as online.
//!
//! The topology is a full mesh: a node ships only its own log, so every node must link to every
//! other. Links are two-way (configuring `--peer` on one side is enough), and nodes complete
//! the mesh themselves: each tells its peers which nodes it is linked to and where they can be
//! reached (`peers`), and a node dials those it has no link to — so every node may simply point
//! at one hub. Two nodes that dial each other at once keep one link: the one dialed by the node
//! whose id sorts first (a newer incarnation's link always replaces an older one's).
//!
//! The parts: [`frames`] (the wire), [`handshake`] (authentication, both ends), [`topology`]
//! (who is linked, which link stays; plain data), [`dialer`], [`link`] (one link's loop and
//! the tasks finishing its applies), [`status`] and [`conflicts`] (`/health`), [`nodes`]
//! (`switchboard mesh`: every node known, its lag; forgetting a departed one).
//!
//! Identity: a node id is chosen by the operator (by default the host name, so a cloned VM
//! repeats it); a data dir's instance id never repeats. The handshake carries both, a node
//! keys its cursor of each peer's log by the peer's instance, and a link claiming a node id
//! that another instance holds (`store::bind_peer`) is refused with `node_id_conflict` before
//! it can replace the holder's link. This file holds the handle the
//! node keeps, the accepting end, and the routing of delivery notices to live links.
//!
//! Locking: the topology lock is never held while calling the router. What the old design got
//! from calling the router under it — a replaced link cannot bring back presence for a peer
//! nobody is linked to — comes from link ids: [`topology::Topology::join`] numbers each live
//! link higher than the last, every presence report reaches the router with its link's id,
//! and `peer_gone(node, id)` makes the router ignore reports from that link and older ones.

mod applying;
mod compact;
mod conflicts;
mod dialer;
pub mod frames;
pub mod handshake;
mod link;
pub mod nodes;
mod relay;
pub mod routes;
pub mod status;
pub mod topology;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use conflicts::Conflict;
pub use frames::{PeerAddr, PeerError, PeerFrame};
pub use link::LinkEnd;
pub use nodes::{Lag, NodeView, Route};
pub use status::{LinkOrigin, LinkState, LinkStatus};

use crate::auth;
use crate::core::{DeliveryNotice, Metrics, Router};
use crate::error::{Error, Result};
use crate::transport::{TextSink, TextStream};
use conflicts::Conflicts;
use handshake::{Accepted, Us};
use link::{Opened, Via};
use nodes::Progresses;
use routes::Routes;
use status::Statuses;
use topology::Topology;

/// How this node is reached and reaches its peers.
pub struct Reach {
    /// The port this node listens on, told to peers so they can tell others.
    pub port: u16,
    /// How outgoing links do TLS (any certificate is accepted: the channel-bound handshake
    /// authenticates the peer; see `handshake`).
    pub tls: crate::tls::ClientTls,
    /// This node's port speaks TLS: peers tell others to dial it at `wss://`.
    pub serves_tls: bool,
    /// Plain links to and from other machines are permitted (`--allow-plaintext`).
    pub allow_plaintext: bool,
    /// What peers are told about dialing this node (`--advertise`).
    pub advertise: crate::config::Advertise,
}

/// What an accepted link's connection is.
#[derive(Debug, Clone, Copy)]
pub struct Channel {
    /// It is TLS.
    pub tls: bool,
    /// Its channel binding (none when plain).
    pub binding: crate::tls::ChannelBinding,
}

/// What the mesh keeps per live link: how to end it, and its queue of frames to send.
struct LinkHandle {
    cancel: CancellationToken,
    /// Frames for the link to send (delivery notices).
    tx: mpsc::Sender<String>,
}

/// The mesh side of a node.
pub struct Mesh {
    router: Arc<Router>,
    secret: Vec<u8>,
    statuses: Statuses,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Its port, its TLS, and what plain links it permits.
    reach: Reach,
    topology: Mutex<Topology<LinkHandle>>,
    /// Bumped on every change of `topology`: links re-tell their peers, dialers re-check.
    changed: tokio::sync::watch::Sender<u64>,
    /// Sequence numbers of this node's dials (see `PeerAuth::seq`).
    next_dial: AtomicU64,
    /// Presence snapshot versions, shared by all links so that a link replacing another
    /// continues the sequence the peer has seen.
    presence_version: AtomicU64,
    /// Claims of a node id held by another instance, refused here.
    conflicts: Conflicts,
    /// What this run has learned of each peer's log and cursor (`switchboard mesh`).
    progress: Arc<Progresses>,
    /// Nodes reached through peers, and the presence snapshot of every node (see `routes`).
    /// Locked after `topology` when both are.
    routes: Mutex<Routes>,
    /// Bumped when routes or snapshots change: links tell peers that relay.
    routes_version: tokio::sync::watch::Sender<u64>,
    /// How far each origin's log is applied here: what links relay (see `relay`).
    relays: Arc<relay::Heads>,
    /// What peers said they have applied, for the next compaction pass (see `compact`).
    reports: compact::Reports,
}

/// Reads the mesh secret file.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("mesh secret file {}: {e}", path.display())))?;
    let s = s.trim();
    if s.len() < 16 {
        return Err(Error::Config(format!(
            "mesh secret file {}: the secret must be at least 16 characters",
            path.display()
        )));
    }
    Ok(s.as_bytes().to_vec())
}

impl Mesh {
    /// Starts dialing every peer; accepted links arrive through [`Mesh::accept`]. Every task
    /// the mesh starts, now or later, belongs to `tracker`.
    pub fn start(
        router: Arc<Router>,
        secret: Vec<u8>,
        peers: Vec<String>,
        reach: Reach,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Arc<Mesh> {
        let router_id = router.node_id.clone();
        let mesh = Arc::new(Mesh {
            topology: Mutex::new(Topology::new(&router.node_id)),
            router,
            secret,
            statuses: Statuses::default(),
            shutdown,
            tracker: tracker.clone(),
            reach,
            changed: tokio::sync::watch::channel(0).0,
            next_dial: AtomicU64::new(1),
            presence_version: AtomicU64::new(0),
            conflicts: Conflicts::default(),
            progress: Arc::default(),
            routes: Mutex::new(Routes::new(&router_id)),
            routes_version: tokio::sync::watch::channel(0).0,
            relays: Arc::default(),
            reports: compact::Reports::default(),
        });
        tracker.spawn(mesh.clone().load_instances());
        tracker.spawn(mesh.clone().expire_routes());
        tracker.spawn(mesh.clone().compact_passes());
        let (notices, notice_rx) = mpsc::channel::<DeliveryNotice>(1024);
        mesh.router.set_delivery_notices(notices);
        tracker.spawn(mesh.clone().route_notices(notice_rx));
        for url in peers {
            mesh.spawn_configured(url);
        }
        mesh
    }

    /// Sends each delivery notice towards the message's origin: on its live link, or to the
    /// peer it is reached through (see `relay`).
    async fn route_notices(self: Arc<Self>, mut rx: mpsc::Receiver<DeliveryNotice>) {
        loop {
            let n = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                n = rx.recv() => match n { Some(n) => n, None => return },
            };
            self.send_notice(&n.origin, vec![n.id], 0);
        }
    }

    /// Link states for `/health`.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.statuses.all()
    }

    /// Node-id conflicts refused recently, for `/health` (a node with any is degraded).
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.conflicts.recent()
    }

    /// (peers linked now, peer nodes known): fewer linked than known means this node is cut off
    /// from part of the mesh — what `/metrics` exposes for alerting.
    pub fn counts(&self) -> (usize, usize) {
        self.topology.lock().counts()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Serves a peer that dialed us; `hello_nonce` is from its first frame, already read.
    pub async fn accept(
        self: Arc<Self>,
        hello_nonce: String,
        mut sink: TextSink,
        mut stream: TextStream,
        remote: std::net::SocketAddr,
        channel: Channel,
    ) {
        if !channel.tls
            && !self.reach.allow_plaintext
            && !crate::plaintext::is_loopback_ip(remote.ip())
        {
            tracing::warn!(%remote, "refused a plain peer link from another machine (give this node TLS, or --allow-plaintext)");
            let refusal = PeerFrame::refusal(
                PeerError::PlaintextRefused,
                "this node refuses plain peer links from other machines: run it with TLS \
                 (--tls-cert/--tls-key or --tls-self-signed) and dial wss://, or pass \
                 --allow-plaintext to both nodes"
                    .into(),
            );
            let _ = handshake::send(&mut sink, refusal).await;
            return;
        }
        let me = self.router.node_id.clone();
        let us = Us {
            secret: &self.secret,
            node: &me,
            incarnation: self.router.incarnation,
            instance: self.router.store.instance(),
            binding: channel.binding.as_ref().map_or(&[][..], |b| &b[..]),
        };
        let (peer, order, instance) =
            match handshake::accept(&mut sink, &mut stream, &us, &hello_nonce).await {
                Ok(Accepted::Peer {
                    node,
                    order,
                    instance,
                }) if node != me => (node, order, instance),
                Ok(_) => return,
                Err(_) => {
                    Metrics::inc(&self.router.metrics.auth_failures_total);
                    tracing::warn!(%remote, "refused a peer link: mesh authentication failed");
                    let refusal = PeerFrame::refusal(
                        PeerError::Unauthorized,
                        "mesh authentication failed".into(),
                    );
                    let _ = handshake::send(&mut sink, refusal).await;
                    return;
                }
            };
        // One entry per accepted link: a restarted peer's new link must not share the old one's.
        let key = format!(
            "accepted {peer} {}",
            auth::random_hex().get(..8).unwrap_or_default()
        );
        let ip = Some(remote.ip());
        tracing::debug!(?peer, %remote, "mesh handshake done (accepted)");
        let opened = Opened {
            peer,
            key: key.clone(),
            origin: LinkOrigin::Accepted,
            via: Via::Accepted(ip),
            order,
            instance,
        };
        self.clone().link(opened, sink, stream).await;
        // An accepted link that ends is gone for good (the peer dials again): forget it.
        self.statuses.remove(&key);
    }
}
