//! Retention under a steady stream: with a short retention the store stops growing, on one
//! node and on a two-node mesh (whose replication log is compacted too). The full soaks
//! (200,000 messages, about a minute each on 2 cores) are ignored in CI; run them with
//! `cargo test --release --test it soak_200k -- --ignored --nocapture`. CI runs 20,000.

use std::path::Path;
use std::time::Instant;

use switchboard::protocol::SendRequest;

use switchboard::client::Client;

use crate::common::{eventually, health, tempdir};
use crate::mesh::Mesh;
use crate::retention::{alice_and_bob, wal_bytes};

/// Sends in flight at once.
const WINDOW: usize = 512;

fn db_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("switchboard.db")).map_or(0, |m| m.len())
}

/// Read mail goes after a second, unread after two.
const RETENTION: [&str; 4] = ["--retain-read", "1s", "--retain-unread", "2s"];

/// What the load left: the database file after the first 10,000 messages, and at its peak.
#[derive(Default)]
struct Sizes {
    after_10k: Option<(u64, u64)>,
    peak: (u64, u64),
}

impl Sizes {
    fn sample(&mut self, dir: &Path, sent: usize) {
        let (db, wal) = (db_bytes(dir), wal_bytes(dir));
        self.peak = (self.peak.0.max(db), self.peak.1.max(wal));
        if self.after_10k.is_none() && sent >= 10_000 {
            self.after_10k = Some((db, wal));
        }
    }

    /// Checks the file ended within twice its size after 10,000 messages; says what it saw.
    fn check(&self, dir: &Path, what: &str, total: usize) {
        let (first_db, first_wal) = self.after_10k.unwrap();
        let (db, wal) = (db_bytes(dir), wal_bytes(dir));
        eprintln!(
            "soak {what}: after 10,000: db {first_db} B, wal {first_wal} B; peak: db {} B, \
             wal {} B; end: db {db} B, wal {wal} B",
            self.peak.0, self.peak.1,
        );
        assert!(
            db <= 2 * first_db,
            "{what}: the store grew from {first_db} B after 10,000 messages to {db} B after {total}"
        );
    }
}

/// Sends `total` messages alice → bob in windows, bob marking everything read every 2,048;
/// `sample` is called after each window with the count sent so far.
async fn load(alice: &Client, bob: &Client, total: usize, mut sample: impl FnMut(usize)) {
    let mut sent = 0;
    while sent < total {
        let n = WINDOW.min(total - sent);
        let sends = (0..n).map(|i| {
            alice.send(SendRequest {
                to: "bob".into(),
                body: format!("soak message {} with some words to index", sent + i),
                ..Default::default()
            })
        });
        for r in futures_util::future::join_all(sends).await {
            r.unwrap();
        }
        sent += n;
        if sent % 2048 < WINDOW {
            bob.mark_read(Vec::new(), true).await.unwrap();
        }
        sample(sent);
    }
    bob.mark_read(Vec::new(), true).await.unwrap();
}

/// Sends `total` messages alice → bob, bob marking everything read as it goes, under a
/// one-second retention for read mail (two for unread); checks the database file ends within
/// twice its size after the first 10,000.
async fn soak(total: usize) {
    let dir = tempdir();
    let (node, alice, bob) = alice_and_bob(dir.path(), &RETENTION).await;
    let started = Instant::now();
    let mut sizes = Sizes::default();
    load(&alice, &bob, total, |sent| sizes.sample(dir.path(), sent)).await;
    let elapsed = started.elapsed();
    // Retention catches up within a few of its passes.
    eventually(20, "retention to catch up", || async {
        health(node.port).await["store"]["messages"].as_u64() < Some(20_000)
    })
    .await;
    eprintln!(
        "soak: {total} messages in {:.1} s ({:.0}/s), {} messages left",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        health(node.port).await["store"]["messages"],
    );
    sizes.check(dir.path(), "one node", total);
    drop((alice, bob));
    assert!(node.terminate().await.success());
    assert_eq!(wal_bytes(dir.path()), 0);
    eprintln!("soak: after a clean stop: db {} B", db_bytes(dir.path()));
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
    let mut sizes = [Sizes::default(), Sizes::default()];
    let mut most_log = 0;
    let dirs: Vec<_> = mesh.dirs.iter().map(|d| d.path().to_owned()).collect();
    load(&alice, &bob, total, |sent| {
        for (s, d) in sizes.iter_mut().zip(&dirs) {
            s.sample(d, sent);
        }
    })
    .await;
    let elapsed = started.elapsed();
    for port in [mesh.ports[0], mesh.ports[1]] {
        most_log = most_log.max(
            health(port).await["store"]["log_entries"]
                .as_u64()
                .unwrap_or_default(),
        );
    }
    for (i, port) in mesh.ports.iter().copied().enumerate() {
        eventually(
            30,
            &format!("n{}'s log compacted and old mail gone", i + 1),
            || async move {
                let h = health(port).await;
                h["store"]["log_entries"].as_u64() <= Some(1)
                    && h["store"]["messages"].as_u64() < Some(20_000)
            },
        )
        .await;
    }
    eprintln!(
        "soak two nodes: {total} messages in {:.1} s ({:.0}/s); log_entries {most_log} right \
         after the load, 1 once both applied everything",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
    );
    for (i, (s, d)) in sizes.iter().zip(&dirs).enumerate() {
        s.check(d, &format!("n{}", i + 1), total);
    }
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
