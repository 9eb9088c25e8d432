//! The command line as a user runs it: exit codes, output, errors.

use std::process::Output;

use crate::common::*;

pub async fn sb(node: &NodeProc, args: &[&str]) -> Output {
    output(
        tokio::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(&node.dir)
            .args(["--node", &node.url()])
            .args(args),
    )
    .await
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn send_inbox_who_and_tokens_from_the_shell() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    drop(node.client("bob").await);

    let o = sb(
        &node,
        &[
            "send",
            "--as",
            "alice",
            "--to",
            "bob",
            "--subject",
            "hi",
            "hello bob",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("queued to bob"), "{}", stdout(&o));

    let o = sb(&node, &["send", "--as", "alice", "--to", "bbo", "typo"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("did you mean 'bob'"), "{}", stderr(&o));

    let o = sb(
        &node,
        &[
            "send",
            "--as",
            "alice",
            "--to",
            "bob",
            "--priority",
            "asap",
            "x",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--priority"), "{}", stderr(&o));

    let o = sb(&node, &["send", "--bogus-flag"]).await;
    assert_eq!(o.status.code(), Some(2));

    // A hook can count mail cheaply without reading it.
    let o = sb(&node, &["inbox", "--as", "bob", "--count"]).await;
    assert_eq!(stdout(&o).trim(), "1");
    let o = sb(&node, &["inbox", "--as", "bob", "--peek"]).await;
    assert!(stdout(&o).contains("hello bob"), "{}", stdout(&o));
    let o = sb(&node, &["inbox", "--as", "bob", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["messages"][0]["subject"], "hi");
    let o = sb(&node, &["inbox", "--as", "bob"]).await;
    assert_eq!(stdout(&o).trim(), "No unread messages.");

    let o = sb(&node, &["who", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"alice") && names.contains(&"bob"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"cli"),
        "CLI commands are not agents: {names:?}"
    );

    let o = sb(&node, &["token", "issue", "carol"]).await;
    let token = stdout(&o).trim().to_owned();
    assert!(token.starts_with("sbt_"), "{token}");
    let o = sb(&node, &["token", "list"]).await;
    assert_eq!(stdout(&o).trim(), "carol");
    // The token acts as carol only.
    let o = sb(
        &node,
        &[
            "--token",
            &token,
            "send",
            "--as",
            "carol",
            "--to",
            "bob",
            "from carol",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb(
        &node,
        &[
            "--token", &token, "send", "--as", "bob", "--to", "carol", "spoof",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not valid for agent 'bob'"),
        "{}",
        stderr(&o)
    );
    let o = sb(&node, &["token", "revoke", "carol"]).await;
    assert!(o.status.success());
}

#[tokio::test]
async fn body_from_stdin() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let mut child = tokio::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&node.dir)
        .args([
            "--node",
            &node.url(),
            "send",
            "--as",
            "alice",
            "--to",
            "alice",
            "--json",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line one\nline two\n").await.unwrap();
    drop(stdin);
    let o = finish(child).await;
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "queued");
    let alice = node.client("alice").await;
    let m = alice
        .thread(v["id"].as_str().unwrap().to_owned())
        .await
        .unwrap();
    assert_eq!(m.messages[0].body, "line one\nline two\n");
}

#[tokio::test]
async fn unreachable_node_is_a_clear_error() {
    let dir = tempdir();
    let url = format!("ws://127.0.0.1:{}", free_port());
    let o = output(
        tokio::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--node", &url, "--token", "x", "who"]),
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach the switchboard node"));
}

/// Starts `switchboard tail --as agent`; its stdout lines.
fn start_tail(
    node: &NodeProc,
    agent: &str,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut tail = tokio::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&node.dir)
        .args(["--node", &node.url(), "tail", "--as", agent])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    (tail, lines)
}

/// Reads tail's output until `body` shows up; what it printed.
async fn tail_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    body: &str,
) -> String {
    let mut seen = String::new();
    while !seen.lines().any(|l| l == body) {
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("tail did not show {body:?} in 10 s; it showed:\n{seen}"))
            .unwrap()
            .expect("tail ended early");
        seen.push_str(&line);
        seen.push('\n');
    }
    seen
}

#[tokio::test]
async fn tail_follows_an_agents_mail_and_makes_a_new_name_known() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    // carol has never connected: following her makes her a known name, so mail to her is
    // accepted, and it is shown as it arrives.
    let (mut tail, mut lines) = start_tail(&node, "carol");
    let alice = node.client("alice").await;
    let req = |body: &str| switchboard::protocol::SendRequest {
        to: "carol".into(),
        body: body.into(),
        ..Default::default()
    };
    eventually(5, "carol known", || async {
        alice.send(req("first")).await.is_ok()
    })
    .await;
    let seen = tail_until(&mut lines, "first").await;
    assert!(seen.contains("from alice  to carol"), "{seen}");
    // A watcher is not presence: carol is not online.
    let o = sb(&node, &["who", "--json"]).await;
    let who: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let carol = who["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == "carol"))
        .cloned();
    assert_eq!(
        carol.map(|c| c["online"].clone()),
        Some(false.into()),
        "{who}"
    );
    let _ = tail.kill().await;
    // Mail that came while nobody was following is shown when tail starts, still unread.
    alice.send(req("while away")).await.unwrap();
    let (mut tail, mut lines) = start_tail(&node, "carol");
    let seen = tail_until(&mut lines, "while away").await;
    // Each unread message is shown once, though the node also replays it at connect.
    assert_eq!(seen.lines().filter(|l| *l == "first").count(), 1, "{seen}");
    let _ = tail.kill().await;
    let o = sb(&node, &["inbox", "--as", "carol", "--peek"]).await;
    assert!(stdout(&o).contains("while away"), "{}", stdout(&o));
    drop(alice);
    // The name is stored, not just remembered: it is still known after a restart.
    node.terminate().await;
    let node = NodeProc::start(dir.path(), &[]).await;
    let o = sb(&node, &["send", "--as", "alice", "--to", "carol", "again"]).await;
    assert!(stdout(&o).starts_with("queued to carol"), "{}", stderr(&o));
}
