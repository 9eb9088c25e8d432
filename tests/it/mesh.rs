//! Real meshes of separate node processes on loopback, each with its own port and data dir.

use std::collections::HashSet;
use std::path::PathBuf;

use switchboard::client::Client;
use switchboard::protocol::{DeliveryStatus, InboxRequest, SendRequest, Status};

use crate::common::*;

pub struct Mesh {
    pub dirs: Vec<tempfile::TempDir>,
    pub ports: Vec<u16>,
    pub nodes: Vec<Option<NodeProc>>,
    pub secret: PathBuf,
    /// Every node dials only n1 (and the nodes find each other), instead of every earlier node.
    pub hub: bool,
    /// More arguments for node i's `switchboard node`.
    pub extra: Vec<Vec<String>>,
    _secret_dir: tempfile::TempDir,
}

pub fn secret_file(dir: &std::path::Path, secret: &str) -> PathBuf {
    let p = dir.join("mesh.secret");
    std::fs::write(&p, secret).unwrap();
    p
}

impl Mesh {
    /// `n` nodes n1..nN; node i dials every node before it, which makes a full mesh.
    pub async fn start(n: usize) -> Mesh {
        Self::start_with(n, false).await
    }

    /// `n` nodes n1..nN; with `hub`, every node dials only n1.
    pub async fn start_with(n: usize, hub: bool) -> Mesh {
        let mut m = Self::prepare(n, hub, Vec::new());
        m.spawn_nodes().await;
        m.wait_linked().await;
        m
    }

    /// `n` nodes as [`Mesh::start_with`], not started yet; `extra[i]`: more arguments for
    /// node i (the ports are chosen, so they may name them).
    pub fn prepare(n: usize, hub: bool, extra: Vec<Vec<String>>) -> Mesh {
        let secret_dir = tempdir();
        let secret = secret_file(secret_dir.path(), "correct horse battery staple");
        let dirs: Vec<_> = (0..n).map(|_| tempdir()).collect();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut m = Mesh {
            dirs,
            ports,
            nodes: Vec::new(),
            secret,
            hub,
            extra,
            _secret_dir: secret_dir,
        };
        m.extra.resize(n, Vec::new());
        m
    }

    /// Starts every node of a prepared mesh.
    pub async fn spawn_nodes(&mut self) {
        for i in 0..self.ports.len() {
            let node = self.spawn(i).await;
            self.nodes.push(Some(node));
        }
    }

    pub async fn spawn(&self, i: usize) -> NodeProc {
        let mut args = vec![
            "--mesh-secret-file".to_owned(),
            self.secret.display().to_string(),
        ];
        for j in 0..i {
            if self.hub && j > 0 {
                break;
            }
            args.push("--peer".into());
            args.push(format!("ws://127.0.0.1:{}", self.ports[j]));
        }
        args.extend(self.extra[i].iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
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

    /// Waits until every running node has a live link to every other running node.
    pub async fn wait_linked(&self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect();
        for &i in &running {
            let want = running.len() - 1;
            let port = self.ports[i];
            eventually(
                20,
                &format!("n{} linked to {want} peers", i + 1),
                || async move {
                    let up: HashSet<String> = up_links(port).await.into_iter().collect();
                    up.len() >= want
                },
            )
            .await;
        }
    }

    /// A node outside the mesh's own list (an impostor, a rebuilt or restarted machine): data
    /// dir `dir`, id `id`, the mesh's secret, dialing `peer`.
    pub async fn start_other(
        &self,
        dir: &std::path::Path,
        port: u16,
        id: &str,
        peer: &str,
    ) -> NodeProc {
        let secret = self.secret.display().to_string();
        let args = ["--mesh-secret-file", secret.as_str(), "--peer", peer];
        NodeProc::start_named(dir, port, id, &args).await
    }

    /// A client of node i, with node i's local secret.
    pub async fn client(&self, i: usize, agent: &str) -> Client {
        self.node(i).client(agent).await
    }
}

pub async fn online_at(c: &Client, agent: &str) -> Option<String> {
    let p = c.presence(Some(agent.into())).await.ok()?.agents.pop()?;
    p.online.then_some(p.node)
}

/// `alice` sees `bob` online at `node`, sends him a message, is told `delivered`, and bob has
/// it pushed.
pub async fn send_live(alice: &Client, bob: &Client, node: &str, body: &str) {
    let mut pushes = bob.pushes();
    eventually(5, &format!("bob online at {node}"), || async {
        online_at(alice, "bob").await.as_deref() == Some(node)
    })
    .await;
    let r = alice.send(msg("bob", body)).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Delivered);
    assert_eq!(next_push(&mut pushes).await.id, r.id);
}

/// Whether `c` has the message `id` unread (without marking it read).
pub async fn has_unread(c: &Client, id: &str) -> bool {
    c.inbox(unread(200))
        .await
        .is_ok_and(|r| r.messages.iter().any(|m| m.id == id))
}

pub fn unread(limit: u32) -> InboxRequest {
    InboxRequest::unread(limit)
}

pub fn msg(to: &str, body: &str) -> SendRequest {
    SendRequest {
        to: to.into(),
        body: body.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_presence_and_deliver_across_nodes() {
    let mesh = Mesh::start(3).await;
    let bob = mesh.client(2, "bob").await;
    let mut pushes = bob.pushes();
    let alice = mesh.client(0, "alice").await;
    // Presence converges: n1 sees bob online at n3, n2 sees alice online at n1.
    eventually(5, "bob online at n3, seen from n1", || async {
        online_at(&alice, "bob").await.as_deref() == Some("n3")
    })
    .await;
    let watcher = mesh.client(1, "watcher").await;
    eventually(5, "alice online at n1, seen from n2", || async {
        online_at(&watcher, "alice").await.as_deref() == Some("n1")
    })
    .await;
    // A message from n1 reaches bob on n3, and the status is true.
    let r = alice.send(msg("bob", "across the mesh")).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Delivered);
    let m = next_push(&mut pushes).await;
    assert_eq!(m.id, r.id);
    assert_eq!(m.from, "alice");
    // Topics reach subscribers on every node, once each.
    bob.subscribe("ops".into(), true).await.unwrap();
    watcher.subscribe("ops".into(), true).await.unwrap();
    eventually(5, "subscriptions replicated to n1", || async {
        alice
            .send(msg("#ops", "deploy done"))
            .await
            .map(|r| r.recipients == 2)
            .unwrap_or(false)
    })
    .await;
    eventually(5, "the topic message at n2", || async {
        watcher
            .inbox(unread(50))
            .await
            .unwrap()
            .messages
            .iter()
            .any(|m| m.body == "deploy done")
    })
    .await;
    // Broadcast reaches every other known agent, on every node.
    let b = alice.send(msg("*", "all hands")).await.unwrap();
    assert_eq!(b.recipients, 2);
    assert_eq!(b.status, DeliveryStatus::Delivered);
    // Earlier pushes may come first; each wait is bounded by next_push's deadline.
    while next_push(&mut pushes).await.id != b.id {}
    eventually(5, "the broadcast at n2", || has_unread(&watcher, &b.id)).await;
    // /metrics counts what crossed the mesh.
    let n1 = mesh.ports[0];
    // Counters move as links and appliers get to them: each is waited for, bounded.
    let n3 = mesh.ports[2];
    eventually(
        5,
        "n1 counts its links and what it forwarded and delivered",
        || async move {
            metric(n1, "peers_linked").await == 2
                && metric(n1, "forwarded_total").await >= 3
                && metric(n1, "messages_delivered_total").await >= 2
        },
    )
    .await;
    eventually(5, "n3 counts what it replicated", || async move {
        metric(n3, "replicated_total").await >= 3
    })
    .await;
    // bob leaves: n1 shows him offline within a second or so (link presence).
    drop(pushes);
    drop(bob);
    eventually(5, "bob offline, seen from n1", || async {
        online_at(&alice, "bob").await.is_none()
    })
    .await;
    let h = health(mesh.ports[0]).await;
    assert_eq!(
        h["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "up")
            .count(),
        2,
        "{h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mail_and_read_state_follow_the_agent_across_nodes() {
    let mesh = Mesh::start(3).await;
    drop(mesh.client(1, "bob").await);
    let alice = mesh.client(0, "alice").await;
    eventually(5, "bob known at n1", || async {
        alice.presence(Some("bob".into())).await.is_ok()
    })
    .await;
    let r = alice.send(msg("bob", "waiting for you")).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Queued);
    // bob shows up at n3 instead of n2: his mail is there.
    let bob3 = mesh.client(2, "bob").await;
    eventually(5, "the message at n3", || has_unread(&bob3, &r.id)).await;
    assert_eq!(
        bob3.mark_read(vec![r.id.clone()], false)
            .await
            .unwrap()
            .marked,
        1
    );
    drop(bob3);
    // ... and reading it there is remembered on n2.
    let bob2 = mesh.client(1, "bob").await;
    eventually(5, "the read mark at n2", || async {
        bob2.inbox(unread(10)).await.unwrap().messages.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_mesh_secret_is_refused() {
    let mesh = Mesh::start(1).await;
    let dir = tempdir();
    let bad = secret_file(dir.path(), "not the right secret at all");
    let port = free_port();
    let intruder = NodeProc::start_named(
        dir.path(),
        port,
        "intruder",
        &[
            "--mesh-secret-file",
            bad.to_str().unwrap(),
            "--peer",
            &mesh.node(0).url(),
        ],
    )
    .await;
    eventually(10, "the intruder's link reported down", || async {
        let h = health(port).await;
        h["peers"][0]["state"] == "down"
            && h["peers"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("authentication"))
    })
    .await;
    let h = health(mesh.ports[0]).await;
    assert!(h["peers"].as_array().unwrap().is_empty(), "{h}");
    drop(intruder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_sigstop_lose_nothing_and_duplicate_nothing() {
    let mut mesh = Mesh::start(3).await;
    drop(mesh.client(1, "bob").await);
    let alice = std::sync::Arc::new(mesh.client(0, "alice").await);
    eventually(5, "bob known at n1", || async {
        alice.presence(Some("bob".into())).await.is_ok()
    })
    .await;
    let mut acked = Vec::new();
    for i in 0..150 {
        if i == 50 {
            // kill -9 the node bob belongs to, mid-stream.
            mesh.nodes[1].take().unwrap().kill9().await;
        }
        if i == 100 {
            mesh.nodes[1] = Some(mesh.spawn(1).await);
            // Pause n3 for a while: its link goes quiet, then resumes.
            let pid = mesh.node(2).child.id().unwrap().to_string();
            std::process::Command::new("kill")
                .args(["-STOP", &pid])
                .status()
                .unwrap();
            let r = alice.send(msg("bob", &format!("{i}"))).await.unwrap();
            acked.push(r.id);
            std::process::Command::new("kill")
                .args(["-CONT", &pid])
                .status()
                .unwrap();
            continue;
        }
        let r = alice.send(msg("bob", &format!("{i}"))).await.unwrap();
        acked.push(r.id);
    }
    mesh.wait_linked().await;
    for node in [1, 2] {
        let bob = mesh.client(node, "bob").await;
        let got = poll(
            20,
            &format!("all 150 messages at n{}", node + 1),
            || async {
                let got = bob.inbox(unread(200)).await.unwrap().messages;
                (got.len() >= acked.len()).then_some(got)
            },
        )
        .await;
        let ids: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids.len(),
            acked.len(),
            "a message twice or missing at n{}",
            node + 1
        );
        assert_eq!(
            ids,
            acked.iter().map(String::as_str).collect::<Vec<_>>(),
            "order per sender at n{}",
            node + 1
        );
    }
}

/// A node pushes a peer's message to its session before committing it (the origin has it
/// already). Killed right after bob saw a push, it must still end with every message exactly
/// once: whatever it had not committed comes again from the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_right_after_a_push_ends_with_each_message_once() {
    let mut mesh = Mesh::start(2).await;
    let bob = mesh.client(1, "bob").await;
    let mut pushes = bob.pushes();
    let alice = std::sync::Arc::new(mesh.client(0, "alice").await);
    eventually(5, "bob online at n2, seen from n1", || async {
        online_at(&alice, "bob").await.as_deref() == Some("n2")
    })
    .await;
    let sends: Vec<_> = (0..40)
        .map(|i| {
            let alice = alice.clone();
            tokio::spawn(async move { alice.send(msg("bob", &format!("{i}"))).await.unwrap().id })
        })
        .collect();
    next_push(&mut pushes).await;
    mesh.nodes[1].take().unwrap().kill9().await;
    drop(bob);
    let mut acked = Vec::new();
    for s in sends {
        acked.push(s.await.unwrap());
    }
    acked.sort();
    mesh.nodes[1] = Some(mesh.spawn(1).await);
    mesh.wait_linked().await;
    let bob = mesh.client(1, "bob").await;
    let ids: Vec<String> = poll(20, "all 40 messages at the restarted n2", || async {
        let got = bob.inbox(unread(200)).await.unwrap().messages;
        (got.len() >= acked.len()).then(|| got.into_iter().map(|m| m.id).collect())
    })
    .await;
    assert_eq!(ids, acked, "each message exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_a_mesh_later_shares_its_history() {
    use switchboard::protocol::TokenAction;
    // n2 starts alone: a single node logs nothing for peers. It makes one change of every kind
    // the mesh replicates: a message, a read mark, an agent row (status and text), a
    // subscription added and one removed, a token issued and one revoked.
    let mut mesh = Mesh::start(1).await;
    let dir = tempdir();
    let port = free_port();
    let lone = NodeProc::start_named(dir.path(), port, "n2", &[]).await;
    let bob = lone.client("bob").await;
    let alice = lone.client("alice").await;
    let early = alice
        .send(msg("bob", "sent before the mesh"))
        .await
        .unwrap();
    let read = alice
        .send(msg("bob", "read before the mesh"))
        .await
        .unwrap();
    bob.mark_read(vec![read.id.clone()], false).await.unwrap();
    bob.set_status(Status::Busy, Some("reviewing".into()))
        .await
        .unwrap();
    let carol = lone.client("carol").await;
    carol.subscribe("builds".into(), true).await.unwrap();
    carol.subscribe("ops".into(), true).await.unwrap();
    carol.subscribe("ops".into(), false).await.unwrap();
    let erin_token = issue_token(&alice, "erin").await;
    let frank_token = issue_token(&alice, "frank").await;
    alice
        .token(TokenAction::Revoke, Some("frank".into()))
        .await
        .unwrap();
    drop((alice, bob, carol));
    lone.terminate().await;
    // Restarted with the mesh secret and n1 as its peer, it ships everything it has.
    let secret = mesh.secret.display().to_string();
    let n2 = NodeProc::start_named(
        dir.path(),
        port,
        "n2",
        &["--mesh-secret-file", &secret, "--peer", &mesh.node(0).url()],
    )
    .await;
    let n1 = mesh.node(0);
    // The agent row, seen from n1 before bob connects there (where he is online, n1's view wins).
    let observer = n1.client("observer").await;
    eventually(10, "bob's status at n1", || async {
        observer.presence(Some("bob".into())).await.is_ok_and(|p| {
            p.agents[0].status == Status::Busy
                && p.agents[0].status_text.as_deref() == Some("reviewing")
        })
    })
    .await;
    // The message, still unread, and the read mark.
    let bob = mesh.client(0, "bob").await;
    eventually(10, "n2's earlier message at n1", || {
        has_unread(&bob, &early.id)
    })
    .await;
    assert!(
        !has_unread(&bob, &read.id).await,
        "a message read at n2 must be read at n1"
    );
    let all = bob
        .inbox(InboxRequest {
            unread_only: false,
            ..unread(10)
        })
        .await
        .unwrap()
        .messages;
    assert!(all.iter().any(|m| m.id == read.id && m.read), "{all:?}");
    // The subscriptions: #builds reaches carol from n1, #ops has nobody.
    let to_builds = observer.send(msg("#builds", "green")).await.unwrap();
    assert_eq!(to_builds.recipients, 1);
    let to_ops = observer.send(msg("#ops", "anyone?")).await.unwrap_err();
    assert!(to_ops.to_string().contains("nobody subscribes"), "{to_ops}");
    // The tokens: erin's works at n1, frank's revoked one does not.
    let erin = n1.client_opts("erin", |o| o.token = erin_token).await;
    assert!(erin.presence(None).await.is_ok());
    let frank = Client::connect({
        let mut o = switchboard::client::ClientOptions::new(n1.url(), "frank", frank_token);
        o.reconnect = false;
        o
    })
    .await;
    assert!(frank.is_err(), "a token revoked at n2 must not work at n1");
    mesh.nodes.push(Some(n2));
}

/// bob's directory row as node `i` shows it: (online, node, status, status text).
async fn bob_row(mesh: &Mesh, i: usize) -> Option<(bool, String, String, Option<String>)> {
    let c = mesh.client(i, "observer").await;
    let p = c.presence(Some("bob".into())).await.ok()?.agents.pop()?;
    Some((
        p.online,
        p.node,
        p.status.as_str().to_owned(),
        p.status_text,
    ))
}

/// bob connects to node `i`, sets his status there, and leaves.
async fn bob_sets(mesh: &Mesh, i: usize, status: Status) {
    let bob = mesh.client(i, "bob").await;
    let text = format!("on n{}", i + 1);
    bob.set_status(status, Some(text)).await.unwrap();
    drop(bob);
    eventually(10, "bob offline", || async {
        bob_row(mesh, i).await.is_some_and(|r| !r.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_made_on_both_sides_of_a_partition_end_the_same_everywhere() {
    let mut mesh = Mesh::start(2).await;
    // Partition: n2 restarts with the mesh secret (so it keeps logging) but without its peer,
    // and n1 dials nobody.
    let secret = mesh.secret.display().to_string();
    mesh.nodes[1].take().unwrap().terminate().await;
    let alone = NodeProc::start_named(
        mesh.dirs[1].path(),
        mesh.ports[1],
        "n2",
        &["--mesh-secret-file", &secret],
    )
    .await;
    mesh.nodes[1] = Some(alone);
    // bob changes his status on both sides.
    bob_sets(&mesh, 1, Status::Busy).await;
    bob_sets(&mesh, 0, Status::Away).await;
    let (at1, at2) = (bob_row(&mesh, 0).await, bob_row(&mesh, 1).await);
    assert_ne!(at1, at2, "the two sides differ during the partition");
    // Heal: each side applies the other's changes; both must end with the same row.
    mesh.nodes[1].take().unwrap().terminate().await;
    mesh.nodes[1] = Some(mesh.spawn(1).await);
    mesh.wait_linked().await;
    eventually(10, "bob's row the same on both nodes", || async {
        let (a, b) = (bob_row(&mesh, 0).await, bob_row(&mesh, 1).await);
        a.is_some() && a == b
    })
    .await;
    let row = bob_row(&mesh, 0).await.unwrap();
    assert!(
        row == at1.clone().unwrap() || row == at2.clone().unwrap(),
        "the result is one side's change, whole: {row:?}"
    );
}

/// Links at node `port` that are up, by peer.
pub async fn up_links(port: u16) -> Vec<String> {
    let h = health(port).await;
    let mut up: Vec<String> = h["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "up")
        .filter_map(|p| p["node"].as_str().map(str::to_owned))
        .collect();
    up.sort();
    up
}
