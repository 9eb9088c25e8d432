//! The threads beside the writer: the checkpointer, which copies the WAL into the database
//! file (and keeps the WAL the writer is about to reuse in the page cache), and the reader,
//! which runs searches on committed data. Both have connections of their own so that neither
//! ever holds up a commit.

use std::path::Path;
use std::sync::atomic::Ordering;

use rusqlite::Connection;
use tokio::sync::mpsc;

/// A job for the reader thread: no batch, no commit.
pub(crate) type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// A request to empty the WAL file now (clean shutdown), answered once done.
pub(crate) type TruncateNow = tokio::sync::oneshot::Sender<rusqlite::Result<()>>;

/// How long the store must have been quiet before the WAL file is cut back to nothing. Under
/// load the WAL is reused, never truncated (truncating and growing it again cost 55-75 ms at
/// p99); after a burst it would otherwise keep its size (38 MB) for good.
const IDLE_TRUNCATE: std::time::Duration = std::time::Duration::from_secs(2);

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
/// Once the store has been quiet for a while, and on request, a TRUNCATE checkpoint empties the
/// WAL file.
pub(crate) fn checkpoints(
    conn: Connection,
    mut wal: WalPrefetch,
    running: &std::sync::atomic::AtomicBool,
    requests: &std::sync::mpsc::Receiver<TruncateNow>,
) {
    let page = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, u64>(0))
        .unwrap_or(4096);
    let truncate = || conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    let mut quiet = (0u64, std::time::Instant::now());
    while running.load(Ordering::Relaxed) {
        match requests.recv_timeout(CHECKPOINT_EVERY) {
            Ok(reply) => {
                let _ = reply.send(truncate());
                quiet = (0, std::time::Instant::now());
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // Every handle is gone; the writer is finishing.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(CHECKPOINT_EVERY)
            }
        }
        let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        let mut at = frames.unwrap_or(0).max(0) as u64;
        if at == 0 || at != quiet.0 {
            quiet = (at, std::time::Instant::now());
        } else if quiet.1.elapsed() >= IDLE_TRUNCATE {
            match truncate() {
                Ok(()) => at = 0,
                Err(e) => tracing::debug!(error = %e, "truncate checkpoint skipped"),
            }
            quiet = (at, std::time::Instant::now());
        }
        if at * (page + 24) > WAL_RESTART_BYTES {
            match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                Ok(()) => at = 0,
                Err(e) => tracing::debug!(error = %e, "restart checkpoint skipped"),
            }
        }
        wal.ahead_of(32 + at * (page + 24));
    }
    let _ = truncate();
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
pub(crate) struct WalPrefetch {
    #[cfg(target_os = "linux")]
    path: std::path::PathBuf,
    #[cfg(target_os = "linux")]
    file: Option<std::fs::File>,
}

impl WalPrefetch {
    pub(crate) fn new(db: &Path) -> WalPrefetch {
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
pub(crate) fn read_jobs(conn: Connection, mut rx: mpsc::Receiver<ReadJob>) {
    while let Some(job) = rx.blocking_recv() {
        job(&conn);
    }
}
