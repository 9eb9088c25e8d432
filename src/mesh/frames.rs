//! What nodes say to each other on `/ws`: the peer frames, and the `events` frame built
//! straight from the log's raw payloads. One place for the mesh's wire format, so a change to
//! it is visible in one diff.

use serde::{Deserialize, Serialize};

use crate::core::RemoteAgent;
use crate::store::replication::{Event, EventBody, TailBody};

/// Frames between nodes on `/ws`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PeerFrame {
    /// Dialer's first frame.
    PeerHello {
        /// Dialer's random nonce.
        nonce: String,
        /// Mesh protocol version (1).
        v: u32,
    },
    /// Acceptor's challenge.
    PeerChallenge {
        /// Acceptor's random nonce.
        nonce: String,
    },
    /// Dialer proves it knows the secret.
    PeerAuth {
        /// Dialer's node id.
        node: String,
        /// HMAC proof.
        proof: String,
        /// Dialer's incarnation: a link from a newer one replaces any older link.
        #[serde(default)]
        incarnation: u64,
        /// The node the dialer means to reach (a URL it was told may now lead elsewhere): any
        /// other node refuses the link before it can replace a good one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
        /// Increases with every dial the dialer makes: of two links it made to the same node,
        /// both ends keep the later one, whatever order they saw them in.
        #[serde(default)]
        seq: u64,
        /// Dialer's instance id: its data dir, which its log and every cursor of it belong to
        /// (empty from a node that predates instance ids).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        instance: String,
    },
    /// Acceptor proves it knows the secret.
    PeerWelcome {
        /// Acceptor's node id.
        node: String,
        /// HMAC proof.
        proof: String,
        /// Acceptor's incarnation.
        #[serde(default)]
        incarnation: u64,
        /// Acceptor's instance id (see `PeerAuth::instance`).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        instance: String,
    },
    /// "I have applied your log up to `cursor`": send me what follows.
    Sync {
        /// Last seq applied.
        cursor: u64,
        /// The sender takes a snapshot when the entries after `cursor` are compacted away
        /// (absent from older versions: they are never sent one).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        snapshots: bool,
    },
    /// One page of the sender's current state, for a receiver whose cursor is below what the
    /// sender's log (or relayed entries) still holds: changes applied like log entries, but
    /// without moving any cursor. Pages stay around 256 KiB.
    Snapshot {
        /// The changes.
        items: Vec<EventBody>,
    },
    /// The pages sent since the last `snapshot_end` are the sender's state as of its log's
    /// `head` and its `cursors` of other origins: the receiver moves its cursors there (never
    /// back). The sender's `events` continue after `head`.
    SnapshotEnd {
        /// The sender's log head when the snapshot began.
        head: u64,
        /// How far the sender had applied each other origin then.
        cursors: Vec<OriginCursor>,
    },
    /// Entries of the sender's own log, in order.
    Events {
        /// The entries.
        events: Vec<Event>,
    },
    /// Entries of another origin's log that the sender has applied, in order, for a receiver
    /// that asked for them (its `peers` frame's `relay`): how nodes that are not linked to
    /// each other replicate through the nodes between them.
    Relay {
        /// The origin's log key (its instance id).
        origin: String,
        /// The entry of the origin's log the sender applied just before the first of these:
        /// a receiver that has not applied that far would skip entries, and takes none.
        after: u64,
        /// The entries.
        events: Vec<Event>,
    },
    /// Entries applied up to here.
    Ack {
        /// Last seq applied.
        cursor: u64,
    },
    /// The online agents of the sender, or of a node it relays for (`node`).
    Presence {
        /// The node whose agents these are; absent: the sender's own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// Increases on every restart of the node.
        incarnation: u64,
        /// Increases on every change within an incarnation.
        version: u64,
        /// Agents online there.
        agents: Vec<RemoteAgent>,
    },
    /// Liveness, every second; presence itself travels only when it changes.
    Heartbeat {
        /// The sender's log head (its last committed seq), so the receiver can tell how far
        /// behind it is (`switchboard mesh`). Absent from older versions, which also ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<u64>,
    },
    /// The nodes the sender is linked to and where they can be reached, so that nodes linked
    /// through a common peer find and dial each other. Sent when the set changes.
    Peers {
        /// The port the sender listens on: the receiver reaches it at the address the link
        /// came from (when the sender dialed).
        port: u16,
        /// The port speaks TLS: reach it at `wss://`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        tls: bool,
        /// The sender's live links, except to the receiver.
        nodes: Vec<PeerAddr>,
        /// What the sender advertises (`--advertise`): a URL to dial it at, or `none` when
        /// it cannot be dialed (it is then never reported to others nor dialed). Absent: dial
        /// the URL dialed, or the address the link came from with `port`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        advertise: Option<String>,
        /// The sender relays and wants relayed: what it has applied of each origin, and the
        /// origins it is linked to itself (nothing of theirs is relayed to it). Absent from
        /// nodes that do not relay.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<Wants>,
    },
    /// Every node the sender reaches (itself, its links and nodes it reaches through them),
    /// each with the newest heartbeat the sender has from that node itself. Sent every
    /// second and when a node is lost, to nodes that relay.
    Routes {
        /// The nodes.
        nodes: Vec<Beat>,
        /// How far the sender has applied each origin's log, committed: a node compacts the
        /// entries it relays once every peer has them (absent from older versions).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        applied: Vec<OriginCursor>,
    },
    /// A session of a recipient on the sender's node holds these messages.
    Delivered {
        /// Message ids.
        ids: Vec<String>,
        /// The origin the notice is for, when the receiver is to pass it on (it is not
        /// linked to the sender); absent: the receiver is the origin.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// Nodes it has passed through: a notice is dropped past [`MAX_HOPS`].
        #[serde(default, skip_serializing_if = "is_zero")]
        hops: u8,
    },
    /// The link is refused.
    Error {
        /// Stable code.
        code: String,
        /// Explanation.
        message: String,
    },
}

/// Most nodes a relayed notice passes through.
pub const MAX_HOPS: u8 = 16;

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// What a node asks its peer to relay (see [`PeerFrame::Peers`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Wants {
    /// How far the sender has applied each origin's log; an origin not listed: not at all.
    pub cursors: Vec<OriginCursor>,
    /// Origins the sender is linked to: it gets their logs from them.
    pub direct: Vec<String>,
}

/// How far one origin's log is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OriginCursor {
    /// The origin's log key (its instance id).
    pub origin: String,
    /// The last entry applied.
    pub cursor: u64,
}

/// A node's heartbeat as relayed: it proves the node was alive and reachable when it beat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Beat {
    /// Node id.
    pub node: String,
    /// Its log key (instance id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// Its incarnation.
    pub incarnation: u64,
    /// Increases with every heartbeat of one incarnation.
    pub beat: u64,
    /// Its log head at that beat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
}

/// A node and a URL it can be dialed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerAddr {
    /// Node id.
    pub node: String,
    /// `ws://HOST:PORT`.
    pub url: String,
}

impl PeerFrame {
    /// The frame as sent.
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// A refusal with a typed code.
    pub fn refusal(code: PeerError, message: String) -> PeerFrame {
        PeerFrame::Error {
            code: code.as_str().to_owned(),
            message,
        }
    }
}

/// The codes of [`PeerFrame::Error`] a node acts on. The wire carries a string, so a peer of
/// another version may send codes this one does not know; those read as `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerError {
    /// The mesh secret did not match.
    Unauthorized,
    /// The dialer expected another node: the URL it was told now leads elsewhere.
    WrongNode,
    /// Another instance (data dir) holds the node id the dialer claims.
    NodeIdConflict,
    /// A plain link from another machine, which this node does not permit.
    PlaintextRefused,
}

impl PeerError {
    /// The wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerError::Unauthorized => "unauthorized",
            PeerError::WrongNode => "wrong_node",
            PeerError::NodeIdConflict => "node_id_conflict",
            PeerError::PlaintextRefused => "plaintext_refused",
        }
    }

    /// A wire code, if it is one this node knows.
    pub fn parse(code: &str) -> Option<PeerError> {
        [
            PeerError::Unauthorized,
            PeerError::WrongNode,
            PeerError::NodeIdConflict,
            PeerError::PlaintextRefused,
        ]
        .into_iter()
        .find(|c| c.as_str() == code)
    }
}

/// An `events` frame from raw log payloads, without parsing them again.
pub fn events_frame(entries: &[(u64, TailBody)]) -> String {
    let mut s = String::from("{\"op\":\"events\",\"events\":[");
    for (i, (seq, body)) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{{\"seq\":{seq},\"body\":{}}}", body.to_json()));
    }
    s.push_str("]}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_and_unknown_ones_are_none() {
        for c in [
            PeerError::Unauthorized,
            PeerError::WrongNode,
            PeerError::NodeIdConflict,
            PeerError::PlaintextRefused,
        ] {
            assert_eq!(PeerError::parse(c.as_str()), Some(c));
        }
        assert_eq!(PeerError::parse("something_new"), None);
        let f = PeerFrame::refusal(PeerError::WrongNode, "x".into()).text();
        assert_eq!(f, r#"{"op":"error","code":"wrong_node","message":"x"}"#);
    }

    #[test]
    fn heartbeats_with_and_without_a_head_parse_on_either_version() {
        let old: PeerFrame = serde_json::from_str(r#"{"op":"heartbeat"}"#).unwrap();
        assert!(matches!(old, PeerFrame::Heartbeat { head: None }));
        let new = PeerFrame::Heartbeat { head: Some(7) }.text();
        assert_eq!(new, r#"{"op":"heartbeat","head":7}"#);
        // The frame as an older version declares it: a variant without fields.
        #[derive(Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        enum Before {
            Heartbeat,
        }
        assert!(matches!(
            serde_json::from_str::<Before>(&new),
            Ok(Before::Heartbeat)
        ));
    }

    #[test]
    fn an_empty_events_frame_parses() {
        let f: PeerFrame = serde_json::from_str(&events_frame(&[])).unwrap();
        assert!(matches!(f, PeerFrame::Events { events } if events.is_empty()));
    }
}
