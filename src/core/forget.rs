//! Forgetting an agent (`switchboard agent forget NAME`): so that presence and "did you mean"
//! stop growing with every name ever used, typically once an agent's token was revoked.
//!
//! Only an agent with no session open anywhere can be forgotten: one that is connected would
//! come straight back. The directory entry goes here first (so no send is accepted for it
//! meanwhile), then the store removes its row, token, subscriptions and inbox and logs the
//! forget for peers (see `store::forget`). A name that connects, is added or gets a token
//! later is a new agent with an empty inbox.

use super::Router;
use super::directory::Agent;
use super::suggest::unknown_agent;
use crate::error::{Error, Result};
use crate::message::{now_ms, validate_name};
use crate::protocol::{ErrorCode, ForgetResult};
use crate::store::queries;

impl Router {
    /// Forgets an agent that has no session anywhere. `admin`: the connection holds the local
    /// secret.
    pub async fn forget(&self, admin: bool, name: &str) -> Result<ForgetResult> {
        if !admin {
            return Err(Error::refused(
                ErrorCode::Forbidden,
                "forgetting an agent needs the local secret",
            ));
        }
        validate_name(name).map_err(|e| Error::Invalid(format!("name: agent name {e}")))?;
        if self.directory.lock().get(name).is_none() {
            return self.forgotten_already(name).await;
        }
        let (agent, topics) = {
            let mut d = self.directory.lock();
            let Some(a) = d.get(name) else {
                return Err(unknown_agent(name, d.names()));
            };
            let stored = a.row.name.clone();
            let at = if !a.sessions.is_empty() {
                Some(self.node_id.clone())
            } else {
                d.remote_of(&stored).map(|(node, _)| node.clone())
            };
            if let Some(node) = at {
                return Err(Error::refused(
                    ErrorCode::AgentOnline,
                    format!(
                        "agent '{stored}' has a session open at node {node}; it can be \
                         forgotten once it has disconnected. Nothing was changed."
                    ),
                ));
            }
            match d.remove(&stored) {
                Some(taken) => taken,
                None => return Err(unknown_agent(name, d.names())),
            }
        };
        let (n, now, origin) = (agent.row.name.clone(), now_ms(), self.node_id.clone());
        let forgot = self
            .store
            .write(move |c| queries::forget_agent(c, &n, now, &origin))
            .await;
        let unread = match forgot {
            // No row: the name was known here but its row had not been written yet.
            Ok(unread) => unread.unwrap_or(0),
            Err(e) => {
                self.restore(agent, topics);
                return Err(e);
            }
        };
        let name = agent.row.name;
        self.keep_if_back(&name).await?;
        Ok(ForgetResult {
            name,
            unread_dropped: unread,
        })
    }

    /// A name the directory does not know: forgotten before (a retry, say), which is success,
    /// or unknown.
    async fn forgotten_already(&self, name: &str) -> Result<ForgetResult> {
        let n = name.to_owned();
        match self
            .store
            .read(move |c| queries::forgotten_name(c, &n))
            .await?
        {
            Some(name) => Ok(ForgetResult {
                name,
                unread_dropped: 0,
            }),
            None => Err(unknown_agent(name, self.directory.lock().names())),
        }
    }

    /// Puts back an entry whose forget failed in the store.
    fn restore(&self, agent: Agent, topics: Vec<String>) {
        let mut d = self.directory.lock();
        for t in &topics {
            d.set_subscription(t, &agent.row.name, true);
        }
        if d.get(&agent.row.name).is_none() {
            d.insert(agent);
        }
    }

    /// A session that registered while the forget was on its way to the store brought the
    /// name back into the directory, and its row may have been written before the forget
    /// removed it: write the row again, after (and stamped after) the forget.
    pub(super) async fn keep_if_back(&self, name: &str) -> Result<()> {
        let Some(row) = self.directory.lock().get(name).map(|a| a.row.clone()) else {
            return Ok(());
        };
        let (now, origin) = (now_ms(), self.node_id.clone());
        self.store
            .write(move |c| queries::upsert_agent(c, &row, now, Some(&origin)))
            .await
    }
}
