//! `switchboard bench --mesh N`: N node processes in a full mesh on loopback.
//!
//! Measures cross-node one-way delivery at a paced rate, how fast presence converges (an agent
//! joins at the first node; how long until the last node shows it online, and offline after
//! it leaves), and how fast every agent of a node is back after that node is killed and
//! restarted.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cost::{CpuMeter, Figures, compare};
use super::ports::free_port;
use super::procs::{health, opts, spawn_node};
use super::stats::{Stats, WakeupProbe, progress};
use super::{Options, TlsMode};
use crate::auth;
use crate::client::{Client, ConnState};
use crate::error::{Error, Result};
use crate::protocol::SendRequest;

struct Node {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<tokio::process::Child>,
    secret: String,
    /// What its clients trust (its own certificate), when it serves TLS.
    tls: Option<crate::tls::ClientTls>,
}

impl Node {
    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn opts(&self, agent: &str) -> crate::client::ClientOptions {
        let mut o = opts(&self.url(), agent, &self.secret);
        o.tls = self.tls.clone();
        o
    }
}

/// How the nodes replicate: linked in pairs with this secret, or through this NATS server.
enum Via<'a> {
    Mesh(&'a std::path::Path),
    Backbone(String),
}

fn node_args(via: &Via<'_>, earlier: &[u16], tls: bool) -> Vec<String> {
    let secret_file = match via {
        Via::Backbone(url) => return vec!["--backbone".into(), url.clone()],
        Via::Mesh(f) => f,
    };
    let mut v = vec![
        "--mesh-secret-file".to_owned(),
        secret_file.display().to_string(),
    ];
    if tls {
        v.push("--tls-self-signed".into());
    }
    let scheme = if tls { "wss" } else { "ws" };
    for p in earlier {
        v.push("--peer".into());
        v.push(format!("{scheme}://127.0.0.1:{p}"));
    }
    v
}

/// Whether `node` is linked to (or hears, over a backbone) `want` others.
async fn linked(node: &Node, want: usize) -> bool {
    health(&node.url(), node.tls.as_ref())
        .await
        .is_some_and(|h| {
            h["nodes"]
                .as_array()
                .map(|p| p.iter().filter(|p| p["state"] == "up").count() >= want)
                .unwrap_or(false)
        })
}

/// Links per node (peer links up, or 1: the NATS connection) and resident memory per node.
async fn footprint(
    nodes: &[Node],
    nats: Option<&super::nats::Nats>,
) -> (String, serde_json::Value) {
    let (mut links, mut rss) = (Vec::new(), Vec::new());
    for n in nodes {
        let h = health(&n.url(), n.tls.as_ref()).await.unwrap_or_default();
        links.push(match nats {
            Some(_) => 1,
            None => h["peers"]
                .as_array()
                .map_or(0, |p| p.iter().filter(|p| p["state"] == "up").count()),
        });
        rss.push(h["rss_bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64);
    }
    let avg = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
    let max = rss.iter().cloned().fold(0.0, f64::max);
    let nats_mib = nats
        .and_then(|n| n.pid())
        .and_then(super::nats::rss_of)
        .map(|b| b as f64 / (1 << 20) as f64);
    let line = format!(
        "per node                    {} links, RSS avg {avg:>6.1} MiB  max {max:>6.1} MiB{}",
        links.iter().max().unwrap_or(&0),
        nats_mib.map_or(String::new(), |m| format!(";  nats-server RSS {m:.1} MiB"))
    );
    let json = serde_json::json!({"links": links, "rss_mib_avg": avg, "rss_mib_max": max, "nats_rss_mib": nats_mib});
    (line, json)
}

async fn wait_linked(nodes: &[Node]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in nodes {
        while !linked(n, nodes.len() - 1).await {
            if Instant::now() > deadline {
                return Err(Error::Connection("the mesh did not link up".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Polls `observer`'s presence until `name` shows `online` (each poll is a round trip).
async fn wait_presence(observer: &Client, name: &str, online: bool, since: Instant) -> Result<()> {
    loop {
        let now_online = observer
            .presence(Some(name.to_owned()))
            .await
            .ok()
            .and_then(|p| p.agents.first().map(|e| e.online))
            .unwrap_or(!online);
        if now_online == online {
            return Ok(());
        }
        if since.elapsed() > Duration::from_secs(40) {
            return Err(Error::Connection(format!(
                "presence of {name} did not converge in 40 s"
            )));
        }
    }
}

/// Runs the mesh benchmark: once, or alternating plain and TLS `rounds` times each.
pub async fn run(a: Options) -> Result<()> {
    if a.mesh < 2 {
        return Err(Error::Config("--mesh: at least 2 nodes".into()));
    }
    let modes: Vec<bool> = match a.tls {
        TlsMode::Off => vec![false],
        TlsMode::On => vec![true],
        TlsMode::Compare => (0..a.rounds.max(1)).flat_map(|_| [false, true]).collect(),
    };
    let mut runs = Vec::new();
    for tls in modes {
        runs.push(run_once(&a, tls).await?);
    }
    if a.tls == TlsMode::Compare {
        let mut out = std::io::stdout().lock();
        for line in compare(&runs) {
            let _ = writeln!(out, "{line}");
        }
        if a.json {
            let all: Vec<_> = runs.iter().map(Figures::json).collect();
            let _ = writeln!(out, "{}", serde_json::json!({ "compare": all }));
        }
    }
    Ok(())
}

/// One run on a fresh mesh.
async fn run_once(a: &Options, tls: bool) -> Result<Figures> {
    let n = a.mesh;
    progress(&format!(
        "starting {n} nodes ({})",
        if tls { "TLS" } else { "plain" }
    ));
    let secret_dir = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
    let secret_file = secret_dir.path().join("mesh.secret");
    std::fs::write(&secret_file, auth::random_hex())
        .map_err(|e| Error::io("writing the mesh secret", e))?;
    let nats = match a.backbone {
        true => Some(super::nats::Nats::start().await?),
        false => None,
    };
    let via = match &nats {
        Some(n) => Via::Backbone(n.url()),
        None => Via::Mesh(&secret_file),
    };
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
        let port = free_port()?;
        let earlier: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let child = spawn_node(
            dir.path(),
            port,
            &format!("n{}", i + 1),
            &node_args(&via, &earlier, tls),
        )
        .await?;
        let secret =
            auth::read_secret(dir.path())?.ok_or_else(|| Error::Connection("no secret".into()))?;
        let trust = match tls {
            true => Some(crate::tls::ClientTls::agent(
                &[],
                vec![dir.path().join("tls").join("cert.pem")],
            )?),
            false => None,
        };
        nodes.push(Node {
            dir,
            port,
            child: Some(child),
            secret,
            tls: trust,
        });
    }
    wait_linked(&nodes).await?;
    progress(&format!(
        "{n} nodes linked; connecting {} agents per node",
        a.agents
    ));
    let mut table = Vec::new();
    let mut report = serde_json::Map::new();

    // Agents on every node.
    let mut clients: Vec<Vec<Arc<Client>>> = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let mut v = Vec::new();
        for i in 0..a.agents {
            let mut o = node.opts(&format!("m{}-{i}", k + 1));
            o.reconnect = true;
            v.push(Arc::new(Client::connect(o).await?));
        }
        clients.push(v);
    }

    // Presence convergence: join at n1, seen at nN; leave, seen offline at nN.
    let observer = clients[n - 1][0].clone();
    let mut joins = Vec::new();
    let mut leaves = Vec::new();
    for r in 0..20 {
        let name = format!("probe-{r}");
        let t = Instant::now();
        let probe = Client::connect(nodes[0].opts(&name)).await?;
        wait_presence(&observer, &name, true, t).await?;
        joins.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        drop(probe);
        wait_presence(&observer, &name, false, t).await?;
        leaves.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (j, l) = (Stats(joins), Stats(leaves));
    table.push(format!(
        "presence join n1→n{n}       p50 {:>7.3} ms  max {:>7.3} ms;  leave p50 {:>7.3} ms  max {:>7.3} ms",
        j.pct(50.0),
        j.pct(100.0),
        l.pct(50.0),
        l.pct(100.0)
    ));
    report.insert(
        "presence_ms".into(),
        serde_json::json!({"join_p50": j.pct(50.0), "join_max": j.pct(100.0), "leave_p50": l.pct(50.0), "leave_max": l.pct(100.0)}),
    );

    // Cross-node one-way delivery at a paced rate: node k → node k+1.
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let received = Arc::new(AtomicU64::new(0));
    for c in clients.iter().flatten() {
        let mut pushes = c.pushes();
        let (sent_at, lat, received) = (sent_at.clone(), lat.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok(m) = pushes.recv().await {
                if m.body.starts_with("tp-") {
                    received.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = Instant::now();
                if let Some(t) = sent_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&m.body)
                {
                    lat.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((now - t).as_secs_f64() * 1e3);
                }
            }
        });
    }
    let total = u64::from(a.rate) * a.seconds;
    progress(&format!(
        "cross-node latency: {total} messages at {} msg/s",
        a.rate
    ));
    // With a backbone, the NATS server's CPU counts with the nodes'.
    let pids: Vec<u32> = nodes
        .iter()
        .filter_map(|n| n.child.as_ref().and_then(|c| c.id()))
        .chain(nats.as_ref().and_then(|n| n.pid()))
        .collect();
    let probe = WakeupProbe::start();
    let paced_cpu = CpuMeter::start(pids.clone());
    let start = Instant::now();
    let mut handles = Vec::new();
    for m in 0..total {
        let due = start + Duration::from_secs_f64(m as f64 / f64::from(a.rate));
        tokio::time::sleep_until(due.into()).await;
        let k = (m as usize) % n;
        let i = (m as usize / n) % a.agents;
        let to = format!("m{}-{i}", (k + 1) % n + 1);
        let body = format!("x-{m}");
        sent_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(body.clone(), Instant::now());
        let c = clients[k][i].clone();
        handles.push(tokio::spawn(async move {
            c.send(SendRequest {
                to,
                body,
                ..Default::default()
            })
            .await
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let drain = Instant::now();
    while lat.lock().unwrap_or_else(|e| e.into_inner()).len() < total as usize
        && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (node_us_paced, _) = paced_cpu.per_message(total);
    let d = Stats(std::mem::take(
        &mut *lat.lock().unwrap_or_else(|e| e.into_inner()),
    ));
    table.push(format!(
        "cross-node delivery @{} msg/s p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  ({} msgs, {} not received)",
        a.rate,
        d.pct(50.0),
        d.pct(99.0),
        d.pct(99.9),
        total,
        total as usize - d.0.len()
    ));
    report.insert(
        "cross_node_ms".into(),
        serde_json::json!({"p50": d.pct(50.0), "p99": d.pct(99.0), "p999": d.pct(99.9), "messages": total, "received": d.0.len()}),
    );
    probe.finish(&mut table, &mut report).await;

    let (line, json) = footprint(&nodes, nats.as_ref()).await;
    table.push(line);
    report.insert("per_node".into(), json);

    // Cross-node throughput: senders on every node keep `window` sends in flight to agents on
    // the next node. Every message is stored on every node (full replicas).
    let per_node = a.agents.min(50);
    progress(&format!(
        "cross-node throughput: {} senders × {} in flight for {} s",
        per_node * n,
        a.window,
        a.seconds
    ));
    let acked = Arc::new(AtomicU64::new(0));
    let tp_cpu = CpuMeter::start(pids);
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs(a.seconds);
    let pairs = (0..n)
        .flat_map(|k| (0..per_node).map(move |i| (k, i)))
        .map(|(k, i)| (clients[k][i].clone(), format!("m{}-{i}", (k + 1) % n + 1)))
        .collect();
    for s in super::load::saturate(pairs, a.window, stop, acked.clone()) {
        let _ = s.await;
    }
    let acked_n = acked.load(Ordering::Relaxed);
    let drain = Instant::now();
    while received.load(Ordering::Relaxed) < acked_n && drain.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    let rate = got.min(acked_n) as f64 / elapsed;
    let (node_us_tp, bench_us_tp) = tp_cpu.per_message(got.min(acked_n));
    table.push(format!(
        "cross-node throughput       {rate:>9.0} msg/s  ({acked_n} acknowledged, {got} received on the other node, each stored on all {n} nodes, {elapsed:.1} s)"
    ));
    table.push(format!(
        "CPU per message             nodes {node_us_paced:>6.1} µs paced, {node_us_tp:>6.1} µs at full load; bench clients {bench_us_tp:>6.1} µs"
    ));
    report.insert(
        "cpu_us_per_msg".into(),
        serde_json::json!({"nodes_paced": node_us_paced, "nodes_throughput": node_us_tp, "bench_throughput": bench_us_tp}),
    );
    report.insert(
        "cross_node_throughput".into(),
        serde_json::json!({"msgs_per_s": rate, "acked": acked_n, "received": got, "seconds": elapsed}),
    );

    // Restart: kill -9 node 2, start it again, time until every one of its agents is back.
    progress("killing n2 and restarting it");
    let victim = 1;
    if let Some(mut c) = nodes[victim].child.take() {
        let _ = c.kill().await;
    }
    let mut watches: Vec<_> = clients[victim].iter().map(|c| c.state()).collect();
    for w in &mut watches {
        while matches!(*w.borrow_and_update(), ConnState::Connected(_)) {
            if w.changed().await.is_err() {
                break;
            }
        }
    }
    let earlier: Vec<u16> = nodes[..victim].iter().map(|n| n.port).collect();
    let child = spawn_node(
        nodes[victim].dir.path(),
        nodes[victim].port,
        &format!("n{}", victim + 1),
        &node_args(&via, &earlier, tls),
    )
    .await?;
    let restarted = Instant::now();
    nodes[victim].child = Some(child);
    // One waiter per agent, so each reconnection is timed when it happens.
    let waiters: Vec<_> = watches
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), async {
                    while !matches!(*w.borrow_and_update(), ConnState::Connected(_)) {
                        if w.changed().await.is_err() {
                            break;
                        }
                    }
                })
                .await;
                restarted.elapsed().as_secs_f64() * 1e3
            })
        })
        .collect();
    let mut back = Vec::new();
    for w in waiters {
        if let Ok(ms) = w.await {
            back.push(ms);
        }
    }
    let b = Stats(back);
    table.push(format!(
        "reconnect after restart     p50 {:>7.3} ms  p99 {:>7.3} ms  ({} agents of n2)",
        b.pct(50.0),
        b.pct(99.0),
        b.0.len()
    ));
    report.insert(
        "reconnect_ms".into(),
        serde_json::json!({"p50": b.pct(50.0), "p99": b.pct(99.0), "agents": b.0.len()}),
    );

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "switchboard bench --mesh {n}{} — {} agents per node, {}",
        if nats.is_some() {
            " --backbone (nats-server -js, R1)"
        } else {
            " (full mesh)"
        },
        a.agents,
        if tls {
            "TLS (wss://, self-signed)"
        } else {
            "plain ws://"
        }
    );
    for line in &table {
        let _ = writeln!(out, "{line}");
    }
    if a.json {
        let _ = writeln!(out, "{}", serde_json::Value::Object(report));
    }
    drop(out);
    drop(clients);
    for node in &mut nodes {
        if let Some(c) = node.child.as_mut() {
            let _ = c.kill().await;
        }
    }
    Ok(Figures {
        tls,
        p50_ms: d.pct(50.0),
        p99_ms: d.pct(99.0),
        node_us_paced,
        msgs_per_s: rate,
        node_us_tp,
        bench_us_tp,
    })
}
