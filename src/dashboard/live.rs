//! A dashboard's connections on `/ws`: `switchboard dashboard` asking for a login code, and a
//! logged-in page's live connection.
//!
//! The page's connection is a watcher session of the person's name (so mail to the name is
//! pushed to it, and it counts as no agent's presence), plus the operator's views, which the
//! node pushes as they change: the message stream (read from the store after commits, at most
//! five times a second and [`views::STREAM_BATCH`] rows at a time, with the page's filter
//! applied here), agents with their unread counts, and counters for the rate charts. Every
//! write the page makes is an ordinary `send`/`mark_read` of its own name through the core,
//! so it is durable and replicated like any other; it cannot act as anyone else.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::login::{First, Session};
use super::views::{self, Filter};
use crate::core::{Frame, Metrics, SendQueue, error_frame};
use crate::error::Result;
use crate::node::http::AppState;
use crate::node::upgrade::Socket;
use crate::protocol::{
    ErrorCode, InboxRequest, MarkReadRequest, MarkResult, Role, SearchRequest, SendRequest,
    ServerFrame, ThreadRequest,
};
use crate::transport::{Incoming, Reader, Writer};

/// The shortest time between two stream reads: at most five a second, however busy the node.
const STREAM_EVERY: Duration = Duration::from_millis(200);
/// How often counters go out, agents are compared, and the session is checked again.
const TICK: Duration = Duration::from_secs(1);

/// What the upgrade request of a browser said, for the checks a page's connection needs.
#[derive(Debug, Clone, Default)]
pub struct Browser {
    /// The session cookie's value.
    cookie: Option<String>,
    /// The `Origin` the page claims, and whether it is the node's own.
    same_origin: bool,
}

impl Browser {
    /// Reads an upgrade request's headers.
    pub fn of(s: &AppState, headers: &HeaderMap, tls: bool) -> Browser {
        Browser {
            cookie: super::pages::session_id(s, headers),
            same_origin: super::pages::same_origin(headers, tls),
        }
    }
}

/// A page's requests.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    /// What the stream shows from now on (answered by a `stream` with `reset`).
    Filter(Filter),
    /// A message from the person (answered by `sent`, or `error`).
    Send(SendRequest),
    /// The person's inbox (answered by `inbox`).
    Inbox(InboxRequest),
    /// Marks the person's mail read (answered by `marked`).
    MarkRead(MarkReadRequest),
    /// Any thread (answered by `messages`).
    Thread(ThreadRequest),
    /// Full-text search over every message (answered by `messages`).
    Search(SearchRequest),
    /// Topics and their subscribers (answered by `topics`).
    Topics {
        /// Correlates the answer.
        req: u64,
    },
}

/// What the node pushes to a page (besides the person's own `msg`, `sent`, `inbox` and
/// `marked` frames, which are the wire protocol's).
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Push<'a> {
    Welcome {
        agent: &'a str,
        node: &'a str,
    },
    Stream {
        rows: Vec<views::Row>,
        reset: bool,
        /// Newer messages that matched but were not sent (more than a batch at once).
        skipped: i64,
    },
    Agents {
        agents: Vec<serde_json::Value>,
    },
    Stats {
        at_ms: i64,
        accepted: u64,
        replicated: u64,
        delivered: u64,
        queued: u64,
        pushes: u64,
        connections: u64,
        online: usize,
        unread: u64,
    },
    Messages {
        req: u64,
        messages: Vec<crate::message::Message>,
    },
    Topics {
        req: u64,
        topics: Vec<views::Topic>,
    },
    /// The session is over (logout, expiry, revoked token): the page shows the login.
    Ended {
        reason: &'a str,
    },
}

fn text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// Runs a dashboard connection whose first frame was `first`.
pub async fn run(
    mut writer: Writer<Socket>,
    reader: Reader<Socket>,
    first: First,
    browser: Browser,
    s: &AppState,
) {
    match first {
        First::DashboardLogin {
            token,
            agent,
            ttl_seconds,
        } => {
            let ttl = ttl_seconds.map(Duration::from_secs);
            match s.dashboard.mint(&token, agent.as_deref(), ttl).await {
                Ok(answer) => {
                    tracing::info!(agent = %answer.agent, "minted a dashboard login code");
                    if writer.send(text(&answer).into()).await {
                        writer.close().await;
                    }
                }
                Err(e) => {
                    Metrics::inc(&s.router.metrics.auth_failures_total);
                    writer.refuse(e.code(), e.client_message()).await;
                }
            }
        }
        First::Dashboard { csrf } => {
            let session = match &browser.cookie {
                Some(id) if browser.same_origin => s.dashboard.session(id).await,
                _ => None,
            };
            match session {
                Some(session) if crate::auth::constant_time_eq(&csrf, &session.csrf) => {
                    Page::open(writer, reader, session, s).await;
                }
                _ => {
                    Metrics::inc(&s.router.metrics.auth_failures_total);
                    let why = "not logged in to the dashboard (or another site's page)";
                    writer.refuse(ErrorCode::Unauthorized, why.into()).await;
                }
            }
        }
    }
}

/// A logged-in page's connection.
struct Page<'a> {
    s: &'a AppState,
    session: Session,
    /// The name as the directory spells it.
    name: String,
    sends: SendQueue,
    filter: Filter,
    /// The last arrival the stream has looked at.
    after: i64,
    /// Unread mail per agent, as last counted.
    counts: std::collections::BTreeMap<String, u64>,
    /// The agents as last sent.
    agents: String,
}

impl<'a> Page<'a> {
    async fn open(
        mut writer: Writer<Socket>,
        reader: Reader<Socket>,
        session: Session,
        s: &'a AppState,
    ) {
        let router = &s.router;
        let (tx, mut rx) = mpsc::channel(router.limits.outbound_queue);
        let kill = s.shutdown.child_token();
        let registered = match router.register(&session.name, Role::Watch, tx, kill).await {
            Ok(r) => r,
            Err(e) => return writer.refuse(e.code(), e.client_message()).await,
        };
        let mut page = Page {
            s,
            name: registered.name.clone(),
            sends: router.send_queue(registered.clone()),
            session,
            filter: Filter::default(),
            after: 0,
            counts: Default::default(),
            agents: String::new(),
        };
        tracing::debug!(agent = %page.name, "dashboard page connected");
        let welcome = Push::Welcome {
            agent: &page.name,
            node: &router.node_id,
        };
        if writer.send(text(&welcome).into()).await {
            page.serve(&mut writer, reader, &mut rx, &registered.kill)
                .await;
        }
        page.sends.close().await;
        router.unregister(&page.name, registered.id);
        tracing::debug!(agent = %page.name, "dashboard page gone");
    }

    async fn serve(
        &mut self,
        writer: &mut Writer<Socket>,
        mut reader: Reader<Socket>,
        rx: &mut mpsc::Receiver<Frame>,
        kill: &tokio_util::sync::CancellationToken,
    ) {
        let router = self.s.router.clone();
        let mut commits = router.store.commits();
        let mut presence = router.presence_watch();
        let mut tick = tokio::time::interval(TICK);
        let ping_every = router.limits.ping_interval;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let mut stream_due: Option<tokio::time::Instant> = None;
        let mut last_stream = tokio::time::Instant::now() - STREAM_EVERY;
        let mut ticks = 0u64;
        // The page sends its filter first; until then the stream waits.
        let mut started = false;
        let ended = self.session.ended.clone();
        loop {
            let due = stream_due;
            tokio::select! {
                _ = kill.cancelled() => {
                    let bye = ServerFrame::Bye { reason: "the node is shutting down".into() };
                    let _ = tokio::time::timeout(Duration::from_millis(250), writer.send_frame(&bye)).await;
                    return writer.close().await;
                }
                _ = ended.cancelled() => return self.end(writer, "the session has ended").await,
                out = rx.recv() => match out {
                    Some(frame) => if !writer.send_batch(frame, rx, |_| false).await { return },
                    None => return,
                },
                _ = async { tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await }, if due.is_some() => {
                    stream_due = None;
                    last_stream = tokio::time::Instant::now();
                    if !self.stream(writer, false).await { return }
                }
                changed = commits.changed(), if started && stream_due.is_none() => {
                    if changed.is_err() { return }
                    stream_due = Some((last_stream + STREAM_EVERY).max(tokio::time::Instant::now()));
                }
                _ = presence.changed() => if !self.agents(writer, false).await { return },
                _ = tick.tick() => {
                    ticks += 1;
                    if ticks.is_multiple_of(2) && !self.s.dashboard.still_good(&self.session).await {
                        return self.end(writer, "the session has ended (logged out, expired, or its operator token was revoked)").await;
                    }
                    if !self.agents(writer, !ticks.is_multiple_of(2)).await || !self.stats(writer).await { return }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 2 || !writer.ping().await { return }
                }
                incoming = reader.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        Incoming::Text(t) => {
                            let reply = match serde_json::from_str::<Request>(&t) {
                                Ok(Request::Filter(f)) => {
                                    self.filter = f.normalized();
                                    started = true;
                                    if !self.stream(writer, true).await { return }
                                    continue;
                                }
                                Ok(r) => self.handle(r).await,
                                Err(e) => Some(text(&ServerFrame::error(
                                    crate::node::dispatch::request_id(&t),
                                    ErrorCode::BadFrame,
                                    format!("bad frame: {e}"),
                                ))),
                            };
                            if let Some(reply) = reply && !writer.send(reply.into()).await { return }
                        }
                        Incoming::Alive => {}
                        Incoming::Binary | Incoming::TooLarge(_) => {
                            let (code, message) = incoming.refusal();
                            let _ = writer.send_frame(&ServerFrame::error(None, code, message)).await;
                            return writer.close().await;
                        }
                        Incoming::Closed | Incoming::Broken(_) => return,
                    }
                }
            }
        }
    }

    async fn end(&self, writer: &mut Writer<Socket>, reason: &str) {
        let _ = writer.send(text(&Push::Ended { reason }).into()).await;
        writer.close().await;
    }

    /// One request: its answer as text, or none when it comes through the session's queue.
    async fn handle(&self, r: Request) -> Option<String> {
        let router = &self.s.router;
        let (req, result) = match r {
            Request::Filter(_) => return None,
            Request::Send(send) => {
                let req = send.req;
                match router
                    .send(&self.sends, &self.name, Role::Watch, send)
                    .await
                {
                    Ok(()) => return None,
                    Err(e) => (req, Err(e)),
                }
            }
            Request::Inbox(q) => (
                q.req,
                router
                    .inbox(&self.name, q.clone())
                    .await
                    .map(|result| text(&ServerFrame::Inbox { req: q.req, result })),
            ),
            Request::MarkRead(m) => (
                m.req,
                router.mark_read(&self.name, m.clone()).await.map(|marked| {
                    text(&ServerFrame::Marked {
                        req: m.req,
                        result: MarkResult { marked },
                    })
                }),
            ),
            Request::Thread(t) => {
                let id = t.id;
                let found = router
                    .store
                    .read_committed(move |c| views::thread(c, &id))
                    .await;
                (
                    t.req,
                    found.map(|messages| {
                        text(&Push::Messages {
                            req: t.req,
                            messages,
                        })
                    }),
                )
            }
            Request::Search(q) => (q.req, self.search(q.req, &q.query).await),
            Request::Topics { req } => {
                let topics = router.store.read_committed(views::topics).await;
                (
                    req,
                    topics.map(|topics| text(&Push::Topics { req, topics })),
                )
            }
        };
        Some(result.unwrap_or_else(|e| text(&error_frame(Some(req), &e))))
    }

    async fn search(&self, req: u64, query: &str) -> Result<String> {
        let fts = crate::store::queries::check_search(query)?;
        let store = &self.s.router.store;
        // Index what the periodic run has not yet, then search off the writer.
        store
            .write(|c| crate::store::queries::index_new_messages(c))
            .await?;
        let messages = store
            .read_committed(move |c| views::search(c, &fts))
            .await?;
        Ok(text(&Push::Messages { req, messages }))
    }

    /// New messages for the stream (all of the newest batch again with `reset`).
    async fn stream(&mut self, writer: &mut Writer<Socket>, reset: bool) -> bool {
        if reset {
            self.after = 0;
        }
        let (after, filter) = (self.after, self.filter.clone());
        let unfiltered = filter.is_empty();
        let read = self
            .s
            .router
            .store
            .read_committed(move |c| views::stream(c, after, &filter))
            .await;
        let (rows, head) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the dashboard's stream read failed");
                return true;
            }
        };
        let skipped = if unfiltered && !reset {
            (head - after - rows.len() as i64).max(0)
        } else {
            0
        };
        self.after = head;
        if rows.is_empty() && !reset {
            return true;
        }
        writer
            .send(
                text(&Push::Stream {
                    rows,
                    reset,
                    skipped,
                })
                .into(),
            )
            .await
    }

    /// Agents with their unread counts, when something changed (`unread`: count again).
    async fn agents(&mut self, writer: &mut Writer<Socket>, unread: bool) -> bool {
        let Ok(presence) = self.s.router.presence(None) else {
            return true;
        };
        if unread || self.agents.is_empty() {
            let counted = self.s.router.store.read_committed(views::unread).await;
            self.counts = counted.unwrap_or_default();
        }
        let agents: Vec<serde_json::Value> = presence
            .into_iter()
            .filter_map(|p| {
                let unread = self.counts.get(&p.name).copied().unwrap_or(0);
                let mut v = serde_json::to_value(p).ok()?;
                v.as_object_mut()?.insert("unread".into(), unread.into());
                Some(v)
            })
            .collect();
        let now = text(&agents);
        if now == self.agents {
            return true;
        }
        self.agents = now;
        writer.send(text(&Push::Agents { agents }).into()).await
    }

    async fn stats(&self, writer: &mut Writer<Socket>) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.s.router.metrics;
        let (online, _) = self.s.router.counts();
        let unread = self.counts.values().sum();
        let stats = Push::Stats {
            at_ms: crate::message::now_ms(),
            accepted: m.messages_accepted_total.load(Relaxed),
            replicated: m.replicated_total.load(Relaxed),
            delivered: m.messages_delivered_total.load(Relaxed),
            queued: m.messages_queued_total.load(Relaxed),
            pushes: m.pushes_total.load(Relaxed),
            connections: m.connections_active.load(Relaxed),
            online,
            unread,
        };
        writer.send(text(&stats).into()).await
    }
}
