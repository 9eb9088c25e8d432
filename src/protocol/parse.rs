//! Reading a client frame. serde's internally tagged enums buffer the whole frame (every string
//! copied into a `Content` tree) before they pick the variant by `op`: for the two frames that
//! carry the load, `send` and `ack`, that was most of the parse. Those are read straight into
//! their structs once a first pass has found the op; every other frame, and any frame the
//! direct read refuses, goes the general way, so every answer and every error stays as it was.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{AckFrame, ClientFrame, SendRequest};
use crate::message::{MessageType, Priority};

/// Only the op; every other field is skipped without being kept.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
}

/// `SendRequest` with its tag: the same fields, the same rules.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendFrame {
    #[allow(dead_code)]
    op: IgnoredAny,
    req: u64,
    #[serde(default)]
    id: Option<String>,
    to: String,
    body: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default, rename = "type")]
    kind: MessageType,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckWire {
    #[allow(dead_code)]
    op: IgnoredAny,
    ids: Vec<String>,
}

impl ClientFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> serde_json::Result<ClientFrame> {
        let direct = match serde_json::from_str::<Peek<'_>>(text) {
            Ok(Peek { op: Some(op) }) if op == "send" => {
                serde_json::from_str::<SendFrame>(text).ok().map(|f| {
                    ClientFrame::Send(SendRequest {
                        req: f.req,
                        id: f.id,
                        to: f.to,
                        body: f.body,
                        subject: f.subject,
                        kind: f.kind,
                        priority: f.priority,
                        reply_to: f.reply_to,
                        data: f.data,
                    })
                })
            }
            Ok(Peek { op: Some(op) }) if op == "ack" => serde_json::from_str::<AckWire>(text)
                .ok()
                .map(|f| ClientFrame::Ack(AckFrame { ids: f.ids })),
            _ => None,
        };
        match direct {
            Some(frame) => Ok(frame),
            None => serde_json::from_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct read gives what the general one gives, and refuses what it refuses.
    #[test]
    fn parses_like_the_tagged_enum() {
        let frames = [
            r#"{"op":"send","req":1,"to":"bob","body":"hi"}"#,
            r##"{"req":7,"body":"b \"q\" \u00e9","op":"send","to":"#ops","subject":"s","type":"question","priority":"high","reply_to":"01J0000000000000000000000A","data":{"k":[1,{"x":null}]},"id":"01J0000000000000000000000B"}"##,
            r#"{"op":"send","req":1,"to":"bob","body":"hi","data":null,"subject":null}"#,
            r#"{"op":"ack","ids":["a","b"]}"#,
            r#"{"ids":[],"op":"ack"}"#,
            r#"{"op":"s\u0065nd","req":1,"to":"bob","body":"hi"}"#,
            r#"{"op":"ping","req":3}"#,
            r#"{"op":"inbox","req":3,"limit":5}"#,
        ];
        for text in frames {
            let fast = ClientFrame::parse(text).unwrap();
            let slow: ClientFrame = serde_json::from_str(text).unwrap();
            assert_eq!(
                serde_json::to_value(&fast).unwrap(),
                serde_json::to_value(&slow).unwrap(),
                "{text}"
            );
        }
        let refused = [
            r#"{"op":"send","req":1,"to":"bob"}"#,
            r#"{"op":"send","req":1,"to":"bob","body":"hi","from":"mallory"}"#,
            r#"{"op":"send","req":-1,"to":"bob","body":"hi"}"#,
            r#"{"op":"send","op":"send","req":1,"to":"bob","body":"hi"}"#,
            r#"{"op":"send","req":1,"to":"bob","body":"hi","type":"shout"}"#,
            r#"{"op":"ack","ids":"a"}"#,
            r#"{"op":"ack","ids":[],"req":1}"#,
            r#"{"op":"send","req":1,"to":"bob","body":"hi"} trailing"#,
            r#"{"op":"nope"}"#,
            r#"{"req":1}"#,
            r#"["send"]"#,
            "",
        ];
        for text in refused {
            let fast = ClientFrame::parse(text)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            let slow = serde_json::from_str::<ClientFrame>(text)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert_eq!(fast, slow, "{text}");
        }
    }
}
