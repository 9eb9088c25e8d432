//! Node processes the bench starts, and what it reads from their `/health`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::ports::free_port;
use crate::auth;
use crate::client::ClientOptions;
use crate::error::{Error, Result};

/// A node this bench started, killed when dropped.
pub(super) struct OwnNode {
    pub(super) child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// Starts `switchboard node` on `dir` and waits until it listens.
pub(super) async fn spawn_node(
    dir: &std::path::Path,
    port: u16,
    id: &str,
    extra: &[String],
) -> Result<tokio::process::Child> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the switchboard binary", e))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--data-dir")
        .arg(dir)
        .args([
            "node",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-id",
            id,
            "--send-rate",
            "0",
        ])
        .args(extra)
        .env(
            "SWITCHBOARD_LOG",
            std::env::var("SWITCHBOARD_BENCH_NODE_LOG")
                .unwrap_or_else(|_| "warn,switchboard::node=info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io("starting a node", e))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::Connection("no stderr".into()))?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(l)) if l.contains("node listening") => break,
            Ok(Some(_)) => {}
            _ => return Err(Error::Connection("a bench node did not start".into())),
        }
    }
    // With SWITCHBOARD_BENCH_NODE_LOG set, the nodes' logs are shown (prefixed) for diagnosis.
    let show = std::env::var_os("SWITCHBOARD_BENCH_NODE_LOG").is_some();
    let id = id.to_owned();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if show {
                eprintln!("[{id}] {l}");
            }
        }
    });
    Ok(child)
}

/// A node process of the bench's own on a temporary data dir: its URL and local secret.
pub(super) async fn start_node() -> Result<(String, String, Option<OwnNode>)> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
    let port = free_port()?;
    let child = spawn_node(dir.path(), port, "bench", &[]).await?;
    let secret =
        auth::read_secret(dir.path())?.ok_or_else(|| Error::Connection("no secret".into()))?;
    Ok((
        format!("ws://127.0.0.1:{port}"),
        secret,
        Some(OwnNode { child, _dir: dir }),
    ))
}

/// The node's `/health` (over https for a `wss://` URL, verified by `tls`).
pub(super) async fn health(
    url: &str,
    tls: Option<&crate::tls::ClientTls>,
) -> Option<serde_json::Value> {
    let (_, body) = crate::tls::http_get(url, "/health", tls, Duration::from_secs(10))
        .await
        .ok()?;
    serde_json::from_str(&body).ok()
}

pub(super) async fn rss(url: &str, tls: Option<&crate::tls::ClientTls>) -> Option<u64> {
    health(url, tls).await?.get("rss_bytes")?.as_u64()
}

/// Client options for a bench agent: no reconnecting, patient requests.
pub(super) fn opts(url: &str, agent: &str, token: &str) -> ClientOptions {
    let mut o = ClientOptions::new(url, agent, token);
    o.reconnect = false;
    o.request_timeout = Duration::from_secs(60);
    o
}
