//! Presence and delivery notices over the backbone: soft state on plain NATS subjects, never
//! in the stream.
//!
//! Each node announces on `switchboard.presence.<node>`: its full set of online agents within
//! [`COALESCE`] of every change, and every [`HEARTBEAT`] a small heartbeat with the same
//! `(incarnation, version)` and its log head. A node that hears a heartbeat whose version it
//! has not seen (it joined later, or missed a snapshot) asks for the snapshot on
//! `switchboard.snapshot.<node>`. A node not heard for [`SILENCE`] is gone: its agents count
//! as offline, through the router's `peer_gone`, as a mesh link's end does. While this node's
//! own connection is down it hears nobody, so every other node is gone at once — a send to
//! their agents answers `queued`, and the mail flows when the stream is reachable again.
//!
//! The router orders reports by "link" ids, which grow with every live link; here a node gets
//! a new id each time it is heard after being gone, so a late report from before cannot
//! bring its agents back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Shared;
use crate::core::{DeliveryNotice, RemoteAgent};

/// Presence changes within this window go out as one snapshot.
const COALESCE: Duration = Duration::from_millis(20);
/// How often a node says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard for this long is gone.
pub(super) const SILENCE: Duration = Duration::from_secs(10);
/// How long a snapshot request waits for its answer.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// What a node announces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announce {
    /// Its node id.
    pub node: String,
    /// Its data dir.
    pub instance: String,
    /// Its run (start time, ms).
    pub incarnation: u64,
    /// Its presence version within the run.
    pub version: u64,
    /// The last entry of its log it has published to the stream.
    pub head: u64,
    /// Its online agents; absent in a heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<RemoteAgent>>,
}

/// A delivery notice on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Delivered {
    ids: Vec<String>,
}

/// What this node knows of another.
#[derive(Debug, Clone)]
pub(super) struct Heard {
    pub instance: String,
    pub link: u64,
    pub last: Instant,
    /// The (incarnation, version) whose agents this node holds.
    pub have: Option<(u64, u64)>,
    /// The newest (incarnation, version) announced.
    pub announced: (u64, u64),
    pub head: u64,
    /// Since when it has been heard without a break (ms).
    pub since: i64,
    /// Whether it counts as present.
    pub live: bool,
    /// Another instance announced this node id within [`SILENCE`].
    pub conflict: Option<String>,
}

/// Every node heard, by node id.
#[derive(Default)]
pub(super) struct Nodes {
    pub(super) heard: Mutex<HashMap<String, Heard>>,
    next_link: AtomicU64,
}

impl Nodes {
    fn link(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Starts announcing, listening, answering snapshot requests and routing delivery notices.
pub(super) async fn start(s: &Arc<Shared>) {
    let (notices, notice_rx) = mpsc::channel::<DeliveryNotice>(1024);
    s.router.set_delivery_notices(notices);
    s.tracker.spawn(route_notices(s.clone(), notice_rx));
    s.tracker.spawn(announce(s.clone()));
    s.tracker.spawn(listen(s.clone()));
    s.tracker.spawn(reap(s.clone()));
}

fn own(s: &Shared, version: u64, agents: Option<Vec<RemoteAgent>>) -> Announce {
    Announce {
        node: s.router.node_id.clone(),
        instance: s.router.store.instance().to_owned(),
        incarnation: s.router.incarnation,
        version,
        head: s.status.shipped(),
        agents,
    }
}

fn encode(a: &Announce) -> bytes::Bytes {
    serde_json::to_vec(a).unwrap_or_default().into()
}

/// Publishes snapshots on change and heartbeats, and answers snapshot requests.
async fn announce(s: Arc<Shared>) {
    let subject = super::presence_subject(&s.router.node_id);
    let mut requests = loop {
        match s
            .client
            .subscribe(super::snapshot_subject(&s.router.node_id))
            .await
        {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::debug!(error = %e, "backbone: cannot subscribe for snapshot requests");
                if !super::pause(&s, 5).await {
                    return;
                }
            }
        }
    };
    let mut presence = s.router.presence_watch();
    let mut connected = s.connected.clone();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut due = Some(tokio::time::Instant::now());
    // Heartbeats state the version of the last snapshot sent, so nobody asks for one that is
    // about to arrive.
    let mut sent = 0;
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            r = presence.changed() => {
                if r.is_err() { return; }
                due.get_or_insert(tokio::time::Instant::now() + COALESCE);
            }
            r = connected.changed() => {
                if r.is_err() { return; }
                // Back after an outage: everyone hears the full set at once.
                if *connected.borrow_and_update() { due = Some(tokio::time::Instant::now()); }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(far)), if due.is_some() => {
                due = None;
                sent = *presence.borrow_and_update();
                let a = own(&s, sent, Some(s.router.local_presence()));
                let _ = s.client.publish(subject.clone(), encode(&a)).await;
            }
            _ = heartbeat.tick() => {
                let _ = s.client.publish(subject.clone(), encode(&own(&s, sent, None))).await;
            }
            req = requests.next() => {
                let Some(req) = req else { return };
                if let Some(reply) = req.reply {
                    let a = own(&s, *presence.borrow(), Some(s.router.local_presence()));
                    let _ = s.client.publish(reply, encode(&a)).await;
                }
            }
        }
    }
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// Hears every node's announcements and this node's delivery notices.
async fn listen(s: Arc<Shared>) {
    let subscribed = async {
        let presence = s.client.subscribe(super::presence_subject("*")).await?;
        let delivered = s
            .client
            .subscribe(super::delivered_subject(&s.router.node_id))
            .await?;
        Ok::<_, async_nats::SubscribeError>((presence, delivered))
    };
    let (mut presence, mut delivered) = match subscribed.await {
        Ok(subs) => subs,
        Err(e) => {
            tracing::error!(error = %e, "backbone: cannot subscribe to presence");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            m = presence.next() => {
                let Some(m) = m else { return };
                match serde_json::from_slice::<Announce>(&m.payload) {
                    Ok(a) => heard(&s, a),
                    Err(e) => tracing::debug!(error = %e, "ignoring a bad presence announcement"),
                }
            }
            m = delivered.next() => {
                let Some(m) = m else { return };
                if let Ok(d) = serde_json::from_slice::<Delivered>(&m.payload) {
                    s.router.remote_delivered(&d.ids);
                }
            }
        }
    }
}

/// Takes in one announcement.
fn heard(s: &Arc<Shared>, a: Announce) {
    if a.node == s.router.node_id {
        if a.instance != s.router.store.instance() {
            s.status.own_conflict(&a.instance);
        }
        return;
    }
    let now = Instant::now();
    let version = (a.incarnation, a.version);
    let (link, ask, first) = {
        let mut heard = s.status.nodes.heard.lock();
        let first = heard.get(&a.node).is_none_or(|h| h.instance != a.instance);
        let fresh_link = s.status.nodes.link();
        let h = heard.entry(a.node.clone()).or_insert_with(|| Heard {
            instance: a.instance.clone(),
            link: fresh_link,
            last: now,
            have: None,
            announced: version,
            head: a.head,
            since: crate::message::now_ms(),
            live: true,
            conflict: None,
        });
        if h.instance != a.instance {
            if now.duration_since(h.last) < SILENCE && version < h.announced {
                // An older run under another data dir still announcing: two nodes share an id.
                h.conflict = Some(a.instance.clone());
                return;
            }
            h.conflict = (now.duration_since(h.last) < SILENCE).then(|| h.instance.clone());
            h.instance = a.instance.clone();
        }
        if !h.live {
            h.live = true;
            h.link = fresh_link;
            h.have = None;
            h.since = crate::message::now_ms();
        }
        h.last = now;
        h.head = h.head.max(a.head);
        if version > h.announced {
            h.announced = version;
        }
        let ask = a.agents.is_none() && h.have.is_none_or(|have| have < h.announced);
        (h.link, ask, first)
    };
    if first {
        // Its lag needs this node's cursor of its log, which the store has. It may hold what
        // this node lacks, too (see `catchup`, `survey`).
        s.catch_up.wake();
        let (s, node, instance) = (s.clone(), a.node.clone(), a.instance.clone());
        s.tracker.clone().spawn(async move {
            let i = instance.clone();
            let read = s
                .router
                .store
                .read_committed(move |c| crate::store::replication::cursor(c, &i));
            if let Ok(cursor) = read.await {
                s.status.cursor_loaded(&node, &instance, cursor);
            }
        });
    }
    s.status.origin_head(&a.node, &a.instance, a.head);
    match a.agents {
        Some(agents) => {
            s.status
                .nodes
                .heard
                .lock()
                .entry(a.node.clone())
                .and_modify(|h| {
                    if h.have.is_none_or(|have| have < version) {
                        h.have = Some(version);
                    }
                });
            s.router
                .remote_presence(&a.node, link, a.incarnation, a.version, agents);
        }
        None if ask => {
            let s = s.clone();
            s.tracker
                .clone()
                .spawn(async move { ask_snapshot(&s, &a.node).await });
        }
        None => {}
    }
}

/// Asks a node for its full snapshot (it joined, or a snapshot was missed).
async fn ask_snapshot(s: &Arc<Shared>, node: &str) {
    let req = s
        .client
        .request(super::snapshot_subject(node), bytes::Bytes::new());
    if let Ok(Ok(reply)) = tokio::time::timeout(SNAPSHOT_WAIT, req).await
        && let Ok(a) = serde_json::from_slice::<Announce>(&reply.payload)
        && a.agents.is_some()
    {
        heard(s, a);
    }
}

/// Marks nodes not heard for [`SILENCE`] gone, and every node gone while this node's own
/// connection is down.
async fn reap(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut connected = s.connected.clone();
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            r = connected.changed() => if r.is_err() { return },
        }
        let up = *connected.borrow_and_update();
        let now = Instant::now();
        let gone: Vec<(String, u64)> = {
            let mut heard = s.status.nodes.heard.lock();
            heard
                .iter_mut()
                .filter(|(_, h)| h.live && (!up || now.duration_since(h.last) >= SILENCE))
                .map(|(node, h)| {
                    h.live = false;
                    h.have = None;
                    (node.clone(), h.link)
                })
                .collect()
        };
        for (node, link) in gone {
            tracing::info!(
                ?node,
                "backbone: node not heard from; its agents are offline"
            );
            s.router.peer_gone(&node, link);
        }
    }
}

/// Sends each delivery notice to its origin's subject (dropped if the connection is down: the
/// sender's wait then ends as `queued`, which stays true — the message is stored).
async fn route_notices(s: Arc<Shared>, mut rx: mpsc::Receiver<DeliveryNotice>) {
    loop {
        let n = tokio::select! {
            _ = s.shutdown.cancelled() => return,
            n = rx.recv() => match n { Some(n) => n, None => return },
        };
        let body = serde_json::to_vec(&Delivered { ids: vec![n.id] }).unwrap_or_default();
        let _ = s
            .client
            .publish(super::delivered_subject(&n.origin), body.into())
            .await;
    }
}
