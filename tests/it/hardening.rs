//! What an adversarial probe found, fixed: names that differ only in case, client-chosen ids,
//! frames that do not decode, and logs that a name could forge.

use serde_json::json;
use switchboard::Error;
use switchboard::protocol::{ErrorCode, SendRequest, TokenAction};

use crate::common::*;

fn msg(to: &str, body: &str) -> SendRequest {
    SendRequest {
        to: to.into(),
        body: body.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn names_that_differ_only_in_case_are_one_agent() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let bob = node.client("bob").await;
    let shouting = node.client("BOB").await;
    let alice = node.client("alice").await;
    // One entry in presence, spelled as first written.
    let who = alice.presence(None).await.unwrap().agents;
    let names: Vec<&str> = who.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"], "{who:?}");
    assert_eq!(
        alice.presence(Some("Bob".into())).await.unwrap().agents[0].name,
        "bob"
    );
    // Mail to any spelling lands in the one inbox, and `from` is the stored spelling.
    let r = alice.send(msg("BoB", "one inbox")).await.unwrap();
    assert_eq!(r.recipients, 1);
    let got = bob.inbox(unread_peek()).await.unwrap().messages;
    assert!(got.iter().any(|m| m.id == r.id), "{got:?}");
    shouting
        .send(msg("alice", "from the loud one"))
        .await
        .unwrap();
    let from: Vec<String> = alice
        .inbox(unread_peek())
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.from)
        .collect();
    assert_eq!(from, ["bob"]);
    // A token for `Bob` is bob's token, valid for every spelling and for nobody else.
    let token = alice
        .token(TokenAction::Issue, Some("Bob".into()))
        .await
        .unwrap();
    assert_eq!(token.names, ["bob"]);
    let token = token.token.unwrap();
    let listed = alice.token(TokenAction::List, None).await.unwrap().names;
    assert_eq!(listed, ["bob"]);
    for spelling in ["bob", "BOB"] {
        let c = node
            .client_opts(spelling, |o| o.token = token.clone())
            .await;
        assert!(c.presence(None).await.is_ok());
    }
    let mut o = switchboard::client::ClientOptions::new(node.url(), "alice", token);
    o.reconnect = false;
    assert!(switchboard::client::Client::connect(o).await.is_err());
}

fn unread_peek() -> switchboard::protocol::InboxRequest {
    switchboard::protocol::InboxRequest::unread(50)
}

#[tokio::test]
async fn client_chosen_ids_stay_within_their_window_and_reveal_nothing() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let alice = node.client("alice").await;
    let mallory = node.client("mallory").await;
    let sent = alice.send(msg("mallory", "mine")).await.unwrap();
    let refusal = |id: &str| {
        let (c, id) = (&mallory, id.to_owned());
        async move {
            let e = c
                .send(SendRequest {
                    id: Some(id.clone()),
                    ..msg("alice", "sorts first?")
                })
                .await
                .unwrap_err();
            let Error::Remote { code, message } = e else {
                panic!("{e}")
            };
            assert_eq!(code, ErrorCode::InvalidArgument);
            message.replace(&id, "ID")
        }
    };
    let zero = refusal("00000000000000000000000000").await;
    assert!(zero.starts_with("id: 'ID' cannot be used"), "{zero}");
    // Another sender's id gets the very same answer as an id that cannot exist.
    assert_eq!(refusal(&sent.id).await, zero);
    assert_eq!(refusal("not-a-ulid").await, zero);
    // Nothing of it was stored: alice's inbox is empty.
    assert!(
        alice
            .inbox(unread_peek())
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

#[tokio::test]
async fn a_frame_too_deep_to_parse_is_answered_with_its_req() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let mut ws = raw_hello(&node, "alice").await;
    let deep = format!(
        r#"{{"op":"send","req":41,"to":"alice","body":"x","data":{{"a":{}{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    send_text(&mut ws, deep).await;
    let e = next_json(&mut ws).await.unwrap();
    assert_eq!(e["code"], "bad_frame", "{e}");
    assert_eq!(e["req"], 41, "{e}");
    // The connection goes on.
    send_text(&mut ws, json!({"op":"ping","req":42}).to_string()).await;
    assert_eq!(
        next_json(&mut ws).await.unwrap(),
        json!({"op":"pong","req":42})
    );
}

#[tokio::test]
async fn a_name_cannot_forge_a_log_line() {
    let dir = tempdir();
    let mut node = NodeProc::start(dir.path(), &[]).await;
    let mut ws = raw(&node.url()).await;
    let forged = "x\n2026-12-02T00:00:00Z  INFO switchboard: node listening FORGED\u{7}";
    send_text(
        &mut ws,
        json!({"op":"hello","agent":forged,"token":"wrong","v":1}).to_string(),
    )
    .await;
    let e = next_json(&mut ws).await.unwrap();
    assert_eq!(e["code"], "invalid_argument", "{e}");
    // The node logs the refusal on one line, with the name escaped: the forged text stays
    // inside that line instead of starting one of its own.
    let line = node
        .log_line_containing("refused a connection", std::time::Duration::from_secs(10))
        .await;
    assert!(
        line.contains("\\n2026-12-02") && line.contains("FORGED"),
        "{line}"
    );
    assert!(!line.contains('\u{7}'), "{line}");
}

#[tokio::test]
async fn a_store_from_before_the_rule_merges_names_that_differ_only_in_case() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let bob = node.client("bob").await;
    let alice = node.client("alice").await;
    let first = alice.send(msg("bob", "to bob")).await.unwrap();
    drop((bob, alice));
    let dir_path = node.kill9().await;
    // What an older version allowed: a second agent `Bob` with mail of its own.
    let db = rusqlite::Connection::open(dir_path.join("switchboard.db")).unwrap();
    db.execute_batch(&format!(
        "INSERT INTO agents (name, node, created_at) SELECT 'Bob', node, created_at + 1 FROM agents WHERE name = 'bob';
         INSERT INTO inbox (agent, msg_id) VALUES ('Bob', '{}');",
        first.id
    ))
    .unwrap();
    drop(db);
    let node = NodeProc::start(&dir_path, &[]).await;
    let alice = node.client("alice").await;
    let names: Vec<String> = alice
        .presence(None)
        .await
        .unwrap()
        .agents
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let bob = node.client("Bob").await;
    let mail = bob.inbox(unread_peek()).await.unwrap().messages;
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(mail[0].id, first.id);
}

#[tokio::test]
async fn search_queries_that_cannot_match_are_invalid_arguments() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let mut ws = raw_hello(&node, "alice").await;
    async fn answer(ws: &mut RawWs, query: &str, req: u64) -> serde_json::Value {
        send_text(
            ws,
            json!({"op":"search","req":req,"query":query}).to_string(),
        )
        .await;
        next_json(ws).await.unwrap()
    }
    let star = answer(&mut ws, "*", 1).await;
    assert_eq!(star["code"], "invalid_argument", "{star}");
    for (i, q) in [".", "???", "* ."].into_iter().enumerate() {
        let e = answer(&mut ws, q, 2 + i as u64).await;
        assert_eq!(e["code"], star["code"], "{q}: {e}");
        assert_eq!(e["message"], star["message"], "{q}: {e}");
    }
    let nul = answer(&mut ws, "hello\u{0}world", 9).await;
    assert_eq!(nul["code"], "invalid_argument", "{nul}");
    assert_eq!(nul["req"], 9, "{nul}");
    let text = nul["message"].as_str().unwrap();
    assert!(text.contains("control characters"), "{text}");
    assert!(!text.to_lowercase().contains("sql"), "{text}");
    // A real word still searches.
    let ok = answer(&mut ws, "hello", 10).await;
    assert_eq!(ok["op"], "messages", "{ok}");
}
