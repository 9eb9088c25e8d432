//! Node-id conflicts this node refused: a second instance (data dir) claiming a node id that
//! another instance holds. Kept in memory for `/health`, which shows each while it is recent
//! (the claimant keeps dialing, so a live conflict stays listed), because the only other sign
//! is a log line an operator may never read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// How long a conflict stays listed after it was last seen.
const SHOWN_FOR: Duration = Duration::from_secs(600);

/// One conflict, as `/health` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The node id claimed twice.
    pub node: String,
    /// The instance that holds it.
    pub holder: String,
    /// The instance refused for claiming it.
    pub claimant: String,
    /// When it was first seen, ms since the epoch.
    pub since: i64,
}

/// The conflicts seen, by (node, claimant).
#[derive(Default)]
pub(super) struct Conflicts(Mutex<HashMap<(String, String), (Conflict, Instant)>>);

impl Conflicts {
    /// Records (or refreshes) a refused claim.
    pub(super) fn record(&self, node: &str, holder: &str, claimant: &str) {
        let mut m = self.0.lock();
        let now = Instant::now();
        m.entry((node.to_owned(), claimant.to_owned()))
            .and_modify(|(c, seen)| {
                c.holder = holder.to_owned();
                *seen = now;
            })
            .or_insert_with(|| {
                let c = Conflict {
                    node: node.to_owned(),
                    holder: holder.to_owned(),
                    claimant: claimant.to_owned(),
                    since: crate::message::now_ms(),
                };
                (c, now)
            });
    }

    /// Drops every conflict over `node` (an operator forgot it); true if there was one.
    pub(super) fn clear(&self, node: &str) -> bool {
        let mut m = self.0.lock();
        let before = m.len();
        m.retain(|(n, _), _| n != node);
        m.len() != before
    }

    /// The conflicts seen within [`SHOWN_FOR`], oldest first; older ones are forgotten.
    pub(super) fn recent(&self) -> Vec<Conflict> {
        let mut m = self.0.lock();
        m.retain(|_, (_, seen)| seen.elapsed() < SHOWN_FOR);
        let mut v: Vec<Conflict> = m.values().map(|(c, _)| c.clone()).collect();
        v.sort_by(|a, b| (a.since, &a.node).cmp(&(b.since, &b.node)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_seen_again_keeps_its_first_time() {
        let c = Conflicts::default();
        c.record("m1", "a", "b");
        let first = c.recent();
        c.record("m1", "a", "b");
        assert_eq!(c.recent(), first);
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].holder.as_str(), first[0].claimant.as_str()),
            ("a", "b")
        );
    }
}
