//! What a [`super::Client`] is told before it connects, and what it reports while it runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::protocol::Role;

/// A hook run when the node cannot be reached, before the next attempt.
pub type UnreachableHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How to reach a node and who to be.
#[derive(Clone)]
pub struct ClientOptions {
    /// `ws://host:port` or `wss://host:port` (the `/ws` path is added when missing).
    pub url: String,
    /// The agent this client acts as.
    pub agent: String,
    /// The local secret or an agent token.
    pub token: String,
    /// What the connection is for.
    pub role: Role,
    /// How long a request may wait for its answer, reconnecting included.
    pub request_timeout: Duration,
    /// How long [`super::Client::connect`] keeps trying before it gives up.
    pub connect_timeout: Duration,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
    /// Reconnect after the connection drops (false for one-shot commands).
    pub reconnect: bool,
    /// Runs when the node cannot be reached (the embedded default hosts a node here).
    pub on_unreachable: Option<UnreachableHook>,
    /// What a `wss://` node's certificate is verified against (`None`: the system roots).
    pub tls: Option<crate::tls::ClientTls>,
    /// Send the token over plain `ws://` to a host that is not loopback (refused otherwise).
    pub allow_plaintext: bool,
}

impl ClientOptions {
    /// Options with the defaults: agent role, reconnecting, 10 s requests.
    pub fn new(url: impl Into<String>, agent: impl Into<String>, token: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            agent: agent.into(),
            token: token.into(),
            role: Role::Agent,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_millis(500),
            reconnect: true,
            on_unreachable: None,
            tls: None,
            allow_plaintext: false,
        }
    }

    /// 100 ms, 200 ms, 400 ms, ... up to `max_backoff`, each ±50 % (never above the cap), so
    /// that many clients of a restarted node do not reconnect in lockstep.
    pub(super) fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(100), self.max_backoff).cap_jittered()
    }
}

/// Whether the client is connected now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Connected to the node with this id.
    Connected(String),
    /// Not connected; the text says why.
    Disconnected(String),
}
