//! Logs the stream lost whole. The consumer sees a gap when an origin's next batch names a
//! `prev` past this node's cursor — but an origin quiet for longer than the stream's age limit
//! has no batch left to show it, and this node may never even have heard of an origin that is
//! gone for good while other nodes hold its state.
//!
//! So once entries left the stream before this node read them (its consumer started past
//! where it had read, or found stream sequences missing; a node without a position, or on a
//! recreated stream, cannot know, and counts as such), every node heard is asked what its
//! snapshot would cover (`snapshot::covered`). An origin covered past this node's cursor
//! whose log has no batch left in the stream is a gap from the cursor to that cover, filled
//! like any other (`catchup`). An origin that still has batches in the stream is left to the
//! consumer, which reads them and checks their `prev`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::TryStreamExt;

use super::Shared;
use super::consume::record_gap;
use super::status::Gap;
use crate::store::replication;

/// Surveys every node heard and not surveyed yet, if a survey is on. `false` if some could
/// not be (they are tried again).
pub(super) async fn run(s: &Arc<Shared>) -> bool {
    if !s.catch_up.surveying.load(Ordering::Relaxed) {
        return true;
    }
    let mut all = true;
    for (node, instance, head) in s.status.live_nodes() {
        if s.catch_up.surveyed.lock().contains(&instance) {
            continue;
        }
        let (cover, names) = match super::snapshot::covered(s, &instance).await {
            Ok(c) => (c.cover, c.names),
            // A node of a version without snapshots: what its heartbeat says of its own log.
            Err(e) if e.no_responders => (
                BTreeMap::from([(instance.clone(), head)]),
                BTreeMap::from([(instance.clone(), node.clone())]),
            ),
            Err(e) => {
                tracing::debug!(?node, error = %e, "backbone: cannot ask a node what it holds");
                all = false;
                continue;
            }
        };
        match look(s, &cover, &names).await {
            Ok(()) => {
                s.catch_up.surveyed.lock().insert(instance);
            }
            Err(e) => {
                tracing::debug!(error = %e, "backbone: cannot look for logs in the stream");
                all = false;
            }
        }
    }
    all
}

/// Records a gap for every origin `cover` holds past this node's cursor whose log has no
/// batch in the stream.
async fn look(
    s: &Arc<Shared>,
    cover: &BTreeMap<String, u64>,
    names: &BTreeMap<String, String>,
) -> Result<(), String> {
    let own = s.router.store.instance().to_owned();
    let cursors: BTreeMap<String, u64> = s
        .router
        .store
        .read_committed(replication::cursors)
        .await
        .map_err(|e| format!("reading the cursors: {e}"))?
        .into_iter()
        .collect();
    let mut stream = None;
    for (origin, &seq) in cover {
        if *origin == own
            || seq <= cursors.get(origin).copied().unwrap_or(0)
            || s.catch_up.in_stream.lock().contains(origin)
        {
            continue;
        }
        if stream.is_none() {
            stream = Some(super::connect::stream(s).await?);
        }
        let Some(stream) = &stream else { continue };
        // Any node id: a data dir's log is under the node id it ran as.
        let filter = format!("{}.events.*.{origin}", super::PREFIX);
        let mut subjects = stream
            .info_with_subjects(&filter)
            .await
            .map_err(|e| format!("looking for {filter} in the stream: {e}"))?;
        let held = subjects
            .try_next()
            .await
            .map_err(|e| format!("looking for {filter} in the stream: {e}"))?
            .is_some();
        if held {
            s.catch_up.in_stream.lock().insert(origin.clone());
            continue;
        }
        // The cursor again, after the stream's answer: nothing of this log can be applied
        // from the stream meanwhile, so a gap recorded now is one.
        let node = names
            .get(origin)
            .cloned()
            .or_else(|| s.status.node_of(origin))
            .unwrap_or_else(|| origin.clone());
        let (n, i) = (node, origin.clone());
        let gap = s
            .router
            .store
            .write(move |tx| {
                let cursor = replication::cursor(tx, &i)?;
                if seq <= cursor {
                    return Ok(None);
                }
                let g = Gap {
                    node: n,
                    instance: i,
                    from: cursor + 1,
                    to: seq,
                    at: crate::message::now_ms(),
                };
                Ok(Some(record_gap(tx, g)?))
            })
            .await
            .map_err(|e| format!("recording a gap: {e}"))?;
        if let Some(g) = gap {
            tracing::error!(
                origin = %g.node,
                from = g.from,
                to = g.to,
                "this origin's log left the stream (its age or size limit) before this node \
                 read it: this node lacks those entries until a snapshot fills them"
            );
            s.status.gap(g);
        }
    }
    Ok(())
}
