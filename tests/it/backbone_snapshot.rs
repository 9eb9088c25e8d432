//! Nodes that fell behind the backbone stream's retention catch up from a snapshot: the stream
//! (1 MiB, so a few hundred KiB of mail pushes the oldest entries out) no longer holds what
//! they missed, another node's store does, and they take its state over NATS request/reply.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchboard::client::Client;
use switchboard::protocol::{InboxRequest, Status};

use crate::backbone::Nats;
use crate::chaos::{check_exactly_once, numbered_sender};
use crate::common::*;
use crate::mesh::msg;

/// A body of about 30 KB that says which message it is: 35 of them are more than the stream
/// keeps.
fn numbered(i: usize) -> String {
    format!("{i}:{}", "x".repeat(30_000))
}

/// A node on the backbone with a 1 MiB stream (the first to start makes it) and no send limit.
async fn node(dir: &Path, port: u16, id: &str, nats: &Nats) -> NodeProc {
    std::fs::write(dir.join("config.toml"), "[backbone]\nmax_bytes = 1048576\n").unwrap();
    let url = nats.url();
    NodeProc::start_named(dir, port, id, &["--backbone", &url, "--send-rate", "0"]).await
}

/// Sends `n` numbered messages, from `first` on, to `to`; their ids.
async fn flood(from: &Client, to: &str, first: usize, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in first..first + n {
        ids.push(from.send(msg(to, &numbered(i))).await.unwrap().id);
    }
    ids
}

/// Everything from alice in the client's inbox (at most 200), read or not, left as it is:
/// (id, number, read).
async fn whole_inbox(c: &Client) -> Vec<(String, usize, bool)> {
    let r = c
        .inbox(InboxRequest {
            unread_only: false,
            mark_read: false,
            from: Some("alice".into()),
            ..InboxRequest::unread(200)
        })
        .await
        .unwrap();
    r.messages
        .into_iter()
        .map(|m| {
            let n = m
                .body
                .split_once(':')
                .map_or(usize::MAX, |(n, _)| n.parse().unwrap_or(usize::MAX));
            (m.id, n, m.read)
        })
        .collect()
}

/// Every message sent is in the inbox exactly once, and exactly the first `read` are read.
fn assert_exactly_once(inbox: &[(String, usize, bool)], sent: &[String], read: usize) {
    let mut ids: Vec<&str> = inbox.iter().map(|(id, _, _)| id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "a message is in the inbox twice");
    let mut want: Vec<&str> = sent.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "the inbox holds other messages than those sent");
    let mut numbers: Vec<usize> = inbox.iter().map(|(_, n, _)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..sent.len()).collect::<Vec<_>>());
    for (_, n, r) in inbox {
        assert_eq!(*r, *n < read, "message {n}: read {r}");
    }
}

/// `/health` is `ok`, without gaps, and the consumer has applied everything published.
async fn settled(port: u16) -> bool {
    let h = health(port).await;
    let b = &h["backbone"];
    h["status"] == "ok"
        && b["gaps"] == serde_json::json!([])
        && b["consumer"]["pending"] == 0
        && b["origins"]
            .as_array()
            .is_some_and(|o| o.iter().all(|o| o["lag"] == 0))
}

async fn stored(port: u16) -> u64 {
    health(port).await["store"]["messages"]
        .as_u64()
        .unwrap_or(0)
}

/// The agent's status and text, as a client of another name sees it (without connecting as
/// the agent, which would make that node's view of it the newest).
async fn status_of(observer: &Client, agent: &str) -> Option<(Status, Option<String>)> {
    let p = observer.presence(Some(agent.into())).await.ok()?;
    let a = p.agents.into_iter().next()?;
    Some((a.status, a.status_text))
}

/// n1 and n2 on the backbone, bob made at n2 (and not connected) and known at n1, alice
/// connected at n1.
struct Pair {
    dirs: [tempfile::TempDir; 2],
    ports: [u16; 2],
    n1: NodeProc,
    n2: NodeProc,
    alice: Client,
}

async fn pair(nats: &Nats) -> Pair {
    let dirs = [tempdir(), tempdir()];
    let ports = [free_port(), free_port()];
    let n1 = node(dirs[0].path(), ports[0], "n1", nats).await;
    let n2 = node(dirs[1].path(), ports[1], "n2", nats).await;
    drop(n2.client("bob").await);
    let alice = n1.client("alice").await;
    eventually(20, "bob known at n1", || async {
        alice.presence(Some("bob".into())).await.is_ok()
    })
    .await;
    Pair {
        dirs,
        ports,
        n1,
        n2,
        alice,
    }
}

/// B is away while A's mail to bob, bob's read marks and directory changes made at A push
/// the oldest entries out of the stream. B, back, finds the gap, takes A's snapshot, and has
/// every message once, the read marks, the rows, the subscription and the token; then live
/// mail flows as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_the_stream_dropped_what_it_missed_catches_up_from_a_snapshot() {
    let nats = Nats::start().await;
    let Pair {
        dirs: [_d1, d2],
        ports: [p1, p2],
        n1,
        n2,
        alice,
    } = pair(&nats).await;
    n2.terminate().await;

    // While n2 is away: directory changes, mail, read marks, more mail.
    let bob1 = n1.client("bob").await;
    bob1.set_status(Status::Busy, Some("on n1 for now".into()))
        .await
        .unwrap();
    alice.subscribe("ops".into(), true).await.unwrap();
    let erin_token = issue_token(&alice, "erin").await;
    let mut sent = flood(&alice, "bob", 0, 100).await;
    bob1.mark_read(sent[..10].to_vec(), false).await.unwrap();
    drop(bob1);
    sent.extend(flood(&alice, "bob", 100, 50).await);
    published(p1).await;

    let started = std::time::Instant::now();
    let mut n2 = node(d2.path(), p2, "n2", &nats).await;
    n2.log_line_containing("took a snapshot", Duration::from_secs(30))
        .await;
    eventually(30, "n2 caught up, without gaps, ok", || settled(p2)).await;
    eprintln!(
        "backbone snapshot: 150 messages of 30 KB and their marks at the returning node {} ms \
         after it started",
        started.elapsed().as_millis()
    );
    assert_eq!(stored(p2).await, stored(p1).await);
    let observer = n2.client("observer").await;
    assert_eq!(
        status_of(&observer, "bob").await,
        Some((Status::Busy, Some("on n1 for now".into())))
    );
    let bob2 = n2.client("bob").await;
    assert_exactly_once(&whole_inbox(&bob2).await, &sent, 10);
    // The subscription and the token came along.
    assert_eq!(
        observer
            .send(msg("#ops", "deploy"))
            .await
            .unwrap()
            .recipients,
        1
    );
    let erin = n2.client_opts("erin", |o| o.token = erin_token).await;
    assert!(erin.presence(None).await.is_ok());
    // Live mail flows as before, once.
    let late = alice.send(msg("bob", &numbered(150))).await.unwrap();
    sent.push(late.id);
    eventually(20, "live mail at n2", || async {
        whole_inbox(&bob2).await.len() == sent.len()
    })
    .await;
    assert_exactly_once(&whole_inbox(&bob2).await, &sent, 10);
    let h = health(p2).await;
    assert_eq!(h["status"], "ok", "{h}");
}

/// Mail keeps flowing from n1 to an agent of n2's while n2 is away, while the stream drops
/// what n2 missed, and while n2, back, catches up from snapshots and the stream at once:
/// every acknowledged message is in the sink's inbox at n2 exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_flowing_while_a_node_catches_up_arrives_once_and_in_order() {
    let nats = Nats::start().await;
    let Pair {
        dirs: [_d1, d2],
        ports: [_, p2],
        n1,
        n2,
        alice,
    } = pair(&nats).await;
    n2.cli(&["agent", "add", "sink"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = numbered_sender(&n1, 0, stop.clone()).await;
    n2.terminate().await;
    flood(&alice, "bob", 0, 60).await;
    let n2 = node(d2.path(), p2, "n2", &nats).await;
    eventually(30, "n2 took a snapshot", || async {
        health(p2).await["backbone"]["catch_up"]["last"].is_string()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = sender.await.unwrap();
    eventually(60, "n2 caught up, without gaps, ok", || settled(p2)).await;
    let total = check_exactly_once(&n2.client("sink").await, &[acked]).await;
    eprintln!("backbone snapshot: {total} messages sent during a catch-up, each once, in order");
}

/// A node that joins after the stream dropped the oldest entries of two logs, while one of
/// their origins is down: the log of the node that is down comes from the one that is up
/// (which applied it), and the log of the one that is up, which left the stream whole, from
/// itself. The new node ends with the full state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joining_after_the_stream_dropped_entries_gets_the_full_state() {
    let nats = Nats::start().await;
    let (d1, d2, d3) = (tempdir(), tempdir(), tempdir());
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let n1 = node(d1.path(), p1, "n1", &nats).await;
    let n2 = node(d2.path(), p2, "n2", &nats).await;
    // n2's own changes come first: the mail that follows pushes them out of the stream.
    let bob = n2.client("bob").await;
    bob.set_status(Status::Away, Some("lunch".into()))
        .await
        .unwrap();
    bob.subscribe("builds".into(), true).await.unwrap();
    let alice = n1.client("alice").await;
    eventually(20, "bob known at n1", || async {
        alice.presence(Some("bob".into())).await.is_ok()
    })
    .await;
    let mut sent = flood(&alice, "bob", 0, 60).await;
    // Read at n2, so these marks are n2's entries, between n1's.
    eventually(20, "the first mail at n2", || async {
        whole_inbox(&bob)
            .await
            .iter()
            .any(|(id, _, _)| *id == sent[4])
    })
    .await;
    bob.mark_read(sent[..5].to_vec(), false).await.unwrap();
    sent.extend(flood(&alice, "bob", 60, 60).await);
    eventually(30, "n2 has all of n1's mail", || async {
        stored(p2).await == stored(p1).await
    })
    .await;
    drop(bob);
    eventually(30, "n2 settled", || settled(p2)).await;
    // n1 goes down; n3 joins.
    n1.terminate().await;
    let started = std::time::Instant::now();
    let mut n3 = node(d3.path(), p3, "n3", &nats).await;
    n3.log_line_containing("took a snapshot", Duration::from_secs(30))
        .await;
    eventually(30, "n3 without gaps, ok", || async {
        let h = health(p3).await;
        h["status"] == "ok" && h["backbone"]["gaps"] == serde_json::json!([])
    })
    .await;
    eprintln!(
        "backbone snapshot: a new node had 120 messages of 30 KB {} ms after it started",
        started.elapsed().as_millis()
    );
    assert_eq!(stored(p3).await, stored(p2).await);
    let observer = n3.client("observer").await;
    assert_eq!(
        status_of(&observer, "bob").await,
        Some((Status::Away, Some("lunch".into())))
    );
    assert_eq!(
        observer
            .send(msg("#builds", "green"))
            .await
            .unwrap()
            .recipients,
        1
    );
    let bob3 = n3.client("bob").await;
    assert_exactly_once(&whole_inbox(&bob3).await, &sent, 5);
    // n1 back: its new mail reaches n3 through the stream, once.
    let n1 = node(d1.path(), p1, "n1", &nats).await;
    let alice = n1.client("alice").await;
    let late = alice.send(msg("bob", &numbered(120))).await.unwrap();
    sent.push(late.id);
    eventually(20, "n1's new mail at n3", || async {
        whole_inbox(&bob3).await.len() == sent.len()
    })
    .await;
    assert_exactly_once(&whole_inbox(&bob3).await, &sent, 5);
    eventually(30, "n3 settled", || settled(p3)).await;
}

/// Waits until the node has published its whole log to the stream.
async fn published(port: u16) {
    eventually(20, "the node's log published", || async {
        let h = health(port).await;
        h["backbone"]["published"].as_u64() == h["backbone"]["log_head"].as_u64()
    })
    .await;
}

/// n1 alone on the backbone, where alice has sent bob (known, not connected) `n` numbered
/// messages, all published: its dir, port, process, alice and the ids.
async fn alone(nats: &Nats, n: usize) -> (tempfile::TempDir, u16, NodeProc, Client, Vec<String>) {
    let (d1, p1) = (tempdir(), free_port());
    let n1 = node(d1.path(), p1, "n1", nats).await;
    n1.cli(&["agent", "add", "bob"]).await;
    let alice = n1.client("alice").await;
    let sent = flood(&alice, "bob", 0, n).await;
    published(p1).await;
    (d1, p1, n1, alice, sent)
}

/// The line a node logs when it has taken a snapshot, which names the node it came from.
async fn snapshot_taken(n: &mut NodeProc) -> String {
    n.log_line_containing("took a snapshot", Duration::from_secs(30))
        .await
}

/// A node that joins while the origin whose oldest entries the stream dropped is down, and no
/// other node has them, says so: `/health` is `degraded` with the missing range and what the
/// catch-up waits for, also after a restart, while the entries after the gap flow. Once the
/// origin is back, the gap is filled from its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_no_node_online_can_fill_is_reported_until_its_origin_is_back() {
    let nats = Nats::start().await;
    let (d1, p1, n1, alice, mut sent) = alone(&nats, 40).await;
    let (d2, p2) = (tempdir(), free_port());
    drop(alice);
    n1.terminate().await;
    // n2 joins now: the stream no longer has n1's first entries, and n1 is not there.
    let n2 = node(d2.path(), p2, "n2", &nats).await;
    let (gap, why) = poll(20, "n2 reports a gap in n1's log", || async move {
        let h = health(p2).await;
        let g = h["backbone"]["gaps"].as_array()?.first()?.clone();
        let why = h["backbone"]["catch_up"]["waiting"].as_str()?.to_owned();
        (h["status"] == "degraded").then_some((g, why))
    })
    .await;
    assert_eq!(
        (gap["node"].as_str(), gap["from"].as_u64()),
        (Some("n1"), Some(1))
    );
    assert!(gap["to"].as_u64() > Some(1), "{gap}");
    assert!(why.contains("n1 is not online"), "{why}");
    // What came after the gap is here.
    let observer = n2.client("observer").await;
    eventually(20, "the mail after the gap at n2", || async {
        stored(p2).await > 0
    })
    .await;
    assert!(stored(p2).await < sent.len() as u64);
    drop(observer);
    // The gap is remembered: a restarted n2 still says it lacks those entries, and why.
    n2.terminate().await;
    let mut n2 = node(d2.path(), p2, "n2", &nats).await;
    let h = health(p2).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["backbone"]["gaps"][0]["node"], "n1");
    eventually(20, "n2 says why after its restart", || async {
        let out = n2.cli(&["mesh"]).await;
        out.contains("dropped by the stream") && out.contains("n1 is not online")
    })
    .await;
    // n1 is back: n2 takes its snapshot, and has everything once.
    let n1 = node(d1.path(), p1, "n1", &nats).await;
    let line = snapshot_taken(&mut n2).await;
    assert!(line.contains("n1"), "{line}");
    eventually(30, "n2 caught up, without gaps, ok", || settled(p2)).await;
    let bob = n2.client("bob").await;
    assert_exactly_once(&whole_inbox(&bob).await, &sent, 0);
    let alice = n1.client("alice").await;
    sent.push(alice.send(msg("bob", &numbered(40))).await.unwrap().id);
    eventually(20, "live mail at n2", || async {
        whole_inbox(&bob).await.len() == sent.len()
    })
    .await;
    assert_exactly_once(&whole_inbox(&bob).await, &sent, 0);
}

/// A quiet origin's whole log can leave the stream (its age limit; here the stream is purged,
/// which leaves it the same way): no batch of it arrives to show a gap. A node that hears the
/// origin's heartbeat with a head past its own cursor, and finds none of its batches in the
/// stream, takes the gap all the same and fills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_left_the_stream_whole_is_found_and_filled() {
    let nats = Nats::start().await;
    let (_d1, _p1, _n1, _alice, sent) = alone(&nats, 5).await;
    let (d2, p2) = (tempdir(), free_port());
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.get_stream("SWITCHBOARD")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let mut n2 = node(d2.path(), p2, "n2", &nats).await;
    let line = snapshot_taken(&mut n2).await;
    assert!(line.contains("n1"), "{line}");
    eventually(30, "n2 caught up, without gaps, ok", || settled(p2)).await;
    let bob = n2.client("bob").await;
    assert_exactly_once(&whole_inbox(&bob).await, &sent, 0);
}

/// An origin gone for good whose log left the stream, which a new node never hears of: the
/// node that applied it has its state, and the new node, asking what that node holds, finds
/// the gap and fills it from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_of_an_origin_gone_for_good_comes_from_a_node_that_applied_it() {
    let nats = Nats::start().await;
    let Pair {
        dirs: [_d1, _d2],
        ports: [_, p2],
        n1,
        n2: _n2,
        alice,
    } = pair(&nats).await;
    let (d3, p3) = (tempdir(), free_port());
    let sent = flood(&alice, "bob", 0, 5).await;
    eventually(20, "n1's mail at n2", || async {
        stored(p2).await == sent.len() as u64
    })
    .await;
    drop(alice);
    n1.terminate().await;
    // n1's log leaves the stream; n2's stays whole.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.get_stream("SWITCHBOARD")
        .await
        .unwrap()
        .purge()
        .filter("switchboard.events.n1.>")
        .await
        .unwrap();
    let mut n3 = node(d3.path(), p3, "n3", &nats).await;
    let line = snapshot_taken(&mut n3).await;
    assert!(line.contains("n2"), "{line}");
    eventually(30, "n3 without gaps, ok", || async {
        let h = health(p3).await;
        h["status"] == "ok" && h["backbone"]["gaps"] == serde_json::json!([])
    })
    .await;
    let bob = n3.client("bob").await;
    assert_exactly_once(&whole_inbox(&bob).await, &sent, 0);
}
