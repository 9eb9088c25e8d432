//! Publishing this node's own log to the stream, one batch at a time, in order.
//!
//! A batch is what the log holds past the last acknowledged one, up to [`BATCH`] entries: one
//! entry when traffic is light, hundreds under load, so a busy node pays one JetStream write
//! per batch rather than per message. The next batch goes only after the stream has
//! acknowledged this one — pipelining would let a later batch be stored while an earlier one
//! failed, and consumers would see a gap that is not one. A failed publish is retried with
//! the same bytes and message id, so the stream stores it once however often it is sent
//! (within the duplicate window; a later duplicate is skipped by every consumer's cursor).
//!
//! Where to start is the stream's own word: the last batch on this data dir's subject, asked
//! again after every lost connection (a server that restarts may have lost its last writes,
//! see JetStream's fsync interval in the README). A stream that has none (new, or recreated
//! empty) gets the whole log again, which consumers apply idempotently.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use serde::Deserialize;

use super::Shared;
use crate::store::replication::{self, Event, TailBody};

/// Log entries per batch at most.
const BATCH: usize = 512;
/// Bytes of entries per batch, past the first entry: well under NATS's default max payload
/// (1 MiB). A single entry larger than the server's max payload cannot be published; it stays
/// the publisher's error in `/health` (raise `max_payload` in the server's config).
const BATCH_BYTES: usize = 256 << 10;
/// How long one publish may wait for its PubAck.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// One batch as it travels: whose log, the seq the batch follows, and its entries.
#[derive(Debug, Deserialize)]
pub struct Batch {
    /// The origin's node id.
    pub node: String,
    /// The origin's data dir (what cursors are keyed by).
    pub instance: String,
    /// The seq of the origin's entry just before this batch (0: from the start).
    pub prev: u64,
    /// Entries, oldest first.
    pub events: Vec<Event>,
}

/// A batch's bytes, built from the log's stored JSON without parsing it again.
fn encode(node: &str, instance: &str, prev: u64, entries: &[(u64, String)]) -> Vec<u8> {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut s = format!(
        "{{\"node\":{},\"instance\":{},\"prev\":{prev},\"events\":[",
        quote(node),
        quote(instance)
    );
    for (i, (seq, body)) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{{\"seq\":{seq},\"body\":{body}}}"));
    }
    s.push_str("]}");
    s.into_bytes()
}

/// Publishes until the node stops.
pub(super) async fn run(s: Arc<Shared>) {
    let mut attempt = 0u32;
    loop {
        if !super::until_connected(&s).await {
            return;
        }
        // Cleared before asking, so a warning of the answer's (a log behind the stream) stays.
        s.status.publisher(|p| p.error = None);
        match resume_point(&s).await {
            Ok(after) => {
                attempt = 0;
                s.status.publisher(|p| p.shipped = Some(after));
                if let Err(e) = ship_from(&s, after).await {
                    s.status.publisher(|p| p.error = Some(e.clone()));
                    tracing::warn!(error = %e, "backbone publishing stopped; starting over");
                }
                if s.shutdown.is_cancelled() {
                    return;
                }
            }
            Err(e) => {
                s.status.publisher(|p| p.error = Some(e.clone()));
                tracing::debug!(error = %e, "backbone: cannot find where to resume publishing");
            }
        }
        if !super::pause(&s, attempt).await {
            return;
        }
        attempt = attempt.saturating_add(1);
    }
}

/// The last seq of this data dir's log that the stream holds (0 if none).
async fn resume_point(s: &Shared) -> Result<u64, String> {
    let stream = super::connect::stream(s).await?;
    let store = &s.router.store;
    let subject = super::events_subject(&s.router.node_id, store.instance());
    let last = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => match serde_json::from_slice::<Batch>(&m.payload) {
            Ok(b) => b.events.last().map_or(b.prev, |e| e.seq),
            Err(e) => return Err(format!("the last batch on {subject} is unreadable: {e}")),
        },
        Err(e)
            if e.kind()
                == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            0
        }
        Err(e) => return Err(format!("reading the last batch on {subject}: {e}")),
    };
    let head = store.log_head();
    if last > head {
        // The data dir was restored from a backup, or lost commits in a power loss: its next
        // entries reuse seqs consumers have applied, and they would skip them.
        let e = format!(
            "the stream holds this data dir's log up to entry {last}, but the log ends at {head}: \
             other nodes will skip its entries up to {last} (restored data dir, or commits lost \
             in a power loss with sync = normal)"
        );
        tracing::error!("{e}");
        s.status.publisher(|p| p.error = Some(e));
    }
    Ok(last)
}

/// Ships every committed entry after `after`, and then each new one as it commits. Returns
/// (with the reason) when a publish cannot be completed, so the caller starts over from the
/// stream's word.
async fn ship_from(s: &Shared, mut after: u64) -> Result<(), String> {
    let store = &s.router.store;
    let mut commits = store.commits();
    let mut connected = s.connected.clone();
    let (node, instance) = (s.router.node_id.clone(), store.instance().to_owned());
    let subject = super::events_subject(&node, &instance);
    loop {
        let entries: Vec<(u64, String)> = match store.tail_after(after, BATCH) {
            Some(t) => t.into_iter().map(|(seq, b)| (seq, body_json(&b))).collect(),
            None => {
                let events = store
                    .read(move |c| replication::events_after(c, after, BATCH as u32))
                    .await
                    .map_err(|e| format!("reading the log: {e}"))?;
                events
                    .into_iter()
                    .map(|e| (e.seq, serde_json::to_string(&e.body).unwrap_or_default()))
                    .collect()
            }
        };
        let mut bytes = 0;
        let keep = entries
            .iter()
            .take_while(|(_, b)| {
                bytes += b.len();
                bytes <= BATCH_BYTES
            })
            .count();
        let mut entries = entries;
        entries.truncate(keep.max(1));
        let Some(&(last, _)) = entries.last() else {
            tokio::select! {
                _ = s.shutdown.cancelled() => return Ok(()),
                r = commits.changed() => if r.is_err() { return Ok(()) },
                // A server that comes back may have lost its last writes: ask it again.
                _ = connected.wait_for(|up| !*up) => return Err("the connection was lost".into()),
            }
            continue;
        };
        let first = entries.first().map_or(last, |e| e.0);
        // `prev` is the entry just before the batch's first. Past `after` when compaction took
        // the entries between (the stream lost them, and this node no longer has them): a
        // consumer still missing them sees a gap and catches up from a snapshot.
        let prev = after.max(first.saturating_sub(1));
        let payload = bytes::Bytes::from(encode(&node, &instance, prev, &entries));
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{instance}:{first}-{last}").as_str(),
        );
        if !publish_acked(s, &subject, headers, payload).await? {
            return Ok(());
        }
        after = last;
        s.status.publisher(|p| p.shipped = Some(last));
        s.router
            .metrics
            .forwarded_total
            .fetch_add(entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One batch's body JSON from the tail.
fn body_json(b: &TailBody) -> String {
    b.to_json()
}

/// Publishes one batch and waits for its PubAck, retrying the same bytes until the stream has
/// it (`true`) or the node stops (`false`). Gives up (to start over) only when the stream is
/// gone.
async fn publish_acked(
    s: &Shared,
    subject: &str,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<bool, String> {
    let mut attempt = 0u32;
    loop {
        let sent =
            s.js.publish_with_headers(subject.to_owned(), headers.clone(), payload.clone())
                .await;
        let outcome = match sent {
            Ok(ack) => match tokio::time::timeout(ACK_TIMEOUT, ack).await {
                Ok(Ok(_)) => {
                    if attempt > 0 {
                        s.status.publisher(|p| p.error = None);
                    }
                    return Ok(true);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no PubAck in time".to_owned(),
            },
            Err(e) => e.to_string(),
        };
        // Without the stream, or without the server (which may come back without its last
        // writes), start over from the stream's word.
        if outcome.contains("no stream")
            || outcome.contains("stream not found")
            || !*s.connected.borrow()
        {
            return Err(format!("publishing: {outcome}"));
        }
        s.status
            .publisher(|p| p.error = Some(format!("publishing: {outcome}")));
        tracing::debug!(error = %outcome, "backbone publish failed; retrying");
        if !super::until_connected(s).await || !super::pause(s, attempt).await {
            return Ok(false);
        }
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reads_back_as_it_was_built() {
        let body = r#"{"event":"read","agent":"bob","ids":["x"],"at":2}"#;
        let bytes = encode("n.1", "ab", 7, &[(8, body.into()), (9, body.into())]);
        let b: Batch = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (b.node.as_str(), b.instance.as_str(), b.prev),
            ("n.1", "ab", 7)
        );
        assert_eq!(b.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [8, 9]);
    }
}
