//! The NATS server `bench --mesh N --backbone` replicates through: `nats-server -js` on a free
//! loopback port with a temporary store, killed when dropped.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::ports::free_port;
use crate::error::{Error, Result};

/// A running `nats-server -js`.
pub(super) struct Nats {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts it and waits until it accepts connections.
    pub(super) async fn start() -> Result<Nats> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
        let port = free_port()?;
        // Debian installs it in /usr/sbin, which a non-root PATH may lack.
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = tokio::process::Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io("starting nats-server (apt-get install nats-server)", e))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(Error::Connection("nats-server did not start".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Nats {
            child,
            port,
            _dir: dir,
        })
    }

    pub(super) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A process's resident memory, from the kernel.
pub(super) fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
