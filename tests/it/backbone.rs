//! Nodes that replicate through a real `nats-server -js` (the backbone) instead of direct
//! links: each test starts its own NATS server on a free loopback port with its own store dir.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use switchboard::client::Client;
use switchboard::protocol::DeliveryStatus;

use crate::chaos::{check_exactly_once, numbered_sender};
use crate::common::*;
use crate::mesh::{msg, online_at, unread};

/// JetStream's storage ceiling for test servers. By default a server allows 75 % of the
/// disk's free space, and a stream's `max_bytes` (8 GiB by default) must fit under it: on a
/// build machine with less than 11 GB free, the stream could not be created.
pub const JS_LIMITS: &str = "jetstream { max_file_store: 1TB }\n";

/// The `nats-server` binary: Debian installs it in /usr/sbin, which a non-root PATH may lack.
fn nats_bin() -> &'static str {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server")
}

/// Starts `nats-server` with `args` and waits until it takes clients on `port`.
pub async fn spawn_nats(args: &[std::ffi::OsString], port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new(nats_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server must be installed (apt-get install nats-server)");
    eventually(20, "nats-server accepting connections", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    child
}

/// A `nats-server -js` child on a loopback port, with its JetStream store in its own dir.
pub struct Nats {
    child: Option<tokio::process::Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// More arguments (TLS, a config file).
    args: Vec<String>,
}

impl Nats {
    pub async fn start() -> Nats {
        Self::start_with(Vec::new()).await
    }

    /// A server also given `args`.
    pub async fn start_with(args: Vec<String>) -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            dir: tempdir(),
            args,
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if !self.args.iter().any(|a| a == "-c") {
            let conf = self.dir.path().join("limits.conf");
            std::fs::write(&conf, JS_LIMITS).unwrap();
            args.extend(["-c".into(), conf.into()]);
        }
        let port = self.port.to_string();
        args.extend(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"].map(Into::into));
        args.push(self.dir.path().into());
        args.extend(self.args.iter().map(Into::into));
        self.child = Some(spawn_nats(&args, self.port).await);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// kill -9 (JetStream recovers its store at the next start).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// Starts it again on the same port and store dir.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

/// Nodes n1..nN with only `--backbone`.
pub struct Backbone {
    pub nats: Nats,
    pub dirs: Vec<tempfile::TempDir>,
    pub ports: Vec<u16>,
    pub nodes: Vec<Option<NodeProc>>,
    pub extra: Vec<String>,
}

impl Backbone {
    pub async fn start(n: usize) -> Backbone {
        Self::start_with(n, &[]).await
    }

    /// `n` nodes, each also given `extra` flags; waits until every node hears every other.
    pub async fn start_with(n: usize, extra: &[&str]) -> Backbone {
        let mut b = Backbone {
            nats: Nats::start().await,
            dirs: (0..n).map(|_| tempdir()).collect(),
            ports: (0..n).map(|_| free_port()).collect(),
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            let node = b.spawn(i).await;
            b.nodes.push(Some(node));
        }
        b.wait_heard().await;
        b
    }

    pub async fn spawn(&self, i: usize) -> NodeProc {
        let url = self.nats.url();
        let mut args = vec!["--backbone", url.as_str()];
        args.extend(self.extra.iter().map(String::as_str));
        NodeProc::start_named(
            self.dirs[i].path(),
            self.ports[i],
            &format!("n{}", i + 1),
            &args,
        )
        .await
    }

    pub fn node(&self, i: usize) -> &NodeProc {
        self.nodes[i].as_ref().unwrap()
    }

    pub async fn client(&self, i: usize, agent: &str) -> Client {
        self.node(i).client(agent).await
    }

    /// Every running node is connected and hears every other running node.
    pub async fn wait_heard(&self) {
        all_hear_each_other(&self.running_ports()).await;
    }

    /// Every running node has applied every origin's published log (lag 0 everywhere).
    pub async fn wait_caught_up(&self) {
        all_caught_up(&self.running_ports()).await;
    }

    fn running_ports(&self) -> Vec<u16> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .map(|i| self.ports[i])
            .collect()
    }
}

/// Every node on `ports` is connected and hears every other one.
pub async fn all_hear_each_other(ports: &[u16]) {
    let want = ports.len() - 1;
    for &port in ports {
        eventually(
            30,
            &format!("the node on port {port} hears {want} nodes"),
            || async move {
                let h = health(port).await;
                h["backbone"]["connected"] == true && up_nodes(&h) >= want
            },
        )
        .await;
    }
}

/// Every node on `ports` has applied every origin's published log (lag 0 everywhere).
pub async fn all_caught_up(ports: &[u16]) {
    for &port in ports {
        eventually(
            60,
            &format!("the node on port {port} caught up"),
            || async move {
                let h = health(port).await;
                let b = &h["backbone"];
                b["consumer"]["pending"] == 0
                    && b["origins"]
                        .as_array()
                        .is_some_and(|o| o.iter().all(|o| o["lag"] == 0))
            },
        )
        .await;
    }
}

fn up_nodes(h: &Value) -> usize {
    h["nodes"]
        .as_array()
        .map_or(0, |n| n.iter().filter(|n| n["state"] == "up").count())
}

/// `from` sends `name` (the agent of `to`) a message that answers `delivered`, and `to` has it
/// pushed. Sends are repeated until one does: the first may find the other node's consumer
/// still starting and answer `queued` after its 1 s wait.
pub async fn delivered(from: &Client, to: &Client, name: &str, body: &str) {
    let mut pushes = to.pushes();
    let what = format!("a send to {name} answered delivered");
    let id = poll(60, &what, || async {
        let r = from.send(msg(name, body)).await.ok()?;
        (r.status == DeliveryStatus::Delivered).then_some(r.id)
    })
    .await;
    while next_push(&mut pushes).await.id != id {}
}

/// `alice` sends `body` to `#ops` until the topic has one subscriber where she is (carol's
/// subscription, made at her node, has replicated), and carol has it pushed.
pub async fn topic_reaches(alice: &Client, carol: &Client, body: &str) {
    let mut pushes = carol.pushes();
    eventually(30, "carol's subscription known at alice's node", || async {
        alice
            .send(msg("#ops", body))
            .await
            .is_ok_and(|r| r.recipients == 1)
    })
    .await;
    assert_eq!(next_push(&mut pushes).await.body, body);
}

/// How long `check` took to hold (polled), for the figures the tests print.
pub async fn time_until<F, Fut>(secs: u64, what: &str, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = std::time::Instant::now();
    eventually(secs, what, check).await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_backbone_deliver_direct_topic_and_broadcast_mail() {
    let b = Backbone::start(3).await;
    let alice = b.client(0, "alice").await;
    let bob = b.client(1, "bob").await;
    let carol = b.client(2, "carol").await;
    carol.subscribe("ops".into(), true).await.unwrap();
    // Presence converges: every node sees every agent online where it is connected.
    let joined = time_until(
        10,
        "bob and carol online at their nodes, seen from n1",
        || async {
            online_at(&alice, "bob").await.as_deref() == Some("n2")
                && online_at(&alice, "carol").await.as_deref() == Some("n3")
        },
    )
    .await;
    eventually(10, "alice online at n1, seen from n2 and n3", || async {
        online_at(&bob, "alice").await.as_deref() == Some("n1")
            && online_at(&carol, "alice").await.as_deref() == Some("n1")
    })
    .await;
    eprintln!("backbone: joins seen across nodes after {joined:?}");

    // Direct: bob is online at n2, so alice hears `delivered` (n2's notice over the backbone).
    delivered(&alice, &bob, "bob", "hello over NATS").await;
    let mut bob_pushes = bob.pushes();

    // Topic: carol at n3 subscribed on her node; the subscription replicated to n1.
    topic_reaches(&alice, &carol, "deploy at noon").await;
    let mut carol_pushes = carol.pushes();

    // Broadcast: every known agent but the sender.
    let r = alice.send(msg("*", "all hands")).await.unwrap();
    assert_eq!(r.recipients, 2);
    assert_eq!(next_push(&mut bob_pushes).await.body, "all hands");
    assert_eq!(next_push(&mut carol_pushes).await.body, "all hands");

    // A reply goes back the other way, into alice's inbox at n1.
    let mut alice_pushes = alice.pushes();
    let back = bob.send(msg("alice", "got it")).await.unwrap();
    assert_eq!(back.status, DeliveryStatus::Delivered);
    assert_eq!(next_push(&mut alice_pushes).await.id, back.id);

    // A leave reaches the other nodes.
    drop(carol);
    let left = time_until(10, "carol offline, seen from n1", || async {
        online_at(&alice, "carol").await.is_none()
    })
    .await;
    eprintln!("backbone: a leave seen across nodes after {left:?}");

    // `switchboard mesh` shows the other nodes over the backbone, with their lag.
    b.wait_caught_up().await;
    let out = b.node(0).cli(&["mesh"]).await;
    assert!(
        out.contains("n2") && out.contains("n3") && out.contains("backbone"),
        "{out}"
    );
    let h = health(b.ports[0]).await;
    assert_eq!(h["status"], "ok");
    assert!(h["backbone"]["published"].as_u64() > Some(0), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_agents_mail_waits_on_a_backbone_and_a_dead_nodes_agents_go_offline() {
    let mut b = Backbone::start(3).await;
    // dave is made known at n3 but is not connected anywhere.
    b.node(2).cli(&["agent", "add", "dave"]).await;
    let alice = b.client(0, "alice").await;
    let r = poll(10, "dave known at n1", || async {
        alice.send(msg("dave", "for later")).await.ok()
    })
    .await;
    assert_eq!(r.status, DeliveryStatus::Queued);
    // He comes online at n2 later and finds it.
    let dave = b.client(1, "dave").await;
    eventually(10, "dave's mail at n2", || async {
        dave.inbox(unread(10))
            .await
            .is_ok_and(|i| i.messages.iter().any(|m| m.id == r.id))
    })
    .await;

    // A node killed with -9 says nothing: its agents go offline when its heartbeats stop.
    eventually(10, "dave online at n2, seen from n1", || async {
        online_at(&alice, "dave").await.as_deref() == Some("n2")
    })
    .await;
    drop(dave);
    let erin = b.client(1, "erin").await;
    eventually(10, "erin online at n2, seen from n1", || async {
        online_at(&alice, "erin").await.is_some()
    })
    .await;
    b.nodes[1].take().unwrap().kill9().await;
    drop(erin);
    let gone = time_until(30, "erin offline at n1 after n2 died", || async {
        online_at(&alice, "erin").await.is_none()
    })
    .await;
    eprintln!("backbone: a killed node's agents offline after {gone:?}");
    // While n2 is away, a send to erin is stored and waits (`queued`).
    let r = alice.send(msg("erin", "when you are back")).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Queued);
    b.nodes[1] = Some(b.spawn(1).await);
    let erin = b.client(1, "erin").await;
    eventually(20, "erin's mail at the restarted n2", || async {
        erin.inbox(unread(10))
            .await
            .is_ok_and(|i| i.messages.iter().any(|m| m.id == r.id))
    })
    .await;
}

/// kill -9 of a node and a restart of the NATS server (also kill -9) while numbered messages
/// flow from two nodes to a third: every acknowledged message arrives exactly once and in
/// order. During the NATS outage sends are still accepted (stored at their node) and answer
/// `queued`; they flow once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_and_a_restarted_nats_server_lose_and_duplicate_nothing() {
    let mut b = Backbone::start(3).await;
    // The sink is known everywhere, and offline (its mail waits in its inbox).
    b.node(2).cli(&["agent", "add", "sink"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let senders = vec![
        numbered_sender(b.node(0), 0, stop.clone()).await,
        numbered_sender(b.node(1), 1, stop.clone()).await,
    ];
    wait_for_traffic(&b, 0, 50).await;
    // A node killed mid-stream, restarted on its data dir.
    b.nodes[0].take().unwrap().kill9().await;
    b.nodes[0] = Some(b.spawn(0).await);
    wait_for_traffic(&b, 0, 50).await;
    // The NATS server killed and started again on its store.
    b.nats.kill().await;
    // Sends go on while it is down: committed locally, flowing later.
    wait_for_traffic(&b, 1, 50).await;
    b.nats.restart().await;
    wait_for_traffic(&b, 1, 50).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = vec![Vec::new(); 2];
    for (i, s) in senders.into_iter().enumerate() {
        acked[i] = s.await.unwrap();
    }
    b.wait_heard().await;
    b.wait_caught_up().await;
    let total = check_exactly_once(&b.client(2, "sink").await, &acked).await;
    assert!(total > 200, "only {total} messages");
    // Nothing was lost to retention, and no node is degraded.
    for port in &b.ports {
        let h = health(*port).await;
        assert_eq!(h["status"], "ok", "{h}");
        assert_eq!(h["backbone"]["gaps"], serde_json::json!([]), "{h}");
    }
    eprintln!("backbone: {total} messages exactly once across a node kill and a NATS restart");
}

/// Waits until node `i` has accepted `n` more messages than now.
async fn wait_for_traffic(b: &Backbone, i: usize, n: u64) {
    more_accepted(b.ports[i], n).await;
}

/// Waits until the node on `port` has accepted `n` more messages than now.
pub async fn more_accepted(port: u16, n: u64) {
    let base = metric(port, "messages_accepted_total").await;
    eventually(
        60,
        &format!("{n} more messages accepted at the node on port {port}"),
        || async move { metric(port, "messages_accepted_total").await >= base + n },
    )
    .await;
}

/// Chaos over the backbone: random nodes are killed (-9) and restarted every 1–3 s for
/// `SWITCHBOARD_CHAOS_SECONDS` (default 30) while numbered messages flow from a sender on
/// every node; afterwards every acknowledged message is in the sink's inbox exactly once, in
/// order per sender. Ignored by default: CI runs it once (`.ci/run`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn backbone_chaos_kill_and_restart_nodes_while_messages_flow() {
    use rand::Rng;
    let seconds: u64 = std::env::var("SWITCHBOARD_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut b = Backbone::start(3).await;
    drop(b.client(0, "sink").await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..3 {
        senders.push(numbered_sender(b.node(i), i, stop.clone()).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut kills = 0;
    while tokio::time::Instant::now() < deadline {
        let pause = rand::rng().random_range(1000..3000);
        tokio::time::sleep(Duration::from_millis(pause)).await; // chaos pacing, not sync
        let victim = rand::rng().random_range(0..3);
        if let Some(n) = b.nodes[victim].take() {
            n.kill9().await;
            kills += 1;
            b.nodes[victim] = Some(b.spawn(victim).await);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for s in senders {
        acked.push(s.await.unwrap());
    }
    b.wait_heard().await;
    b.wait_caught_up().await;
    let total = check_exactly_once(&b.client(0, "sink").await, &acked).await;
    assert!(
        kills >= 5 && total > 1000,
        "kills {kills}, messages {total}"
    );
    eprintln!("backbone chaos: {kills} kills, {total} messages, all exactly once and in order");
}
