//! Two data dirs under one node id (a cloned VM): the second is refused by name, the first
//! keeps its link, and once the second is renamed every message from both lands exactly once.

use std::collections::HashMap;

use switchboard::client::Client;

use crate::common::*;
use crate::mesh::{Mesh, msg, online_at, unread, up_links};

/// Sends `n` numbered messages from `c` to bob; returns their ids in order.
async fn send_numbered(c: &Client, who: &str, from: usize, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in from..from + n {
        let r = c.send(msg("bob", &format!("{who} {i}"))).await.unwrap();
        ids.push(r.id);
    }
    ids
}

/// Bob's unread mail at his node, (id, from, body) in inbox order.
async fn bobs_mail(bob: &Client) -> Vec<(String, String, String)> {
    match bob.inbox(unread(200)).await {
        Ok(r) => r
            .messages
            .into_iter()
            .map(|m| (m.id, m.from, m.body))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_second_data_dir_with_the_same_node_id_is_refused_and_loses_nothing() {
    let mesh = Mesh::start(2).await;
    let (n1, n2) = (mesh.node(0), mesh.node(1));
    let alice = mesh.client(0, "alice").await;
    let bob = mesh.client(1, "bob").await;
    let real = health(n1.port).await["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(real.len(), 32, "128 random bits, hex");

    // A send to a name n1 does not know yet is refused: wait until bob's row has come.
    eventually(20, "bob known at n1", || async {
        online_at(&alice, "bob").await.is_some()
    })
    .await;
    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    sent.insert("alice", send_numbered(&alice, "alice", 0, 50).await);
    eventually(20, "alice's first 50 at bob", || async {
        bobs_mail(&bob).await.len() == 50
    })
    .await;

    // The impostor: another data dir, the same node id, the same peer. Bob is known there
    // (a session of his once ran on it), so carol's sends are accepted and logged.
    let imp_dir = tempdir();
    let secret = mesh.secret.display().to_string();
    let peer = format!("ws://127.0.0.1:{}", n2.port);
    let imp_port = free_port();
    let args = ["--mesh-secret-file", &secret, "--peer", &peer];
    let impostor = NodeProc::start_named(imp_dir.path(), imp_port, "n1", &args).await;
    let claimant = health(imp_port).await["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(claimant, real);
    let imp_bob = impostor.client("bob").await;
    let carol = impostor.client("carol").await;
    // Until bob's directory row commits there, a send is refused with nothing sent.
    let first = poll(10, "bob known at the impostor", || async {
        carol.send(msg("bob", "carol 0")).await.ok().map(|r| r.id)
    })
    .await;
    drop(imp_bob);
    let mut ids = vec![first];
    ids.extend(send_numbered(&carol, "carol", 1, 99).await);
    sent.insert("carol", ids);

    // n2 refuses it by name and says so; n1's link stays up.
    let h = poll(20, "n2 degraded by the conflict", || async {
        let h = health(n2.port).await;
        (h["status"] == "degraded").then_some(h)
    })
    .await;
    let c = &h["conflicts"][0];
    assert_eq!(c["node"], "n1");
    assert_eq!(c["holder"], real.as_str());
    assert_eq!(c["claimant"], claimant.as_str());
    assert!(c["since"].as_i64().unwrap() > 0);
    eventually(20, "the impostor's dialer shows the refusal", || async {
        let h = health(imp_port).await;
        h["peers"].as_array().unwrap().iter().any(|p| {
            p["error"]
                .as_str()
                .is_some_and(|e| e.contains("node id n1") && e.contains(&real))
        })
    })
    .await;
    assert!(up_links(n2.port).await.contains(&"n1".to_owned()));

    // The real n1 goes on sending meanwhile.
    sent.get_mut("alice")
        .unwrap()
        .extend(send_numbered(&alice, "alice", 50, 30).await);
    eventually(20, "alice's 80 at bob", || async {
        bobs_mail(&bob).await.len() == 80
    })
    .await;
    assert!(up_links(n2.port).await.contains(&"n1".to_owned()));

    // The operator renames the impostor: its whole log flows, from its first entry.
    impostor.terminate().await;
    let renamed = NodeProc::start_named(imp_dir.path(), imp_port, "n3", &args).await;
    assert_eq!(health(renamed.port).await["instance"], claimant.as_str());
    let mail = poll(30, "all 180 messages at bob", || async {
        let m = bobs_mail(&bob).await;
        (m.len() >= 180).then_some(m)
    })
    .await;
    assert_eq!(mail.len(), 180, "each message exactly once");
    for (who, ids) in &sent {
        let got: Vec<&(String, String, String)> = mail.iter().filter(|m| m.1 == *who).collect();
        let got_ids: Vec<&String> = got.iter().map(|m| &m.0).collect();
        assert_eq!(
            got_ids,
            ids.iter().collect::<Vec<_>>(),
            "{who}'s ids, in order"
        );
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.2, format!("{who} {i}"), "{who}'s bodies, in order");
        }
    }
    assert!(up_links(n2.port).await.contains(&"n1".to_owned()));
}
