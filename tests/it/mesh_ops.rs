//! `switchboard mesh` and `switchboard mesh forget NODE` as an operator runs them against real
//! meshes: what is listed (instances, route, state, lag, URL, conflicts), and what forgetting
//! a departed node does at once, and after it comes back.

use serde_json::Value;

use crate::common::*;
use crate::mesh::{Mesh, msg, online_at, up_links};

/// `switchboard mesh --json` at `node`.
async fn mesh_json(node: &NodeProc) -> Value {
    serde_json::from_str(&node.cli(&["mesh", "--json"]).await).unwrap()
}

/// The entry of `peer` in `switchboard mesh --json` at `node`.
async fn entry(node: &NodeProc, peer: &str) -> Option<Value> {
    mesh_json(node).await["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == peer)
        .cloned()
}

async fn instance(port: u16) -> String {
    health(port).await["instance"].as_str().unwrap().to_owned()
}

/// A CLI command at `node` that must fail; its stderr.
async fn cli_fails(node: &NodeProc, args: &[&str]) -> String {
    let out = output(
        tokio::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(&node.dir)
            .args(["--node", &node.url()])
            .args(args),
    )
    .await;
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn mesh_lists_every_node_with_its_instance_state_lag_and_conflicts() {
    let mut mesh = Mesh::start(3).await;
    let alice = mesh.client(0, "alice").await;
    let bob = mesh.client(2, "bob").await;
    eventually(10, "bob online at n3, seen from n1", || async {
        online_at(&alice, "bob").await.as_deref() == Some("n3")
    })
    .await;
    alice.send(msg("bob", "hello")).await.unwrap();
    let (n1, i2, i3) = (
        mesh.node(0),
        instance(mesh.ports[1]).await,
        instance(mesh.ports[2]).await,
    );

    // Both peers up, direct, with their instances and URLs; once settled, nobody is behind.
    let settled = poll(20, "n1's view of n2 and n3 settled", || async {
        let m = mesh_json(n1).await;
        let nodes = m["nodes"].as_array()?.clone();
        let lag_zero = |n: &Value| n["lag"]["to_peer"] == 0 && n["lag"]["from_peer"] == 0;
        (nodes.len() == 2 && nodes.iter().all(lag_zero)).then_some(nodes)
    })
    .await;
    for (n, (id, inst, port)) in settled
        .iter()
        .zip([("n2", &i2, mesh.ports[1]), ("n3", &i3, mesh.ports[2])])
    {
        assert_eq!(n["node"], id);
        assert_eq!(n["instance"], inst.as_str());
        assert_eq!(n["route"], "direct");
        assert_eq!(n["state"], "up");
        assert_eq!(n["url"], format!("ws://127.0.0.1:{port}"), "{n}");
        assert!(n["error"].is_null(), "{n}");
    }
    // n3 logged bob's directory row, which n1 applied.
    let n3 = &settled[1];
    assert!(n3["lag"]["applied_seconds_ago"].as_u64().is_some(), "{n3}");
    let text = n1.cli(&["mesh"]).await;
    assert!(text.contains("2 of 2 known nodes linked"), "{text}");
    assert!(
        text.contains(&i3[..12]) && text.contains("direct") && text.contains("0/0"),
        "{text}"
    );

    // n3 goes away: what n1 logs meanwhile is behind, counted, until n3 is back.
    drop(bob);
    let d3 = mesh.nodes[2].take().unwrap().kill9().await;
    for i in 0..4 {
        alice
            .send(msg("bob", &format!("while away {i}")))
            .await
            .unwrap();
    }
    let away = poll(20, "n3 down with 4+ entries behind", || async {
        let n = entry(mesh.node(0), "n3").await?;
        (n["state"] != "up" && n["lag"]["to_peer"].as_u64()? >= 4).then_some(n)
    })
    .await;
    assert_eq!(away["instance"], i3.as_str(), "remembered while down");
    let text = mesh.node(0).cli(&["mesh"]).await;
    assert!(text.contains("1 of 2 known nodes linked"), "{text}");
    assert_eq!(d3, mesh.dirs[2].path());
    mesh.nodes[2] = Some(mesh.spawn(2).await);
    eventually(20, "n3 caught up", || async {
        entry(mesh.node(0), "n3")
            .await
            .is_some_and(|n| n["state"] == "up" && n["lag"]["to_peer"] == 0)
    })
    .await;

    // A second data dir claiming n1's id: n2 lists the conflict, naming both instances.
    let i1 = instance(mesh.ports[0]).await;
    let imp = tempdir();
    let peer = mesh.node(1).url();
    let impostor = mesh.start_other(imp.path(), free_port(), "n1", &peer).await;
    let claimant = instance(impostor.port).await;
    let conflict = poll(20, "the conflict in n2's mesh", || async {
        mesh_json(mesh.node(1)).await["conflicts"]
            .as_array()?
            .first()
            .cloned()
    })
    .await;
    assert_eq!(
        (
            &conflict["node"],
            &conflict["holder"],
            &conflict["claimant"]
        ),
        (
            &"n1".into(),
            &Value::from(i1.as_str()),
            &Value::from(claimant.as_str())
        )
    );
    let text = mesh.node(1).cli(&["mesh"]).await;
    assert!(
        text.contains(&format!(
            "n1: held by instance {i1}, claimed by instance {claimant}"
        )),
        "{text}"
    );
    assert!(up_links(mesh.ports[1]).await.contains(&"n1".to_owned()));
}

#[tokio::test]
async fn forget_drops_a_departed_node_at_once_and_it_can_rejoin() {
    // n2 and n3 dial only n1 and find each other through it.
    let mut mesh = Mesh::start_with(3, true).await;
    let watcher = mesh.client(1, "watcher").await;
    let bob = mesh.client(2, "bob").await;
    eventually(10, "bob online at n3, seen from n2", || async {
        online_at(&watcher, "bob").await.as_deref() == Some("n3")
    })
    .await;
    let i3 = instance(mesh.ports[2]).await;

    // Refused, with nothing changed: an unknown node, this node itself, an agent's token.
    let n2 = mesh.node(1);
    let err = cli_fails(n2, &["mesh", "forget", "n9"]).await;
    assert!(
        err.contains("no node 'n9' is known here (known: n1, n3)"),
        "{err}"
    );
    let err = cli_fails(n2, &["mesh", "forget", "n2"]).await;
    assert!(err.contains("n2 is this node itself"), "{err}");
    // A token for the name the CLI says hello with, so the connection is accepted.
    let token = n2.cli(&["token", "issue", "cli"]).await;
    let err = cli_fails(n2, &["--token", token.trim(), "mesh", "forget", "n3"]).await;
    assert!(err.contains("needs the local secret"), "{err}");
    assert!(up_links(mesh.ports[1]).await.contains(&"n3".to_owned()));

    // n3 departs (kill -9: its link at n2 looks up for a while yet). Forgotten, it is gone
    // at once: not listed, its agents offline, its dialer stopped.
    drop(bob);
    mesh.nodes[2].take().unwrap().kill9().await;
    let n2 = mesh.node(1);
    let forgot: Value =
        serde_json::from_str(&n2.cli(&["mesh", "forget", "n3", "--json"]).await).unwrap();
    assert_eq!(forgot["node"], "n3");
    assert_eq!(
        forgot["configured"], false,
        "n2 was told of n3, not configured"
    );
    assert_eq!(
        forgot["released"], true,
        "n3's node id was bound to its instance"
    );
    let bob_at_n2 = watcher.presence(Some("bob".into())).await.unwrap().agents;
    assert!(!bob_at_n2[0].online, "offline at once: {bob_at_n2:?}");
    assert!(entry(n2, "n3").await.is_none());
    eventually(20, "no dialer for n3 at n2", || async {
        let h = health(mesh.ports[1]).await;
        h["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["node"] != "n3")
    })
    .await;
    assert_eq!(metric(mesh.ports[1], "peers_known").await, 1);
    let text = n2.cli(&["mesh"]).await;
    assert!(
        text.contains("1 of 1 known nodes linked") && !text.contains("n3"),
        "{text}"
    );

    // n3 comes back (same data dir, same id): n1 reports it, n2 links it again, mail flows.
    mesh.nodes[2] = Some(mesh.spawn(2).await);
    let back = poll(30, "n3 up again in n2's mesh", || async {
        entry(mesh.node(1), "n3")
            .await
            // The link is up a moment before its handshake's instance is recorded.
            .filter(|n| n["state"] == "up" && !n["instance"].is_null())
    })
    .await;
    assert_eq!(back["instance"], i3.as_str());
    let bob = mesh.client(2, "bob").await;
    let r = watcher.send(msg("bob", "welcome back")).await.unwrap();
    eventually(20, "the message at n3", || {
        crate::mesh::has_unread(&bob, &r.id)
    })
    .await;
}

#[tokio::test]
async fn a_forgotten_configured_peer_waits_until_it_links_again() {
    let mut mesh = Mesh::start(2).await;
    // n2 has n1 as its --peer. n1 departs and is forgotten at n2.
    let d1 = mesh.nodes[0].take().unwrap().kill9().await;
    let n2 = mesh.node(1);
    let forgot: Value =
        serde_json::from_str(&n2.cli(&["mesh", "forget", "n1", "--json"]).await).unwrap();
    assert_eq!(forgot["configured"], true);
    let again = cli_fails(n2, &["mesh", "forget", "n1"]).await;
    assert!(again.contains("no node 'n1' is known here"), "{again}");
    eventually(20, "the --peer dialer says it waits", || async {
        let h = health(mesh.ports[1]).await;
        h["peers"].as_array().unwrap().iter().any(|p| {
            p["origin"] == "configured"
                && p["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("switchboard mesh forget"))
        })
    })
    .await;
    assert!(entry(n2, "n1").await.is_none());

    // n1 returns and dials n2 itself: n1 is back, and n2's --peer dialer stands by.
    let peer = n2.url();
    let _n1 = mesh.start_other(&d1, mesh.ports[0], "n1", &peer).await;
    eventually(30, "n1 up again at n2", || async {
        entry(mesh.node(1), "n1")
            .await
            .is_some_and(|n| n["state"] == "up")
    })
    .await;
}

#[tokio::test]
async fn mesh_asks_the_running_node_and_says_what_is_wrong_when_it_cannot() {
    // No node runs for the data dir: a clear error, and no node is hosted to answer.
    let (dir, port) = data_dir_on_free_port();
    let out = output(
        tokio::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .arg("mesh"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not running (nothing answers at"), "{err}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );

    // A node without a mesh secret knows no other node, and has none to forget.
    let config = dir.path().join("config.toml");
    let listen = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{listen}node_id = \"lone\"\n")).unwrap();
    let lone = NodeProc::start_named(dir.path(), port, "lone", &[]).await;
    let text = run_ok(dir.path(), &["mesh"]).await;
    assert!(
        text.contains("0 of 0 known nodes linked") && text.contains("mesh secret"),
        "{text}"
    );
    let err = cli_fails(&lone, &["mesh", "forget", "n2"]).await;
    assert!(err.contains("not in a mesh"), "{err}");
}

#[tokio::test]
async fn forgetting_a_rebuilt_nodes_id_lets_its_new_data_dir_link() {
    let mut mesh = Mesh::start(2).await;
    let alice = mesh.client(0, "alice").await;
    let bob = mesh.client(1, "bob").await;
    eventually(10, "bob online at n2, seen from n1", || async {
        online_at(&alice, "bob").await.as_deref() == Some("n2")
    })
    .await;
    drop(bob);
    // n2's machine is rebuilt: a fresh data dir under the same node id. n1 refuses it.
    mesh.nodes[1].take().unwrap().kill9().await;
    let fresh = tempdir();
    let peer = mesh.node(0).url();
    let n2 = mesh
        .start_other(fresh.path(), free_port(), "n2", &peer)
        .await;
    let new_instance = instance(n2.port).await;
    poll(20, "the conflict at n1", || async {
        mesh_json(mesh.node(0)).await["conflicts"]
            .as_array()?
            .first()
            .cloned()
    })
    .await;

    // The operator forgets the old n2 at n1: the id is free, the new data dir links under it.
    let forgot: Value =
        serde_json::from_str(&mesh.node(0).cli(&["mesh", "forget", "n2", "--json"]).await).unwrap();
    assert_eq!(forgot["released"], true);
    // The link comes up a moment before the view learns its instance: wait for both.
    poll(30, "the new n2 up at n1 under its new instance", || async {
        entry(mesh.node(0), "n2")
            .await
            .filter(|n| n["state"] == "up" && n["instance"] == new_instance.as_str())
    })
    .await;
    assert!(
        mesh_json(mesh.node(0)).await["conflicts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // n1's log flows to the new data dir from its first entry: bob's mail is there.
    let r = alice.send(msg("bob", "after the rebuild")).await.unwrap();
    let bob = n2.client("bob").await;
    eventually(20, "alice's message at the new n2", || {
        crate::mesh::has_unread(&bob, &r.id)
    })
    .await;
}
