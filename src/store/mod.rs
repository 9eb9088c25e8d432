//! The durable store: one SQLite file per data dir, written by one dedicated thread.
//!
//! Why a thread and not a pool: SQLite has one writer anyway, and a single owner of the
//! connection lets us *group commit* — every job waiting in the queue runs inside one
//! transaction and one commit, so throughput does not pay a commit (or an fsync) per message.
//! A job is answered only after its transaction has committed: a `sent` answer therefore means
//! the message is on disk. The async runtime never touches SQLite; it only awaits the answer.
//!
//! This file is the handle the rest of the node holds; `writer` runs the jobs, `checkpoint`
//! the threads beside it, and the SQL lives in `messages`, `directory`, `log`, `apply`.

mod apply;
mod checkpoint;
pub mod compact;
mod directory;
pub mod fault;
mod forget;
mod instances;
mod log;
pub mod marks;
mod messages;
pub mod names;
mod relayed;
pub mod retention;
mod rows;
pub(crate) mod schema;
pub mod snapshot;
#[cfg(test)]
mod snapshot_tests;
mod stamps;
mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

pub use instances::{Bound, bind_peer, holders, release};
/// For reads of other layers' own (the dashboard's operator views): the one message mapper.
pub(crate) use rows::{AFTER_MESSAGE, MESSAGE_COLUMNS, message_row};
pub use rows::{AgentRow, InboxQuery, NewMessage, Stored, TokenRow};

/// The SQL behind every store job, by the name the node has always used for it.
pub mod queries {
    pub use super::directory::*;
    pub use super::forget::{forget_agent, forgotten_name};
    pub use super::messages::*;
    pub use super::rows::{AgentRow, InboxQuery, LogAs, NewMessage, Stored, TokenRow};
}

/// The replication log, its stamps and the apply of a peer's events, by the name the node has
/// always used for them.
pub mod replication {
    pub use super::apply::{Applied, apply, apply_relayed};
    pub use super::log::{
        Event, EventBody, ReplicatedMessage, TailBody, append, append_message, configure, cursor,
        events_after, events_after_kept, head,
    };
    pub use super::relayed::{RelayBatch, cursors, relayed_after};
    pub use super::stamps::{Stamp, Stamped, stamp_local, stamp_of, stamp_wins};
}

pub use crate::config::SyncMode;

/// The newest committed entries of this node's log: (seq, JSON payload).
type Tail = std::sync::Mutex<std::collections::VecDeque<(u64, log::TailBody)>>;

/// Log entries kept in memory for peer links.
const TAIL_LEN: usize = 16_384;

/// Jobs waiting for the writer; full means the disk is the bottleneck and senders wait.
const QUEUE_DEPTH: usize = 8192;

/// Searches waiting for the reader thread; full means callers wait.
const READ_QUEUE_DEPTH: usize = 256;

/// What a writer job is given: the writer's connection inside the batch's transaction, and the
/// log state of that transaction. Derefs to the connection, so SQL helpers take `&Connection`
/// and only what appends to the log asks for the `Tx` itself.
pub struct Tx<'a> {
    conn: &'a Connection,
    log: &'a log::LogState,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(conn: &'a Connection, log: &'a log::LogState) -> Tx<'a> {
        Tx { conn, log }
    }

    pub(crate) fn log(&self) -> &log::LogState {
        self.log
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// Counters the node exports as metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Jobs run.
    pub jobs: AtomicU64,
}

/// A cheap, cloneable handle to the writer thread.
#[derive(Clone, Debug)]
pub struct Store {
    tx: mpsc::Sender<writer::JobBox>,
    /// The newest entries of this node's replication log, committed, for peer links to ship
    /// without a store round trip.
    tail: Arc<Tail>,
    stats: Arc<StoreStats>,
    /// Bumped after every commit: peer links wake on it to ship new log entries.
    commits: tokio::sync::watch::Receiver<u64>,
    /// Jobs for the reader thread (full-text searches).
    reads: mpsc::Sender<checkpoint::ReadJob>,
    /// This data dir's permanent instance id (see [`instances`]).
    instance: Arc<str>,
    /// The last committed seq of this data dir's log, for peers' lag (see [`Store::log_head`]).
    log_head: Arc<AtomicU64>,
    /// Whether writes work now (a full disk, a failing one).
    health: Arc<fault::Health>,
    /// Asks the checkpointer to empty the WAL (clean shutdown).
    truncate: std::sync::mpsc::SyncSender<checkpoint::TruncateNow>,
    /// The database file; its `-wal` beside it.
    path: Arc<std::path::PathBuf>,
}

/// How big the store is, for `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Size {
    /// The database and WAL files on disk.
    pub bytes: u64,
    /// Messages stored.
    pub messages: u64,
    /// Entries in this node's replication log.
    pub log_entries: u64,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and starts its writer thread. The thread
    /// ends when every handle is dropped, after committing what was queued.
    pub fn open(path: &Path, sync: SyncMode) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        retention::enable_incremental_vacuum(&conn, path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                SyncMode::Normal => "NORMAL",
                SyncMode::Full => "FULL",
            },
        )?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -32_000)?;
        conn.busy_handler(Some(writer::retry_soon))?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        let instance: Arc<str> = Arc::from(instances::own(&conn)?);
        let log_head = Arc::new(AtomicU64::new(log::head(&conn)?));
        // Checkpoints copy the WAL into the database and fsync: done on the writer they would
        // stall every commit behind them (the p99 latency). A separate thread with its own
        // connection runs them instead; PASSIVE checkpoints never block the writer.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Connection::open(path)?;
        // Its RESTART checkpoint needs the writer lock, which a writer under load frees only
        // between batches, for well under a millisecond: SQLite's own busy handler (sleeps of
        // 1, 2, 5... 100 ms) kept missing those gaps while the WAL grew to 65 MB in the 200k
        // soak (37 MB since). Retrying every 100 µs takes the first one.
        checkpointer.busy_handler(Some(writer::retry_soon))?;

        // Searches can be expensive (a common word in a big store ranks every match); on the
        // writer they would hold up every delivery behind them. A reader connection of its
        // own runs them on committed data while the writer goes on (WAL readers never block it).
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        reader.pragma_update(None, "query_only", true)?;
        reader.pragma_update(None, "cache_size", -16_000)?;
        let (reads, read_rx) = mpsc::channel(READ_QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("switchboard-read".into())
            .spawn(move || checkpoint::read_jobs(reader, read_rx))
            .map_err(|e| Error::io("starting the store reader thread", e))?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(StoreStats::default());
        let (commit_tx, commits) = tokio::sync::watch::channel(0u64);
        let tail: Arc<Tail> = Arc::default();
        let writer_tail = tail.clone();
        let thread_stats = stats.clone();
        let writer_head = log_head.clone();
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still_running = running.clone();
        let health = Arc::new(fault::Health::default());
        let writer_health = health.clone();
        std::thread::Builder::new()
            .name("switchboard-store".into())
            .spawn(move || {
                writer::run(
                    conn,
                    rx,
                    &thread_stats,
                    &commit_tx,
                    &writer_tail,
                    &writer_head,
                    &writer_health,
                );
                still_running.store(false, Ordering::Relaxed);
            })
            .map_err(|e| Error::io("starting the store thread", e))?;
        let (truncate, requests) = std::sync::mpsc::sync_channel(4);
        std::thread::Builder::new()
            .name("switchboard-checkpoint".into())
            .spawn({
                let wal = checkpoint::WalPrefetch::new(path);
                move || checkpoint::checkpoints(checkpointer, wal, &running, &requests)
            })
            .map_err(|e| Error::io("starting the checkpoint thread", e))?;
        Ok(Store {
            tx,
            tail,
            stats,
            commits,
            reads,
            instance,
            log_head,
            health,
            truncate,
            path: Arc::new(path.to_owned()),
        })
    }

    /// The fault that keeps the store from writing now, if any.
    pub fn fault(&self) -> Option<fault::Faulted> {
        self.health.current()
    }

    /// Bytes on disk (database + WAL), messages and log entries. The counts are read on the
    /// reader thread, off the writer.
    pub async fn size(&self) -> Result<Size> {
        let (messages, log_entries) = self
            .read_committed(|c| {
                let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, u64>(0));
                Ok((
                    count("SELECT count(*) FROM messages")?,
                    count("SELECT count(*) FROM events")?,
                ))
            })
            .await?;
        Ok(Size {
            bytes: self.file_bytes(),
            messages,
            log_entries,
        })
    }

    /// The database and WAL files' sizes on disk.
    pub fn file_bytes(&self) -> u64 {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        [self.path.as_os_str(), wal.as_os_str()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Copies the WAL into the database and empties the WAL file; for a clean shutdown, once
    /// everything is committed (it waits for the writer's transaction).
    pub async fn truncate_wal(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        // A request already queued does the same work, so a full queue only waits for it.
        if let Err(std::sync::mpsc::TrySendError::Disconnected(_)) = self.truncate.try_send(reply) {
            return Err(Error::ShuttingDown);
        }
        done.await.map_err(|_| Error::ShuttingDown)??;
        Ok(())
    }

    /// The last committed seq of this data dir's log (0 while it has none): how far a peer
    /// that has applied it all has got.
    pub fn log_head(&self) -> u64 {
        self.log_head.load(Ordering::Relaxed)
    }

    /// This data dir's permanent instance id: what peers key their cursors of its log by.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Committed log entries after `after`, oldest first, if the in-memory tail still holds the
    /// next one; `None` means "read them from the store".
    pub fn tail_after(&self, after: u64, max: usize) -> Option<Vec<(u64, log::TailBody)>> {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let first = tail.front()?.0;
        if first > after + 1 {
            return None;
        }
        let skip = (after + 1).saturating_sub(first) as usize;
        Some(tail.iter().skip(skip).take(max).cloned().collect())
    }

    /// A receiver that changes after every commit.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.clone()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Queues a hot-path job that changes the store and returns the receiver of its answer.
    /// Queueing is the ordering point: jobs commit in the order they were queued.
    ///
    /// Unlike [`Store::write`], the job runs without its own savepoint — a savepoint release
    /// makes FTS5 flush a segment per message, which cost a third of the writer's time. So the
    /// job must make every check before its first write; if a write itself fails, the whole
    /// batch is rolled back and every job in it gets the error (nothing half-written commits).
    pub async fn submit<R, F>(&self, f: F) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, writer::Guard::Unguarded).await
    }

    /// Queues a job that changes the store, in its own savepoint (its failure undoes only
    /// itself), and returns the receiver of its answer, which comes once it has committed.
    /// For callers that keep several jobs in flight and complete them in order.
    pub async fn submit_isolated<R, F>(&self, f: F) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, writer::Guard::Savepoint).await
    }

    /// Runs a job that changes the store and waits until it has committed.
    pub async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, writer::Guard::Savepoint)
            .await?
            .await
            .map_err(|_| Error::ShuttingDown)?
    }

    /// Runs a read-only job (in the writer's current transaction, so it sees every write queued
    /// before it).
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, writer::Guard::ReadOnly)
            .await?
            .await
            .map_err(|_| Error::ShuttingDown)?
    }

    /// Runs a read-only job on the reader thread, off the writer: it sees what has committed,
    /// not what is still queued — callers that need their own queued writes first await a
    /// writer job (a commit) before this.
    pub async fn read_committed<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: checkpoint::ReadJob = Box::new(move |conn: &Connection| {
            let _ = reply.send(f(conn));
        });
        self.reads
            .send(job)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    async fn enqueue<R, F>(
        &self,
        f: F,
        guard: writer::Guard,
    ) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::job(f, guard, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }
}
