//! A new user's first minutes (issue 16): the README's first example on a fresh data dir, the
//! unknown-agent hint, and an oversized body refused once, cleanly, by the CLI and by the MCP
//! server.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::*;
use crate::mcp::text;

/// Every `sh` block of the README made only of `switchboard` commands — the first example and
/// "From a shell" — in order, each a list of lines as written. (The other blocks need what a
/// test cannot have: cargo, npx, other machines, port 8765.)
fn readme_cli_blocks() -> Vec<Vec<String>> {
    let readme = include_str!("../../README.md");
    readme
        .split("```sh\n")
        .skip(1)
        .map(|b| {
            b.split("```")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|lines| lines.iter().all(|l| l.starts_with("switchboard ")))
        .collect()
}

/// A shell with the built binary first on PATH and the data dir in the environment.
pub fn shell(dir: &std::path::Path, script: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("sh");
    c.args(["-e", "-c", script]);
    readme_env(&mut c, dir);
    c
}

/// What a README command may be given: the binary on PATH and the data dir, nothing else.
fn readme_env(c: &mut tokio::process::Command, dir: &std::path::Path) {
    let bin_dir = std::path::Path::new(BIN).parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.env("PATH", path)
        .env("SWITCHBOARD_DATA_DIR", dir)
        .env("SWITCHBOARD_LOG", "warn")
        .env_remove("SWITCHBOARD_NODE")
        .env_remove("SWITCHBOARD_TOKEN");
}

/// `switchboard tail …` as written, which follows until Ctrl-C: once a message sent meanwhile
/// shows, the test presses Ctrl-C (SIGINT), and tail must end cleanly.
async fn follow_until_ctrl_c(dir: &std::path::Path, line: &str) {
    let command = line.split(" #").next().unwrap_or_default();
    assert!(!command.contains(['"', '\'']), "a plain command: {command}");
    let mut words = command.split_whitespace().skip(1);
    let mut c = tokio::process::Command::new(BIN);
    c.args(words.by_ref())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    readme_env(&mut c, dir);
    let mut tail = c.spawn().unwrap();
    let mut out = BufReader::new(tail.stdout.take().unwrap()).lines();
    let probe = "are you following?";
    // tail hosts the node (nothing else runs now); a send lands once its session is open.
    let sent = poll(20, "a send while tail runs", || async {
        let o = output(&mut shell(
            dir,
            &format!("switchboard send --as alice --to bob '{probe}'"),
        ))
        .await;
        o.status.success().then_some(())
    });
    sent.await;
    while let Some(l) = next_line(&mut out).await {
        if l.contains(probe) {
            break;
        }
    }
    sigint(tail.id().unwrap());
    let o = finish(tail).await;
    assert!(
        o.status.success(),
        "{line}: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sigint(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_cli_examples_run_in_order_as_written_on_a_fresh_data_dir() {
    let (dir, _) = data_dir_on_free_port();
    let blocks = readme_cli_blocks();
    assert!(blocks.len() >= 2, "{blocks:?}");
    let mut said: Vec<(String, String)> = Vec::new();
    for line in blocks.iter().flatten() {
        if line.starts_with("switchboard tail ") {
            follow_until_ctrl_c(dir.path(), line).await;
            continue;
        }
        let o = output(&mut shell(dir.path(), line)).await;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{line}\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        said.push((line.clone(), out));
    }
    // What the commands said, by the command (a line without its comment) that ran first.
    let of = |command: &str| -> &str {
        said.iter()
            .find(|(l, _)| l.split(" #").next().unwrap_or_default().trim() == command)
            .map(|(_, o)| o.as_str())
            .unwrap_or_else(|| panic!("the README runs no `{command}`"))
    };
    assert!(of("switchboard agent add bob").contains("bob is known"));
    let send = r#"switchboard send --as alice --to bob --subject "PR 7" "can you review?""#;
    assert!(of(send).contains("queued to bob"));
    assert!(of("switchboard inbox --as bob").contains("can you review?"));
    assert!(of("switchboard inbox --as bob --peek").contains("can you review?"));
    let who = of("switchboard who");
    assert!(who.contains("alice") && who.contains("bob"), "{who}");
    assert_eq!(of("switchboard who --online").trim(), "No agent is online.");
    assert!(of("switchboard status").contains("not running"));
    assert!(of("switchboard token issue carol").starts_with("sbt_"));
    assert_eq!(of("switchboard token list").trim(), "carol");
    assert!(of("switchboard token revoke carol").contains("revoked the token of carol"));
    assert!(of("switchboard agent forget carol").contains("forgot carol"));
    let o = output(&mut shell(dir.path(), "switchboard who")).await;
    assert!(!String::from_utf8_lossy(&o.stdout).contains("carol"));
}

#[tokio::test]
async fn an_unknown_agent_nothing_is_close_to_says_how_it_becomes_known() {
    let (dir, _) = data_dir_on_free_port();
    let o = output(&mut shell(
        dir.path(),
        "switchboard send --as alice --to zed hi",
    ))
    .await;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown agent 'zed': no agent of that name has connected yet")
            && err.contains("`switchboard mcp --agent zed`")
            && err.contains("`switchboard agent add zed`. Nothing was sent."),
        "{err}"
    );
    // The command it names does make the name known; a bad name is refused before connecting.
    let o = output(&mut shell(
        dir.path(),
        "switchboard agent add zed && switchboard send --as alice --to zed hi",
    ))
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = output(&mut shell(dir.path(), "switchboard agent add 'no spaces'")).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

const TWO_MB: usize = 2 * 1024 * 1024;

#[tokio::test]
async fn the_cli_refuses_an_oversized_body_before_sending_it() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    drop(node.client("bob").await);
    let send = |body: Vec<u8>| {
        let mut c = tokio::process::Command::new(BIN);
        c.arg("--data-dir")
            .arg(&node.dir)
            .args([
                "--node",
                &node.url(),
                "send",
                "--as",
                "alice",
                "--to",
                "bob",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        async move {
            let mut child = c.spawn().unwrap();
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&body).await.unwrap();
            drop(stdin);
            finish(child).await
        }
    };
    let o = send(vec![b'x'; TWO_MB]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("over the node's limit of 1048576 bytes") && err.contains("[frame_too_large]"),
        "{err}"
    );
    assert!(!err.contains("connection lost"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear error: {err}");
    // Nothing reached the node: it rejected no frame.
    assert_eq!(metric(node.port, "frames_rejected_total").await, 0);
    let o = send(b"small".to_vec()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[derive(Clone)]
struct Quiet;

impl ClientHandler for Quiet {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("switchboard-tests", "0"),
        )
    }
}

async fn call(c: &RunningService<RoleClient, Quiet>, args: serde_json::Value) -> CallToolResult {
    call_tool(c, "send_message", args).await
}

async fn call_tool(
    c: &RunningService<RoleClient, Quiet>,
    tool: &str,
    args: serde_json::Value,
) -> CallToolResult {
    tokio::time::timeout(
        Duration::from_secs(30),
        c.call_tool(
            CallToolRequestParams::new(tool.to_owned())
                .with_arguments(args.as_object().unwrap().clone()),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{tool} did not answer within 30 s"))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_server_refuses_an_oversized_body_once_without_reconnecting() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    drop(node.client("bob").await);
    let (d, url) = (node.dir.clone(), node.url());
    let cmd = tokio::process::Command::new(BIN).configure(move |c| {
        c.arg("--data-dir")
            .arg(&d)
            .args(["mcp", "--agent", "alice", "--node", &url])
            .env("SWITCHBOARD_LOG", "info");
    });
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    let mut lines = BufReader::new(stderr.unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    let mcp = tokio::time::timeout(Duration::from_secs(20), Quiet.serve(transport))
        .await
        .expect("the MCP server did not initialize within 20 s")
        .unwrap();

    let started = Instant::now();
    let r = call(&mcp, json!({"to": "bob", "body": "x".repeat(TWO_MB)})).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let t = text(&r);
    assert!(
        t.contains("[frame_too_large]") && t.contains("limit of 1048576 bytes"),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let r = call(&mcp, json!({"to": "bob", "body": "the next one"})).await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    mcp.cancel().await.unwrap();
    let log = log.lock().unwrap().clone();
    let reconnects = log
        .iter()
        .filter(|l| l.contains("reconnected") || l.contains("lost the connection"))
        .count();
    assert_eq!(reconnects, 0, "no reconnect storm:\n{}", log.join("\n"));
    assert_eq!(metric(node.port, "frames_rejected_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_enum_values_name_the_argument_the_choices_and_the_code() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    drop(node.client("bob").await);
    let (d, url) = (node.dir.clone(), node.url());
    let cmd = tokio::process::Command::new(BIN).configure(move |c| {
        c.arg("--data-dir")
            .arg(&d)
            .args(["mcp", "--agent", "alice", "--node", &url])
            .env("SWITCHBOARD_LOG", "warn");
    });
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mcp = tokio::time::timeout(Duration::from_secs(20), Quiet.serve(transport))
        .await
        .expect("the MCP server did not initialize within 20 s")
        .unwrap();
    for (tool, args, want) in [
        (
            "send_message",
            json!({"to": "bob", "body": "x", "priority": "asap"}),
            "priority: \"asap\" is not one of low, normal, high, urgent [invalid_argument]",
        ),
        (
            "send_message",
            json!({"to": "bob", "body": "x", "type": "memo"}),
            "type: \"memo\" is not one of message, task, result, question, answer, event [invalid_argument]",
        ),
        (
            "set_status",
            json!({"status": "asleep"}),
            "status: \"asleep\" is not one of available, busy, away [invalid_argument]",
        ),
    ] {
        let r = call_tool(&mcp, tool, args).await;
        assert_eq!(r.is_error, Some(true), "{r:?}");
        assert_eq!(text(&r), want);
    }
    let r = call_tool(&mcp, "set_status", json!({"status": "busy"})).await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    mcp.cancel().await.unwrap();
}

/// The Python example exits 1 after a failed `--send` — refused by the node, or not answered
/// because no node is there — instead of running on (it needs `websockets`: CI installs it;
/// elsewhere without it the test says so and checks nothing).
#[tokio::test]
async fn the_python_example_exits_non_zero_after_a_failed_send() {
    if !python_with_websockets().await {
        return;
    }
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_agent.py");
    let nowhere = format!("ws://127.0.0.1:{}", free_port());
    for (url, extra, says) in [
        (node.url(), vec![], "unknown_agent"),
        (
            nowhere,
            vec!["--send-timeout", "1"],
            "no answer to the send within 1",
        ),
    ] {
        let started = Instant::now();
        let o = output(
            tokio::process::Command::new("python3")
                .arg(script)
                .args(["--as", "alice", "--node", &url, "--data-dir"])
                .arg(&node.dir)
                .args(["--send", "nobody", "hi"])
                .args(extra),
        )
        .await;
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&o.stderr);
        eprintln!("the Python example exited {took:?} after it started ({says})");
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{err}");
        // Python's start and one connection; far below the 30 s `output` allows.
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }
}
