//! The load itself: saturating senders, idle connections, and round trips through two
//! `switchboard mcp` processes.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};

use super::stats::{Stats, progress};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::protocol::SendRequest;

type RawWs = tokio_tungstenite::WebSocketStream<crate::tls::Stream>;

/// Opens `n` idle agent connections (256 handshakes at a time).
pub(super) async fn open_idle(
    url: &str,
    token: &str,
    n: usize,
    tls: Option<&crate::tls::ClientTls>,
) -> Result<Vec<RawWs>> {
    let endpoint = crate::config::ws_endpoint(url);
    let mut conns = Vec::with_capacity(n);
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut next = 0;
    while conns.len() + pending.len() < n || !pending.is_empty() {
        while pending.len() < 256 && next < n {
            let (endpoint, token, tls) = (endpoint.clone(), token.to_owned(), tls.cloned());
            let agent = format!("idle-{next}");
            next += 1;
            pending.push(async move {
                let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0);
                let (socket, _) = crate::tls::connect(&endpoint, tls.as_ref()).await?;
                let (mut ws, _) = tokio_tungstenite::client_async_with_config(
                    endpoint.as_str(),
                    socket,
                    Some(cfg),
                )
                .await
                .map_err(|e| Error::Connection(e.to_string()))?;
                let hello =
                    serde_json::json!({"op":"hello","agent":agent,"token":token,"v":1}).to_string();
                ws.send(tokio_tungstenite::tungstenite::Message::Text(hello.into()))
                    .await
                    .map_err(|e| Error::Connection(e.to_string()))?;
                ws.next().await;
                Ok::<_, Error>(ws)
            });
        }
        match pending.next().await {
            Some(Ok(ws)) => {
                conns.push(ws);
                if conns.len() % 2000 == 0 {
                    progress(&format!("  {} idle connections open", conns.len()));
                }
            }
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok(conns)
}

/// Times `send_message` → `wait_for_messages` between two `switchboard mcp` processes.
pub(super) async fn mcp_rounds(
    url: &str,
    token: &str,
    rounds: usize,
    env: &[(String, std::ffi::OsString)],
) -> Result<Stats> {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the switchboard binary", e))?;
    let spawn = |agent: &'static str| {
        let cmd = tokio::process::Command::new(&exe).configure(|c| {
            c.args(["mcp", "--agent", agent, "--node", url, "--token", token])
                .env("SWITCHBOARD_LOG", "warn")
                .envs(env.iter().cloned());
        });
        TokioChildProcess::new(cmd).map_err(|e| Error::io("starting switchboard mcp", e))
    };
    let a = ().serve(spawn("bench-mcp-a")?).await.map_err(|e| Error::Connection(e.to_string()))?;
    let b = ().serve(spawn("bench-mcp-b")?).await.map_err(|e| Error::Connection(e.to_string()))?;
    let args = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let peer = b.peer().clone();
        let wait = tokio::spawn(async move {
            peer.call_tool(
                CallToolRequestParams::new("wait_for_messages")
                    .with_arguments(args(serde_json::json!({"timeout_seconds": 10}))),
            )
            .await
        });
        let t = Instant::now();
        a.call_tool(
            CallToolRequestParams::new("send_message").with_arguments(args(
                serde_json::json!({"to": "bench-mcp-b", "body": format!("m{i}")}),
            )),
        )
        .await
        .map_err(|e| Error::Connection(e.to_string()))?;
        let r = wait
            .await
            .map_err(|e| Error::Connection(e.to_string()))?
            .map_err(|e| Error::Connection(e.to_string()))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if r.is_error == Some(true) {
            return Err(Error::Connection(format!(
                "wait_for_messages failed: {:?}",
                r.content
            )));
        }
    }
    let _ = a.cancel().await;
    let _ = b.cancel().await;
    Ok(Stats(times))
}

/// Starts one task per (sender, recipient) that keeps `window` sends in flight until `stop`,
/// counting acknowledged (durable) sends in `acked`. Bodies are `tp-I-N`.
pub(super) fn saturate(
    pairs: Vec<(Arc<Client>, String)>,
    window: usize,
    stop: Instant,
    acked: Arc<std::sync::atomic::AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut senders = Vec::new();
    for (i, (cl, to)) in pairs.into_iter().enumerate() {
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            let mut inflight = futures_util::stream::FuturesUnordered::new();
            let mut n = 0u64;
            while Instant::now() < stop {
                while inflight.len() < window {
                    let cl = cl.clone();
                    let to = to.clone();
                    n += 1;
                    let body = format!("tp-{i}-{n}");
                    inflight.push(async move {
                        cl.send(SendRequest {
                            to,
                            body,
                            ..Default::default()
                        })
                        .await
                    });
                }
                if let Some(Ok(_)) = inflight.next().await {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            while let Some(r) = inflight.next().await {
                if r.is_ok() {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    senders
}
