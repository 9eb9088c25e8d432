//! `switchboard agent forget NAME` (issue 16, item 6): a forgotten agent leaves presence and
//! "did you mean", with its token, subscriptions and unread mail, on every node of the mesh;
//! it is refused while the agent has a session anywhere; `agent add` brings the name back.

use std::process::Output;

use serde_json::{Value, json};
use switchboard::client::Client;
use switchboard::protocol::{Role, SendRequest};

use crate::cli::{sb, stderr, stdout};
use crate::common::*;
use crate::mesh::{Mesh, msg};

/// The names `who --json` lists at `node`.
async fn who(node: &NodeProc) -> Vec<String> {
    let o = sb(node, &["who", "--json"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

fn failed_with(o: &Output, code: &str) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("[{code}]")), "{err}");
    err
}

/// A one-shot (`cli`) client of `node`, which is no presence of its own.
async fn cli(node: &NodeProc) -> Client {
    node.client_opts("cli", |o| o.role = Role::Cli).await
}

/// What the node answers to a hello with `token` as `agent`: `welcome` or an error code.
async fn hello_with(node: &NodeProc, agent: &str, token: &str) -> String {
    let mut ws = raw(&node.url()).await;
    send_text(
        &mut ws,
        json!({"op":"hello","agent":agent,"token":token,"v":1}).to_string(),
    )
    .await;
    let answer = next_json(&mut ws).await.expect("an answer to hello");
    match answer["op"].as_str() {
        Some("error") => answer["code"].as_str().unwrap_or_default().to_owned(),
        other => other.unwrap_or_default().to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_agent_is_gone_from_who_suggestions_tokens_and_topics_until_added_again() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let o = sb(&node, &["token", "issue", "bob"]).await;
    let token = stdout(&o).trim().to_owned();
    let bob = node.client("bob").await;
    bob.subscribe("ops".into(), true).await.unwrap();
    let carol = node.client("carol").await;
    let from_bob = bob.send(msg("carol", "bob was here")).await.unwrap();
    let alice = node.client("alice").await;
    let to_bob = alice.send(msg("bob", "question for bob")).await.unwrap();
    drop(alice);

    // While bob has a session, he cannot be forgotten, and nothing changes.
    let err = failed_with(
        &sb(&node, &["agent", "forget", "bob"]).await,
        "agent_online",
    );
    assert!(err.contains("has a session open"), "{err}");
    let unread_before = bob.inbox(crate::mesh::unread(10)).await.unwrap().messages;
    drop(bob);
    eventually(10, "bob offline", || async {
        let p = cli(&node).await.presence(Some("bob".into())).await;
        p.is_ok_and(|p| !p.agents[0].online)
    })
    .await;
    assert_eq!(unread_before.len(), 1, "{unread_before:?}");

    // Only the local secret may forget; a typo is an unknown agent with a suggestion.
    let mut ws = raw(&node.url()).await;
    send_text(
        &mut ws,
        json!({"op":"hello","agent":"bob","token":token,"v":1,"role":"cli"}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut ws).await.unwrap()["op"], "welcome");
    send_text(&mut ws, r#"{"op":"forget","req":1,"name":"bob"}"#).await;
    let refused = next_json(&mut ws).await.unwrap();
    assert_eq!(refused["code"], "forbidden", "{refused}");
    drop(ws);
    let err = failed_with(
        &sb(&node, &["agent", "forget", "bbo"]).await,
        "unknown_agent",
    );
    assert!(err.contains("did you mean 'bob'?"), "{err}");

    let o = sb(&node, &["agent", "forget", "bob"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("forgot bob") && stdout(&o).contains("1 unread message is gone"),
        "{}",
        stdout(&o)
    );
    assert!(!who(&node).await.contains(&"bob".to_owned()));
    // Forgetting again (a retry, in any case) is success, not "unknown".
    let o = sb(&node, &["agent", "forget", "BOB"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "forgot bob: no longer known, on any node"
    );
    // No suggestion of bob, no token, no topic of his, and a send to him is refused.
    let err = failed_with(
        &sb(&node, &["send", "--as", "alice", "--to", "bobb", "hi"]).await,
        "unknown_agent",
    );
    assert!(!err.contains("'bob'"), "{err}");
    failed_with(
        &sb(&node, &["send", "--as", "alice", "--to", "#ops", "hi"]).await,
        "unknown_topic",
    );
    assert!(!stdout(&sb(&node, &["token", "list"]).await).contains("bob"));
    assert_eq!(hello_with(&node, "bob", &token).await, "unauthorized");
    // What others sent and got stays: carol's mail from bob, alice's thread to him.
    let got = carol.inbox(crate::mesh::unread(10)).await.unwrap().messages;
    assert_eq!(got[0].id, from_bob.id);
    let alice = node.client("alice").await;
    assert_eq!(
        alice.thread(to_bob.id.clone()).await.unwrap().messages[0].id,
        to_bob.id
    );
    drop(alice);

    // A restart remembers the forget; `agent add` brings the name back with an empty inbox.
    let dir_path = node.dir.clone();
    let port = node.port;
    drop(carol);
    node.terminate().await;
    let node = NodeProc::start_on(&dir_path, port, &[]).await;
    assert!(!who(&node).await.contains(&"bob".to_owned()));
    let o = sb(&node, &["agent", "add", "bob"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(who(&node).await.contains(&"bob".to_owned()));
    let o = sb(&node, &["inbox", "--as", "bob"]).await;
    assert_eq!(stdout(&o).trim(), "No unread messages.");
    let o = sb(
        &node,
        &["send", "--as", "alice", "--to", "bob", "welcome back"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_replicates_and_a_later_add_wins_everywhere() {
    let mesh = Mesh::start(2).await;
    let (n1, n2) = (mesh.node(0), mesh.node(1));
    let token = stdout(&sb(n1, &["token", "issue", "bob"]).await)
        .trim()
        .to_owned();
    let bob = mesh.client(0, "bob").await;
    bob.subscribe("ops".into(), true).await.unwrap();
    let alice = mesh.client(1, "alice").await;
    // bob is online at n1: n2 refuses to forget him.
    eventually(10, "n2 to see bob online", || async {
        crate::mesh::online_at(&alice, "bob").await.as_deref() == Some("n1")
    })
    .await;
    failed_with(&sb(n2, &["agent", "forget", "bob"]).await, "agent_online");
    drop(bob);
    eventually(10, "n2 to see bob offline", || async {
        crate::mesh::online_at(&alice, "bob").await.is_none()
    })
    .await;
    let queued = alice
        .send(SendRequest {
            to: "bob".into(),
            body: "waits for bob".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually(10, "the mail for bob at n1", || async {
        stdout(&sb(n1, &["inbox", "--as", "bob", "--peek", "--json"]).await).contains(&queued.id)
    })
    .await;

    let o = sb(n2, &["agent", "forget", "bob"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    // n1 forgets him too: presence, token, topic, inbox.
    eventually(10, "n1 to forget bob", || async {
        !who(n1).await.contains(&"bob".to_owned())
    })
    .await;
    assert_eq!(hello_with(n1, "bob", &token).await, "unauthorized");
    failed_with(
        &sb(n1, &["send", "--as", "carol", "--to", "#ops", "hi"]).await,
        "unknown_topic",
    );
    // A later add, at the other node, brings him back on both.
    let o = sb(n1, &["agent", "add", "bob"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    eventually(10, "n2 to know bob again", || async {
        who(n2).await.contains(&"bob".to_owned())
    })
    .await;
    for n in [n1, n2] {
        let o = sb(n, &["inbox", "--as", "bob", "--peek"]).await;
        assert_eq!(stdout(&o).trim(), "No unread messages.", "at {}", n.port);
    }
    drop(alice);
}
