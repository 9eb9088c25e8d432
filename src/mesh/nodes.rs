//! The mesh as an operator asks about it (`switchboard mesh`, `/health`'s `nodes`): one entry
//! per node this node knows, with how it is reached, its link's state and how far behind each
//! side is; and dropping a departed node at once (`switchboard mesh forget`) instead of
//! dialing it for an hour.
//!
//! Lag is what this node can know without asking anyone: how far the peer has confirmed this
//! node's log (its `sync` and `ack` cursors, against this node's log head), and how far this
//! node has applied the peer's (its cursor, against the head the peer states in each
//! heartbeat). Both are kept in memory from the links of this run.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Mesh;
use super::status::{LinkOrigin, LinkState, LinkStatus};
use crate::error::{Error, Result};
use crate::message::{now_ms, rfc3339};
use crate::protocol::MeshForgetResult;

/// How a node is reached: over its own link, or through a peer that relays for it (a node
/// neither side can dial, say two laptops behind NAT that share a hub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "route", content = "via", rename_all = "lowercase")]
pub enum Route {
    /// Over its own link.
    Direct,
    /// Through this node.
    Via(String),
    /// Over the NATS backbone (`--backbone`).
    Backbone,
}

/// How far behind each side is, in log entries; `None` where this run has not learned it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    /// This node's entries the peer has not confirmed applying (this node's log head minus
    /// the peer's last `sync`/`ack`).
    pub to_peer: Option<u64>,
    /// The peer's entries not applied here (the head it stated in its last heartbeat minus
    /// this node's cursor); `None` from peers too old to state it.
    pub from_peer: Option<u64>,
    /// When an entry of the peer's log was last applied here (RFC 3339).
    pub last_applied: Option<String>,
    /// Seconds since then.
    pub applied_seconds_ago: Option<u64>,
}

/// One node, as `switchboard mesh` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id; `None` for a configured URL that has not answered as any node yet.
    pub node: Option<String>,
    /// Its instance (data dir), once it has linked.
    pub instance: Option<String>,
    /// How it is reached (`route`, and `via` for a relayed node).
    #[serde(flatten)]
    pub route: Route,
    /// Where its link stands.
    pub state: LinkState,
    /// Since when (RFC 3339), if a link or dialer has reported.
    pub since: Option<String>,
    /// How this node came to know it (its link's or dialer's origin).
    pub origin: Option<LinkOrigin>,
    /// Its URL: the live link's, the one remembered or reported, or the one being dialed.
    pub url: Option<String>,
    /// The last error of its link or dialer.
    pub error: Option<String>,
    /// Linked peers that report being linked to it.
    pub reported_by: Vec<String>,
    /// It advertises `none`: nobody dials it; it dials out, and is relayed for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub undialable: bool,
    /// How far behind each side is.
    pub lag: Lag,
}

impl NodeView {
    /// A node reached by `route`, in `state`, with nothing else known of it yet.
    fn bare(node: Option<String>, route: Route, state: LinkState) -> NodeView {
        NodeView {
            node,
            instance: None,
            route,
            state,
            since: None,
            origin: None,
            url: None,
            error: None,
            reported_by: Vec::new(),
            undialable: false,
            lag: Lag::default(),
        }
    }
}

/// What this run has learned of one peer's log and of its cursor of this node's.
#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    /// Its instance id.
    pub instance: Option<String>,
    /// How far it has applied this node's log.
    pub acked: Option<u64>,
    /// Its log head, as it last stated.
    pub head: Option<u64>,
    /// How far this node has applied its log.
    pub applied: Option<u64>,
    /// When this node last applied an entry of its log (ms).
    pub applied_at: Option<i64>,
}

/// Every peer's [`Progress`], by node id.
#[derive(Debug, Default)]
pub(super) struct Progresses(Mutex<HashMap<String, Progress>>);

impl Progresses {
    /// Changes `node`'s entry, creating it the first time.
    pub(super) fn update(&self, node: &str, f: impl FnOnce(&mut Progress)) {
        f(self.0.lock().entry(node.to_owned()).or_default());
    }

    /// This node has applied `node`'s log up to `cursor`.
    pub(super) fn applied(&self, node: &str, cursor: u64) {
        self.update(node, |p| {
            if p.applied.is_some_and(|a| a < cursor) {
                p.applied_at = Some(now_ms());
            }
            p.applied = Some(cursor);
        });
    }

    fn get(&self, node: &str) -> Progress {
        self.0.lock().get(node).cloned().unwrap_or_default()
    }

    fn forget(&self, node: &str) {
        self.0.lock().remove(node);
    }
}

/// The state a node's link or dialers show: the live link's, else the most hopeful dialer's.
fn shown(linked: bool, statuses: &[&LinkStatus]) -> (LinkState, Option<LinkStatus>) {
    if linked {
        let up = statuses.iter().find(|s| s.state == LinkState::Up);
        return (LinkState::Up, up.map(|s| (*s).clone()));
    }
    // Not linked now: an entry still saying `up` or `standby` is about to move on.
    let rank = |s: &LinkStatus| match s.state {
        LinkState::Connecting | LinkState::Standby | LinkState::Up => 0,
        LinkState::Down => 1,
    };
    match statuses.iter().min_by_key(|s| rank(s)) {
        Some(s) if rank(s) == 0 => (LinkState::Connecting, Some((*s).clone())),
        Some(s) => (LinkState::Down, Some((*s).clone())),
        None => (LinkState::Down, None),
    }
}

impl Mesh {
    /// Every node this node knows, by id, then configured URLs that have not answered yet.
    pub fn nodes(&self) -> Vec<NodeView> {
        let known = self.topology.lock().known();
        let statuses = self.statuses.all();
        let (head, now) = (self.router.store.log_head(), now_ms());
        let mut out: Vec<NodeView> = known
            .into_iter()
            .map(|k| {
                let mine: Vec<&LinkStatus> = statuses
                    .iter()
                    .filter(|s| s.node.as_deref() == Some(k.node.as_str()))
                    .collect();
                let (state, status) = shown(k.linked, &mine);
                let p = self.progress.get(&k.node);
                let from_peer = p.head.zip(p.applied).map(|(h, a)| h.saturating_sub(a));
                NodeView {
                    instance: p.instance,
                    route: Route::Direct,
                    state,
                    since: status.as_ref().map(|s| s.since.clone()),
                    origin: status.as_ref().map(|s| s.origin),
                    url: k
                        .url
                        .or_else(|| status.as_ref().and_then(|s| s.url.clone())),
                    error: status.and_then(|s| s.error).filter(|_| !k.linked),
                    reported_by: k.reported_by,
                    undialable: k.undialable,
                    lag: Lag {
                        to_peer: p.acked.map(|a| head.saturating_sub(a)),
                        from_peer,
                        last_applied: p.applied_at.map(rfc3339),
                        applied_seconds_ago: p.applied_at.map(|t| (now - t).max(0) as u64 / 1000),
                    },
                    node: Some(k.node),
                }
            })
            .collect();
        for s in statuses.into_iter().filter(|s| s.node.is_none()) {
            let state = if s.state == LinkState::Down {
                LinkState::Down
            } else {
                LinkState::Connecting
            };
            out.push(NodeView {
                since: Some(s.since),
                origin: Some(s.origin),
                url: s.url,
                error: s.error,
                ..NodeView::bare(None, Route::Direct, state)
            });
        }
        self.add_relayed(&mut out);
        out
    }

    /// Nodes reached through a peer: up, `via` it, with the lag this node can know (the head
    /// of their latest beat against its cursor of their log).
    fn add_relayed(&self, out: &mut Vec<NodeView>) {
        for r in self.routes.lock().relayed() {
            let from_peer = r
                .head
                .map(|h| h.saturating_sub(self.relays.of(&r.instance).unwrap_or(0)));
            if let Some(v) = out.iter_mut().find(|v| v.node.as_deref() == Some(&r.node)) {
                if v.state != LinkState::Up {
                    v.route = Route::Via(r.via);
                    v.state = LinkState::Up;
                    v.lag.from_peer = from_peer;
                }
                continue;
            }
            let mut v = NodeView::bare(Some(r.node), Route::Via(r.via), LinkState::Up);
            v.instance = Some(r.instance).filter(|i| !i.is_empty());
            v.lag.from_peer = from_peer;
            out.push(v);
        }
        out.sort_by(|a, b| (a.node.is_none(), &a.node).cmp(&(b.node.is_none(), &b.node)));
    }

    /// Fills in what the store knows before links say it: how far each origin's log is
    /// applied (what links relay from), and the instance each node id is bound to, for nodes
    /// not linked yet in this run (a link that comes first has already said its own).
    pub(super) async fn load_instances(self: Arc<Self>) {
        let cursors = self
            .router
            .store
            .read(|c| crate::store::replication::cursors(c))
            .await;
        for (origin, cursor) in cursors.unwrap_or_default() {
            self.relays.advance(&origin, cursor);
        }
        let holders = self.router.store.read(|c| crate::store::holders(c)).await;
        for (node, instance) in holders.unwrap_or_default() {
            self.progress.update(&node, |p| {
                p.instance.get_or_insert(instance);
            });
        }
    }

    /// Drops a departed node now (`switchboard mesh forget`): its link, if one is up, ends;
    /// its agents count as offline at once; its dialer stops (a configured `--peer` URL that
    /// led to it waits until it links again or this node restarts); its node id is freed, so
    /// the next data dir to link under it holds it. It can rejoin: a link from it, or a report
    /// of it by a linked peer, makes it known again.
    pub async fn forget(&self, node: &str) -> Result<MeshForgetResult> {
        crate::message::validate_name(node)
            .map_err(|e| Error::Invalid(format!("node: node id {e}")))?;
        if node == self.router.node_id {
            return Err(Error::Invalid(format!("node: {node} is this node itself")));
        }
        let n = node.to_owned();
        // The store first: if it fails, nothing has changed.
        let released = self
            .router
            .store
            .write(move |tx| crate::store::release(tx, &n))
            .await?;
        let dropped = self.topology.lock().drop_node(node);
        let conflicted = self.conflicts.clear(node);
        if dropped.is_none() && !released && !conflicted {
            let known: Vec<String> = self.nodes().into_iter().filter_map(|v| v.node).collect();
            return Err(Error::Invalid(format!(
                "node: no node '{node}' is known here (known: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )));
        }
        self.progress.forget(node);
        let lost = self.routes.lock().forget(node);
        self.routes_changed(lost);
        let (mut was_linked, mut configured) = (false, false);
        if let Some(d) = dropped {
            if let Some((_, link)) = d.link {
                link.cancel.cancel();
                was_linked = true;
            }
            configured = d.configured;
            // Every link it had is this old or older: its agents are offline now.
            self.router.peer_gone(node, d.last_link);
        }
        self.bump();
        tracing::info!(
            ?node,
            was_linked,
            configured,
            "forgot a node (switchboard mesh forget)"
        );
        Ok(MeshForgetResult {
            node: node.to_owned(),
            was_linked,
            configured,
            released,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_shows_as_direct_or_via_a_node() {
        let v = |r: Route| {
            serde_json::to_value(NodeView::bare(Some("n2".into()), r, LinkState::Up)).unwrap()
        };
        let direct = v(Route::Direct);
        assert_eq!(direct["route"], "direct");
        assert!(direct.get("via").is_none());
        let via = v(Route::Via("hub".into()));
        assert_eq!(
            (via["route"].as_str(), via["via"].as_str()),
            (Some("via"), Some("hub"))
        );
        let back: NodeView = serde_json::from_value(via).unwrap();
        assert_eq!(back.route, Route::Via("hub".into()));
    }

    #[test]
    fn a_node_not_linked_shows_its_most_hopeful_dialer() {
        let status = |state, error: &str| LinkStatus {
            node: Some("n2".into()),
            origin: LinkOrigin::Discovered,
            url: None,
            state,
            since: "t".into(),
            error: Some(error.into()),
            acked: 0,
        };
        let (down, dialing) = (
            status(LinkState::Down, "refused"),
            status(LinkState::Connecting, ""),
        );
        assert_eq!(shown(false, &[&down, &dialing]).0, LinkState::Connecting);
        assert_eq!(shown(false, &[&down]).0, LinkState::Down);
        assert_eq!(shown(false, &[]).0, LinkState::Down);
        assert_eq!(shown(true, &[&down]).0, LinkState::Up);
    }
}
