//! Finishing a link's applies off the link's loop: one task pushes each apply's new messages
//! to local sessions as soon as the apply has run (before its commit), one takes the commits
//! in order, hands their directory changes to the router and publishes the cursors — the
//! peer's own log's, which the link acks, and each origin's, which links relay from. Neither
//! runs on the store's writer thread, which only applies.

use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot, watch};

use super::Mesh;
use super::link::LinkEnd;
use crate::core::Router;
use crate::error::Result;
use crate::store::Stored;
use crate::store::replication::{self, Applied};
use crate::store::snapshot;

/// `events` frames being applied at once per link. The link queues each apply and reads on;
/// a completer takes the results in order. Waiting for each commit before reading the next
/// frame made one slow disk write delay every frame queued behind it by a commit each.
const APPLYING: usize = 64;

/// One queued apply: its answer (the apply, without its messages, and how many it brought;
/// `None` for relayed entries this node cannot take yet) arrives once it has committed.
type ApplyAnswer = oneshot::Receiver<Result<Option<(Applied, usize)>>>;

/// Whose log an apply is of.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// The peer's own (`events`).
    Peer,
    /// Another origin's, relayed by the peer (`relay`): its log key.
    Relayed(String),
    /// A page of the peer's snapshot: no cursor moves.
    Snapshot,
    /// The end of the peer's snapshot: the cursors it moved come back in `Applied::cursors`.
    SnapshotEnd,
}

/// What one queued apply does on the writer.
pub(super) enum Job {
    /// Log entries (`events` or `relay`, by the source; `after`: where a relayed run starts).
    Events(u64, Vec<replication::Event>),
    /// A snapshot page.
    Page(Vec<replication::EventBody>),
    /// A snapshot's end.
    End(snapshot::Start),
}

/// A link's end of its completer tasks, where it queues applies.
pub(super) struct Completer {
    /// Each apply's new messages, sent as soon as the apply has run: pushed in order.
    pushes: mpsc::Sender<oneshot::Receiver<Vec<Stored>>>,
    /// Each apply's answer: taken in order as they commit.
    applying: mpsc::Sender<(Source, ApplyAnswer)>,
}

impl Completer {
    /// Queues `job` of `source` (log entries, or a part of a snapshot) on the
    /// store. The job only touches the store: it hands the new messages back over a oneshot
    /// as soon as they are applied, and the link side pushes them, off the writer thread and
    /// before the commit (a peer's message reaches local sessions without waiting for the
    /// disk; see `Router::push_remote` for why that is safe). `key`: the peer's log key.
    pub async fn submit(
        &self,
        router: &Router,
        key: &str,
        source: Source,
        job: Job,
    ) -> std::result::Result<(), LinkEnd> {
        let (pushed_tx, pushed_rx) = oneshot::channel();
        let origin = match &source {
            Source::Relayed(o) => o.clone(),
            _ => key.to_owned(),
        };
        let relayed = matches!(source, Source::Relayed(_));
        let answer = router
            .store
            .submit_isolated(move |c| {
                let applied = match job {
                    Job::Events(after, events) if relayed => {
                        replication::apply_relayed(c, &origin, after, events)?
                    }
                    Job::Events(_, events) => Some(replication::apply(c, &origin, events)?),
                    Job::Page(items) => Some(snapshot::apply_page(c, items)?),
                    Job::End(start) => Some(Applied {
                        cursors: snapshot::finish(c, &origin, &start)?,
                        ..Applied::default()
                    }),
                };
                let Some(mut applied) = applied else {
                    return Ok(None);
                };
                let messages = std::mem::take(&mut applied.messages);
                let n = messages.len();
                let _ = pushed_tx.send(messages);
                Ok(Some((applied, n)))
            })
            .await
            .map_err(|e| LinkEnd::Store(e.to_string()))?;
        // Full: the disk is behind; stop reading until it catches up.
        if self.pushes.send(pushed_rx).await.is_err()
            || self.applying.send((source, answer)).await.is_err()
        {
            return Err(LinkEnd::CompleterStopped);
        }
        Ok(())
    }
}

impl Mesh {
    /// Starts the tasks that finish a link's applies (in the node's task tracker). They drain
    /// what is queued even after the link ends: those commits happen anyway. `key`: the
    /// peer's log key. Also returns the cursor of the peer's own log, applied and committed
    /// (what the link acks), and why applying stopped, if it fails.
    pub(super) fn completer(
        &self,
        peer: &str,
        key: &str,
    ) -> (Completer, watch::Receiver<u64>, oneshot::Receiver<LinkEnd>) {
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
        let (applying, mut rx) = mpsc::channel::<(Source, ApplyAnswer)>(APPLYING);
        let (cursor_tx, applied_upto) = watch::channel(0u64);
        let (fail_tx, failed) = oneshot::channel();
        let (router, peer, key) = (self.router.clone(), peer.to_owned(), key.to_owned());
        let (progress, heads) = (self.progress.clone(), self.relays.clone());
        self.tracker.spawn(async move {
            while let Some((source, answer)) = rx.recv().await {
                let (mut applied, pushed) = match answer.await {
                    Ok(Ok(Some(a))) => a,
                    Ok(Ok(None)) => {
                        if let Source::Relayed(origin) = &source {
                            tracing::debug!(?peer, ?origin, "relayed entries start past what this node has applied; left for another path");
                        }
                        continue;
                    }
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
                let moved = std::mem::take(&mut applied.cursors);
                router.apply_remote(applied);
                match source {
                    Source::Peer => {
                        progress.applied(&peer, cursor);
                        cursor_tx.send_replace(cursor);
                        heads.advance(&key, cursor);
                    }
                    Source::Relayed(origin) => heads.advance(&origin, cursor),
                    Source::Snapshot => {}
                    Source::SnapshotEnd => {
                        for (origin, c) in moved {
                            if origin == key {
                                progress.applied(&peer, c);
                                cursor_tx.send_replace(c);
                            }
                            heads.advance(&origin, c);
                        }
                    }
                }
            }
        });
        (Completer { pushes, applying }, applied_upto, failed)
    }
}
