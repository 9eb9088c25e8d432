//! Who is linked to whom, and which nodes to look for: the mesh's bookkeeping as plain data.
//! Nothing here spawns, sends, waits or calls the router. Each change returns what the
//! caller must do (cancel a replaced link, start dialers, tell the router a peer is gone), so
//! the caller does it after the lock is released, and the rules — which of two links stays,
//! what a peer's report adds, when a node is forgotten — are tested on their own.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use super::frames::PeerAddr;

/// Nodes this node will look for through its peers' reports (a bound, not a design limit).
pub const DISCOVERY_MAX: usize = 256;
/// Longest URL taken from a peer's report.
pub const URL_MAX: usize = 512;

/// What ranks two links between the same nodes: the peer's incarnation, then (for links made
/// in the same direction) the dialer's sequence number. Both ends see the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order {
    /// The peer's incarnation.
    pub incarnation: u64,
    /// The dialer's sequence number for this dial.
    pub seq: u64,
}

/// Why [`Topology::join`] refused a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The live link comes from a newer incarnation of the peer.
    OlderRun,
    /// The live link is the one both ends keep.
    Duplicate,
}

/// A link [`Topology::join`] made live.
#[derive(Debug)]
pub struct Joined<H> {
    /// The link's id: ids increase with every link made live, so a higher one is newer.
    pub id: u64,
    /// The handle of the live link it replaced: the caller cancels it.
    pub replaced: Option<H>,
}

/// What a dialer looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A configured `--peer` URL; the node behind it is learned at the first handshake.
    Url(String),
    /// A node peers report: dialed at the URLs they give, while nobody links it.
    Node(String),
}

/// What a dialer finds when it looks (see [`Topology::look`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    /// The node is linked by another connection (or, for a reported node, has a configured
    /// dialer of its own): nothing to dial.
    pub linked: bool,
    /// The URL to dial next, if there is one.
    pub url: Option<String>,
    /// Some peer reports the node now (always true for a configured URL).
    pub reported: bool,
    /// The node was dropped (`switchboard mesh forget`) and has not linked or been reported
    /// since: a discovery dialer forgets it now, a configured URL that led to it waits.
    pub dropped: bool,
}

/// What [`Topology::drop_node`] took away.
#[derive(Debug)]
pub struct Dropped<H> {
    /// The live link to the node, if there was one (its id and handle): the caller ends it.
    pub link: Option<(u64, H)>,
    /// A configured `--peer` URL led to the node: its dialer waits from now on.
    pub configured: bool,
    /// The newest link id so far: every link the node had is this old or older.
    pub last_link: u64,
}

/// A node as the topology knows it (see [`Topology::known`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Node id.
    pub node: String,
    /// Linked now.
    pub linked: bool,
    /// Where it is reached: the live link's URL, else the one remembered, else a reported one.
    pub url: Option<String>,
    /// A configured `--peer` URL leads to it.
    pub configured: bool,
    /// Linked peers that report being linked to it.
    pub reported_by: Vec<String>,
    /// It advertises `none`: it cannot be dialed, only dials out.
    pub undialable: bool,
}

/// The one live link to a peer node.
#[derive(Debug)]
struct Live<H> {
    id: u64,
    dialed: bool,
    order: Order,
    /// Where the peer can be reached, as far as this node knows: the URL dialed, or the
    /// peer's address and the port it reports.
    url: Option<String>,
    /// The peer's log key (its instance id): what it is linked to, for its peers' relays.
    key: String,
    handle: H,
}

/// Who is linked to whom. `H` is what the caller keeps per live link (its cancel token and
/// outgoing queue).
#[derive(Debug)]
pub struct Topology<H> {
    /// This node's id: it breaks ties between links dialed in opposite directions.
    me: String,
    live: HashMap<String, Live<H>>,
    /// Nodes that linked peers report being linked to: node → (reporting peer → URL).
    heard: HashMap<String, BTreeMap<String, String>>,
    /// The URL each node was last linked at: a node once linked is dialed again when it
    /// returns, even if the peer that introduced it is gone.
    remembered: HashMap<String, String>,
    /// Nodes behind a configured `--peer` URL: their own dialer handles them.
    configured: HashSet<String>,
    /// Nodes with a discovery dialer running.
    discovering: HashSet<String>,
    /// Nodes dropped by an operator, until they link or are reported again.
    dropped: HashSet<String>,
    /// Nodes that advertise `none`: never dialed, never reported to others.
    undialable: HashSet<String>,
    last_link: u64,
}

impl<H> Topology<H> {
    /// An empty topology of node `me`.
    pub fn new(me: &str) -> Topology<H> {
        Topology {
            me: me.to_owned(),
            live: HashMap::new(),
            heard: HashMap::new(),
            remembered: HashMap::new(),
            configured: HashSet::new(),
            discovering: HashSet::new(),
            dropped: HashSet::new(),
            undialable: HashSet::new(),
            last_link: 0,
        }
    }

    /// Whether link `id` is the live link to `peer`.
    pub fn is_live(&self, peer: &str, id: u64) -> bool {
        self.live.get(peer).is_some_and(|l| l.id == id)
    }

    /// The handle of the live link to `peer`.
    pub fn handle(&self, peer: &str) -> Option<&H> {
        self.live.get(peer).map(|l| &l.handle)
    }

    /// Makes a new authenticated link the live one to `peer`, or refuses it when the live one
    /// should stay. `dialed`: the URL this node dialed, `None` for an accepted link. A link
    /// from a newer incarnation of the peer wins: the older one is dead; one from an older
    /// incarnation is refused. Of two links of the same incarnation made in opposite
    /// directions, both nodes keep the one dialed by the node whose id sorts first, so both
    /// close the same one. Of two made in the same direction, the later dial wins (a redial
    /// after a half-dead link).
    pub fn join(
        &mut self,
        peer: &str,
        dialed: Option<&str>,
        order: Order,
        key: &str,
        handle: H,
    ) -> Result<Joined<H>, Refused> {
        let is_dialed = dialed.is_some();
        if let Some(cur) = self.live.get(peer) {
            if order.incarnation < cur.order.incarnation {
                return Err(Refused::OlderRun);
            }
            if order.incarnation == cur.order.incarnation {
                let keep_current = if cur.dialed != is_dialed {
                    let me_first = self.me.as_str() < peer;
                    cur.dialed == me_first
                } else {
                    order.seq < cur.order.seq
                };
                if keep_current {
                    return Err(Refused::Duplicate);
                }
            }
        }
        let id = self.next_id();
        // A dropped node that links again is back.
        self.dropped.remove(peer);
        let url = dialed.map(str::to_owned);
        if let Some(u) = &url {
            self.remembered.insert(peer.to_owned(), u.clone());
        }
        let live = Live {
            id,
            dialed: is_dialed,
            order,
            url,
            key: key.to_owned(),
            handle,
        };
        let replaced = self.live.insert(peer.to_owned(), live).map(|l| l.handle);
        Ok(Joined { id, replaced })
    }

    /// A new number from the counter of link ids (routes through peers take theirs from it
    /// too, so the router can order both).
    pub fn next_id(&mut self) -> u64 {
        self.last_link += 1;
        self.last_link
    }

    /// Whether `node` is linked now.
    pub fn is_linked(&self, node: &str) -> bool {
        self.live.contains_key(node)
    }

    /// The nodes linked now.
    pub fn linked_nodes(&self) -> HashSet<String> {
        self.live.keys().cloned().collect()
    }

    /// The log keys of every live link (what a peer need not relay to this node).
    pub fn linked_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.live.values().map(|l| l.key.clone()).collect();
        keys.sort();
        keys
    }

    /// Link `id` to `peer` ended. True if it was the live one: the peer is unlinked now, and
    /// what it reported is void.
    pub fn leave(&mut self, peer: &str, id: u64) -> bool {
        if !self.is_live(peer, id) {
            return false;
        }
        self.live.remove(peer);
        for by in self.heard.values_mut() {
            by.remove(peer);
        }
        true
    }

    /// A `peers` frame that link `id` to `peer` brought: the port the peer listens on and
    /// whether it speaks TLS there (where it can be reached, when it dialed from
    /// `accepted_from`), what it advertises (a URL to dial it at, or `none`), and the nodes
    /// it is linked to.
    /// Returns the nodes first heard of, which need a dialer; `None` if the link is not the
    /// live one (a replaced link's last report says nothing the live link will not say).
    pub fn heard_from(
        &mut self,
        peer: &str,
        id: u64,
        accepted_from: Option<IpAddr>,
        (port, tls): (u16, bool),
        advertise: Option<&str>,
        nodes: Vec<PeerAddr>,
    ) -> Option<Vec<String>> {
        if !self.is_live(peer, id) {
            return None;
        }
        let mut fresh = Vec::new();
        let advertised = advertise.filter(|a| {
            a.eq_ignore_ascii_case("none")
                || (a.len() <= URL_MAX && crate::config::validate_ws_url(a).is_ok())
        });
        let url = match advertised {
            Some(a) if a.eq_ignore_ascii_case("none") => None,
            Some(a) => Some(a.to_owned()),
            None => accepted_from.map(|ip| {
                let scheme = if tls { "wss" } else { "ws" };
                format!("{scheme}://{}", SocketAddr::new(ip.to_canonical(), port))
            }),
        };
        if advertised.is_some_and(|a| a.eq_ignore_ascii_case("none")) {
            // Never dialed: not told to others, not looked for when its link ends (it dials
            // again itself).
            self.undialable.insert(peer.to_owned());
            self.heard.remove(peer);
            if let Some(live) = self.live.get_mut(peer) {
                live.url = None;
            }
            if accepted_from.is_some() {
                self.remembered.remove(peer);
            }
        } else if let Some(url) = url
            && let Some(live) = self.live.get_mut(peer)
        {
            self.undialable.remove(peer);
            // What others are told: the advertised URL, else the one dialed or seen.
            live.url = Some(url.clone());
            if accepted_from.is_some() {
                self.remembered.insert(peer.to_owned(), url);
                if self.discover(peer) {
                    fresh.push(peer.to_owned());
                }
            }
        }
        for by in self.heard.values_mut() {
            by.remove(peer);
        }
        for n in nodes {
            if n.node == self.me
                || n.node == peer
                || self.undialable.contains(&n.node)
                || crate::message::validate_name(&n.node).is_err()
                || n.url.len() > URL_MAX
                || crate::config::validate_ws_url(&n.url).is_err()
            {
                continue;
            }
            if self.discover(&n.node) {
                fresh.push(n.node.clone());
            } else if !self.discovering.contains(&n.node) {
                continue; // past DISCOVERY_MAX
            }
            // Reported by a linked peer: a dropped node is alive after all.
            self.dropped.remove(&n.node);
            self.heard
                .entry(n.node)
                .or_default()
                .insert(peer.to_owned(), n.url);
        }
        Some(fresh)
    }

    /// Notes a node to look for; true if it needs a dialer.
    fn discover(&mut self, node: &str) -> bool {
        if self.discovering.contains(node) || self.discovering.len() >= DISCOVERY_MAX {
            return false;
        }
        self.discovering.insert(node.to_owned())
    }

    /// `url` answered as another node than `node`: stop dialing `node` there.
    pub fn forget_url(&mut self, node: &str, url: &str) {
        if self.remembered.get(node).is_some_and(|u| u == url) {
            self.remembered.remove(node);
        }
        if let Some(by) = self.heard.get_mut(node) {
            by.retain(|_, u| u != url);
        }
    }

    /// Stops looking for `node`, unless it is linked, configured or reported again — and
    /// unless, with `hour_passed` false, it is no longer dropped either (it linked in between).
    /// True if it was forgotten: its dialer ends.
    pub fn forget_node(&mut self, node: &str, hour_passed: bool) -> bool {
        if self.live.contains_key(node)
            || self.configured.contains(node)
            || self.heard.get(node).is_some_and(|by| !by.is_empty())
            || !(hour_passed || self.dropped.contains(node))
        {
            return false;
        }
        self.remembered.remove(node);
        self.heard.remove(node);
        self.discovering.remove(node);
        self.dropped.remove(node);
        true
    }

    /// Drops `node` now, as an operator asks (`switchboard mesh forget`): its live link, what
    /// is remembered and reported of it, what it reported, and its configured-URL mark. Its
    /// dialers see it on their next look ([`Look::dropped`]). It is back as soon as it links
    /// again or a linked peer reports it. `None` if the node is not known at all.
    pub fn drop_node(&mut self, node: &str) -> Option<Dropped<H>> {
        let known = self.live.contains_key(node)
            || self.remembered.contains_key(node)
            || self.heard.get(node).is_some_and(|by| !by.is_empty())
            || self.configured.contains(node)
            || self.discovering.contains(node);
        if !known {
            return None;
        }
        let link = self.live.remove(node).map(|l| (l.id, l.handle));
        let configured = self.configured.remove(node);
        self.remembered.remove(node);
        self.heard.remove(node);
        for by in self.heard.values_mut() {
            by.remove(node);
        }
        self.dropped.insert(node.to_owned());
        Some(Dropped {
            link,
            configured,
            last_link: self.last_link,
        })
    }

    /// Whether `node` was dropped and has not come back.
    pub fn is_dropped(&self, node: &str) -> bool {
        self.dropped.contains(node)
    }

    /// The nodes known: linked, remembered, reported by a linked peer, or configured.
    fn known_ids(&self) -> BTreeSet<&String> {
        self.live
            .keys()
            .chain(self.remembered.keys())
            .chain(
                self.heard
                    .iter()
                    .filter(|(_, by)| !by.is_empty())
                    .map(|(n, _)| n),
            )
            .chain(self.configured.iter())
            .collect()
    }

    /// Every node known (the ones `counts` counts), by id.
    pub fn known(&self) -> Vec<Known> {
        self.known_ids()
            .into_iter()
            .map(|n| {
                let live = self.live.get(n);
                Known {
                    node: n.clone(),
                    linked: live.is_some(),
                    url: live
                        .and_then(|l| l.url.clone())
                        .or_else(|| self.remembered.get(n).cloned())
                        .or_else(|| self.heard.get(n)?.values().next().cloned()),
                    configured: self.configured.contains(n),
                    reported_by: self
                        .heard
                        .get(n)
                        .map(|by| by.keys().cloned().collect())
                        .unwrap_or_default(),
                    undialable: self.undialable.contains(n),
                }
            })
            .collect()
    }

    /// A configured URL led to `peer`; `before`: the node it led to last time. The node is
    /// left to that URL's dialer, not discovery. If the URL now leads elsewhere, the node it
    /// led to has moved or left, and is looked for like any other (found through reports, or
    /// forgotten).
    pub fn configured_at(&mut self, url: &str, peer: &str, before: Option<&str>) {
        self.configured.insert(peer.to_owned());
        if let Some(old) = before
            && old != peer
        {
            self.configured.remove(old);
            if self.remembered.get(old).is_some_and(|u| u == url) {
                self.remembered.remove(old);
            }
        }
    }

    /// What to tell `peer` in a `peers` frame: every other live link with a known URL.
    pub fn linked_except(&self, peer: &str) -> Vec<PeerAddr> {
        let mut nodes: Vec<PeerAddr> = self
            .live
            .iter()
            .filter(|(node, _)| node.as_str() != peer)
            .filter_map(|(node, l)| {
                Some(PeerAddr {
                    node: node.clone(),
                    url: l.url.clone()?,
                })
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        nodes
    }

    /// (peers linked now, peer nodes known).
    pub fn counts(&self) -> (usize, usize) {
        (self.live.len(), self.known_ids().len())
    }

    /// What a dialer for `target` finds; `known`: the node behind a configured URL, once
    /// learned. A reported node's URLs (the one remembered, then the reported ones) take
    /// turns by `attempt`.
    pub fn look(&self, target: &Target, known: Option<&str>, attempt: u32) -> Look {
        match target {
            Target::Url(u) => Look {
                linked: known.is_some_and(|n| self.live.contains_key(n)),
                url: Some(u.clone()),
                reported: true,
                dropped: known.is_some_and(|n| self.dropped.contains(n)),
            },
            Target::Node(n) => {
                let urls: Vec<&String> = self
                    .remembered
                    .get(n)
                    .into_iter()
                    .chain(self.heard.get(n).into_iter().flat_map(|by| by.values()))
                    .collect();
                let url = (!urls.is_empty()).then(|| urls[attempt as usize % urls.len()].clone());
                Look {
                    linked: self.live.contains_key(n) || self.configured.contains(n),
                    url,
                    reported: self.heard.get(n).is_some_and(|by| !by.is_empty()),
                    dropped: self.dropped.contains(n),
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
