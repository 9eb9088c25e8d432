//! What an open dashboard costs the node under load: 50 agents sending 1,000 msg/s in all,
//! the node's CPU measured over alternating phases without and with a headless Chromium on
//! the dashboard's stream. A measurement, not a timed test (ignored; run it on a release
//! build, `cargo test --release --test it dashboard_load -- --ignored --nocapture`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::protocol::SendRequest;

use crate::browser::Browser;
use crate::common::{NodeProc, tempdir};
use crate::dashboard::{log_in, login_link};

const AGENTS: usize = 50;
const RATE: u64 = 1000;
const PHASE: Duration = Duration::from_secs(10);

/// The node process's CPU time so far (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ
}

/// The node's CPU use over one phase, in % of one core.
async fn phase(pid: u32) -> f64 {
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(PHASE).await; // the length of the measurement
    (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run on a release build with --ignored --nocapture"]
async fn dashboard_cpu_cost_at_1000_msgs_per_second() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let pid = node.child.id().unwrap();
    let mut clients = Vec::new();
    for i in 0..AGENTS {
        clients.push(Arc::new(node.client(&format!("load-{i}")).await));
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let every = Duration::from_micros(1_000_000 * AGENTS as u64 / RATE);
    for (i, c) in clients.iter().enumerate() {
        let (c, stop) = (c.clone(), stop.clone());
        let to = format!("load-{}", (i + 1) % AGENTS);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut n = 0u64;
            while !stop.is_cancelled() {
                tick.tick().await;
                n += 1;
                let body = format!(
                    "status report {n} from load-{i}: all checks passed, queue depth nominal"
                );
                let req = SendRequest {
                    to: to.clone(),
                    body,
                    ..Default::default()
                };
                if c.send(req).await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // warm-up before measuring
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut rows = 0;
    let mut lag_ms = 0.0f64;
    for _ in 0..2 {
        without.push(phase(pid).await);
        let b = Browser::start().await;
        log_in(&b, &login_link(&node, &[]).await).await;
        b.click("#tabs button[data-view=stream]").await;
        with.push(phase(pid).await);
        rows = b
            .js("return document.querySelectorAll('#stream li').length")
            .await
            .as_u64()
            .unwrap_or(0);
        // How late a 50 ms timer fires on the page's main thread while the stream flows.
        let lag = "const done = arguments[arguments.length - 1]; let worst = 0, n = 0; \
             let t = performance.now(); const step = () => { const now = performance.now(); \
             worst = Math.max(worst, now - t - 50); t = now; if (++n < 40) setTimeout(step, 50); \
             else done(worst); }; setTimeout(step, 50);";
        lag_ms = lag_ms.max(
            b.c.execute_async(lag, vec![])
                .await
                .unwrap()
                .as_f64()
                .unwrap_or(-1.0),
        );
        b.close().await;
    }
    stop.cancel();
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (a, b) = (avg(&without), avg(&with));
    println!(
        "node CPU at {RATE} msg/s from {AGENTS} agents: without a dashboard {without:.1?} % (mean {a:.1} %), \
         with one open on the stream {with:.1?} % (mean {b:.1} %): +{:.1} points, {:+.1} % relative; \
         stream rows in the page {rows}, worst main-thread timer lag {lag_ms:.0} ms",
        b - a,
        (b - a) / a * 100.0
    );
    assert!(rows <= 500, "the stream keeps at most 500 rows");
}
