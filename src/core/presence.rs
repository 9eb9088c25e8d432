//! Who is here and who is online anywhere: sessions joining and leaving, status and
//! subscriptions, and the presence that peer nodes report. Every change is applied to the
//! directory first (so the next send sees it) and then written, stamped, to the store, which
//! replicates it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::directory::{Agent, RemoteAgent, RemoteNode, SessionTx};
use super::{Frame, Router};
use crate::error::{Error, Result};
use crate::message::{now_ms, validate_name};
use crate::protocol::{PresenceEntry, Role, Status};
use crate::store::replication::Applied;
use crate::store::{AgentRow, queries};

/// Longest status text, in characters.
pub const MAX_STATUS_TEXT: usize = 200;

impl Router {
    fn new_row(&self, name: &str) -> AgentRow {
        AgentRow {
            name: name.to_owned(),
            node: self.node_id.clone(),
            status: Status::Available,
            status_text: None,
            last_seen: None,
        }
    }

    /// Adds a session; creates the agent's directory entry the first time a name is seen.
    /// The session acts as the name as the directory spells it (see [`SessionTx::name`]).
    pub async fn register(
        &self,
        agent: &str,
        role: Role,
        tx: mpsc::Sender<Frame>,
        kill: CancellationToken,
    ) -> Result<SessionTx> {
        let mut session = SessionTx {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            name: agent.to_owned(),
            role,
            tx,
            kill,
        };
        // One-shot commands are not presence and get no pushes: keep them out of the directory,
        // so `switchboard who` does not invent an agent called "cli".
        if role == Role::Cli {
            if let Some(stored) = self.directory.lock().spelling(agent) {
                session.name = stored;
            }
            return Ok(session);
        }
        let now = now_ms();
        let persist = {
            let mut d = self.directory.lock();
            let created = d.get(agent).is_none();
            if created {
                d.insert(Agent::offline(self.new_row(agent)));
            }
            let Some(entry) = d.get_mut(agent) else {
                return Err(Error::refused(
                    crate::protocol::ErrorCode::Internal,
                    "agent vanished",
                ));
            };
            session.name = entry.row.name.clone();
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
            let stored = self
                .store
                .write(move |c| {
                    if introduced {
                        queries::introduce_agent(c, &row, now, Some(&origin))
                    } else {
                        queries::upsert_agent(c, &row, now, Some(&origin))
                    }
                })
                .await;
            match stored {
                // A full disk must not keep agents from connecting: the row is in memory (and
                // in peers' presence); it is stored with the agent's next change.
                Err(e) if crate::store::fault::fault_in(&e).is_some() => {
                    tracing::debug!(error = %e, agent, "could not store the agent's row now");
                }
                other => other?,
            }
        }
        Ok(session)
    }

    /// Removes a session; the agent goes offline when its last agent session leaves.
    pub fn unregister(self: &Arc<Self>, agent: &str, session_id: u64) {
        let now = now_ms();
        let row = {
            let mut d = self.directory.lock();
            let Some(entry) = d.get_mut(agent) else {
                return;
            };
            let was_online = entry.online();
            entry.sessions.retain(|s| s.id != session_id);
            if !was_online || entry.online() {
                return;
            }
            entry.connected_since = None;
            entry.row.last_seen = Some(now);
            entry.row.clone()
        };
        self.presence_changed();
        let origin = self.node_id.clone();
        let store = self.store.clone();
        self.tracker.spawn(async move {
            if let Err(e) = store
                .write(move |c| queries::upsert_agent(c, &row, now, Some(&origin)))
                .await
                && crate::store::fault::fault_in(&e).is_none()
            {
                tracing::warn!(error = %e, "could not record last seen");
            }
        });
    }

    /// Presence of every known agent (or of one).
    pub fn presence(&self, filter: Option<&str>) -> Result<Vec<PresenceEntry>> {
        self.directory.lock().presence(filter)
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
            let mut d = self.directory.lock();
            let a = d.agent_mut(agent)?;
            a.row.status = status;
            a.row.status_text = text;
            let row = a.row.clone();
            let entry = d.get(agent).map(|a| d.entry(a));
            (row, entry)
        };
        self.presence_changed();
        let entry = entry.ok_or_else(|| {
            Error::refused(crate::protocol::ErrorCode::Internal, "agent vanished")
        })?;
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
        let mut d = self.directory.lock();
        d.set_subscription(topic, agent, on);
        Ok(d.topics_of(agent))
    }

    /// Registers an agent name without a connection (a token was issued for it, or a command
    /// line sent as it), so that messages to it are accepted and queued before it connects.
    pub async fn ensure_agent(&self, name: &str) -> Result<()> {
        let now = now_ms();
        let row = {
            let mut d = self.directory.lock();
            if d.get(name).is_some() {
                return Ok(());
            }
            let row = self.new_row(name);
            d.insert(Agent::offline(row.clone()));
            row
        };
        let origin = self.node_id.clone();
        self.store
            .write(move |c| queries::introduce_agent(c, &row, now, Some(&origin)))
            .await
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
        let d = self.directory.lock();
        d.all()
            .filter(|a| a.online())
            .map(|a| RemoteAgent {
                name: a.row.name.clone(),
                connected_since: a.connected_since.unwrap_or_default(),
            })
            .collect()
    }

    /// A peer's presence snapshot, as mesh link `link` received it. Link ids increase with
    /// every link the mesh makes live, so a report from a link that has ended (or from one
    /// older than the link that reported last) is ignored: a replaced link that was still
    /// reading cannot bring back presence for a peer nobody is linked to. Older
    /// (incarnation, version) pairs are ignored as well.
    pub fn remote_presence(
        &self,
        node: &str,
        link: u64,
        incarnation: u64,
        version: u64,
        agents: Vec<RemoteAgent>,
    ) {
        let mut d = self.directory.lock();
        if d.gone.get(node).is_some_and(|&gone| link <= gone) {
            return;
        }
        if let Some(old) = d.remote.get(node)
            && (old.link > link || (old.incarnation, old.version) >= (incarnation, version))
        {
            return;
        }
        d.remote.insert(
            node.to_owned(),
            RemoteNode {
                link,
                incarnation,
                version,
                agents: agents
                    .into_iter()
                    .map(|a| (super::directory::fold(&a.name), a))
                    .collect(),
            },
        );
    }

    /// Mesh link `link` to a peer, its live one, ended: the peer's agents are no longer known
    /// to be online anywhere, and that link's (and older links') late reports are ignored. A
    /// newer link's report, which may arrive before this call, stays.
    pub fn peer_gone(&self, node: &str, link: u64) {
        let mut d = self.directory.lock();
        let gone = d.gone.entry(node.to_owned()).or_default();
        *gone = (*gone).max(link);
        if d.remote.get(node).is_some_and(|r| r.link <= link) {
            d.remote.remove(node);
        }
    }

    /// Takes in what a peer's committed events changed in the directory and subscriptions.
    /// (Their messages were pushed already, by [`Router::push_remote`].)
    pub fn apply_remote(self: &Arc<Self>, applied: Applied) {
        let mut d = self.directory.lock();
        for row in applied.agents {
            match d.get_mut(&row.name) {
                // Where the agent is online here, this node's view of it wins.
                Some(a) if a.online() => {
                    a.row.status = row.status;
                    a.row.status_text = row.status_text;
                }
                // The spelling this node has stays: a name is one name in any case.
                Some(a) => {
                    a.row = AgentRow {
                        name: std::mem::take(&mut a.row.name),
                        ..row
                    }
                }
                None => d.insert(Agent::offline(row)),
            }
        }
        for (topic, agent, on) in applied.subscriptions {
            d.set_subscription(&topic, &agent, on);
        }
        for name in applied.forgotten {
            match d.get(&name) {
                // A partition hid that the agent is here: it stays, and its row comes back
                // everywhere (stamped after the forget).
                Some(a) if !a.sessions.is_empty() => {
                    let router = self.clone();
                    self.tracker.spawn(async move {
                        if let Err(e) = router.keep_if_back(&name).await {
                            tracing::warn!(error = %e, "could not keep a forgotten agent that is connected");
                        }
                    });
                }
                _ => {
                    d.remove(&name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn router(dir: &std::path::Path) -> Router {
        let store = crate::store::Store::open(&dir.join("db"), Default::default()).unwrap();
        let limits = crate::config::Limits::default();
        let tracker = tokio_util::task::TaskTracker::new();
        Router::load("me".into(), store, limits, "s".into(), tracker)
            .await
            .unwrap()
    }

    fn agents(names: &[&str]) -> Vec<RemoteAgent> {
        names
            .iter()
            .map(|n| RemoteAgent {
                name: (*n).into(),
                connected_since: 1,
            })
            .collect()
    }

    fn online(r: &Router, name: &str) -> bool {
        r.directory.lock().remote_of(name).is_some()
    }

    #[tokio::test]
    async fn a_link_that_ended_cannot_bring_back_presence() {
        let dir = tempfile::tempdir().unwrap();
        let r = router(dir.path()).await;
        // Link 1 is live and reports; link 2 replaces it, then ends.
        r.remote_presence("b", 1, 1, 1, agents(&["bob"]));
        r.remote_presence("b", 2, 1, 2, agents(&["bob"]));
        r.peer_gone("b", 2);
        assert!(!online(&r, "bob"));
        // Link 1 was still reading: its late report is void.
        r.remote_presence("b", 1, 1, 3, agents(&["bob"]));
        assert!(!online(&r, "bob"));
        // A newer link reports again.
        r.remote_presence("b", 3, 1, 4, agents(&["bob"]));
        assert!(online(&r, "bob"));
    }

    #[tokio::test]
    async fn a_late_peer_gone_leaves_a_newer_links_presence() {
        let dir = tempfile::tempdir().unwrap();
        let r = router(dir.path()).await;
        r.remote_presence("b", 1, 1, 1, agents(&["bob"]));
        // Link 2 took over and reported before link 1's end reached the router.
        r.remote_presence("b", 2, 1, 2, agents(&["bob"]));
        r.peer_gone("b", 1);
        assert!(online(&r, "bob"));
        // An older link's report after a newer one's is ignored, whatever its version.
        r.remote_presence("b", 1, 1, 9, agents(&[]));
        assert!(online(&r, "bob"));
    }
}
