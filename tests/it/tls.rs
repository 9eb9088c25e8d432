//! TLS with real processes on loopback: certificates made here with rcgen (a CA and leaves it
//! signs), nodes serving `wss://`, agents and the CLI verifying them, a plain client on the
//! TLS port, a mesh of self-signed nodes, and credentials kept off plain links.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::client::{Client, ClientOptions};
use switchboard::protocol::SendRequest;
use switchboard::tls::ClientTls;

use crate::common::*;
use crate::mesh::msg;

/// A test CA and one leaf certificate it signed, as PEM files.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and a leaf for `names` (expired a year ago when `expired`).
pub fn pki(names: &[&str], expired: bool) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose, date_time_ymd,
    };
    let dir = tempdir();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "switchboard test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf = CertificateParams::new(names).unwrap();
    if expired {
        leaf.not_before = date_time_ymd(2020, 1, 1);
        leaf.not_after = date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p("cert.pem"), cert.pem()).unwrap();
    std::fs::write(p("key.pem"), key.serialize_pem()).unwrap();
    Pki {
        ca: p("ca.pem"),
        cert: p("cert.pem"),
        key: p("key.pem"),
        _dir: dir,
    }
}

/// A node serving `pki`'s leaf.
async fn tls_node(dir: &Path, pki: &Pki) -> NodeProc {
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    NodeProc::start(dir, &["--tls-cert", &cert, "--tls-key", &key]).await
}

fn wss(node: &NodeProc) -> String {
    format!("wss://127.0.0.1:{}", node.port)
}

fn trusting(ca: &Path) -> ClientTls {
    ClientTls::agent(&[ca.to_owned()], Vec::new()).unwrap()
}

pub async fn client(url: &str, agent: &str, token: &str, tls: &ClientTls) -> Client {
    let mut o = ClientOptions::new(url, agent, token);
    o.reconnect = false;
    o.tls = Some(tls.clone());
    Client::connect(o).await.unwrap()
}

/// `GET path` over https, parsed as JSON.
pub async fn https_json(url: &str, path: &str, tls: &ClientTls) -> Value {
    let (status, body) = switchboard::tls::http_get(url, path, Some(tls), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The CLI, with a data dir of its own (so nothing is trusted through a node's data dir).
pub fn cli(dir: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.arg("--data-dir")
        .arg(dir)
        .env("SWITCHBOARD_LOG", "warn")
        .env_remove("SWITCHBOARD_NODE")
        .env_remove("SWITCHBOARD_TLS_CA")
        .env_remove("SWITCHBOARD_TOKEN");
    c
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_wss_with_tls_ca_sends_and_receives() {
    let pki = pki(&["localhost", "127.0.0.1"], false);
    let dir = tempdir();
    let node = tls_node(dir.path(), &pki).await;
    let tls = trusting(&pki.ca);
    let bob = client(&wss(&node), "bob", &node.secret(), &tls).await;
    let mut pushes = bob.pushes();
    let mine = tempdir();
    let ca = pki.ca.display().to_string();

    // The CLI: send over wss:// with --tls-ca, and read bob's reply back.
    let o = output(
        cli(mine.path())
            .args([
                "--node",
                &wss(&node),
                "--tls-ca",
                &ca,
                "send",
                "--as",
                "alice",
            ])
            .args(["--to", "bob", "over TLS"])
            .env("SWITCHBOARD_TOKEN", node.secret()),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let m = next_push(&mut pushes).await;
    assert_eq!((m.from.as_str(), m.body.as_str()), ("alice", "over TLS"));
    let r = bob
        .send(SendRequest {
            reply_to: Some(m.id.clone()),
            ..msg("alice", "TLS reply")
        })
        .await
        .unwrap();
    // The env variable works as the flag does, and localhost is a name the leaf has.
    let url = format!("wss://localhost:{}", node.port);
    let o = output(
        cli(mine.path())
            .args(["--node", &url, "inbox", "--as", "alice", "--json"])
            .env("SWITCHBOARD_TOKEN", node.secret())
            .env("SWITCHBOARD_TLS_CA", &pki.ca),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let inbox: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(inbox["messages"][0]["id"], r.id.as_str(), "{inbox}");

    // `switchboard mcp` over wss://, driven by a real MCP client.
    let mut cmd = cli(mine.path());
    cmd.args(["--node", &wss(&node), "--tls-ca", &ca])
        .args(["mcp", "--agent", "carol"])
        .env("SWITCHBOARD_TOKEN", node.secret());
    let (carol, _) = crate::mcp::spawn_command(cmd).await;
    let sent = crate::mcp::ok(
        &carol,
        "send_message",
        json!({"to": "bob", "body": "from MCP over TLS"}),
    )
    .await;
    assert_eq!(sent["status"], "delivered", "{sent}");
    let m = next_push(&mut pushes).await;
    assert_eq!(
        (m.from.as_str(), m.body.as_str()),
        ("carol", "from MCP over TLS")
    );
    bob.send(msg("carol", "back to MCP")).await.unwrap();
    let got = crate::mcp::ok(&carol, "wait_for_messages", json!({"timeout_seconds": 20})).await;
    assert_eq!(got["messages"][0]["body"], "back to MCP", "{got}");
    carol.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_is_a_clear_error_naming_the_host() {
    let pki_ip = pki(&["127.0.0.1"], false);
    let dir = tempdir();
    let node = tls_node(dir.path(), &pki_ip).await;
    let mine = tempdir();

    // No --tls-ca: the CLI stops at once, naming the host and the reason, and sends nothing.
    let started = std::time::Instant::now();
    let o = output(
        cli(mine.path())
            .args([
                "--node",
                &wss(&node),
                "send",
                "--as",
                "alice",
                "--to",
                "bob",
                "x",
            ])
            .env("SWITCHBOARD_TOKEN", node.secret()),
    )
    .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("TLS with 127.0.0.1 failed"), "{err}");
    assert!(
        err.contains("unknown issuer") && err.contains("--tls-ca"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up at once, not after retries"
    );
    // The library client: the same, as a typed error, and no retry loop.
    let mut o = ClientOptions::new(wss(&node), "alice", node.secret());
    o.tls = Some(ClientTls::agent(&[], Vec::new()).unwrap());
    o.connect_timeout = Duration::from_secs(30);
    let started = std::time::Instant::now();
    match Client::connect(o).await {
        Err(switchboard::Error::Tls(m)) => assert!(m.contains("unknown issuer"), "{m}"),
        Err(e) => panic!("expected a TLS error, got {e}"),
        Ok(_) => panic!("connected to an unverified node"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "no retries");

    // Trusted CA, wrong name: the leaf is for 127.0.0.1 only.
    let tls = trusting(&pki_ip.ca);
    let mut o = ClientOptions::new(format!("wss://localhost:{}", node.port), "a", node.secret());
    o.tls = Some(tls.clone());
    match Client::connect(o).await {
        Err(switchboard::Error::Tls(m)) => {
            assert!(m.contains("not valid for the name localhost"), "{m}");
            assert!(m.contains("127.0.0.1"), "it says which names it has: {m}");
        }
        other => panic!("expected a name mismatch, got {:?}", other.err()),
    }

    // Trusted CA, expired leaf.
    let old = pki(&["127.0.0.1"], true);
    let dir2 = tempdir();
    let expired = tls_node(dir2.path(), &old).await;
    let mut o = ClientOptions::new(wss(&expired), "a", expired.secret());
    o.tls = Some(trusting(&old.ca));
    match Client::connect(o).await {
        Err(switchboard::Error::Tls(m)) => assert!(m.contains("expired"), "{m}"),
        other => panic!("expected an expired certificate, got {:?}", other.err()),
    }
    // The node that refused nobody serves verified clients all along.
    client(&wss(&node), "alice", &node.secret(), &tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_on_the_tls_port_fails_cleanly_and_the_node_keeps_serving() {
    let pki = pki(&["127.0.0.1"], false);
    let dir = tempdir();
    let mut node = tls_node(dir.path(), &pki).await;
    let tls = trusting(&pki.ca);

    // A plain WebSocket client: a clear 400 saying to use wss://.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("{}/ws", node.url())),
    )
    .await
    .expect("answered within 10 s");
    match plain {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 400);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default());
            assert!(
                body.contains("TLS only") && body.contains("wss://"),
                "{body}"
            );
        }
        other => panic!("expected an HTTP 400, got {other:?}"),
    }
    node.log_line_containing("does not speak TLS", Duration::from_secs(10))
        .await;
    // The CLI on ws://: one clear line, exit 1.
    let mine = tempdir();
    let o = output(
        cli(mine.path())
            .args(["--node", &node.url(), "who"])
            .env("SWITCHBOARD_TOKEN", node.secret()),
    )
    .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("speaks TLS only") && err.contains(&wss(&node)),
        "{err}"
    );
    // Bytes that are neither HTTP nor TLS, and a handshake cut short: closed, nothing else.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
            .await
            .unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("closed within 10 s");
    }

    // And the node serves on: /health and /metrics over https, and a verified agent.
    let h = https_json(&wss(&node), "/health", &tls).await;
    let cert = switchboard::tls::server::read_certs(&pki.cert, "test").unwrap();
    let fingerprint = switchboard::tls::server::fingerprint(&cert[0]);
    assert_eq!(h["tls"]["fingerprint_sha256"], fingerprint.as_str(), "{h}");
    assert_eq!(h["tls"]["self_signed"], false);
    let (status, metrics) =
        switchboard::tls::http_get(&wss(&node), "/metrics", Some(&tls), Duration::from_secs(10))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("switchboard_sessions"), "{metrics}");
    let alice = client(&wss(&node), "alice", &node.secret(), &tls).await;
    assert!(alice.presence(None).await.is_ok());
    assert!(node.child.try_wait().unwrap().is_none(), "the node runs");
}

#[tokio::test]
async fn a_token_is_not_sent_in_clear_text_to_another_machine() {
    let mine = tempdir();
    let started = std::time::Instant::now();
    let o = output(cli(mine.path()).args([
        "--node",
        "ws://example.invalid:1",
        "--token",
        "sbt_secret",
        "send",
        "--as",
        "a",
        "--to",
        "b",
        "x",
    ]))
    .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("clear text") && err.contains("example.invalid"),
        "{err}"
    );
    assert!(
        err.contains("wss://") && err.contains("--allow-plaintext"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // (That --allow-plaintext lifts the refusal is a unit test: trying it here would send a
    // DNS query off this machine.)
    // A node refuses a plain peer on another machine at start.
    let o = output(cli(mine.path()).args([
        "node",
        "--listen",
        "127.0.0.1:0",
        "--peer",
        "ws://192.0.2.1:8765",
    ]))
    .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("plain peer link") && err.contains("--allow-plaintext"),
        "{err}"
    );
}

/// The Python example over wss:// with the CA (python3 + websockets; CI installs them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_speaks_wss_with_the_ca() {
    if !python_with_websockets().await {
        return;
    }
    let pki = pki(&["127.0.0.1"], false);
    let dir = tempdir();
    let node = tls_node(dir.path(), &pki).await;
    let bob = client(&wss(&node), "bob", &node.secret(), &trusting(&pki.ca)).await;
    let mut pushes = bob.pushes();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_agent.py");
    let mine = tempdir();
    let python = |extra: &[&str]| {
        let mut c = tokio::process::Command::new("python3");
        c.arg(script)
            .args(["--as", "alice", "--node", &wss(&node), "--data-dir"])
            .arg(mine.path())
            .args(extra)
            .args([
                "--send",
                "bob",
                "hi from Python over TLS",
                "--wait-reply",
                "20",
            ])
            .env("SWITCHBOARD_TOKEN", node.secret())
            .env_remove("SWITCHBOARD_TLS_CA")
            .kill_on_drop(true)
            .stderr(std::process::Stdio::piped());
        c
    };
    // Without the CA: refused at once, naming the host.
    let o = output(&mut python(&[])).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("TLS with 127.0.0.1 failed"), "{err}");
    // With it: the message arrives, and the reply ends the script with 0.
    let ca = pki.ca.display().to_string();
    let run = python(&["--tls-ca", &ca]).spawn().unwrap();
    let m = next_push(&mut pushes).await;
    assert_eq!(m.body, "hi from Python over TLS");
    bob.send(SendRequest {
        reply_to: Some(m.id.clone()),
        ..msg("alice", "hello Python")
    })
    .await
    .unwrap();
    let o = finish(run).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// `[tls] self_signed = true` in a data dir's config: the CLI without --node hosts the node
/// with TLS and trusts the certificate it made, with no flag at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_node_with_tls_needs_no_flags() {
    let (dir, port) = data_dir_on_free_port();
    let config = dir.path().join("config.toml");
    let listen = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{listen}[tls]\nself_signed = true\n")).unwrap();
    let o = output(cli(dir.path()).args(["agent", "add", "bob"])).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = output(cli(dir.path()).args(["send", "--as", "alice", "--to", "bob", "hi"])).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("tls").join("key.pem").exists());
    let o = output(cli(dir.path()).args(["inbox", "--as", "bob", "--json"])).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let inbox: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(inbox["messages"][0]["body"], "hi", "{inbox}");
    // A node on that data dir speaks TLS only, and `status` finds it.
    let node = NodeProc::start_on(dir.path(), port, &[]).await;
    let o = output(cli(dir.path()).args(["status", "--json"])).await;
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["url"], wss(&node).as_str(), "{status}");
    assert!(status["health"]["tls"]["self_signed"] == true, "{status}");
}
