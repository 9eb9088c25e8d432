//! Target `client_frame`: what a node does with one text frame from a client.
//!
//! As the first frame (`node::upgrade`): a `peer_hello` makes it a mesh link, anything else
//! must be a `hello`. Later (`node::dispatch::Conn::handle`): decode a `ClientFrame`, or
//! answer `bad_frame` with the `req` recovered from whatever JSON it was. Then the string
//! fields go through the name rules the core applies (`Target::parse`, `validate_name`, the
//! did-you-mean of an unknown name).

use serde_json::Value;
use switchboard::mesh::PeerFrame;
use switchboard::protocol::{ClientFrame, ErrorCode, ServerFrame};

use crate::{check_name, check_target, round_trip, text};

/// Names the did-you-mean compares an unknown recipient with.
fn known() -> Vec<String> {
    ["alice", "bob", "build-bot", "ops", "carol@host"]
        .map(String::from)
        .to_vec()
}

/// One input.
pub fn run(data: &[u8]) {
    if let Some(t) = text(data) {
        frame(t);
    }
}

/// One client text frame.
pub fn frame(text: &str) {
    // The first-frame split, as node::upgrade::first_frame makes it.
    let _peer = matches!(
        serde_json::from_str::<PeerFrame>(text),
        Ok(PeerFrame::PeerHello { .. })
    );
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(f) => {
            fields(&f);
            round_trip(&f);
            let _ = f.req();
        }
        Err(e) => bad_frame(text, &e),
    }
}

/// The `bad_frame` answer, built as `Conn::handle` builds it; the client must decode it.
fn bad_frame(text: &str, e: &serde_json::Error) {
    let value = serde_json::from_str::<Value>(text).ok();
    let req = value
        .as_ref()
        .and_then(|v| v.get("req").and_then(Value::as_u64));
    let answer = ServerFrame::error(req, ErrorCode::BadFrame, format!("bad frame: {e}"));
    let out = serde_json::to_string(&answer).expect("an error frame encodes");
    match serde_json::from_str::<ServerFrame>(&out) {
        Ok(ServerFrame::Error(ef)) => {
            assert_eq!(ef.req, req);
            assert_eq!(ef.code, ErrorCode::BadFrame);
        }
        other => panic!("the bad_frame answer decodes as {other:?}"),
    }
}

fn fields(f: &ClientFrame) {
    match f {
        ClientFrame::Hello(h) => check_name(&h.agent),
        ClientFrame::Send(s) => {
            check_target(&s.to);
            let known = known();
            let name = s.to.strip_prefix('#').unwrap_or(&s.to);
            for what in [
                switchboard::core::suggest::Unknown::Agent,
                switchboard::core::suggest::Unknown::Topic,
            ] {
                let e = switchboard::core::suggest::unknown(what, name, known.iter());
                let _ = (e.code(), e.to_string());
            }
        }
        ClientFrame::Inbox(q) => {
            q.from.iter().for_each(|n| check_name(n));
            q.topic
                .iter()
                .for_each(|t| check_name(t.strip_prefix('#').unwrap_or(t)));
        }
        ClientFrame::Presence(p) => p.agent.iter().for_each(|n| check_name(n)),
        ClientFrame::Subscribe(t) | ClientFrame::Unsubscribe(t) => {
            check_target(&format!(
                "#{}",
                t.topic.strip_prefix('#').unwrap_or(&t.topic)
            ));
        }
        ClientFrame::Token(t) => t.name.iter().for_each(|n| check_name(n)),
        ClientFrame::MeshForget(f) => check_name(&f.node),
        ClientFrame::Forget(f) => check_name(&f.name),
        ClientFrame::SetStatus(s) => {
            let _ = s.text.as_ref().map(|t| t.chars().count());
        }
        ClientFrame::MarkRead(_)
        | ClientFrame::Thread(_)
        | ClientFrame::Search(_)
        | ClientFrame::Ack(_)
        | ClientFrame::Prune(_)
        | ClientFrame::Ping(_) => {}
    }
}
