//! Counters exported at `GET /metrics` in the Prometheus text format. Plain atomics: a handful of
//! counters does not justify a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $kind:literal, $help:literal;)+) => {
        /// The node's counters and gauges.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)+
        }

        impl Metrics {
            /// Renders every counter, plus `extra` gauges computed at scrape time.
            pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP switchboard_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE switchboard_{} {}", stringify!($name), $kind);
                    let _ = writeln!(out, "switchboard_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )+
                for (name, help, value) in extra {
                    let _ = writeln!(out, "# HELP switchboard_{name} {help}");
                    let _ = writeln!(out, "# TYPE switchboard_{name} gauge");
                    let _ = writeln!(out, "switchboard_{name} {value}");
                }
                out
            }
        }
    };
}

counters! {
    connections_total: "counter", "WebSocket connections accepted.";
    connections_active: "gauge", "WebSocket connections open now.";
    auth_failures_total: "counter", "Connections refused at hello.";
    messages_accepted_total: "counter", "Messages committed from senders on this node.";
    messages_duplicate_total: "counter", "Sends deduplicated by id (retries).";
    messages_queued_total: "counter", "Sends answered queued (no recipient session confirmed).";
    messages_delivered_total: "counter", "Sends answered delivered.";
    pushes_total: "counter", "Messages pushed to sessions.";
    acks_total: "counter", "Message acks received from sessions.";
    slow_consumers_total: "counter", "Sessions cut off because their queue was full or they stopped answering pings.";
    frames_rejected_total: "counter", "Frames answered with an error (bad, oversized, refused).";
    rate_limited_total: "counter", "Sends refused by the per-sender rate limit.";
    forwarded_total: "counter", "Log entries sent to peer nodes.";
    replicated_total: "counter", "Messages received from peer nodes and stored.";
    retried_total: "counter", "Log entries sent to a peer again after a link restarted.";
    deduplicated_total: "counter", "Entries or messages from peers that were already here.";
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
