//! Whether the store can write now. A full disk or a failing one makes every commit fail until
//! it is fixed; the node must say so once (not once per batch: a probe logged 3,913 errors),
//! show it in `/health` while it lasts, and notice by itself when writes work again.

use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::error::{Error, Fault};

/// How long writes must keep working before a fault counts as over. A nearly full disk takes
/// some commits and refuses others; without this, each turn would log and flip `/health`.
const RECOVERED_AFTER: Duration = Duration::from_secs(3);

/// The store's write condition, shared by the writer (which sets and clears it) and everyone
/// who reports it.
#[derive(Debug, Default)]
pub struct Health {
    fault: Mutex<Option<Faulted>>,
}

/// A fault that is going on.
#[derive(Debug, Clone)]
pub struct Faulted {
    /// Full disk or another I/O failure.
    pub fault: Fault,
    /// SQLite's own words for the first failure.
    pub detail: String,
    /// When it began.
    pub since: SystemTime,
    /// Since when writes have worked without a failure, if they have.
    ok_since: Option<Instant>,
}

impl Faulted {
    /// One line for `/health` and logs.
    pub fn reason(&self) -> String {
        let what = match self.fault {
            Fault::Full => "the disk is full: sends are refused (storage_full) until space returns",
            Fault::Failed => {
                "the store cannot write: sends are refused (storage_error) until it can"
            }
        };
        let secs = self.since.elapsed().unwrap_or(Duration::ZERO).as_secs();
        format!("{what} ({}, for {secs} s)", self.detail)
    }
}

/// The fault a SQLite failure means, if it is one of the disk's (not, say, a constraint).
pub fn fault_of(e: &rusqlite::Error) -> Option<Fault> {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code()? {
        C::DiskFull => Some(Fault::Full),
        C::SystemIoFailure | C::CannotOpen | C::ReadOnly | C::DatabaseCorrupt | C::NotADatabase => {
            Some(Fault::Failed)
        }
        _ => None,
    }
}

/// The fault behind a job's error, if any.
pub fn fault_in(e: &Error) -> Option<Fault> {
    match e {
        Error::Store(e) => fault_of(e),
        Error::NotCommitted { fault, .. } => Some(*fault),
        _ => None,
    }
}

impl Health {
    /// The fault going on, if any.
    pub fn current(&self) -> Option<Faulted> {
        self.fault.lock().clone()
    }

    /// A commit failed with `fault`: logged when it begins (or changes kind), not after.
    pub(crate) fn failed(&self, fault: Fault, detail: &str) {
        let mut f = self.fault.lock();
        if let Some(going) = f.as_mut().filter(|f| f.fault == fault) {
            going.ok_since = None;
            tracing::debug!(error = %detail, "store commit failed again");
            return;
        }
        let now = Faulted {
            fault,
            detail: detail.to_owned(),
            since: SystemTime::now(),
            ok_since: None,
        };
        tracing::error!(error = %detail, "{}; reads, presence and connections go on", now.reason());
        *f = Some(now);
    }

    /// A commit that wrote succeeded: a fault is over once writes have kept working for a
    /// while (the node's probe writes every few seconds while it lasts).
    pub(crate) fn wrote(&self) {
        let mut f = self.fault.lock();
        let Some(going) = f.as_mut() else { return };
        match going.ok_since {
            None => going.ok_since = Some(Instant::now()),
            Some(t) if t.elapsed() >= RECOVERED_AFTER => {}
            Some(_) => return,
        }
        if going
            .ok_since
            .is_some_and(|t| t.elapsed() < RECOVERED_AFTER)
        {
            return;
        }
        if let Some(gone) = f.take() {
            let secs = gone.since.elapsed().unwrap_or(Duration::ZERO).as_secs();
            tracing::warn!(
                after_seconds = secs,
                "the store writes again; sends are accepted"
            );
        }
    }
}
