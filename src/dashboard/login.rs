//! Getting into the dashboard: a one-time login code, minted for a holder of the local secret
//! or of an operator token, traded once for a session cookie.
//!
//! The code travels in the URL's fragment (`/#code=…`), which browsers never send to a server
//! nor put in a `Referer`; the page posts it, gets the cookie, and replaces the URL, so after
//! login no secret is in the address bar or the history. Codes and sessions live in memory
//! only (hashed, like tokens): a restarted node forgets them, and the person runs
//! `switchboard dashboard` again. A session made with an operator token lives only as long as
//! the token: every check asks the store whether the token is still the name's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::core::directory::fold;
use crate::error::{Error, Result};
use crate::message::validate_name;
use crate::protocol::ErrorCode;
use crate::store::{Store, queries};

/// The name a dashboard acts as when none is asked for.
pub const DEFAULT_NAME: &str = "human";
/// How long a login code is good for when the command asks for no other time.
pub const CODE_TTL: Duration = Duration::from_secs(120);
/// The longest a login code may be asked to live.
pub const CODE_TTL_MAX: Duration = Duration::from_secs(600);
/// How long a session lasts (from login; logging in again makes a new one).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Codes waiting to be used, at most: minting more drops the oldest.
const MAX_CODES: usize = 64;
/// Sessions at most: a new login past it ends the oldest.
const MAX_SESSIONS: usize = 256;

/// The first frame of a `/ws` connection that is about the dashboard, not a client session.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum First {
    /// A logged-in page opens its live connection; the cookie came with the upgrade.
    Dashboard {
        /// The session's CSRF token, as `/dashboard/session` gave it.
        csrf: String,
    },
    /// `switchboard dashboard` asks for a login code.
    DashboardLogin {
        /// The local secret or an operator token.
        token: String,
        /// The name to act as (an operator token's own name if left out, else `human`).
        #[serde(default)]
        agent: Option<String>,
        /// How long the code is good for (at most 600 s).
        #[serde(default)]
        ttl_seconds: Option<u64>,
    },
}

/// The answer to `dashboard_login`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CodeAnswer {
    /// Always `dashboard_code`.
    pub op: String,
    /// The one-time code.
    pub code: String,
    /// The name the dashboard will act as.
    pub agent: String,
    /// Seconds until the code expires.
    pub expires_in_seconds: u64,
}

/// What let a person in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    /// The data dir's local secret: the machine's own user.
    LocalSecret,
    /// An operator token, by its hash, bound to the session's name.
    Operator(String),
}

struct Pending {
    name: String,
    credential: Credential,
    expires: Instant,
}

/// A logged-in page.
#[derive(Debug, Clone)]
pub struct Session {
    /// The name it acts as.
    pub name: String,
    /// Must accompany every write (header `x-csrf-token`, or the live connection's first frame).
    pub csrf: String,
    /// Cancelled when the session ends (logout, expiry, revoked token), which closes its pages'
    /// live connections.
    pub ended: CancellationToken,
    credential: Credential,
    expires: Instant,
    created: Instant,
}

/// The dashboard's state in a node: pending codes and sessions.
pub struct Dashboard {
    secret: String,
    store: Store,
    cookie: String,
    secure: bool,
    codes: Mutex<HashMap<String, Pending>>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Dashboard {
    /// The dashboard of a node on `port`. Cookies are not kept apart by port, so the cookie's
    /// name carries it: two nodes on one host do not log each other out.
    pub fn new(secret: String, store: Store, port: u16, tls: bool) -> Dashboard {
        Dashboard {
            secret,
            store,
            cookie: format!("switchboard_{port}"),
            secure: tls,
            codes: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The session cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.cookie
    }

    /// The `Set-Cookie` value for a new session (or, with `None`, one that clears it).
    pub fn set_cookie(&self, id: Option<&str>) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        match id {
            Some(id) => format!(
                "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                self.cookie,
                SESSION_TTL.as_secs()
            ),
            None => format!(
                "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
                self.cookie
            ),
        }
    }

    /// Mints a code for whoever holds `token`, acting as `agent`: the local secret may name
    /// anyone (`human` by default); an operator token only its own name.
    pub async fn mint(
        &self,
        token: &str,
        agent: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<CodeAnswer> {
        if let Some(a) = agent {
            validate_name(a).map_err(|e| Error::Invalid(format!("agent: agent name {e}")))?;
        }
        let ttl = ttl.unwrap_or(CODE_TTL);
        if ttl.is_zero() || ttl > CODE_TTL_MAX {
            return Err(Error::Invalid(format!(
                "ttl_seconds: must be between 1 and {}",
                CODE_TTL_MAX.as_secs()
            )));
        }
        let (name, credential) = if auth::constant_time_eq(token, &self.secret) {
            let name = agent.unwrap_or(DEFAULT_NAME).to_owned();
            (name, Credential::LocalSecret)
        } else {
            let hash = auth::hash_token(token);
            let lookup = hash.clone();
            let owner = self
                .store
                .read_committed(move |c| queries::token_owner(c, &lookup))
                .await?;
            match owner {
                Some(owner)
                    if token.starts_with(auth::OPERATOR_PREFIX)
                        && agent.is_none_or(|a| fold(a) == fold(&owner)) =>
                {
                    (owner, Credential::Operator(hash))
                }
                Some(owner) if token.starts_with(auth::OPERATOR_PREFIX) => {
                    return Err(Error::refused(
                        ErrorCode::Unauthorized,
                        format!(
                            "this operator token is {owner}'s: it logs in as {owner} only (leave out --as)"
                        ),
                    ));
                }
                _ => {
                    return Err(Error::refused(
                        ErrorCode::Unauthorized,
                        "the dashboard needs the local secret or an operator token \
                         (`switchboard token issue --operator NAME`); an agent token is not one",
                    ));
                }
            }
        };
        let code = auth::random_hex();
        let now = Instant::now();
        let mut codes = self.codes.lock();
        codes.retain(|_, p| p.expires > now);
        if codes.len() >= MAX_CODES
            && let Some(oldest) = codes
                .iter()
                .min_by_key(|(_, p)| p.expires)
                .map(|(k, _)| k.clone())
        {
            codes.remove(&oldest);
        }
        codes.insert(
            auth::hash_token(&code),
            Pending {
                name: name.clone(),
                credential,
                expires: now + ttl,
            },
        );
        Ok(CodeAnswer {
            op: "dashboard_code".into(),
            code,
            agent: name,
            expires_in_seconds: ttl.as_secs(),
        })
    }

    /// Trades a code for a session: the session id (for the cookie) and the session. A code
    /// works once, and only before it expires; a wrong one changes nothing.
    pub fn redeem(&self, code: &str) -> Option<(String, Session)> {
        let pending = self.codes.lock().remove(&auth::hash_token(code))?;
        let now = Instant::now();
        if pending.expires <= now {
            return None;
        }
        let id = auth::random_hex();
        let session = Session {
            name: pending.name,
            csrf: auth::random_hex(),
            ended: CancellationToken::new(),
            credential: pending.credential,
            expires: now + SESSION_TTL,
            created: now,
        };
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| s.expires > now && !s.ended.is_cancelled());
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            && let Some(s) = sessions.remove(&oldest)
        {
            s.ended.cancel();
        }
        sessions.insert(auth::hash_token(&id), session.clone());
        Some((id, session))
    }

    /// The session a cookie value stands for, if it is still good: not logged out, not
    /// expired, and — for an operator — its token still the name's.
    pub async fn session(&self, id: &str) -> Option<Session> {
        let key = auth::hash_token(id);
        let session = self.sessions.lock().get(&key).cloned()?;
        if self.still_good(&session).await {
            Some(session)
        } else {
            self.end(&key);
            None
        }
    }

    /// Whether a session may go on (checked again and again by its live connections).
    pub async fn still_good(&self, s: &Session) -> bool {
        if s.ended.is_cancelled() || s.expires <= Instant::now() {
            return false;
        }
        match &s.credential {
            Credential::LocalSecret => true,
            Credential::Operator(hash) => {
                let hash = hash.clone();
                let owner = self
                    .store
                    .read_committed(move |c| queries::token_owner(c, &hash))
                    .await;
                matches!(owner, Ok(Some(o)) if fold(&o) == fold(&s.name))
            }
        }
    }

    /// Ends the session of a cookie value; false if there was none.
    pub fn logout(&self, id: &str) -> bool {
        self.end(&auth::hash_token(id))
    }

    fn end(&self, key: &str) -> bool {
        match self.sessions.lock().remove(key) {
            Some(s) => {
                s.ended.cancel();
                true
            }
            None => false,
        }
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn dashboard() -> (tempfile::TempDir, Dashboard) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), crate::store::SyncMode::Normal).unwrap();
        (dir, Dashboard::new("s3cret".into(), store, 8765, false))
    }

    #[tokio::test]
    async fn a_code_works_once_and_only_with_a_good_credential() {
        let (_dir, d) = dashboard().await;
        let a = d.mint("s3cret", None, None).await.unwrap();
        assert_eq!(a.agent, DEFAULT_NAME);
        assert!(d.redeem("not-the-code").is_none());
        let (id, s) = d.redeem(&a.code).expect("the code logs in once");
        assert_eq!(s.name, "human");
        assert!(d.redeem(&a.code).is_none(), "a used code is refused");
        assert!(d.session(&id).await.is_some());
        assert!(d.logout(&id));
        assert!(d.session(&id).await.is_none(), "logout ends the session");
        assert!(s.ended.is_cancelled());
        let e = d.mint("wrong", None, None).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unauthorized);
        let e = d
            .mint("s3cret", None, Some(Duration::from_secs(601)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
    }

    #[tokio::test]
    async fn an_expired_code_is_refused() {
        let (_dir, d) = dashboard().await;
        let a = d.mint("s3cret", Some("ann"), None).await.unwrap();
        d.codes
            .lock()
            .values_mut()
            .for_each(|p| p.expires = Instant::now());
        assert!(d.redeem(&a.code).is_none());
    }

    #[test]
    fn cookies_are_read_by_name() {
        let h = "a=1; switchboard_8765=abc ; b=2";
        assert_eq!(cookie_value(h, "switchboard_8765"), Some("abc"));
        assert_eq!(cookie_value(h, "switchboard_1"), None);
    }
}
