//! One authenticated link, from joining the topology to leaving it: the loop that streams
//! this node's log and presence to the peer and takes in the peer's, and the tasks that finish
//! the peer's applies off the loop — one pushes each apply's new messages to local sessions as
//! soon as the apply has run (before its commit), one takes the commits in order, hands their
//! directory changes to the router and publishes the cursor the link acks. Neither runs on the
//! store's writer thread, which only applies.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::frames::{PeerAddr, PeerError, PeerFrame, events_frame};
use super::status::{LinkOrigin, LinkState};
use super::topology::{Order, Refused};
use super::{LinkHandle, Mesh};
use crate::core::Router;
use crate::error::Result;
use crate::store::replication::{self, Applied};
use crate::store::{Bound, Stored};
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
/// `events` frames being applied at once per link. The link queues each apply and reads on;
/// a completer takes the results in order. Waiting for each commit before reading the next
/// frame made one slow disk write delay every frame queued behind it by a commit each.
const APPLYING: usize = 64;

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
        let (link_id, replaced) = match self.join(&peer, &via, order, out_tx) {
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
        let mut told: Option<Vec<PeerAddr>> = None;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut silence = Box::pin(tokio::time::sleep(SILENCE));
        let mut sent_upto: Option<u64> = None;
        // Send a first snapshot right away; later ones when presence changes.
        let mut presence_due = Some(tokio::time::Instant::now());
        let Completer {
            pushes,
            applying,
            mut applied_upto,
            mut failed,
        } = self.completer(&peer);
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
            if let Err(e) = sink.send(PeerFrame::Sync { cursor }.text()).await {
                break 'link LinkEnd::Write(e.to_string());
            }
            let mut pump = false;
            let mut tell = true;
            loop {
                if tell {
                    tell = false;
                    let nodes = self.topology.lock().linked_except(&peer);
                    if told.as_ref() != Some(&nodes) {
                        let f = PeerFrame::Peers {
                            port: self.reach.port,
                            tls: self.reach.serves_tls,
                            nodes: nodes.clone(),
                        };
                        if let Err(e) = sink.send(f.text()).await {
                            break 'link LinkEnd::Write(e.to_string());
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
                            let events = match store
                                .read(move |c| replication::events_after(c, after, BATCH))
                                .await
                            {
                                Ok(e) => e,
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
                tokio::select! {
                    _ = self.shutdown.cancelled() => break 'link LinkEnd::ShuttingDown,
                    // Also cancelled by shutdown (a child token): say which.
                    _ = replaced.cancelled(), if !self.shutdown.is_cancelled() => {
                        break 'link if self.topology.lock().is_dropped(&peer) { LinkEnd::Forgotten } else { LinkEnd::Replaced };
                    }
                    _ = &mut silence => break 'link LinkEnd::Silent,
                    r = commits.changed() => {
                        if r.is_err() { break 'link LinkEnd::StoreClosed; }
                        pump = true;
                    }
                    r = topology.changed() => {
                        if r.is_err() { break 'link LinkEnd::MeshClosed; }
                        tell = true;
                    }
                    r = presence.changed() => {
                        if r.is_err() { break 'link LinkEnd::RouterClosed; }
                        presence_due.get_or_insert(tokio::time::Instant::now() + PRESENCE_COALESCE);
                    }
                    _ = tokio::time::sleep_until(presence_due.unwrap_or_else(far_future)), if presence_due.is_some() => {
                        presence_due = None;
                        let version = self.presence_version.fetch_add(1, Ordering::Relaxed) + 1;
                        let f = PeerFrame::Presence { incarnation: router.incarnation, version, agents: router.local_presence() };
                        if let Err(e) = sink.send(f.text()).await { break 'link LinkEnd::Write(e.to_string()); }
                    }
                    _ = heartbeat.tick() => {
                        if let Err(e) = sink.send(PeerFrame::Heartbeat { head: Some(store.log_head()) }.text()).await { break 'link LinkEnd::Write(e.to_string()); }
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
                            PeerFrame::Sync { cursor } => {
                                if let Some(prev) = sent_upto && prev > cursor {
                                    router.metrics.retried_total.fetch_add(prev - cursor, Ordering::Relaxed);
                                }
                                sent_upto = Some(cursor);
                                pump = true;
                                self.progress.update(&peer, |p| p.acked = Some(cursor));
                            }
                            PeerFrame::Events { events } => {
                                let (pushed, answer) = match submit_apply(&router, &log_key, events).await {
                                    Ok(a) => a,
                                    Err(e) => break 'link LinkEnd::Store(e.to_string()),
                                };
                                // Full: the disk is behind; stop reading until it catches up.
                                if pushes.send(pushed).await.is_err() || applying.send(answer).await.is_err() {
                                    break 'link LinkEnd::CompleterStopped;
                                }
                            }
                            PeerFrame::Ack { cursor } => {
                                self.statuses.update(&key, |s| s.acked = cursor);
                                self.progress.update(&peer, |p| p.acked = Some(cursor));
                            }
                            PeerFrame::Heartbeat { head: Some(head) } => self.progress.update(&peer, |p| p.head = Some(head)),
                            PeerFrame::Presence { incarnation, version, agents } => {
                                // A cheap filter; the router itself ignores a report from a link
                                // that has ended (see `Router::remote_presence`).
                                let live = self.topology.lock().is_live(&peer, link_id);
                                if live {
                                    router.remote_presence(&peer, link_id, incarnation, version, agents);
                                }
                            }
                            PeerFrame::Peers { port, tls, nodes } => self.heard_from(&peer, link_id, accepted_from, (port, tls), nodes),
                            PeerFrame::Delivered { ids } => router.remote_delivered(&ids),
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
        let joined = self.topology.lock().join(peer, dialed, order, handle)?;
        if let Some(old) = joined.replaced {
            old.cancel.cancel();
        }
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
        nodes: Vec<PeerAddr>,
    ) {
        let Some(fresh) = self
            .topology
            .lock()
            .heard_from(peer, id, accepted_from, listens, nodes)
        else {
            return;
        };
        self.bump();
        for node in fresh {
            tracing::debug!(?node, via = ?peer, "looking for a node when it is not linked");
            self.spawn_discovery(node);
        }
    }

    /// Starts the tasks that finish a link's applies (in the node's task tracker). They drain
    /// what is queued even after the link ends: those commits happen anyway.
    fn completer(&self, peer: &str) -> Completer {
        let (pushes, mut push_rx) = mpsc::channel::<oneshot::Receiver<Vec<Stored>>>(APPLYING);
        let router = self.router.clone();
        self.tracker.spawn(async move {
            while let Some(messages) = push_rx.recv().await {
                // Dropped unsent: the apply failed, and the completer reports it.
                if let Ok(messages) = messages.await {
                    router.push_remote(&messages);
                }
            }
        });
        let (applying, mut rx) = mpsc::channel::<ApplyAnswer>(APPLYING);
        let (cursor_tx, applied_upto) = watch::channel(0u64);
        let (fail_tx, failed) = oneshot::channel();
        let (router, peer) = (self.router.clone(), peer.to_owned());
        let progress = self.progress.clone();
        self.tracker.spawn(async move {
            while let Some(answer) = rx.recv().await {
                let (applied, pushed) = match answer.await {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) => {
                        tracing::warn!(?peer, error = ?e.to_string(), "applying a peer's events failed");
                        let _ = fail_tx.send(LinkEnd::Store(e.to_string()));
                        return;
                    }
                    Err(_) => {
                        let _ = fail_tx.send(LinkEnd::StoreStopped);
                        return;
                    }
                };
                let m = &router.metrics;
                m.deduplicated_total
                    .fetch_add(applied.duplicates, Ordering::Relaxed);
                m.replicated_total
                    .fetch_add(pushed as u64, Ordering::Relaxed);
                let cursor = applied.cursor;
                router.apply_remote(applied);
                progress.applied(&peer, cursor);
                cursor_tx.send_replace(cursor);
            }
        });
        Completer {
            pushes,
            applying,
            applied_upto,
            failed,
        }
    }
}

/// One queued apply: its answer (the apply, without its messages, and how many it brought)
/// arrives once it has committed.
type ApplyAnswer = oneshot::Receiver<Result<(Applied, usize)>>;

/// A link's end of its completer tasks.
struct Completer {
    /// Each apply's new messages, sent as soon as the apply has run: pushed in order.
    pushes: mpsc::Sender<oneshot::Receiver<Vec<Stored>>>,
    /// Each apply's answer: taken in order as they commit.
    applying: mpsc::Sender<ApplyAnswer>,
    /// The peer's log applied and committed up to here.
    applied_upto: watch::Receiver<u64>,
    /// Why applying stopped, if it failed.
    failed: oneshot::Receiver<LinkEnd>,
}

/// Queues an apply of a peer's events on the store. The job only touches the store: it hands
/// the new messages back over a oneshot as soon as they are applied, and the link side pushes
/// them, off the writer thread and before the commit (a peer's message reaches local sessions
/// without waiting for the disk; see `Router::push_remote` for why that is safe).
async fn submit_apply(
    router: &Router,
    peer: &str,
    events: Vec<replication::Event>,
) -> Result<(oneshot::Receiver<Vec<Stored>>, ApplyAnswer)> {
    let (pushed_tx, pushed_rx) = oneshot::channel();
    let p = peer.to_owned();
    let answer = router
        .store
        .submit_isolated(move |c| {
            let mut applied = replication::apply(c, &p, events)?;
            let messages = std::mem::take(&mut applied.messages);
            let n = messages.len();
            let _ = pushed_tx.send(messages);
            Ok((applied, n))
        })
        .await?;
    Ok((pushed_rx, answer))
}

pub(super) fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}
