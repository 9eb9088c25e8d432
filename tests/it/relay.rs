//! Nodes that cannot be dialed (`--advertise none`, laptops behind NAT) linked only to one
//! hub: the hub relays their mail, presence and delivery notices (issue 10, item 3).

use std::collections::BTreeMap;

use serde_json::Value;
use switchboard::client::Client;
use switchboard::protocol::{DeliveryStatus, Role};

use crate::common::*;
use crate::mesh::{Mesh, has_unread, msg, online_at, unread};
use crate::mesh_presence::converged;

/// n1 is the hub (it advertises `ws://localhost:PORT`, another spelling of its address), n2
/// and n3 are laptops that advertise `none` and dial only n1.
async fn hub_and_two_laptops() -> Mesh {
    let mut mesh = Mesh::prepare(3, true, Vec::new());
    let hub = format!("ws://localhost:{}", mesh.ports[0]);
    mesh.extra = vec![
        vec!["--advertise".into(), hub],
        vec!["--advertise".into(), "none".into()],
        vec!["--advertise".into(), "none".into()],
    ];
    mesh.spawn_nodes().await;
    wait_relayed(&mesh).await;
    mesh
}

/// `/health`'s entry for `node` at `port`.
async fn node_entry(port: u16, node: &str) -> Option<Value> {
    health(port).await["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
        .cloned()
}

/// Waits until the hub is linked to both laptops and each laptop reaches the other via n1.
async fn wait_relayed(mesh: &Mesh) {
    let (hub, l1, l2) = (mesh.ports[0], mesh.ports[1], mesh.ports[2]);
    eventually(20, "the hub linked to both laptops", || async move {
        crate::mesh::up_links(hub).await == ["n2", "n3"]
    })
    .await;
    for (port, other) in [(l1, "n3"), (l2, "n2")] {
        eventually(20, &format!("{other} reached via n1"), || async move {
            node_entry(port, other)
                .await
                .is_some_and(|n| n["route"] == "via" && n["via"] == "n1" && n["state"] == "up")
        })
        .await;
    }
}

/// Nothing ever dialed a laptop: the hub shows each as accepted and not dialable, and has no
/// dialer for it; the other laptop knows it only through the hub.
async fn assert_laptops_never_dialed(mesh: &Mesh) {
    let h = health(mesh.ports[0]).await;
    for p in h["peers"].as_array().unwrap() {
        assert!(
            !(p["node"] == "n2" || p["node"] == "n3") || p["origin"] == "accepted",
            "the hub dialed a laptop: {p}"
        );
    }
    for laptop in ["n2", "n3"] {
        let n = node_entry(mesh.ports[0], laptop).await.unwrap();
        assert_eq!(n["undialable"], true, "{n}");
        assert_eq!(n["origin"], "accepted", "{n}");
    }
    for (port, other) in [(mesh.ports[1], "n3"), (mesh.ports[2], "n2")] {
        let h = health(port).await;
        assert!(
            h["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["node"] != other),
            "a laptop dialed the other: {h}"
        );
    }
}

/// An agent of node i whose client reconnects when its node restarts.
async fn agent(mesh: &Mesh, i: usize, name: &str) -> Client {
    mesh.node(i).client_opts(name, |o| o.reconnect = true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_laptops_behind_a_hub_exchange_mail_presence_and_delivered_status() {
    let mesh = hub_and_two_laptops().await;
    let alice = agent(&mesh, 1, "alice").await;
    let bob = agent(&mesh, 2, "bob").await;
    let (mut alice_pushes, mut bob_pushes) = (alice.pushes(), bob.pushes());
    // Presence both ways, each agent on its own node.
    eventually(10, "bob online at n3, seen from n2", || async {
        online_at(&alice, "bob").await.as_deref() == Some("n3")
    })
    .await;
    eventually(10, "alice online at n2, seen from n3", || async {
        online_at(&bob, "alice").await.as_deref() == Some("n2")
    })
    .await;
    // Mail both ways; the sender hears `delivered` across the hub.
    let r = alice.send(msg("bob", "through the hub")).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Delivered);
    assert_eq!(next_push(&mut bob_pushes).await.id, r.id);
    let r = bob.send(msg("alice", "and back")).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Delivered);
    assert_eq!(next_push(&mut alice_pushes).await.id, r.id);
    // A topic: bob's subscription reaches n2 through the hub.
    bob.subscribe("ops".into(), true).await.unwrap();
    let t = poll(10, "bob's subscription at n2", || async {
        alice
            .send(msg("#ops", "deploy done"))
            .await
            .ok()
            .filter(|r| r.recipients == 1)
    })
    .await;
    assert_eq!(t.status, DeliveryStatus::Published);
    while next_push(&mut bob_pushes).await.id != t.id {}
    // A broadcast from a laptop reaches the other laptop's agent.
    let b = bob.send(msg("*", "all hands")).await.unwrap();
    assert_eq!(b.status, DeliveryStatus::Delivered);
    while next_push(&mut alice_pushes).await.id != b.id {}
    // The hub has everything too (every node is a full replica).
    let watcher = mesh
        .node(0)
        .client_opts("alice", |o| o.role = Role::Cli)
        .await;
    eventually(5, "the hub has bob's broadcast", || {
        has_unread(&watcher, &b.id)
    })
    .await;
    // How each is reached, and the advertised URLs.
    assert_laptops_never_dialed(&mesh).await;
    let hub = node_entry(mesh.ports[2], "n1").await.unwrap();
    assert_eq!(hub["route"], "direct", "{hub}");
    let advertised = format!("ws://localhost:{}", mesh.ports[0]);
    let seen = node_entry(mesh.ports[0], "n2").await.unwrap();
    assert!(seen["url"].is_null(), "a none node has no URL: {seen}");
    // A laptop reports the hub by the URL it advertises: a new node that links to a laptop
    // would dial that.
    let out = mesh.node(1).cli(&["mesh", "--json"]).await;
    assert!(out.contains(&advertised), "{out}");
    let table = mesh.node(1).cli(&["mesh"]).await;
    assert!(table.contains("via n1"), "{table}");
}

/// `n` numbered messages from `from` to `to`, each acknowledged; their ids.
async fn send_numbered(from: &Client, to: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids = Vec::new();
    for i in range {
        let r = from.send(msg(to, &format!("{i}"))).await.unwrap();
        ids.push(r.id);
    }
    ids
}

/// The ids of `agent`'s unread mail at node i (read by a command-line session), once there
/// are at least `want`.
async fn inbox_at(mesh: &Mesh, i: usize, agent: &str, want: usize) -> Vec<String> {
    let c = mesh
        .node(i)
        .client_opts(agent, |o| o.role = Role::Cli)
        .await;
    poll(
        30,
        &format!("{want} messages for {agent} at n{}", i + 1),
        || async {
            let got = c.inbox(unread(200)).await.ok()?.messages;
            (got.len() >= want).then(|| got.into_iter().map(|m| m.id).collect())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_mail_survives_kill_9_of_each_node_exactly_once_and_in_order() {
    let mut mesh = hub_and_two_laptops().await;
    let alice = agent(&mesh, 1, "alice").await;
    let bob = agent(&mesh, 2, "bob").await;
    let online: BTreeMap<String, Option<String>> = [("alice", "n2"), ("bob", "n3")]
        .into_iter()
        .map(|(a, n)| (a.to_owned(), Some(n.to_owned())))
        .collect();
    converged(&mesh, &online, "at start").await;
    let (mut to_bob, mut to_alice) = (Vec::new(), Vec::new());
    let mut next = 0;
    for victim in [0, 2, 1] {
        to_bob.extend(send_numbered(&alice, "bob", next..next + 20).await);
        to_alice.extend(send_numbered(&bob, "alice", next..next + 20).await);
        next += 20;
        mesh.nodes[victim].take().unwrap().kill9().await;
        if victim == 0 {
            // The hub gone, the laptops are linked to nothing: each shows the other's agent
            // offline, and mail is queued meanwhile.
            eventually(15, "bob offline, seen from n2", || async {
                online_at(&alice, "bob").await.is_none()
            })
            .await;
            eventually(15, "alice offline, seen from n3", || async {
                online_at(&bob, "alice").await.is_none()
            })
            .await;
            let r = alice.send(msg("bob", &format!("{next}"))).await.unwrap();
            assert_eq!(r.status, DeliveryStatus::Queued);
            to_bob.push(r.id);
            next += 1;
        }
        mesh.nodes[victim] = Some(mesh.spawn(victim).await);
        wait_relayed(&mesh).await;
        converged(&mesh, &online, &format!("n{} restarted", victim + 1)).await;
    }
    to_bob.extend(send_numbered(&alice, "bob", next..next + 10).await);
    to_alice.extend(send_numbered(&bob, "alice", next..next + 10).await);
    // Every node has every message once, in each sender's order.
    for i in 0..3 {
        let at = inbox_at(&mesh, i, "bob", to_bob.len()).await;
        assert_eq!(at, to_bob, "alice's mail for bob at n{}", i + 1);
        let at = inbox_at(&mesh, i, "alice", to_alice.len()).await;
        assert_eq!(at, to_alice, "bob's mail for alice at n{}", i + 1);
    }
    assert_laptops_never_dialed(&mesh).await;
}
