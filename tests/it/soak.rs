//! Retention under a steady stream: with a short retention the store stops growing. The full
//! soak (200,000 messages, about a minute on 2 cores) is ignored in CI; run it with
//! `cargo test --release --test it soak_200k -- --ignored --nocapture`. CI runs 20,000.

use std::path::Path;
use std::time::Instant;

use switchboard::protocol::SendRequest;

use crate::common::{eventually, health, tempdir};
use crate::retention::{alice_and_bob, wal_bytes};

/// Sends in flight at once.
const WINDOW: usize = 512;

fn db_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("switchboard.db")).map_or(0, |m| m.len())
}

/// Sends `total` messages alice → bob, bob marking everything read as it goes, under a
/// one-second retention for read mail (two for unread); checks the database file ends within
/// twice its size after the first 10,000.
async fn soak(total: usize) {
    let dir = tempdir();
    let retention = ["--retain-read", "1s", "--retain-unread", "2s"];
    let (node, alice, bob) = alice_and_bob(dir.path(), &retention).await;
    let started = Instant::now();
    let mut after_10k = None;
    let mut peak = (0, 0);
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
        let (db, wal) = (db_bytes(dir.path()), wal_bytes(dir.path()));
        peak = (peak.0.max(db), peak.1.max(wal));
        if after_10k.is_none() && sent >= 10_000 {
            after_10k = Some((db, wal));
        }
    }
    let elapsed = started.elapsed();
    bob.mark_read(Vec::new(), true).await.unwrap();
    // Retention catches up within a few of its passes.
    eventually(20, "retention to catch up", || async {
        health(node.port).await["store"]["messages"].as_u64() < Some(20_000)
    })
    .await;
    let (first_db, first_wal) = after_10k.unwrap();
    let (db, wal) = (db_bytes(dir.path()), wal_bytes(dir.path()));
    let h = health(node.port).await;
    eprintln!(
        "soak: {total} messages in {:.1} s ({:.0}/s); after 10,000: db {first_db} B, wal {first_wal} B; \
         peak: db {} B, wal {} B; end: db {db} B, wal {wal} B, {} messages left",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        peak.0,
        peak.1,
        h["store"]["messages"],
    );
    assert!(
        db <= 2 * first_db,
        "the store grew from {first_db} B after 10,000 messages to {db} B after {total}"
    );
    drop((alice, bob));
    assert!(node.terminate().await.success());
    assert_eq!(wal_bytes(dir.path()), 0);
    eprintln!("soak: after a clean stop: db {} B", db_bytes(dir.path()));
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
