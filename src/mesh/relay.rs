//! Relaying: a node passes what it has of other nodes — their log entries, heartbeats,
//! presence snapshots and delivery notices — to peers that are not linked to them, so two
//! nodes that cannot link (both behind NAT, `--advertise none`) replicate through a node both
//! are linked to.
//!
//! - *Log entries*: every node keeps the entries of other origins it applied (`store`'s
//!   `relayed`). A peer that relays says, in its `peers` frame, how far it has applied each
//!   origin and which origins it is linked to itself; this node then ships it every other
//!   origin's entries past that point (`relay` frames), as they commit here. The receiver
//!   applies them against its own cursor of that origin, exactly as it would the origin's
//!   own `events`: once each, in the origin's order, whatever path they took, and a run that
//!   starts past its cursor is refused rather than leaving a gap.
//! - *Reachability and presence*: `routes` frames and relayed `presence` snapshots
//!   (see [`super::routes`]).
//! - *Delivery notices* go to the origin over its link, or to the peer it is reached through,
//!   which passes them on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::Mesh;
use super::frames::{Beat, MAX_HOPS, OriginCursor, PeerFrame, Wants};
use super::link::LinkEnd;
use super::routes::{Change, Snapshot};
use crate::core::RemoteAgent;
use crate::store::replication;
use crate::transport::TextSink;

/// Entries per `relay` frame.
const BATCH: u32 = 512;

/// How far this node has applied and committed each origin's log: what links relay from.
/// The completers move it; links wake when it moves.
pub(super) struct Heads {
    map: Mutex<HashMap<String, u64>>,
    changed: watch::Sender<u64>,
}

impl Default for Heads {
    fn default() -> Heads {
        Heads {
            map: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Heads {
    /// `origin`'s log is applied here up to `cursor`, committed.
    pub(super) fn advance(&self, origin: &str, cursor: u64) {
        let moved = {
            let mut m = self.map.lock();
            let head = m.entry(origin.to_owned()).or_default();
            let moved = cursor > *head;
            *head = (*head).max(cursor);
            moved
        };
        if moved {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Every origin and how far it is applied.
    pub(super) fn all(&self) -> Vec<(String, u64)> {
        self.map
            .lock()
            .iter()
            .map(|(o, h)| (o.clone(), *h))
            .collect()
    }

    /// How far `origin` is applied.
    pub(super) fn of(&self, origin: &str) -> Option<u64> {
        self.map.lock().get(origin).copied()
    }

    /// Wakes when any origin moves.
    pub(super) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// What the peer of one link asked to have relayed.
struct Wanted {
    /// Origins it is linked to itself.
    direct: HashSet<String>,
    /// How far it has each origin's entries: its cursor, or what this link shipped since.
    at: HashMap<String, u64>,
}

/// What one link relays to its peer: nothing until the peer says it relays.
#[derive(Default)]
pub(super) struct Outbound {
    wanted: Option<Wanted>,
    /// The presence snapshot of each node last passed on: (incarnation, version).
    told: HashMap<String, (u64, u64)>,
    /// The peer takes snapshots (its `sync` said so).
    pub(super) snapshots: bool,
    /// An origin's entries the peer lacks are no longer kept here (compacted, or applied
    /// before this node kept entries to relay): the peer needs a snapshot.
    gap: bool,
}

impl Outbound {
    /// Whether the peer relays (it said what it wants).
    pub(super) fn relays(&self) -> bool {
        self.wanted.is_some()
    }

    /// The peer's wants, from a `peers` frame. An origin it wanted before and wants still
    /// goes on from what this link has shipped (its cursor lags what is in flight); one it
    /// wants anew starts from its cursor.
    pub(super) fn want(&mut self, w: Wants) {
        let direct: HashSet<String> = w.direct.into_iter().collect();
        let mut at: HashMap<String, u64> = w
            .cursors
            .into_iter()
            .map(|c| (c.origin, c.cursor))
            .collect();
        if let Some(old) = self.wanted.take() {
            for (origin, shipped) in old.at {
                if !old.direct.contains(&origin) && !direct.contains(&origin) {
                    let a = at.entry(origin).or_default();
                    *a = (*a).max(shipped);
                }
            }
        }
        self.wanted = Some(Wanted { direct, at });
    }

    /// Whether the peer needs a snapshot to go on with some origin (once per detection).
    pub(super) fn take_gap(&mut self) -> bool {
        std::mem::take(&mut self.gap)
    }

    /// The peer needs a snapshot for this node's own log (compacted past its cursor).
    pub(super) fn need_snapshot(&mut self, peer: &str) {
        if !self.snapshots {
            tracing::warn!(
                ?peer,
                "the log this peer needs is compacted and it cannot take a snapshot: upgrade it"
            );
        }
        self.gap = self.snapshots;
    }

    /// The peer took a snapshot with these cursors: it has every origin that far.
    pub(super) fn caught_up(&mut self, cursors: &[(String, u64)]) {
        if let Some(w) = &mut self.wanted {
            for (origin, c) in cursors {
                let a = w.at.entry(origin.clone()).or_default();
                *a = (*a).max(*c);
            }
        }
    }

    /// Ships what the peer wants and lacks of every origin, one batch of each; true if more
    /// is waiting. `peer_key`: the peer's own log key (its entries are its own to send).
    pub(super) async fn pump(
        &mut self,
        mesh: &Mesh,
        peer_key: &str,
        sink: &mut TextSink,
    ) -> Result<bool, LinkEnd> {
        let Some(w) = &mut self.wanted else {
            return Ok(false);
        };
        let store = &mesh.router.store;
        let mut more = false;
        for (origin, head) in mesh.relays.all() {
            if origin == peer_key || origin == store.instance() || w.direct.contains(&origin) {
                continue;
            }
            let from = w.at.get(&origin).copied().unwrap_or(0);
            if from >= head {
                continue;
            }
            let o = origin.clone();
            let batch = store
                .read_committed(move |c| replication::relayed_after(c, &o, from, BATCH))
                .await
                .map_err(|e| LinkEnd::Store(e.to_string()))?;
            // Nothing kept past `from` (applied before this node kept entries to relay).
            let Some(b) = batch else {
                w.at.insert(origin, head);
                continue;
            };
            // The entries between are gone here: a peer that takes snapshots gets one
            // (sent by the link); an older one refuses the run, as it always did.
            if b.after > from && self.snapshots {
                self.gap = true;
                continue;
            }
            let last = b.last;
            if !b.events.is_empty() {
                let n = b.events.len() as u64;
                let f = PeerFrame::Relay {
                    origin: origin.clone(),
                    after: b.after,
                    events: b.events,
                };
                sink.send(f.text())
                    .await
                    .map_err(|e| LinkEnd::Write(e.to_string()))?;
                let m = &mesh.router.metrics;
                m.forwarded_total.fetch_add(n, Ordering::Relaxed);
            }
            w.at.insert(origin, last);
            more |= last < head;
        }
        Ok(more)
    }

    /// What tells the peer of the nodes this node reaches: the presence snapshots it has not
    /// been told yet (of nodes it is not linked to itself), then a `routes` frame. Nothing to
    /// a peer that does not relay.
    pub(super) fn routes_frames(&mut self, mesh: &Mesh, peer: &str) -> Vec<String> {
        let Some(w) = &self.wanted else {
            return Vec::new();
        };
        let linked: HashSet<String> = mesh.topology.lock().linked_nodes();
        let routes = mesh.routes.lock();
        let mut frames = Vec::new();
        for (node, s) in routes.snapshots_for(peer, |n| linked.contains(n)) {
            let version = (s.incarnation, s.version);
            if routes.instance(&node).is_some_and(|i| w.direct.contains(i))
                || self.told.get(&node) == Some(&version)
            {
                continue;
            }
            let f = PeerFrame::Presence {
                node: Some(node.clone()),
                incarnation: s.incarnation,
                version: s.version,
                agents: s.agents.clone(),
            };
            frames.push(f.text());
            self.told.insert(node, version);
        }
        let mut nodes = routes.beats_for(peer, |n| linked.contains(n));
        drop(routes);
        nodes.push(mesh.own_beat());
        let applied = mesh.applied_now();
        frames.push(PeerFrame::Routes { nodes, applied }.text());
        frames
    }
}

impl Mesh {
    /// This node's heartbeat as it travels in `routes` frames.
    pub(super) fn own_beat(&self) -> Beat {
        let store = &self.router.store;
        Beat {
            node: self.router.node_id.clone(),
            instance: store.instance().to_owned(),
            incarnation: self.router.incarnation,
            beat: self.router.uptime().as_millis() as u64 + 1,
            head: Some(store.log_head()),
        }
    }

    /// What this node asks a peer to relay: how far it has applied each origin, and the
    /// origins it is linked to.
    pub(super) async fn wants(&self) -> Option<Wants> {
        let cursors = self
            .router
            .store
            .read_committed(replication::cursors)
            .await
            .ok()?;
        Some(Wants {
            cursors: cursors
                .into_iter()
                .map(|(origin, cursor)| OriginCursor { origin, cursor })
                .collect(),
            direct: self.topology.lock().linked_keys(),
        })
    }

    /// A `routes` frame from live link `link` to `peer`.
    pub(super) fn heard_routes(&self, peer: &str, link: u64, nodes: Vec<Beat>) {
        let changes = {
            let mut t = self.topology.lock();
            if !t.is_live(peer, link) {
                return;
            }
            let linked = t.linked_nodes();
            let now = Instant::now();
            self.routes
                .lock()
                .heard(peer, nodes, |n| linked.contains(n), || t.next_id(), now)
        };
        self.routes_changed(changes);
    }

    /// Tells the router what a change of routes means for presence, and links that their
    /// peers may need telling.
    pub(super) fn routes_changed(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        for c in changes {
            match c {
                Change::Lost { node, epoch } => self.router.peer_gone(&node, epoch),
                Change::Reached {
                    node,
                    epoch: _,
                    replaced,
                } => {
                    if let Some(old) = replaced {
                        self.router.peer_gone(&node, old);
                    }
                    self.show(&node);
                }
            }
        }
        self.bump_routes();
    }

    /// Hands the router the snapshot of a node reached through a peer.
    fn show(&self, node: &str) {
        let shown = self
            .routes
            .lock()
            .shown(node)
            .map(|(epoch, s)| (epoch, s.cloned()));
        if let Some((epoch, Some(s))) = shown {
            self.router
                .remote_presence(node, epoch, s.incarnation, s.version, s.agents);
        }
    }

    pub(super) fn bump_routes(&self) {
        self.routes_version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A presence snapshot link `link` to `peer` brought: the peer's own (`node` absent) or
    /// one it passes on.
    pub(super) fn presence_heard(
        &self,
        peer: &str,
        link: u64,
        node: Option<String>,
        (incarnation, version): (u64, u64),
        agents: Vec<RemoteAgent>,
    ) {
        let s = Snapshot {
            incarnation,
            version,
            agents,
        };
        match node {
            None => {
                // A cheap filter; the router itself ignores a report from a link that has
                // ended (see `Router::remote_presence`).
                if !self.topology.lock().is_live(peer, link) {
                    return;
                }
                let newer = self.routes.lock().snapshot(peer, s.clone());
                self.router
                    .remote_presence(peer, link, incarnation, version, s.agents);
                if newer {
                    self.bump_routes();
                }
            }
            Some(node) if node != self.router.node_id => {
                let linked = self.topology.lock().is_linked(&node);
                if !self.routes.lock().snapshot(&node, s) {
                    return;
                }
                if !linked {
                    self.show(&node);
                }
                self.bump_routes();
            }
            Some(_) => {}
        }
    }

    /// A `delivered` notice from a peer: for this node, or to pass on towards `to`.
    pub(super) fn delivered(&self, ids: Vec<String>, to: Option<String>, hops: u8) {
        match to {
            Some(t) if t != self.router.node_id => self.send_notice(&t, ids, hops),
            _ => self.router.remote_delivered(&ids),
        }
    }

    /// Sends a delivery notice towards `origin`: on its link, or to the peer it is reached
    /// through (dropped if there is none, or its queue is full: the sender then hears
    /// `queued`, which is still true — the message is stored for the recipient).
    pub(super) fn send_notice(&self, origin: &str, ids: Vec<String>, hops: u8) {
        if hops >= MAX_HOPS {
            return;
        }
        let t = self.topology.lock();
        let (tx, to) = match t.handle(origin) {
            Some(h) => (h.tx.clone(), None),
            None => {
                let via = self.routes.lock().via(origin).map(str::to_owned);
                match via.as_deref().and_then(|v| t.handle(v)) {
                    Some(h) => (h.tx.clone(), Some(origin.to_owned())),
                    None => return,
                }
            }
        };
        drop(t);
        let hops = if to.is_some() { hops + 1 } else { 0 };
        let _ = tx.try_send(PeerFrame::Delivered { ids, to, hops }.text());
    }

    /// Ends routes whose peer fell silent, every second.
    pub(super) async fn expire_routes(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let lost = self.routes.lock().expire(Instant::now());
            self.routes_changed(lost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(cursors: &[(&str, u64)], direct: &[&str]) -> Wants {
        Wants {
            cursors: cursors
                .iter()
                .map(|(o, c)| OriginCursor {
                    origin: (*o).into(),
                    cursor: *c,
                })
                .collect(),
            direct: direct.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    fn at(out: &Outbound, origin: &str) -> Option<u64> {
        out.wanted.as_ref()?.at.get(origin).copied()
    }

    #[test]
    fn new_wants_keep_what_was_shipped_of_an_origin_wanted_all_along() {
        let mut out = Outbound::default();
        assert!(!out.relays());
        out.want(wants(&[("a", 3), ("b", 5)], &["b"]));
        assert!(out.relays());
        // This link shipped a up to 9 meanwhile; b came from its origin itself.
        if let Some(w) = &mut out.wanted {
            w.at.insert("a".into(), 9);
            w.at.insert("b".into(), 7);
        }
        // The peer's cursors lag what is in flight: a goes on from 9. Its link to b ended:
        // b starts again from the peer's own cursor, not from what this link had.
        out.want(wants(&[("a", 4), ("b", 6)], &[]));
        assert_eq!((at(&out, "a"), at(&out, "b")), (Some(9), Some(6)));
        // An origin the peer now links to is left to that link.
        out.want(wants(&[("a", 9)], &["a"]));
        assert_eq!(at(&out, "a"), Some(9));
        assert!(out.wanted.as_ref().unwrap().direct.contains("a"));
    }
}
