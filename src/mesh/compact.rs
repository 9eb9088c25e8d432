//! The mesh's side of log compaction (`store::compact`) and snapshots (`store::snapshot`):
//! what peers say they have applied, the passes that compact by it, and a link's sending of
//! a snapshot to a peer whose cursor is below what this node still keeps.
//!
//! Peers' reports are the cursors a node already states: `sync` and `ack` (this node's log),
//! the cursors in a relaying peer's `peers` frame, and the `applied` list of its `routes`
//! frames (every other origin's). They are gathered in memory and handed to the store with
//! each pass, which also marks every linked peer as seen: a peer is away from its last link.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::SinkExt;
use parking_lot::Mutex;

use super::Mesh;
use super::frames::{OriginCursor, PeerFrame};
use super::link::LinkEnd;
use crate::store::compact::{self, Applied};
use crate::store::snapshot::{self, Pos, Start};
use crate::transport::TextSink;

/// Bytes of changes per snapshot page: well under the 1 MiB frame limit of a peer link.
const PAGE_BYTES: usize = 256 * 1024;

/// What peers said they have applied since the last pass: (peer's log key, origin) → seq.
#[derive(Default)]
pub(super) struct Reports(Mutex<HashMap<(String, String), u64>>);

impl Reports {
    /// `peer` has applied `origin`'s log up to `seq`.
    pub(super) fn heard(&self, peer: &str, origin: &str, seq: u64) {
        let mut m = self.0.lock();
        let e = m.entry((peer.to_owned(), origin.to_owned())).or_default();
        *e = (*e).max(seq);
    }

    fn take(&self) -> Vec<Applied> {
        std::mem::take(&mut *self.0.lock())
            .into_iter()
            .map(|((peer, origin), seq)| Applied { peer, origin, seq })
            .collect()
    }
}

impl Mesh {
    /// Records a relaying peer's cursors of every origin (from `peers` or `routes`).
    pub(super) fn heard_applied(&self, peer_key: &str, cursors: &[OriginCursor]) {
        for c in cursors {
            self.reports.heard(peer_key, &c.origin, c.cursor);
        }
    }

    /// This node's cursors of every origin, committed, for `routes` frames.
    pub(super) fn applied_now(&self) -> Vec<OriginCursor> {
        self.relays
            .all()
            .into_iter()
            .map(|(origin, cursor)| OriginCursor { origin, cursor })
            .collect()
    }

    /// Compacts the logs every `--compact-interval`: records what peers reported, then
    /// deletes in batches until nothing is left to delete.
    pub(super) async fn compact_passes(self: Arc<Self>) {
        let policy = self.router.limits.compaction;
        // Seeded from the store, so a restarted node reports (and relays) origins it applied
        // before, not only those that move in this run.
        if let Ok(cursors) = self
            .router
            .store
            .read_committed(crate::store::replication::cursors)
            .await
        {
            for (origin, c) in cursors {
                self.relays.advance(&origin, c);
            }
        }
        let mut tick = tokio::time::interval(policy.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.compact_once(policy.keep_absent).await {
                tracing::debug!(error = %e, "log compaction pass failed");
            }
        }
    }

    async fn compact_once(&self, keep_absent: Option<std::time::Duration>) -> crate::Result<()> {
        let reports = self.reports.take();
        let linked = self.topology.lock().linked_keys();
        let now = crate::message::now_ms();
        let cutoff = keep_absent.map(|k| now.saturating_sub(k.as_millis() as i64));
        let stop = self.shutdown.clone();
        let all = compact::pass(&self.router.store, reports, linked, cutoff, || {
            stop.is_cancelled()
        })
        .await?;
        if !all.is_empty() {
            tracing::debug!(
                events = all.events,
                relayed = all.relayed,
                "compacted the replication log"
            );
        }
        Ok(())
    }
}

/// A snapshot a link is sending: where it began and how far it has got.
pub(super) struct Sending {
    start: Start,
    pos: Pos,
    pages: u64,
    began: std::time::Instant,
}

impl Sending {
    /// Begins a snapshot: this node's log head and cursors, read before any row.
    pub(super) async fn begin(mesh: &Mesh) -> Result<Sending, LinkEnd> {
        let start = mesh
            .router
            .store
            .read_committed(snapshot::begin)
            .await
            .map_err(|e| LinkEnd::Store(e.to_string()))?;
        Ok(Sending {
            start,
            pos: Pos::default(),
            pages: 0,
            began: std::time::Instant::now(),
        })
    }

    /// Sends the next page (read on the reader thread); at the end, the `snapshot_end` frame,
    /// and returns what the peer has applied once it takes it: this node's head and its
    /// cursors of other origins.
    pub(super) async fn step(
        &mut self,
        mesh: &Mesh,
        peer: &str,
        sink: &mut TextSink,
    ) -> Result<Option<Start>, LinkEnd> {
        let pos = self.pos.clone();
        let (items, next) = mesh
            .router
            .store
            .read_committed(move |c| snapshot::page(c, &pos, PAGE_BYTES))
            .await
            .map_err(|e| LinkEnd::Store(e.to_string()))?;
        if !items.is_empty() {
            self.pages += 1;
            let f = PeerFrame::Snapshot { items }.text();
            sink.send(f)
                .await
                .map_err(|e| LinkEnd::Write(e.to_string()))?;
        }
        if let Some(next) = next {
            self.pos = next;
            return Ok(None);
        }
        let end = PeerFrame::SnapshotEnd {
            head: self.start.head,
            cursors: self
                .start
                .cursors
                .iter()
                .map(|(origin, cursor)| OriginCursor {
                    origin: origin.clone(),
                    cursor: *cursor,
                })
                .collect(),
        };
        sink.send(end.text())
            .await
            .map_err(|e| LinkEnd::Write(e.to_string()))?;
        tracing::info!(
            ?peer,
            pages = self.pages,
            head = self.start.head,
            ms = self.began.elapsed().as_millis() as u64,
            "sent a snapshot: the peer's cursor was below the log kept here"
        );
        Ok(Some(self.start.clone()))
    }
}
