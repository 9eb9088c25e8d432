//! Log compaction on a backbone node (`store::compact`): the stream is the one reader of this
//! node's own log, so an entry may go once the stream has acknowledged it. The stream stands
//! in `peer_applied` as the peer [`STREAM_PEER`], marked at what the publisher has shipped;
//! other origins' entries a backbone node applied are needed by nobody (their own nodes
//! publish them), unless direct-mesh peers of this node say otherwise through their own marks.
//!
//! A consumer that needs entries compacted here — the stream lost them (limits, a server that
//! came back without its last writes, a recreated stream) — sees a gap in the batches and
//! catches up from a snapshot (`catchup.rs`).

use std::sync::Arc;

use super::Shared;
use crate::store::compact::{self, Applied};

/// The stream's name in `peer_applied` (not an instance id: those are ULIDs).
pub(super) const STREAM_PEER: &str = "backbone-stream";

/// Compacts every `--compact-interval` until the node stops.
pub(super) async fn run(s: Arc<Shared>) {
    let store = &s.router.store;
    // Held at 0 until the publisher knows what the stream has: a direct-mesh pass (a node may
    // have both) must not compact what the stream has not acknowledged yet.
    let hold = vec![applied(&s, 0)];
    let mark = vec![STREAM_PEER.to_owned()];
    if let Err(e) = store
        .write(move |tx| compact::record(tx, &hold, &mark, crate::message::now_ms(), None))
        .await
    {
        tracing::debug!(error = %e, "backbone: cannot hold the log for the stream");
    }
    let mut tick = tokio::time::interval(s.router.limits.compaction.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Nothing before the publisher has heard from the stream where it stands.
        let Some(shipped) = s.status.shipped_known() else {
            continue;
        };
        let reports = vec![applied(&s, shipped)];
        let linked = vec![STREAM_PEER.to_owned()];
        let stop = s.shutdown.clone();
        match compact::pass(store, reports, linked, None, || stop.is_cancelled()).await {
            Ok(d) if !d.is_empty() => tracing::debug!(
                events = d.events,
                relayed = d.relayed,
                "compacted the replication log"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "backbone log compaction pass failed"),
        }
    }
}

fn applied(s: &Shared, seq: u64) -> Applied {
    Applied {
        peer: STREAM_PEER.to_owned(),
        origin: s.router.store.instance().to_owned(),
        seq,
    }
}
