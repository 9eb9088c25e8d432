//! Chaos: nodes of a mesh killed and restarted at random while mail flows.

use switchboard::protocol::{DeliveryStatus, SendRequest};

use crate::common::*;
use crate::mesh::*;

/// Chaos: random nodes are killed (-9) and restarted every 1-3 s while numbered messages flow
/// from a sender on every node; afterwards every acknowledged message is in the inbox exactly
/// once, in order per sender. `SWITCHBOARD_CHAOS_SECONDS` makes it run longer (default 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_and_restart_nodes_while_messages_flow() {
    chaos(12, &[]).await;
}

/// The same with the replication log compacted every 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_compaction_on() {
    chaos(12, &["--compact-interval", "100ms"]).await;
}

/// A longer run with compaction and a backlog window shorter than some outages, so peers
/// also catch up from snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a minute of chaos"]
async fn chaos_with_compaction_and_snapshots_long() {
    chaos(60, &["--compact-interval", "100ms", "--retain-log", "2s"]).await;
}

/// `SWITCHBOARD_CHAOS_SECONDS` overrides `seconds`; `extra`: more node arguments.
async fn chaos(seconds: u64, extra: &[&str]) {
    use rand::Rng;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let seconds: u64 = std::env::var("SWITCHBOARD_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seconds);
    // SWITCHBOARD_CHAOS_HUB=1: n2 and n3 know only n1 and find each other through it.
    let hub = std::env::var_os("SWITCHBOARD_CHAOS_HUB").is_some();
    let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    let mut mesh = Mesh::prepare(3, hub, vec![extra; 3]);
    mesh.spawn_nodes().await;
    mesh.wait_linked().await;
    drop(mesh.client(0, "sink").await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..3 {
        senders.push(numbered_sender(mesh.node(i), i, stop.clone()).await);
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut kills = 0;
    while tokio::time::Instant::now() < deadline {
        let pause = rand::rng().random_range(1000..3000);
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await; // chaos pacing, not sync
        let victim = rand::rng().random_range(0..3);
        if let Some(n) = mesh.nodes[victim].take() {
            n.kill9().await;
            kills += 1;
            mesh.nodes[victim] = Some(mesh.spawn(victim).await);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for s in senders {
        acked.push(s.await.unwrap());
    }
    mesh.wait_linked().await;
    let total = check_exactly_once(&mesh.client(0, "sink").await, &acked).await;
    assert!(kills >= 3 && total > 100, "kills {kills}, messages {total}");
    eprintln!("chaos: {kills} kills, {total} messages, all exactly once and in order");
}

/// A client on `node` that sends `sink` numbered messages (`i:seq`, each with its own id,
/// retried with that id until the node acknowledges it, so never twice) until `stop`; it
/// returns the (seq, id) of every acknowledged one.
pub async fn numbered_sender(
    node: &NodeProc,
    i: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u32, String)>> {
    let sender = numbered_sender_to(node, i, "sink", stop).await;
    tokio::spawn(async move { acked(&sender.await.unwrap()) })
}

/// One acknowledged send of a [`numbered_sender_to`].
pub struct Sent {
    pub seq: u32,
    pub id: String,
    pub status: DeliveryStatus,
    /// When the answer came.
    pub at: std::time::Instant,
}

/// The (seq, id) of each send, as [`check_exactly_once`] takes them.
pub fn acked(sent: &[Sent]) -> Vec<(u32, String)> {
    sent.iter().map(|s| (s.seq, s.id.clone())).collect()
}

/// [`numbered_sender`] to `to`, with each answer's status and time.
pub async fn numbered_sender_to(
    node: &NodeProc,
    i: usize,
    to: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sent>> {
    use std::sync::atomic::Ordering;
    let client = node
        .client_opts(&format!("sender{i}"), |o| {
            o.reconnect = true;
            o.request_timeout = std::time::Duration::from_secs(2);
            o.max_backoff = std::time::Duration::from_millis(300);
        })
        .await;
    let to = to.to_owned();
    tokio::spawn(async move {
        // The recipient must be known at this node before the first send.
        poll(30, &format!("{to} known at this node"), || async {
            client.presence(Some(to.clone())).await.ok()
        })
        .await;
        let mut ids = ulid::Generator::new();
        let mut sent = Vec::new();
        let mut seq = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let id = ids.generate().unwrap().to_string();
            let req = SendRequest {
                id: Some(id.clone()),
                to: to.clone(),
                body: format!("{i}:{seq}"),
                ..Default::default()
            };
            // Retry the same id until the node acknowledges it: never a duplicate.
            let status = loop {
                match client.send(req.clone()).await {
                    Ok(r) => break r.status,
                    Err(_) if !stop.load(Ordering::Relaxed) => {
                        // The node is down or restarting: try again shortly.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    Err(_) => return sent,
                }
            };
            let at = std::time::Instant::now();
            sent.push(Sent {
                seq,
                id,
                status,
                at,
            });
            seq += 1;
        }
        sent
    })
}

/// Reads the sink's whole inbox and checks that every acknowledged message of every sender
/// (`acked[i]` for `sender{i}`) is in it exactly once, in its sender's order (a send that was
/// committed but not answered may be there too, once). Returns how many were acknowledged.
pub async fn check_exactly_once(
    sink: &switchboard::client::Client,
    acked: &[Vec<(u32, String)>],
) -> usize {
    let total: usize = acked.iter().map(Vec::len).sum();
    // Drain page by page; an empty page means the rest is still on its way, so wait a little
    // (see `poll`) before asking again.
    let got = std::sync::Mutex::new(Vec::new());
    poll(
        60,
        "every acknowledged message at the sink's node",
        || async {
            let page = sink.inbox(unread(200)).await.unwrap().messages;
            if !page.is_empty() {
                let ids = page.iter().map(|m| m.id.clone()).collect();
                sink.mark_read(ids, false).await.unwrap();
                got.lock().unwrap().extend(page);
                // More may be waiting: ask again at once.
                return None;
            }
            (got.lock().unwrap().len() >= total).then_some(())
        },
    )
    .await;
    let got = got.into_inner().unwrap();
    // Exactly once: a bitset per sender.
    let mut seen = vec![vec![false; 1 << 20]; acked.len()];
    for m in &got {
        let (s, q) = m.body.split_once(':').unwrap();
        let (s, q): (usize, usize) = (s.parse().unwrap(), q.parse().unwrap());
        assert!(!seen[s][q], "message {s}:{q} is in the inbox twice");
        seen[s][q] = true;
    }
    for (s, list) in acked.iter().enumerate() {
        for (q, _) in list {
            assert!(
                seen[s][*q as usize],
                "acknowledged message {s}:{q} was lost"
            );
        }
        let order: Vec<usize> = got
            .iter()
            .filter(|m| m.from == format!("sender{s}"))
            .map(|m| m.body.split_once(':').unwrap().1.parse().unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "sender{s} out of order"
        );
    }
    total
}
