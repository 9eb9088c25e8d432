//! The message: the one record every part of switchboard agrees on.
//!
//! The same type travels on the wire, sits in the store and is returned by the MCP tools, so an
//! agent sees exactly what a script or a peer node sees.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A message as agents see it. `read` is per reader: the same message can be read by one
/// recipient and unread by another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    /// Time-ordered ULID, unique mesh-wide.
    pub id: String,
    /// Sender (the authenticated agent).
    pub from: String,
    /// Agent name, `#topic` or `*`, as the sender wrote it.
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Topic name without `#`, for topic messages.
    pub topic: Option<String>,
    #[serde(rename = "type")]
    /// Kind of message.
    pub kind: MessageType,
    /// How urgent.
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Optional one-line subject.
    pub subject: Option<String>,
    /// The text.
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Optional structured payload.
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The message this answers.
    pub reply_to: Option<String>,
    /// Id of the thread's first message.
    pub thread_id: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Whether this reader has read it.
    pub read: bool,
}

/// What a message is for, so an agent can triage without reading the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// Plain conversation.
    #[default]
    Message,
    /// Work handed to the recipient.
    Task,
    /// The outcome of a task.
    Result,
    /// Expects an `answer`.
    Question,
    /// Replies to a `question`.
    Answer,
    /// A notification that needs no reply.
    Event,
}

/// How urgently the recipient should look.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Whenever convenient.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Before normal work.
    High,
    /// Interrupt what you are doing.
    Urgent,
}

macro_rules! str_enum {
    ($ty:ty, $what:literal, $($var:ident => $s:literal),+ $(,)?) => {
        impl $ty {
            /// The stable lower-case name used on the wire and in the store.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$var => $s),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$var),)+
                    _ => Err(format!(
                        concat!("unknown ", $what, " '{}' (expected one of: {})"),
                        s,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

str_enum!(MessageType, "type", Message => "message", Task => "task", Result => "result",
    Question => "question", Answer => "answer", Event => "event");
str_enum!(Priority, "priority", Low => "low", Normal => "normal", High => "high", Urgent => "urgent");

/// Where a message goes, parsed from the `to` field once so routing never re-parses strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One agent by name.
    Agent(String),
    /// Every current subscriber of a topic (name without the `#`).
    Topic(String),
    /// Every known agent but the sender.
    Broadcast,
}

impl Target {
    /// Parses a `to` value, checking names with the same rules as agent names.
    pub fn parse(to: &str) -> Result<Self, String> {
        if to == "*" {
            Ok(Self::Broadcast)
        } else if let Some(topic) = to.strip_prefix('#') {
            validate_name(topic).map_err(|e| format!("topic {e}"))?;
            Ok(Self::Topic(topic.to_owned()))
        } else {
            validate_name(to).map_err(|e| format!("agent name {e}"))?;
            Ok(Self::Agent(to.to_owned()))
        }
    }
}

/// Longest agent or topic name; names are identities shown everywhere, not payloads.
pub const MAX_NAME_LEN: usize = 64;

/// Agent and topic names: 1–64 characters of letters, digits, `.`, `_`, `-`, `@`, not starting
/// with a `.` or `-`. Narrow on purpose: names appear in URIs (`inbox://NAME`), logs and shells.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_LEN {
        let shown: String = name.chars().take(MAX_NAME_LEN).collect();
        return Err(format!(
            "'{shown}…' is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(format!("'{name}' must not start with '.' or '-'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "'{name}' has the character '{c}' (allowed: letters, digits, '.', '_', '-', '@')"
        ));
    }
    Ok(())
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with millisecond precision.
/// Times past 9999-12-31T23:59:59.999Z (which RFC 3339 cannot write, and a peer may send)
/// show as that instant instead of panicking.
pub fn rfc3339(ms: i64) -> String {
    const LAST: i64 = 253_402_300_799_999;
    // A burst stores dozens of messages in one millisecond: the last text is kept per thread
    // (formatting was about 1 % of a node's CPU under load).
    thread_local! {
        static LAST_TEXT: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((-1, String::new())) };
    }
    let ms = ms.clamp(0, LAST);
    LAST_TEXT.with_borrow_mut(|(at, text)| {
        if *at != ms {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            *text = humantime::format_rfc3339_millis(t).to_string();
            *at = ms;
        }
        text.clone()
    })
}

/// Milliseconds since the Unix epoch, the unit every timestamp is stored in.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An agent's self-declared availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Ready for work.
    #[default]
    Available,
    /// Working; messages will wait.
    Busy,
    /// Not looking at messages.
    Away,
}

impl Status {
    /// The stable lower-case name used in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Available => "available",
            Status::Busy => "busy",
            Status::Away => "away",
        }
    }

    /// Parses a stored status, falling back to `available` for anything unknown.
    pub fn from_stored(s: &str) -> Self {
        match s {
            "busy" => Status::Busy,
            "away" => Status::Away,
            _ => Status::Available,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("*"), Ok(Target::Broadcast));
        assert_eq!(Target::parse("#ops"), Ok(Target::Topic("ops".into())));
        assert_eq!(Target::parse("bob"), Ok(Target::Agent("bob".into())));
        assert!(Target::parse("#").is_err());
        assert!(Target::parse("bo b").is_err());
        assert!(Target::parse("").is_err());
    }

    #[test]
    fn enums_round_trip() {
        assert_eq!("urgent".parse::<Priority>(), Ok(Priority::Urgent));
        assert!(
            "asap"
                .parse::<Priority>()
                .unwrap_err()
                .contains("low, normal")
        );
        assert_eq!(MessageType::Question.as_str(), "question");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // The kept text is only reused for the same instant.
        for _ in 0..2 {
            assert_eq!(rfc3339(1_800_000_000_123), "2027-01-15T08:00:00.123Z");
            assert_eq!(rfc3339(1_800_000_000_124), "2027-01-15T08:00:00.124Z");
        }
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
