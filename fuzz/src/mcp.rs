//! Target `mcp_args`: the arguments of a `tools/call`, as the MCP server takes them.
//!
//! rmcp hands a tool its arguments as a JSON object (absent: `{}`) and deserializes them with
//! `serde_json::from_value` into the tool's parameter type (`mcp::params`); a failure is an
//! `invalid_params` error. Every input goes to every tool, both that way and straight from the
//! text. What a tool accepts then becomes the wire request it sends, which the node must be
//! able to decode: an MCP call that passes its own checks must never turn into a `bad_frame`.
//!
//! The tools' own range checks (`limit`, `timeout_seconds`, "ids or all") are private to
//! `mcp` and inline in the tool bodies; they are mirrored here and marked so.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use switchboard::mcp::MAX_WAIT_SECONDS;
use switchboard::mcp::params::*;
use switchboard::protocol::{
    ClientFrame, InboxRequest, MarkReadRequest, PresenceRequest, SearchRequest, SendRequest,
    SetStatusRequest, ThreadRequest, TopicRequest,
};

use crate::{check_name, check_target, round_trip, text};

/// One input.
pub fn run(data: &[u8]) {
    if let Some(t) = text(data) {
        arguments(t);
    }
}

/// One tool-arguments text, into every tool.
pub fn arguments(text: &str) {
    let object = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Some(m),
        Ok(Value::Null) => Some(Map::new()),
        _ => None,
    };
    tool::<SendArgs>(text, &object, send);
    tool::<InboxArgs>(text, &object, inbox);
    tool::<WaitArgs>(text, &object, wait);
    tool::<PresenceArgs>(text, &object, |a| {
        a.agent.iter().for_each(|n| check_name(n));
        wire(ClientFrame::Presence(PresenceRequest {
            req: 0,
            agent: a.agent,
        }));
    });
    tool::<StatusArgs>(text, &object, |a| {
        wire(ClientFrame::SetStatus(SetStatusRequest {
            req: 0,
            status: a.status,
            text: a.text,
        }));
    });
    tool::<MarkArgs>(text, &object, mark);
    tool::<TopicArgs>(text, &object, |a| {
        check_name(a.topic.strip_prefix('#').unwrap_or(&a.topic));
        wire(ClientFrame::Subscribe(TopicRequest {
            req: 0,
            topic: a.topic,
        }));
    });
    tool::<ThreadArgs>(text, &object, |a| {
        wire(ClientFrame::Thread(ThreadRequest { req: 0, id: a.id }));
    });
    tool::<SearchArgs>(text, &object, |a| {
        if let Some(limit) = limit(a.limit) {
            wire(ClientFrame::Search(SearchRequest {
                req: 0,
                query: a.query,
                limit,
            }));
        }
    });
}

/// Decodes the arguments both ways; what decodes goes on to `then`.
fn tool<T: DeserializeOwned>(text: &str, object: &Option<Map<String, Value>>, then: impl Fn(T)) {
    match serde_json::from_str::<T>(text) {
        Ok(a) => then(a),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Some(m) = object {
        // As rmcp's `Parameters<T>` does it.
        match serde_json::from_value::<T>(Value::Object(m.clone())) {
            Ok(a) => then(a),
            Err(e) => {
                let msg = format!("failed to deserialize parameters: {e}");
                assert!(msg.len() > 35);
            }
        }
    }
}

/// The frame a tool sends must be one the node decodes.
fn wire(frame: ClientFrame) {
    round_trip(&frame);
}

/// Mirrors `mcp::check_limit` (private).
fn limit(limit: Option<i64>) -> Option<u32> {
    match limit {
        None => Some(20),
        Some(l) if (1..=200).contains(&l) => Some(l as u32),
        Some(_) => None,
    }
}

fn send(a: SendArgs) {
    check_target(&a.to);
    wire(ClientFrame::Send(SendRequest {
        req: 0,
        id: None,
        to: a.to,
        body: a.body,
        subject: a.subject,
        kind: a.kind.unwrap_or_default(),
        priority: a.priority.unwrap_or_default(),
        reply_to: a.reply_to,
        data: a.data,
    }));
}

fn inbox(a: InboxArgs) {
    a.from.iter().for_each(|n| check_name(n));
    let Some(limit) = limit(a.limit) else { return };
    wire(ClientFrame::Inbox(InboxRequest {
        req: 0,
        unread_only: a.unread_only.unwrap_or(true),
        limit,
        from: a.from,
        topic: a.topic,
        mark_read: false,
    }));
}

/// Mirrors the inline checks of `wait_for_messages`, including the `Duration` it makes.
fn wait(a: WaitArgs) {
    let secs = a.timeout_seconds.unwrap_or(60.0);
    if !(0.0..=MAX_WAIT_SECONDS).contains(&secs) {
        return;
    }
    let d = Duration::from_secs_f64(secs);
    assert!(d <= Duration::from_secs(300));
    let topic = a.topic.map(|t| t.trim_start_matches('#').to_owned());
    wire(ClientFrame::Inbox(InboxRequest {
        req: 0,
        unread_only: true,
        limit: 50,
        from: a.from,
        topic,
        mark_read: false,
    }));
}

/// Mirrors the inline "ids or all" check of `mark_read`.
fn mark(a: MarkArgs) {
    let ids = a.ids.unwrap_or_default();
    let all = a.all.unwrap_or(false);
    if ids.is_empty() && !all {
        return;
    }
    wire(ClientFrame::MarkRead(MarkReadRequest { req: 0, ids, all }));
}
