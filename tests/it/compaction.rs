//! Log compaction and snapshots: a mesh under load keeps its replication log small once every
//! peer has applied it, and a node that joins later, or comes back after the backlog window,
//! gets the current state from a snapshot and then the live entries.

use switchboard::client::Client;
use switchboard::protocol::{InboxRequest, Status};

use crate::common::*;
use crate::mesh::*;

/// Compaction every 200 ms, no sender limit.
fn fast(extra: &[&str]) -> Vec<String> {
    ["--compact-interval", "200ms", "--send-rate", "0"]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect()
}

/// Sends `n` messages from `from` to `to`, 50 in flight at a time.
async fn burst(from: &Client, to: &str, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let sends = chunk
            .iter()
            .map(|i| from.send(msg(to, &format!("{tag} {i}"))));
        for r in futures_util::future::join_all(sends).await {
            ids.push(r.unwrap().id);
        }
    }
    ids
}

/// What `c`'s inbox holds unread: how many, and the oldest 200 ids (nothing is marked read).
async fn unread_of(c: &Client) -> (u32, Vec<String>) {
    let r = c
        .inbox(InboxRequest {
            mark_read: false,
            ..unread(200)
        })
        .await
        .unwrap();
    let ids: Vec<String> = r.messages.into_iter().map(|m| m.id).collect();
    (ids.len() as u32 + r.unread_remaining, ids)
}

/// Whether `c` has `id` from `from` unread (a filter: the inbox holds thousands).
async fn has_unread_from(c: &Client, from: &str, id: &str) -> bool {
    c.inbox(InboxRequest {
        mark_read: false,
        from: Some(from.into()),
        ..unread(200)
    })
    .await
    .is_ok_and(|r| r.messages.iter().any(|m| m.id == id))
}

async fn messages(port: u16) -> u64 {
    health(port).await["store"]["messages"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_under_load_keeps_its_log_bounded_and_a_late_node_gets_the_state_by_snapshot() {
    let mut mesh = Mesh::prepare(3, false, vec![fast(&[]); 3]);
    for i in 0..2 {
        let n = mesh.spawn(i).await;
        mesh.nodes.push(Some(n));
    }
    mesh.wait_linked().await;
    let alice = mesh.client(0, "alice").await;
    let bob = mesh.client(1, "bob").await;
    let carol = mesh.client(1, "carol").await;
    carol.subscribe("builds".into(), true).await.unwrap();
    bob.set_status(Status::Busy, Some("reviewing".into()))
        .await
        .unwrap();
    let erin_token = issue_token(&alice, "erin").await;
    // Load both ways; the log is sampled while it flows.
    let mut most = 0;
    let mut read = Vec::new();
    for round in 0..6 {
        let ids = burst(&alice, "bob", 500, &format!("a{round}")).await;
        burst(&bob, "alice", 100, &format!("b{round}")).await;
        read.extend(ids.iter().take(100).cloned());
        most = most.max(log_entries(mesh.ports[0]).await);
    }
    eventually(20, "bob's read marks at n2 applied", || async {
        bob.mark_read(read.clone(), false).await.is_ok()
    })
    .await;
    // Once both have applied everything, each log is down to its head.
    logs_compacted(&mesh.ports[..2], 20).await;
    eprintln!("compaction: log_entries at most {most} during 3,600 messages, 1 after");
    // n1 restarts (so its in-memory tail, which could still serve the whole log, is empty),
    // then n3 joins: n1's log starts past n3's cursor, so n3 is sent a snapshot.
    mesh.nodes[0].take().unwrap().terminate().await;
    mesh.nodes[0] = Some(mesh.spawn(0).await);
    mesh.wait_linked().await;
    let started = std::time::Instant::now();
    let n3 = mesh.spawn(2).await;
    mesh.nodes.push(Some(n3));
    mesh.wait_linked().await;
    // bob's row first, before he connects at n3 (which makes n3's view of him the newest).
    let observer = mesh.client(2, "observer").await;
    eventually(30, "bob's status at n3", || async {
        observer.presence(Some("bob".into())).await.is_ok_and(|p| {
            p.agents[0].status == Status::Busy
                && p.agents[0].status_text.as_deref() == Some("reviewing")
        })
    })
    .await;
    let (p1, p3) = (mesh.ports[0], mesh.ports[2]);
    eventually(30, "every message at n3", || async {
        messages(p3).await == messages(p1).await
    })
    .await;
    // (Connected while thousands of pushes arrive, a client that does not read fast enough is
    // cut off, as on any catch-up: it reconnects.)
    let bob3 = mesh
        .node(2)
        .client_opts("bob", |o| o.reconnect = true)
        .await;
    let want = unread_of(&bob).await;
    assert_eq!(want.0, 2400);
    eventually(30, "bob's inbox and read marks at n3", || async {
        unread_of(&bob3).await == want
    })
    .await;
    eprintln!(
        "snapshot: 3,600 messages and their marks at n3 {} ms after it started",
        started.elapsed().as_millis()
    );
    let n1 = mesh.nodes[0].as_mut().unwrap();
    n1.log_line_containing("sent a snapshot", std::time::Duration::from_secs(5))
        .await;
    // The directory, subscriptions and tokens came along.
    let to_builds = observer.send(msg("#builds", "green")).await.unwrap();
    assert_eq!(to_builds.recipients, 1);
    let erin = mesh
        .node(2)
        .client_opts("erin", |o| o.token = erin_token)
        .await;
    assert!(erin.presence(None).await.is_ok());
    // And then live entries, both ways.
    let dave = mesh.client(0, "dave").await;
    let late = dave.send(msg("bob", "after the snapshot")).await.unwrap();
    eventually(10, "a new message at n3", || {
        has_unread_from(&bob3, "dave", &late.id)
    })
    .await;
    let back = bob3.send(msg("dave", "from n3")).await.unwrap();
    eventually(10, "n3's message at n1", || has_unread(&dave, &back.id)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_away_past_the_retained_log_catches_up_from_a_snapshot() {
    let extra = fast(&["--retain-log", "2s"]);
    let mut mesh = Mesh::prepare(2, false, vec![extra.clone(), extra]);
    mesh.spawn_nodes().await;
    mesh.wait_linked().await;
    let alice = mesh.client(0, "alice").await;
    drop(mesh.client(1, "bob").await);
    eventually(10, "bob known at n1", || async {
        alice.presence(Some("bob".into())).await.is_ok()
    })
    .await;
    let before = burst(&alice, "bob", 50, "before").await;
    mesh.nodes[1].take().unwrap().terminate().await;
    // While n2 is away, mail and read marks for bob pile up at n1; after 2 s its backlog goes.
    let away = burst(&alice, "bob", 300, "away").await;
    let bob1 = mesh.client(0, "bob").await;
    bob1.mark_read(away[..10].to_vec(), false).await.unwrap();
    let port = mesh.ports[0];
    eventually(20, "n1's log compacted without n2", || async move {
        log_entries(port).await <= 1
    })
    .await;
    // n1 restarts meanwhile: its in-memory tail, which would serve n2 the entries it missed
    // however compacted the store is, is gone.
    mesh.nodes[0].take().unwrap().terminate().await;
    mesh.nodes[0] = Some(mesh.spawn(0).await);
    let bob1 = mesh.client(0, "bob").await;
    mesh.nodes[1] = Some(mesh.spawn(1).await);
    mesh.wait_linked().await;
    let bob2 = mesh
        .node(1)
        .client_opts("bob", |o| o.reconnect = true)
        .await;
    let want = unread_of(&bob1).await;
    assert_eq!(want.0 as usize, before.len() + away.len() - 10);
    let (p1, p2) = (mesh.ports[0], mesh.ports[1]);
    eventually(30, "everything at n2 again", || async {
        messages(p2).await == messages(p1).await && unread_of(&bob2).await == want
    })
    .await;
    let n1 = mesh.nodes[0].as_mut().unwrap();
    n1.log_line_containing("sent a snapshot", std::time::Duration::from_secs(5))
        .await;
    let dave = mesh.client(0, "dave").await;
    let live = dave.send(msg("bob", "live again")).await.unwrap();
    eventually(10, "live mail at n2", || {
        has_unread_from(&bob2, "dave", &live.id)
    })
    .await;
}
