//! Tool arguments. Their `///` docs become the JSON Schema the agent reads, so they are short:
//! the whole tools/list must stay small (it is paid for in every agent's context window).

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::message::{Message, MessageType, Priority};
use crate::protocol::Status;

/// `send_message` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendArgs {
    /// Agent name, "#topic", or "*" (every known agent).
    pub to: String,
    /// Message text; the request must fit the node's frame limit (default 1 MiB).
    pub body: String,
    /// Short subject.
    pub subject: Option<String>,
    /// Default "message".
    #[serde(rename = "type")]
    pub kind: Option<MessageType>,
    /// Default "normal".
    pub priority: Option<Priority>,
    /// Id of the message this answers (keeps the thread).
    pub reply_to: Option<String>,
    /// Structured payload (JSON object).
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `get_inbox` arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxArgs {
    /// Default true.
    pub unread_only: Option<bool>,
    /// 1-200, default 20.
    pub limit: Option<i64>,
    /// Only from this agent.
    pub from: Option<String>,
    /// Only this topic.
    pub topic: Option<String>,
    /// Default true; false peeks.
    pub mark_read: Option<bool>,
}

/// `wait_for_messages` arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    /// 0-300, default 60.
    pub timeout_seconds: Option<f64>,
    /// Only from this agent.
    pub from: Option<String>,
    /// Only this topic.
    pub topic: Option<String>,
}

/// `wait_for_messages` result.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct WaitResult {
    /// Messages that arrived (now marked read).
    pub messages: Vec<Message>,
    /// True when nothing arrived in time.
    pub timed_out: bool,
}

/// `presence` arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceArgs {
    /// Only this agent.
    pub agent: Option<String>,
}

/// `set_status` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusArgs {
    /// available, busy or away.
    pub status: Status,
    /// What you are doing (≤200 chars).
    pub text: Option<String>,
}

/// `mark_read` arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkArgs {
    /// Message ids.
    pub ids: Option<Vec<String>>,
    /// Mark the whole inbox.
    pub all: Option<bool>,
}

/// `subscribe`/`unsubscribe` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicArgs {
    /// Topic name ("#" optional).
    pub topic: String,
}

/// `get_thread` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThreadArgs {
    /// Any message id of the thread.
    pub id: String,
}

/// `search_messages` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Words to find (all must match; "word*" for a prefix).
    pub query: String,
    /// 1-200, default 20.
    pub limit: Option<i64>,
}

/// The enum-valued arguments and their values. Checked before the arguments are read, so a bad
/// value gets an answer naming the argument and the choices, not serde's "unknown variant".
pub const MESSAGE_TYPES: (&str, &[&str]) = (
    "type",
    &["message", "task", "result", "question", "answer", "event"],
);
/// See [`MESSAGE_TYPES`].
pub const PRIORITIES: (&str, &[&str]) = ("priority", &["low", "normal", "high", "urgent"]);
/// See [`MESSAGE_TYPES`].
pub const STATUSES: (&str, &[&str]) = ("status", &["available", "busy", "away"]);

/// Reads tool arguments; errors name the argument and end with the wire code, as the node's do.
pub fn parse<T: DeserializeOwned>(
    args: serde_json::Map<String, serde_json::Value>,
    enums: &[(&str, &[&str])],
) -> Result<T, String> {
    for (field, allowed) in enums {
        match args.get(*field) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(v)) if allowed.contains(&v.as_str()) => {}
            Some(v) => {
                return Err(format!(
                    "{field}: {v} is not one of {} [invalid_argument]",
                    allowed.join(", ")
                ));
            }
        }
    }
    serde_json::from_value(serde_json::Value::Object(args))
        .map_err(|e| format!("arguments: {e} [invalid_argument]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_lists_match_the_types() {
        for t in MESSAGE_TYPES.1 {
            assert!(t.parse::<MessageType>().is_ok(), "{t}");
        }
        for p in PRIORITIES.1 {
            assert!(p.parse::<Priority>().is_ok(), "{p}");
        }
        for s in STATUSES.1 {
            assert_eq!(Status::from_stored(s).as_str(), *s);
        }
        let e = parse::<SendArgs>(
            serde_json::json!({"to": "bob", "body": "x", "priority": "asap"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            &[MESSAGE_TYPES, PRIORITIES],
        )
        .err()
        .unwrap_or_default();
        assert_eq!(
            e,
            "priority: \"asap\" is not one of low, normal, high, urgent [invalid_argument]"
        );
    }
}
