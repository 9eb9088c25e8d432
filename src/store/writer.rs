//! The writer thread: group commit. Every job waiting in the queue runs inside one
//! transaction and one commit; each is answered only once that commit is done, so a `sent`
//! answer means the message is on disk. How a job is isolated from its batch-mates is its
//! [`Guard`]: its own savepoint, none at all (the hot path: a failed write poisons the whole
//! batch, which rolls back and answers every job with the error), or read-only.
//!
//! The writer also owns the replication log's state for the transaction ([`LogState`]) and
//! hands it to each job in its [`Tx`]: entries a rolled-back savepoint or batch appended are
//! dropped, and only a commit publishes the rest to the in-memory tail.

use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Fault, Result};
use crate::store::fault::{Health, fault_in, fault_of};
use crate::store::log::LogState;
use crate::store::{StoreStats, TAIL_LEN, Tail, Tx, schema};

/// Most jobs run in one transaction; bounds the time a commit holds the answers back.
const MAX_BATCH: usize = 2048;

/// How often new messages are added to the full-text index.
const INDEX_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Jobs run since the last indexing run that make the next commit index anyway, so one run
/// never holds a commit back for long.
const INDEX_PENDING: usize = 8192;

/// Why a batch did not commit.
pub(crate) struct CommitError {
    /// For the wire code.
    fault: Fault,
    /// The disk failed (not, say, a constraint in one job): the store is degraded.
    disk: bool,
    /// SQLite's text, for the log.
    reason: String,
}

impl CommitError {
    fn sqlite(e: &rusqlite::Error) -> CommitError {
        let disk = fault_of(e);
        CommitError {
            fault: disk.unwrap_or(Fault::Failed),
            disk: disk.is_some(),
            reason: e.to_string(),
        }
    }
}

/// What a job hands back once it ran: called with the commit's error, if any, to answer.
type Finish = Box<dyn FnOnce(Option<&CommitError>) + Send>;
type Job = Box<dyn FnOnce(&Tx<'_>, &mut Batch) -> Finish + Send>;

/// What the jobs of one transaction did.
#[derive(Default)]
pub(crate) struct Batch {
    /// A hot-path write failed: roll everything back.
    poisoned: bool,
    /// It failed because of the disk (full, or another I/O failure).
    poison_fault: Option<Fault>,
    /// Some job may have written: tell the commit watchers.
    wrote: bool,
}

/// How a job is isolated from its batch-mates.
#[derive(Clone, Copy)]
pub(crate) enum Guard {
    /// Own savepoint: its failure undoes only itself.
    Savepoint,
    /// No savepoint (hot path): a failed write rolls back the whole batch.
    Unguarded,
    /// Reads only.
    ReadOnly,
}

/// A queued job; `Debug` so handles can be printed.
pub(crate) struct JobBox(Job);

impl std::fmt::Debug for JobBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// Wraps a caller's closure as a writer job that answers on `reply` once its batch ended.
pub(crate) fn job<R, F>(f: F, guard: Guard, reply: oneshot::Sender<Result<R>>) -> JobBox
where
    R: Send + 'static,
    F: FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
{
    JobBox(Box::new(move |tx: &Tx<'_>, batch: &mut Batch| {
        let result = match guard {
            Guard::Savepoint => {
                batch.wrote = true;
                in_savepoint(tx, f)
            }
            Guard::ReadOnly => f(tx),
            Guard::Unguarded => {
                batch.wrote = true;
                let r = f(tx);
                if let Err(e @ Error::Store(_)) = &r {
                    batch.poisoned = true;
                    batch.poison_fault = batch.poison_fault.or(fault_in(e));
                }
                r
            }
        };
        Box::new(move |commit_error: Option<&CommitError>| {
            let result = match commit_error {
                // A read's answer stands: it read the transaction, whatever became of it.
                Some(_) if matches!(guard, Guard::ReadOnly) => result,
                Some(e) if result.is_ok() => Err(Error::NotCommitted {
                    fault: e.fault,
                    reason: e.reason.clone(),
                }),
                _ => result,
            };
            let _ = reply.send(result);
        })
    }))
}

fn in_savepoint<R>(tx: &Tx<'_>, f: impl FnOnce(&Tx<'_>) -> Result<R>) -> Result<R> {
    let logged = tx.log().pending_len();
    tx.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(tx) {
        Ok(r) => {
            tx.prepare_cached("RELEASE job")?.execute([])?;
            Ok(r)
        }
        Err(e) => {
            tx.log().truncate_pending(logged);
            tx.prepare_cached("ROLLBACK TO job")?.execute([])?;
            tx.prepare_cached("RELEASE job")?.execute([])?;
            Err(e)
        }
    }
}

/// Busy handler of the writer: SQLite's own (`busy_timeout`) sleeps 1, 2, 5, 10... ms between
/// tries, so a writer held back by a checkpoint for 2 ms resumed after 8 — the mesh's p99.
/// Retrying every 100 µs resumes it as soon as the lock is free; it gives up after about 5 s.
pub(crate) fn retry_soon(attempts: i32) -> bool {
    if attempts >= 50_000 {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_micros(100));
    true
}

/// The writer thread's loop: runs until every handle is dropped, then indexes what is left.
pub(crate) fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<JobBox>,
    stats: &StoreStats,
    commits: &tokio::sync::watch::Sender<u64>,
    tail: &Tail,
    head: &AtomicU64,
    health: &Health,
) {
    let log = LogState::default();
    let mut last_index = std::time::Instant::now();
    let mut since_index = 0usize;
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
        let changes_before = conn.total_changes();
        let mut state = Batch::default();
        let tx = Tx::new(&conn, &log);
        for job in batch.drain(..) {
            finishes.push(job(&tx, &mut state));
        }
        let commit: std::result::Result<(), CommitError> = match begun {
            Ok(()) if state.poisoned => Err(CommitError {
                fault: state.poison_fault.unwrap_or(Fault::Failed),
                disk: state.poison_fault.is_some(),
                reason: "a write failed inside the batch".to_owned(),
            }),
            Ok(()) => {
                // Full-text indexing writes a new FTS segment each time (and FTS5 merges
                // segments as they pile up): at low load that was half the pages of every
                // commit, under load a segment per big batch. Index every 100 ms (or after
                // INDEX_PENDING jobs); search indexes what is pending before it looks, so it
                // never misses anything.
                since_index += finishes.len();
                let index = if state.wrote
                    && (last_index.elapsed() >= INDEX_EVERY || since_index >= INDEX_PENDING)
                {
                    last_index = std::time::Instant::now();
                    since_index = 0;
                    conn.execute_batch(schema::INDEX_NEW_MESSAGES)
                } else {
                    Ok(())
                };
                index
                    .and_then(|()| conn.execute_batch("COMMIT"))
                    .map_err(|e| CommitError::sqlite(&e))
            }
            Err(e) => Err(CommitError::sqlite(&e)),
        };
        let wrote_rows = conn.total_changes() != changes_before;
        let error = commit.err().inspect(|e| {
            if e.disk {
                // Logged once while it lasts (a full disk fails every batch), not per batch.
                health.failed(e.fault, &e.reason);
            } else {
                tracing::error!(error = %e.reason, "store commit failed; the batch was rolled back");
            }
            let _ = conn.execute_batch("ROLLBACK");
        });
        if error.is_none() && wrote_rows {
            // Only a commit that wrote pages proves the disk takes writes again.
            health.wrote();
        }
        let logged = log.take_pending(error.is_none());
        if let Some((last, _)) = logged.last() {
            head.store(*last, Ordering::Relaxed);
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
            finish(error.as_ref());
        }
    }
    if let Err(e) = conn.execute_batch(&format!("BEGIN; {} COMMIT;", schema::INDEX_NEW_MESSAGES)) {
        tracing::warn!(error = %e, "final full-text indexing failed; it resumes at the next start");
    }
    tracing::debug!("store writer stopped");
}
