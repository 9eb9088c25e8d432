//! Reading every other node's log from the stream and applying it, exactly once and in each
//! origin's order.
//!
//! One durable pull consumer per data dir (`sb-<instance>`) reads the whole stream in stream
//! order. Each batch is applied by one store job that, in one transaction, checks the batch
//! against the origin's cursor, applies it (`store::replication::apply`: idempotent, the cursor
//! moves with it) and records how far into the stream this node has read (a store mark). The
//! batch is acked only after that commit. Applies are pipelined — the loop queues each job and
//! reads on; a completer takes the commits in order, then acks.
//!
//! A restart (of the node, or of consumption after an error or a NATS outage) re-creates the
//! consumer at the committed mark + 1, so messages the consumer had handed out and nobody acked
//! cannot be redelivered after later ones: order holds, and the store, not the consumer, says
//! where reading resumes — also after the store lost its last commits in a power loss. A stream
//! that was deleted and made again (its creation time differs from the mark's) is read from its
//! start; the cursors skip whatever was applied before.
//!
//! Each batch names the origin seq it follows. When that is past this node's cursor, the
//! entries between never reached this node — the stream dropped them (age or size limit)
//! before it read them. They cannot come from the stream any more: the gap is recorded in the
//! store (a mark, so it is still known after a restart), `/health` shows the node degraded,
//! and the batch is applied, so the origin's later mail and changes still flow. The gap is
//! then filled from a snapshot of a node that has those entries (`backbone::snapshot`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::publish::Batch;
use super::status::Gap;
use crate::error::Result;
use crate::store::marks;
use crate::store::replication::{self, Applied};
use crate::store::{Stored, Tx};

/// Batches being applied at once.
const APPLYING: usize = 64;
/// How long the server waits for an ack before it hands a batch out again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// A consumer nobody has read for this long is removed by the server (its node comes back
/// to a new one at its own mark).
const INACTIVE: Duration = Duration::from_secs(30 * 86_400);
/// The store mark of the stream position.
const POSITION: &str = "backbone:position";
/// The store marks of gaps, one per origin instance.
pub(super) const GAP: &str = "backbone:gap:";

/// Consumes until the node stops.
pub(super) async fn run(s: Arc<Shared>) {
    let mut attempt = 0u32;
    loop {
        if !super::until_connected(&s).await {
            return;
        }
        match consume(&s).await {
            Ok(()) if s.shutdown.is_cancelled() => return,
            Ok(()) => attempt = 0,
            Err(e) => {
                s.status.consumer(|c| c.error = Some(e.clone()));
                tracing::debug!(error = %e, "backbone consumer stopped; starting over");
            }
        }
        if !super::pause(&s, attempt).await {
            return;
        }
        attempt = attempt.saturating_add(1);
    }
}

/// Gaps recorded by earlier runs, for `/health` from the node's first answer on.
pub(super) async fn load_gaps(s: &Shared) {
    let marks = s
        .router
        .store
        .read(|c| marks::with_prefix(c, GAP))
        .await
        .unwrap_or_default();
    for (_, value) in marks {
        if let Ok(g) = serde_json::from_str::<Gap>(&value) {
            s.status.gap(g);
        }
    }
}

/// The stream's identity (its creation time) and the position read so far, from the store.
fn parse_position(mark: Option<String>) -> Option<(i128, u64)> {
    let m = mark?;
    let (created, seq) = m.split_once(' ')?;
    Some((created.parse().ok()?, seq.parse().ok()?))
}

/// One run of consumption: from the store's position to the first error.
async fn consume(s: &Arc<Shared>) -> std::result::Result<(), String> {
    let mut stream = super::connect::stream(s).await?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("reading the stream's state: {e}"))?;
    let created = info.created.unix_timestamp_nanos();
    let first_available = info.state.first_sequence;
    let mark = s
        .router
        .store
        .read(|c| marks::get(c, POSITION))
        .await
        .map_err(|e| format!("reading the stream position: {e}"))?;
    let last = info.state.last_sequence;
    let known = parse_position(mark.clone()).is_some_and(|(c, _)| c == created);
    let start = match parse_position(mark) {
        // A server that lost its last writes (an R1 stream after a power loss) numbers new
        // batches again from its last one: read from there.
        Some((c, seq)) if c == created && seq > last => {
            tracing::warn!(
                position = seq,
                last,
                "the stream ends before the position this node had read: the NATS server \
                 lost its last writes; reading from its end"
            );
            last + 1
        }
        Some((c, seq)) if c == created => seq + 1,
        // A new stream (or the first run): from its start.
        _ => 1,
    };
    if start < first_available {
        tracing::warn!(
            start,
            first_available,
            "the stream dropped entries this node had not read (its age or size limit); \
             they are filled from a snapshot of a node that has them"
        );
    }
    // Whether anything this node has not read left the stream: then some logs may have left
    // it whole, which no batch shows (`survey`). Without a position on this stream (a new
    // node, a new stream) this node cannot know.
    let mut surveyed = start < first_available || !known;
    if surveyed {
        s.catch_up.survey();
    }
    let name = format!("sb-{}", s.router.store.instance());
    // Whatever the old consumer handed out unacked must not come back after later batches.
    let _ = stream.delete_consumer(&name).await;
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("switchboard node {}", s.router.node_id)),
            deliver_policy: if start <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                }
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: (APPLYING * 8) as i64,
            filter_subject: super::events_filter(),
            inactive_threshold: INACTIVE,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the consumer {name}: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading from the consumer {name}: {e}"))?;
    // What the server holds for it now; each batch then says what is left behind it.
    let pending = consumer.cached_info().num_pending;
    s.status.consumer(|c| {
        c.name = Some(name.clone());
        c.error = None;
        c.position = Some(start.saturating_sub(1));
        c.pending = Some(pending);
    });
    tracing::info!(consumer = %name, start, "backbone consumer reading");
    let (applying, completer) = completer(s);
    let own = s.router.store.instance().to_owned();
    let mut position = start.saturating_sub(1);
    // Every batch of the stream comes to this consumer, in order. One past the next means the
    // ones between were lost on the way (a connection died with them in flight): the server
    // would hand them out again only after ACK_WAIT, after later batches had moved their
    // origins' cursors past them (a false gap, filled only by a snapshot). Reading again from
    // the committed position keeps the order.
    let mut next_seq = start.max(first_available);
    // The client reconnects by itself and the pull goes on, but what the server sent down the
    // dead connection stays handed out to this consumer until ACK_WAIT: with no batch after
    // it to show the loss (above), that mail waited 30 s. Once the connection is back, reading
    // again from the committed position brings it at once.
    let mut connection = s.connected.clone();
    let mut was_down = !*connection.borrow_and_update();
    let ended = loop {
        let next = tokio::select! {
            _ = s.shutdown.cancelled() => break Ok(()),
            changed = connection.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let up = *connection.borrow_and_update();
                if up && was_down {
                    tracing::info!(
                        consumer = %name,
                        "backbone back: reading again from the committed position"
                    );
                    break Ok(());
                }
                was_down |= !up;
                continue;
            }
            n = messages.next() => n,
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => break Err(format!("consumer {name}: {e}")),
            None => break Err(format!("consumer {name} ended")),
        };
        let (seq, pending) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.pending),
            Err(e) => break Err(format!("a message without stream info: {e}")),
        };
        if seq > next_seq {
            break Err(format!(
                "batch {seq} of the stream came before {next_seq}: batches were lost on the way"
            ));
        }
        next_seq = next_seq.max(seq + 1);
        s.status.consumer(|c| c.pending = Some(pending));
        // Sequences between were deleted (the stream's limits) before this node read them
        // (once per run: one survey looks at every node).
        if seq > position + 1 && !surveyed {
            surveyed = true;
            s.catch_up.survey();
        }
        position = position.max(seq);
        let batch = match serde_json::from_slice::<Batch>(&msg.payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(seq, error = %e, "skipping an unreadable batch on the backbone");
                let _ = msg.ack().await;
                continue;
            }
        };
        if batch.instance == own {
            let _ = msg.ack().await;
            continue;
        }
        let job = match submit(s, batch, created, position).await {
            Ok(j) => j,
            Err(e) => break Err(format!("queueing an apply: {e}")),
        };
        if applying.send((msg, job)).await.is_err() {
            break Err("applying stopped".into());
        }
    };
    // Let what was queued commit and be acked, so the next run starts at a settled mark.
    drop(applying);
    let failed = completer.await.ok().flatten();
    match (ended, failed) {
        (_, Some(e)) => Err(e),
        (r, None) => r,
    }
}

/// A queued apply: the batch's origin, and its answer once committed.
struct Job {
    node: String,
    instance: String,
    answer: oneshot::Receiver<Result<(Applied, usize, Option<Gap>)>>,
}

/// Queues one batch's apply. The job checks the batch against the cursor, applies it, and
/// records the stream position and any gap, all in one transaction; the batch's new messages
/// go to local sessions as soon as the apply has run (see `Router::push_remote`).
async fn submit(s: &Arc<Shared>, batch: Batch, created: i128, position: u64) -> Result<Job> {
    let (pushed_tx, pushed_rx) = oneshot::channel::<Vec<Stored>>();
    let Batch {
        node,
        instance,
        prev,
        events,
    } = batch;
    let (n, i) = (node.clone(), instance.clone());
    let answer = s
        .router
        .store
        .submit_isolated(move |c| {
            let cursor = replication::cursor(c, &i)?;
            let gap = match prev > cursor {
                true => Some(record_gap(
                    c,
                    Gap {
                        node: n.clone(),
                        instance: i.clone(),
                        from: cursor + 1,
                        to: prev,
                        at: crate::message::now_ms(),
                    },
                )?),
                false => None,
            };
            let mut applied = replication::apply(c, &i, events)?;
            marks::set(c, POSITION, &format!("{created} {position}"))?;
            let messages = std::mem::take(&mut applied.messages);
            let count = messages.len();
            let _ = pushed_tx.send(messages);
            Ok((applied, count, gap))
        })
        .await?;
    let router = s.router.clone();
    s.tracker.spawn(async move {
        // Dropped unsent: the apply failed, and the completer reports it.
        if let Ok(messages) = pushed_rx.await {
            router.push_remote(&messages);
        }
    });
    Ok(Job {
        node,
        instance,
        answer,
    })
}

/// Records a gap in the store (inside the caller's transaction), as one range with any gap
/// of the same origin recorded before and not filled yet; returns that range.
pub(super) fn record_gap(tx: &Tx<'_>, g: Gap) -> Result<Gap> {
    let key = format!("{GAP}{}", g.instance);
    let merged = match marks::get(tx, &key)?.and_then(|v| serde_json::from_str::<Gap>(&v).ok()) {
        Some(old) => Gap {
            from: old.from.min(g.from),
            to: old.to.max(g.to),
            ..g
        },
        None => g,
    };
    marks::set(
        tx,
        &key,
        &serde_json::to_string(&merged).unwrap_or_default(),
    )?;
    Ok(merged)
}

/// The task that takes applies in commit order, hands their changes to the router and acks
/// their batches. Its result is why applying failed, if it did.
fn completer(
    s: &Arc<Shared>,
) -> (
    mpsc::Sender<(async_nats::jetstream::Message, Job)>,
    tokio::task::JoinHandle<Option<String>>,
) {
    let (tx, mut rx) = mpsc::channel::<(async_nats::jetstream::Message, Job)>(APPLYING);
    let s = s.clone();
    let handle = s.tracker.clone().spawn(async move {
        while let Some((msg, job)) = rx.recv().await {
            let (applied, pushed, gap) = match job.answer.await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    tracing::warn!(origin = %job.node, error = %e, "applying a batch from the backbone failed");
                    return Some(format!("applying {}'s batch: {e}", job.node));
                }
                Err(_) => return Some("the store stopped".into()),
            };
            if let Some(g) = gap {
                tracing::error!(
                    origin = %g.node,
                    from = g.from,
                    to = g.to,
                    "entries of this origin's log were dropped by the stream before this node \
                     read them: this node lacks them (mail, read marks, directory changes)"
                );
                s.status.gap(g);
                s.catch_up.wake();
            }
            let m = &s.router.metrics;
            m.deduplicated_total
                .fetch_add(applied.duplicates, Ordering::Relaxed);
            m.replicated_total.fetch_add(pushed as u64, Ordering::Relaxed);
            let cursor = applied.cursor;
            s.router.apply_remote(applied);
            s.status.applied(&job.node, &job.instance, cursor);
            if let Ok(i) = msg.info() {
                let seq = i.stream_sequence;
                s.status
                    .consumer(|c| c.position = Some(c.position.unwrap_or(0).max(seq)));
            }
            // Lost acks only mean a redelivery, which the cursor skips.
            let _ = msg.ack().await;
        }
        None
    });
    (tx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_mark_reads_back_or_is_none() {
        assert_eq!(parse_position(Some("123 45".into())), Some((123, 45)));
        assert_eq!(parse_position(Some("x".into())), None);
        assert_eq!(parse_position(None), None);
    }
}
