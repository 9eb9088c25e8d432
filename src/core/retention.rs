//! When retention runs, and the store's upkeep beside it: a pass over what is due every
//! quarter of the shortest retention (at most every 30 s, so a message goes within a minute of
//! becoming due), in small writer jobs; the freed pages handed back to the file system; and,
//! while the store cannot write, a small probe write every few seconds, so that it notices by
//! itself when the disk takes writes again (an idle node would otherwise stay `degraded`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Router;
use crate::config::Retention;
use crate::error::{Error, Result};
use crate::message::now_ms;
use crate::protocol::{ErrorCode, PruneResult};
use crate::store::retention::{self, BATCH, Pruned, Scan, VACUUM_PAGES};

/// The longest wait between passes.
const MAX_TICK: Duration = Duration::from_secs(30);
/// The shortest (a test's one-second retention).
const MIN_TICK: Duration = Duration::from_millis(250);
/// How often a faulted store is probed.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The wait between passes for a policy.
fn tick(policy: &Retention) -> Duration {
    policy.every.unwrap_or_else(|| {
        policy
            .shortest()
            .map_or(MAX_TICK, |s| (s / 4).clamp(MIN_TICK, MAX_TICK))
    })
}

impl Router {
    /// One pass: deletes everything due now, batch by batch, then gives the freed pages back.
    async fn prune_pass(&self, policy: Retention) -> Result<Pruned> {
        let now = now_ms();
        let mut total = Pruned::default();
        let mut after = 0;
        loop {
            let (found, scan) = self
                .store
                .write(move |c| retention::prune_batch(c, &policy, now, after, BATCH, false))
                .await?;
            total += found;
            match scan {
                Scan::After(s) => after = s,
                Scan::Done => break,
            }
        }
        if total.messages > 0 {
            // Bounded: a vacuum job frees up to VACUUM_PAGES, and deletes made meanwhile by
            // the next pass are the next pass's to hand back.
            for _ in 0..64 {
                if self
                    .store
                    .write(|c| retention::vacuum(c, VACUUM_PAGES))
                    .await?
                    == 0
                {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// `prune`: deletes (or counts) what retention deletes now. Needs the local secret.
    pub async fn prune(&self, admin: bool, dry_run: bool) -> Result<PruneResult> {
        if !admin {
            return Err(Error::refused(
                ErrorCode::Forbidden,
                "prune needs the local secret",
            ));
        }
        let policy = self.limits.retention;
        let before = self.store.file_bytes();
        let found = if dry_run {
            let now = now_ms();
            self.store
                .read_committed(move |c| retention::dry_run(c, &policy, now))
                .await?
        } else {
            let found = self.prune_pass(policy).await?;
            // So that the size after is what the disk holds now, not a WAL full of the deletes.
            self.store.truncate_wal().await?;
            found
        };
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        Ok(PruneResult {
            dry_run,
            messages: found.messages,
            inbox_rows: found.inbox_rows,
            bytes: found.bytes,
            store_bytes_before: before,
            store_bytes_after: if dry_run {
                before
            } else {
                self.store.file_bytes()
            },
            retain_read_seconds: secs(policy.read),
            retain_unread_seconds: secs(policy.unread),
        })
    }

    /// A small write that succeeds only if the disk takes writes: the writer clears the
    /// store's fault on the first commit that writes.
    async fn probe(&self) {
        let now = now_ms();
        let _ = self
            .store
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ('write_probe', ?1) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                )?
                .execute([now.to_string()])?;
                Ok(())
            })
            .await;
    }
}

/// The node's upkeep task: retention passes and fault probes until `stop`.
pub async fn run(router: Arc<Router>, stop: CancellationToken) {
    let policy = router.limits.retention;
    let every = tick(&policy);
    let mut last_pass = tokio::time::Instant::now();
    loop {
        // Woken at least every PROBE_EVERY, so a fault that begins meanwhile is probed soon.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY.min(every)) => {}
        }
        if router.store.fault().is_some() {
            router.probe().await;
            continue;
        }
        if policy.shortest().is_none() || last_pass.elapsed() < every {
            continue;
        }
        last_pass = tokio::time::Instant::now();
        match router.prune_pass(policy).await {
            Ok(p) if p.messages > 0 => tracing::debug!(
                messages = p.messages,
                inbox_rows = p.inbox_rows,
                bytes = p.bytes,
                "retention deleted messages"
            ),
            Ok(_) => {}
            // The store's own fault is logged once by the store; anything else here.
            Err(e) if crate::store::fault::fault_in(&e).is_some() => {}
            Err(e) => tracing::warn!(error = %e, "a retention pass failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_come_within_a_minute_and_not_too_often() {
        let p = |read: u64| Retention {
            read: Some(Duration::from_secs(read)),
            ..Retention::default()
        };
        assert_eq!(tick(&p(30 * 86_400)), MAX_TICK);
        assert_eq!(tick(&p(8)), Duration::from_secs(2));
        assert_eq!(tick(&p(1)), MIN_TICK);
        let never = Retention {
            read: None,
            ..Retention::default()
        };
        assert_eq!(tick(&never), MAX_TICK);
    }
}
