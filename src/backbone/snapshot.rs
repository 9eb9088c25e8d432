//! Filling gaps from a snapshot: entries of an origin's log that the stream dropped before this
//! node read them (see `consume`) come back as the current state of a node that has them,
//! paged over NATS request/reply and applied with the store's own snapshot code
//! (`store::snapshot`, which the direct mesh pages over its links).
//!
//! Every node answers on `switchboard.catchup.<instance>`, keeping no state between requests:
//! `begin` is its log head and its cursor of every other origin, read before any row; `page`
//! is the page from a position the requester hands back each time, read on the store's reader
//! thread and sized to fit the server's max payload. A snapshot covers the producer's own log
//! up to its head and each other origin's up to its cursor — except an origin the producer
//! has a gap of itself, which it covers only up to the gap's start: its state lacks the
//! entries in the gap, and a requester whose cursor moved past them would never get them.
//!
//! The requester takes a gap's origin itself when it is online (it has its whole log), else
//! any node online whose cover reaches the gap's end. It applies each page as it comes (stamps
//! decide conflicts, messages deduplicate by id: the batches the consumer applies meanwhile,
//! and a snapshot applied twice, change nothing more), and only at the end, in one
//! transaction, moves its cursors to the cover (never back) and clears or shortens every gap
//! the cover reaches. Batches in the stream past the cover go on through the consumer. A
//! snapshot cut short leaves cursors and gaps as they were and is taken again; while no node
//! that can fill a gap answers, the requester retries with backoff — at once when a node is
//! first heard — and `/health` says what it waits for.
//!
//! A log can also leave the stream whole (an origin quiet for longer than the stream's age
//! limit): then no batch arrives to show the gap. So when a node is first heard with a head
//! past this node's cursor of its log and the stream holds no batch of it, the entries between
//! are a gap too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Shared;
use super::consume::{GAP, record_gap};
use super::status::Gap;
use crate::store::marks;
use crate::store::replication::{self, EventBody};
use crate::store::snapshot::{self, Pos, Start};

/// How long one request waits for its answer.
const WAIT: Duration = Duration::from_secs(10);
/// Bytes of changes per page at most (less when the server's max payload is smaller).
const PAGE_BYTES: usize = 256 << 10;
/// NATS's default max payload, for a client that has not heard the server's yet.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// Room left in a reply for the protocol's own bytes.
const HEADROOM: usize = 8 << 10;

/// A request to the node that makes the snapshot.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    /// Where its log and cursors stand: what the snapshot will cover.
    Begin,
    /// The page from `pos` (`Pos::default()`: the first).
    Page { pos: Pos },
}

/// Its answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Reply {
    Begin {
        node: String,
        instance: String,
        /// Its own log's head.
        head: u64,
        /// How far its state holds every other origin's log.
        cursors: Vec<Cover>,
    },
    Page {
        items: Vec<EventBody>,
        /// Where the next page starts; `None`: this was the last.
        next: Option<Pos>,
    },
    Error {
        message: String,
    },
}

/// An origin's log, held up to `seq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cover {
    origin: String,
    seq: u64,
}

/// What wakes the catch-up task: a gap found, a node heard for the first time.
#[derive(Default)]
pub(crate) struct Wake {
    notify: Notify,
    /// Nodes first heard with a head past this node's cursor of their log, to look for in the
    /// stream: (node, instance) → head. One entry per node at most.
    behind: Mutex<BTreeMap<(String, String), u64>>,
}

impl Wake {
    /// Something to look at (a permit is kept if the task is busy: no wake is lost).
    pub(super) fn wake(&self) {
        self.notify.notify_one();
    }

    /// A node was heard for the first time in this run, with its published head and this
    /// node's cursor of its log. A node that can fill gaps may have come online, too.
    pub(super) fn heard(&self, node: &str, instance: &str, head: u64, cursor: u64) {
        if head > cursor {
            self.behind
                .lock()
                .insert((node.to_owned(), instance.to_owned()), head);
        }
        self.wake();
    }
}

/// The server's max payload, less room for the protocol.
fn reply_limit(s: &Shared) -> usize {
    let max = match s.client.server_info().max_payload {
        0 => DEFAULT_MAX_PAYLOAD,
        m => m,
    };
    max.saturating_sub(HEADROOM)
}

/// Answers snapshot requests until the node stops, one at a time (a requester pulls its pages
/// one after another; several requesters share this node's reader thread in turn).
pub(super) async fn serve(s: Arc<Shared>) {
    let subject = super::catchup_subject(s.router.store.instance());
    let mut requests = loop {
        match s.client.subscribe(subject.clone()).await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::debug!(error = %e, "backbone: cannot subscribe for snapshot requests");
                if !super::pause(&s, 5).await {
                    return;
                }
            }
        }
    };
    loop {
        let req = tokio::select! {
            _ = s.shutdown.cancelled() => return,
            r = requests.next() => match r { Some(r) => r, None => return },
        };
        let Some(reply) = req.reply else { continue };
        let answer = match serde_json::from_slice::<Request>(&req.payload) {
            Ok(Request::Begin) => begin(&s).await,
            Ok(Request::Page { pos }) => page(&s, pos).await,
            Err(e) => encode(&Reply::Error {
                message: format!("a request this node cannot read: {e}"),
            }),
        };
        let _ = s.client.publish(reply, answer.into()).await;
    }
}

fn encode(r: &Reply) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

/// What a snapshot made now covers. The cursors are read before the gap marks: a gap
/// recorded in between is still seen (its origin is covered less, which is safe), and one
/// filled in between was filled by rows this snapshot reads after it.
async fn begin(s: &Shared) -> Vec<u8> {
    let read = s
        .router
        .store
        .read_committed(|c| Ok((snapshot::begin(c)?, marks::with_prefix(c, GAP)?)))
        .await;
    let (start, gaps) = match read {
        Ok(r) => r,
        Err(e) => {
            return encode(&Reply::Error {
                message: format!("reading the store: {e}"),
            });
        }
    };
    let held_to: BTreeMap<String, u64> = gaps
        .iter()
        .filter_map(|(_, v)| serde_json::from_str::<Gap>(v).ok())
        .map(|g| (g.instance, g.from.saturating_sub(1)))
        .collect();
    encode(&Reply::Begin {
        node: s.router.node_id.clone(),
        instance: s.router.store.instance().to_owned(),
        head: start.head,
        cursors: start
            .cursors
            .into_iter()
            .map(|(origin, seq)| Cover {
                seq: held_to.get(&origin).map_or(seq, |&h| seq.min(h)),
                origin,
            })
            .collect(),
    })
}

/// One page from `pos`, no larger than a reply may be: a page over the limit is read again
/// as one row (a message with its read marks); a row that alone is over it cannot travel.
async fn page(s: &Shared, pos: Pos) -> Vec<u8> {
    let limit = reply_limit(s);
    let mut budget = PAGE_BYTES.min(limit / 4);
    loop {
        let from = pos.clone();
        let read = s
            .router
            .store
            .read_committed(move |c| snapshot::page(c, &from, budget))
            .await;
        let bytes = match read {
            Ok((items, next)) => encode(&Reply::Page { items, next }),
            Err(e) => {
                return encode(&Reply::Error {
                    message: format!("reading the store: {e}"),
                });
            }
        };
        if bytes.len() <= limit {
            return bytes;
        }
        if budget == 1 {
            tracing::warn!(
                bytes = bytes.len(),
                limit,
                "a message with its read marks is larger than the NATS server's max payload: \
                 it cannot be sent in a snapshot (raise max_payload in the server's config)"
            );
            return encode(&Reply::Error {
                message: format!(
                    "a message with its read marks takes {} bytes, more than the NATS server's \
                     max payload allows ({limit}): raise max_payload in the server's config",
                    bytes.len()
                ),
            });
        }
        budget = 1;
    }
}

/// Asks the node of data dir `instance`.
async fn request(s: &Shared, instance: &str, req: &Request) -> Result<Reply, String> {
    let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let asked = s
        .client
        .request(super::catchup_subject(instance), body.into());
    match tokio::time::timeout(WAIT, asked).await {
        Err(_) => Err(format!("no answer within {}s", WAIT.as_secs())),
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            Err("not answering snapshot requests (stopped, or a version without them)".into())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(m)) => {
            serde_json::from_slice(&m.payload).map_err(|e| format!("an unreadable answer: {e}"))
        }
    }
}

/// Fills gaps until the node stops: on every wake, and again with backoff while a gap waits
/// for a node that can fill it.
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
        let checked = tokio::select! {
            _ = s.shutdown.cancelled() => return,
            r = look_for_silent_logs(&s) => r,
        };
        if !s.status.has_gaps() {
            attempt = 0;
            s.status.catch_up(|c| c.waiting = None);
            if !checked {
                retry = Some(tokio::time::Instant::now() + rule.delay(0));
            }
            continue;
        }
        let filled = tokio::select! {
            _ = s.shutdown.cancelled() => return,
            r = fill(&s) => r,
        };
        match filled {
            // Gaps left were found meanwhile: at them at once.
            Ok(()) => {
                attempt = 0;
                if s.status.has_gaps() || !checked {
                    retry = Some(tokio::time::Instant::now());
                }
            }
            Err(why) => {
                let changed = s.status.catch_up_now().waiting.as_ref() != Some(&why);
                if changed {
                    tracing::warn!("backbone: a gap cannot be filled yet: {why}; retrying");
                }
                s.status.catch_up(|c| c.waiting = Some(why));
                retry = Some(tokio::time::Instant::now() + rule.delay(attempt));
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Looks in the stream for the logs of nodes first heard ahead of this node's cursor: one the
/// stream holds no batch of left it whole, and the entries between are a gap. `false` if some
/// could not be looked at (they are kept for the next try).
async fn look_for_silent_logs(s: &Arc<Shared>) -> bool {
    let behind = std::mem::take(&mut *s.catch_up.behind.lock());
    let mut all = true;
    for ((node, instance), head) in behind {
        if let Err(e) = silent_log(s, &node, &instance, head).await {
            tracing::debug!(?node, error = %e, "backbone: cannot look for a node's log in the stream");
            s.catch_up
                .behind
                .lock()
                .entry((node, instance))
                .or_insert(head);
            all = false;
        }
    }
    all
}

async fn silent_log(s: &Arc<Shared>, node: &str, instance: &str, head: u64) -> Result<(), String> {
    let stream = super::connect::stream(s).await?;
    let subject = super::events_subject(node, instance);
    match stream.get_last_raw_message_by_subject(&subject).await {
        // The consumer reads its batches, and the first one shows a gap if there is one.
        Ok(_) => return Ok(()),
        Err(e)
            if e.kind()
                == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
        Err(e) => return Err(format!("reading the last batch on {subject}: {e}")),
    }
    // The cursor after the stream's answer: nothing of this log can be applied meanwhile.
    let (n, i) = (node.to_owned(), instance.to_owned());
    let gap = s
        .router
        .store
        .write(move |tx| {
            let cursor = replication::cursor(tx, &i)?;
            if head <= cursor {
                return Ok(None);
            }
            let g = Gap {
                node: n,
                instance: i,
                from: cursor + 1,
                to: head,
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
            "this origin's log left the stream (its age or size limit) before this node read it"
        );
        s.status.gap(g);
    }
    Ok(())
}

/// A node to take a snapshot from, and what it covers: by instance, the last entry of each
/// origin's log its state holds.
struct Source {
    node: String,
    instance: String,
    start: Start,
    cover: BTreeMap<String, u64>,
}

/// Fills every gap now known, one snapshot each unless an earlier one covered it too.
async fn fill(s: &Arc<Shared>) -> Result<(), String> {
    for instance in s.status.gaps().into_iter().map(|g| g.instance) {
        // Filled by an earlier snapshot of this round, or grown meanwhile: as it is now.
        let Some(gap) = s.status.gaps().into_iter().find(|g| g.instance == instance) else {
            continue;
        };
        let source = choose(s, &gap).await?;
        take(s, source).await?;
        if s.status
            .gaps()
            .iter()
            .any(|g| g.instance == instance && g.to <= gap.to)
        {
            return Err(format!(
                "a snapshot did not cover entries {}..{} of {}'s log",
                gap.from, gap.to, gap.node
            ));
        }
    }
    Ok(())
}

/// The origin itself if it is online, else the first node online that holds the gap's
/// entries. Its error says why no node can fill the gap now.
async fn choose(s: &Shared, gap: &Gap) -> Result<Source, String> {
    let own = s.router.store.instance();
    let mut candidates: Vec<(String, String)> = s
        .status
        .nodes
        .heard
        .lock()
        .iter()
        .filter(|(_, h)| h.live && h.instance != own)
        .map(|(node, h)| (node.clone(), h.instance.clone()))
        .collect();
    candidates.sort_by_key(|(_, i)| *i != gap.instance);
    let mut why = Vec::new();
    if !candidates.iter().any(|(_, i)| *i == gap.instance) {
        why.push(format!("{} is not online", gap.node));
    }
    for (node, instance) in candidates {
        match request(s, &instance, &Request::Begin).await {
            Ok(Reply::Begin {
                node,
                instance: answered,
                head,
                cursors,
            }) if answered == instance => {
                let mut cover: BTreeMap<String, u64> =
                    cursors.into_iter().map(|c| (c.origin, c.seq)).collect();
                cover.insert(instance.clone(), head);
                let held = cover.get(&gap.instance).copied().unwrap_or(0);
                if held >= gap.to {
                    let start = Start {
                        head,
                        cursors: cover.iter().map(|(o, c)| (o.clone(), *c)).collect(),
                    };
                    return Ok(Source {
                        node,
                        instance,
                        start,
                        cover,
                    });
                }
                why.push(format!("{node} holds {}'s log only up to {held}", gap.node));
            }
            Ok(Reply::Error { message }) => why.push(format!("{node}: {message}")),
            Ok(_) => why.push(format!("{node} answered out of turn")),
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
async fn take(s: &Arc<Shared>, src: Source) -> Result<(), String> {
    let began = Instant::now();
    tracing::info!(from = %src.node, "backbone: filling a gap from a snapshot");
    s.status.catch_up(|c| {
        c.from = Some(src.node.clone());
        c.pages = Some(0);
    });
    let pages = pages(s, &src).await;
    s.status.catch_up(|c| {
        c.from = None;
        c.pages = None;
    });
    let pages = pages?;
    let Source {
        node,
        instance,
        start,
        cover,
    } = src;
    let covered = cover.clone();
    let moved = s
        .router
        .store
        .write(move |tx| {
            let moved = snapshot::finish(tx, &instance, &start)?;
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

/// Pulls and applies every page; the next page is asked for while one is applied. Returns
/// how many pages there were.
async fn pages(s: &Arc<Shared>, src: &Source) -> Result<u64, String> {
    let ask = |pos: Pos| async move {
        match request(s, &src.instance, &Request::Page { pos }).await {
            Ok(Reply::Page { items, next }) => Ok((items, next)),
            Ok(Reply::Error { message }) => Err(format!("{}: {message}", src.node)),
            Ok(_) => Err(format!("{} answered out of turn", src.node)),
            Err(e) => Err(format!("{}: {e}", src.node)),
        }
    };
    let mut page = ask(Pos::default()).await?;
    let mut n = 0u64;
    loop {
        let (items, next) = page;
        let fetch = async {
            match next {
                Some(pos) => Some(ask(pos).await),
                None => None,
            }
        };
        let (fetched, applied) = tokio::join!(fetch, apply(s, items));
        applied?;
        n += 1;
        s.status.catch_up(|c| c.pages = Some(n));
        match fetched {
            None => return Ok(n),
            Some(p) => page = p?,
        }
    }
}

/// Applies one page (committed before its new messages go to local sessions).
async fn apply(s: &Shared, items: Vec<EventBody>) -> Result<(), String> {
    if items.is_empty() {
        return Ok(());
    }
    let mut applied = s
        .router
        .store
        .write(move |tx| snapshot::apply_page(tx, items))
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
    fn requests_and_replies_read_back() {
        let r: Request =
            serde_json::from_slice(&serde_json::to_vec(&Request::Begin).unwrap()).unwrap();
        assert!(matches!(r, Request::Begin));
        let page = Request::Page {
            pos: Pos::default(),
        };
        let r: Request = serde_json::from_slice(&serde_json::to_vec(&page).unwrap()).unwrap();
        assert!(matches!(r, Request::Page { pos } if pos == Pos::default()));
    }

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
