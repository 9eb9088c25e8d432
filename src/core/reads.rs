//! Requests that go to the store and back: the inbox, read marks, threads, search and tokens.
//! Each checks its arguments, then runs one store job (a read, or a write where it changes
//! something). Sessions never touch the store themselves.

use super::Router;
use crate::auth;
use crate::error::{Error, Result};
use crate::message::{Message, now_ms, validate_name};
use crate::protocol::{
    ErrorCode, InboxRequest, InboxResult, MarkReadRequest, SearchRequest, TokenAction, TokenResult,
};
use crate::store::{InboxQuery, queries};

/// Unread messages pushed to a session right after `welcome`.
const REPLAY_LIMIT: u32 = 1000;
/// Ids one `mark_read` may name.
const MARK_MAX: usize = 10_000;

fn check_limit(limit: u32) -> Result<()> {
    if (1..=200).contains(&limit) {
        Ok(())
    } else {
        Err(Error::Invalid("limit: must be between 1 and 200".into()))
    }
}

fn check_optional_name(what: &str, name: Option<&str>) -> Result<()> {
    match name {
        Some(n) => validate_name(n).map_err(|e| Error::Invalid(format!("{what}: {e}"))),
        None => Ok(()),
    }
}

impl Router {
    /// The unread mail a session gets pushed as it opens (oldest first, bounded).
    pub async fn replay(&self, agent: &str) -> Result<Vec<Message>> {
        let a = agent.to_owned();
        let q = InboxQuery {
            unread_only: true,
            limit: REPLAY_LIMIT,
            ..Default::default()
        };
        let (messages, _) = self
            .store
            .read(move |c| queries::inbox(c, &a, &q, now_ms(), None))
            .await?;
        Ok(messages)
    }

    /// Reads `agent`'s inbox; marks what it returns read only when asked to.
    pub async fn inbox(&self, agent: &str, q: InboxRequest) -> Result<InboxResult> {
        check_limit(q.limit)?;
        check_optional_name("from", q.from.as_deref())?;
        let topic = q.topic.map(|t| t.trim_start_matches('#').to_owned());
        check_optional_name("topic", topic.as_deref())?;
        let from = q
            .from
            .map(|f| self.directory.lock().spelling(&f).unwrap_or(f));
        let query = InboxQuery {
            unread_only: q.unread_only,
            limit: q.limit,
            from,
            topic,
            mark_read: q.mark_read,
        };
        let (agent, origin, now) = (agent.to_owned(), self.node_id.clone(), now_ms());
        let job =
            move |c: &crate::store::Tx<'_>| queries::inbox(c, &agent, &query, now, Some(&origin));
        let (messages, unread_remaining) = if q.mark_read {
            self.store.write(job).await?
        } else {
            self.store.read(job).await?
        };
        Ok(InboxResult {
            messages,
            unread_remaining,
        })
    }

    /// Marks messages of `agent`'s inbox read; returns how many changed.
    pub async fn mark_read(&self, agent: &str, m: MarkReadRequest) -> Result<u32> {
        if m.ids.is_empty() && !m.all {
            return Err(Error::Invalid(
                "ids: give a list of message ids, or all: true".into(),
            ));
        }
        if m.ids.len() > MARK_MAX {
            return Err(Error::Invalid(format!("ids: at most {MARK_MAX} per call")));
        }
        let (agent, origin, now) = (agent.to_owned(), self.node_id.clone(), now_ms());
        let (ids, all) = (m.ids, m.all);
        self.store
            .write(move |c| queries::mark_read(c, &agent, &ids, all, now, Some(&origin)))
            .await
    }

    /// The whole thread of message `id`, as far as `agent` may read it.
    pub async fn thread(&self, agent: &str, id: String) -> Result<Vec<Message>> {
        let agent = agent.to_owned();
        self.store
            .read(move |c| queries::thread(c, &agent, &id))
            .await
    }

    /// Full-text search over what `agent` may read.
    pub async fn search(&self, agent: &str, s: SearchRequest) -> Result<Vec<Message>> {
        check_limit(s.limit)?;
        let (fts, limit, agent) = (queries::check_search(&s.query)?, s.limit, agent.to_owned());
        // First index (on the writer, after every write queued before this search, the
        // sender's own included) what the periodic run has not; then look on the reader
        // thread, so an expensive search never holds up deliveries.
        // On a disk that takes no writes, the index cannot grow: search what it holds.
        match self.store.write(|c| queries::index_new_messages(c)).await {
            Err(e) if crate::store::fault::fault_in(&e).is_none() => return Err(e),
            _ => {}
        }
        self.store
            .read_committed(move |c| queries::search(c, &agent, &fts, limit))
            .await
    }

    /// Issues, revokes or lists tokens. `admin`: the connection holds the local secret;
    /// `operator`: issue an operator token (it also logs in to the web dashboard).
    pub async fn token(
        &self,
        admin: bool,
        action: TokenAction,
        name: Option<String>,
        operator: bool,
    ) -> Result<TokenResult> {
        if !admin {
            return Err(Error::refused(
                ErrorCode::Forbidden,
                "token management needs the local secret",
            ));
        }
        let need_name = || {
            let n = name
                .clone()
                .ok_or_else(|| Error::Invalid("name: required for issue and revoke".into()))?;
            validate_name(&n).map_err(|e| Error::Invalid(format!("name: agent name {e}")))?;
            // A token for `Bob` is the token of `bob`.
            Ok::<_, Error>(self.directory.lock().spelling(&n).unwrap_or(n))
        };
        let origin = self.node_id.clone();
        match action {
            TokenAction::Issue => {
                let n = need_name()?;
                let token = if operator {
                    auth::new_operator_token()
                } else {
                    auth::new_token()
                };
                let (hash, n2, now) = (auth::hash_token(&token), n.clone(), now_ms());
                self.store
                    .write(move |c| queries::put_token(c, &n2, &hash, now, Some(&origin)))
                    .await?;
                self.ensure_agent(&n).await?;
                Ok(TokenResult {
                    token: Some(token),
                    names: vec![n],
                })
            }
            TokenAction::Revoke => {
                let n = need_name()?;
                let n2 = n.clone();
                let revoked = self
                    .store
                    .write(move |c| queries::delete_token(c, &n2, Some(&origin)))
                    .await?;
                if !revoked {
                    return Err(Error::Invalid(format!("name: '{n}' has no token")));
                }
                Ok(TokenResult {
                    token: None,
                    names: vec![n],
                })
            }
            TokenAction::List => Ok(TokenResult {
                token: None,
                names: self
                    .store
                    .read(|c| queries::tokens(c))
                    .await?
                    .into_iter()
                    .map(|t| t.name)
                    .collect(),
            }),
        }
    }
}
