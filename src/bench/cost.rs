//! What a bench run costs: the CPU time of the node processes and of the bench itself (from
//! `/proc/PID/stat`, Linux), per message, and plain runs against TLS runs side by side.

use std::time::Duration;

/// CPU time (user + system) of a process so far; `None` for this process. Linux only.
fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let path = match pid {
            Some(p) => format!("/proc/{p}/stat"),
            None => "/proc/self/stat".into(),
        };
        let stat = std::fs::read_to_string(path).ok()?;
        // Fields after the command name (which is in parentheses and may hold spaces):
        // state is field 3, utime 14 and stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let hz = rustix::param::clock_ticks_per_second().max(1);
        Some(Duration::from_micros(ticks * 1_000_000 / hz))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// CPU used by the node processes and by the bench since [`CpuMeter::start`].
pub(super) struct CpuMeter {
    pids: Vec<u32>,
    nodes: Option<Duration>,
    me: Option<Duration>,
}

fn total(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|p| cpu_time(Some(*p))).sum()
}

impl CpuMeter {
    pub(super) fn start(pids: Vec<u32>) -> CpuMeter {
        CpuMeter {
            nodes: total(&pids),
            me: cpu_time(None),
            pids,
        }
    }

    /// Microseconds of CPU per message: (all nodes together, the bench's clients).
    pub(super) fn per_message(&self, messages: u64) -> (f64, f64) {
        let per = |before: Option<Duration>, now: Option<Duration>| match (before, now) {
            (Some(b), Some(n)) if messages > 0 => {
                n.saturating_sub(b).as_secs_f64() * 1e6 / messages as f64
            }
            _ => f64::NAN,
        };
        (
            per(self.nodes, total(&self.pids)),
            per(self.me, cpu_time(None)),
        )
    }
}

/// One mesh run's headline figures.
#[derive(Debug, Clone)]
pub(super) struct Figures {
    pub tls: bool,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Node CPU per message in the paced latency phase, µs.
    pub node_us_paced: f64,
    pub msgs_per_s: f64,
    /// Node CPU per message in the throughput phase, µs.
    pub node_us_tp: f64,
    /// The bench's own CPU per message in the throughput phase, µs.
    pub bench_us_tp: f64,
}

impl Figures {
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "tls": self.tls, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "node_cpu_us_per_msg_paced": self.node_us_paced, "msgs_per_s": self.msgs_per_s,
            "node_cpu_us_per_msg_throughput": self.node_us_tp,
            "bench_cpu_us_per_msg_throughput": self.bench_us_tp,
        })
    }
}

fn mean(v: &[f64]) -> f64 {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The side-by-side table: every run in the order it ran, then each mode's mean and what TLS
/// adds.
pub(super) fn compare(runs: &[Figures]) -> Vec<String> {
    let row = |label: &str, f: &Figures| {
        format!(
            "{label:<10} p50 {:>6.3} ms  p99 {:>6.3} ms  node CPU {:>6.1} µs/msg paced | {:>7.0} msg/s  node CPU {:>6.1} µs/msg  bench CPU {:>6.1} µs/msg",
            f.p50_ms, f.p99_ms, f.node_us_paced, f.msgs_per_s, f.node_us_tp, f.bench_us_tp
        )
    };
    let mut lines = vec!["plain vs TLS, in the order run:".to_owned()];
    for (i, f) in runs.iter().enumerate() {
        let label = format!("{}. {}", i + 1, if f.tls { "TLS" } else { "plain" });
        lines.push(row(&label, f));
    }
    let of = |tls: bool, get: fn(&Figures) -> f64| {
        let v: Vec<f64> = runs.iter().filter(|f| f.tls == tls).map(get).collect();
        mean(&v)
    };
    let avg = |tls: bool| Figures {
        tls,
        p50_ms: of(tls, |f| f.p50_ms),
        p99_ms: of(tls, |f| f.p99_ms),
        node_us_paced: of(tls, |f| f.node_us_paced),
        msgs_per_s: of(tls, |f| f.msgs_per_s),
        node_us_tp: of(tls, |f| f.node_us_tp),
        bench_us_tp: of(tls, |f| f.bench_us_tp),
    };
    let (plain, tls) = (avg(false), avg(true));
    lines.push(row("mean plain", &plain));
    lines.push(row("mean TLS", &tls));
    let pct = |a: f64, b: f64| (b / a - 1.0) * 100.0;
    lines.push(format!(
        "TLS adds   p50 {:+.3} ms, p99 {:+.3} ms, node CPU/msg {:+.1} % paced and {:+.1} % at full load, throughput {:+.1} %",
        tls.p50_ms - plain.p50_ms,
        tls.p99_ms - plain.p99_ms,
        pct(plain.node_us_paced, tls.node_us_paced),
        pct(plain.node_us_tp, tls.node_us_tp),
        pct(plain.msgs_per_s, tls.msgs_per_s),
    ));
    lines
}
