//! Which nodes this node reaches through others, and what they say of their agents: plain
//! data, like the topology. Nothing here sends or calls the router; each change returns what
//! the caller must tell the router.
//!
//! Nodes that are not linked (two laptops behind NAT that share a hub) learn of each other
//! from the hub's `routes` frames: every node it reaches, each with the newest heartbeat
//! ("beat") it has from that node itself. A beat is the node's own (incarnation, counter), so
//! only the node can make a newer one. A node counts as reached through a peer while that
//! peer keeps bringing it *newer* beats: a peer that loses the node stops listing it (the
//! route ends at once), and a stale route — two relays that each think the other reaches a
//! node that is gone — is caught because neither can bring a newer beat, and ends after
//! [`SILENCE`]. Of several peers that reach a node, the route stays with the one it has while
//! that one keeps up; a route only moves to another peer when its own falls silent for
//! [`SWITCH_AFTER`], so it does not flap between two equally good hubs.
//!
//! Presence snapshots travel the same way, newest (incarnation, version) first wherever it
//! came from. The router sees a node reached through a peer like a linked one: its snapshot,
//! reported under an epoch — a number from the same counter as link ids — that is new each
//! time the route starts or moves, so `peer_gone(node, epoch)` ends exactly that route.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::frames::Beat;
use crate::core::RemoteAgent;

/// A route whose peer brings no newer beat for this long ends (as a silent link does).
pub const SILENCE: Duration = Duration::from_secs(10);
/// A route moves to another peer only after its own brought nothing newer for this long.
pub const SWITCH_AFTER: Duration = Duration::from_secs(3);
/// Most nodes kept (a bound, not a design limit; as the topology's).
pub const NODES_MAX: usize = 256;

/// A node's presence snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The node's incarnation when it made the snapshot.
    pub incarnation: u64,
    /// Increases with every change within an incarnation.
    pub version: u64,
    /// Its online agents.
    pub agents: Vec<RemoteAgent>,
}

/// What the router must hear after a change of routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `node` is reached through a peer under `epoch` (`replaced`: the epoch of the route it
    /// replaces): its agents count as online there, as its snapshot says.
    Reached {
        /// The node.
        node: String,
        /// The route's epoch.
        epoch: u64,
        /// The route it replaces.
        replaced: Option<u64>,
    },
    /// The route to `node` under `epoch` ended: its agents are offline (unless linked).
    Lost {
        /// The node.
        node: String,
        /// The route's epoch.
        epoch: u64,
    },
}

/// A route to a node through a peer.
#[derive(Debug)]
struct Relayed {
    via: String,
    epoch: u64,
    /// The newest beat `via` brought, and when.
    via_beat: (u64, u64),
    via_at: Instant,
}

#[derive(Debug, Default)]
struct Entry {
    instance: String,
    /// The newest beat seen, from any peer.
    beat: (u64, u64),
    head: Option<u64>,
    route: Option<Relayed>,
    snapshot: Option<Snapshot>,
}

/// A node reached through a peer, for `switchboard mesh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteView {
    /// The node.
    pub node: String,
    /// The peer it is reached through.
    pub via: String,
    /// Its log key.
    pub instance: String,
    /// Its log head at its newest beat.
    pub head: Option<u64>,
}

/// Every node heard of through `routes` frames and presence snapshots.
#[derive(Debug)]
pub struct Routes {
    me: String,
    nodes: HashMap<String, Entry>,
}

impl Routes {
    /// No routes yet, at node `me`.
    pub fn new(me: &str) -> Routes {
        Routes {
            me: me.to_owned(),
            nodes: HashMap::new(),
        }
    }

    fn entry(&mut self, node: &str) -> Option<&mut Entry> {
        if node == self.me || crate::message::validate_name(node).is_err() {
            return None;
        }
        if !self.nodes.contains_key(node) && self.nodes.len() >= NODES_MAX {
            return None;
        }
        Some(self.nodes.entry(node.to_owned()).or_default())
    }

    /// A `routes` frame from peer `from`: the beats of every node it reaches. `linked`: this
    /// node is linked to that node itself (it needs no route). `next_id` numbers new routes.
    pub fn heard(
        &mut self,
        from: &str,
        beats: Vec<Beat>,
        linked: impl Fn(&str) -> bool,
        mut next_id: impl FnMut() -> u64,
        now: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for b in beats {
            let reached_via_from = b.node != from && !linked(&b.node);
            let Some(e) = self.entry(&b.node) else {
                continue;
            };
            listed.insert(b.node.clone());
            let beat = (b.incarnation, b.beat);
            let newer = beat > e.beat;
            if newer {
                e.beat = beat;
                e.head = b.head;
            }
            if !b.instance.is_empty() {
                e.instance = b.instance;
            }
            if !reached_via_from {
                continue;
            }
            let moves = match &mut e.route {
                Some(r) if r.via == from => {
                    if beat > r.via_beat {
                        r.via_beat = beat;
                        r.via_at = now;
                    }
                    false
                }
                Some(r) => newer && now.duration_since(r.via_at) >= SWITCH_AFTER,
                None => newer,
            };
            if moves {
                let replaced = e.route.as_ref().map(|r| r.epoch);
                let epoch = next_id();
                e.route = Some(Relayed {
                    via: from.to_owned(),
                    epoch,
                    via_beat: beat,
                    via_at: now,
                });
                changes.push(Change::Reached {
                    node: b.node,
                    epoch,
                    replaced,
                });
            }
        }
        // A node `from` no longer lists is no longer reached through it.
        changes.extend(self.end_routes(|node, r| r.via == from && !listed.contains(node)));
        changes
    }

    fn end_routes(&mut self, ends: impl Fn(&str, &Relayed) -> bool) -> Vec<Change> {
        let mut lost = Vec::new();
        for (node, e) in &mut self.nodes {
            if e.route.as_ref().is_some_and(|r| ends(node, r))
                && let Some(r) = e.route.take()
            {
                lost.push(Change::Lost {
                    node: node.clone(),
                    epoch: r.epoch,
                });
            }
        }
        lost
    }

    /// Routes whose peer brought nothing newer for [`SILENCE`] end.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        self.end_routes(|_, r| now.duration_since(r.via_at) >= SILENCE)
    }

    /// The link to `peer` ended: every route through it ends.
    pub fn link_gone(&mut self, peer: &str) -> Vec<Change> {
        self.end_routes(|_, r| r.via == peer)
    }

    /// A link to `node` itself is up: its route through a peer, if any, ends.
    pub fn linked(&mut self, node: &str) -> Vec<Change> {
        self.end_routes(|n, _| n == node)
    }

    /// A presence snapshot of `node`; true if it is newer than the one kept (it is kept).
    pub fn snapshot(&mut self, node: &str, s: Snapshot) -> bool {
        let Some(e) = self.entry(node) else {
            return false;
        };
        let newer = e
            .snapshot
            .as_ref()
            .is_none_or(|old| (s.incarnation, s.version) > (old.incarnation, old.version));
        if newer {
            e.snapshot = Some(s);
        }
        newer
    }

    /// The route's epoch and the snapshot to show for `node`, if it is reached through a
    /// peer. A snapshot of an older incarnation than the node's newest beat is not shown:
    /// the node has restarted since, and its agents have not all come back yet.
    pub fn shown(&self, node: &str) -> Option<(u64, Option<&Snapshot>)> {
        let e = self.nodes.get(node)?;
        let r = e.route.as_ref()?;
        let s = e.snapshot.as_ref().filter(|s| s.incarnation >= e.beat.0);
        Some((r.epoch, s))
    }

    /// `node`'s log key, as its beats say.
    pub fn instance(&self, node: &str) -> Option<&str> {
        Some(self.nodes.get(node)?.instance.as_str()).filter(|i| !i.is_empty())
    }

    /// The peer `node` is reached through.
    pub fn via(&self, node: &str) -> Option<&str> {
        Some(self.nodes.get(node)?.route.as_ref()?.via.as_str())
    }

    /// What a `routes` frame to `to` lists besides this node itself: every node reached
    /// (linked, as `linked` says, or through a peer other than `to`) with its newest beat.
    pub fn beats_for(&self, to: &str, linked: impl Fn(&str) -> bool) -> Vec<Beat> {
        let mut out: Vec<Beat> = self
            .nodes
            .iter()
            .filter(|(n, e)| *n != to && e.beat != (0, 0) && self.reaches(n, e, to, &linked))
            .map(|(n, e)| Beat {
                node: n.clone(),
                instance: e.instance.clone(),
                incarnation: e.beat.0,
                beat: e.beat.1,
                head: e.head,
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    fn reaches(&self, node: &str, e: &Entry, to: &str, linked: &impl Fn(&str) -> bool) -> bool {
        linked(node) || e.route.as_ref().is_some_and(|r| r.via != to)
    }

    /// The snapshots to pass on to `to`: those of nodes reached other than through `to`.
    pub fn snapshots_for(
        &self,
        to: &str,
        linked: impl Fn(&str) -> bool,
    ) -> Vec<(String, &Snapshot)> {
        self.nodes
            .iter()
            .filter(|(n, e)| *n != to && self.reaches(n, e, to, &linked))
            .filter_map(|(n, e)| Some((n.clone(), e.snapshot.as_ref()?)))
            .collect()
    }

    /// Every node reached through a peer now.
    pub fn relayed(&self) -> Vec<RouteView> {
        let mut v: Vec<RouteView> = self
            .nodes
            .iter()
            .filter_map(|(n, e)| {
                Some(RouteView {
                    node: n.clone(),
                    via: e.route.as_ref()?.via.clone(),
                    instance: e.instance.clone(),
                    head: e.head,
                })
            })
            .collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }

    /// Drops everything known of `node` (an operator forgot it); its route's end, if any.
    pub fn forget(&mut self, node: &str) -> Vec<Change> {
        let lost = self.linked(node);
        self.nodes.remove(node);
        lost
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
