//! The fuzz targets' bodies, kept out of the `afl::fuzz!` binaries so that every target is a
//! one-line wrapper and a crashing input can be replayed by any of them.
//!
//! Each target feeds one input to the same library entry points the node or the MCP server
//! calls on untrusted text, then checks what the program relies on afterwards: a decoded
//! frame re-encodes to a frame that decodes again, a name that validates obeys the name rules,
//! and every error turns into an answer the other side can decode. A panic anywhere is the bug
//! the fuzzer looks for; the `assert!`s turn a broken invariant into one.
#![forbid(unsafe_code)]

pub mod client;
pub mod mcp;
pub mod peer;

use std::sync::OnceLock;

use serde_json::Value;
use switchboard::message::{MAX_NAME_LEN, Target, validate_name};

/// Also render the peer frames' millisecond timestamps as the store and presence do
/// (`message::rfc3339`). Off by default: it panics on years past 9999 (see docs/FUZZING.md),
/// and a known crash on every other input would drown the search for new ones.
pub fn check_timestamps() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TIMESTAMPS").is_some_and(|v| v == "1"))
}

/// A name that `validate_name` accepts obeys the documented rules; one it refuses has a
/// message (that is shown to the client as is).
pub fn check_name(name: &str) {
    match validate_name(name) {
        Ok(()) => {
            let n = name.chars().count();
            assert!((1..=MAX_NAME_LEN).contains(&n), "accepted length {n}");
            assert!(!name.starts_with(['.', '-']));
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_@".contains(&b))
            );
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

/// A `to` field: agent, `#topic` or `*`, and what the parse says about it.
pub fn check_target(to: &str) {
    match Target::parse(to) {
        Ok(Target::Broadcast) => assert_eq!(to, "*"),
        Ok(Target::Topic(t)) => {
            assert_eq!(format!("#{t}"), to);
            assert!(validate_name(&t).is_ok());
        }
        Ok(Target::Agent(a)) => {
            assert_eq!(a, to);
            assert!(validate_name(&a).is_ok());
        }
        Err(e) => assert!(!e.is_empty()),
    }
    check_name(to.strip_prefix('#').unwrap_or(to));
}

/// Two JSON trees are the same frame. Numbers compare as numbers: without serde_json's
/// `float_roundtrip` a float may come back one unit in the last place off, which is not a
/// switchboard bug.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            _ if x == y => true,
            (Some(x), Some(y)) => x == y || ((x - y) / x.abs().max(y.abs())).abs() < 1e-15,
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Encodes `frame`, decodes it again, and checks both encode alike.
pub fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(frame: &T) {
    let text = serde_json::to_string(frame).expect("a decoded frame encodes");
    let again = match serde_json::from_str::<T>(&text) {
        Ok(f) => f,
        Err(e) => panic!("re-encoded frame does not decode: {e}: {text}"),
    };
    let (a, b) = (
        serde_json::to_value(frame).expect("encodes"),
        serde_json::to_value(&again).expect("encodes"),
    );
    assert!(same(&a, &b), "round trip changed the frame: {a} vs {b}");
}

/// WebSocket text frames are UTF-8 (tungstenite rejects others before switchboard sees
/// them), so a target looks only at inputs that are.
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
