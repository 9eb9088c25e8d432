//! How nodes find each other and keep one link per pair: hubs, crossing dials, addresses
//! that now lead to another node.

use switchboard::protocol::DeliveryStatus;

use crate::common::*;
use crate::mesh::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_share_a_hub_find_each_other_and_keep_their_link_without_it() {
    // n2 and n3 are each told only about n1.
    let mut mesh = Mesh::start_with(3, true).await;
    let bob = mesh.client(2, "bob").await;
    let alice = mesh.client(1, "alice").await;
    send_live(&alice, &bob, "n3", "found you").await;

    // The hub goes away; the link it introduced stays, and mail keeps flowing.
    let hub = mesh.nodes[0].take().unwrap();
    hub.kill9().await;
    mesh.wait_linked().await;
    send_live(&alice, &bob, "n3", "still here").await;
    // /metrics tells that part of the mesh is out of reach.
    let n2 = mesh.ports[1];
    eventually(15, "n2 counts 1 of 2 peers linked", || async move {
        metric(n2, "peers_linked").await == 1 && metric(n2, "peers_known").await == 2
    })
    .await;

    // n3 restarts while the hub is down: its only configured peer is gone, yet n2 finds it
    // again, and mail sent while it was down arrives.
    drop(bob);
    mesh.nodes[2].take().unwrap().kill9().await;
    let r = alice.send(msg("bob", "while you were out")).await.unwrap();
    assert_eq!(r.status, DeliveryStatus::Queued);
    mesh.nodes[2] = Some(mesh.spawn(2).await);
    mesh.wait_linked().await;
    let bob = mesh.client(2, "bob").await;
    eventually(10, "the queued message at n3", || has_unread(&bob, &r.id)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_that_dial_each_other_keep_one_link() {
    let secret_dir = tempdir();
    let secret = secret_file(secret_dir.path(), "correct horse battery staple");
    let secret = secret.display().to_string();
    let (d1, d2) = (tempdir(), tempdir());
    let (p1, p2) = (free_port(), free_port());
    let peer = |p: u16| format!("ws://127.0.0.1:{p}");
    let (u1, u2) = (peer(p1), peer(p2));
    let a1 = ["--mesh-secret-file", &secret, "--peer", &u2];
    let a2 = ["--mesh-secret-file", &secret, "--peer", &u1];
    let (n1, n2) = tokio::join!(
        NodeProc::start_named(d1.path(), p1, "n1", &a1),
        NodeProc::start_named(d2.path(), p2, "n2", &a2),
    );
    eventually(10, "one link up at each side", || async {
        up_links(p1).await == ["n2"] && up_links(p2).await == ["n1"]
    })
    .await;
    // The surviving link carries presence and mail.
    let bob = n2.client("bob").await;
    let alice = n1.client("alice").await;
    send_live(&alice, &bob, "n2", "one link").await;
    assert_eq!(up_links(p1).await, ["n2"]);
    assert_eq!(up_links(p2).await, ["n1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_found_at_an_old_address_is_not_mistaken_for_the_one_that_left() {
    // n3 leaves; a new node n4 starts on n3's port. n2 still remembers n3 there.
    let mut mesh = Mesh::start_with(3, true).await;
    let port = mesh.ports[2];
    mesh.nodes[2].take().unwrap().kill9().await;
    let dir = tempdir();
    let hub = format!("ws://127.0.0.1:{}", mesh.ports[0]);
    let secret = mesh.secret.display().to_string();
    let n4 = NodeProc::start_named(
        dir.path(),
        port,
        "n4",
        &["--mesh-secret-file", &secret, "--peer", &hub],
    )
    .await;
    // n4 refuses n2's dial for n3 after authenticating it, before it could replace a link...
    let n2 = mesh.ports[1];
    eventually(15, "n2's dial for n3 refused by n4", || async move {
        health(n2).await["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| {
                p["origin"] == "discovered"
                    && p["node"] == "n3"
                    && p["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("this is node n4, not n3"))
            })
    })
    .await;
    // ... and n4 joins the mesh as itself, linked to both, carrying mail.
    eventually(15, "n4 linked to n1 and n2", || async {
        up_links(port).await == ["n1", "n2"]
    })
    .await;
    let bob = n4.client("bob").await;
    let alice = mesh.client(1, "alice").await;
    send_live(&alice, &bob, "n4", "hello n4").await;
    assert_eq!(up_links(port).await, ["n1", "n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_address_taken_over_by_another_node_leaves_no_ghost() {
    // n2 is configured with n1's address; n1 leaves and n3 takes its place there.
    let mut mesh = Mesh::start(2).await;
    let (n1_port, n2_port) = (mesh.ports[0], mesh.ports[1]);
    mesh.nodes[0].take().unwrap().kill9().await;
    let dir = tempdir();
    let secret = mesh.secret.display().to_string();
    let _n3 =
        NodeProc::start_named(dir.path(), n1_port, "n3", &["--mesh-secret-file", &secret]).await;
    // n2 links to n3 and no longer counts n1 as a peer it is missing.
    eventually(
        15,
        "n2 linked to n3, knowing of no other node",
        || async move {
            up_links(n2_port).await == ["n3"]
                && metric(n2_port, "peers_linked").await == 1
                && metric(n2_port, "peers_known").await == 1
        },
    )
    .await;
}
