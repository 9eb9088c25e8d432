//! `switchboard bench`: the load generator behind every performance figure we quote.
//!
//! Phases, each printed as it runs: connect N agents (connect time), one-way delivery latency
//! at a paced rate, maximum sustained throughput (every message durable and received), idle
//! connections and the node's memory per connection, and the agent-perceived latency through
//! two real `switchboard mcp` processes (`send_message` → the recipient's `wait_for_messages`),
//! and a send to its `notifications/claude/channel` line on a recipient's `switchboard mcp`.
//! Without `--node` it starts its own node process on a temporary data dir, so the node's
//! memory is measured alone.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::protocol::SendRequest;
use load::{mcp_rounds, open_idle, saturate};
use procs::{opts, rss, start_node};
use stats::{Stats, WakeupProbe, progress};

mod channel;
mod cost;
mod load;
mod mesh;
mod nats;
mod ports;
mod procs;
mod stats;

pub use ports::free_port;

/// What to run: the `switchboard bench` flags, as plain values.
#[derive(Debug, Clone)]
pub struct Options {
    /// Agents connected for the latency and throughput phases (per node with `mesh`).
    pub agents: usize,
    /// Paced send rate for the latency phase, messages/s.
    pub rate: u32,
    /// Seconds for the latency phase and for the throughput phase each.
    pub seconds: u64,
    /// Sends in flight per sender in the throughput phase.
    pub window: usize,
    /// Extra idle connections to open to measure memory per connection (0 skips).
    pub idle: usize,
    /// Round trips through two `switchboard mcp` processes (0 skips).
    pub mcp_rounds: usize,
    /// Sends timed to their channel event at a `switchboard mcp --push channel` (0 skips).
    pub channel_rounds: usize,
    /// Print the results as JSON too.
    pub json: bool,
    /// Mesh mode with this many nodes (0: one node).
    pub mesh: usize,
    /// A running node to measure; `None` starts one (the mesh mode always starts its own).
    pub node: Option<Remote>,
    /// Mesh mode: plain, TLS, or both alternating.
    pub tls: TlsMode,
    /// With `TlsMode::Compare`: how many plain + TLS pairs to run.
    pub rounds: usize,
    /// Mesh mode: replicate through a NATS JetStream server the bench starts (`--backbone`)
    /// instead of a full mesh of peer links.
    pub backbone: bool,
}

/// Whether the mesh bench's nodes and clients speak TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain `ws://`.
    Off,
    /// `wss://` with self-signed certificates.
    On,
    /// Alternating plain and TLS runs, then a side-by-side table.
    Compare,
}

/// A running node and the token to use on it.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Its `ws://` or `wss://` URL.
    pub url: String,
    /// Its local secret.
    pub token: String,
    /// What its certificate is verified against (`wss://`).
    pub tls: Option<crate::tls::ClientTls>,
    /// Settings the `switchboard mcp` processes it starts need too (data dir, TLS roots,
    /// plaintext permission), as environment variables.
    pub child_env: Vec<(String, std::ffi::OsString)>,
    /// `--allow-plaintext`, for a `ws://` node on another machine.
    pub allow_plaintext: bool,
}

impl Options {
    /// Rejects figures the bench cannot run with, before anything starts.
    pub fn check(&self) -> Result<()> {
        if self.agents < 2 {
            return Err(Error::Config("--agents: at least 2".into()));
        }
        if self.backbone && self.mesh == 0 {
            return Err(Error::Config("--backbone: with --mesh N".into()));
        }
        if self.tls != TlsMode::Off && self.mesh == 0 {
            return Err(Error::Config(
                "--tls: with --mesh N (the single-node bench is plain)".into(),
            ));
        }
        Ok(())
    }
}

/// Runs the benchmark and prints the table.
pub async fn run(a: Options) -> Result<()> {
    a.check()?;
    if a.mesh > 0 {
        return mesh::run(a).await;
    }
    let (url, token, own) = match &a.node {
        Some(r) => (r.url.clone(), r.token.clone(), None),
        None => start_node().await?,
    };
    let tls = a.node.as_ref().and_then(|r| r.tls.clone());
    let opts = |url: &str, agent: &str, token: &str| {
        let mut o = opts(url, agent, token);
        o.tls = tls.clone();
        o.allow_plaintext = a.node.as_ref().is_some_and(|r| r.allow_plaintext);
        o
    };

    progress(&format!("node {url}"));
    let mut report = serde_json::Map::new();
    let mut table = Vec::new();

    // 1. Connect.
    progress(&format!("connecting {} agents", a.agents));
    let mut clients = Vec::new();
    let mut connect = Vec::new();
    for i in 0..a.agents {
        let t = Instant::now();
        clients.push(Arc::new(
            Client::connect(opts(&url, &format!("bench-{i}"), &token)).await?,
        ));
        connect.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let c = Stats(connect);
    table.push(format!(
        "connect (TCP+WS+hello)      p50 {:>7.3} ms  p99 {:>7.3} ms",
        c.pct(50.0),
        c.pct(99.0)
    ));
    report.insert(
        "connect_ms".into(),
        serde_json::json!({"p50": c.pct(50.0), "p99": c.pct(99.0)}),
    );

    // Receivers: every push records its one-way latency against the send time.
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for cl in &clients {
        let mut pushes = cl.pushes();
        let (sent_at, latencies, received) = (sent_at.clone(), latencies.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                match pushes.recv().await {
                    Ok(m) => {
                        let now = Instant::now();
                        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Some(t) = sent_at
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&m.body)
                        {
                            latencies
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((now - t).as_secs_f64() * 1e3);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
    }

    // 2. Paced one-way latency.
    let total = a.rate as u64 * a.seconds;
    progress(&format!("latency: {total} messages at {} msg/s", a.rate));
    let probe = WakeupProbe::start();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / f64::from(a.rate));
        tokio::time::sleep_until(due.into()).await;
        let from = (n as usize) % clients.len();
        let to = (from + 1) % clients.len();
        let body = format!("lat-{n}");
        sent_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(body.clone(), Instant::now());
        let cl = clients[from].clone();
        handles.push(tokio::spawn(async move {
            cl.send(SendRequest {
                to: format!("bench-{to}"),
                body,
                ..Default::default()
            })
            .await
        }));
    }
    let mut failed = 0;
    for h in handles {
        if !matches!(h.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let drain = Instant::now();
    while latencies.lock().unwrap_or_else(|e| e.into_inner()).len() < (total - failed) as usize
        && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let l = Stats(std::mem::take(
        &mut *latencies.lock().unwrap_or_else(|e| e.into_inner()),
    ));
    let lost = total as usize - l.0.len();
    table.push(format!(
        "one-way delivery @{} msg/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  ({} msgs, {} not received, {} failed)",
        a.rate, l.pct(50.0), l.pct(99.0), l.pct(99.9), total, lost, failed
    ));
    report.insert("delivery_ms".into(), serde_json::json!({"rate": a.rate, "p50": l.pct(50.0), "p99": l.pct(99.0), "p999": l.pct(99.9), "messages": total, "not_received": lost}));
    probe.finish(&mut table, &mut report).await;

    // 3. Sustained throughput: every sender keeps `window` sends in flight.
    progress(&format!(
        "throughput: {} senders × {} in flight for {} s",
        clients.len(),
        a.window,
        a.seconds
    ));
    received.store(0, std::sync::atomic::Ordering::Relaxed);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(a.seconds);
    let t0 = Instant::now();
    let pairs = clients
        .iter()
        .enumerate()
        .map(|(i, cl)| (cl.clone(), format!("bench-{}", (i + 1) % a.agents)))
        .collect();
    let senders = saturate(pairs, a.window, stop, acked.clone());
    let mut last = 0;
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = received.load(std::sync::atomic::Ordering::Relaxed);
        progress(&format!("  {} msg/s received", r - last));
        last = r;
    }
    for s in senders {
        let _ = s.await;
    }
    let acked_n = acked.load(std::sync::atomic::Ordering::Relaxed);
    let drain = Instant::now();
    while received.load(std::sync::atomic::Ordering::Relaxed) < acked_n
        && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    let rate = got.min(acked_n) as f64 / elapsed;
    table.push(format!(
        "sustained throughput        {:>9.0} msg/s  ({} acknowledged durable, {} received, {:.1} s)",
        rate, acked_n, got, elapsed
    ));
    report.insert("throughput".into(), serde_json::json!({"msgs_per_s": rate, "acked": acked_n, "received": got, "seconds": elapsed}));
    sent_at.lock().unwrap_or_else(|e| e.into_inner()).clear();

    // 4. Idle connections.
    if a.idle > 0 {
        let before = rss(&url, tls.as_ref()).await.unwrap_or(0);
        progress(&format!(
            "opening {} idle connections (node RSS now {} MiB)",
            a.idle,
            before >> 20
        ));
        let idle = open_idle(&url, &token, a.idle, tls.as_ref()).await?;
        let after = rss(&url, tls.as_ref()).await.unwrap_or(0);
        let per = after.saturating_sub(before) as f64 / idle.len() as f64 / 1024.0;
        table.push(format!(
            "idle connections            {} open, node RSS {} → {} MiB: {:.1} KiB each",
            idle.len(),
            before >> 20,
            after >> 20,
            per
        ));
        report.insert("idle".into(), serde_json::json!({"connections": idle.len(), "rss_before": before, "rss_after": after, "kib_per_connection": per}));
        drop(idle);
    }

    // 5. Through MCP.
    if a.mcp_rounds > 0 {
        progress(&format!(
            "mcp: {} send_message → wait_for_messages round trips",
            a.mcp_rounds
        ));
        let env = a
            .node
            .as_ref()
            .map(|r| r.child_env.clone())
            .unwrap_or_default();
        let m = mcp_rounds(&url, &token, a.mcp_rounds, &env).await?;
        table.push(format!(
            "mcp send→wait returns       p50 {:>7.3} ms  p99 {:>7.3} ms  ({} round trips)",
            m.pct(50.0),
            m.pct(99.0),
            m.0.len()
        ));
        report.insert(
            "mcp_ms".into(),
            serde_json::json!({"p50": m.pct(50.0), "p99": m.pct(99.0), "rounds": m.0.len()}),
        );
    }
    // 6. Channel push.
    if a.channel_rounds > 0 {
        progress(&format!(
            "channel: {} send → notifications/claude/channel round trips",
            a.channel_rounds
        ));
        let probe = WakeupProbe::start();
        let m = channel::channel_rounds(&url, &token, a.channel_rounds).await?;
        table.push(format!(
            "send→channel event          p50 {:>7.3} ms  p99 {:>7.3} ms  ({} round trips)",
            m.pct(50.0),
            m.pct(99.0),
            m.0.len()
        ));
        report.insert(
            "channel_ms".into(),
            serde_json::json!({"p50": m.pct(50.0), "p99": m.pct(99.0), "rounds": m.0.len()}),
        );
        let mut noise = serde_json::Map::new();
        probe.finish(&mut table, &mut noise).await;
        if let Some(late) = noise.remove("wakeup_late_ms") {
            report.insert("channel_wakeup_late_ms".into(), late);
        }
    }
    if let Some(r) = rss(&url, tls.as_ref()).await {
        table.push(format!("node RSS                    {} MiB", r >> 20));
        report.insert("node_rss_bytes".into(), r.into());
    }

    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "switchboard bench — {url}, {} agents", a.agents);
    for line in &table {
        let _ = writeln!(out, "{line}");
    }
    if a.json {
        let _ = writeln!(out, "{}", serde_json::Value::Object(report));
    }
    drop(clients);
    if let Some(mut n) = own {
        let _ = n.child.kill().await;
    }
    Ok(())
}
