//! The directory in memory: every known agent with its live sessions here, what peers report
//! online there, and who subscribes to which topic. Pure state behind one short-held lock in
//! [`Router`](super::Router); what is durable is written through the store by the caller.

use std::collections::BTreeSet;

/// Looked up on every send and push; see `acks` for why foldhash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Frame;
use super::metrics::Metrics;
use super::suggest::{Unknown, unknown};
use crate::error::{Error, Result};
use crate::message::{Target, now_ms, rfc3339};
use crate::protocol::{PresenceEntry, Role};
use crate::store::AgentRow;

/// A live connection, as the core sees it: where to push frames and how to cut it off.
#[derive(Debug, Clone)]
pub struct SessionTx {
    /// Unique per node run.
    pub id: u64,
    /// The agent it acts as, spelled as the directory has it (`BOB` connecting is `bob`).
    pub name: String,
    /// What the connection is for.
    pub role: Role,
    /// Bounded queue of serialized frames; full means the client is too slow.
    pub tx: mpsc::Sender<Frame>,
    /// Cancelled to cut the connection off.
    pub kill: CancellationToken,
}

impl SessionTx {
    /// Queues a frame; a full queue cuts the session off (its mail stays in the store).
    /// True if the frame was queued.
    pub fn push(&self, metrics: &Metrics, frame: Frame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kill.is_cancelled() {
                    Metrics::inc(&metrics.slow_consumers_total);
                    tracing::warn!(
                        session = self.id,
                        "session too slow to take its messages; cutting it off"
                    );
                    self.kill.cancel();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
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

#[derive(Debug)]
pub(super) struct Agent {
    pub(super) row: AgentRow,
    pub(super) sessions: Vec<SessionTx>,
    pub(super) connected_since: Option<i64>,
}

impl Agent {
    /// A directory entry with no session here (yet).
    pub(super) fn offline(row: AgentRow) -> Agent {
        Agent {
            row,
            sessions: Vec::new(),
            connected_since: None,
        }
    }

    pub(super) fn online(&self) -> bool {
        self.sessions.iter().any(|s| s.role == Role::Agent)
    }

    /// The presence entry, given where (if anywhere) a live peer reports the agent online.
    fn entry(&self, remote: Option<(&String, &RemoteAgent)>) -> PresenceEntry {
        let (online, node, since) = match (self.online(), remote) {
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

/// A peer node's presence: replaced wholesale by a newer (incarnation, version).
#[derive(Debug)]
pub(super) struct RemoteNode {
    /// The mesh link that reported it (see [`super::Router::remote_presence`]).
    pub(super) link: u64,
    pub(super) incarnation: u64,
    pub(super) version: u64,
    pub(super) agents: HashMap<String, RemoteAgent>,
}

/// Names are one name whatever their case (`bob`, `Bob`, `BOB`): the key of an agent is its
/// folded name, and its row keeps the spelling it was first written with. Names are ASCII
/// (see `validate_name`), so folding is ASCII lower case, the same on every node.
pub fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The directory's state.
#[derive(Debug, Default)]
pub(super) struct Directory {
    /// By folded name.
    agents: HashMap<String, Agent>,
    pub(super) topics: HashMap<String, BTreeSet<String>>,
    /// Presence reported by peer nodes with a live link.
    pub(super) remote: HashMap<String, RemoteNode>,
    /// Per peer node, the latest mesh link that has ended: reports from it or any older link
    /// are stale.
    pub(super) gone: HashMap<String, u64>,
}

impl Directory {
    /// The directory as the store remembers it: agents (all offline) and subscriptions.
    pub(super) fn load(rows: Vec<AgentRow>, subs: Vec<(String, String)>) -> Directory {
        let mut d = Directory::default();
        for row in rows {
            d.insert(Agent::offline(row));
        }
        for (topic, agent) in subs {
            d.topics.entry(topic).or_default().insert(agent);
        }
        d
    }

    /// The agent called `name`, in any case.
    pub(super) fn get(&self, name: &str) -> Option<&Agent> {
        self.agents.get(&fold(name))
    }

    /// The agent called `name`, in any case, to change.
    pub(super) fn get_mut(&mut self, name: &str) -> Option<&mut Agent> {
        self.agents.get_mut(&fold(name))
    }

    /// Adds an agent (replacing one of the same name in any case).
    pub(super) fn insert(&mut self, agent: Agent) {
        self.agents.insert(fold(&agent.row.name), agent);
    }

    /// Takes the agent called `name` (in any case) out of the directory and out of every
    /// topic; returns it with the topics it subscribed to.
    pub(super) fn remove(&mut self, name: &str) -> Option<(Agent, Vec<String>)> {
        let agent = self.agents.remove(&fold(name))?;
        let mut topics = Vec::new();
        for (topic, subs) in &mut self.topics {
            if subs.remove(&agent.row.name) {
                topics.push(topic.clone());
            }
        }
        Some((agent, topics))
    }

    /// Every agent.
    pub(super) fn all(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    /// Every known name, as stored.
    pub(super) fn names(&self) -> impl Iterator<Item = &String> {
        self.agents.values().map(|a| &a.row.name)
    }

    /// How `name` is stored, if it is known in any case.
    pub(super) fn spelling(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| a.row.name.clone())
    }

    /// A live peer that reports `name` online (the earliest connection wins, so every node
    /// resolves the same way).
    pub(super) fn remote_of(&self, name: &str) -> Option<(&String, &RemoteAgent)> {
        self.remote
            .iter()
            .filter_map(|(node, n)| n.agents.get(&fold(name)).map(|a| (node, a)))
            .min_by(|a, b| {
                a.1.connected_since
                    .cmp(&b.1.connected_since)
                    .then(a.0.cmp(b.0))
            })
    }

    pub(super) fn entry(&self, a: &Agent) -> PresenceEntry {
        a.entry(self.remote_of(&a.row.name))
    }

    /// Presence of every known agent, online first, or of one (unknown: "did you mean").
    pub(super) fn presence(&self, filter: Option<&str>) -> Result<Vec<PresenceEntry>> {
        if let Some(name) = filter {
            return match self.get(name) {
                Some(a) => Ok(vec![self.entry(a)]),
                None => Err(unknown(Unknown::Agent, name, self.names())),
            };
        }
        let mut all: Vec<PresenceEntry> = self.all().map(|a| self.entry(a)).collect();
        all.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.name.cmp(&b.name)));
        Ok(all)
    }

    /// Who a send to `target` from `from` goes to, and its topic. Unknown names and topics
    /// nobody subscribes to are refused with suggestions.
    pub(super) fn recipients(
        &self,
        target: &Target,
        from: &str,
    ) -> Result<(Vec<String>, Option<String>)> {
        match target {
            Target::Agent(name) => match self.spelling(name) {
                Some(stored) => Ok((vec![stored], None)),
                None => Err(unknown(Unknown::Agent, name, self.names())),
            },
            Target::Topic(topic) => match self.topics.get(topic).filter(|s| !s.is_empty()) {
                Some(subs) => Ok((
                    subs.iter().filter(|a| *a != from).cloned().collect(),
                    Some(topic.clone()),
                )),
                None => Err(unknown(
                    Unknown::Topic,
                    topic,
                    self.topics
                        .iter()
                        .filter(|(_, s)| !s.is_empty())
                        .map(|(t, _)| t),
                )),
            },
            Target::Broadcast => Ok((self.names().filter(|a| *a != from).cloned().collect(), None)),
        }
    }

    /// Pushes `frame` to every live session of `recipients` (CLI sessions get no pushes);
    /// returns the recipients an agent session took it for, who can ack it.
    pub(super) fn push(
        &self,
        metrics: &Metrics,
        recipients: &[String],
        frame: &Frame,
    ) -> Vec<String> {
        let mut reached = Vec::new();
        for r in recipients {
            let Some(agent) = self.get(r) else {
                continue;
            };
            for s in &agent.sessions {
                if s.role != Role::Cli && s.push(metrics, frame.clone()) {
                    Metrics::inc(&metrics.pushes_total);
                    if s.role == Role::Agent {
                        reached.push(r.clone());
                    }
                }
            }
        }
        reached
    }

    /// The topics `agent` subscribes to, sorted.
    pub(super) fn topics_of(&self, agent: &str) -> Vec<String> {
        let mut t: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, s)| s.contains(agent))
            .map(|(t, _)| t.clone())
            .collect();
        t.sort();
        t
    }

    pub(super) fn set_subscription(&mut self, topic: &str, agent: &str, on: bool) {
        if on {
            self.topics
                .entry(topic.to_owned())
                .or_default()
                .insert(agent.to_owned());
        } else if let Some(s) = self.topics.get_mut(topic) {
            s.remove(agent);
        }
    }

    /// The entry of `agent`, or "unknown agent".
    pub(super) fn agent_mut(&mut self, agent: &str) -> Result<&mut Agent> {
        self.get_mut(agent).ok_or_else(|| {
            Error::refused(
                crate::protocol::ErrorCode::UnknownAgent,
                format!("unknown agent '{agent}'"),
            )
        })
    }
}
