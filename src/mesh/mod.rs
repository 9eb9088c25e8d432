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

pub mod handshake;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::core::{DeliveryNotice, Metrics, RemoteAgent, Router};
use crate::error::{Error, Result};
use crate::message::now_ms;
use crate::store::replication::{self, Event};

/// Events per `events` frame.
const BATCH: u32 = 512;
/// Liveness heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Presence changes within this window go out as one snapshot (a restarted node's agents
/// reconnect by the thousand).
const PRESENCE_COALESCE: Duration = Duration::from_millis(20);
/// A link silent this long is dead.
const SILENCE: Duration = Duration::from_secs(10);
/// Time for the whole handshake.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// `events` frames being applied at once per link. The link queues each apply and reads on;
/// a completer takes the results in order. Waiting for each commit before reading the next
/// frame made one slow disk write delay every frame queued behind it by a commit each.
const APPLYING: usize = 64;
/// A node heard of through a peer is dialed only after it has stayed unlinked this long: a
/// node that is starting dials its configured peers itself, and two dials crossing would make
/// two links where one is closed again.
const DISCOVERY_GRACE: Duration = Duration::from_secs(1);
/// Nodes this node will look for through its peers' reports (a bound, not a design limit).
const DISCOVERY_MAX: usize = 256;
/// A reported node that stays unreachable this long, and that no peer reports any more, is
/// forgotten: a decommissioned node is not dialed (nor counted in `peers_known`) forever.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// The code of the error an acceptor answers when the dialer expected another node.
const WRONG_NODE: &str = "wrong_node";
/// Longest URL taken from a peer's report.
const URL_MAX: usize = 512;
/// A link that lasted this long resets its dialer's backoff; one refused or closed at once
/// does not, so a dialer does not hammer a peer that keeps refusing it.
const STABLE_LINK: Duration = Duration::from_secs(2);

/// Frames between nodes on `/ws`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PeerFrame {
    /// Dialer's first frame.
    PeerHello {
        /// Dialer's random nonce.
        nonce: String,
        /// Mesh protocol version (1).
        v: u32,
    },
    /// Acceptor's challenge.
    PeerChallenge {
        /// Acceptor's random nonce.
        nonce: String,
    },
    /// Dialer proves it knows the secret.
    PeerAuth {
        /// Dialer's node id.
        node: String,
        /// HMAC proof.
        proof: String,
        /// Dialer's incarnation: a link from a newer one replaces any older link.
        #[serde(default)]
        incarnation: u64,
        /// The node the dialer means to reach (a URL it was told may now lead elsewhere): any
        /// other node refuses the link before it can replace a good one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
        /// Increases with every dial the dialer makes: of two links it made to the same node,
        /// both ends keep the later one, whatever order they saw them in.
        #[serde(default)]
        seq: u64,
    },
    /// Acceptor proves it knows the secret.
    PeerWelcome {
        /// Acceptor's node id.
        node: String,
        /// HMAC proof.
        proof: String,
        /// Acceptor's incarnation.
        #[serde(default)]
        incarnation: u64,
    },
    /// "I have applied your log up to `cursor`": send me what follows.
    Sync {
        /// Last seq applied.
        cursor: u64,
    },
    /// Entries of the sender's own log, in order.
    Events {
        /// The entries.
        events: Vec<Event>,
    },
    /// Entries applied up to here.
    Ack {
        /// Last seq applied.
        cursor: u64,
    },
    /// The sender's online agents (also the heartbeat).
    Presence {
        /// Increases on every restart of the node.
        incarnation: u64,
        /// Increases on every change within an incarnation.
        version: u64,
        /// Agents online there.
        agents: Vec<RemoteAgent>,
    },
    /// Liveness, every second; presence itself travels only when it changes.
    Heartbeat,
    /// The nodes the sender is linked to and where they can be reached, so that nodes linked
    /// through a common peer find and dial each other. Sent when the set changes.
    Peers {
        /// The port the sender listens on: the receiver reaches it at the address the link
        /// came from (when the sender dialed).
        port: u16,
        /// The sender's live links, except to the receiver.
        nodes: Vec<PeerAddr>,
    },
    /// A session of a recipient on the sender's node holds these messages.
    Delivered {
        /// Message ids.
        ids: Vec<String>,
    },
    /// The link is refused.
    Error {
        /// Stable code.
        code: String,
        /// Explanation.
        message: String,
    },
}

/// A node and a URL it can be dialed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerAddr {
    /// Node id.
    pub node: String,
    /// `ws://HOST:PORT`.
    pub url: String,
}

impl PeerFrame {
    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// A link's state, for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// Peer node id, once known.
    pub node: Option<String>,
    /// `configured` (a `--peer` URL), `discovered` (a node peers told us about) or
    /// `accepted` (the peer dialed).
    pub origin: &'static str,
    /// The URL dialed (dialed links only).
    pub url: Option<String>,
    /// `connecting`, `up`, `down`, or `standby` (the peer is linked by another connection).
    pub state: &'static str,
    /// Since when (RFC 3339).
    pub since: String,
    /// Last error, if any.
    pub error: Option<String>,
    /// Our log entries the peer has confirmed.
    pub acked: u64,
}

/// The mesh side of a node.
pub struct Mesh {
    router: Arc<Router>,
    secret: Vec<u8>,
    links: Mutex<BTreeMap<String, LinkStatus>>,
    shutdown: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    /// The port this node listens on, told to peers so they can tell others.
    port: u16,
    topology: Mutex<Topology>,
    /// Bumped on every change of `topology`: links re-tell their peers, dialers re-check.
    changed: tokio::sync::watch::Sender<u64>,
    next_link: AtomicU64,
    /// Sequence numbers of this node's dials (see `PeerAuth::seq`).
    next_dial: AtomicU64,
    /// Presence snapshot versions, shared by all links so that a link replacing another
    /// continues the sequence the peer has seen.
    presence_version: AtomicU64,
}

/// How a link came to be.
#[derive(Debug, Clone)]
enum Via {
    /// This node dialed the URL.
    Dialed(String),
    /// The peer dialed from this address.
    Accepted(Option<IpAddr>),
}

/// The one live link to a peer node.
struct Live {
    id: u64,
    dialed: bool,
    order: Order,
    cancel: CancellationToken,
    /// Where the peer can be reached, as far as this node knows: the URL dialed, or the
    /// peer's address and the port it reports.
    url: Option<String>,
    /// Frames for the link to send (delivery notices).
    tx: mpsc::Sender<String>,
}

/// What ranks two links between the same nodes: the peer's incarnation, then (for links made
/// in the same direction) the dialer's sequence number. Both ends see the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Order {
    incarnation: u64,
    seq: u64,
}

/// Why [`Mesh::join`] refused a link.
enum Refused {
    /// The live link comes from a newer incarnation of the peer.
    OlderRun,
    /// The live link is the one both ends keep.
    Duplicate,
}

/// Who is linked to whom, behind one lock.
#[derive(Default)]
struct Topology {
    live: HashMap<String, Live>,
    /// Nodes that linked peers report being linked to: node → (reporting peer → URL).
    heard: HashMap<String, BTreeMap<String, String>>,
    /// The URL each node was last linked at: a node once linked is dialed again when it
    /// returns, even if the peer that introduced it is gone.
    remembered: HashMap<String, String>,
    /// Nodes behind a configured `--peer` URL: their own dialer handles them.
    configured: HashSet<String>,
    /// Nodes with a discovery dialer running.
    discovering: HashSet<String>,
}

impl Topology {
    /// Whether link `id` is the live link to `peer`.
    fn is_live(&self, peer: &str, id: u64) -> bool {
        self.live.get(peer).is_some_and(|l| l.id == id)
    }

    /// Notes a node to look for; true if it needs a dialer.
    fn discover(&mut self, node: &str) -> bool {
        if self.discovering.contains(node) || self.discovering.len() >= DISCOVERY_MAX {
            return false;
        }
        self.discovering.insert(node.to_owned())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

fn set_status(mesh: &Mesh, key: &str, f: impl FnOnce(&mut LinkStatus)) {
    let mut links = lock(&mesh.links);
    let origin = match key.split_once(' ') {
        Some(("dial", _)) => "configured",
        Some(("discover", _)) => "discovered",
        _ => "accepted",
    };
    let entry = links.entry(key.to_owned()).or_insert_with(|| LinkStatus {
        node: None,
        origin,
        url: None,
        state: "connecting",
        since: crate::message::rfc3339(now_ms()),
        error: None,
        acked: 0,
    });
    f(entry);
}

/// What a dialer looks for.
enum Target {
    /// A configured `--peer` URL; the node behind it is learned at the first handshake.
    Url(String),
    /// A node peers report: dialed at the URLs they give, while nobody links it.
    Node(String),
}

impl Mesh {
    /// Starts dialing every peer; accepted links arrive through [`Mesh::accept`].
    pub fn start(
        router: Arc<Router>,
        secret: Vec<u8>,
        peers: Vec<String>,
        port: u16,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Arc<Mesh> {
        let mesh = Arc::new(Mesh {
            router,
            secret,
            links: Mutex::new(BTreeMap::new()),
            shutdown,
            tracker: tracker.clone(),
            port,
            topology: Mutex::new(Topology::default()),
            changed: tokio::sync::watch::channel(0).0,
            next_link: AtomicU64::new(1),
            next_dial: AtomicU64::new(1),
            presence_version: AtomicU64::new(0),
        });
        let (notices, mut notice_rx) = mpsc::channel::<DeliveryNotice>(1024);
        mesh.router.set_delivery_notices(notices);
        let m = mesh.clone();
        tracker.spawn(async move {
            loop {
                let n = tokio::select! {
                    _ = m.shutdown.cancelled() => return,
                    n = notice_rx.recv() => match n { Some(n) => n, None => return },
                };
                let tx = lock(&m.topology).live.get(&n.origin).map(|l| l.tx.clone());
                if let Some(tx) = tx {
                    let f = PeerFrame::Delivered { ids: vec![n.id] };
                    let _ = tx.try_send(f.text());
                }
            }
        });
        for url in peers {
            let m = mesh.clone();
            tracker.spawn(async move { m.dial_forever(Target::Url(url)).await });
        }
        mesh
    }

    /// Link states for `/health`.
    pub fn status(&self) -> Vec<LinkStatus> {
        lock(&self.links).values().cloned().collect()
    }

    /// (peers linked now, peer nodes known): fewer linked than known means this node is cut off
    /// from part of the mesh — what `/metrics` exposes for alerting.
    pub fn counts(&self) -> (usize, usize) {
        let t = lock(&self.topology);
        let known: HashSet<&String> = t
            .live
            .keys()
            .chain(t.remembered.keys())
            .chain(
                t.heard
                    .iter()
                    .filter(|(_, by)| !by.is_empty())
                    .map(|(n, _)| n),
            )
            .chain(t.configured.iter())
            .collect();
        (t.live.len(), known.len())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Makes a new authenticated link the live one to `peer`, or refuses it (with the reason)
    /// when the live one should stay. A link from a newer incarnation of the peer wins: the older one
    /// is dead. Of two links of the same incarnation made in opposite directions, both nodes
    /// keep the one dialed by the node whose id sorts first, so both close the same one. Of two
    /// links made in the same direction, the later dial wins (a redial after a half-dead link).
    fn join(
        &self,
        peer: &str,
        via: &Via,
        order: Order,
        tx: mpsc::Sender<String>,
    ) -> std::result::Result<(u64, CancellationToken), Refused> {
        let dialed = matches!(via, Via::Dialed(_));
        let me_first = self.router.node_id.as_str() < peer;
        let mut t = lock(&self.topology);
        if let Some(cur) = t.live.get(peer) {
            if order.incarnation < cur.order.incarnation {
                return Err(Refused::OlderRun);
            }
            if order.incarnation == cur.order.incarnation {
                let keep_current = if cur.dialed != dialed {
                    cur.dialed == me_first
                } else {
                    order.seq < cur.order.seq
                };
                if keep_current {
                    return Err(Refused::Duplicate);
                }
            }
            cur.cancel.cancel();
        }
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let cancel = self.shutdown.child_token();
        let url = match via {
            Via::Dialed(u) => Some(u.clone()),
            Via::Accepted(_) => None,
        };
        if let Some(u) = &url {
            t.remembered.insert(peer.to_owned(), u.clone());
        }
        t.live.insert(
            peer.to_owned(),
            Live {
                id,
                dialed,
                order,
                cancel: cancel.clone(),
                url,
                tx,
            },
        );
        drop(t);
        self.bump();
        Ok((id, cancel))
    }

    /// Link `id` to `peer` ended; if it was the live one, the peer is unlinked.
    fn leave(&self, peer: &str, id: u64) {
        let mut t = lock(&self.topology);
        if t.is_live(peer, id) {
            t.live.remove(peer);
            for by in t.heard.values_mut() {
                by.remove(peer);
            }
            self.router.peer_gone(peer);
        }
        drop(t);
        self.bump();
    }

    /// Runs `f` if link `id` is still the live link to `peer`, under the topology lock, so a
    /// replaced link cannot act on the peer's behalf after its successor has come and gone
    /// (it would bring back presence for a peer nobody is linked to).
    fn if_live(&self, peer: &str, id: u64, f: impl FnOnce()) {
        let t = lock(&self.topology);
        if t.is_live(peer, id) {
            f();
        }
    }

    /// `url` answered as another node than `node`: stop dialing `node` there.
    fn forget_url(&self, node: &str, url: &str) {
        let mut t = lock(&self.topology);
        if t.remembered.get(node).is_some_and(|u| u == url) {
            t.remembered.remove(node);
        }
        if let Some(by) = t.heard.get_mut(node) {
            by.retain(|_, u| u != url);
        }
    }

    /// Stops looking for `node` (see [`FORGET_AFTER`]), unless it was linked or reported
    /// again since the caller looked. True if it was forgotten.
    fn forget_node(&self, node: &str, key: &str) -> bool {
        let mut t = lock(&self.topology);
        if t.live.contains_key(node)
            || t.configured.contains(node)
            || t.heard.get(node).is_some_and(|by| !by.is_empty())
        {
            return false;
        }
        t.remembered.remove(node);
        t.heard.remove(node);
        t.discovering.remove(node);
        drop(t);
        lock(&self.links).remove(key);
        tracing::info!(%node, "forgot a node that has been out of reach for an hour");
        true
    }

    /// What to tell `peer` in a `peers` frame: every other live link with a known URL.
    fn linked_except(&self, peer: &str) -> Vec<PeerAddr> {
        let t = lock(&self.topology);
        let mut nodes: Vec<PeerAddr> = t
            .live
            .iter()
            .filter(|(node, _)| node.as_str() != peer)
            .filter_map(|(node, l)| {
                Some(PeerAddr {
                    node: node.clone(),
                    url: l.url.clone()?,
                })
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        nodes
    }

    /// A peer's `peers` frame: where it can be reached itself (if it dialed us), and which
    /// nodes it is linked to. Starts a dialer for each node first heard of.
    fn heard_from(
        self: &Arc<Self>,
        peer: &str,
        id: u64,
        via: &Via,
        port: u16,
        nodes: Vec<PeerAddr>,
    ) {
        let me = self.router.node_id.as_str();
        let mut fresh = Vec::new();
        let mut t = lock(&self.topology);
        // A replaced link's last report says nothing the live link will not say.
        if !t.is_live(peer, id) {
            return;
        }
        if let Via::Accepted(Some(ip)) = via
            && let Some(live) = t.live.get_mut(peer)
        {
            let url = format!(
                "ws://{}",
                std::net::SocketAddr::new(ip.to_canonical(), port)
            );
            live.url = Some(url.clone());
            t.remembered.insert(peer.to_owned(), url);
            if t.discover(peer) {
                fresh.push(peer.to_owned());
            }
        }
        for by in t.heard.values_mut() {
            by.remove(peer);
        }
        for n in nodes {
            if n.node == me
                || n.node == peer
                || crate::message::validate_name(&n.node).is_err()
                || n.url.len() > URL_MAX
                || crate::config::validate_ws_url(&n.url).is_err()
            {
                continue;
            }
            if t.discover(&n.node) {
                fresh.push(n.node.clone());
            } else if !t.discovering.contains(&n.node) {
                continue; // past DISCOVERY_MAX
            }
            t.heard
                .entry(n.node)
                .or_default()
                .insert(peer.to_owned(), n.url);
        }
        drop(t);
        self.bump();
        for node in fresh {
            tracing::debug!(%node, via = %peer, "looking for a node when it is not linked");
            let m = self.clone();
            self.tracker
                .spawn(async move { m.dial_forever(Target::Node(node)).await });
        }
    }

    /// Waits until there is something to dial: for a configured URL, at once, unless the node
    /// behind it is linked already; for a reported node, once it has stayed unlinked for the
    /// grace period (counted from `unlinked_since`, kept across retries) while there is a URL
    /// for it. `None` on shutdown.
    async fn next_dial(
        &self,
        target: &Target,
        known: Option<&str>,
        attempt: &mut u32,
        key: &str,
        unlinked_since: &mut Option<tokio::time::Instant>,
    ) -> Option<String> {
        let mut changed = self.changed.subscribe();
        loop {
            let now = tokio::time::Instant::now();
            let (linked, candidate, reported) = {
                let t = lock(&self.topology);
                match target {
                    Target::Url(u) => (
                        known.is_some_and(|n| t.live.contains_key(n)),
                        Some(u.clone()),
                        true,
                    ),
                    Target::Node(n) => {
                        let urls: Vec<&String> = t
                            .remembered
                            .get(n)
                            .into_iter()
                            .chain(t.heard.get(n).into_iter().flat_map(|by| by.values()))
                            .collect();
                        let url = (!urls.is_empty())
                            .then(|| urls[*attempt as usize % urls.len()].clone());
                        let idle = t.live.contains_key(n) || t.configured.contains(n);
                        let reported = t.heard.get(n).is_some_and(|by| !by.is_empty());
                        (idle, url, reported)
                    }
                }
            };
            let wake = if linked {
                // Linked by another connection: when it drops, start over from a short pause.
                *attempt = 0;
                *unlinked_since = None;
                // A dialer with nothing to do says so, if it has shown up in /health yet.
                if let Some(s) = lock(&self.links).get_mut(key)
                    && s.state != "standby"
                {
                    s.state = "standby";
                    s.error = None;
                    s.since = crate::message::rfc3339(now_ms());
                }
                None
            } else {
                let since = *unlinked_since.get_or_insert(now);
                match (target, candidate) {
                    (Target::Url(_), Some(url)) => return Some(url),
                    (Target::Node(n), _)
                        if !reported && now >= since + FORGET_AFTER && self.forget_node(n, key) =>
                    {
                        return None;
                    }
                    (_, Some(url)) if now >= since + DISCOVERY_GRACE => return Some(url),
                    (_, Some(_)) => Some(since + DISCOVERY_GRACE),
                    (_, None) => Some(since + FORGET_AFTER),
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                r = changed.changed() => if r.is_err() { return None },
                _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {}
            }
        }
    }

    async fn dial_forever(self: Arc<Self>, target: Target) {
        let key = match &target {
            Target::Url(u) => format!("dial {u}"),
            Target::Node(n) => format!("discover {n}"),
        };
        let mut known = match &target {
            Target::Url(_) => None,
            Target::Node(n) => Some(n.clone()),
        };
        if let Target::Url(u) = &target {
            set_status(&self, &key, |s| s.url = Some(u.clone()));
        }
        let mut attempt = 0u32;
        let mut unlinked_since = None;
        loop {
            let Some(url) = self
                .next_dial(
                    &target,
                    known.as_deref(),
                    &mut attempt,
                    &key,
                    &mut unlinked_since,
                )
                .await
            else {
                return;
            };
            set_status(&self, &key, |s| {
                s.url = Some(url.clone());
                s.node = known.clone();
            });
            let expect = match &target {
                Target::Url(_) => None,
                Target::Node(n) => Some(n.as_str()),
            };
            let result = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.dial_once(&url, &key, expect, known.as_deref()) => r,
            };
            match result {
                Ok((peer, lasted)) => {
                    known = Some(peer);
                    // The link was up: the grace before a discovery dial counts from now.
                    unlinked_since = None;
                    if lasted >= STABLE_LINK {
                        attempt = 0;
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %url, error = %e, "peer link failed");
                    set_status(&self, &key, |s| {
                        s.state = "down";
                        s.error = Some(e.to_string());
                        s.since = crate::message::rfc3339(now_ms());
                    });
                }
            }
            let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(6));
            let pause = base
                .min(Duration::from_secs(5))
                .mul_f64(rand::random_range(0.5..1.5));
            attempt += 1;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Dials `url`, authenticates, and runs the link until it ends. Returns the peer's node id
    /// and how long the link was up. `expect`: the node that must answer, for a URL a peer
    /// reported (it may lead elsewhere by now); `None` for a configured URL.
    /// `before`: the node a configured URL led to last time.
    async fn dial_once(
        self: &Arc<Self>,
        url: &str,
        key: &str,
        expect: Option<&str>,
        before: Option<&str>,
    ) -> Result<(String, Duration)> {
        let endpoint = crate::config::ws_endpoint(url);
        let (ws, _) = tokio::time::timeout(
            HANDSHAKE,
            tokio_tungstenite::connect_async_with_config(endpoint.as_str(), None, true),
        )
        .await
        .map_err(|_| Error::Connection(format!("{url}: timed out")))?
        .map_err(|e| Error::Connection(format!("{url}: {e}")))?;
        let (sink, stream) = ws.split();
        let mut sink = sink.with(|t: String| {
            futures_util::future::ready(Ok::<_, tokio_tungstenite::tungstenite::Error>(
                WsMessage::Text(t.into()),
            ))
        });
        let mut stream = stream.filter_map(|m| {
            futures_util::future::ready(match m {
                Ok(WsMessage::Text(t)) => Some(Ok(t.to_string())),
                Ok(WsMessage::Close(_)) | Err(_) => Some(Err(())),
                Ok(_) => None,
            })
        });
        let nonce = auth::random_hex();
        let me = self.router.node_id.clone();
        let incarnation = self.router.incarnation;
        let seq = self.next_dial.fetch_add(1, Ordering::Relaxed);
        let handshake = tokio::time::timeout(HANDSHAKE, async {
            send(&mut sink, PeerFrame::PeerHello { nonce: nonce.clone(), v: 1 }).await?;
            let theirs = match recv(&mut stream).await? {
                PeerFrame::PeerChallenge { nonce } => nonce,
                PeerFrame::Error { message, .. } => return Err(Error::Connection(message)),
                _ => return Err(Error::Connection("unexpected frame in handshake".into())),
            };
            let proof = handshake::proof(&self.secret, "dial", &nonce, &theirs, &me);
            let auth = PeerFrame::PeerAuth {
                node: me.clone(),
                proof,
                incarnation,
                expect: expect.map(str::to_owned),
                seq,
            };
            send(&mut sink, auth).await?;
            match recv(&mut stream).await? {
                PeerFrame::PeerWelcome { node, proof, incarnation }
                    if handshake::verify(&self.secret, "accept", &nonce, &theirs, &node, &proof) =>
                {
                    Ok((node, incarnation))
                }
                PeerFrame::PeerWelcome { .. } => {
                    tracing::warn!(peer = %url, "peer failed mesh authentication (wrong mesh secret?)");
                    Err(Error::Connection("the peer failed mesh authentication".into()))
                }
                PeerFrame::Error { code, message } if code == WRONG_NODE => {
                    if let Some(want) = expect {
                        self.forget_url(want, url);
                    }
                    Err(Error::Connection(format!("{url}: {message}")))
                }
                PeerFrame::Error { message, .. } => Err(Error::Connection(message)),
                _ => Err(Error::Connection("unexpected frame in handshake".into())),
            }
        })
        .await
        .map_err(|_| Error::Connection("mesh handshake timed out".into()))?;
        let (peer, theirs) = handshake?;
        if peer == me {
            return Err(Error::Connection(format!("{url} is this node itself")));
        }
        if let Some(want) = expect
            && want != peer
        {
            // An acceptor of an older version does not check `expect` itself.
            self.forget_url(want, url);
            return Err(Error::Connection(format!(
                "{url} is node {peer}, not {want}"
            )));
        }
        if expect.is_none() {
            // The node behind a configured URL: its own dialer looks after it, not discovery.
            let mut t = lock(&self.topology);
            t.configured.insert(peer.clone());
            // The URL now leads to another node: the one it led to has moved or left, and
            // is looked for like any other node (found through reports, or forgotten).
            if let Some(old) = before
                && old != peer
            {
                t.configured.remove(old);
                if t.remembered.get(old).is_some_and(|u| u == url) {
                    t.remembered.remove(old);
                }
            }
        }
        tracing::debug!(peer = %peer, %url, "mesh handshake done (dialed)");
        let started = tokio::time::Instant::now();
        let order = Order {
            incarnation: theirs,
            seq,
        };
        let ended = self
            .clone()
            .link(
                peer.clone(),
                key.to_owned(),
                Via::Dialed(url.to_owned()),
                order,
                sink,
                stream,
            )
            .await;
        set_status(self, key, |s| {
            s.node = Some(peer.clone());
            s.state = "down";
            s.error = Some(ended);
            s.since = crate::message::rfc3339(now_ms());
        });
        Ok((peer, started.elapsed()))
    }

    /// Serves a peer that dialed us; `hello` is its first frame, already read.
    pub async fn accept<S, R, E>(
        self: Arc<Self>,
        hello_nonce: String,
        mut sink: S,
        mut stream: R,
        remote: String,
    ) where
        S: Sink<String, Error = E> + Unpin + Send,
        E: std::fmt::Display,
        R: Stream<Item = std::result::Result<String, ()>> + Unpin + Send,
    {
        let nonce = auth::random_hex();
        let me = self.router.node_id.clone();
        let incarnation = self.router.incarnation;
        let result = tokio::time::timeout(HANDSHAKE, async {
            send(
                &mut sink,
                PeerFrame::PeerChallenge {
                    nonce: nonce.clone(),
                },
            )
            .await?;
            match recv(&mut stream).await? {
                PeerFrame::PeerAuth {
                    node,
                    proof,
                    incarnation: theirs,
                    expect,
                    seq,
                } if handshake::verify(
                    &self.secret,
                    "dial",
                    &hello_nonce,
                    &nonce,
                    &node,
                    &proof,
                ) =>
                {
                    // The dialer has proven the secret, so it may learn who we are.
                    if let Some(want) = expect
                        && want != me
                    {
                        let message = format!("this is node {me}, not {want}");
                        let code = WRONG_NODE.to_owned();
                        send(&mut sink, PeerFrame::Error { code, message }).await?;
                        return Ok(None);
                    }
                    let proof = handshake::proof(&self.secret, "accept", &hello_nonce, &nonce, &me);
                    send(
                        &mut sink,
                        PeerFrame::PeerWelcome {
                            node: me.clone(),
                            proof,
                            incarnation,
                        },
                    )
                    .await?;
                    Ok(Some((
                        node,
                        Order {
                            incarnation: theirs,
                            seq,
                        },
                    )))
                }
                _ => Err(Error::Connection("mesh authentication failed".into())),
            }
        })
        .await;
        let (peer, order) = match result {
            Ok(Ok(Some((p, o)))) if p != me => (p, o),
            Ok(Ok(_)) => return,
            other => {
                Metrics::inc(&self.router.metrics.auth_failures_total);
                tracing::warn!(%remote, "refused a peer link: mesh authentication failed");
                let _ = send(
                    &mut sink,
                    PeerFrame::Error {
                        code: "unauthorized".into(),
                        message: "mesh authentication failed".into(),
                    },
                )
                .await;
                drop(other);
                return;
            }
        };
        // One entry per accepted link: a restarted peer's new link must not share the old one's.
        let key = format!(
            "accepted {peer} {}",
            auth::random_hex().get(..8).unwrap_or_default()
        );
        let ip = remote.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
        tracing::debug!(%peer, %remote, "mesh handshake done (accepted)");
        self.clone()
            .link(peer, key.clone(), Via::Accepted(ip), order, sink, stream)
            .await;
        // An accepted link that ends is gone for good (the peer dials again): forget it.
        lock(&self.links).remove(&key);
    }

    /// Runs an authenticated link until it fails, is replaced, or turns out to duplicate the
    /// live link to the same peer. Returns why it ended.
    async fn link<S, R, E>(
        self: Arc<Self>,
        peer: String,
        key: String,
        via: Via,
        order: Order,
        mut sink: S,
        mut stream: R,
    ) -> String
    where
        S: Sink<String, Error = E> + Unpin + Send,
        E: std::fmt::Display,
        R: Stream<Item = std::result::Result<String, ()>> + Unpin + Send,
    {
        let router = self.router.clone();
        let store = router.store.clone();
        let me = router.node_id.clone();
        let (out_tx, mut out_rx) = mpsc::channel::<String>(1024);
        let (link_id, replaced) = match self.join(&peer, &via, order, out_tx.clone()) {
            Ok(joined) => joined,
            Err(Refused::OlderRun) => {
                // Two live nodes with one id would corrupt each other's replication.
                tracing::warn!(%peer, "refused a link from an older run of {peer}: do two running nodes share the id '{peer}'?");
                return "an older run of the peer".into();
            }
            Err(Refused::Duplicate) => {
                tracing::debug!(%peer, "closing a second link to a peer that is linked already");
                return "the peer is linked by another connection".into();
            }
        };
        set_status(&self, &key, |s| {
            s.node = Some(peer.clone());
            s.state = "up";
            s.error = None;
            s.since = crate::message::rfc3339(now_ms());
        });
        match &via {
            Via::Dialed(url) => tracing::info!(%peer, %url, "mesh link up (dialed)"),
            Via::Accepted(ip) => tracing::info!(%peer, remote = ?ip, "mesh link up (accepted)"),
        }
        let mut commits = store.commits();
        let mut presence = router.presence_watch();
        let mut topology = self.changed.subscribe();
        let mut told: Option<Vec<PeerAddr>> = None;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut silence = Box::pin(tokio::time::sleep(SILENCE));
        let mut sent_upto: Option<u64> = None;
        // Send a first snapshot right away; later ones when presence changes.
        let mut presence_due = Some(tokio::time::Instant::now());
        let (applying, mut applied_upto, mut apply_failed) =
            completer(router.clone(), peer.clone());
        let p = peer.clone();
        let cursor = store
            .read(move |c| replication::cursor(c, &p))
            .await
            .unwrap_or(0);
        let ended: String = 'link: {
            if let Err(e) = sink.send(PeerFrame::Sync { cursor }.text()).await {
                break 'link e.to_string();
            }
            let mut pump = false;
            let mut tell = true;
            loop {
                if tell {
                    tell = false;
                    let nodes = self.linked_except(&peer);
                    if told.as_ref() != Some(&nodes) {
                        let f = PeerFrame::Peers {
                            port: self.port,
                            nodes: nodes.clone(),
                        };
                        if let Err(e) = sink.send(f.text()).await {
                            break 'link e.to_string();
                        }
                        told = Some(nodes);
                    }
                }
                if pump && let Some(after) = sent_upto {
                    // Recent entries come from the in-memory tail; older ones (a peer catching
                    // up after a long absence) from the store.
                    let (frame, n, last) = match store.tail_after(after, BATCH as usize) {
                        Some(entries) => {
                            let last = entries.last().map(|e| e.0);
                            (events_frame(&entries), entries.len(), last)
                        }
                        None => {
                            let me2 = me.clone();
                            let events = match store
                                .read(move |c| replication::events_after(c, &me2, after, BATCH))
                                .await
                            {
                                Ok(e) => e,
                                Err(e) => break 'link e.to_string(),
                            };
                            let (n, last) = (events.len(), events.last().map(|e| e.seq));
                            (PeerFrame::Events { events }.text(), n, last)
                        }
                    };
                    pump = n as u32 == BATCH;
                    if let Some(last) = last {
                        router
                            .metrics
                            .forwarded_total
                            .fetch_add(n as u64, Ordering::Relaxed);
                        if let Err(e) = sink.send(frame).await {
                            break 'link e.to_string();
                        }
                        sent_upto = Some(last);
                    }
                    if pump {
                        continue;
                    }
                }
                tokio::select! {
                    _ = self.shutdown.cancelled() => break 'link "shutting down".into(),
                    // Also cancelled by shutdown (a child token): say which.
                    _ = replaced.cancelled(), if !self.shutdown.is_cancelled() => break 'link "replaced by a newer link to the same peer".into(),
                    _ = &mut silence => break 'link "the peer went silent".into(),
                    r = commits.changed() => {
                        if r.is_err() { break 'link "store closed".into(); }
                        pump = true;
                    }
                    r = topology.changed() => {
                        if r.is_err() { break 'link "mesh closed".into(); }
                        tell = true;
                    }
                    r = presence.changed() => {
                        if r.is_err() { break 'link "router closed".into(); }
                        presence_due.get_or_insert(tokio::time::Instant::now() + PRESENCE_COALESCE);
                    }
                    _ = tokio::time::sleep_until(presence_due.unwrap_or_else(far_future)), if presence_due.is_some() => {
                        presence_due = None;
                        let version = self.presence_version.fetch_add(1, Ordering::Relaxed) + 1;
                        let f = PeerFrame::Presence { incarnation: router.incarnation, version, agents: router.local_presence() };
                        if let Err(e) = sink.send(f.text()).await { break 'link e.to_string(); }
                    }
                    _ = heartbeat.tick() => {
                        if let Err(e) = sink.send(PeerFrame::Heartbeat.text()).await { break 'link e.to_string(); }
                    }
                    r = applied_upto.changed() => {
                        if r.is_err() { break 'link "the apply completer stopped".into(); }
                        let cursor = *applied_upto.borrow_and_update();
                        if let Err(e) = sink.send(PeerFrame::Ack { cursor }.text()).await { break 'link e.to_string(); }
                    }
                    reason = &mut apply_failed => {
                        break 'link reason.unwrap_or_else(|_| "the apply completer stopped".into());
                    }
                    out = out_rx.recv() => {
                        let Some(text) = out else { break 'link "closed".into() };
                        if let Err(e) = sink.send(text).await { break 'link e.to_string(); }
                    }
                    frame = stream.next() => {
                        silence.as_mut().reset(tokio::time::Instant::now() + SILENCE);
                        let text = match frame {
                            Some(Ok(t)) => t,
                            _ => break 'link "closed by the peer".into(),
                        };
                        let frame = match serde_json::from_str::<PeerFrame>(&text) {
                            Ok(f) => f,
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "ignoring a bad frame from a peer");
                                continue;
                            }
                        };
                        match frame {
                            PeerFrame::Sync { cursor } => {
                                if let Some(prev) = sent_upto && prev > cursor {
                                    router.metrics.retried_total.fetch_add(prev - cursor, Ordering::Relaxed);
                                }
                                sent_upto = Some(cursor);
                                pump = true;
                            }
                            PeerFrame::Events { events } => {
                                let (p, r, rt) = (peer.clone(), router.clone(), tokio::runtime::Handle::current());
                                let answer = match store.submit_isolated(move |c| {
                                    let applied = replication::apply(c, &p, events)?;
                                    r.push_remote(&applied.messages, &rt);
                                    Ok(applied)
                                }).await {
                                    Ok(a) => a,
                                    Err(e) => break 'link e.to_string(),
                                };
                                // Full: the disk is behind; stop reading until it catches up.
                                if applying.send(answer).await.is_err() {
                                    break 'link "the apply completer stopped".into();
                                }
                            }
                            PeerFrame::Ack { cursor } => set_status(&self, &key, |s| s.acked = cursor),
                            PeerFrame::Presence { incarnation, version, agents } => {
                                self.if_live(&peer, link_id, || router.remote_presence(&peer, incarnation, version, agents));
                            }
                            PeerFrame::Peers { port, nodes } => self.heard_from(&peer, link_id, &via, port, nodes),
                            PeerFrame::Delivered { ids } => router.remote_delivered(&ids),
                            PeerFrame::Error { message, .. } => break 'link message,
                            _ => {}
                        }
                    }
                }
            }
        };
        self.leave(&peer, link_id);
        tracing::info!(%peer, reason = %ended, "mesh link down");
        ended
    }
}

/// One queued apply: its answer arrives once it has committed.
type ApplyAnswer = tokio::sync::oneshot::Receiver<Result<replication::Applied>>;

/// Starts the task that takes a link's applies as they commit, in order: it hands the
/// directory and subscription changes to the router (new messages were pushed already, by the
/// apply itself) and publishes the cursor the link acks. It drains what is queued even after the link ends (those commits happen
/// anyway). Returns the queue, the applied cursor, and a failure reason.
fn completer(
    router: Arc<Router>,
    peer: String,
) -> (
    mpsc::Sender<ApplyAnswer>,
    tokio::sync::watch::Receiver<u64>,
    tokio::sync::oneshot::Receiver<String>,
) {
    let (tx, mut rx) = mpsc::channel::<ApplyAnswer>(APPLYING);
    let (cursor_tx, cursor_rx) = tokio::sync::watch::channel(0u64);
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        while let Some(answer) = rx.recv().await {
            let applied = match answer.await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "applying a peer's events failed");
                    let _ = fail_tx.send(e.to_string());
                    return;
                }
                Err(_) => {
                    let _ = fail_tx.send("the store stopped".into());
                    return;
                }
            };
            let m = &router.metrics;
            m.deduplicated_total
                .fetch_add(applied.duplicates, std::sync::atomic::Ordering::Relaxed);
            m.replicated_total.fetch_add(
                applied.messages.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            let cursor = applied.cursor;
            router.apply_remote(applied);
            cursor_tx.send_replace(cursor);
        }
    });
    (tx, cursor_rx, fail_rx)
}

/// An `events` frame from raw log payloads, without parsing them again.
fn events_frame(entries: &[(u64, replication::TailBody)]) -> String {
    let mut s = String::from("{\"op\":\"events\",\"events\":[");
    for (i, (seq, body)) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{{\"seq\":{seq},\"body\":{}}}", body.to_json()));
    }
    s.push_str("]}");
    s
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

async fn send<S: Sink<String> + Unpin>(sink: &mut S, f: PeerFrame) -> Result<()>
where
    S::Error: std::fmt::Display,
{
    sink.send(f.text())
        .await
        .map_err(|e| Error::Connection(e.to_string()))
}

async fn recv<R: Stream<Item = std::result::Result<String, ()>> + Unpin>(
    stream: &mut R,
) -> Result<PeerFrame> {
    match stream.next().await {
        Some(Ok(t)) => {
            serde_json::from_str(&t).map_err(|e| Error::Connection(format!("bad peer frame: {e}")))
        }
        _ => Err(Error::Connection("the peer closed the link".into())),
    }
}
