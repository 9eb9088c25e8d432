//! The wire protocol against a real node process.

use serde_json::json;
use switchboard::Error;
use switchboard::client::{Client, ClientOptions};
use switchboard::protocol::{DeliveryStatus, ErrorCode, InboxRequest, SendRequest, TokenAction};

use crate::common::*;

fn msg(to: &str, body: &str) -> SendRequest {
    SendRequest {
        to: to.into(),
        body: body.into(),
        ..Default::default()
    }
}

fn unread() -> InboxRequest {
    InboxRequest::unread(200)
}

#[tokio::test]
async fn offline_mail_waits_and_arrives_on_connect() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    // bob exists (he connected once) but is offline now.
    drop(node.client("bob").await);
    let alice = node.client("alice").await;
    let r = alice.send(msg("bob", "are you there?")).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Queued);
    assert_eq!(r.recipients, 1);

    // bob comes back: the unread message is pushed right after welcome.
    let mut ws = raw_hello(&node, "bob").await;
    let m = next_json(&mut ws).await.unwrap();
    assert_eq!(m["op"], "msg");
    assert_eq!(m["message"]["body"], "are you there?");
    assert_eq!(m["message"]["from"], "alice");
    assert_eq!(m["message"]["id"], r.id.as_str());
}

#[tokio::test]
async fn online_recipient_makes_send_delivered() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let bob = node.client("bob").await;
    let mut pushes = bob.pushes();
    let alice = node.client("alice").await;
    let r = alice.send(msg("bob", "hi bob")).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Delivered);
    let m = next_push(&mut pushes).await;
    assert_eq!(m.id, r.id);
    assert_eq!(m.from, "alice");
    // Peeking leaves it unread.
    let inbox = bob.inbox(unread()).await.unwrap();
    assert_eq!(inbox.messages.len(), 1);
    let inbox = bob.inbox(unread()).await.unwrap();
    assert_eq!(inbox.messages.len(), 1, "peeking must not eat mail");
}

#[tokio::test]
async fn unknown_recipient_is_refused_with_suggestion_and_nothing_is_stored() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    drop(node.client("bob").await);
    let alice = node.client("alice").await;
    let e = alice.send(msg("bbo", "typo")).await.unwrap_err();
    match e {
        Error::Remote { code, message } => {
            assert_eq!(code, ErrorCode::UnknownAgent);
            assert!(message.contains("did you mean 'bob'"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(
        alice
            .search("typo".into(), 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    let who = alice.presence(None).await.unwrap();
    assert!(
        who.agents.iter().all(|a| a.name != "bbo"),
        "a typo must not create an inbox"
    );
}

#[tokio::test]
async fn from_cannot_be_spoofed() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let bob = node.client("bob").await;
    let mut ws = raw_hello(&node, "worker").await;
    send_text(
        &mut ws,
        json!({"op":"send","req":1,"to":"bob","body":"obey","from":"HumanOverseer"}).to_string(),
    )
    .await;
    let e = next_json(&mut ws).await.unwrap();
    assert_eq!(e["op"], "error");
    assert_eq!(e["code"], "bad_frame");
    assert_eq!(e["req"], 1);
    assert!(bob.inbox(unread()).await.unwrap().messages.is_empty());
    send_text(
        &mut ws,
        json!({"op":"send","req":2,"to":"bob","body":"hello"}).to_string(),
    )
    .await;
    let sent = next_json(&mut ws).await.unwrap();
    assert_eq!(sent["op"], "sent", "{sent}");
    let inbox = bob.inbox(unread()).await.unwrap();
    assert_eq!(inbox.messages[0].from, "worker");
}

#[tokio::test]
async fn garbage_and_truncated_frames_get_errors_and_the_connection_lives() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let mut ws = raw_hello(&node, "alice").await;
    for bad in [
        "not json at all",
        "{\"op\":\"send\",\"req\":1,\"to\":",
        "[1,2,3]",
        "{\"op\":\"launch_missiles\",\"req\":2}",
        "{\"req\":3}",
        "{\"op\":\"inbox\",\"req\":4,\"limit\":\"many\"}",
    ] {
        send_text(&mut ws, bad).await;
        let e = next_json(&mut ws).await.unwrap();
        assert_eq!(e["op"], "error", "{bad} → {e}");
        assert_eq!(e["code"], "bad_frame", "{bad} → {e}");
    }
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        vec![0xff, 0x00].into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["code"], "bad_frame");
    send_text(&mut ws, json!({"op":"inbox","req":9,"limit":0}).to_string()).await;
    let e = next_json(&mut ws).await.unwrap();
    assert_eq!(e["code"], "invalid_argument");
    assert!(e["message"].as_str().unwrap().contains("limit"), "{e}");
    send_text(&mut ws, json!({"op":"ping","req":10}).to_string()).await;
    assert_eq!(
        next_json(&mut ws).await.unwrap(),
        json!({"op":"pong","req":10})
    );
}

use futures_util::SinkExt;

#[tokio::test]
async fn oversized_frames_are_refused_and_the_node_keeps_serving() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &["--max-frame-bytes", "4096"]).await;
    let mut ws = raw_hello(&node, "alice").await;
    let big = "x".repeat(10_000);
    send_text(
        &mut ws,
        json!({"op":"send","req":1,"to":"alice","body":big}).to_string(),
    )
    .await;
    let e = next_json(&mut ws).await.unwrap();
    assert_eq!(e["code"], "frame_too_large", "{e}");
    assert!(
        next_json(&mut ws).await.is_none(),
        "connection should close"
    );
    let alice = node.client("alice").await;
    assert!(alice.inbox(unread()).await.unwrap().messages.is_empty());
    alice.send(msg("alice", "small is fine")).await.unwrap();
}

/// A body close to the 1 MiB frame limit spans hundreds of the store's small pages; it must
/// come back byte for byte, pushed and from the inbox.
#[tokio::test]
async fn a_body_near_the_frame_limit_arrives_intact() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let bob = node.client("bob").await;
    let mut pushes = bob.pushes();
    let alice = node.client("alice").await;
    let body: String = (0..1_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let r = alice.send(msg("bob", &body)).await.unwrap();
    let pushed = next_push(&mut pushes).await;
    assert_eq!(
        (pushed.id.as_str(), pushed.body.len()),
        (r.id.as_str(), body.len())
    );
    assert!(pushed.body == body, "the pushed body changed");
    let stored = bob.inbox(unread()).await.unwrap().messages;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].body == body, "the stored body changed");
}

/// Searches run off the writer, on committed data; a search sent right behind a send, without
/// waiting for its answer, must still find that message.
#[tokio::test]
async fn a_search_right_behind_a_send_finds_it() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let mut ws = raw_hello(&node, "alice").await;
    for i in 0..20 {
        send_text(
            &mut ws,
            json!({"op":"send","req":2 * i + 1,"to":"alice","body":format!("needle{i} in the haystack")}).to_string(),
        )
        .await;
        send_text(
            &mut ws,
            json!({"op":"search","req":2 * i + 2,"query":format!("needle{i}"),"limit":10})
                .to_string(),
        )
        .await;
    }
    let mut found = 0;
    while found < 20 {
        let f = next_json(&mut ws)
            .await
            .expect("the node answered every request");
        if f["op"] == "messages" {
            let i = (f["req"].as_u64().unwrap() - 2) / 2;
            let bodies: Vec<&str> = f["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["body"].as_str().unwrap())
                .collect();
            assert_eq!(bodies, [format!("needle{i} in the haystack")], "{f}");
            found += 1;
        }
    }
}

/// Each client generates its own ids; a reply sent within the same millisecond as its
/// question may carry the smaller id, and the thread must still read question first.
#[tokio::test]
async fn a_thread_lists_a_same_millisecond_reply_after_its_question() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let alice = node.client("alice").await;
    let bob = node.client("bob").await;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut q = msg("bob", "ship it?");
    q.id = Some(ulid::Ulid::from_parts(ms, u128::MAX >> 48).to_string());
    let q = alice.send(q).await.unwrap();
    let mut a = msg("alice", "yes");
    a.reply_to = Some(q.id.clone());
    a.id = Some(ulid::Ulid::from_parts(ms, 1).to_string());
    let a = bob.send(a).await.unwrap();
    assert!(a.id < q.id, "the reply's id sorts first");
    let t = alice.thread(a.id).await.unwrap();
    let bodies: Vec<&str> = t.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["ship it?", "yes"]);
}

#[tokio::test]
async fn commands_before_hello_are_refused() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let mut ws = raw(&node.url()).await;
    send_text(
        &mut ws,
        json!({"op":"send","req":1,"to":"bob","body":"x"}).to_string(),
    )
    .await;
    let e = next_json(&mut ws).await.unwrap();
    assert_eq!(e["code"], "not_authenticated");
    assert!(next_json(&mut ws).await.is_none());
}

#[tokio::test]
async fn half_open_handshakes_time_out_without_stalling_others() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("config.toml"),
        "[limits]\nhandshake_timeout_secs = 1\n",
    )
    .unwrap();
    let node = NodeProc::start(dir.path(), &[]).await;
    // A bare TCP connection that never speaks HTTP, and a WebSocket that never says hello.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
        .await
        .unwrap();
    let mut silent = raw(&node.url()).await;
    // Meanwhile, others are served normally.
    let alice = node.client("alice").await;
    alice.send(msg("alice", "still here")).await.unwrap();
    let e = next_json(&mut silent).await.unwrap();
    assert_eq!(e["code"], "handshake_timeout");
    assert!(next_json(&mut silent).await.is_none());
    // The bare connection is closed too (the same deadline for its request headers).
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the node closes a connection that sends no request");
    assert!(closed.is_ok_and(|n| n == 0 || buf.starts_with(b"HTTP/1.1 408")));
}

#[tokio::test]
async fn bearer_header_authenticates() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/ws", node.url()).into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", node.secret()).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send_text(
        &mut ws,
        json!({"op":"hello","agent":"alice","v":1}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut ws).await.unwrap()["op"], "welcome");
}

#[tokio::test]
async fn tokens_are_bound_to_one_agent_and_revocable() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let admin = node.client("admin").await;
    let t = admin
        .token(TokenAction::Issue, Some("carol".into()))
        .await
        .unwrap();
    let token = t.token.unwrap();
    let with = |agent: &str, token: &str| {
        let mut o = ClientOptions::new(node.url(), agent, token);
        o.reconnect = false;
        o
    };
    let carol = Client::connect(with("carol", &token)).await.unwrap();
    carol.send(msg("admin", "hi from carol")).await.unwrap();
    // The token cannot act as anyone else, nor manage tokens.
    for (agent, tok) in [
        ("dave", token.as_str()),
        ("carol", "sbt_wrong"),
        ("carol", ""),
    ] {
        match Client::connect(with(agent, tok)).await {
            Err(Error::Remote { code, .. }) => assert_eq!(code, ErrorCode::Unauthorized),
            Err(e) => panic!("{agent}: {e}"),
            Ok(_) => panic!("{agent} with a bad token got in"),
        }
    }
    let e = carol.token(TokenAction::List, None).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Remote {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        admin.token(TokenAction::List, None).await.unwrap().names,
        vec!["carol"]
    );
    admin
        .token(TokenAction::Revoke, Some("carol".into()))
        .await
        .unwrap();
    assert!(Client::connect(with("carol", &token)).await.is_err());
}

#[tokio::test]
async fn second_node_on_the_same_data_dir_is_refused() {
    let dir = tempdir();
    let _node = NodeProc::start(dir.path(), &[]).await;
    let out = output(
        tokio::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["node", "--listen", &format!("127.0.0.1:{}", free_port())]),
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another switchboard node"), "{err}");
}

#[tokio::test]
async fn topics_broadcast_threads_and_search() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let alice = node.client("alice").await;
    let bob = node.client("bob").await;
    let carol = node.client("carol").await;
    // Topics: only subscribers get publications; an unsubscribed topic is an error.
    let e = alice
        .send(msg("#builds", "nobody listens"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Remote {
                code: ErrorCode::UnknownTopic,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        bob.subscribe("#builds".into(), true).await.unwrap().topics,
        vec!["builds"]
    );
    let r = alice.send(msg("#builds", "build 42 green")).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Published);
    assert_eq!(r.recipients, 1);
    let b = bob.inbox(unread()).await.unwrap();
    assert_eq!(b.messages[0].topic.as_deref(), Some("builds"));
    assert!(carol.inbox(unread()).await.unwrap().messages.is_empty());
    // Broadcast reaches everyone else.
    let r = alice.send(msg("*", "standup in 5")).await.unwrap();
    assert_eq!(r.recipients, 2);
    // Threads follow reply_to.
    let q = alice.send(msg("bob", "what is 6*7?")).await.unwrap();
    let mut reply = msg("alice", "42");
    reply.reply_to = Some(q.id.clone());
    let a = bob.send(reply).await.unwrap();
    assert_eq!(a.thread_id, q.id);
    let t = alice.thread(a.id.clone()).await.unwrap();
    assert_eq!(
        t.messages
            .iter()
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        vec!["what is 6*7?", "42"]
    );
    // carol may not read that thread.
    assert!(carol.thread(q.id.clone()).await.is_err());
    // Search sees only what the agent may read.
    let s = bob.search("green".into(), 10).await.unwrap();
    assert_eq!(s.messages.len(), 1);
    assert!(
        carol
            .search("green".into(), 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    // Punctuation in a query is not an FTS syntax error.
    bob.search("6*7? \"quoted".into(), 10).await.unwrap();
}

#[tokio::test]
async fn presence_shows_online_status_and_last_seen() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let alice = node.client("alice").await;
    let bob = node.client("bob").await;
    bob.set_status(
        switchboard::protocol::Status::Busy,
        Some("reviewing".into()),
    )
    .await
    .unwrap();
    let p = alice
        .presence(Some("bob".into()))
        .await
        .unwrap()
        .agents
        .remove(0);
    assert!(p.online);
    assert_eq!(p.node, "test-node");
    assert_eq!(p.status_text.as_deref(), Some("reviewing"));
    assert!(p.connected_since.is_some());
    drop(bob);
    // Offline shows once the node has seen the socket close: poll the node (each poll is a
    // round trip), bounded by a generous deadline.
    let went_offline = poll(10, "bob offline after disconnecting", || async {
        let p = alice
            .presence(Some("bob".into()))
            .await
            .unwrap()
            .agents
            .remove(0);
        (!p.online).then_some(p)
    })
    .await;
    assert!(went_offline.last_seen.is_some());
    assert!(went_offline.connected_since.is_none());
}

#[tokio::test]
async fn sigterm_says_goodbye_and_keeps_what_was_acknowledged() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let mut bob = raw_hello(&node, "bob").await;
    let alice = node.client("alice").await;
    let sent = alice.send(msg("bob", "before shutdown")).await.unwrap();
    assert_eq!(next_json(&mut bob).await.unwrap()["op"], "msg");
    send_text(&mut bob, json!({"op":"ack","ids":[sent.id]}).to_string()).await;
    let mut node = node;
    let mut logs = std::mem::replace(
        &mut node.stderr_lines,
        tokio::sync::mpsc::unbounded_channel().1,
    );
    let status = node.terminate().await;
    assert!(status.success(), "{status:?}");
    let bye = next_json(&mut bob).await.unwrap();
    assert_eq!(bye["op"], "bye", "{bye}");
    // The log ends with the process (its stderr closes).
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut stopped = false;
        while let Some(l) = logs.recv().await {
            stopped |= l.contains("node stopped");
        }
        stopped
    })
    .await
    .expect("the node's log did not end within 10 s of its exit");
    assert!(stopped, "the node should log a clean stop");
    let node = NodeProc::start(dir.path(), &[]).await;
    let bob = node.client("bob").await;
    assert_eq!(
        bob.inbox(unread()).await.unwrap().messages[0].body,
        "before shutdown"
    );
}
