//! A message's way through the core, in one direction: a session hands over a send
//! ([`Router::send`]); it is validated, rate-limited, addressed and given its id, then queued to
//! the store in arrival order. The sender's [`SendQueue`] completer takes the commits in that
//! order, pushes each message to its recipients' sessions, waits for the first ack, and puts
//! the `sent` answer into the sender's own queue. Peers' messages arrive through
//! [`Router::push_remote`]; acks through [`Router::acked`] and [`Router::remote_delivered`].

use std::sync::Arc;
use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

use super::acks::AckedBy;
use super::directory::SessionTx;
use super::{Frame, Metrics, Router};
use crate::error::{Error, Result};
use crate::message::{Target, now_ms};
use crate::protocol::{DeliveryStatus, ErrorCode, Role, SendRequest, SendResult, ServerFrame};
use crate::store::{NewMessage, Stored, queries};

/// How far ahead of the node's clock a client-chosen id may be (clock skew).
pub const ID_FUTURE_MS: i64 = 5 * 60 * 1000;
/// How old a client-chosen id may be: a retry after a long disconnect (a laptop asleep over a
/// weekend) still deduplicates, but no client can place a message before everyone's mail (an
/// id of all zeros sorts first in every inbox and thread).
pub const ID_PAST_MS: i64 = 7 * 24 * 3600 * 1000;

/// Longest subject, in characters.
pub const MAX_SUBJECT: usize = 200;
/// Sends in flight (queued, not yet answered) per connection.
pub const MAX_IN_FLIGHT: usize = 1024;
/// A peer's message was taken by a session here: its origin, which waits to answer the
/// sender, should hear of it. The mesh owns the channel these go out on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryNotice {
    /// The node that accepted the message from its sender.
    pub origin: String,
    /// The message id.
    pub id: String,
}

/// Where delivery notices for peers go, once a mesh is running.
pub(super) type Notices = OnceLock<mpsc::Sender<DeliveryNotice>>;

type InFlight = (u64, oneshot::Receiver<Result<Stored>>);

/// One connection's sends in flight, answered in the order they were sent.
pub struct SendQueue {
    tx: mpsc::Sender<InFlight>,
    completer: tokio::task::JoinHandle<()>,
}

impl SendQueue {
    /// No more sends: waits until every queued one has been answered.
    pub async fn close(self) {
        drop(self.tx);
        let _ = self.completer.await;
    }
}

/// A send that passed validation and has an id and recipients, ready for the store.
struct PreparedSend {
    message: NewMessage,
}

impl Router {
    /// A queue for the sends of `session`, answered into its own outbound queue.
    pub fn send_queue(self: &Arc<Self>, session: SessionTx) -> SendQueue {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let completer = self.tracker.spawn(self.clone().complete_sends(rx, session));
        SendQueue { tx, completer }
    }

    /// Validates a send and queues it to the store; its answer (`sent` or an error with `req`)
    /// arrives in the sender's session queue once it has committed. An error here means nothing
    /// was queued.
    pub async fn send(
        &self,
        queue: &SendQueue,
        from: &str,
        role: Role,
        req: SendRequest,
    ) -> Result<()> {
        let id = req.req;
        let permit = queue.tx.try_reserve().map_err(|_| {
            Error::refused(
                ErrorCode::RateLimited,
                format!(
                    "more than {MAX_IN_FLIGHT} sends in flight on this connection; wait for answers"
                ),
            )
        })?;
        if role == Role::Cli {
            // A command-line sender becomes a known agent, so replies can reach it.
            self.ensure_agent(from).await?;
        }
        let prepared = self.prepare_send(from, req)?;
        let now = now_ms();
        let origin = self.node_id.clone();
        let per_minute = self.limits.thread_per_minute;
        let rx = self
            .store
            .submit(move |c| {
                if let Some(parent) = &prepared.message.reply_to {
                    queries::check_thread_rate(c, parent, per_minute, now)?;
                }
                queries::insert_message(c, prepared.message, Some(&origin))
            })
            .await?;
        permit.send((id, rx));
        Ok(())
    }

    /// Validates a send, applies the rate limit, resolves recipients and assigns the id.
    /// Synchronous so that the caller queues sends to the store in the order they arrived.
    fn prepare_send(&self, from: &str, req: SendRequest) -> Result<PreparedSend> {
        let target = Target::parse(&req.to).map_err(|e| Error::Invalid(format!("to: {e}")))?;
        if req.body.trim().is_empty() {
            return Err(Error::Invalid("body: must not be empty".into()));
        }
        if let Some(s) = &req.subject
            && s.chars().count() > MAX_SUBJECT
        {
            return Err(Error::Invalid(format!(
                "subject: must be at most {MAX_SUBJECT} characters"
            )));
        }
        if let Some(r) = &req.reply_to {
            ulid::Ulid::from_string(r)
                .map_err(|_| Error::Invalid(format!("reply_to: '{r}' is not a message id")))?;
        }
        let now = now_ms();
        let id = match &req.id {
            Some(id) => client_id(id, now)?,
            None => self.new_id()?,
        };
        if let Err(e) = self.rate.lock().take(from, std::time::Instant::now()) {
            Metrics::inc(&self.metrics.rate_limited_total);
            return Err(e);
        }
        let (recipients, topic) = self.directory.lock().recipients(&target, from)?;
        Ok(PreparedSend {
            message: NewMessage {
                id,
                origin: self.node_id.clone(),
                sender: from.to_owned(),
                target: req.to,
                topic,
                kind: req.kind,
                priority: req.priority,
                subject: req.subject,
                body: req.body,
                data: req.data,
                reply_to: req.reply_to,
                thread_id: None,
                created_at: now,
                recipients,
            },
        })
    }

    fn new_id(&self) -> Result<String> {
        self.ids
            .lock()
            .generate()
            .map(|u| u.to_string())
            .map_err(|_| {
                Error::refused(
                    ErrorCode::Internal,
                    "message id space exhausted for this millisecond",
                )
            })
    }

    /// Awaits each queued send's commit in order, pushes it, and answers the sender once the
    /// delivery outcome is known (without holding up the next send).
    async fn complete_sends(self: Arc<Self>, mut queue: mpsc::Receiver<InFlight>, to: SessionTx) {
        while let Some((req, rx)) = queue.recv().await {
            let frame = match rx.await {
                Ok(Ok(stored)) => {
                    let reached = if stored.duplicate {
                        Metrics::inc(&self.metrics.messages_duplicate_total);
                        Vec::new()
                    } else {
                        Metrics::inc(&self.metrics.messages_accepted_total);
                        self.dispatch(&stored)
                    };
                    let answer = Answer::of(&stored);
                    if !reached.is_empty() {
                        // Someone must ack first: the answer goes out when that is known.
                        let (router, to) = (self.clone(), to.clone());
                        self.acks.wait_for(
                            &stored.message.id,
                            reached,
                            Box::new(move |delivered| {
                                let result = answer.result(&router.metrics, delivered);
                                let sent = ServerFrame::Sent { req, result };
                                to.push(&router.metrics, Frame::encode(&sent));
                            }),
                        );
                        continue;
                    }
                    let result = answer.result(&self.metrics, false);
                    ServerFrame::Sent { req, result }
                }
                Ok(Err(e)) => super::error_frame(Some(req), &e),
                Err(_) => ServerFrame::error(
                    Some(req),
                    ErrorCode::ShuttingDown,
                    "the node is shutting down",
                ),
            };
            to.push(&self.metrics, Frame::encode(&frame));
        }
    }

    /// Pushes a committed message to every live session of its recipients. Returns the
    /// recipients whose ack would make it `delivered` (here, or from a peer where a recipient
    /// is online there); empty when nobody can ack. Called in commit order, so each session
    /// sees one sender's messages in order.
    fn dispatch(&self, stored: &Stored) -> Vec<String> {
        let frame = msg_frame(stored);
        let d = self.directory.lock();
        // Recipients online at a peer: that node tells us with `delivered`.
        let mut reached: Vec<String> = stored
            .recipients
            .iter()
            .filter(|r| d.remote_of(r).is_some())
            .cloned()
            .collect();
        reached.extend(d.push(&self.metrics, &stored.recipients, &frame));
        reached.dedup();
        reached
    }

    /// Where delivery notices for peers go; set once, by the mesh.
    pub fn set_delivery_notices(&self, tx: mpsc::Sender<DeliveryNotice>) {
        let _ = self.notices.set(tx);
    }

    /// Pushes messages a peer's events brought to this node's sessions of their recipients,
    /// and emits a [`DeliveryNotice`] when a recipient acks one. Called as soon as the apply
    /// has run, before its commit: the message is already durable at its origin, which
    /// re-sends it until this node has committed it, so an early push can repeat after a crash
    /// but never announce a loss. Called on the runtime (by the mesh's link side, which hears
    /// from the apply job), never on the store's writer thread.
    pub fn push_remote(self: &Arc<Self>, messages: &[Stored]) {
        for stored in messages {
            let frame = msg_frame(stored);
            let mut reached = self
                .directory
                .lock()
                .push(&self.metrics, &stored.recipients, &frame);
            if reached.is_empty() {
                continue;
            }
            reached.dedup();
            let notice = DeliveryNotice {
                origin: stored.origin.clone(),
                id: stored.message.id.clone(),
            };
            let router = self.clone();
            self.acks.wait_for(
                &stored.message.id,
                reached,
                Box::new(move |acked| {
                    if acked && let Some(tx) = router.notices.get() {
                        let _ = tx.try_send(notice);
                    }
                }),
            );
        }
    }

    /// A session of `agent` holds these messages: complete the sends waiting for them.
    pub fn acked(self: &Arc<Self>, agent: &str, role: Role, ids: Vec<String>) {
        if role != Role::Agent || ids.is_empty() {
            return;
        }
        self.metrics
            .acks_total
            .fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // Nothing is written: `delivered` is the sender's answer, decided here in memory. The
        // delivery time the store once kept per inbox row was read by nobody and cost an
        // UPDATE per ack.
        self.acks.acked(AckedBy::Agent(agent), &ids);
    }

    /// A peer says a session of a recipient there holds these messages.
    pub fn remote_delivered(&self, ids: &[String]) {
        self.acks.acked(AckedBy::Peer, ids);
    }
}

/// What a `sent` answer says of a stored message, kept while its first ack is awaited.
struct Answer {
    id: String,
    published: bool,
    recipients: u32,
    thread_id: String,
}

impl Answer {
    fn of(stored: &Stored) -> Answer {
        Answer {
            id: stored.message.id.clone(),
            published: stored.message.topic.is_some(),
            recipients: stored.recipients.len() as u32,
            thread_id: stored.message.thread_id.clone(),
        }
    }

    /// The answer, once it is known whether a recipient's session took the message.
    fn result(self, metrics: &Metrics, delivered: bool) -> SendResult {
        let status = if self.published {
            DeliveryStatus::Published
        } else if delivered {
            Metrics::inc(&metrics.messages_delivered_total);
            DeliveryStatus::Delivered
        } else {
            Metrics::inc(&metrics.messages_queued_total);
            DeliveryStatus::Queued
        };
        SendResult {
            id: self.id,
            status,
            recipients: self.recipients,
            thread_id: self.thread_id,
        }
    }
}

/// A client-chosen message id, if it is a ULID made within the window around `now`. Every
/// unusable id gets the same answer, so an answer never tells whether another sender's id
/// exists (the store answers the same for one that does).
fn client_id(id: &str, now: i64) -> Result<String> {
    match ulid::Ulid::from_string(id) {
        Ok(u) if (now - ID_PAST_MS..=now + ID_FUTURE_MS).contains(&(u.timestamp_ms() as i64)) => {
            Ok(u.to_string())
        }
        _ => Err(Error::unusable_id(id)),
    }
}

fn msg_frame(stored: &Stored) -> Frame {
    Frame::msg(&stored.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_msg_frame_from_the_borrow_is_the_frame_itself() {
        let message: crate::message::Message = serde_json::from_value(serde_json::json!({
            "id": ulid_at(1_800_000_000_000), "from": "alice", "to": "#ops", "topic": "ops",
            "type": "question", "priority": "high", "subject": "s \"q\"", "body": "<b>hi</b>\n",
            "data": {"k": [1, 2]}, "reply_to": null, "thread_id": "t", "created_at": "2027-01-15T08:00:00Z",
            "read": false
        }))
        .unwrap();
        let borrowed = Frame::msg(&message);
        let owned = Frame::encode(&ServerFrame::Msg {
            message: message.clone(),
        });
        assert_eq!(borrowed.message_id(), Some(message.id.as_str()));
        assert_eq!(borrowed.into_bytes(), owned.into_bytes());
    }

    fn ulid_at(ms: i64) -> String {
        ulid::Ulid::from_parts(ms as u64, 7).to_string()
    }

    #[test]
    fn client_ids_stay_within_the_window() {
        let now = 1_800_000_000_000;
        assert!(client_id(&ulid_at(now), now).is_ok());
        assert!(client_id(&ulid_at(now - ID_PAST_MS), now).is_ok());
        assert!(client_id(&ulid_at(now + ID_FUTURE_MS), now).is_ok());
        let lower = client_id(&ulid_at(now), now).unwrap().to_lowercase();
        assert_eq!(
            client_id(&lower, now).unwrap(),
            ulid_at(now),
            "stored in upper case"
        );
        let answers: Vec<String> = [
            "00000000000000000000000000".to_string(),
            ulid_at(now - ID_PAST_MS - 1),
            ulid_at(now + ID_FUTURE_MS + 1),
            "not-a-ulid".to_string(),
        ]
        .iter()
        .map(|id| {
            client_id(id, now)
                .unwrap_err()
                .to_string()
                .replace(id.as_str(), "ID")
        })
        .collect();
        assert!(answers.iter().all(|a| a == &answers[0]), "{answers:#?}");
        assert!(
            answers[0].starts_with("id: 'ID' cannot be used"),
            "{}",
            answers[0]
        );
    }
}
