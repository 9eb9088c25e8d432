//! Send → channel event: how long a message takes from `send` to its
//! `notifications/claude/channel` line on the recipient's `switchboard mcp` stdout.
//!
//! The recipient is a real `switchboard mcp --push channel` process read line by line (as Claude
//! Code reads it), the sender a wire client. `--push-burst` is raised so that the rounds, one
//! right after another, are each pushed on their own instead of being summarised as the burst
//! they are; the path measured is the same.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::procs::opts;
use super::stats::Stats;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::mcp::channel::METHOD;
use crate::protocol::SendRequest;

const RECIPIENT: &str = "bench-channel-b";

/// Times `rounds` sends, each until its channel event arrives.
pub(super) async fn channel_rounds(url: &str, token: &str, rounds: usize) -> Result<Stats> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the switchboard binary", e))?;
    let mut child = tokio::process::Command::new(exe)
        .args(["mcp", "--agent", RECIPIENT, "--node", url, "--token", token])
        .args([
            "--push",
            "channel",
            "--push-burst",
            &(rounds + 1).to_string(),
        ])
        .env("SWITCHBOARD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io("starting switchboard mcp", e))?;
    let lost = || Error::Connection("the channel bench's MCP server went away".into());
    let mut stdin = child.stdin.take().ok_or_else(lost)?;
    let stdout = child.stdout.take().ok_or_else(lost)?;
    // Each event's message id (none for a summary) and the moment its line was read.
    let (tx, mut events) = mpsc::unbounded_channel::<(Option<String>, Instant)>();
    let (answered_tx, answered) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut answered_tx = Some(answered_tx);
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let at = Instant::now();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v.get("id").is_some() {
                if let Some(t) = answered_tx.take() {
                    let _ = t.send(());
                }
            } else if v["method"] == METHOD {
                let id = v["params"]["meta"]["message_id"]
                    .as_str()
                    .map(str::to_owned);
                if tx.send((id, at)).is_err() {
                    return;
                }
            }
        }
    });
    let init = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},
        "clientInfo":{"name":"switchboard-bench","version":env!("CARGO_PKG_VERSION")}}});
    let write = format!(
        "{init}\n{}\n",
        serde_json::json!({"jsonrpc":"2.0","method":"notifications/initialized"})
    );
    stdin
        .write_all(write.as_bytes())
        .await
        .map_err(|e| Error::io("writing to switchboard mcp", e))?;
    tokio::time::timeout(Duration::from_secs(20), answered)
        .await
        .map_err(|_| Error::Connection("switchboard mcp did not initialize in 20 s".into()))?
        .map_err(|_| lost())?;

    let sender = Client::connect(opts(url, "bench-channel-a", token)).await?;
    // The pusher starts after the handshake: the first event that comes back (the warm-up
    // round's, or the start summary it may fall into) says it is up.
    let mut times = Vec::with_capacity(rounds);
    for i in 0..=rounds {
        let t = Instant::now();
        let sent = sender
            .send(SendRequest {
                to: RECIPIENT.into(),
                body: format!("c{i}"),
                ..Default::default()
            })
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (id, at) = tokio::time::timeout_at(deadline, events.recv())
                .await
                .map_err(|_| {
                    Error::Connection(format!("no channel event for round {i} within 10 s"))
                })?
                .ok_or_else(lost)?;
            if i == 0 {
                break;
            }
            if id.as_deref() == Some(sent.id.as_str()) {
                times.push((at - t).as_secs_f64() * 1e3);
                break;
            }
        }
    }
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    Ok(Stats(times))
}
