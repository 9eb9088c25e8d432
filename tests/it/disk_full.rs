//! A node whose disk fills up, for real: the data dir is a small tmpfs, filled to the last
//! byte by a file beside the store. Sends are refused with `storage_full` (wire and MCP),
//! reads, presence and new connections go on, the node says so once and in /health, and once
//! the file is gone it takes sends again by itself; nothing acknowledged is lost.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use switchboard::client::Client;
use switchboard::message::Status;
use switchboard::protocol::{InboxRequest, SendRequest};

use crate::common::{NodeProc, eventually, health, metric, tempdir};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    _parent: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// None (with a message saying why) where this machine lets nobody mount: CI runs as root.
    fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempdir();
        let path = parent.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                _parent: parent,
                path,
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({}); run as root to test a full disk",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); run as root to test a full disk");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Writes a file until the file system has no byte left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            break;
        }
    }
    // The last partial chunks.
    let mut small = vec![0u8; 512];
    while f.write_all(&small).is_ok() {}
    small.truncate(1);
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

fn mail(to: &str, body: String) -> SendRequest {
    SendRequest {
        to: to.into(),
        body,
        ..Default::default()
    }
}

/// Sends until the node refuses one; returns the ids it acknowledged and the refusal.
async fn send_until_refused(alice: &Client, acked: &mut Vec<String>) -> String {
    for i in 0..20_000 {
        match alice
            .send(mail("bob", format!("{i} {}", "z".repeat(4000))))
            .await
        {
            Ok(r) => acked.push(r.id),
            Err(e) => return e.to_string(),
        }
    }
    panic!("20,000 sends of 4 KB fitted on an 8 MB disk that was full");
}

async fn error_lines_about_the_disk(node: &mut NodeProc) -> usize {
    let mut n = 0;
    while let Ok(l) = node.stderr_lines.try_recv() {
        if l.contains("ERROR") && l.contains("the disk is full") {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn a_full_disk_refuses_sends_keeps_reads_and_recovers_by_itself() {
    let Some(disk) = Tmpfs::mount("8m") else {
        return;
    };
    let dir = disk.path.clone();
    let mut node = NodeProc::start(&dir, &["--send-rate", "0"]).await;
    let (alice, bob) = (node.client("alice").await, node.client("bob").await);
    node.cli(&["agent", "add", "dave"]).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(
            alice
                .send(mail("bob", format!("kiwi {i}")))
                .await
                .unwrap()
                .id,
        );
        acked.push(
            alice
                .send(mail("dave", format!("kiwi {i}")))
                .await
                .unwrap()
                .id,
        );
    }
    let url = node.url();
    let (dave, _) = crate::mcp::spawn(&dir, "dave", Some(&url)).await;

    let filler = dir.join("filler");
    fill(&filler);
    let refusal = send_until_refused(&alice, &mut acked).await;
    assert!(refusal.contains("[storage_full]"), "{refusal}");
    assert!(refusal.contains("disk is full"), "{refusal}");
    // A nearly full disk may still take a small commit now and then; each send either is
    // stored or says why.
    for _ in 0..20 {
        match alice.send(mail("bob", "z".repeat(4000))).await {
            Ok(r) => acked.push(r.id),
            Err(e) => assert!(e.to_string().contains("[storage_full]"), "{e}"),
        }
    }

    // The node says so, in /health and /metrics, and its log says it once.
    let h = health(node.port).await;
    assert_eq!(h["status"], "degraded", "{h}");
    let reason = h["reasons"][0].as_str().unwrap_or_default();
    assert!(reason.contains("the disk is full"), "{h}");
    assert!(h["store"]["fault"].is_string(), "{h}");
    assert_eq!(metric(node.port, "store_degraded").await, 1);

    // Reads, presence and new connections go on.
    let inbox = bob.inbox(InboxRequest::unread(200)).await.unwrap();
    assert!(inbox.messages.len() >= 20, "{}", inbox.messages.len());
    bob.search("kiwi".into(), 50).await.unwrap();
    let carol = node.client("carol").await;
    let who = carol.presence(None).await.unwrap();
    assert!(who.agents.iter().any(|a| a.name == "bob" && a.online));
    // Writes that are not sends either fit or say why: never `internal`.
    let ids: Vec<String> = inbox.messages.iter().map(|m| m.id.clone()).collect();
    if let Err(e) = bob.mark_read(ids, false).await {
        assert!(e.to_string().contains("[storage_full]"), "{e}");
    }
    if let Err(e) = bob.set_status(Status::Busy, None).await {
        assert!(e.to_string().contains("[storage_full]"), "{e}");
    }
    // Over MCP: the inbox is read (marked read or not), a send is refused by name.
    let got = crate::mcp::ok(&dave, "get_inbox", json!({})).await;
    assert_eq!(got["messages"].as_array().map(Vec::len), Some(20), "{got}");
    // Like the wire sends above, a commit may still fit now and then; one is refused soon.
    let mut refused = None;
    for _ in 0..50 {
        let body = "z".repeat(4000);
        let sent =
            crate::mcp::call(&dave, "send_message", json!({"to": "bob", "body": body})).await;
        if sent.is_error == Some(true) {
            refused = Some(crate::mcp::text(&sent));
            break;
        }
        let id = sent
            .structured_content
            .as_ref()
            .and_then(|s| s["id"].as_str());
        acked.push(id.expect("a stored send has an id").to_owned());
    }
    let text = refused.expect("an MCP send refused on the full disk");
    assert!(
        text.contains("storage_full") && text.contains("disk is full"),
        "{text}"
    );
    assert_eq!(error_lines_about_the_disk(&mut node).await, 1);

    // Space comes back: the node notices by itself and takes sends again.
    std::fs::remove_file(&filler).unwrap();
    eventually(15, "the node to be healthy again", || async {
        health(node.port).await["status"] == "ok"
    })
    .await;
    acked.push(alice.send(mail("bob", "after".into())).await.unwrap().id);
    let h = health(node.port).await;
    assert!(h["store"]["fault"].is_null(), "{h}");
    assert_eq!(
        h["store"]["messages"],
        acked.len(),
        "every acknowledged message is stored"
    );
    node.log_line_containing("the store writes again", std::time::Duration::from_secs(5))
        .await;

    // And after a restart, from the file itself.
    drop((alice, bob, carol, dave));
    assert!(node.terminate().await.success());
    let node = NodeProc::start(&dir, &[]).await;
    assert_eq!(health(node.port).await["store"]["messages"], acked.len());
}
