//! The embedded default: `switchboard mcp` without --node hosts the node when none runs, and
//! another one takes over when the host exits — losing nothing.

use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::mcp::{ok, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_mcp_hosts_the_node_and_another_takes_over_when_it_dies() {
    let (dir, port) = data_dir_on_free_port();

    // alice's MCP finds no node and hosts it; bob's connects to it.
    let (alice, _) = spawn(dir.path(), "alice", None).await;
    let (bob, _) = spawn(dir.path(), "bob", None).await;
    let health = health(port).await;
    assert_eq!(health["agents_online"], 2, "{health}");

    let sent = ok(
        &alice,
        "send_message",
        json!({"to":"bob","body":"before takeover"}),
    )
    .await;
    assert_eq!(sent["status"], "delivered");
    // A message for carol waits in the store across the takeover.
    drop(
        switchboard::client::Client::connect({
            let mut o = switchboard::client::ClientOptions::new(
                format!("ws://127.0.0.1:{port}"),
                "carol",
                std::fs::read_to_string(dir.path().join("local.secret")).unwrap(),
            );
            o.reconnect = false;
            o
        })
        .await
        .unwrap(),
    );
    ok(
        &alice,
        "send_message",
        json!({"to":"carol","body":"kept for carol"}),
    )
    .await;

    // The host goes away (its client closes stdin, the usual way an agent session ends).
    alice.cancel().await.unwrap();

    // bob's MCP takes over: his tool calls keep working, and nothing was lost.
    let gone = std::time::Instant::now();
    let took_over = poll(10, "bob's MCP to take over hosting", || async {
        let r = crate::mcp::call(&bob, "presence", json!({})).await;
        (r.is_error != Some(true)).then(|| r.structured_content.unwrap())
    })
    .await;
    assert_takeover_within_contract(gone.elapsed());
    let names: Vec<&str> = took_over["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"carol"), "{names:?}");
    let back = ok(
        &bob,
        "send_message",
        json!({"to":"carol","body":"after takeover"}),
    )
    .await;
    assert_eq!(back["status"], "queued");

    // carol finds both messages: the one from before the takeover and the one after.
    let (carol, _) = spawn(dir.path(), "carol", None).await;
    let inbox = ok(&carol, "get_inbox", json!({})).await;
    let bodies: Vec<&str> = inbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["kept for carol", "after takeover"]);
    bob.cancel().await.unwrap();
    carol.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_is_replaced_and_acknowledged_mail_survives() {
    let (dir, _) = data_dir_on_free_port();
    // The host: a raw `switchboard mcp` process we can kill -9.
    let mut host = tokio::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["mcp", "--agent", "host"])
        .env_remove("SWITCHBOARD_NODE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut log = tokio::io::BufReader::new(host.stderr.take().unwrap()).lines();
    while let Some(l) = next_line(&mut log).await {
        if l.contains("hosting it in this process") {
            break;
        }
    }
    let (bob, _) = spawn(dir.path(), "bob", None).await;
    let (carol, _) = spawn(dir.path(), "carol", None).await;
    let sent = ok(
        &bob,
        "send_message",
        json!({"to":"carol","body":"survives kill -9"}),
    )
    .await;
    assert_eq!(sent["status"], "delivered");
    host.kill().await.unwrap();
    // bob or carol hosts now; both keep working and the message is there.
    let gone = std::time::Instant::now();
    let inbox = poll(10, "a survivor to host the node", || async {
        let r = crate::mcp::call(&carol, "get_inbox", json!({})).await;
        (r.is_error != Some(true)).then(|| r.structured_content.unwrap())
    })
    .await;
    assert_takeover_within_contract(gone.elapsed());
    assert_eq!(inbox["messages"][0]["body"], "survives kill -9");
    let after = ok(&bob, "send_message", json!({"to":"carol","body":"after"})).await;
    assert_eq!(after["status"], "delivered");
    bob.cancel().await.unwrap();
    carol.cancel().await.unwrap();
}

/// The contract: another `switchboard mcp` of the data dir hosts the node within 2 s of the
/// host's exit, measured here up to the first tool call that the new host answered.
fn assert_takeover_within_contract(took: Duration) {
    assert!(
        took <= Duration::from_secs(2),
        "takeover took {took:?}; the contract allows 2 s"
    );
}
