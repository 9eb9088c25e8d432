//! Snapshots over the backbone: a node's store state (`store::snapshot`, the direct mesh's
//! code) paged by NATS request/reply, for nodes that lack entries the stream no longer holds
//! (`catchup` takes them; `survey` finds logs the stream lost whole).
//!
//! Every node answers on `switchboard.catchup.<instance>`, keeping no state between requests:
//! `begin` is its log head and its cursor of every other origin, read before any row; `page`
//! is the page from a position the requester hands back each time, read on the store's reader
//! thread and sized to fit the server's max payload. A snapshot covers the producer's own log
//! up to its head and each other origin's up to its cursor — except an origin the producer
//! has a gap of itself, which it covers only up to the gap's start: its state lacks the
//! entries in the gap, and a requester whose cursor moved past them would never get them.
//! Anyone who may read the stream may read this too: it is the same data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Shared;
use super::consume::GAP;
use super::status::Gap;
use crate::store::marks;
use crate::store::replication::EventBody;
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
pub(super) enum Request {
    /// Where its log and cursors stand: what the snapshot will cover.
    Begin,
    /// The page from `pos` (`Pos::default()`: the first).
    Page { pos: Pos },
}

/// Its answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Reply {
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
pub(super) struct Cover {
    pub origin: String,
    /// Its node id, if the producer has heard it in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub seq: u64,
}

/// What a node's snapshot covers, from its `begin`.
pub(super) struct Covered {
    pub node: String,
    pub instance: String,
    /// What the receiver's `finish` needs.
    pub start: Start,
    /// By instance, the last entry of each origin's log the state holds (the producer's own
    /// log at its head).
    pub cover: BTreeMap<String, u64>,
    /// Node ids of those origins, where the producer knows them.
    pub names: BTreeMap<String, String>,
}

/// Why a request got no answer.
#[derive(Debug)]
pub(super) struct AskError {
    /// Nobody listens on the subject (the node is stopped, or of a version without snapshots).
    pub no_responders: bool,
    pub text: String,
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
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
                node: s.status.node_of(&origin),
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
pub(super) async fn request(s: &Shared, instance: &str, req: &Request) -> Result<Reply, AskError> {
    let failed = |text: String| AskError {
        no_responders: false,
        text,
    };
    let body = serde_json::to_vec(req).map_err(|e| failed(e.to_string()))?;
    let asked = s
        .client
        .request(super::catchup_subject(instance), body.into());
    match tokio::time::timeout(WAIT, asked).await {
        Err(_) => Err(failed(format!("no answer within {}s", WAIT.as_secs()))),
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            Err(AskError {
                no_responders: true,
                text: "not answering snapshot requests (stopped, or a version without them)".into(),
            })
        }
        Ok(Err(e)) => Err(failed(e.to_string())),
        Ok(Ok(m)) => serde_json::from_slice(&m.payload)
            .map_err(|e| failed(format!("an unreadable answer: {e}"))),
    }
}

/// What the node of data dir `instance` would cover with a snapshot made now.
pub(super) async fn covered(s: &Shared, instance: &str) -> Result<Covered, AskError> {
    let failed = |text: String| AskError {
        no_responders: false,
        text,
    };
    match request(s, instance, &Request::Begin).await? {
        Reply::Begin {
            node,
            instance: answered,
            head,
            cursors,
        } if answered == instance => {
            let names = cursors
                .iter()
                .filter_map(|c| Some((c.origin.clone(), c.node.clone()?)))
                .chain(std::iter::once((answered.clone(), node.clone())))
                .collect();
            let mut cover: BTreeMap<String, u64> =
                cursors.into_iter().map(|c| (c.origin, c.seq)).collect();
            cover.insert(answered.clone(), head);
            let start = Start {
                head,
                cursors: cover.iter().map(|(o, c)| (o.clone(), *c)).collect(),
            };
            Ok(Covered {
                node,
                instance: answered,
                start,
                cover,
                names,
            })
        }
        Reply::Error { message } => Err(failed(message)),
        _ => Err(failed("answered out of turn".into())),
    }
}

/// Pulls every page of the node of data dir `instance` and hands each to `apply`; the next
/// page is asked for while one is applied. Returns how many pages there were.
pub(super) async fn pull<F, Fut>(s: &Shared, instance: &str, mut apply: F) -> Result<u64, String>
where
    F: FnMut(Vec<EventBody>, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let ask = |pos: Pos| async move {
        match request(s, instance, &Request::Page { pos }).await {
            Ok(Reply::Page { items, next }) => Ok((items, next)),
            Ok(Reply::Error { message }) => Err(message),
            Ok(_) => Err("answered out of turn".to_owned()),
            Err(e) => Err(e.text),
        }
    };
    let mut page = ask(Pos::default()).await?;
    let mut n = 0u64;
    loop {
        let (items, next) = page;
        n += 1;
        let fetch = async {
            match next {
                Some(pos) => Some(ask(pos).await),
                None => None,
            }
        };
        let (fetched, applied) = tokio::join!(fetch, apply(items, n));
        applied?;
        match fetched {
            None => return Ok(n),
            Some(p) => page = p?,
        }
    }
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
}
