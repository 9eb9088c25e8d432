//! The backbone on more than one NATS server, as operators run it: a three-server JetStream
//! cluster holding an R3 stream, one server of which is killed while mail flows, and a
//! laptop's NATS leaf node dialing out to a hub that runs JetStream in a domain of its own,
//! whose link is cut. Every server is a real `nats-server` on free loopback ports, run from a
//! config file the test writes (2.9 syntax: Debian's server).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::client::Client;
use switchboard::protocol::DeliveryStatus;

use crate::backbone::{
    all_caught_up, all_hear_each_other, delivered, more_accepted, spawn_nats, time_until,
};
use crate::backbone_auth::{creds, operator};
use crate::backbone_link::{Link, State};
use crate::chaos::{Sent, acked, check_exactly_once, numbered_sender_to};
use crate::common::*;
use crate::mesh::msg;

/// A `nats-server -c FILE` child on free loopback ports (clients, monitoring), with its
/// config file and JetStream store in a temp dir of its own.
struct Server {
    name: String,
    port: u16,
    http: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl Server {
    fn new(name: &str) -> Server {
        Server {
            name: name.to_owned(),
            port: free_port(),
            http: free_port(),
            dir: tempdir(),
            child: None,
        }
    }

    /// Its JetStream store dir, quoted for the config file.
    fn store(&self) -> String {
        format!("{:?}", self.dir.path().join("js").display().to_string())
    }

    /// Writes its config: name, ports, and `body`.
    fn configure(&self, body: &str) {
        let text = format!(
            "server_name: {}\nlisten: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\n{body}",
            self.name, self.port, self.http
        );
        std::fs::write(self.dir.path().join("server.conf"), text).unwrap();
    }

    /// Starts it (again: same ports, same store) and waits until it takes clients.
    async fn spawn(&mut self) {
        let conf = self.dir.path().join("server.conf");
        self.child = Some(spawn_nats(&["-c".into(), conf.into()], self.port).await);
    }

    /// kill -9.
    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The `host:port` a node connected to it shows in `/health`.
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its monitoring page `/jsz` with every stream's config and state, while it answers.
    async fn jsz(&self) -> Option<Value> {
        let body = try_http_get(self.http, "/jsz?streams=true&config=true")
            .await
            .ok()?;
        serde_json::from_str(&body).ok()
    }

    /// The stream SWITCHBOARD as this server holds it, once it holds it.
    async fn stream(&self) -> Option<Value> {
        let jsz = self.jsz().await?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|d| d["name"] == "SWITCHBOARD")
            .cloned()
    }
}

/// Three servers clustered on loopback, each with JetStream, once they have elected a
/// JetStream meta leader (before that no stream can be placed).
async fn cluster() -> Vec<Server> {
    let mut servers: Vec<Server> = (1..=3).map(|i| Server::new(&format!("s{i}"))).collect();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let seeds: Vec<String> = routes
        .iter()
        .map(|p| format!("\"nats://127.0.0.1:{p}\""))
        .collect();
    for (s, route) in servers.iter().zip(&routes) {
        s.configure(&format!(
            "jetstream {{ store_dir: {}, max_file_store: 1TB }}\n\
             cluster {{ name: sb, listen: \"127.0.0.1:{route}\", routes: [{}] }}\n",
            s.store(),
            seeds.join(", ")
        ));
    }
    for s in &mut servers {
        s.spawn().await;
    }
    eventually(
        60,
        "a JetStream meta leader that all three servers know, with both peers current",
        || async {
            let mut leaders = Vec::new();
            for s in &servers {
                let Some(jsz) = s.jsz().await else {
                    return false;
                };
                let meta = &jsz["meta_cluster"];
                if meta["cluster_size"] != 3 {
                    return false;
                }
                // Only the leader reports its peers.
                if meta["leader"] == s.name.as_str() {
                    let peers = meta["replicas"].as_array().cloned().unwrap_or_default();
                    if peers.len() != 2 || peers.iter().any(|p| p["current"] != true) {
                        return false;
                    }
                }
                leaders.push(meta["leader"].as_str().unwrap_or_default().to_owned());
            }
            leaders.iter().all(|l| !l.is_empty() && *l == leaders[0])
        },
    )
    .await;
    servers
}

/// The stream's leader and the leader's view of it once `current` of its two followers are
/// current.
async fn stream_leader(servers: &[Server], current: usize) -> (usize, Value) {
    let what = format!("the stream's leader with {current} followers current");
    poll(60, &what, || async {
        for s in servers.iter().filter(|s| s.child.is_some()) {
            let Some(d) = s.stream().await else { continue };
            if d["cluster"]["leader"] != s.name.as_str() {
                continue;
            }
            let followers = d["cluster"]["replicas"].as_array()?;
            let up = followers.iter().filter(|p| p["current"] == true).count();
            let i = servers.iter().position(|x| x.name == s.name)?;
            return (followers.len() == 2 && up >= current).then_some((i, d));
        }
        None
    })
    .await
}

/// Waits until `watcher` sees `agent` online at `node` (`None`: offline); how long it took.
async fn sees(watcher: &Client, agent: &str, node: Option<&str>) -> Duration {
    let what = format!("{agent} seen at {node:?}");
    time_until(60, &what, || async {
        crate::mesh::online_at(watcher, agent).await.as_deref() == node
    })
    .await
}

/// Stops `sender0` and `sender1`, waits until every node on `ports` hears the others and has
/// applied everything, and checks that each sink (sender0's, sender1's) holds its sender's
/// acknowledged mail exactly once and in order. Their sends.
async fn finish(
    stop: &AtomicBool,
    senders: [tokio::task::JoinHandle<Vec<Sent>>; 2],
    sinks: [&Client; 2],
    ports: &[u16],
) -> [Vec<Sent>; 2] {
    stop.store(true, Ordering::Relaxed);
    let [a, b] = senders;
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    all_hear_each_other(ports).await;
    all_caught_up(ports).await;
    check_exactly_once(sinks[0], &[acked(&a)]).await;
    check_exactly_once(sinks[1], &[Vec::new(), acked(&b)]).await;
    [a, b]
}

/// Every node on `ports` goes back to `/health` `ok` (a publish retried or a consumer restarted
/// says so until it has worked again) and lacks nothing (no gap).
async fn healthy(ports: &[u16]) {
    for &port in ports {
        let h = poll(30, &format!("the node on port {port} ok"), || async move {
            let h = health(port).await;
            (h["status"] == "ok").then_some(h)
        })
        .await;
        assert_eq!(h["backbone"]["gaps"], serde_json::json!([]), "{h}");
    }
}

/// Counts of (delivered, queued) among `sent` answered within `from..to`.
fn statuses(sent: &[Sent], from: Instant, to: Instant) -> (usize, usize) {
    let within = sent.iter().filter(|s| s.at > from && s.at < to);
    within.fold((0, 0), |(d, q), s| match s.status {
        DeliveryStatus::Delivered => (d + 1, q),
        DeliveryStatus::Queued => (d, q + 1),
        _ => (d, q),
    })
}

/// Three nodes, each seeded with a different server of a three-server cluster, replicate
/// through an R3 stream: the stream really has three replicas, direct and topic mail cross
/// nodes, and when the stream leader's server — the one a node is connected to — is killed
/// with -9 while numbered messages flow both ways, that node goes on through another server
/// (its only seed is gone: it uses the servers the cluster told it of), its sends answer
/// `queued` while it hears nobody, and every acknowledged message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_on_a_nats_cluster_loses_nothing_when_a_nodes_server_is_killed() {
    let start = Instant::now();
    let mut servers = cluster().await;
    let dirs: Vec<_> = (0..3).map(|_| tempdir()).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        std::fs::write(dir.path().join("config.toml"), "[backbone]\nreplicas = 3\n").unwrap();
        let url = servers[i].url();
        let name = format!("n{}", i + 1);
        let args = ["--backbone", url.as_str()];
        nodes.push(NodeProc::start_named(dir.path(), ports[i], &name, &args).await);
    }
    all_hear_each_other(&ports).await;

    // Every server holds the stream, with three replicas; the leader says both followers are
    // current; every node found the stream as its settings say (no mismatch note).
    let (v, stream) = stream_leader(&servers, 2).await;
    assert_eq!(stream["config"]["num_replicas"], 3, "{stream}");
    for s in &servers {
        let d = s
            .stream()
            .await
            .unwrap_or_else(|| panic!("{} lacks the stream", s.name));
        assert_eq!(d["config"]["num_replicas"], 3, "{d}");
    }
    for (i, port) in ports.iter().enumerate() {
        let h = health(*port).await;
        assert_eq!(h["backbone"]["stream"]["replicas"], 3, "{h}");
        assert_eq!(h["backbone"]["stream"]["note"], Value::Null, "{h}");
        assert_eq!(h["backbone"]["server"], servers[i].addr().as_str(), "{h}");
    }

    // Direct and topic mail cross nodes.
    let watchers = [
        nodes[0].client("alice").await,
        nodes[1].client("bob").await,
        nodes[2].client("carol").await,
    ];
    let [alice, bob, carol] = &watchers;
    carol.subscribe("ops".into(), true).await.unwrap();
    sees(alice, "bob", Some("n2")).await;
    delivered(alice, bob, "bob", "over three servers").await;
    crate::backbone::topic_reaches(alice, carol, "to the topic").await;

    // The victim: the stream leader's server, and the node on it. Numbered mail flows from
    // that node to an agent online at the next node, and from the third node to it.
    let (w, x) = ((v + 1) % 3, (v + 2) % 3);
    let (vname, wname) = (format!("n{}", v + 1), format!("n{}", w + 1));
    let inw = nodes[w].client("inw").await;
    let inv = nodes[v].client("inv").await;
    sees(&watchers[v], "inw", Some(&wname)).await;
    sees(&watchers[x], "inv", Some(&vname)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let from_v = numbered_sender_to(&nodes[v], 0, "inw", stop.clone()).await;
    let from_x = numbered_sender_to(&nodes[x], 1, "inv", stop.clone()).await;
    more_accepted(ports[v], 50).await;
    more_accepted(ports[x], 50).await;

    let killed = Instant::now();
    servers[v].kill().await;
    let old = servers[v].addr();
    let reconnected = time_until(60, "the victim's node connected elsewhere", || async {
        let h = health(ports[v]).await;
        let b = &h["backbone"];
        b["connected"] == true && b["server"].as_str().is_some_and(|s| s != old)
    })
    .await;
    // It hears the others again: inw is online at W for it.
    sees(&watchers[v], "inw", Some(&wname)).await;
    let heard = killed.elapsed();
    let back = Instant::now();
    more_accepted(ports[v], 50).await;
    more_accepted(ports[x], 50).await;
    let [sent_v, sent_x] = finish(&stop, [from_v, from_x], [&inw, &inv], &ports).await;
    let (total_v, total_x) = (sent_v.len(), sent_x.len());

    // Before the kill its sends were `delivered`. Then a send can only be delivered through the
    // stream, whose leader is gone until the two servers left elect another (seconds: JetStream's
    // election timeout): sends answer `queued` — at once while the node hears nobody, after the
    // 1 s wait for the recipient's ack otherwise — and the mail flows once the stream is back.
    let (before, _) = statuses(&sent_v, start, killed);
    let (_, queued) = statuses(&sent_v, killed, Instant::now());
    let (after, _) = statuses(&sent_v, back, Instant::now());
    assert!(
        before > 0 && queued > 0 && after > 0,
        "{before} {queued} {after}"
    );
    let first_queued = sent_v
        .iter()
        .position(|s| s.at > killed && s.status == DeliveryStatus::Queued);
    let delivered_again = sent_v[first_queued.unwrap_or_default()..]
        .iter()
        .find(|s| s.status == DeliveryStatus::Delivered)
        .map(|s| s.at - killed);
    healthy(&ports).await;

    // The two servers left elected a new leader; the killed one, restarted on its store,
    // catches up and the stream has three current replicas again.
    let (new, _) = stream_leader(&servers, 1).await;
    assert_ne!(new, v);
    servers[v].spawn().await;
    let (_, d) = stream_leader(&servers, 2).await;
    let last = d["state"]["last_seq"].as_u64();
    eventually(
        60,
        "the restarted server holds the whole stream",
        || async {
            let s = servers[v].stream().await;
            s.is_some_and(|s| s["state"]["last_seq"].as_u64() >= last)
        },
    )
    .await;
    eprintln!(
        "backbone R3: leader {} killed; its node connected to another server after \
         {reconnected:?}, heard the others after {heard:?}, had a send delivered again after \
         {delivered_again:?}; {queued} sends answered queued meanwhile; {total_v} + {total_x} \
         messages exactly once; new leader {}",
        servers[v].name, servers[new].name
    );
}

/// README's leaf-node setup: a hub server with JetStream in the domain `hub` and a leaf node
/// port; a laptop's server without JetStream, on loopback, whose leaf node dials the hub; a
/// node on each server with `domain = "hub"`. Mail crosses both ways and presence converges;
/// then the laptop's link is cut (both servers and nodes keep running): once each side has the
/// other's agents offline every send answers `queued`, and after the link is back all of it
/// arrives exactly once. The hub's server killed -9 and restarted on its store changes nothing
/// either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_laptop_behind_a_leaf_node_replicates_through_the_hub_and_catches_up_after_a_cut() {
    let start = Instant::now();
    // The hub is in operator mode, as the leaf's `credentials` and the hub's node's
    // `--backbone-creds` need: one account with JetStream. It tells leaf nodes the link's
    // address as its own (a leaf dials the address its hub advertises after a cut, which would
    // bypass the link the test cuts).
    let op = operator();
    let mut hub = Server::new("hub");
    let hub_creds = creds(hub.dir.path(), "hq.creds", &op.account.0);
    let laptop_creds = creds(hub.dir.path(), "laptop.creds", &op.account.0);
    let leafnodes = free_port();
    let link = Link::start(leafnodes).await;
    hub.configure(&format!(
        "{}jetstream {{ store_dir: {}, domain: hub, max_file_store: 1TB }}\n\
         leafnodes {{ listen: \"127.0.0.1:{leafnodes}\", advertise: \"127.0.0.1:{}\" }}\n",
        op.config(),
        hub.store(),
        link.port
    ));
    hub.spawn().await;
    // The laptop's server: loopback only, no JetStream, no users of its own; its leaf node
    // signs in to the hub's account.
    let mut laptop = Server::new("laptop");
    laptop.configure(&format!(
        "leafnodes {{ remotes = [ {{ urls: [\"nats://127.0.0.1:{}\"], credentials: {:?} }} ] }}\n",
        link.port,
        laptop_creds.display().to_string()
    ));
    laptop.spawn().await;
    let (dh, dl) = (tempdir(), tempdir());
    for d in [&dh, &dl] {
        std::fs::write(
            d.path().join("config.toml"),
            "[backbone]\ndomain = \"hub\"\n",
        )
        .unwrap();
    }
    let ports = [free_port(), free_port()];
    let hub_args = [
        "--backbone",
        &hub.url(),
        "--backbone-creds",
        &hub_creds.display().to_string(),
    ];
    let hq = NodeProc::start_named(dh.path(), ports[0], "hq", &hub_args).await;
    let laptop_url = laptop.url();
    let lap = NodeProc::start_named(dl.path(), ports[1], "lap", &["--backbone", &laptop_url]).await;
    all_hear_each_other(&ports).await;
    // The stream lives at the hub; the laptop's node reaches it through its own server.
    assert!(hub.stream().await.is_some(), "no stream at the hub");
    assert_eq!(
        health(ports[1]).await["backbone"]["server"],
        laptop.addr().as_str()
    );

    // Mail both ways, `delivered`; presence converges.
    let alice = hq.client("alice").await;
    let bob = lap.client("bob").await;
    sees(&alice, "bob", Some("lap")).await;
    sees(&bob, "alice", Some("hq")).await;
    delivered(&alice, &bob, "bob", "to the laptop").await;
    delivered(&bob, &alice, "alice", "to the hub").await;

    // Numbered mail both ways, each to an agent online at the other end.
    let (lsink, hsink) = (lap.client("lsink").await, hq.client("hsink").await);
    sees(&alice, "lsink", Some("lap")).await;
    sees(&bob, "hsink", Some("hq")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let to_lap = numbered_sender_to(&hq, 0, "lsink", stop.clone()).await;
    let to_hq = numbered_sender_to(&lap, 1, "hsink", stop.clone()).await;
    let flowing = |n| async move {
        more_accepted(ports[0], n).await;
        more_accepted(ports[1], n).await;
    };
    flowing(30).await;

    // The link is cut. A node unheard for 10 s is gone: then each side has the other's agents
    // offline, and while the link stays cut every send answers `queued`.
    let cut = Instant::now();
    link.set(State::Cut);
    sees(&alice, "lsink", None).await;
    sees(&bob, "hsink", None).await;
    let offline = cut.elapsed();
    let both_offline = Instant::now();
    flowing(30).await;
    let restored = Instant::now();
    link.set(State::Up);
    sees(&alice, "lsink", Some("lap")).await;
    sees(&bob, "hsink", Some("hq")).await;
    let heard = restored.elapsed();
    flowing(30).await;

    // The hub's server killed -9, then started again on its store. (The laptop's sends wait
    // 1 s each for an ack until the hub's node has been unheard for 10 s: a few suffice.)
    hub.kill().await;
    flowing(5).await;
    hub.spawn().await;
    sees(&alice, "lsink", Some("lap")).await;
    sees(&bob, "hsink", Some("hq")).await;
    flowing(30).await;

    let [sent_lap, sent_hq] = finish(&stop, [to_lap, to_hq], [&lsink, &hsink], &ports).await;
    let (n_lap, n_hq) = (sent_lap.len(), sent_hq.len());
    for sent in [&sent_lap, &sent_hq] {
        let (before, _) = statuses(sent, start, cut);
        let (delivered, queued) = statuses(sent, both_offline, restored);
        assert!(
            before > 0 && delivered == 0 && queued > 0,
            "{before} {delivered} {queued}"
        );
    }
    healthy(&ports).await;
    eprintln!(
        "backbone leaf: link cut, each side had the other's agents offline after {offline:?}; \
         link back, heard again after {heard:?}; {n_lap} + {n_hq} messages exactly once \
         across the cut and a hub restart"
    );
}

/// A stream JetStream will not create — three replicas asked of a lone server — leaves the
/// node connected but unable to replicate: `/health` says `degraded` with the server's reason
/// instead of `ok`, and the node still serves its own agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_server_refuses_to_create_makes_the_node_degraded_with_the_reason() {
    let nats = crate::backbone::Nats::start().await;
    let dir = tempdir();
    std::fs::write(dir.path().join("config.toml"), "[backbone]\nreplicas = 3\n").unwrap();
    let url = nats.url();
    let node = NodeProc::start_named(dir.path(), free_port(), "n1", &["--backbone", &url]).await;
    let h = poll(30, "/health degraded: the stream was refused", || async {
        let h = health(node.port).await;
        let refused = h["reasons"]
            .to_string()
            .contains("replicas > 1 not supported");
        (h["status"] == "degraded" && refused).then_some(h)
    })
    .await;
    assert_eq!(h["backbone"]["connected"], true, "{h}");
    eprintln!("backbone: a refused stream: {}", h["reasons"]);
    let carol = node.client("carol").await;
    carol.send(msg("carol", "to myself")).await.unwrap();
}
