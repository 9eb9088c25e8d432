//! Who gets into the dashboard: wrong, used and expired login codes are refused; an operator
//! token logs in as its own name only and its revocation ends the session; an agent token, a
//! cookie-less page and another site's page get nothing.

use std::time::Duration;

use serde_json::json;

use crate::browser::Browser;
use crate::common::{BIN, NodeProc, next_json, output, raw, send_text, tempdir};
use crate::dashboard::{log_in, login_link};

/// Opens `link` and waits for the login page to say why it was refused.
async fn refused_with(b: &Browser, link: &str) -> String {
    b.c.goto(link).await.unwrap();
    let why = b
        .until(
            10,
            "the login page saying the link was refused",
            "const m = document.getElementById('login-message').textContent; \
             return !document.getElementById('login').hidden && m.includes('login link') && m",
        )
        .await;
    assert!(!b.c.current_url().await.unwrap().as_str().contains("code="));
    why.as_str().unwrap().to_owned()
}

#[tokio::test]
async fn wrong_used_and_expired_login_codes_are_refused() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let b = Browser::start().await;
    let base = format!("http://127.0.0.1:{}", node.port);

    let why = refused_with(&b, &format!("{base}/#code={}", "0".repeat(64))).await;
    assert!(why.contains("wrong, expired or already used"), "{why}");
    b.shot("login-refused").await;

    // A code works once.
    let link = login_link(&node, &["--as", "ops-person"]).await;
    log_in(&b, &link).await;
    assert_eq!(
        b.js("return document.getElementById('me').textContent")
            .await,
        "ops-person"
    );
    b.click("#logout").await;
    b.until(
        10,
        "logged out",
        "return !document.getElementById('login').hidden",
    )
    .await;
    let why = refused_with(&b, &link).await;
    assert!(why.contains("already used"), "{why}");

    // And only until it expires.
    let link = login_link(&node, &["--ttl", "1s"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the time that makes it expire
    let why = refused_with(&b, &link).await;
    assert!(why.contains("expired"), "{why}");
    b.close().await;

    // Nothing is minted for a token that is neither the local secret nor an operator's.
    let agent_token = node.cli(&["token", "issue", "worker"]).await;
    let out = output(
        tokio::process::Command::new(BIN)
            .args([
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--node",
                &node.url(),
            ])
            .args(["--token", agent_token.trim(), "dashboard"]),
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("operator token"), "{err}");
    assert!(out.stdout.is_empty(), "no link printed");
}

/// A page's live connection needs the session cookie and the node's own origin.
#[tokio::test]
async fn the_live_connection_and_login_refuse_other_sites_and_strangers() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let mut ws = raw(&node.url()).await;
    send_text(&mut ws, json!({"op": "dashboard", "csrf": "x"}).to_string()).await;
    let e = next_json(&mut ws).await.unwrap();
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unauthorized")),
        "{e}"
    );

    let link = login_link(&node, &[]).await;
    let code = link.rsplit_once("code=").unwrap().1;
    let post = |origin: String| {
        let body = json!({ "code": code }).to_string();
        let port = node.port;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let req = format!(
                "POST /dashboard/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {origin}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).await.unwrap();
            buf
        }
    };
    let evil = post("http://evil.example".into()).await;
    assert!(evil.starts_with("HTTP/1.1 403"), "{evil}");
    let other_port = post(format!("http://127.0.0.1:{}", node.port + 1)).await;
    assert!(other_port.starts_with("HTTP/1.1 403"), "{other_port}");
    // The refused attempts did not use the code up.
    let ok = post(format!("http://127.0.0.1:{}", node.port)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("HttpOnly; SameSite=Strict"), "{ok}");
    assert!(
        ok.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'")
    );
}

#[tokio::test]
async fn an_operator_token_logs_in_as_its_name_and_revoking_it_ends_the_session() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let token = node.cli(&["token", "issue", "--operator", "ops"]).await;
    let token = token.trim();
    assert!(token.starts_with("sbo_"), "{token}");
    let as_operator = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--node",
            &node.url(),
        ])
        .args(["--token", token, "dashboard"])
        .args(extra);
        cmd
    };
    let out = output(&mut as_operator(&["--as", "someone-else"])).await;
    assert!(
        !out.status.success(),
        "an operator token acts as its own name only"
    );
    let out = output(&mut as_operator(&[])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let link = stdout.lines().last().unwrap();

    let b = Browser::start().await;
    log_in(&b, link).await;
    assert_eq!(
        b.js("return document.getElementById('me').textContent")
            .await,
        "ops"
    );
    node.cli(&["token", "revoke", "ops"]).await;
    let why = b
        .until(
            10,
            "the session ended by the revocation",
            "return !document.getElementById('login').hidden && document.getElementById('login-message').textContent",
        )
        .await;
    assert!(why.as_str().unwrap().contains("revoked"), "{why}");
    b.close().await;
}
