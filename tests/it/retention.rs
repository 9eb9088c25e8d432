//! Retention, `switchboard prune`, the store's size in /health and /metrics, and a WAL that
//! does not keep the size of the last burst: real node processes on real files.

use std::path::Path;

use serde_json::Value;
use switchboard::client::Client;
use switchboard::protocol::{InboxRequest, SendRequest};

use crate::common::{NodeProc, eventually, health, metric, poll, tempdir};

fn msg(to: &str, body: &str, reply_to: Option<&str>) -> SendRequest {
    SendRequest {
        to: to.into(),
        body: body.into(),
        reply_to: reply_to.map(Into::into),
        ..Default::default()
    }
}

async fn search_ids(c: &Client, q: &str) -> Vec<String> {
    let r = c.search(q.into(), 50).await.unwrap();
    r.messages.into_iter().map(|m| m.id).collect()
}

pub fn wal_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("switchboard.db-wal")).map_or(0, |m| m.len())
}

/// A node with no send limit and these retention flags, and alice and bob on it.
pub async fn alice_and_bob(dir: &Path, retention: &[&str]) -> (NodeProc, Client, Client) {
    let mut args = vec!["--send-rate", "0"];
    args.extend_from_slice(retention);
    let node = NodeProc::start(dir, &args).await;
    let (alice, bob) = (node.client("alice").await, node.client("bob").await);
    (node, alice, bob)
}

#[tokio::test]
async fn read_mail_goes_after_its_retention_and_threads_and_search_stay_whole() {
    let dir = tempdir();
    let (node, alice, bob) = alice_and_bob(dir.path(), &["--retain-read", "1s"]).await;
    let root = alice
        .send(msg("bob", "zebra question", None))
        .await
        .unwrap();
    let reply = bob
        .send(msg("alice", "zebra answer", Some(&root.id)))
        .await
        .unwrap();
    let later = alice.send(msg("bob", "zebra later", None)).await.unwrap();
    // bob reads the question; alice never reads the answer, bob never reads the later one.
    bob.mark_read(vec![root.id.clone()], false).await.unwrap();
    eventually(10, "the read question to be deleted", || async {
        !search_ids(&bob, "zebra").await.contains(&root.id)
    })
    .await;
    // Unread mail stays (the default for unread is never); the thread shows what is left.
    assert_eq!(search_ids(&alice, "zebra").await.len(), 2);
    let thread = alice.thread(reply.id.clone()).await.unwrap().messages;
    assert_eq!(
        thread.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [reply.id.as_str()]
    );
    assert_eq!(thread[0].reply_to.as_deref(), Some(root.id.as_str()));
    let gone = alice.thread(root.id.clone()).await.unwrap_err();
    assert!(gone.to_string().contains("unknown_message"), "{gone}");
    let inbox = bob.inbox(InboxRequest::unread(50)).await.unwrap();
    assert_eq!(inbox.messages.len(), 1);
    assert_eq!(inbox.messages[0].id, later.id);
    let h = health(node.port).await;
    assert_eq!(h["store"]["messages"], 2, "{h}");
    assert_eq!(metric(node.port, "store_messages").await, 2);
}

#[tokio::test]
async fn prune_dry_run_counts_what_prune_then_deletes() {
    let dir = tempdir();
    // Passes never come by themselves here, so what is due waits for the command.
    let retention = ["--retain-read", "1s", "--prune-interval", "1h"];
    let (node, alice, bob) = alice_and_bob(dir.path(), &retention).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = format!("okapi number {i} {}", "x".repeat(1000));
        ids.push(alice.send(msg("bob", &body, None)).await.unwrap().id);
    }
    bob.mark_read(ids[..3].to_vec(), false).await.unwrap();
    let dry: Value = poll(10, "the read messages to be due", || async {
        let out = node.cli(&["prune", "--dry-run", "--json"]).await;
        let v: Value = serde_json::from_str(&out).unwrap();
        (v["messages"] == 3).then_some(v)
    })
    .await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["inbox_rows"], 3);
    assert!(dry["bytes"].as_u64().unwrap() > 3000, "{dry}");
    assert_eq!(dry["retain_read_seconds"], 1);
    assert_eq!(dry["retain_unread_seconds"], Value::Null);
    assert_eq!(health(node.port).await["store"]["messages"], 5);
    let text = node.cli(&["prune", "--dry-run"]).await;
    assert!(text.starts_with("Would delete 3 message(s)"), "{text}");

    let done: Value = serde_json::from_str(&node.cli(&["prune", "--json"]).await).unwrap();
    assert_eq!(
        (done["dry_run"].clone(), done["messages"].clone()),
        (false.into(), 3.into())
    );
    assert!(
        done["store_bytes_after"].as_u64() <= done["store_bytes_before"].as_u64(),
        "{done}"
    );
    assert_eq!(health(node.port).await["store"]["messages"], 2);
    let left = search_ids(&bob, "okapi").await;
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|id| ids[3..].contains(id)), "{left:?}");
    let again: Value = serde_json::from_str(&node.cli(&["prune", "--json"]).await).unwrap();
    assert_eq!(again["messages"], 0);
}

#[tokio::test]
async fn prune_needs_the_local_secret() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    // An agent token of the name the CLI says hello with: authenticated, but no local secret.
    let token = node.cli(&["token", "issue", "cli"]).await;
    let url = node.url();
    let out = crate::common::output(
        tokio::process::Command::new(crate::common::BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--node", &url, "--token", token.trim(), "prune"]),
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prune needs the local secret"), "{err}");
}

#[tokio::test]
async fn the_wal_shrinks_after_a_burst_and_is_empty_after_a_clean_stop() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &["--send-rate", "0"]).await;
    let (alice, _bob) = (node.client("alice").await, node.client("bob").await);
    let body = "y".repeat(2000);
    for chunk in 0..10 {
        let sends = (0..200).map(|i| alice.send(msg("bob", &format!("{chunk} {i} {body}"), None)));
        for r in futures_util::future::join_all(sends).await {
            r.unwrap();
        }
    }
    let h = health(node.port).await;
    assert_eq!(h["store"]["messages"], 2000, "{h}");
    assert_eq!(h["store"]["log_entries"], 0, "{h}");
    assert!(h["store"]["bytes"].as_u64().unwrap() > 4_000_000, "{h}");
    assert_eq!(metric(node.port, "store_messages").await, 2000);
    assert_eq!(metric(node.port, "store_degraded").await, 0);
    eventually(
        15,
        "the WAL to be emptied once the node is quiet",
        || async { wal_bytes(dir.path()) == 0 },
    )
    .await;
    alice.send(msg("bob", "one more", None)).await.unwrap();
    assert!(wal_bytes(dir.path()) > 0);
    drop((alice, _bob));
    assert!(node.terminate().await.success());
    assert_eq!(wal_bytes(dir.path()), 0, "a clean stop leaves an empty WAL");
}
