//! Short text renderings of tool results, for MCP clients that show only text.

use std::fmt::Write;

use crate::message::{Message, MessageType, Priority};
use crate::protocol::{DeliveryStatus, PresenceEntry, SendResult};

/// One message in a few lines.
pub fn message(m: &Message) -> String {
    let mut s = format!("[{}] {} → {}", m.id, m.from, m.to);
    if m.kind != MessageType::Message {
        let _ = write!(s, " ({})", m.kind);
    }
    if m.priority != Priority::Normal {
        let _ = write!(s, " !{}", m.priority);
    }
    let _ = write!(s, " at {}", m.created_at);
    if let Some(r) = &m.reply_to {
        let _ = write!(s, ", reply to {r}");
    }
    if let Some(subj) = &m.subject {
        let _ = write!(s, "\nSubject: {subj}");
    }
    let _ = write!(s, "\n{}", m.body);
    if let Some(d) = &m.data {
        let _ = write!(s, "\ndata: {}", serde_json::Value::Object(d.clone()));
    }
    s
}

/// A list of messages with a heading.
pub fn messages(heading: &str, ms: &[Message]) -> String {
    let mut s = heading.to_owned();
    for m in ms {
        let _ = write!(s, "\n\n{}", message(m));
    }
    s
}

/// The result of a send.
pub fn sent(to: &str, r: &SendResult) -> String {
    let what = match r.status {
        DeliveryStatus::Delivered => format!("delivered to {to}"),
        DeliveryStatus::Queued => {
            format!("queued for {to} (not online; stored until they read it)")
        }
        DeliveryStatus::Published => format!("published to {to} ({} subscribers)", r.recipients),
    };
    format!("{what}; id {}, thread {}", r.id, r.thread_id)
}

/// One presence line.
pub fn presence(p: &PresenceEntry) -> String {
    let mut s = format!(
        "{} — {} on {}, {}",
        p.name,
        if p.online { "online" } else { "offline" },
        p.node,
        p.status.as_str()
    );
    if let Some(t) = &p.status_text {
        let _ = write!(s, " ({t})");
    }
    if !p.online
        && let Some(l) = &p.last_seen
    {
        let _ = write!(s, ", last seen {l}");
    }
    s
}
