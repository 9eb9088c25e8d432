//! Waiting for acks: what makes a send `delivered` rather than `queued`.
//!
//! A send that reached a recipient's session waits (up to [`ACK_WAIT`]) for that session's
//! ack, or for a peer's notice that a session there holds it. Acks can beat the wait's
//! registration — a peer pushes before it even commits — so early ones are kept for a moment.
//! When the node stops, every wait ends at once: the sessions that could ack are closing.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long a send waits for a recipient's session to ack before it answers `queued`.
pub const ACK_WAIT: Duration = Duration::from_secs(1);

/// Early acks kept at most; beyond that new ones are dropped (the sender then hears `queued`).
const EARLY_MAX: usize = 4096;

/// Who acked a message.
#[derive(Debug, Clone, Copy)]
pub enum AckedBy<'a> {
    /// An agent session on this node.
    Agent(&'a str),
    /// A session on a peer node (its `delivered` notice names no agent).
    Peer,
}

/// Sends waiting for their first ack, and acks nobody waits for yet.
#[derive(Default)]
pub struct Acks {
    inner: Mutex<Inner>,
    /// Cancelled when the node stops: no ack can come any more, so nobody waits for one.
    closed: CancellationToken,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<String, Waiting>,
    early: Early,
}

struct Waiting {
    /// Only an ack by one of these (or a peer's notice) counts.
    recipients: Vec<String>,
    done: oneshot::Sender<()>,
}

/// Acks of messages nobody waits for yet, kept for [`ACK_WAIT`]; most are acks nobody will
/// ever wait for (replayed mail), hence the bound.
#[derive(Default)]
struct Early {
    /// Message id → who acked (`None`: a peer) and when.
    acks: HashMap<String, (Option<String>, Instant)>,
    /// Ids in arrival order, to expire the oldest in O(1) each.
    order: VecDeque<(String, Instant)>,
}

impl Early {
    fn add(&mut self, id: &str, by: Option<&str>, now: Instant) {
        while let Some((old, at)) = self.order.front() {
            if now.duration_since(*at) < ACK_WAIT {
                break;
            }
            if self.acks.get(old).is_some_and(|(_, a)| a == at) {
                self.acks.remove(old);
            }
            self.order.pop_front();
        }
        if self.order.len() < EARLY_MAX {
            self.acks
                .insert(id.to_owned(), (by.map(str::to_owned), now));
            self.order.push_back((id.to_owned(), now));
        }
    }

    /// Whether `id` was already acked by one of `recipients` (or at a peer).
    fn take(&mut self, id: &str, recipients: &[String]) -> bool {
        if self.acks.is_empty() {
            return false;
        }
        match self.acks.remove(id) {
            Some((by, at)) if at.elapsed() < ACK_WAIT => by.is_none_or(|a| recipients.contains(&a)),
            _ => false,
        }
    }
}

impl Acks {
    /// Registers a wait for the first ack of `id` by one of `recipients`; the receiver fires
    /// at once if such an ack came early.
    pub fn wait_for(&self, id: &str, recipients: Vec<String>) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        let mut inner = self.inner.lock();
        if inner.early.take(id, &recipients) {
            let _ = done.send(());
        } else {
            inner
                .waiting
                .insert(id.to_owned(), Waiting { recipients, done });
        }
        rx
    }

    /// Ends every wait, now and later, as if its time were up (the node is stopping).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Stops waiting for `id` (its wait timed out).
    pub fn give_up(&self, id: &str) {
        self.inner.lock().waiting.remove(id);
    }

    /// These messages were acked: complete the waits they satisfy, keep the rest as early acks.
    pub fn acked(&self, by: AckedBy<'_>, ids: &[String]) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        for id in ids {
            let counts = match (inner.waiting.get(id), by) {
                (None, _) => None,
                (Some(_), AckedBy::Peer) => Some(true),
                (Some(w), AckedBy::Agent(a)) => Some(w.recipients.iter().any(|r| r == a)),
            };
            match counts {
                Some(true) => {
                    if let Some(w) = inner.waiting.remove(id) {
                        let _ = w.done.send(());
                    }
                }
                Some(false) => {}
                None => {
                    let who = match by {
                        AckedBy::Agent(a) => Some(a),
                        AckedBy::Peer => None,
                    };
                    inner.early.add(id, who, now);
                }
            }
        }
    }
}

/// Waits for a registered ack, at most [`ACK_WAIT`] and not past [`Acks::close`]; true if it
/// came.
pub async fn arrived(acks: &Acks, id: &str, rx: oneshot::Receiver<()>) -> bool {
    let got = tokio::select! {
        r = tokio::time::timeout(ACK_WAIT, rx) => r.is_ok_and(|r| r.is_ok()),
        _ = acks.closed.cancelled() => false,
    };
    if !got {
        acks.give_up(id);
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn an_ack_by_a_recipient_completes_the_wait() {
        let acks = Acks::default();
        let rx = acks.wait_for("m1", names(&["bob"]));
        acks.acked(AckedBy::Agent("carol"), &names(&["m1"]));
        acks.acked(AckedBy::Agent("bob"), &names(&["m1"]));
        assert!(arrived(&acks, "m1", rx).await);
    }

    #[tokio::test]
    async fn an_ack_that_came_first_still_counts() {
        let acks = Acks::default();
        acks.acked(AckedBy::Agent("bob"), &names(&["m1"]));
        acks.acked(AckedBy::Peer, &names(&["m2"]));
        assert!(arrived(&acks, "m1", acks.wait_for("m1", names(&["bob"]))).await);
        assert!(arrived(&acks, "m2", acks.wait_for("m2", names(&["bob"]))).await);
        // An early ack by someone else does not.
        acks.acked(AckedBy::Agent("carol"), &names(&["m3"]));
        let mut rx = acks.wait_for("m3", names(&["bob"]));
        assert!(rx.try_recv().is_err(), "carol's ack must not count for bob");
        acks.acked(AckedBy::Agent("bob"), &names(&["m3"]));
        assert!(arrived(&acks, "m3", rx).await);
    }

    #[tokio::test]
    async fn closing_ends_waits_at_once() {
        let acks = Acks::default();
        let rx = acks.wait_for("m1", names(&["bob"]));
        acks.close();
        let started = Instant::now();
        assert!(!arrived(&acks, "m1", rx).await);
        assert!(started.elapsed() < ACK_WAIT / 2, "{:?}", started.elapsed());
        // A wait registered after the close does not wait either.
        let rx = acks.wait_for("m2", names(&["bob"]));
        assert!(!arrived(&acks, "m2", rx).await);
    }
}
