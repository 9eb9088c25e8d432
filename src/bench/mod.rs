//! `switchboard bench`: the load generator behind every performance figure we quote.
//!
//! Phases, each printed as it runs: connect N agents (connect time), one-way delivery latency
//! at a paced rate, maximum sustained throughput (every message durable and received), idle
//! connections and the node's memory per connection, and the agent-perceived latency through
//! two real `switchboard mcp` processes (`send_message` → the recipient's `wait_for_messages`).
//! Without `--node` it starts its own node process on a temporary data dir, so the node's
//! memory is measured alone.

use std::collections::HashMap;
use std::io::Write;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::auth;
use crate::cli::Global;
use crate::client::{Client, ClientOptions};
use crate::error::{Error, Result};
use crate::protocol::SendRequest;

mod mesh;

/// `switchboard bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Agents connected for the latency and throughput phases.
    #[arg(long, default_value_t = 50)]
    pub agents: usize,
    /// Paced send rate for the latency phase, messages/s.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds for the latency phase and for the throughput phase each.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Sends in flight per sender in the throughput phase.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Extra idle connections to open to measure memory per connection (0 skips).
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Round trips through two `switchboard mcp` processes (0 skips).
    #[arg(long, default_value_t = 500)]
    pub mcp_rounds: usize,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
    /// Mesh mode: start this many nodes in a full mesh and measure cross-node delivery,
    /// presence convergence and reconnection after a node restart (`--agents` per node).
    #[arg(long, default_value_t = 0, value_name = "NODES")]
    pub mesh: usize,
}

pub(super) struct Stats(pub(super) Vec<f64>);

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

/// How late the machine wakes a thread while a phase runs: a spare thread sleeps 0.5 ms over
/// and over and records each overshoot. Every delivery crosses several threads, so when the
/// machine wakes threads late (the bench's own load on few cores, or a busy host under a VM)
/// the tails stretch; printing this beside the figures tells a quiet run from a noisy one.
pub(super) struct WakeupProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    sample: tokio::task::JoinHandle<Vec<f64>>,
}

impl WakeupProbe {
    pub(super) fn start() -> WakeupProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let sample = tokio::task::spawn_blocking(move || {
            let nap = Duration::from_micros(500);
            let mut late = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                std::thread::sleep(nap);
                late.push(t.elapsed().saturating_sub(nap).as_secs_f64() * 1e3);
            }
            late
        });
        WakeupProbe { stop, sample }
    }

    /// Stops the probe and adds its line to the table and its figures to the report.
    pub(super) async fn finish(
        self,
        table: &mut Vec<String>,
        report: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let s = Stats(self.sample.await.unwrap_or_default());
        table.push(format!(
            "  (meanwhile a sleeping thread woke late by p50 {:.3} ms, p99 {:.3} ms)",
            s.pct(50.0),
            s.pct(99.0)
        ));
        report.insert(
            "wakeup_late_ms".into(),
            serde_json::json!({"p50": s.pct(50.0), "p99": s.pct(99.0)}),
        );
    }
}

fn progress(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "bench: {text}");
}

/// A node this bench started, killed when dropped.
struct OwnNode {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// Starts `switchboard node` on `dir` and waits until it listens.
async fn spawn_node(
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

/// A free loopback port for a node process this program starts, below the ephemeral range.
///
/// Why not `bind(":0")`: such a port comes from the kernel's ephemeral range, the range every
/// outgoing connection on the machine takes its local port from. Between the pick and the
/// node's own bind — or while a killed node is down before it restarts on the same port — any
/// connection may take that port, and the node then fails with "address in use". Ports below
/// the ephemeral range are only ever taken by explicit binds, which the probe bind here sees.
/// Each call in a process gets a different port, starting from a per-process offset, so
/// concurrent tests and benches do not pick the same one.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Linux publishes the ephemeral range; elsewhere (macOS: 49152-65535) assume it starts no
    // lower than Linux's default.
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(2048, 65535);
    let base = low.saturating_sub(16384).max(1024);
    let span = low - base;
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = base + (offset + k) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Every port below the range is bound: fall back to one the kernel picks.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

async fn start_node() -> Result<(String, String, Option<OwnNode>)> {
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

async fn health(url: &str) -> Option<serde_json::Value> {
    let hostport = url.strip_prefix("ws://")?.split('/').next()?.to_owned();
    let mut s = tokio::net::TcpStream::connect(&hostport).await.ok()?;
    s.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    serde_json::from_str(buf.split("\r\n\r\n").nth(1)?).ok()
}

async fn rss(url: &str) -> Option<u64> {
    health(url).await?.get("rss_bytes")?.as_u64()
}

fn opts(url: &str, agent: &str, token: &str) -> ClientOptions {
    let mut o = ClientOptions::new(url, agent, token);
    o.reconnect = false;
    o.request_timeout = Duration::from_secs(60);
    o
}

/// Runs the benchmark and prints the table.
pub async fn run(g: &Global, a: BenchArgs) -> Result<ExitCode> {
    if a.agents < 2 {
        return Err(Error::Config("--agents: at least 2".into()));
    }
    if a.mesh > 0 {
        return mesh::run(a).await;
    }
    let (url, token, own) = match &g.node {
        Some(u) => {
            let dir = crate::cli::data_dir_of(g)?;
            let token = match &g.token {
                Some(t) => t.clone(),
                None => auth::read_secret(&dir)?.ok_or_else(|| {
                    Error::Config("--node given: pass --token (the node's local secret)".into())
                })?,
            };
            (u.clone(), token, None)
        }
        None => start_node().await?,
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
        let before = rss(&url).await.unwrap_or(0);
        progress(&format!(
            "opening {} idle connections (node RSS now {} MiB)",
            a.idle,
            before >> 20
        ));
        let idle = open_idle(&url, &token, a.idle).await?;
        let after = rss(&url).await.unwrap_or(0);
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
        let m = mcp_rounds(&url, &token, a.mcp_rounds).await?;
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
    if let Some(r) = rss(&url).await {
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
    Ok(ExitCode::SUCCESS)
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_idle(url: &str, token: &str, n: usize) -> Result<Vec<RawWs>> {
    let endpoint = crate::config::ws_endpoint(url);
    let mut conns = Vec::with_capacity(n);
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut next = 0;
    while conns.len() + pending.len() < n || !pending.is_empty() {
        while pending.len() < 256 && next < n {
            let (endpoint, token) = (endpoint.clone(), token.to_owned());
            let agent = format!("idle-{next}");
            next += 1;
            pending.push(async move {
                let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0);
                let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
                    endpoint.as_str(),
                    Some(cfg),
                    true,
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

async fn mcp_rounds(url: &str, token: &str, rounds: usize) -> Result<Stats> {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the switchboard binary", e))?;
    let spawn = |agent: &'static str| {
        let cmd = tokio::process::Command::new(&exe).configure(|c| {
            c.args(["mcp", "--agent", agent, "--node", url, "--token", token])
                .env("SWITCHBOARD_LOG", "warn");
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
pub(crate) fn saturate(
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
