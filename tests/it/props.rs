//! Property tests of the decoders every untrusted byte goes through: client frames, peer
//! frames and MCP tool arguments. They are the quick, always-on half of the fuzzing in
//! docs/FUZZING.md: a few hundred generated cases per property, so the suite stays fast, where
//! the coverage-guided targets under fuzz/ run for millions.

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use switchboard::mcp::params::{
    InboxArgs, MarkArgs, PresenceArgs, SearchArgs, SendArgs, StatusArgs, ThreadArgs, TopicArgs,
    WaitArgs,
};
use switchboard::mesh::frames::{OriginCursor, Wants};
use switchboard::mesh::{PeerAddr, PeerFrame};
use switchboard::message::{MessageType, Priority, Target, rfc3339, validate_name};
use switchboard::protocol::{
    ClientFrame, ErrorCode, Hello, MarkReadRequest, Role, SendRequest, ServerFrame,
};

const OPS: &[&str] = &[
    "hello",
    "send",
    "inbox",
    "mark_read",
    "presence",
    "set_status",
    "subscribe",
    "unsubscribe",
    "thread",
    "search",
    "ack",
    "token",
    "mesh_forget",
    "ping",
    "peer_hello",
    "peer_challenge",
    "peer_auth",
    "peer_welcome",
    "sync",
    "events",
    "heartbeat",
    "peers",
    "delivered",
    "error",
];

const FIELDS: &[&str] = &[
    "req", "agent", "token", "v", "role", "id", "to", "body", "type", "priority", "data", "ids",
    "all", "status", "text", "topic", "query", "limit", "action", "name", "nonce", "node", "proof",
    "cursor", "events", "agents", "nodes", "port", "url", "code", "message", "head",
];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(OPS).prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object shaped like a frame: a known `op` and known field names with any values,
/// so that most cases get past the tag and into the variant's fields.
fn framelike() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(OPS),
        prop::collection::vec((prop::sample::select(FIELDS), json()), 0..6),
    )
        .prop_map(|(op, fields)| {
            let mut m: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            m.insert("op".into(), Value::String(op.into()));
            Value::Object(m)
        })
}

/// What the node does with a client text frame that is not a valid frame: answer
/// `bad_frame`, with the `req` when the JSON had one; the answer must decode.
fn client_text(text: &str) {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(f) => {
            let _ = f.req();
            let again = serde_json::to_string(&f).unwrap();
            assert!(
                serde_json::from_str::<ClientFrame>(&again).is_ok(),
                "{again}"
            );
        }
        Err(e) => {
            let req = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v.get("req").and_then(Value::as_u64));
            let answer = ServerFrame::error(req, ErrorCode::BadFrame, format!("bad frame: {e}"));
            let out = serde_json::to_string(&answer).unwrap();
            assert!(serde_json::from_str::<ServerFrame>(&out).is_ok());
        }
    }
}

fn peer_text(text: &str) {
    if let Ok(f) = serde_json::from_str::<PeerFrame>(text) {
        let again = serde_json::to_string(&f).unwrap();
        assert!(serde_json::from_str::<PeerFrame>(&again).is_ok(), "{again}");
    }
}

fn one_tool<T: DeserializeOwned>(text: &str, value: &Value) {
    let _ = serde_json::from_str::<T>(text).map_err(|e| e.to_string());
    if let Value::Object(_) = value {
        let _ = serde_json::from_value::<T>(value.clone()).map_err(|e| e.to_string());
    }
}

/// Tool arguments into every tool's parameters, as text and as rmcp's `from_value`.
fn tools(text: &str) {
    let value = serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    one_tool::<SendArgs>(text, &value);
    one_tool::<InboxArgs>(text, &value);
    one_tool::<WaitArgs>(text, &value);
    one_tool::<PresenceArgs>(text, &value);
    one_tool::<StatusArgs>(text, &value);
    one_tool::<MarkArgs>(text, &value);
    one_tool::<TopicArgs>(text, &value);
    one_tool::<ThreadArgs>(text, &value);
    one_tool::<SearchArgs>(text, &value);
}

fn encodes_back<T: Serialize + DeserializeOwned>(frame: &T) {
    let text = serde_json::to_string(frame).unwrap();
    let again: T = serde_json::from_str(&text).unwrap();
    assert_eq!(
        serde_json::to_value(frame).unwrap(),
        serde_json::to_value(&again).unwrap()
    );
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_@][A-Za-z0-9._@-]{0,63}"
}

fn small_json_object() -> impl Strategy<Value = Option<Map<String, Value>>> {
    prop::option::of(
        prop::collection::btree_map(
            "[a-z]{1,6}",
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                ".{0,8}".prop_map(Value::String),
            ],
            0..4,
        )
        .prop_map(|m| m.into_iter().collect()),
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_string_into_any_decoder(s in ".{0,64}") {
        client_text(&s);
        peer_text(&s);
        tools(&s);
    }

    #[test]
    fn any_json_into_any_decoder(v in json()) {
        let s = v.to_string();
        client_text(&s);
        peer_text(&s);
        tools(&s);
    }

    #[test]
    fn framelike_json_into_the_frame_decoders(v in framelike()) {
        let s = v.to_string();
        client_text(&s);
        peer_text(&s);
        tools(&s);
    }

    #[test]
    fn accepted_names_round_trip(n in name()) {
        prop_assume!(!n.starts_with(['.', '-']));
        prop_assert_eq!(validate_name(&n), Ok(()));
        prop_assert_eq!(Target::parse(&n), Ok(Target::Agent(n.clone())));
        prop_assert_eq!(Target::parse(&format!("#{n}")), Ok(Target::Topic(n.clone())));
        let hello = ClientFrame::Hello(Hello { agent: n.clone(), token: None, v: 1, role: Role::Agent });
        let text = serde_json::to_string(&hello).unwrap();
        match serde_json::from_str::<ClientFrame>(&text) {
            Ok(ClientFrame::Hello(h)) => prop_assert_eq!(h.agent, n),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn any_string_the_name_rules_accept_is_a_name(s in ".{0,80}") {
        if validate_name(&s).is_ok() {
            prop_assert!((1..=64).contains(&s.chars().count()));
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)));
            prop_assert_eq!(Target::parse(&s), Ok(Target::Agent(s.clone())));
        }
        let _ = Target::parse(&s);
    }

    #[test]
    fn send_frames_round_trip(
        req in any::<u64>(), to in ".{0,20}", body in ".{0,40}",
        subject in prop::option::of(".{0,10}"), reply_to in prop::option::of("[0-9A-Z]{26}"),
        kind in prop::sample::select(&[MessageType::Message, MessageType::Task, MessageType::Event][..]),
        priority in prop::sample::select(&[Priority::Low, Priority::Urgent][..]),
        data in small_json_object(),
    ) {
        encodes_back(&ClientFrame::Send(SendRequest {
            req, id: None, to, body, subject, kind, priority, reply_to, data,
        }));
    }

    #[test]
    fn mark_and_hello_frames_round_trip(
        req in any::<u64>(), ids in prop::collection::vec(".{0,8}", 0..4), all in any::<bool>(),
        agent in ".{0,12}", token in prop::option::of(".{0,12}"), v in any::<u32>(),
    ) {
        encodes_back(&ClientFrame::MarkRead(MarkReadRequest { req, ids, all }));
        encodes_back(&ClientFrame::Hello(Hello { agent, token, v, role: Role::Watch }));
    }

    #[test]
    fn peer_frames_round_trip(
        port in any::<u16>(), nodes in prop::collection::vec((".{0,8}", ".{0,16}"), 0..4),
        cursor in any::<u64>(), code in ".{0,8}", message in ".{0,16}", tls in any::<bool>(),
        advertise in prop::option::of(".{0,16}"), hops in any::<u8>(),
    ) {
        let nodes = nodes.into_iter().map(|(node, url)| PeerAddr { node, url }).collect();
        let relay = Some(Wants {
            cursors: vec![OriginCursor { origin: message.clone(), cursor }],
            direct: vec![code.clone()],
        });
        encodes_back(&PeerFrame::Peers { port, tls, nodes, advertise, relay });
        encodes_back(&PeerFrame::Delivered { ids: vec![code.clone()], to: Some(message.clone()), hops });
        encodes_back(&PeerFrame::Sync { cursor, snapshots: tls });
        encodes_back(&PeerFrame::SnapshotEnd { head: cursor, cursors: vec![OriginCursor { origin: code.clone(), cursor }] });
        encodes_back(&PeerFrame::Error { code, message });
    }

    #[test]
    fn timestamps_up_to_year_9999_render(ms in i64::MIN..=253_402_300_799_999i64) {
        prop_assert_eq!(rfc3339(ms).len(), 24);
    }
}

/// Found by fuzzing: `rfc3339` panicked past the year 9999 (humantime refuses to format it),
/// and a peer's `events` or `presence` frame carries such millisecond times unchecked.
#[test]
fn timestamps_past_year_9999_do_not_panic() {
    for ms in [253_402_300_800_000, i64::MAX] {
        assert_eq!(rfc3339(ms), "9999-12-31T23:59:59.999Z");
    }
}
