//! One authenticated link, from joining the topology to leaving it: the loop that streams
//! this node's log and presence to the peer and takes in the peer's — and, for a peer that
//! relays, what this node has of other nodes (`relay`). The peer's applies are finished off
//! the loop (`applying`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::applying::{Job, Source};
use super::compact::Sending;
use super::frames::{PeerAddr, PeerError, PeerFrame, Wants, events_frame};
use super::relay::Outbound;
use super::status::{LinkOrigin, LinkState};
use super::topology::{Order, Refused};
use super::{LinkHandle, Mesh};
use crate::store::Bound;
use crate::store::replication;
use crate::store::snapshot::Start;
use crate::transport::{TextSink, TextStream};

/// Events per `events` frame.
const BATCH: u32 = 512;
/// Liveness heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Presence changes within this window go out as one snapshot (a restarted node's agents
/// reconnect by the thousand).
const PRESENCE_COALESCE: Duration = Duration::from_millis(20);
/// A link silent this long is dead.
const SILENCE: Duration = Duration::from_secs(10);

/// How long a refused peer has to read the refusal and close.
const REFUSAL_READ: Duration = Duration::from_secs(2);

/// How a link came to be.
#[derive(Debug, Clone)]
pub(super) enum Via {
    /// This node dialed the URL.
    Dialed(String),
    /// The peer dialed from this address.
    Accepted(Option<IpAddr>),
}

/// A link whose handshake is done.
pub(super) struct Opened {
    /// The peer's node id.
    pub peer: String,
    /// Its `/health` entry.
    pub key: String,
    /// The origin that entry is created with.
    pub origin: LinkOrigin,
    /// How it came to be.
    pub via: Via,
    /// What ranks it against another link to the same peer.
    pub order: Order,
    /// The peer's instance id (empty from a node that predates them).
    pub instance: String,
}

/// Why a link ended; shown in `/health` as the dialer's last error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkEnd {
    /// Refused: the live link comes from a newer run of the peer.
    #[error("an older run of the peer")]
    OlderRun,
    /// Refused: the live link is the one both ends keep.
    #[error("the peer is linked by another connection")]
    Duplicate,
    /// The node is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// A newer link to the same peer took over.
    #[error("replaced by a newer link to the same peer")]
    Replaced,
    /// An operator dropped the peer (`switchboard mesh forget`).
    #[error("forgotten (switchboard mesh forget)")]
    Forgotten,
    /// Nothing heard for [`SILENCE`].
    #[error("the peer went silent")]
    Silent,
    /// The store stopped announcing commits.
    #[error("store closed")]
    StoreClosed,
    /// The mesh stopped announcing topology changes.
    #[error("mesh closed")]
    MeshClosed,
    /// The router stopped announcing presence changes.
    #[error("router closed")]
    RouterClosed,
    /// The tasks that finish applies are gone.
    #[error("the apply completer stopped")]
    CompleterStopped,
    /// The link's own outgoing queue closed.
    #[error("closed")]
    Closed,
    /// The peer closed the socket, or it broke.
    #[error("closed by the peer")]
    ClosedByPeer,
    /// The store stopped before answering an apply.
    #[error("the store stopped")]
    StoreStopped,
    /// Writing to the socket failed.
    #[error("{0}")]
    Write(String),
    /// Reading this node's log, queuing or running an apply failed.
    #[error("{0}")]
    Store(String),
    /// The peer refused the link (its message).
    #[error("{0}")]
    Refused(String),
    /// Refused here: another instance holds the peer's node id (the message names both).
    #[error("{0}")]
    NodeIdConflict(String),
}

impl Mesh {
    /// Runs an authenticated link until it fails, is replaced, or turns out to duplicate the
    /// live link to the same peer. Returns why it ended.
    pub(super) async fn link(
        self: Arc<Self>,
        opened: Opened,
        mut sink: TextSink,
        mut stream: TextStream,
    ) -> LinkEnd {
        let Opened {
            peer,
            key,
            origin,
            via,
            order,
            instance,
        } = opened;
        let router = self.router.clone();
        let store = router.store.clone();
        // Cursors follow the peer's data dir, so two data dirs under one node id never share
        // one; a peer too old to send an instance id is keyed by its node id, as before.
        let log_key = match self.bind(&peer, &instance, &mut sink, &mut stream).await {
            Ok(key) => key,
            Err(end) => return end,
        };
        let (out_tx, mut out_rx) = mpsc::channel::<String>(1024);
        let (link_id, replaced) = match self.join(&peer, &via, order, &log_key, out_tx) {
            Ok(joined) => joined,
            Err(Refused::OlderRun) => {
                // Two live nodes with one id would corrupt each other's replication.
                tracing::warn!(
                    ?peer,
                    "refused a link from an older run of this peer: do two running nodes share its id?"
                );
                return LinkEnd::OlderRun;
            }
            Err(Refused::Duplicate) => {
                tracing::debug!(
                    ?peer,
                    "closing a second link to a peer that is linked already"
                );
                return LinkEnd::Duplicate;
            }
        };
        self.statuses.set(&key, origin, |s| {
            s.node = Some(peer.clone());
            s.enter(LinkState::Up, None);
        });
        match &via {
            Via::Dialed(url) => tracing::info!(?peer, url = ?url, "mesh link up (dialed)"),
            Via::Accepted(ip) => tracing::info!(?peer, remote = ?ip, "mesh link up (accepted)"),
        }
        let mut commits = store.commits();
        let mut presence = router.presence_watch();
        let mut topology = self.changed.subscribe();
        let mut relayed = self.relays.watch();
        let mut routes = self.routes_version.subscribe();
        let mut told: Option<(Vec<PeerAddr>, Vec<String>)> = None;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut silence = Box::pin(tokio::time::sleep(SILENCE));
        let mut sent_upto: Option<u64> = None;
        let mut presence_due = None;
        let mut routes_due = None;
        let mut out = Outbound::default();
        // A snapshot being sent to the peer (see `compact`).
        let mut sending: Option<Sending> = None;
        let (completer, mut applied_upto, mut failed) = self.completer(&peer, &log_key);
        let p = log_key.clone();
        let cursor = store
            .read(move |c| replication::cursor(c, &p))
            .await
            .unwrap_or(0);
        self.progress.update(&peer, |p| {
            if !instance.is_empty() {
                p.instance = Some(instance.clone());
            }
            p.applied = Some(cursor);
        });
        let accepted_from = match &via {
            Via::Accepted(ip) => *ip,
            Via::Dialed(_) => None,
        };
        let ended: LinkEnd = 'link: {
            // Every new link starts with this node's presence, whatever the peer saw before
            // (a restarted peer has nothing): later snapshots go when presence changes.
            let first = [
                PeerFrame::Sync {
                    cursor,
                    snapshots: true,
                },
                self.presence_frame(),
            ];
            for f in first {
                if let Err(e) = sink.send(f.text()).await {
                    break 'link LinkEnd::Write(e.to_string());
                }
            }
            let (mut pump, mut relay_pump, mut tell) = (false, false, true);
            loop {
                if tell {
                    tell = false;
                    // The nodes this node is linked to and where, and (for the peer's relay)
                    // which logs it gets from their origins.
                    let current = {
                        let t = self.topology.lock();
                        (t.linked_except(&peer), t.linked_keys())
                    };
                    if told.as_ref() != Some(&current) {
                        let f = self.peers_frame(current.0.clone()).await;
                        if let Err(e) = sink.send(f.text()).await {
                            break 'link LinkEnd::Write(e.to_string());
                        }
                        told = Some(current);
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
                            let events = match store
                                .read(move |c| replication::events_after_kept(c, after, BATCH))
                                .await
                            {
                                Ok(Some(e)) => e,
                                // Compacted past the peer's cursor: it gets a snapshot first.
                                Ok(None) => {
                                    sent_upto = None;
                                    out.need_snapshot(&peer);
                                    continue;
                                }
                                Err(e) => break 'link LinkEnd::Store(e.to_string()),
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
                            break 'link LinkEnd::Write(e.to_string());
                        }
                        sent_upto = Some(last);
                    }
                    if pump {
                        continue;
                    }
                }
                if relay_pump {
                    relay_pump = match out.pump(&self, &log_key, &mut sink).await {
                        Ok(more) => more,
                        Err(end) => break 'link end,
                    };
                    if relay_pump {
                        continue;
                    }
                }
                if out.take_gap() && sending.is_none() {
                    sending = match Sending::begin(&self).await {
                        Ok(s) => Some(s),
                        Err(end) => break 'link end,
                    };
                }
                // One page per turn, so the peer's frames are read in between.
                if let Some(s) = &mut sending {
                    match s.step(&self, &peer, &mut sink).await {
                        Ok(None) => {}
                        Ok(Some(start)) => {
                            sending = None;
                            sent_upto = Some(sent_upto.unwrap_or(0).max(start.head));
                            out.caught_up(&start.cursors);
                            (pump, relay_pump) = (true, true);
                        }
                        Err(end) => break 'link end,
                    }
                }
                tokio::select! {
                    _ = self.shutdown.cancelled() => break 'link LinkEnd::ShuttingDown,
                    // Also cancelled by shutdown (a child token): say which.
                    _ = replaced.cancelled(), if !self.shutdown.is_cancelled() => {
                        break 'link if self.topology.lock().is_dropped(&peer) { LinkEnd::Forgotten } else { LinkEnd::Replaced };
                    }
                    _ = &mut silence => break 'link LinkEnd::Silent,
                    _ = std::future::ready(()), if sending.is_some() => {}
                    r = commits.changed() => {
                        if r.is_err() { break 'link LinkEnd::StoreClosed; }
                        pump = true;
                    }
                    r = topology.changed() => {
                        if r.is_err() { break 'link LinkEnd::MeshClosed; }
                        tell = true;
                    }
                    r = relayed.changed(), if out.relays() => {
                        if r.is_err() { break 'link LinkEnd::MeshClosed; }
                        relay_pump = true;
                    }
                    r = presence.changed() => {
                        if r.is_err() { break 'link LinkEnd::RouterClosed; }
                        presence_due.get_or_insert(tokio::time::Instant::now() + PRESENCE_COALESCE);
                    }
                    r = routes.changed(), if out.relays() => {
                        if r.is_err() { break 'link LinkEnd::MeshClosed; }
                        routes_due.get_or_insert(tokio::time::Instant::now() + PRESENCE_COALESCE);
                    }
                    _ = tokio::time::sleep_until(presence_due.unwrap_or_else(far_future)), if presence_due.is_some() => {
                        presence_due = None;
                        if let Err(e) = sink.send(self.presence_frame().text()).await { break 'link LinkEnd::Write(e.to_string()); }
                    }
                    _ = tokio::time::sleep_until(routes_due.unwrap_or_else(far_future)), if routes_due.is_some() => {
                        routes_due = None;
                        for f in out.routes_frames(&self, &peer) {
                            if let Err(e) = sink.send(f).await { break 'link LinkEnd::Write(e.to_string()); }
                        }
                    }
                    _ = heartbeat.tick() => {
                        // A peer that relays hears this node's beat (and those it passes on)
                        // in a `routes` frame instead.
                        let frames = match out.routes_frames(&self, &peer) {
                            f if f.is_empty() => vec![PeerFrame::Heartbeat { head: Some(store.log_head()) }.text()],
                            f => f,
                        };
                        for f in frames {
                            if let Err(e) = sink.send(f).await { break 'link LinkEnd::Write(e.to_string()); }
                        }
                    }
                    r = applied_upto.changed() => {
                        if r.is_err() { break 'link LinkEnd::CompleterStopped; }
                        let cursor = *applied_upto.borrow_and_update();
                        if let Err(e) = sink.send(PeerFrame::Ack { cursor }.text()).await { break 'link LinkEnd::Write(e.to_string()); }
                    }
                    reason = &mut failed => {
                        break 'link reason.unwrap_or(LinkEnd::CompleterStopped);
                    }
                    out = out_rx.recv() => {
                        let Some(text) = out else { break 'link LinkEnd::Closed };
                        if let Err(e) = sink.send(text).await { break 'link LinkEnd::Write(e.to_string()); }
                    }
                    frame = stream.next() => {
                        silence.as_mut().reset(tokio::time::Instant::now() + SILENCE);
                        let text = match frame {
                            Some(Ok(t)) => t,
                            _ => break 'link LinkEnd::ClosedByPeer,
                        };
                        let frame = match serde_json::from_str::<PeerFrame>(&text) {
                            Ok(f) => f,
                            Err(e) => {
                                tracing::warn!(?peer, error = ?e.to_string(), "ignoring a bad frame from a peer");
                                continue;
                            }
                        };
                        match frame {
                            PeerFrame::Sync { cursor, snapshots } => {
                                out.snapshots = snapshots;
                                self.reports.heard(&log_key, store.instance(), cursor);
                                if let Some(prev) = sent_upto && prev > cursor {
                                    router.metrics.retried_total.fetch_add(prev - cursor, Ordering::Relaxed);
                                }
                                sent_upto = Some(cursor);
                                pump = true;
                                self.progress.update(&peer, |p| p.acked = Some(cursor));
                            }
                            PeerFrame::Events { events } => {
                                if let Err(end) = completer.submit(&router, &log_key, Source::Peer, Job::Events(0, events)).await {
                                    break 'link end;
                                }
                            }
                            // Its own entries come as `events`; this node's are its own.
                            PeerFrame::Relay { origin, .. } if origin == log_key || origin == store.instance() => {}
                            PeerFrame::Relay { origin, after, events } => {
                                if let Err(end) = completer.submit(&router, &log_key, Source::Relayed(origin), Job::Events(after, events)).await {
                                    break 'link end;
                                }
                            }
                            PeerFrame::Snapshot { items } => {
                                if let Err(end) = completer.submit(&router, &log_key, Source::Snapshot, Job::Page(items)).await {
                                    break 'link end;
                                }
                            }
                            PeerFrame::SnapshotEnd { head, cursors } => {
                                let cursors = cursors.into_iter().map(|c| (c.origin, c.cursor)).collect();
                                let end = Job::End(Start { head, cursors });
                                if let Err(end) = completer.submit(&router, &log_key, Source::SnapshotEnd, end).await {
                                    break 'link end;
                                }
                            }
                            PeerFrame::Ack { cursor } => {
                                self.reports.heard(&log_key, store.instance(), cursor);
                                self.statuses.update(&key, |s| s.acked = cursor);
                                self.progress.update(&peer, |p| p.acked = Some(cursor));
                            }
                            PeerFrame::Heartbeat { head: Some(head) } => self.progress.update(&peer, |p| p.head = Some(head)),
                            PeerFrame::Routes { nodes, applied } => {
                                self.heard_applied(&log_key, &applied);
                                if let Some(head) = nodes.iter().find(|b| b.node == peer).and_then(|b| b.head) {
                                    self.progress.update(&peer, |p| p.head = Some(head));
                                }
                                self.heard_routes(&peer, link_id, nodes);
                            }
                            PeerFrame::Presence { node, incarnation, version, agents } => {
                                self.presence_heard(&peer, link_id, node, (incarnation, version), agents);
                            }
                            PeerFrame::Peers { port, tls, nodes, advertise, relay } => {
                                self.heard_from(&peer, link_id, accepted_from, (port, tls), advertise.as_deref(), nodes);
                                if let Some(w) = relay {
                                    self.heard_applied(&log_key, &w.cursors);
                                    out.want(w);
                                    relay_pump = true;
                                    routes_due.get_or_insert(tokio::time::Instant::now());
                                }
                            }
                            PeerFrame::Delivered { ids, to, hops } => self.delivered(ids, to, hops),
                            PeerFrame::Error { message, .. } => break 'link LinkEnd::Refused(message),
                            _ => {}
                        }
                    }
                }
            }
        };
        self.leave(&peer, link_id);
        tracing::info!(?peer, reason = ?ended.to_string(), "mesh link down");
        ended
    }

    /// Checks the peer's claim to its node id against the instance recorded for it, before the
    /// link can touch the topology (so a claimant never replaces the holder's link). Returns
    /// the key of the peer's log; on a conflict, tells the peer and records it for `/health`.
    async fn bind(
        &self,
        peer: &str,
        instance: &str,
        sink: &mut TextSink,
        stream: &mut TextStream,
    ) -> std::result::Result<String, LinkEnd> {
        if instance.is_empty() {
            return Ok(peer.to_owned());
        }
        let (n, i, now) = (
            peer.to_owned(),
            instance.to_owned(),
            crate::message::now_ms(),
        );
        let bound = self
            .router
            .store
            .write(move |tx| crate::store::bind_peer(tx, &n, &i, now))
            .await
            .map_err(|e| LinkEnd::Store(e.to_string()))?;
        let Bound::Conflict { holder } = bound else {
            return Ok(instance.to_owned());
        };
        self.conflicts.record(peer, &holder, instance);
        tracing::warn!(
            node = ?peer,
            holder = ?holder,
            claimant = ?instance,
            "refused a link: another instance holds this node id (restart one with another --node-id)"
        );
        let message = format!(
            "node id {peer} is held by instance {holder}; instance {instance} claims it too: \
             restart one of them with another --node-id"
        );
        let refusal = PeerFrame::refusal(PeerError::NodeIdConflict, message.clone());
        let _ = sink.send(refusal.text()).await;
        // Closing at once could break the peer's first writes before it reads the refusal, and
        // it would show a broken pipe instead: let it read the refusal and close first.
        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = tokio::time::timeout(REFUSAL_READ, drain).await;
        Err(LinkEnd::NodeIdConflict(message))
    }

    /// Makes the link the live one to `peer` (see [`super::topology::Topology::join`]), and
    /// cancels the one it replaced. Returns its id and cancel token.
    fn join(
        &self,
        peer: &str,
        via: &Via,
        order: Order,
        key: &str,
        tx: mpsc::Sender<String>,
    ) -> std::result::Result<(u64, CancellationToken), Refused> {
        let cancel = self.shutdown.child_token();
        let dialed = match via {
            Via::Dialed(u) => Some(u.as_str()),
            Via::Accepted(_) => None,
        };
        let handle = LinkHandle {
            cancel: cancel.clone(),
            tx,
        };
        let joined = self
            .topology
            .lock()
            .join(peer, dialed, order, key, handle)?;
        if let Some(old) = joined.replaced {
            old.cancel.cancel();
        }
        // Linked itself now: a route through a peer to it ends.
        let ended = self.routes.lock().linked(peer);
        self.routes_changed(ended);
        self.bump();
        Ok((joined.id, cancel))
    }

    /// Link `id` to `peer` ended; if it was the live one, the router hears that the peer is
    /// gone — after the topology lock is released. A link that replaces it in between has a
    /// higher id, so its presence survives this late `peer_gone`.
    fn leave(&self, peer: &str, id: u64) {
        let unlinked = self.topology.lock().leave(peer, id);
        if unlinked {
            self.router.peer_gone(peer, id);
            // Nodes reached through it are not, now (until another peer brings them).
            let lost = self.routes.lock().link_gone(peer);
            self.routes_changed(lost);
        }
        self.bump();
    }

    /// A peer's `peers` frame; starts a dialer for each node first heard of.
    fn heard_from(
        self: &Arc<Self>,
        peer: &str,
        id: u64,
        accepted_from: Option<IpAddr>,
        listens: (u16, bool),
        advertise: Option<&str>,
        nodes: Vec<PeerAddr>,
    ) {
        let Some(fresh) =
            self.topology
                .lock()
                .heard_from(peer, id, accepted_from, listens, advertise, nodes)
        else {
            return;
        };
        self.bump();
        for node in fresh {
            tracing::debug!(?node, via = ?peer, "looking for a node when it is not linked");
            self.spawn_discovery(node);
        }
    }
}

impl Mesh {
    /// This node's presence snapshot, numbered after every one sent on any link (a link that
    /// replaces another continues the sequence the peer has seen).
    fn presence_frame(&self) -> PeerFrame {
        PeerFrame::Presence {
            node: None,
            incarnation: self.router.incarnation,
            version: self.presence_version.fetch_add(1, Ordering::Relaxed) + 1,
            agents: self.router.local_presence(),
        }
    }

    /// The `peers` frame: `nodes` (this node's links with their URLs), what this node
    /// advertises, and what it wants relayed.
    async fn peers_frame(&self, nodes: Vec<PeerAddr>) -> PeerFrame {
        let relay: Option<Wants> = self.wants().await;
        PeerFrame::Peers {
            port: self.reach.port,
            tls: self.reach.serves_tls,
            nodes,
            advertise: self.reach.advertise.wire(),
            relay,
        }
    }
}

pub(super) fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}
