//! What the backbone shows in `/health` (`backbone`) and `switchboard mesh` (`nodes`): the
//! connection, how far this node's log is published, where its consumer stands, every origin's
//! head against this node's cursor (the lag), the gaps the stream's limits caused and how
//! their catch-up from a snapshot goes, and every node heard.

use std::collections::BTreeMap;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Shared;
use super::presence::{Nodes, SILENCE};
use crate::mesh::{Lag, LinkState, NodeView, Route};
use crate::message::{now_ms, rfc3339};

/// Entries of an origin's log that the stream dropped before this node read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The origin's node id.
    pub node: String,
    /// Its data dir.
    pub instance: String,
    /// The first entry missing.
    pub from: u64,
    /// The last entry missing.
    pub to: u64,
    /// When it was found (ms).
    pub at: i64,
}

impl Gap {
    /// What is still missing once every entry up to `covered` is here (`None`: nothing). A
    /// gap may hold entries that are here (several gaps of one origin are one range), so only
    /// a cover from its start shortens it.
    pub fn after(&self, covered: u64) -> Option<Gap> {
        (covered < self.to).then(|| Gap {
            from: self.from.max(covered.saturating_add(1)),
            ..self.clone()
        })
    }
}

/// How filling gaps from a snapshot goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatchUp {
    /// The node a snapshot is being taken from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Pages applied of that snapshot so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u64>,
    /// Why the gaps are not filled yet (no node online has the entries, a request failed);
    /// cleared when a snapshot fills them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The last snapshot taken: from which node, how many pages, how long it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
}

/// The publisher's state.
#[derive(Debug, Clone, Default)]
pub(super) struct Publisher {
    /// The last entry of this node's log the stream has acknowledged.
    pub shipped: Option<u64>,
    /// The last failure, cleared by the next success.
    pub error: Option<String>,
}

/// The consumer's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Consumer {
    /// Its durable name.
    pub name: Option<String>,
    /// The stream sequence applied and committed up to here.
    pub position: Option<u64>,
    /// Batches in the stream past the last one handed to this node (the server's count).
    pub pending: Option<u64>,
    /// Why consumption last stopped, if it did.
    pub error: Option<String>,
}

/// One origin's log as this node has applied it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OriginStatus {
    /// Its node id.
    pub node: String,
    /// Its data dir.
    pub instance: String,
    /// The last entry it has published, as its heartbeat says.
    pub head: Option<u64>,
    /// This node's cursor of its log.
    pub applied: Option<u64>,
    /// Entries published and not yet applied here.
    pub lag: Option<u64>,
    /// When an entry of it was last applied here (RFC 3339).
    pub last_applied: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Origin {
    node: String,
    head: Option<u64>,
    applied: Option<u64>,
    applied_at: Option<i64>,
}

/// Everything the backbone's tasks report.
#[derive(Default)]
pub(crate) struct Status {
    publisher: Mutex<Publisher>,
    consumer: Mutex<Consumer>,
    /// By instance.
    origins: Mutex<BTreeMap<String, Origin>>,
    /// By instance.
    gaps: Mutex<BTreeMap<String, Gap>>,
    catch_up: Mutex<CatchUp>,
    stream_note: Mutex<Option<String>>,
    own_conflict: Mutex<Option<(String, Instant)>>,
    pub(super) nodes: Nodes,
}

impl Status {
    pub(super) fn publisher(&self, f: impl FnOnce(&mut Publisher)) {
        f(&mut self.publisher.lock());
    }

    pub(super) fn shipped(&self) -> u64 {
        self.publisher.lock().shipped.unwrap_or(0)
    }

    /// The publisher's and the consumer's last errors, while they last.
    pub(super) fn errors(&self) -> (Option<String>, Option<String>) {
        let publish = self.publisher.lock().error.clone();
        let consume = self.consumer.lock().error.clone();
        (publish, consume)
    }

    /// What the stream has of this node's log, once the publisher has asked it.
    pub(super) fn shipped_known(&self) -> Option<u64> {
        self.publisher.lock().shipped
    }

    pub(super) fn consumer(&self, f: impl FnOnce(&mut Consumer)) {
        f(&mut self.consumer.lock());
    }

    pub(super) fn gap(&self, g: Gap) {
        let mut gaps = self.gaps.lock();
        match gaps.get_mut(&g.instance) {
            // Several gaps of one origin: one range from the first missing to the last.
            Some(old) => {
                old.from = old.from.min(g.from);
                old.to = old.to.max(g.to);
                old.at = g.at;
            }
            None => {
                gaps.insert(g.instance.clone(), g);
            }
        }
    }

    pub(super) fn has_gaps(&self) -> bool {
        !self.gaps.lock().is_empty()
    }

    pub(super) fn gaps(&self) -> Vec<Gap> {
        self.gaps.lock().values().cloned().collect()
    }

    /// A snapshot brought every origin's entries up to its cover (by instance): the gaps it
    /// covers are gone, those it covers in part are shorter (the same rule as the store's
    /// marks, so a gap found meanwhile, which the snapshot may not cover, stays).
    pub(super) fn filled(&self, cover: &BTreeMap<String, u64>) {
        let mut gaps = self.gaps.lock();
        let left: BTreeMap<String, Gap> = std::mem::take(&mut *gaps)
            .into_iter()
            .filter_map(|(i, g)| match cover.get(&i) {
                Some(&c) => g.after(c).map(|g| (i, g)),
                None => Some((i, g)),
            })
            .collect();
        *gaps = left;
    }

    /// Every node heard and live now: (node, instance, its published head).
    pub(super) fn live_nodes(&self) -> Vec<(String, String, u64)> {
        self.nodes
            .heard
            .lock()
            .iter()
            .filter(|(_, h)| h.live)
            .map(|(node, h)| (node.clone(), h.instance.clone(), h.head))
            .collect()
    }

    /// The node id of a data dir, if this run has heard it or applied its log.
    pub(super) fn node_of(&self, instance: &str) -> Option<String> {
        let applied = self
            .origins
            .lock()
            .get(instance)
            .map(|o| o.node.clone())
            .filter(|n| !n.is_empty());
        applied.or_else(|| {
            self.nodes
                .heard
                .lock()
                .iter()
                .find(|(_, h)| h.instance == instance)
                .map(|(n, _)| n.clone())
        })
    }

    pub(super) fn catch_up(&self, f: impl FnOnce(&mut CatchUp)) {
        f(&mut self.catch_up.lock());
    }

    pub(super) fn catch_up_now(&self) -> CatchUp {
        self.catch_up.lock().clone()
    }

    /// A snapshot moved this node's cursor of an origin (known here by its instance).
    pub(super) fn cursor_moved(&self, instance: &str, cursor: u64) {
        let mut o = self.origins.lock();
        if let Some(e) = o.get_mut(instance)
            && e.applied.is_none_or(|a| a < cursor)
        {
            e.applied = Some(cursor);
            e.applied_at = Some(now_ms());
        }
    }

    pub(super) fn applied(&self, node: &str, instance: &str, cursor: u64) {
        let mut o = self.origins.lock();
        let e = o.entry(instance.to_owned()).or_default();
        e.node = node.to_owned();
        // Never back: a snapshot's end may have moved the cursor past an apply reported late.
        if e.applied.is_none_or(|a| a < cursor) {
            e.applied_at = Some(now_ms());
            e.applied = Some(cursor);
        }
    }

    /// This node's cursor of an origin's log, read from the store, where this run has not
    /// applied any of it yet.
    pub(super) fn cursor_loaded(&self, node: &str, instance: &str, cursor: u64) {
        let mut o = self.origins.lock();
        let e = o.entry(instance.to_owned()).or_default();
        e.node = node.to_owned();
        e.applied.get_or_insert(cursor);
    }

    pub(super) fn origin_head(&self, node: &str, instance: &str, head: u64) {
        let mut o = self.origins.lock();
        let e = o.entry(instance.to_owned()).or_default();
        e.node = node.to_owned();
        e.head = Some(e.head.unwrap_or(0).max(head));
    }

    pub(super) fn note_stream_mismatch(&self, note: String) {
        let mut n = self.stream_note.lock();
        if n.as_ref() != Some(&note) {
            tracing::warn!("{note}");
            *n = Some(note);
        }
    }

    pub(super) fn own_conflict(&self, instance: &str) {
        let mut c = self.own_conflict.lock();
        if c.is_none() {
            tracing::warn!(
                other = %instance,
                "another data dir announces this node's id on the backbone: restart one of \
                 them with another --node-id"
            );
        }
        *c = Some((instance.to_owned(), Instant::now()));
    }

    /// (nodes heard now, nodes known).
    pub(super) fn counts(&self) -> (usize, usize) {
        let heard = self.nodes.heard.lock();
        (heard.values().filter(|h| h.live).count(), heard.len())
    }
}

/// The backbone in `/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackboneStatus {
    /// The seed URLs.
    pub urls: Vec<String>,
    /// Connected to a NATS server now.
    pub connected: bool,
    /// The server connected to (`host:port`), once connected.
    pub server: Option<String>,
    /// Why the node last failed to reach a NATS server, while it is not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_error: Option<String>,
    /// The stream.
    pub stream: serde_json::Value,
    /// This node's log head.
    pub log_head: u64,
    /// The last entry of it the stream has acknowledged.
    pub published: Option<u64>,
    /// Why publishing last failed, until it succeeds again.
    pub publish_error: Option<String>,
    /// Where the consumer stands.
    pub consumer: Consumer,
    /// Every origin this node has applied or heard of.
    pub origins: Vec<OriginStatus>,
    /// Entries the stream dropped before this node read them: the node lacks them until a
    /// snapshot fills them.
    pub gaps: Vec<Gap>,
    /// How filling the gaps from a snapshot goes.
    pub catch_up: CatchUp,
    /// Another data dir announcing this node's id, seen within the last 10 s.
    pub node_id_conflict: Option<String>,
}

pub(super) fn report(s: &Shared) -> BackboneStatus {
    let st = &s.status;
    let p = st.publisher.lock().clone();
    let info = s.client.server_info();
    let connected = s.client.connection_state() == async_nats::connection::State::Connected;
    let origins = st
        .origins
        .lock()
        .iter()
        .map(|(instance, o)| OriginStatus {
            node: o.node.clone(),
            instance: instance.clone(),
            head: o.head,
            applied: o.applied,
            lag: o.head.map(|h| h.saturating_sub(o.applied.unwrap_or(0))),
            last_applied: o.applied_at.map(rfc3339),
        })
        .collect();
    BackboneStatus {
        urls: s.config.urls.clone(),
        connected,
        server: (connected && !info.host.is_empty())
            .then(|| format!("{}:{}", info.host, info.port)),
        connect_error: s.connect_error.lock().clone().filter(|_| !connected),
        stream: serde_json::json!({
            "name": super::STREAM,
            "replicas": s.config.replicas,
            "max_age_seconds": s.config.max_age.as_secs(),
            "max_bytes": s.config.max_bytes,
            "note": st.stream_note.lock().clone(),
        }),
        log_head: s.router.store.log_head(),
        published: p.shipped,
        publish_error: p.error,
        consumer: st.consumer.lock().clone(),
        origins,
        gaps: st.gaps(),
        catch_up: st.catch_up_now(),
        node_id_conflict: st
            .own_conflict
            .lock()
            .as_ref()
            .filter(|(_, at)| at.elapsed() < SILENCE)
            .map(|(i, _)| i.clone()),
    }
}

/// Every node heard on the backbone, as `switchboard mesh` lists nodes.
pub(super) fn nodes(s: &Shared) -> Vec<NodeView> {
    let st = &s.status;
    let origins = st.origins.lock().clone();
    let gaps = st.gaps.lock().clone();
    let now = now_ms();
    let mut out: Vec<NodeView> = st
        .nodes
        .heard
        .lock()
        .iter()
        .map(|(node, h)| {
            let o = origins.get(&h.instance).cloned().unwrap_or_default();
            let error = gaps.get(&h.instance).map(|g| {
                format!(
                    "entries {}..{} of its log were dropped by the stream before this node read them",
                    g.from, g.to
                )
            });
            let error = error.or_else(|| {
                h.conflict
                    .as_ref()
                    .map(|c| format!("another data dir ({c}) announces this node id too"))
            });
            let silent = h.last.elapsed().as_secs();
            NodeView {
                node: Some(node.clone()),
                instance: Some(h.instance.clone()),
                route: Route::Backbone,
                state: if h.live { LinkState::Up } else { LinkState::Down },
                since: Some(rfc3339(h.since)),
                origin: None,
                url: None,
                error: error.or_else(|| (!h.live).then(|| format!("not heard for {silent}s"))),
                reported_by: Vec::new(),
                undialable: false,
                lag: Lag {
                    to_peer: None,
                    from_peer: Some(h.head.max(o.head.unwrap_or(0)).saturating_sub(o.applied.unwrap_or(0))),
                    last_applied: o.applied_at.map(rfc3339),
                    applied_seconds_ago: o.applied_at.map(|t| (now - t).max(0) as u64 / 1000),
                },
            }
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

impl BackboneStatus {
    /// The lines `switchboard mesh` prints about the backbone, above its table of nodes.
    pub fn text(&self) -> String {
        let num = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
        let mut out = match (&self.server, self.connected) {
            (Some(server), true) => format!("backbone: connected to {server}"),
            _ => format!(
                "backbone: NOT connected (seeds {}); sends to other nodes' agents answer queued",
                self.urls.join(", ")
            ),
        };
        out.push_str(&format!(
            "; this node's log published {}/{}; consumer {} pending",
            num(self.published),
            self.log_head,
            num(self.consumer.pending)
        ));
        if let Some(e) = &self.connect_error {
            out.push_str(&format!("\n  cannot connect: {e}"));
        }
        for e in [&self.publish_error, &self.consumer.error]
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("\n  last error: {e}"));
        }
        for g in &self.gaps {
            out.push_str(&format!(
                "\n  GAP: entries {}..{} of {}'s log (instance {}) were dropped by the stream \
                 before this node read them; this node lacks them until a snapshot fills them",
                g.from, g.to, g.node, g.instance
            ));
        }
        let c = &self.catch_up;
        if let Some(from) = &c.from {
            out.push_str(&format!(
                "\n  catching up from a snapshot of {from} ({} pages so far)",
                c.pages.unwrap_or(0)
            ));
        }
        if let Some(why) = c.waiting.as_ref().filter(|_| !self.gaps.is_empty()) {
            out.push_str(&format!("\n  not filled yet: {why}"));
        }
        if let Some(other) = &self.node_id_conflict {
            out.push_str(&format!(
                "\n  another data dir ({other}) announces this node's id: restart one of them \
                 with another --node-id"
            ));
        }
        out
    }
}
