//! Ports for the node processes the bench (and the integration tests) start.

use crate::error::{Error, Result};

/// A free loopback port for a node process this program starts, below the ephemeral range.
///
/// Why not `bind(":0")`: such a port comes from the kernel's ephemeral range, the range every
/// outgoing connection on the machine takes its local port from. Between the pick and the
/// node's own bind — or while a killed node is down before it restarts on the same port — any
/// connection may take that port, and the node then fails with "address in use". Ports below
/// the ephemeral range are only ever taken by explicit binds, which the probe bind here sees.
/// Each call in a process gets a different port, starting from a per-process offset, so
/// concurrent tests and benches do not pick the same one.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Linux publishes the ephemeral range; elsewhere (macOS: 49152-65535) assume it starts no
    // lower than Linux's default.
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(2048, 65535);
    let base = low.saturating_sub(16384).max(1024);
    let span = low - base;
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = base + (offset + k) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Every port below the range is bound: fall back to one the kernel picks.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}
