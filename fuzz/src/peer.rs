//! Target `peer_frame`: what a node does with one text frame on a mesh link.
//!
//! Decode a `PeerFrame` (a bad one is logged and skipped, `mesh::Mesh::link`), then the checks
//! the link applies before acting: the handshake proof (`mesh::handshake::verify`), and for
//! reported nodes the node name and URL rules (`validate_name`, `config::validate_ws_url`,
//! `config::ws_endpoint`). Names inside replicated events and presence go through the name
//! rules too. With `FUZZ_TIMESTAMPS=1` their timestamps are also rendered as the store and the
//! presence list render them.

use switchboard::config::{validate_ws_url, ws_endpoint};
use switchboard::mesh::{PeerFrame, handshake};
use switchboard::message::rfc3339;
use switchboard::store::replication::EventBody;

use crate::{check_name, check_target, check_timestamps, round_trip, text};

/// The mesh secret the proofs are checked against.
const SECRET: &[u8] = b"fuzz-mesh-secret";

/// One input.
pub fn run(data: &[u8]) {
    if let Some(t) = text(data) {
        frame(t);
    }
}

/// One peer text frame.
pub fn frame(text: &str) {
    let f = match serde_json::from_str::<PeerFrame>(text) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    fields(&f);
    round_trip(&f);
}

fn time(ms: i64) {
    if check_timestamps() {
        let _ = rfc3339(ms);
    }
}

fn proof(role: &str, node: &str, instance: &str, given: &str) {
    check_name(node);
    // A plain link and a TLS one (its channel binding in the transcript).
    for binding in [&b""[..], b"tls-exporter-value"] {
        let t = handshake::Transcript {
            role,
            dial_nonce: "dial-nonce",
            accept_nonce: "accept-nonce",
            node,
            instance,
            binding,
        };
        let ok = handshake::verify(SECRET, &t, given);
        let expected = handshake::proof(SECRET, &t);
        assert_eq!(ok, given == expected);
    }
}

fn fields(f: &PeerFrame) {
    match f {
        PeerFrame::PeerHello { nonce, .. } | PeerFrame::PeerChallenge { nonce } => {
            let _ = nonce.len();
        }
        PeerFrame::PeerAuth {
            node,
            proof: given,
            expect,
            instance,
            ..
        } => {
            proof("dial", node, instance, given);
            expect.iter().for_each(|n| check_name(n));
        }
        PeerFrame::PeerWelcome {
            node,
            proof: given,
            instance,
            ..
        } => proof("accept", node, instance, given),
        PeerFrame::Peers { nodes, .. } => {
            for n in nodes {
                check_name(&n.node);
                if validate_ws_url(&n.url).is_ok() {
                    let e = ws_endpoint(&n.url);
                    assert!(e.starts_with("ws://") || e.starts_with("wss://"));
                }
            }
        }
        PeerFrame::Presence { agents, .. } => {
            for a in agents {
                check_name(&a.name);
                time(a.connected_since);
            }
        }
        PeerFrame::Events { events } | PeerFrame::Relay { events, .. } => {
            events.iter().for_each(|e| event(&e.body))
        }
        PeerFrame::Snapshot { items } => items.iter().for_each(event),
        PeerFrame::SnapshotEnd { cursors, .. } => {
            let _ = cursors.len();
        }
        PeerFrame::Routes { nodes, applied } => {
            nodes.iter().for_each(|b| check_name(&b.node));
            let _ = applied.len();
        }
        PeerFrame::Delivered { ids, to, .. } => {
            let _ = ids.len();
            to.iter().for_each(|n| check_name(n));
        }
        PeerFrame::Sync { .. }
        | PeerFrame::Ack { .. }
        | PeerFrame::Heartbeat { .. }
        | PeerFrame::Error { .. } => {}
    }
}

fn event(body: &EventBody) {
    match body {
        EventBody::Message(m) => {
            check_name(&m.sender);
            check_target(&m.target);
            m.recipients.iter().for_each(|r| check_name(r));
            time(m.created_at);
        }
        EventBody::Read { agent, at, .. } => {
            check_name(agent);
            time(*at);
        }
        EventBody::Agent {
            name, last_seen, ..
        } => {
            check_name(name);
            last_seen.iter().for_each(|t| time(*t));
        }
        EventBody::Subscription { topic, agent, .. } => {
            check_name(topic);
            check_name(agent);
        }
        EventBody::Token { name, .. } => check_name(name),
        EventBody::Forget { name, .. } => check_name(name),
    }
}
