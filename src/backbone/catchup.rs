//! Filling gaps: entries of an origin's log that the stream dropped before this node read them
//! (found by `consume` from a batch's `prev`, or by `survey`) come back as the current state
//! of a node that has them (`snapshot`).
//!
//! The gap's origin is asked first when it is online (it has its whole log), else any node
//! online whose snapshot covers the gap's end. Each page is applied as it comes (stamps decide
//! conflicts, messages deduplicate by id: the batches the consumer applies meanwhile, and a
//! snapshot applied twice, change nothing more) and only at the end, in one transaction, the
//! cursors move to the cover (never back) and every gap the cover reaches is cleared or
//! shortened. Batches in the stream past the cover go on through the consumer. A snapshot cut
//! short leaves cursors and gaps as they were and is taken again; while no node that can fill
//! a gap answers, this retries with backoff — at once when a node is first heard — and
//! `/health` says what it waits for.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Shared;
use super::consume::GAP;
use super::snapshot::{self, Covered};
use super::status::Gap;
use crate::store::marks;
use crate::store::replication::EventBody;

/// What wakes the catch-up task, and what the survey of lost logs has done in this run.
#[derive(Default)]
pub(crate) struct Wake {
    notify: Notify,
    /// Entries left the stream unread in this run: survey every node heard (see `survey`).
    pub(super) surveying: AtomicBool,
    /// Nodes (by instance) whose cover has been looked at since the survey began.
    pub(super) surveyed: Mutex<BTreeSet<String>>,
    /// Origins whose batches the stream still holds: the consumer finds their gaps itself.
    pub(super) in_stream: Mutex<BTreeSet<String>>,
}

impl Wake {
    /// Something to look at (a permit is kept while the task is busy: no wake is lost).
    pub(super) fn wake(&self) {
        self.notify.notify_one();
    }

    /// The stream dropped entries this node had not read (or may have: a new node, a new
    /// stream): every node heard, now and later, is surveyed again.
    pub(super) fn survey(&self) {
        self.surveyed.lock().clear();
        self.in_stream.lock().clear();
        self.surveying.store(true, Ordering::Relaxed);
        self.wake();
    }
}

/// Fills gaps until the node stops: on every wake, and again with backoff while a gap waits
/// for a node that can fill it or a node could not be surveyed.
pub(super) async fn run(s: Arc<Shared>) {
    let rule = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut attempt = 0u32;
    // Gaps recorded by an earlier run are loaded already: look at once.
    let mut retry = Some(tokio::time::Instant::now());
    loop {
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = s.catch_up.notify.notified() => {}
            _ = tokio::time::sleep_until(retry.unwrap_or(far)), if retry.is_some() => {}
        }
        retry = None;
        if !super::until_connected(&s).await {
            return;
        }
        let surveyed = tokio::select! {
            _ = s.shutdown.cancelled() => return,
            r = super::survey::run(&s) => r,
        };
        let filled = match s.status.has_gaps() {
            false => Ok(()),
            true => tokio::select! {
                _ = s.shutdown.cancelled() => return,
                r = fill(&s) => r,
            },
        };
        match filled {
            Ok(()) => {
                s.status.catch_up(|c| c.waiting = None);
                // Gaps left were found meanwhile: at them at once.
                if s.status.has_gaps() {
                    retry = Some(tokio::time::Instant::now());
                } else if !surveyed {
                    retry = Some(tokio::time::Instant::now() + rule.delay(attempt));
                    attempt = attempt.saturating_add(1);
                } else {
                    attempt = 0;
                }
            }
            Err(why) => {
                if s.status.catch_up_now().waiting.as_ref() != Some(&why) {
                    tracing::warn!("backbone: a gap cannot be filled yet: {why}; retrying");
                }
                s.status.catch_up(|c| c.waiting = Some(why));
                retry = Some(tokio::time::Instant::now() + rule.delay(attempt));
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Fills every gap now known, one snapshot each unless an earlier one covered it too; a gap
/// that cannot be filled now does not hold up the others. The error says why of each left.
async fn fill(s: &Arc<Shared>) -> Result<(), String> {
    let mut left = Vec::new();
    for instance in s.status.gaps().into_iter().map(|g| g.instance) {
        // Filled by an earlier snapshot of this round, or grown meanwhile: as it is now.
        let Some(gap) = s.status.gaps().into_iter().find(|g| g.instance == instance) else {
            continue;
        };
        let taken = match choose(s, &gap).await {
            Ok(source) => take(s, source).await,
            Err(e) => Err(e),
        };
        let covered = !s
            .status
            .gaps()
            .iter()
            .any(|g| g.instance == instance && g.to <= gap.to);
        match taken {
            Err(e) => left.push(e),
            Ok(()) if !covered => left.push(format!(
                "a snapshot did not cover entries {}..{} of {}'s log",
                gap.from, gap.to, gap.node
            )),
            Ok(()) => {}
        }
    }
    match left.is_empty() {
        true => Ok(()),
        false => Err(left.join("; ")),
    }
}

/// The origin itself if it is online, else the first node online that holds the gap's
/// entries. Its error says why no node can fill the gap now.
async fn choose(s: &Shared, gap: &Gap) -> Result<Covered, String> {
    let mut candidates = s.status.live_nodes();
    candidates.sort_by_key(|(_, i, _)| *i != gap.instance);
    let mut why = Vec::new();
    if !candidates.iter().any(|(_, i, _)| *i == gap.instance) {
        why.push(format!("{} is not online", gap.node));
    }
    for (node, instance, _) in candidates {
        match snapshot::covered(s, &instance).await {
            Ok(c) => {
                let held = c.cover.get(&gap.instance).copied().unwrap_or(0);
                if held >= gap.to {
                    return Ok(c);
                }
                why.push(format!("{node} holds {}'s log only up to {held}", gap.node));
            }
            Err(e) => why.push(format!("{node}: {e}")),
        }
    }
    Err(format!(
        "no node online holds entries {}..{} of {}'s log ({})",
        gap.from,
        gap.to,
        gap.node,
        why.join("; ")
    ))
}

/// Takes one snapshot: every page, then the end, which moves the cursors and fills the gaps
/// the cover reaches.
async fn take(s: &Arc<Shared>, src: Covered) -> Result<(), String> {
    let began = Instant::now();
    tracing::info!(from = %src.node, "backbone: filling a gap from a snapshot");
    s.status.catch_up(|c| {
        c.from = Some(src.node.clone());
        c.pages = Some(0);
    });
    let pulled = snapshot::pull(s, &src.instance, |items, n| async move {
        apply(s, items).await?;
        s.status.catch_up(|c| c.pages = Some(n));
        Ok(())
    })
    .await;
    s.status.catch_up(|c| {
        c.from = None;
        c.pages = None;
    });
    let pages = pulled.map_err(|e| format!("{}: {e}", src.node))?;
    let Covered {
        node,
        instance,
        start,
        cover,
        ..
    } = src;
    let covered = cover.clone();
    let moved = s
        .router
        .store
        .write(move |tx| {
            let moved = crate::store::snapshot::finish(tx, &instance, &start)?;
            for (key, value) in marks::with_prefix(tx, GAP)? {
                let Ok(g) = serde_json::from_str::<Gap>(&value) else {
                    continue;
                };
                let Some(&c) = covered.get(&g.instance) else {
                    continue;
                };
                match g.after(c) {
                    None => marks::clear(tx, &key)?,
                    Some(left) if left != g => {
                        marks::set(tx, &key, &serde_json::to_string(&left).unwrap_or_default())?
                    }
                    Some(_) => {}
                }
            }
            Ok(moved)
        })
        .await
        .map_err(|e| format!("ending the snapshot from {node}: {e}"))?;
    for (origin, c) in &moved {
        s.status.cursor_moved(origin, *c);
    }
    s.status.filled(&cover);
    let ms = began.elapsed().as_millis() as u64;
    tracing::info!(from = %node, pages, ms, "backbone: took a snapshot; gaps it covers are filled");
    s.status.catch_up(|c| {
        c.waiting = None;
        c.last = Some(format!("from {node}: {pages} pages in {ms} ms"));
    });
    Ok(())
}

/// Applies one page (committed before its new messages go to local sessions).
async fn apply(s: &Shared, items: Vec<EventBody>) -> Result<(), String> {
    if items.is_empty() {
        return Ok(());
    }
    let mut applied = s
        .router
        .store
        .write(move |tx| crate::store::snapshot::apply_page(tx, items))
        .await
        .map_err(|e| format!("applying a snapshot page: {e}"))?;
    let messages = std::mem::take(&mut applied.messages);
    s.router
        .metrics
        .replicated_total
        .fetch_add(messages.len() as u64, Ordering::Relaxed);
    s.router.push_remote(&messages);
    s.router.apply_remote(applied);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cover_from_the_start_shortens_a_gap_and_one_past_its_end_clears_it() {
        let g = Gap {
            node: "n1".into(),
            instance: "i".into(),
            from: 5,
            to: 10,
            at: 0,
        };
        assert_eq!(g.after(3), Some(g.clone()));
        assert_eq!(g.after(7).map(|g| (g.from, g.to)), Some((8, 10)));
        assert_eq!(g.after(10), None);
        assert_eq!(g.after(12), None);
    }
}
