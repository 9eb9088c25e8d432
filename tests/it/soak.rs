//! Retention under a steady stream: with a short retention the store stops growing, on one
//! node and on a two-node mesh (whose replication log is compacted too). The full soaks
//! (200,000 messages, 30-60 s each on 2 cores in a debug build) are ignored by `cargo test`;
//! `.ci/run` runs them once (`cargo test --test it -- --ignored --test-threads 1 soak_200k`).
//! `cargo test` runs 20,000.

use std::path::Path;
use std::time::Instant;

use switchboard::protocol::SendRequest;

use switchboard::client::Client;

use crate::common::{eventually, health, log_entries, logs_compacted, tempdir};
use crate::mesh::Mesh;
use crate::retention::{alice_and_bob, wal_bytes};

/// Sends in flight at once.
const WINDOW: usize = 512;

fn db_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("switchboard.db")).map_or(0, |m| m.len())
}

/// Read mail goes after a second, unread after two.
const RETENTION: [&str; 4] = ["--retain-read", "1s", "--retain-unread", "2s"];

/// The store's size as SQLite sees it (pages × page size, whether a page is in the database
/// file yet or still in the WAL): the checkpoints' progress does not move it.
fn store_bytes(dir: &Path) -> u64 {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("switchboard.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let pragma = |p: &str| db.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, u64>(0));
    pragma("page_count").unwrap() * pragma("page_size").unwrap()
}

/// Sends `total` messages; checks the store ends within twice its size after the first
/// 10,000, and that the WAL file stayed bounded: it starts over once past 32 MiB, and under
/// flat-out load grows on while that restart waits for a pause of the writer (37 MB seen).
async fn load_and_check(alice: &Client, bob: &Client, total: usize, dirs: &[&Path]) {
    let mut first = vec![None; dirs.len()];
    let mut peak = vec![(0, 0); dirs.len()];
    load(alice, bob, total, |sent| {
        for (i, d) in dirs.iter().enumerate() {
            let bytes = store_bytes(d);
            if sent >= 10_000 {
                first[i].get_or_insert(bytes);
            }
            peak[i] = (peak[i].0.max(bytes), peak[i].1.max(wal_bytes(d)));
        }
    })
    .await;
    for (i, d) in dirs.iter().enumerate() {
        let first = first[i].unwrap();
        // Retention deletes what is left within a few passes; the file gives the pages back.
        eventually(30, "retention to delete the rest", || async {
            store_bytes(d) <= 2 * first
        })
        .await;
        eprintln!(
            "soak n{}: store after 10,000 messages {first} B, peak {} B, end {} B; files: db {} B, \
             WAL {} B (at most {} B)",
            i + 1,
            peak[i].0,
            store_bytes(d),
            db_bytes(d),
            wal_bytes(d),
            peak[i].1,
        );
        assert!(peak[i].1 < 64 << 20, "the WAL grew to {} B", peak[i].1);
    }
}

/// Sends `total` messages alice → bob, `WINDOW` of them in flight all the time (a sliding
/// window: waiting for a whole window to finish left the nodes idle at each turn), bob marking
/// everything read every 2,048; `sample` is called every `WINDOW` answers with the count.
async fn load(alice: &Client, bob: &Client, total: usize, mut sample: impl FnMut(usize)) {
    use futures_util::StreamExt;
    let mut answers = futures_util::stream::iter(0..total)
        .map(|i| {
            alice.send(SendRequest {
                to: "bob".into(),
                body: format!("soak message {i} with some words to index"),
                ..Default::default()
            })
        })
        .buffer_unordered(WINDOW);
    let mut done = 0;
    while let Some(answer) = answers.next().await {
        answer.unwrap();
        done += 1;
        if done % 2048 == 0 {
            bob.mark_read(Vec::new(), true).await.unwrap();
        }
        if done % WINDOW == 0 {
            sample(done);
        }
    }
    bob.mark_read(Vec::new(), true).await.unwrap();
}

/// Sends `total` messages alice → bob, bob marking everything read as it goes, under a
/// one-second retention for read mail (two for unread).
async fn soak(total: usize) {
    let dir = tempdir();
    let (node, alice, bob) = alice_and_bob(dir.path(), &RETENTION).await;
    let started = Instant::now();
    load_and_check(&alice, &bob, total, &[dir.path()]).await;
    eprintln!(
        "soak: {total} messages in {:.1} s, {} messages left",
        started.elapsed().as_secs_f64(),
        health(node.port).await["store"]["messages"],
    );
    drop((alice, bob));
    assert!(node.terminate().await.success());
    // Emptied at a clean stop: no frame left (a bare 32-byte WAL header was seen once).
    assert!(wal_bytes(dir.path()) <= 32, "{} B", wal_bytes(dir.path()));
}

/// The same load across a two-node mesh (alice on n1, bob on n2, compaction every 500 ms):
/// both stores stay bounded, and once both nodes have applied everything each replication
/// log is down to its head.
async fn soak_two_nodes(total: usize) {
    let args: Vec<String> = ["--send-rate", "0", "--compact-interval", "500ms"]
        .iter()
        .chain(&RETENTION)
        .map(|s| (*s).to_owned())
        .collect();
    let mut mesh = Mesh::prepare(2, false, vec![args; 2]);
    mesh.spawn_nodes().await;
    mesh.wait_linked().await;
    let alice = mesh.client(0, "alice").await;
    let bob = mesh.client(1, "bob").await;
    eventually(10, "n1 to know bob", || async {
        alice
            .presence(Some("bob".into()))
            .await
            .is_ok_and(|p| p.agents.iter().any(|a| a.online))
    })
    .await;
    let started = Instant::now();
    let dirs: Vec<&Path> = mesh.dirs.iter().map(|d| d.path()).collect();
    load_and_check(&alice, &bob, total, &dirs).await;
    let elapsed = started.elapsed();
    let mut most_log = 0;
    for &port in &mesh.ports {
        most_log = most_log.max(log_entries(port).await);
    }
    logs_compacted(&mesh.ports, 30).await;
    eprintln!(
        "soak two nodes: {total} messages in {:.1} s; log_entries \
         {most_log} when the load ended, 1 once both applied everything",
        elapsed.as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retention_keeps_a_two_node_mesh_and_its_log_bounded() {
    soak_two_nodes(20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute of load; run with --ignored (see the file's doc)"]
async fn soak_200k_two_nodes() {
    soak_two_nodes(200_000).await;
}

#[tokio::test]
async fn a_short_retention_keeps_the_store_bounded() {
    soak(20_000).await;
}

#[tokio::test]
#[ignore = "a minute of load; run with --ignored (see the file's doc)"]
async fn soak_200k() {
    soak(200_000).await;
}
