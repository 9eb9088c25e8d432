//! CLI commands with `--data-dir` reach the node that owns it (its config.toml `listen`),
//! `status` says which node that is and whether it runs, and a loopback `--node` with nothing
//! behind it says so.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::*;

async fn sb(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    output(
        tokio::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env("SWITCHBOARD_LOG", "info")
            .env_remove("SWITCHBOARD_NODE"),
    )
    .await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn data_dir_commands_dial_its_node_and_status_tells_which_it_is() {
    let dir = tempdir();
    let port = free_port();
    std::fs::write(
        dir.path().join("config.toml"),
        format!("listen = \"0.0.0.0:{port}\"\nnode_id = \"owner\"\n"),
    )
    .unwrap();
    let o = sb(dir.path(), &["status", "--json"]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["running"], false, "{v}");
    assert_eq!(v["node_id"], "owner");
    assert_eq!(v["listen"], format!("0.0.0.0:{port}"));

    // The node takes its address from config.toml only: no --listen.
    let mut child = tokio::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("node")
        .env("SWITCHBOARD_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(l) = next_line(&mut lines).await {
        if l.contains("node listening") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // The node holds the data dir's lock, so these succeed only by reaching it.
    let o = sb(dir.path(), &["agent", "add", "bob"]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("hosting"), "{}", text(&o.stderr));
    let o = sb(dir.path(), &["status"]).await;
    let s = text(&o.stdout);
    assert!(
        s.contains("owner") && s.contains("running (ws://127.0.0.1:"),
        "{s}"
    );
    let o = sb(dir.path(), &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["running"], true, "{v}");
    assert_eq!(v["health"]["node_id"], "owner");

    // who --online leaves out bob, known but never connected.
    let secret = std::fs::read_to_string(dir.path().join("local.secret")).unwrap();
    let mut o = switchboard::client::ClientOptions::new(
        format!("ws://127.0.0.1:{port}"),
        "alice",
        secret.trim(),
    );
    o.reconnect = false;
    let alice = switchboard::client::Client::connect(o).await.unwrap();
    let o = sb(dir.path(), &["who", "--online"]).await;
    let s = text(&o.stdout);
    assert!(s.contains("alice") && !s.contains("bob"), "{s}");
    let o = sb(dir.path(), &["who"]).await;
    assert!(text(&o.stdout).contains("bob"));
    drop(alice);
    child.kill().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

#[tokio::test]
async fn a_loopback_node_with_nothing_running_says_so() {
    let dir = tempdir();
    let url = format!("ws://127.0.0.1:{}", free_port());
    let o = sb(dir.path(), &["--node", &url, "who"]).await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("no node is running at {url}")),
        "{err}"
    );
    assert!(!err.contains("token"), "{err}");
}
