//! Percentiles, the wake-up probe that tells a quiet run from a noisy one, and progress lines.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Samples in milliseconds.
pub(super) struct Stats(pub(super) Vec<f64>);

impl Stats {
    pub(super) fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

/// How late the machine wakes a thread while a phase runs: a spare thread sleeps 0.5 ms over
/// and over and records each overshoot. Every delivery crosses several threads, so when the
/// machine wakes threads late (the bench's own load on few cores, or a busy host under a VM)
/// the tails stretch; printing this beside the figures tells a quiet run from a noisy one.
pub(super) struct WakeupProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    sample: tokio::task::JoinHandle<Vec<f64>>,
}

impl WakeupProbe {
    pub(super) fn start() -> WakeupProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let sample = tokio::task::spawn_blocking(move || {
            let nap = Duration::from_micros(500);
            let mut late = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                std::thread::sleep(nap);
                late.push(t.elapsed().saturating_sub(nap).as_secs_f64() * 1e3);
            }
            late
        });
        WakeupProbe { stop, sample }
    }

    /// Stops the probe and adds its line to the table and its figures to the report.
    pub(super) async fn finish(
        self,
        table: &mut Vec<String>,
        report: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let s = Stats(self.sample.await.unwrap_or_default());
        table.push(format!(
            "  (meanwhile a sleeping thread woke late by p50 {:.3} ms, p99 {:.3} ms)",
            s.pct(50.0),
            s.pct(99.0)
        ));
        report.insert(
            "wakeup_late_ms".into(),
            serde_json::json!({"p50": s.pct(50.0), "p99": s.pct(99.0)}),
        );
    }
}

/// One progress line on stderr.
pub(super) fn progress(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "bench: {text}");
}
