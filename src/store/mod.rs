//! The durable store: one SQLite file per data dir, written by one dedicated thread.
//!
//! Why a thread and not a pool: SQLite has one writer anyway, and a single owner of the
//! connection lets us *group commit* — every job waiting in the queue runs inside one
//! transaction and one commit, so throughput does not pay a commit (or an fsync) per message.
//! A job is answered only after its transaction has committed: a `sent` answer therefore means
//! the message is on disk. Each job runs in its own savepoint, so one bad job cannot undo its
//! batch-mates. The async runtime never touches SQLite; it only awaits the answer.

pub mod queries;
mod schema;

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

/// Jobs waiting for the writer; full means the disk is the bottleneck and senders wait.
const QUEUE_DEPTH: usize = 8192;

type Finish = Box<dyn FnOnce(Option<&str>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Finish + Send>;

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
    stats: Arc<StoreStats>,
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
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;

        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(StoreStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("switchboard-store".into())
            .spawn(move || writer(conn, rx, &thread_stats))
            .map_err(|e| Error::io("starting the store thread", e))?;
        Ok(Store { tx, stats })
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Queues a job that changes the store and returns the receiver of its answer. Queueing is
    /// the ordering point: jobs commit in the order they were queued.
    pub async fn submit<R, F>(&self, f: F) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, true).await
    }

    /// Runs a job that changes the store and waits until it has committed.
    pub async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.enqueue(f, true)
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
        self.enqueue(f, false)
            .await?
            .await
            .map_err(|_| Error::ShuttingDown)?
    }

    async fn enqueue<R, F>(&self, f: F, savepoint: bool) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            let result = if savepoint {
                in_savepoint(conn, f)
            } else {
                f(conn)
            };
            Box::new(move |commit_error: Option<&str>| {
                let result = match commit_error {
                    Some(e) if result.is_ok() => Err(Error::Invalid(format!("commit failed: {e}"))),
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
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(conn) {
        Ok(r) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(r)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Err(e)
        }
    }
}

fn writer(conn: Connection, mut rx: mpsc::Receiver<JobBox>, stats: &StoreStats) {
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
        for job in batch.drain(..) {
            finishes.push(job(&conn));
        }
        let commit = begun.and_then(|()| conn.execute_batch("COMMIT"));
        let error = commit.err().map(|e| {
            tracing::error!(error = %e, "store commit failed; the batch was rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        });
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .jobs
            .fetch_add(finishes.len() as u64, Ordering::Relaxed);
        for finish in finishes.drain(..) {
            finish(error.as_deref());
        }
    }
    tracing::debug!("store writer stopped");
}
