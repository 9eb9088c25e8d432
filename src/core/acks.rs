//! Waiting for acks: what makes a send `delivered` rather than `queued`.
//!
//! A send that reached a recipient's session waits (up to [`ACK_WAIT`]) for that session's
//! ack, or for a peer's notice that a session there holds it. Acks can beat the wait's
//! registration — a peer pushes before it even commits — so early ones are kept for a moment.
//! When the node stops, every wait ends at once: the sessions that could ack are closing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Keyed by message id. SipHash was a tenth of the wait's cost; foldhash is seeded per process
/// too, so ids a client chooses cannot be aimed at one bucket.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// How long a send waits for a recipient's session to ack before it answers `queued`.
pub const ACK_WAIT: Duration = Duration::from_secs(1);

/// Early acks kept at most; beyond that new ones are dropped (the sender then hears `queued`).
const EARLY_MAX: usize = 4096;

/// How late past its deadline a wait may end: expired waits are ended together, so that
/// a burst of sends costs one wake-up per slice instead of a timer each.
const EXPIRY_SLICE: Duration = Duration::from_millis(20);

/// Called once when a wait ends: true if the ack came, false if the time ran out (or the node
/// stopped). Runs on whichever thread ended the wait, outside every lock; it must not block.
pub type OnAck = Box<dyn FnOnce(bool) + Send>;

/// Who acked a message.
#[derive(Debug, Clone, Copy)]
pub enum AckedBy<'a> {
    /// An agent session on this node.
    Agent(&'a str),
    /// A session on a peer node (its `delivered` notice names no agent).
    Peer,
}

/// Sends waiting for their first ack, and acks nobody waits for yet.
///
/// A wait is an entry and a callback, not a task: a task with a timer per send was a tenth
/// of the node's CPU at full load. One expiry loop ([`Acks::expire`]) ends the waits whose
/// time is up, in deadline order (every wait is [`ACK_WAIT`] long, so that is arrival order).
#[derive(Default)]
pub struct Acks {
    inner: Mutex<Inner>,
    /// Wakes the expiry loop when a wait is added to an empty queue.
    added: Notify,
    /// Cancelled when the node stops: no ack can come any more, so nobody waits for one.
    closed: CancellationToken,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<String, Waiting>,
    /// Deadline, message id and the wait's number, oldest first.
    expiry: VecDeque<(Instant, String, u64)>,
    next: u64,
    early: Early,
}

struct Waiting {
    /// Only an ack by one of these (or a peer's notice) counts.
    recipients: Vec<String>,
    done: OnAck,
    /// Tells this wait from a later one for the same id in the expiry queue.
    number: u64,
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
    /// Waits for the first ack of `id` by one of `recipients`, for at most [`ACK_WAIT`]:
    /// `done` is called with the outcome (at once if such an ack came early, or the node is
    /// stopping).
    pub fn wait_for(&self, id: &str, recipients: Vec<String>, done: OnAck) {
        if self.closed.is_cancelled() {
            return done(false);
        }
        let mut inner = self.inner.lock();
        if inner.early.take(id, &recipients) {
            drop(inner);
            return done(true);
        }
        let number = inner.next;
        inner.next += 1;
        let was_empty = inner.expiry.is_empty();
        inner
            .expiry
            .push_back((Instant::now() + ACK_WAIT, id.to_owned(), number));
        let replaced = inner.waiting.insert(
            id.to_owned(),
            Waiting {
                recipients,
                done,
                number,
            },
        );
        drop(inner);
        if was_empty {
            self.added.notify_one();
        }
        // Two waits for one id (a message pushed twice): the first one ends unanswered.
        if let Some(w) = replaced {
            (w.done)(false);
        }
    }

    /// Ends every wait, now and later, as if its time were up (the node is stopping).
    pub fn close(&self) {
        self.closed.cancel();
        let ended: Vec<Waiting> = {
            let mut inner = self.inner.lock();
            inner.expiry.clear();
            inner.waiting.drain().map(|(_, w)| w).collect()
        };
        for w in ended {
            (w.done)(false);
        }
    }

    /// Ends the waits whose time is up at `now`; returns when the next one's is.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        let mut ended = Vec::new();
        let next = {
            let mut inner = self.inner.lock();
            while let Some((deadline, _, _)) = inner.expiry.front() {
                if *deadline > now {
                    break;
                }
                let Some((_, id, number)) = inner.expiry.pop_front() else {
                    break;
                };
                if inner.waiting.get(&id).is_some_and(|w| w.number == number)
                    && let Some(w) = inner.waiting.remove(&id)
                {
                    ended.push(w);
                }
            }
            inner.expiry.front().map(|(d, _, _)| *d)
        };
        for w in ended {
            (w.done)(false);
        }
        next
    }

    /// The expiry loop: runs until [`Acks::close`].
    pub async fn expire(self: std::sync::Arc<Self>) {
        loop {
            let now = Instant::now();
            let next = self.sweep(now);
            let wake = async {
                match next {
                    Some(at) => {
                        let at = at.max(now + EXPIRY_SLICE);
                        tokio::time::sleep_until(at.into()).await;
                    }
                    None => self.added.notified().await,
                }
            };
            tokio::select! {
                _ = self.closed.cancelled() => return,
                () = wake => {}
            }
        }
    }

    /// These messages were acked: complete the waits they satisfy, keep the rest as early acks.
    pub fn acked(&self, by: AckedBy<'_>, ids: &[String]) {
        let now = Instant::now();
        let mut done = Vec::new();
        {
            let mut inner = self.inner.lock();
            for id in ids {
                let counts = match (inner.waiting.get(id), by) {
                    (None, _) => None,
                    (Some(_), AckedBy::Peer) => Some(true),
                    (Some(w), AckedBy::Agent(a)) => Some(w.recipients.iter().any(|r| r == a)),
                };
                match counts {
                    Some(true) => done.extend(inner.waiting.remove(id)),
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
        // The acked entries stay in the expiry queue; their numbers no longer match.
        for w in done {
            (w.done)(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// A wait whose outcome can be awaited.
    fn wait(acks: &Acks, id: &str, recipients: &[&str]) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        acks.wait_for(
            id,
            names(recipients),
            Box::new(move |got| {
                let _ = tx.send(got);
            }),
        );
        rx
    }

    #[tokio::test]
    async fn an_ack_by_a_recipient_completes_the_wait() {
        let acks = Acks::default();
        let mut rx = wait(&acks, "m1", &["bob"]);
        acks.acked(AckedBy::Agent("carol"), &names(&["m1"]));
        assert!(rx.try_recv().is_err(), "carol's ack must not count for bob");
        acks.acked(AckedBy::Agent("bob"), &names(&["m1"]));
        assert_eq!(rx.try_recv(), Ok(true));
    }

    #[tokio::test]
    async fn an_ack_that_came_first_still_counts() {
        let acks = Acks::default();
        acks.acked(AckedBy::Agent("bob"), &names(&["m1"]));
        acks.acked(AckedBy::Peer, &names(&["m2"]));
        assert_eq!(wait(&acks, "m1", &["bob"]).try_recv(), Ok(true));
        assert_eq!(wait(&acks, "m2", &["bob"]).try_recv(), Ok(true));
        // An early ack by someone else does not.
        acks.acked(AckedBy::Agent("carol"), &names(&["m3"]));
        let mut rx = wait(&acks, "m3", &["bob"]);
        assert!(rx.try_recv().is_err(), "carol's ack must not count for bob");
        acks.acked(AckedBy::Agent("bob"), &names(&["m3"]));
        assert_eq!(rx.try_recv(), Ok(true));
    }

    #[tokio::test]
    async fn a_wait_nobody_acks_ends_when_its_time_is_up() {
        let acks = Arc::new(Acks::default());
        let expiry = tokio::spawn(acks.clone().expire());
        let started = Instant::now();
        let first = wait(&acks, "m1", &["bob"]);
        let acked = wait(&acks, "m2", &["bob"]);
        acks.acked(AckedBy::Agent("bob"), &names(&["m2"]));
        assert!(acked.await.unwrap());
        assert!(!first.await.unwrap());
        let waited = started.elapsed();
        assert!(waited >= ACK_WAIT, "{waited:?}");
        // A wait added once the queue was empty wakes the loop again.
        let again = wait(&acks, "m3", &["bob"]);
        assert!(!again.await.unwrap());
        acks.close();
        expiry.await.unwrap();
    }

    #[tokio::test]
    async fn closing_ends_waits_at_once() {
        let acks = Acks::default();
        let mut rx = wait(&acks, "m1", &["bob"]);
        acks.close();
        assert_eq!(rx.try_recv(), Ok(false));
        // A wait registered after the close does not wait either.
        assert_eq!(wait(&acks, "m2", &["bob"]).try_recv(), Ok(false));
    }

    #[tokio::test]
    async fn a_second_wait_for_one_id_ends_the_first() {
        let acks = Acks::default();
        let mut first = wait(&acks, "m1", &["bob"]);
        let mut second = wait(&acks, "m1", &["bob"]);
        assert_eq!(first.try_recv(), Ok(false));
        acks.acked(AckedBy::Agent("bob"), &names(&["m1"]));
        assert_eq!(second.try_recv(), Ok(true));
    }
}
