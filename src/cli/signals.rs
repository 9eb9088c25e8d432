//! SIGINT (Ctrl-C) and SIGTERM, caught from the moment a [`Signals`] is made: a signal that
//! comes before anything awaits it is kept for the next [`Signals::recv`], instead of killing
//! the process the default way (no goodbye, no flush, a hosted node stopped mid-way).

/// The stop signals of this process.
pub struct Signals {
    #[cfg(unix)]
    caught: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Starts catching SIGINT and SIGTERM.
    pub fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let caught = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(i), Ok(t)) => Some((i, t)),
                _ => None,
            };
            Signals { caught }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((i, t)) = &mut self.caught {
            tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
