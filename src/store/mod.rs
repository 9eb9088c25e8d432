//! The durable store: one SQLite file per data dir, written by one dedicated thread.
//!
//! Why a thread and not a pool: SQLite has one writer anyway, and a single owner of the
//! connection lets us *group commit* — every job waiting in the queue runs inside one
//! transaction and one commit, so throughput does not pay a commit (or an fsync) per message.
//! A job is answered only after its transaction has committed: a `sent` answer therefore means
//! the message is on disk. Each job runs in its own savepoint, so one bad job cannot undo its
//! batch-mates. The async runtime never touches SQLite; it only awaits the answer.

pub mod names;
pub mod queries;
pub mod replication;
pub(crate) mod schema;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

pub use queries::{AgentRow, InboxQuery, NewMessage, Stored, TokenRow};

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// WAL with `synchronous=NORMAL`: a commit survives a crash of the process (kill -9);
    /// a power loss or OS crash may lose the last commits, never the file.
    #[default]
    Normal,
    /// WAL with `synchronous=FULL`: every group commit is fsynced, so it also survives power loss.
    Full,
}

/// Most jobs run in one transaction; bounds the time a commit holds the answers back.
const MAX_BATCH: usize = 2048;

/// The newest committed entries of this node's log: (seq, JSON payload).
type Tail = std::sync::Mutex<std::collections::VecDeque<(u64, replication::TailBody)>>;

/// How often new messages are added to the full-text index.
const INDEX_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Log entries kept in memory for peer links.
const TAIL_LEN: usize = 16_384;

/// Jobs waiting for the writer; full means the disk is the bottleneck and senders wait.
const QUEUE_DEPTH: usize = 8192;

/// Searches waiting for the reader thread; full means callers wait.
const READ_QUEUE_DEPTH: usize = 256;

type Finish = Box<dyn FnOnce(Option<&str>) + Send>;
type Job = Box<dyn FnOnce(&Connection, &mut Batch) -> Finish + Send>;
/// A job for the reader thread: no batch, no commit.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// What the jobs of one transaction did.
#[derive(Default)]
struct Batch {
    /// A hot-path write failed: roll everything back.
    poisoned: bool,
    /// Some job may have written: tell the commit watchers.
    wrote: bool,
}

/// How a job is isolated from its batch-mates.
#[derive(Clone, Copy)]
enum Guard {
    /// Own savepoint: its failure undoes only itself.
    Savepoint,
    /// No savepoint (hot path): a failed write rolls back the whole batch.
    Unguarded,
    /// Reads only.
    ReadOnly,
}

/// A queued job; `Debug` so handles can be printed.
struct JobBox(Job);

impl std::fmt::Debug for JobBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
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
    tx: mpsc::Sender<JobBox>,
    /// The newest entries of this node's replication log, committed, for peer links to ship
    /// without a store round trip.
    tail: Arc<Tail>,
    stats: Arc<StoreStats>,
    /// Bumped after every commit: peer links wake on it to ship new log entries.
    commits: tokio::sync::watch::Receiver<u64>,
    /// Jobs for the reader thread (full-text searches).
    reads: mpsc::Sender<ReadJob>,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and starts its writer thread. The thread
    /// ends when every handle is dropped, after committing what was queued.
    pub fn open(path: &Path, sync: SyncMode) -> Result<Store> {
        let mut conn = Connection::open(path)?;
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
        conn.busy_handler(Some(retry_soon))?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        // Checkpoints copy the WAL into the database and fsync: done on the writer they would
        // stall every commit behind them (the p99 latency). A separate thread with its own
        // connection runs them instead; PASSIVE checkpoints never block the writer.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;

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
            .spawn(move || read_jobs(reader, read_rx))
            .map_err(|e| Error::io("starting the store reader thread", e))?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(StoreStats::default());
        let (commit_tx, commits) = tokio::sync::watch::channel(0u64);
        let tail: Arc<Tail> = Arc::default();
        let writer_tail = tail.clone();
        let thread_stats = stats.clone();
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still_running = running.clone();
        std::thread::Builder::new()
            .name("switchboard-store".into())
            .spawn(move || {
                writer(conn, rx, &thread_stats, &commit_tx, &writer_tail);
                still_running.store(false, Ordering::Relaxed);
            })
            .map_err(|e| Error::io("starting the store thread", e))?;
        std::thread::Builder::new()
            .name("switchboard-checkpoint".into())
            .spawn({
                let wal = WalPrefetch::new(path);
                move || checkpoints(checkpointer, wal, &running)
            })
            .map_err(|e| Error::io("starting the checkpoint thread", e))?;
        Ok(Store {
            tx,
            tail,
            stats,
            commits,
            reads,
        })
    }

    /// Committed log entries after `after`, oldest first, if the in-memory tail still holds the
    /// next one; `None` means "read them from the store".
    pub fn tail_after(&self, after: u64, max: usize) -> Option<Vec<(u64, replication::TailBody)>> {
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
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, Guard::Unguarded).await
    }

    /// Queues a job that changes the store, in its own savepoint (its failure undoes only
    /// itself), and returns the receiver of its answer, which comes once it has committed.
    /// For callers that keep several jobs in flight and complete them in order.
    pub async fn submit_isolated<R, F>(&self, f: F) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, Guard::Savepoint).await
    }

    /// Runs a job that changes the store and waits until it has committed.
    pub async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, Guard::Savepoint)
            .await?
            .await
            .map_err(|_| Error::ShuttingDown)?
    }

    /// Runs a read-only job (in the writer's current transaction, so it sees every write queued
    /// before it).
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, Guard::ReadOnly)
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
        let job: ReadJob = Box::new(move |conn: &Connection| {
            let _ = reply.send(f(conn));
        });
        self.reads
            .send(job)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    async fn enqueue<R, F>(&self, f: F, guard: Guard) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection, batch: &mut Batch| {
            let result = match guard {
                Guard::Savepoint => {
                    batch.wrote = true;
                    in_savepoint(conn, f)
                }
                Guard::ReadOnly => f(conn),
                Guard::Unguarded => {
                    batch.wrote = true;
                    let r = f(conn);
                    if matches!(r, Err(Error::Store(_))) {
                        batch.poisoned = true;
                    }
                    r
                }
            };
            Box::new(move |commit_error: Option<&str>| {
                let result = match commit_error {
                    Some(e) if result.is_ok() => Err(Error::refused(
                        crate::protocol::ErrorCode::Internal,
                        format!("the store could not commit: {e}"),
                    )),
                    _ => result,
                };
                let _ = reply.send(result);
            })
        });
        self.tx
            .send(JobBox(job))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }
}

fn in_savepoint<R>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
    let logged = replication::pending_len();
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(conn) {
        Ok(r) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(r)
        }
        Err(e) => {
            replication::truncate_pending(logged);
            conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Err(e)
        }
    }
}

/// Busy handler of the writer: SQLite's own (`busy_timeout`) sleeps 1, 2, 5, 10... ms between
/// tries, so a writer held back by a checkpoint for 2 ms resumed after 8 — the mesh's p99.
/// Retrying every 100 µs resumes it as soon as the lock is free; it gives up after about 5 s.
fn retry_soon(attempts: i32) -> bool {
    if attempts >= 50_000 {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_micros(100));
    true
}

/// WAL bytes after which the checkpointer makes the writer start the WAL over.
const WAL_RESTART_BYTES: u64 = 32 << 20;

/// How often the checkpointer copies the WAL into the database file. Each checkpoint fsyncs
/// what was written since the last one; at one per second that was 10 MB per node under load,
/// a 40 ms flush that made the writer's own rare syncs (the WAL header after a restart) queue
/// behind it for up to 30 ms — the mesh's p99. Small, frequent flushes keep every sync short.
/// An idle store makes this a no-op (nothing to copy, no fsync).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Copies the WAL into the database file while the writer runs. PASSIVE checkpoints never block
/// the writer, but under steady writes they never catch up either, and a WAL that only grows
/// makes every append allocate new disk blocks (multi-millisecond stalls here). So once the WAL
/// passes 32 MiB, a RESTART checkpoint (a short writer pause) lets it be reused from the start.
fn checkpoints(conn: Connection, mut wal: WalPrefetch, running: &std::sync::atomic::AtomicBool) {
    let page = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, u64>(0))
        .unwrap_or(4096);
    while running.load(Ordering::Relaxed) {
        std::thread::sleep(CHECKPOINT_EVERY);
        let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        let mut at = frames.unwrap_or(0).max(0) as u64;
        if at * (page + 24) > WAL_RESTART_BYTES {
            match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                Ok(()) => at = 0,
                Err(e) => tracing::debug!(error = %e, "restart checkpoint skipped"),
            }
        }
        wal.ahead_of(32 + at * (page + 24));
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

#[cfg(target_os = "linux")]
/// WAL bytes the checkpointer asks the kernel to have in the page cache ahead of the writer.
const PREFETCH_AHEAD: u64 = 4 << 20;

/// Keeps the part of the WAL the writer is about to overwrite in the page cache. A WAL frame
/// (24-byte header + one page) never covers whole disk blocks, so overwriting a block of a
/// reused WAL that the kernel has dropped from the cache (hosts that page out idle memory do
/// so within seconds) first *reads* it, synchronously, inside the writer's commit: kernel
/// stacks showed this as most of the mesh's remaining p99. `posix_fadvise(WILLNEED)` starts
/// that read early, in the background. Linux only; elsewhere a no-op.
struct WalPrefetch {
    #[cfg(target_os = "linux")]
    path: std::path::PathBuf,
    #[cfg(target_os = "linux")]
    file: Option<std::fs::File>,
}

impl WalPrefetch {
    fn new(db: &Path) -> WalPrefetch {
        #[cfg(target_os = "linux")]
        {
            let mut p = db.as_os_str().to_owned();
            p.push("-wal");
            WalPrefetch {
                path: p.into(),
                file: None,
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = db;
            WalPrefetch {}
        }
    }

    /// The writer's next frame is at byte `offset`.
    fn ahead_of(&mut self, offset: u64) {
        #[cfg(target_os = "linux")]
        {
            if self.file.is_none() {
                self.file = std::fs::File::open(&self.path).ok();
            }
            if let Some(f) = &self.file {
                let _ = rustix::fs::fadvise(
                    f,
                    offset,
                    std::num::NonZeroU64::new(PREFETCH_AHEAD),
                    rustix::fs::Advice::WillNeed,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = offset;
    }
}

/// The reader thread: runs read-only jobs one by one until every handle is dropped.
fn read_jobs(conn: Connection, mut rx: mpsc::Receiver<ReadJob>) {
    while let Some(job) = rx.blocking_recv() {
        job(&conn);
    }
}

fn writer(
    conn: Connection,
    mut rx: mpsc::Receiver<JobBox>,
    stats: &StoreStats,
    commits: &tokio::sync::watch::Sender<u64>,
    tail: &Tail,
) {
    let mut last_index = std::time::Instant::now();
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut finishes: Vec<Finish> = Vec::with_capacity(MAX_BATCH);
    while let Some(JobBox(first)) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(JobBox(job)) => batch.push(job),
                Err(_) => break,
            }
        }
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        let mut state = Batch::default();
        for job in batch.drain(..) {
            finishes.push(job(&conn, &mut state));
        }
        let commit = match begun {
            Ok(()) if state.poisoned => Err("a write failed inside the batch".to_owned()),
            Ok(()) => {
                // Full-text indexing writes a new FTS segment each time; at low load that was
                // half the pages of every commit. Index every 100 ms (or per big batch);
                // search indexes what is pending before it looks, so it never misses anything.
                let index = if state.wrote
                    && (last_index.elapsed() >= INDEX_EVERY || finishes.len() >= 256)
                {
                    last_index = std::time::Instant::now();
                    conn.execute_batch(schema::INDEX_NEW_MESSAGES)
                } else {
                    Ok(())
                };
                index
                    .and_then(|()| conn.execute_batch("COMMIT"))
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let error = commit.err().inspect(|e| {
            tracing::error!(error = %e, "store commit failed; the batch was rolled back");
            let _ = conn.execute_batch("ROLLBACK");
        });
        let logged = replication::take_pending(error.is_none());
        if !logged.is_empty() {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            t.extend(logged);
            while t.len() > TAIL_LEN {
                t.pop_front();
            }
        }
        let n = stats.commits.fetch_add(1, Ordering::Relaxed);
        if state.wrote && error.is_none() {
            commits.send_replace(n + 1);
        }
        stats
            .jobs
            .fetch_add(finishes.len() as u64, Ordering::Relaxed);
        for finish in finishes.drain(..) {
            finish(error.as_deref());
        }
    }
    if let Err(e) = conn.execute_batch(&format!("BEGIN; {} COMMIT;", schema::INDEX_NEW_MESSAGES)) {
        tracing::warn!(error = %e, "final full-text indexing failed; it resumes at the next start");
    }
    tracing::debug!("store writer stopped");
}
