//! The router: the one place where routing decisions are made.
//!
//! It owns the node's live state — who is connected (sessions), the agent directory with
//! presence, topic subscriptions, per-sender rate limits, and sends waiting for a recipient's
//! ack — and decides, for every message, which inboxes it goes to and which sessions get it
//! pushed. Everything here is in memory behind one short-held `std::sync::Mutex` (never held
//! across an `.await`); everything durable goes through the [`Store`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::message::{MAX_NAME_LEN, Target, now_ms, rfc3339, validate_name};
use crate::node::metrics::Metrics;
use crate::protocol::{
    DeliveryStatus, ErrorCode, Hello, PresenceEntry, Role, SendRequest, SendResult, ServerFrame,
    Status,
};
use crate::store::{AgentRow, NewMessage, Store, Stored, queries};

/// How long a send waits for a recipient's session to ack before it answers `queued`.
pub const ACK_WAIT: Duration = Duration::from_secs(1);
/// How long acks gather before their delivery times are written (lost on a crash: they are
/// an audit record only).
const DELIVERED_FLUSH: Duration = Duration::from_millis(100);
/// Longest subject, in characters.
pub const MAX_SUBJECT: usize = 200;
/// Longest status text, in characters.
pub const MAX_STATUS_TEXT: usize = 200;

/// A live connection, as the router sees it: where to push frames and how to cut it off.
#[derive(Debug, Clone)]
pub struct SessionTx {
    /// Unique per node run.
    pub id: u64,
    /// What the connection is for.
    pub role: Role,
    /// Bounded queue of serialized frames; full means the client is too slow.
    pub tx: mpsc::Sender<Utf8Bytes>,
    /// Cancelled to cut the connection off.
    pub kill: CancellationToken,
}

#[derive(Debug)]
struct Agent {
    row: AgentRow,
    sessions: Vec<SessionTx>,
    connected_since: Option<i64>,
}

impl Agent {
    /// A directory entry with no session here (yet).
    fn offline(row: AgentRow) -> Agent {
        Agent {
            row,
            sessions: Vec::new(),
            connected_since: None,
        }
    }

    fn online(&self) -> bool {
        self.sessions.iter().any(|s| s.role == Role::Agent)
    }

    /// The presence entry, given where (if anywhere) a live peer reports the agent online.
    fn entry(&self, remote: Option<(&String, &RemoteAgent)>) -> PresenceEntry {
        let local = self.online();
        let (online, node, since) = match (local, remote) {
            (true, _) => (true, self.row.node.clone(), self.connected_since),
            (false, Some((node, r))) => (true, node.clone(), Some(r.connected_since)),
            (false, None) => (false, self.row.node.clone(), None),
        };
        PresenceEntry {
            name: self.row.name.clone(),
            online,
            node,
            status: self.row.status,
            status_text: self.row.status_text.clone(),
            last_seen: if online {
                Some(rfc3339(now_ms()))
            } else {
                self.row.last_seen.map(rfc3339)
            },
            connected_since: since.map(rfc3339),
        }
    }
}

/// An agent online at a peer node, as that node reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct RemoteAgent {
    /// Agent name.
    pub name: String,
    /// ms since the epoch.
    pub connected_since: i64,
}

/// A peer node's presence: replaced wholesale by a newer (incarnation, version).
#[derive(Debug)]
struct RemoteNode {
    incarnation: u64,
    version: u64,
    agents: HashMap<String, RemoteAgent>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct State {
    agents: HashMap<String, Agent>,
    topics: HashMap<String, BTreeSet<String>>,
    buckets: HashMap<String, Bucket>,
    /// Presence reported by peer nodes with a live link.
    remote: HashMap<String, RemoteNode>,
}

impl State {
    /// A live peer that reports `name` online (the earliest connection wins, so every node
    /// resolves the same way).
    fn remote_of(&self, name: &str) -> Option<(&String, &RemoteAgent)> {
        self.remote
            .iter()
            .filter_map(|(node, n)| n.agents.get(name).map(|a| (node, a)))
            .min_by(|a, b| {
                a.1.connected_since
                    .cmp(&b.1.connected_since)
                    .then(a.0.cmp(b.0))
            })
    }

    fn entry(&self, a: &Agent) -> PresenceEntry {
        a.entry(self.remote_of(&a.row.name))
    }
}

/// A live link to a peer node, for frames the router must send it.
#[derive(Debug, Clone)]
pub struct PeerTx {
    /// Serialized peer frames.
    pub tx: mpsc::Sender<String>,
}

#[derive(Debug)]
struct Pending {
    recipients: Vec<String>,
    done: oneshot::Sender<()>,
}

/// A send that passed validation and has an id and recipients, ready for the store.
pub struct PreparedSend {
    /// What to store.
    pub message: NewMessage,
    /// How it was addressed, for the status.
    pub target: Target,
}

/// What the node knows and decides; shared by every connection.
pub struct Router {
    /// This node's id.
    pub node_id: String,
    /// The durable store.
    pub store: Store,
    /// Limits in force.
    pub limits: Limits,
    /// Counters.
    pub metrics: Metrics,
    secret: String,
    started: Instant,
    state: Mutex<State>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Acks that came before their sender's wait was registered (see [`Early`]).
    early: Mutex<Early>,
    /// Live peer links by node id.
    peers: Mutex<HashMap<String, PeerTx>>,
    /// (agent, message id, ms) acks not yet recorded in the store.
    delivered: Mutex<Vec<(String, String, i64)>>,
    /// Bumped whenever local presence changes, so links send a fresh snapshot at once.
    presence_version: tokio::sync::watch::Sender<u64>,
    /// This run of the node; a restarted node's presence replaces its stale entries.
    pub incarnation: u64,
    ids: Mutex<ulid::Generator>,
    next_session: AtomicU64,
}

/// Acks of messages nobody waits for yet. A recipient's ack (or a peer's `delivered`) can
/// beat the sender's completer to registering its wait — a peer pushes before it even commits
/// — and was then lost, so the sender heard `queued` for a delivered message. Kept for
/// [`ACK_WAIT`]; most are acks nobody will wait for (replayed mail), hence the bound.
#[derive(Default)]
struct Early {
    /// Message id → who acked (`None`: a peer's `delivered`) and when.
    acks: HashMap<String, (Option<String>, Instant)>,
    /// Ids in arrival order, to expire the oldest in O(1) each.
    order: std::collections::VecDeque<(String, Instant)>,
}

/// Acks kept at most; beyond that new ones are dropped (the sender then hears `queued`).
const EARLY_MAX: usize = 4096;

impl Early {
    fn add(&mut self, id: &str, by: Option<&str>) {
        let now = Instant::now();
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

    /// Whether `id` was already acked by one of `recipients` (or delivered at a peer).
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a way that matters
    // more than stopping the node would, so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Router {
    /// Builds the router from what the store remembers.
    pub async fn load(
        node_id: String,
        store: Store,
        limits: Limits,
        secret: String,
    ) -> Result<Router> {
        let (rows, subs) = store
            .read(|c| Ok((queries::agents(c)?, queries::subscriptions(c)?)))
            .await?;
        let mut state = State::default();
        for row in rows {
            state.agents.insert(row.name.clone(), Agent::offline(row));
        }
        for (topic, agent) in subs {
            state.topics.entry(topic).or_default().insert(agent);
        }
        Ok(Router {
            node_id,
            store,
            limits,
            metrics: Metrics::default(),
            secret,
            started: Instant::now(),
            state: Mutex::new(state),
            pending: Mutex::new(HashMap::new()),
            early: Mutex::new(Early::default()),
            peers: Mutex::new(HashMap::new()),
            delivered: Mutex::new(Vec::new()),
            presence_version: tokio::sync::watch::channel(0).0,
            incarnation: u64::try_from(now_ms()).unwrap_or_default(),
            ids: Mutex::new(ulid::Generator::new()),
            next_session: AtomicU64::new(1),
        })
    }

    /// Seconds since the node started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Checks a hello. Returns whether the connection holds the local secret (may act as anyone
    /// and manage tokens).
    pub async fn authenticate(&self, hello: &Hello, header_token: Option<&str>) -> Result<bool> {
        if hello.v != crate::protocol::PROTOCOL_VERSION {
            return Err(Error::refused(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this node speaks v1",
                    hello.v
                ),
            ));
        }
        validate_name(&hello.agent)
            .map_err(|e| Error::refused(ErrorCode::InvalidArgument, format!("agent name {e}")))?;
        let Some(token) = hello.token.as_deref().or(header_token) else {
            return Err(Error::refused(
                ErrorCode::Unauthorized,
                "no token: put the local secret or an agent token in hello.token or an Authorization: Bearer header",
            ));
        };
        if auth::constant_time_eq(token, &self.secret) {
            return Ok(true);
        }
        let hash = auth::hash_token(token);
        let owner = self
            .store
            .read(move |c| queries::token_owner(c, &hash))
            .await?;
        match owner {
            Some(name) if name == hello.agent => Ok(false),
            Some(_) => Err(Error::refused(
                ErrorCode::Unauthorized,
                format!("this token is not valid for agent '{}'", hello.agent),
            )),
            None => Err(Error::refused(ErrorCode::Unauthorized, "invalid token")),
        }
    }

    /// Adds a session; creates the agent's directory entry the first time a name is seen.
    pub async fn register(
        &self,
        agent: &str,
        role: Role,
        tx: mpsc::Sender<Utf8Bytes>,
        kill: CancellationToken,
    ) -> Result<SessionTx> {
        let session = SessionTx {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            role,
            tx,
            kill,
        };
        // One-shot commands are not presence and get no pushes: keep them out of the directory,
        // so `switchboard who` does not invent an agent called "cli".
        if role == Role::Cli {
            return Ok(session);
        }
        let now = now_ms();
        let persist = {
            let mut state = lock(&self.state);
            let mut created = false;
            let entry = state.agents.entry(agent.to_owned()).or_insert_with(|| {
                created = true;
                Agent::offline(AgentRow {
                    name: agent.to_owned(),
                    node: self.node_id.clone(),
                    status: Status::Available,
                    status_text: None,
                    last_seen: None,
                })
            });
            let was_online = entry.online();
            entry.sessions.push(session.clone());
            if role == Role::Agent && !was_online {
                entry.connected_since = Some(now);
                entry.row.node = self.node_id.clone();
                entry.row.last_seen = Some(now);
                Some((entry.row.clone(), false))
            } else if created {
                // A watcher (`tail --as carol`) makes its name known, as a token does: stored
                // and replicated, so every node accepts mail for it and it outlives a restart.
                Some((entry.row.clone(), true))
            } else {
                None
            }
        };
        if let Some((row, introduced)) = persist {
            self.presence_changed();
            let origin = self.node_id.clone();
            self.store
                .write(move |c| {
                    if introduced {
                        queries::introduce_agent(c, &row, now, Some(&origin))
                    } else {
                        queries::upsert_agent(c, &row, now, Some(&origin))
                    }
                })
                .await?;
        }
        Ok(session)
    }

    /// Removes a session; the agent goes offline when its last agent session leaves.
    pub fn unregister(&self, agent: &str, session_id: u64) {
        let now = now_ms();
        let persist = {
            let mut state = lock(&self.state);
            let Some(entry) = state.agents.get_mut(agent) else {
                return;
            };
            let was_online = entry.online();
            entry.sessions.retain(|s| s.id != session_id);
            if was_online && !entry.online() {
                entry.connected_since = None;
                entry.row.last_seen = Some(now);
                Some(entry.row.clone())
            } else {
                None
            }
        };
        if let Some(row) = persist {
            self.presence_changed();
            let origin = self.node_id.clone();
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store
                    .write(move |c| queries::upsert_agent(c, &row, now, Some(&origin)))
                    .await
                {
                    tracing::warn!(error = %e, "could not record last seen");
                }
            });
        }
    }

    /// Validates a send, applies the rate limit, resolves recipients and assigns the id.
    /// Synchronous so that the caller queues sends to the store in the order they arrived.
    pub fn prepare_send(&self, from: &str, req: SendRequest) -> Result<PreparedSend> {
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
            Some(id) => {
                let u = ulid::Ulid::from_string(id)
                    .map_err(|_| Error::Invalid(format!("id: '{id}' is not a ULID")))?;
                if u.timestamp_ms() as i64 > now + 300_000 {
                    return Err(Error::Invalid(format!("id: '{id}' is from the future")));
                }
                u.to_string()
            }
            None => self.new_id()?,
        };
        let mut state = lock(&self.state);
        self.take_token(&mut state, from, now)?;
        let (recipients, topic) = match &target {
            Target::Agent(name) => {
                if !state.agents.contains_key(name) {
                    return Err(unknown(
                        ErrorCode::UnknownAgent,
                        "agent",
                        name,
                        state.agents.keys(),
                    ));
                }
                (vec![name.clone()], None)
            }
            Target::Topic(topic) => match state.topics.get(topic).filter(|s| !s.is_empty()) {
                Some(subs) => (
                    subs.iter().filter(|a| *a != from).cloned().collect(),
                    Some(topic.clone()),
                ),
                None => {
                    return Err(unknown(
                        ErrorCode::UnknownTopic,
                        "topic",
                        topic,
                        state
                            .topics
                            .iter()
                            .filter(|(_, s)| !s.is_empty())
                            .map(|(t, _)| t),
                    ));
                }
            },
            Target::Broadcast => (
                state
                    .agents
                    .keys()
                    .filter(|a| *a != from)
                    .cloned()
                    .collect(),
                None,
            ),
        };
        drop(state);
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
            target,
        })
    }

    fn new_id(&self) -> Result<String> {
        lock(&self.ids)
            .generate()
            .map(|u| u.to_string())
            .map_err(|_| {
                Error::refused(
                    ErrorCode::Internal,
                    "message id space exhausted for this millisecond",
                )
            })
    }

    fn take_token(&self, state: &mut State, from: &str, now: i64) -> Result<()> {
        let rate = self.limits.send_per_second;
        if rate == 0 {
            return Ok(());
        }
        let burst = f64::from(self.limits.send_burst.max(1));
        let _ = now;
        let b = state.buckets.entry(from.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: Instant::now(),
        });
        let t = Instant::now();
        b.tokens = (b.tokens + t.duration_since(b.at).as_secs_f64() * f64::from(rate)).min(burst);
        b.at = t;
        if b.tokens < 1.0 {
            Metrics::inc(&self.metrics.rate_limited_total);
            return Err(Error::refused(
                ErrorCode::RateLimited,
                format!(
                    "rate limit: at most {rate} messages/s (burst {burst}) per sender; slow down — \
                     and do not answer acknowledgements with acknowledgements"
                ),
            ));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Pushes a committed message to every live session of its recipients. Returns a receiver
    /// that fires on the first ack from an agent session, or `None` when no agent session got it.
    /// Called in commit order, so each session sees one sender's messages in order.
    pub fn dispatch(&self, stored: &Stored) -> Option<oneshot::Receiver<()>> {
        // Recipients online at a peer: that node acks back to us with `delivered`.
        let remote: Vec<String> = {
            let state = lock(&self.state);
            stored
                .recipients
                .iter()
                .filter(|r| state.remote_of(r).is_some())
                .cloned()
                .collect()
        };
        self.push_local(stored, remote)
    }

    /// Pushes to the local sessions of the recipients; returns a receiver for the first ack
    /// (local, or from a peer for the `reached` ones), or `None` when nobody can ack.
    fn push_local(
        &self,
        stored: &Stored,
        mut reached: Vec<String>,
    ) -> Option<oneshot::Receiver<()>> {
        let frame = Utf8Bytes::from(
            serde_json::to_string(&ServerFrame::Msg {
                message: stored.message.clone(),
            })
            .ok()?,
        );
        {
            let state = lock(&self.state);
            for r in &stored.recipients {
                let Some(agent) = state.agents.get(r) else {
                    continue;
                };
                for s in &agent.sessions {
                    if s.role != Role::Cli
                        && push(&self.metrics, s, frame.clone())
                        && s.role == Role::Agent
                    {
                        reached.push(r.clone());
                    }
                }
            }
        }
        if reached.is_empty() {
            return None;
        }
        reached.dedup();
        let (done, rx) = oneshot::channel();
        let mut pending = lock(&self.pending);
        if lock(&self.early).take(&stored.message.id, &reached) {
            let _ = done.send(());
        } else {
            pending.insert(
                stored.message.id.clone(),
                Pending {
                    recipients: reached,
                    done,
                },
            );
        }
        Some(rx)
    }

    /// Waits for the first ack of a dispatched message and turns it into a send's status.
    pub async fn outcome(
        &self,
        stored: &Stored,
        acked: Option<oneshot::Receiver<()>>,
    ) -> SendResult {
        let delivered = match acked {
            Some(rx) => {
                let got = tokio::time::timeout(ACK_WAIT, rx)
                    .await
                    .is_ok_and(|r| r.is_ok());
                if !got {
                    lock(&self.pending).remove(&stored.message.id);
                }
                got
            }
            None => false,
        };
        let status = if stored.message.topic.is_some() {
            DeliveryStatus::Published
        } else if delivered {
            Metrics::inc(&self.metrics.messages_delivered_total);
            DeliveryStatus::Delivered
        } else {
            Metrics::inc(&self.metrics.messages_queued_total);
            DeliveryStatus::Queued
        };
        SendResult {
            id: stored.message.id.clone(),
            status,
            recipients: stored.recipients.len() as u32,
            thread_id: stored.message.thread_id.clone(),
        }
    }

    /// A session of `agent` holds these messages: complete waiting sends and record delivery.
    pub async fn acked(
        self: &std::sync::Arc<Self>,
        agent: &str,
        role: Role,
        ids: Vec<String>,
    ) -> Result<()> {
        if role != Role::Agent || ids.is_empty() {
            return Ok(());
        }
        self.metrics
            .acks_total
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        {
            let mut pending = lock(&self.pending);
            for id in &ids {
                match pending.get(id) {
                    Some(p) if p.recipients.iter().any(|r| r == agent) => {
                        if let Some(p) = pending.remove(id) {
                            let _ = p.done.send(());
                        }
                    }
                    Some(_) => {}
                    None => lock(&self.early).add(id, Some(agent)),
                }
            }
        }
        // Delivery times are an audit record, not state anyone waits on: gather them for
        // DELIVERED_FLUSH and write them in one job, instead of one commit (and one disk write,
        // on the latency path of the next message) per ack.
        let now = now_ms();
        let first = {
            let mut buf = lock(&self.delivered);
            let first = buf.is_empty();
            buf.extend(ids.into_iter().map(|id| (agent.to_owned(), id, now)));
            first
        };
        if first {
            let router = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(DELIVERED_FLUSH).await;
                let batch = std::mem::take(&mut *lock(&router.delivered));
                if let Ok(answer) = router
                    .store
                    .submit(move |c| queries::mark_delivered(c, &batch))
                    .await
                {
                    drop(answer);
                }
            });
        }
        Ok(())
    }

    /// Writes delivery times still gathering (graceful shutdown).
    pub async fn flush_delivered(&self) {
        let batch = std::mem::take(&mut *lock(&self.delivered));
        if !batch.is_empty() {
            let _ = self
                .store
                .write(move |c| queries::mark_delivered(c, &batch))
                .await;
        }
    }

    /// Presence of every known agent (or of one).
    pub fn presence(&self, filter: Option<&str>) -> Result<Vec<PresenceEntry>> {
        let state = lock(&self.state);
        if let Some(name) = filter {
            return match state.agents.get(name) {
                Some(a) => Ok(vec![state.entry(a)]),
                None => Err(unknown(
                    ErrorCode::UnknownAgent,
                    "agent",
                    name,
                    state.agents.keys(),
                )),
            };
        }
        let mut all: Vec<PresenceEntry> = state.agents.values().map(|a| state.entry(a)).collect();
        all.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.name.cmp(&b.name)));
        Ok(all)
    }

    /// Sets an agent's status and returns its entry.
    pub async fn set_status(
        &self,
        agent: &str,
        status: Status,
        text: Option<String>,
    ) -> Result<PresenceEntry> {
        if let Some(t) = &text
            && t.chars().count() > MAX_STATUS_TEXT
        {
            return Err(Error::Invalid(format!(
                "text: must be at most {MAX_STATUS_TEXT} characters"
            )));
        }
        let (row, entry) = {
            let mut state = lock(&self.state);
            let a = state.agents.get_mut(agent).ok_or_else(|| {
                Error::refused(ErrorCode::UnknownAgent, format!("unknown agent '{agent}'"))
            })?;
            a.row.status = status;
            a.row.status_text = text;
            let row = a.row.clone();
            let entry = state.agents.get(agent).map(|a| state.entry(a));
            (row, entry)
        };
        self.presence_changed();
        let entry = entry.ok_or_else(|| Error::refused(ErrorCode::Internal, "agent vanished"))?;
        let now = now_ms();
        let origin = self.node_id.clone();
        self.store
            .write(move |c| queries::upsert_agent(c, &row, now, Some(&origin)))
            .await?;
        Ok(entry)
    }

    /// Subscribes or unsubscribes; returns the agent's topics afterwards.
    pub async fn subscribe(&self, agent: &str, topic: &str, on: bool) -> Result<Vec<String>> {
        let topic = topic.strip_prefix('#').unwrap_or(topic);
        validate_name(topic).map_err(|e| Error::Invalid(format!("topic: {e}")))?;
        let (t, a) = (topic.to_owned(), agent.to_owned());
        let now = now_ms();
        let origin = self.node_id.clone();
        self.store
            .write(move |c| queries::set_subscription(c, &t, &a, on, now, Some(&origin)))
            .await?;
        let mut state = lock(&self.state);
        if on {
            state
                .topics
                .entry(topic.to_owned())
                .or_default()
                .insert(agent.to_owned());
        } else if let Some(s) = state.topics.get_mut(topic) {
            s.remove(agent);
        }
        Ok(topics_of(&state, agent))
    }

    /// Registers an agent name without a connection (a token was issued for it), so that
    /// messages to it are accepted and queued before it first connects.
    pub async fn ensure_agent(&self, name: &str) -> Result<()> {
        let now = now_ms();
        let row = {
            let mut state = lock(&self.state);
            if state.agents.contains_key(name) {
                return Ok(());
            }
            let row = AgentRow {
                name: name.to_owned(),
                node: self.node_id.clone(),
                status: Status::Available,
                status_text: None,
                last_seen: None,
            };
            state
                .agents
                .insert(name.to_owned(), Agent::offline(row.clone()));
            row
        };
        let origin = self.node_id.clone();
        self.store
            .write(move |c| queries::introduce_agent(c, &row, now, Some(&origin)))
            .await
    }

    /// Counts for `/health`: (agents online, sessions).
    pub fn counts(&self) -> (usize, usize) {
        let state = lock(&self.state);
        let online = state.agents.values().filter(|a| a.online()).count();
        let sessions = state.agents.values().map(|a| a.sessions.len()).sum();
        (online, sessions)
    }

    /// Tells peer links that local presence changed.
    fn presence_changed(&self) {
        self.presence_version.send_modify(|v| *v += 1);
    }

    /// Wakes when local presence changes.
    pub fn presence_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.presence_version.subscribe()
    }

    /// Agents online here, for peers.
    pub fn local_presence(&self) -> Vec<RemoteAgent> {
        let state = lock(&self.state);
        state
            .agents
            .values()
            .filter(|a| a.online())
            .map(|a| RemoteAgent {
                name: a.row.name.clone(),
                connected_since: a.connected_since.unwrap_or_default(),
            })
            .collect()
    }

    /// A peer's presence snapshot; older (incarnation, version) pairs are ignored.
    pub fn remote_presence(
        &self,
        node: &str,
        incarnation: u64,
        version: u64,
        agents: Vec<RemoteAgent>,
    ) {
        let mut state = lock(&self.state);
        if let Some(old) = state.remote.get(node)
            && (old.incarnation, old.version) >= (incarnation, version)
        {
            return;
        }
        state.remote.insert(
            node.to_owned(),
            RemoteNode {
                incarnation,
                version,
                agents: agents.into_iter().map(|a| (a.name.clone(), a)).collect(),
            },
        );
    }

    /// A peer link is up: the router can send it frames.
    pub fn peer_up(&self, node: &str, tx: mpsc::Sender<String>) {
        lock(&self.peers).insert(node.to_owned(), PeerTx { tx });
    }

    /// A peer link went down: its agents are no longer known to be online anywhere.
    pub fn peer_down(&self, node: &str, tx: &mpsc::Sender<String>) {
        let mut peers = lock(&self.peers);
        if peers.get(node).is_some_and(|p| p.tx.same_channel(tx)) {
            peers.remove(node);
            lock(&self.state).remote.remove(node);
        }
    }

    /// A peer says a session of a recipient there holds these messages.
    pub fn remote_delivered(&self, ids: &[String]) {
        let mut pending = lock(&self.pending);
        for id in ids {
            match pending.remove(id) {
                Some(p) => {
                    let _ = p.done.send(());
                }
                None => lock(&self.early).add(id, None),
            }
        }
    }

    /// Takes in what a peer's committed events changed in the directory and subscriptions.
    /// (Their messages were pushed already, by [`Router::push_remote`].)
    pub fn apply_remote(self: &std::sync::Arc<Self>, applied: crate::store::replication::Applied) {
        {
            let mut state = lock(&self.state);
            for row in applied.agents {
                match state.agents.get_mut(&row.name) {
                    Some(a) => {
                        // Where the agent is online here, this node's view of it wins.
                        if !a.online() {
                            a.row = row;
                        } else {
                            a.row.status = row.status;
                            a.row.status_text = row.status_text;
                        }
                    }
                    None => {
                        state.agents.insert(row.name.clone(), Agent::offline(row));
                    }
                }
            }
            for (topic, agent, on) in applied.subscriptions {
                if on {
                    state.topics.entry(topic).or_default().insert(agent);
                } else if let Some(s) = state.topics.get_mut(&topic) {
                    s.remove(&agent);
                }
            }
        }
    }

    /// Pushes messages a peer's events brought to this node's sessions of their recipients,
    /// and tells the origin (which waits to answer its sender) when a recipient acks one.
    /// Called on the store's writer thread as soon as the apply has run, before its commit:
    /// the message is already durable at its origin, which re-sends it until this node has
    /// committed it, so an early push can repeat after a crash but never announce a loss.
    pub fn push_remote(
        self: &std::sync::Arc<Self>,
        messages: &[Stored],
        rt: &tokio::runtime::Handle,
    ) {
        for stored in messages {
            let Some(acked) = self.push_local(stored, Vec::new()) else {
                continue;
            };
            let origin = stored.origin.clone();
            let id = stored.message.id.clone();
            let router = self.clone();
            rt.spawn(async move {
                if tokio::time::timeout(ACK_WAIT, acked)
                    .await
                    .is_ok_and(|r| r.is_ok())
                    && let Some(p) = lock(&router.peers).get(&origin).cloned()
                {
                    let frame = serde_json::json!({"op": "delivered", "ids": [id]}).to_string();
                    let _ = p.tx.try_send(frame);
                }
            });
        }
    }

    /// Cuts every session off; each says goodbye (`bye`) as it closes.
    pub fn close_all(&self) {
        let state = lock(&self.state);
        for a in state.agents.values() {
            for s in &a.sessions {
                s.kill.cancel();
            }
        }
    }
}

/// Pushes one frame; a full queue cuts the session off (its mail stays in the store).
fn push(metrics: &Metrics, s: &SessionTx, frame: Utf8Bytes) -> bool {
    match s.tx.try_send(frame) {
        Ok(()) => {
            Metrics::inc(&metrics.pushes_total);
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            if !s.kill.is_cancelled() {
                Metrics::inc(&metrics.slow_consumers_total);
                tracing::warn!(
                    session = s.id,
                    "session too slow to take its messages; cutting it off"
                );
                s.kill.cancel();
            }
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

fn topics_of(state: &State, agent: &str) -> Vec<String> {
    let mut t: Vec<String> = state
        .topics
        .iter()
        .filter(|(_, s)| s.contains(agent))
        .map(|(t, _)| t.clone())
        .collect();
    t.sort();
    t
}

/// "unknown agent 'bbo' — did you mean 'bob'?" with up to three close names.
fn unknown<'a>(
    code: ErrorCode,
    what: &str,
    name: &str,
    known: impl Iterator<Item = &'a String>,
) -> Error {
    let prefix = if what == "topic" { "#" } else { "" };
    let mut close: Vec<(f64, &String)> = known
        .map(|k| (strsim::normalized_damerau_levenshtein(name, k), k))
        .filter(|(score, k)| {
            *score >= 0.5
                || strsim::damerau_levenshtein(name, k) <= 2
                || k.to_lowercase() == name.to_lowercase()
        })
        .collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let names: Vec<String> = close
        .iter()
        .take(3)
        .map(|(_, k)| format!("'{prefix}{k}'"))
        .collect();
    let hint = match names.len() {
        0 => " Nothing was sent.".to_owned(),
        _ => format!(" — did you mean {}? Nothing was sent.", names.join(" or ")),
    };
    let shown: String = name.chars().take(MAX_NAME_LEN).collect();
    let why = if what == "topic" {
        ": nobody subscribes to it"
    } else {
        ""
    };
    Error::refused(code, format!("unknown {what} '{prefix}{shown}'{why}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        let known = ["bob".to_string(), "alice".to_string(), "robert".to_string()];
        let e = unknown(ErrorCode::UnknownAgent, "agent", "bbo", known.iter());
        assert!(
            e.to_string()
                .starts_with("unknown agent 'bbo' — did you mean 'bob'"),
            "{e}"
        );
        let e = unknown(ErrorCode::UnknownAgent, "agent", "zzzzzz", known.iter());
        assert!(!e.to_string().contains("did you mean"), "{e}");
    }
}
