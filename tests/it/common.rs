//! Shared test helpers: real node processes on free ports with their own temp data dirs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchboard::client::{Client, ClientOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A port nobody listens on right now, which no outgoing connection can take before a node
/// binds it (see `switchboard::bench::free_port`).
pub fn free_port() -> u16 {
    switchboard::bench::free_port().unwrap()
}

/// A `switchboard node` child process.
pub struct NodeProc {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
    pub stderr_lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl NodeProc {
    /// Starts a node on `dir` and waits until it logs that it listens.
    pub async fn start(dir: &Path, extra: &[&str]) -> NodeProc {
        let port = free_port();
        Self::start_on(dir, port, extra).await
    }

    pub async fn start_on(dir: &Path, port: u16, extra: &[&str]) -> NodeProc {
        Self::start_named(dir, port, "test-node", extra).await
    }

    pub async fn start_named(dir: &Path, port: u16, id: &str, extra: &[&str]) -> NodeProc {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .args([
                "node",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--node-id",
                id,
            ])
            .args(extra)
            .env("SWITCHBOARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
        // What the node logged, shown if it fails to start.
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "node did not start in 20 s; it logged:\n{}",
                        seen.join("\n")
                    )
                });
            let Some(line) = line else {
                panic!(
                    "node exited before listening; it logged:\n{}",
                    seen.join("\n")
                );
            };
            if line.contains("node listening") {
                break;
            }
            seen.push(line);
        }
        NodeProc {
            child,
            dir: dir.to_owned(),
            port,
            stderr_lines: rx,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn secret(&self) -> String {
        std::fs::read_to_string(self.dir.join("local.secret"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A CLI command against this node (its data dir and URL), which must succeed; its stdout.
    pub async fn cli(&self, args: &[&str]) -> String {
        let url = self.url();
        let mut all = vec!["--node", url.as_str()];
        all.extend_from_slice(args);
        run_ok(&self.dir, &all).await
    }

    /// A client acting as `agent` with the local secret.
    pub async fn client(&self, agent: &str) -> Client {
        self.client_opts(agent, |_| {}).await
    }

    pub async fn client_opts(&self, agent: &str, f: impl FnOnce(&mut ClientOptions)) -> Client {
        let mut o = ClientOptions::new(self.url(), agent, self.secret());
        o.reconnect = false;
        f(&mut o);
        Client::connect(o).await.unwrap()
    }

    /// The next line the node logs that contains `text`, or a panic after `within`.
    pub async fn log_line_containing(&mut self, text: &str, within: Duration) -> String {
        let find = async {
            while let Some(line) = self.stderr_lines.recv().await {
                if line.contains(text) {
                    return line;
                }
            }
            panic!("the node's log ended without a line containing {text:?}");
        };
        tokio::time::timeout(within, find)
            .await
            .unwrap_or_else(|_| panic!("no log line containing {text:?} within {within:?}"))
    }

    /// kill -9.
    pub async fn kill9(mut self) -> PathBuf {
        self.child.kill().await.unwrap();
        self.dir.clone()
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        sigterm(self.child.id().unwrap());
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("the node did not exit within 15 s of SIGTERM")
            .unwrap()
    }
}

/// Sends SIGTERM to a process.
pub fn sigterm(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {pid}: {sent:?}");
}

pub type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket to the node, for speaking (bad) protocol by hand.
pub async fn raw(url: &str) -> RawWs {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("{url}/ws")),
    )
    .await
    .expect("no WebSocket within 10 s")
    .unwrap();
    ws
}

pub async fn send_text(ws: &mut RawWs, text: impl Into<String>) {
    tokio::time::timeout(
        Duration::from_secs(10),
        ws.send(WsMessage::Text(text.into().into())),
    )
    .await
    .expect("a frame not written within 10 s")
    .unwrap();
}

/// The next JSON text frame, or None when the connection closed.
pub async fn next_json(ws: &mut RawWs) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no frame within 10 s")
        {
            Some(Ok(WsMessage::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Raw connection that has said hello as `agent`.
pub async fn raw_hello(node: &NodeProc, agent: &str) -> RawWs {
    let mut ws = raw(&node.url()).await;
    send_text(
        &mut ws,
        serde_json::json!({"op":"hello","agent":agent,"token":node.secret(),"v":1}).to_string(),
    )
    .await;
    let w = next_json(&mut ws).await.unwrap();
    assert_eq!(w["op"], "welcome", "{w}");
    ws
}

/// `switchboard --data-dir DIR ARGS...`, which must succeed; its stdout.
pub async fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = output(
        Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env("SWITCHBOARD_LOG", "warn"),
    )
    .await;
    assert!(
        out.status.success(),
        "switchboard {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command to its end and takes its output, failing the test after 30 s.
pub async fn output(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(30), cmd.kill_on_drop(true).output())
        .await
        .expect("the command did not finish within 30 s")
        .unwrap()
}

/// The output of a started child once it ends, failing the test after 30 s.
pub async fn finish(child: tokio::process::Child) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the command did not finish within 30 s")
        .unwrap()
}

/// The next line of a child's output, failing the test after 10 s.
pub async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("no line within 10 s")
        .unwrap()
}

/// A fresh data dir whose node listens on a free port (so tests never meet on 8765).
pub fn data_dir_on_free_port() -> (tempfile::TempDir, u16) {
    let dir = tempdir();
    let port = free_port();
    std::fs::write(
        dir.path().join("config.toml"),
        format!("listen = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    (dir, port)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// GET /health of a node on this machine.
pub async fn health(port: u16) -> Value {
    serde_json::from_str(&http_get(port, "/health").await).unwrap()
}

/// Entries in the node's replication log (`/health` `store.log_entries`; `u64::MAX` when
/// missing, so that no wait for a compacted log passes by accident).
pub async fn log_entries(port: u16) -> u64 {
    health(port).await["store"]["log_entries"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Waits (up to `secs` each) until every node on `ports` has compacted its log to its head.
pub async fn logs_compacted(ports: &[u16], secs: u64) {
    for (i, &port) in ports.iter().enumerate() {
        eventually(
            secs,
            &format!("n{}'s log compacted", i + 1),
            || async move { log_entries(port).await <= 1 },
        )
        .await;
    }
}

/// One value from the node's `/metrics` (without the `switchboard_` prefix).
pub async fn metric(port: u16, name: &str) -> u64 {
    let text = http_get(port, "/metrics").await;
    let line = format!("switchboard_{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Whether a node answers `GET /health` on this port now.
pub async fn node_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        std::io::Result::Ok(buf.starts_with("HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), get).await,
        Ok(Ok(true))
    )
}

/// The body of `GET path` on the node.
pub async fn http_get(port: u16, path: &str) -> String {
    match try_http_get(port, path).await {
        Ok(body) => body,
        Err(e) => panic!("GET {path} on port {port}: {e}"),
    }
}

/// The body of `GET path` on a local port, or why there is none (nothing listening, no answer
/// within 10 s).
pub async fn try_http_get(port: u16, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {buf}"))?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(body.to_owned());
    }
    // A large answer of nats-server's monitoring port comes in chunks: size line, data, CRLF.
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| format!("a cut chunk in: {body}"))?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| format!("a short chunk in: {body}"))?;
        out.push_str(chunk);
        rest = after.get(size + 2..).unwrap_or_default();
    }
}

/// Polls `check` until it gives a value, or panics after `secs` naming `what`. Between
/// checks it pauses 1 ms, doubling up to 20 ms, so a wait never spins.
pub async fn poll<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        let now = tokio::time::Instant::now();
        assert!(
            now < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Polls `check` (see [`poll`]) until it holds, or panics after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll(secs, what, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
}

/// The next message pushed to a client, failing the test (instead of hanging it) after 10 s.
pub async fn next_push(
    pushes: &mut tokio::sync::broadcast::Receiver<switchboard::message::Message>,
) -> switchboard::message::Message {
    tokio::time::timeout(Duration::from_secs(10), pushes.recv())
        .await
        .expect("no message pushed within 10 s")
        .unwrap()
}

/// Whether python3 with `websockets` is here for the Python example's tests. CI installs it
/// (.ci/run), so there a missing package fails the test instead of skipping it.
pub async fn python_with_websockets() -> bool {
    let probe =
        output(tokio::process::Command::new("python3").args(["-c", "import websockets"])).await;
    if !probe.status.success() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with websockets is needed (pip install websockets)"
        );
        eprintln!("skipped: python3 with websockets is not installed");
    }
    probe.status.success()
}

/// Issues a token for `agent` through `c` (which holds the local secret); the token.
pub async fn issue_token(c: &Client, agent: &str) -> String {
    c.token(
        switchboard::protocol::TokenAction::Issue,
        Some(agent.into()),
    )
    .await
    .unwrap()
    .token
    .unwrap()
}
