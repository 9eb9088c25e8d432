//! Tests of the writer on real SQLite files: group commit, poison handling, and the
//! replication log's pending entries on commit and rollback.

use rusqlite::Connection;

use crate::store::Tx;
use crate::store::log::LogState;

/// A store connection with a log state of its own, for testing SQL helpers off the writer.
pub(crate) struct Db {
    conn: Connection,
    log: LogState,
}

impl Db {
    pub(crate) fn in_memory() -> Db {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut conn).unwrap();
        Db {
            conn,
            log: LogState::default(),
        }
    }

    pub(crate) fn tx(&self) -> Tx<'_> {
        Tx::new(&self.conn, &self.log)
    }
}

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::store::{Store, SyncMode, queries, replication};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.db"), SyncMode::Normal).unwrap();
    (dir, store)
}

/// Holds the writer inside a job until the returned sender is dropped, so that every job
/// queued meanwhile runs in the next batch, together.
async fn hold_writer(store: &Store) -> std::sync::mpsc::Sender<()> {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started, running) = oneshot::channel();
    let _answer = store
        .submit_isolated(move |_| {
            let _ = started.send(());
            let _ = held.recv();
            Ok(())
        })
        .await
        .unwrap();
    running.await.unwrap();
    release
}

/// A hot-path write of one row to a scratch table.
fn put(tx: &Tx<'_>, n: i64) -> Result<i64> {
    tx.execute("INSERT INTO scratch (n) VALUES (?1)", [n])?;
    Ok(n)
}

fn rows_on_disk(dir: &tempfile::TempDir) -> Vec<i64> {
    let c = Connection::open(dir.path().join("store.db")).unwrap();
    let mut stmt = c.prepare("SELECT n FROM scratch ORDER BY rowid").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

async fn with_scratch() -> (tempfile::TempDir, Store) {
    let (dir, store) = open();
    store
        .write(|c| Ok(c.execute_batch("CREATE TABLE scratch (n INTEGER)")?))
        .await
        .unwrap();
    (dir, store)
}

#[tokio::test]
async fn jobs_queued_together_commit_in_one_batch_and_are_answered_in_order() {
    let (dir, store) = with_scratch().await;
    let release = hold_writer(&store).await;
    let commits = store
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut answers = Vec::new();
    for n in 0..10 {
        let ran = ran.clone();
        answers.push(
            store
                .submit(move |c| {
                    ran.lock().unwrap().push(n);
                    put(c, n)
                })
                .await
                .unwrap(),
        );
    }
    drop(release);
    let mut first = true;
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.await.unwrap().unwrap(), n as i64);
        if first {
            // Answered only after the commit, and the commit holds the whole batch.
            assert_eq!(rows_on_disk(&dir), (0..10).collect::<Vec<_>>());
            first = false;
        }
    }
    assert_eq!(*ran.lock().unwrap(), (0..10).collect::<Vec<_>>());
    // The held batch and the batch of all ten.
    let after = store
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after, commits + 2);
}

#[tokio::test]
async fn a_failed_hot_path_write_rolls_back_its_whole_batch() {
    let (dir, store) = with_scratch().await;
    let release = hold_writer(&store).await;
    let a = store.submit(|c| put(c, 1)).await.unwrap();
    let bad = store
        .submit(|c| Ok(c.execute("INSERT INTO no_such_table VALUES (1)", [])?))
        .await
        .unwrap();
    let b = store.submit(|c| put(c, 2)).await.unwrap();
    let isolated = store.submit_isolated(|c| put(c, 3)).await.unwrap();
    drop(release);
    assert!(matches!(bad.await.unwrap(), Err(Error::Store(_))));
    for answer in [a, b, isolated] {
        match answer.await.unwrap() {
            Err(e @ Error::NotCommitted { .. }) => {
                assert!(
                    e.to_string().contains("a write failed inside the batch"),
                    "{e}"
                );
                // A bug in one job is not a disk fault: the store is not degraded for it.
                assert_eq!(e.code(), crate::protocol::ErrorCode::StorageError);
            }
            other => panic!("expected the batch's error, got {other:?}"),
        }
    }
    assert!(rows_on_disk(&dir).is_empty());
    assert!(store.fault().is_none());
    // The writer goes on with the next batch.
    assert_eq!(store.write(|c| put(c, 4)).await.unwrap(), 4);
    assert_eq!(rows_on_disk(&dir), vec![4]);
}

#[tokio::test]
async fn a_refused_job_or_a_failed_savepoint_undoes_only_itself() {
    let (dir, store) = with_scratch().await;
    let release = hold_writer(&store).await;
    let a = store.submit(|c| put(c, 1)).await.unwrap();
    // A hot-path job that refuses before writing does not poison the batch.
    let refused = store
        .submit(|_| Err::<i64, _>(Error::Invalid("no".into())))
        .await
        .unwrap();
    // A job in its own savepoint may fail even after writing: only its write goes.
    let undone = store
        .submit_isolated(|c| {
            put(c, 2)?;
            Ok(c.execute("INSERT INTO no_such_table VALUES (1)", [])?)
        })
        .await
        .unwrap();
    let b = store.submit(|c| put(c, 3)).await.unwrap();
    drop(release);
    assert_eq!(a.await.unwrap().unwrap(), 1);
    assert!(matches!(refused.await.unwrap(), Err(Error::Invalid(_))));
    assert!(matches!(undone.await.unwrap(), Err(Error::Store(_))));
    assert_eq!(b.await.unwrap().unwrap(), 3);
    assert_eq!(rows_on_disk(&dir), vec![1, 3]);
}

/// Logs a change as this node ("n1") would.
fn subscribe(tx: &Tx<'_>, topic: &str) -> Result<()> {
    queries::set_subscription(tx, topic, "bob", true, 1000, Some("n1"))
}

fn tail_seqs(store: &Store) -> Vec<u64> {
    store
        .tail_after(0, 100)
        .unwrap_or_default()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

#[tokio::test]
async fn only_committed_log_entries_reach_the_tail_and_rollbacks_leave_no_gap() {
    let (_dir, store) = with_scratch().await;
    store
        .write(|c| replication::configure(c, "n1", true))
        .await
        .unwrap();
    store.write(|c| subscribe(c, "a")).await.unwrap();
    assert_eq!(tail_seqs(&store), vec![1]);

    // A savepoint rolled back takes its entry with it.
    let undone = store
        .write(|c| {
            subscribe(c, "b")?;
            Err::<(), _>(Error::Invalid("changed my mind".into()))
        })
        .await;
    assert!(undone.is_err());
    assert_eq!(tail_seqs(&store), vec![1]);

    // A poisoned batch takes every entry of the batch with it.
    let release = hold_writer(&store).await;
    let logged = store.submit(|c| subscribe(c, "c")).await.unwrap();
    let bad = store
        .submit(|c| Ok(c.execute("INSERT INTO no_such_table VALUES (1)", [])?))
        .await
        .unwrap();
    drop(release);
    assert!(logged.await.unwrap().is_err());
    assert!(bad.await.unwrap().is_err());
    assert_eq!(tail_seqs(&store), vec![1]);

    // The next entry follows the last committed one, and the tail matches the log on disk.
    store.write(|c| subscribe(c, "d")).await.unwrap();
    assert_eq!(tail_seqs(&store), vec![1, 2]);
    let on_disk = store
        .read(|c| replication::events_after(c, 0, 100))
        .await
        .unwrap();
    let topics: Vec<String> = on_disk
        .into_iter()
        .map(|e| match e.body {
            replication::EventBody::Subscription { topic, .. } => topic,
            other => panic!("unexpected entry {other:?}"),
        })
        .collect();
    assert_eq!(topics, ["a", "d"]);
}

#[test]
fn node_ids_bind_to_one_instance_and_old_cursors_are_adopted() {
    use crate::store::{Bound, bind_peer};
    let db = Db::in_memory();
    let tx = db.tx();
    // A cursor from before instance ids, keyed by the node id: the first instance adopts it.
    tx.execute(
        "INSERT INTO peer_cursors (origin, seq) VALUES ('m1', 7)",
        [],
    )
    .unwrap();
    assert_eq!(bind_peer(&tx, "m1", "aaa", 1).unwrap(), Bound::Holder);
    assert_eq!(replication::cursor(&tx, "aaa").unwrap(), 7);
    assert_eq!(replication::cursor(&tx, "m1").unwrap(), 0);
    // A second instance under that node id is refused, whatever it claims.
    assert_eq!(
        bind_peer(&tx, "m1", "bbb", 2).unwrap(),
        Bound::Conflict {
            holder: "aaa".into()
        }
    );
    assert_eq!(replication::cursor(&tx, "bbb").unwrap(), 0);
    // Renamed, the claimant holds its new id, from cursor 0.
    assert_eq!(bind_peer(&tx, "m3", "bbb", 3).unwrap(), Bound::Holder);
    // The holder renamed: its old node id is free again, its cursor stays its own.
    assert_eq!(bind_peer(&tx, "m9", "aaa", 4).unwrap(), Bound::Holder);
    assert_eq!(replication::cursor(&tx, "aaa").unwrap(), 7);
    assert_eq!(bind_peer(&tx, "m1", "ccc", 5).unwrap(), Bound::Holder);
}
