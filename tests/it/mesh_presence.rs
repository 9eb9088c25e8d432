//! Presence across a mesh whose nodes restart: every node's view converges (issue 16, item 4).

use std::collections::BTreeMap;

use switchboard::client::Client;
use switchboard::protocol::Role;

use crate::common::*;
use crate::mesh::Mesh;

/// Where node `port` sees each agent online (`None`: offline), asked by a command-line
/// session, which is not presence itself.
pub async fn view(node: &NodeProc) -> BTreeMap<String, Option<String>> {
    let c = node
        .client_opts("observer", |o| {
            o.role = Role::Cli;
            o.connect_timeout = std::time::Duration::from_secs(2);
        })
        .await;
    let agents = c.presence(None).await.unwrap().agents;
    agents
        .into_iter()
        .map(|a| (a.name, a.online.then_some(a.node)))
        .collect()
}

/// Waits until every running node of `mesh` sees exactly `want` online where it is.
pub async fn converged(mesh: &Mesh, want: &BTreeMap<String, Option<String>>, what: &str) {
    for (i, n) in mesh.nodes.iter().enumerate() {
        let Some(n) = n else { continue };
        let mut last = BTreeMap::new();
        let ok = tokio::time::timeout(std::time::Duration::from_secs(15), async {
            loop {
                last = view(n).await;
                let shown: BTreeMap<_, _> = last
                    .iter()
                    .filter(|(k, _)| want.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if &shown == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(ok.is_ok(), "{what}: n{} sees {last:?}, not {want:?}", i + 1);
    }
}

/// A client of node i that reconnects when its node restarts.
async fn agent(mesh: &Mesh, i: usize, name: &str) -> Client {
    mesh.node(i).client_opts(name, |o| o.reconnect = true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_every_agent_online_after_a_node_restarts() {
    restarts_converge(false).await;
}

/// The same when every node dials only n1 and finds the others through it: the restarted
/// node's links to the others are made by discovery, from both sides at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_every_agent_online_after_a_node_of_a_hub_mesh_restarts() {
    restarts_converge(true).await;
}

async fn restarts_converge(hub: bool) {
    let mut mesh = Mesh::start_with(3, hub).await;
    let _a1 = agent(&mesh, 0, "a1").await;
    let _a2 = agent(&mesh, 1, "a2").await;
    let _a3 = agent(&mesh, 2, "a3").await;
    let all_online: BTreeMap<String, Option<String>> = [("a1", "n1"), ("a2", "n2"), ("a3", "n3")]
        .into_iter()
        .map(|(a, n)| (a.to_owned(), Some(n.to_owned())))
        .collect();
    converged(&mesh, &all_online, "at start").await;

    // kill -9 of n2, then a restart: its agent comes back, and every view converges again —
    // the restarted node's own view of the others included.
    mesh.nodes[1].take().unwrap().kill9().await;
    let mut a2_gone = all_online.clone();
    a2_gone.insert("a2".into(), None);
    converged(&mesh, &a2_gone, "n2 killed").await;
    mesh.nodes[1] = Some(mesh.spawn(1).await);
    converged(&mesh, &all_online, "n2 restarted after kill -9").await;

    // A clean stop and start of n3 (which n1 and n2 dial back).
    let n3 = mesh.nodes[2].take().unwrap();
    assert!(n3.terminate().await.success());
    mesh.nodes[2] = Some(mesh.spawn(2).await);
    converged(&mesh, &all_online, "n3 restarted after SIGTERM").await;

    // n1, the node every other dials first, restarts too.
    mesh.nodes[0].take().unwrap().kill9().await;
    mesh.nodes[0] = Some(mesh.spawn(0).await);
    converged(&mesh, &all_online, "n1 restarted after kill -9").await;
}
