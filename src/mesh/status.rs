//! What `/health` shows of each link and dialer. States and origins are enums, so code
//! matches on them instead of on strings; they serialize to the words `/health` has always
//! shown. Entries are keyed by a string whose order is the order `/health` lists them in.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::message::{now_ms, rfc3339};

/// Where a link or dialer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Dialing, or handshaking.
    Connecting,
    /// Linked.
    Up,
    /// The last attempt failed or the link ended; see `error`.
    Down,
    /// The peer is linked by another connection: this dialer has nothing to do.
    Standby,
}

/// How a link came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkOrigin {
    /// A `--peer` URL.
    Configured,
    /// A node peers told us about.
    Discovered,
    /// The peer dialed.
    Accepted,
}

/// A link's state, for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// Peer node id, once known.
    pub node: Option<String>,
    /// How the link came to be.
    pub origin: LinkOrigin,
    /// The URL dialed (dialed links only).
    pub url: Option<String>,
    /// Where it stands.
    pub state: LinkState,
    /// Since when (RFC 3339).
    pub since: String,
    /// Last error, if any.
    pub error: Option<String>,
    /// Our log entries the peer has confirmed.
    pub acked: u64,
}

impl LinkStatus {
    /// Moves to `state` now, with `error`.
    pub fn enter(&mut self, state: LinkState, error: Option<String>) {
        self.state = state;
        self.error = error;
        self.since = rfc3339(now_ms());
    }
}

/// Every link's and dialer's status.
#[derive(Default)]
pub struct Statuses(Mutex<BTreeMap<String, LinkStatus>>);

impl Statuses {
    /// Changes the entry `key`, creating it (connecting, with `origin`) the first time.
    pub fn set(&self, key: &str, origin: LinkOrigin, f: impl FnOnce(&mut LinkStatus)) {
        let mut links = self.0.lock();
        let entry = links.entry(key.to_owned()).or_insert_with(|| LinkStatus {
            node: None,
            origin,
            url: None,
            state: LinkState::Connecting,
            since: rfc3339(now_ms()),
            error: None,
            acked: 0,
        });
        f(entry);
    }

    /// Changes the entry `key` if it exists.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut LinkStatus)) {
        if let Some(s) = self.0.lock().get_mut(key) {
            f(s);
        }
    }

    /// Drops the entry `key`.
    pub fn remove(&self, key: &str) {
        self.0.lock().remove(key);
    }

    /// All entries, in key order.
    pub fn all(&self) -> Vec<LinkStatus> {
        self.0.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_origins_serialize_to_the_words_health_shows() {
        let words = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let states = [
            (LinkState::Connecting, "connecting"),
            (LinkState::Up, "up"),
            (LinkState::Down, "down"),
            (LinkState::Standby, "standby"),
        ];
        for (s, w) in states {
            assert_eq!(words(serde_json::to_value(s).unwrap()), w);
        }
        let origins = [
            (LinkOrigin::Configured, "configured"),
            (LinkOrigin::Discovered, "discovered"),
            (LinkOrigin::Accepted, "accepted"),
        ];
        for (o, w) in origins {
            assert_eq!(words(serde_json::to_value(o).unwrap()), w);
        }
    }

    #[test]
    fn an_entry_keeps_the_origin_it_was_created_with() {
        let s = Statuses::default();
        s.set("dial ws://a", LinkOrigin::Configured, |_| {});
        s.set("dial ws://a", LinkOrigin::Accepted, |l| l.acked = 3);
        let all = s.all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].origin, LinkOrigin::Configured);
        assert_eq!(all[0].acked, 3);
        assert_eq!(all[0].state, LinkState::Connecting);
    }
}
