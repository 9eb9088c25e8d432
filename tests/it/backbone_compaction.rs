//! A backbone node's own replication log is compacted once the stream has acknowledged it,
//! so its store stays bounded like a direct-mesh node's; the stream, not the log, is what a
//! node joining later reads.

use switchboard::protocol::InboxRequest;

use crate::backbone::Backbone;
use crate::common::*;
use crate::mesh::msg;

async fn messages(port: u16) -> u64 {
    health(port).await["store"]["messages"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backbone_nodes_log_is_compacted_once_the_stream_has_it() {
    let extra = ["--compact-interval", "200ms", "--send-rate", "0"];
    let mut b = Backbone::start_with(2, &extra).await;
    let alice = b.client(0, "alice").await;
    let bob = b.client(1, "bob").await;
    eventually(20, "bob known at n1", || async {
        alice.presence(Some("bob".into())).await.is_ok()
    })
    .await;
    let mut most = 0;
    for round in 0..4 {
        let sends = (0..250).map(|i| alice.send(msg("bob", &format!("r{round} m{i}"))));
        for r in futures_util::future::join_all(sends).await {
            r.unwrap();
        }
        most = most.max(log_entries(b.ports[0]).await);
    }
    bob.mark_read(Vec::new(), true).await.unwrap();
    b.wait_caught_up().await;
    // Each node's own log (n1: the messages; n2: bob's read marks) is down to its head.
    logs_compacted(&b.ports[..2], 20).await;
    eprintln!("backbone compaction: log_entries at most {most} during 1,000 messages, 1 after");

    // A node that joins now reads everything from the stream.
    b.dirs.push(tempdir());
    b.ports.push(free_port());
    let n3 = b.spawn(2).await;
    b.nodes.push(Some(n3));
    b.wait_heard().await;
    b.wait_caught_up().await;
    assert_eq!(messages(b.ports[2]).await, 1000);
    // bob at n3 finds his mail there, read as he left it at n2.
    let at_n3 = b.client(2, "bob").await;
    let r = at_n3
        .inbox(InboxRequest {
            unread_only: false,
            ..InboxRequest::unread(1)
        })
        .await
        .unwrap();
    assert_eq!(r.messages.len(), 1);
    assert!(r.messages[0].read, "{:?}", r.messages[0]);
}

/// A server whose JetStream may use less disk than the stream's `max_bytes` refuses to create
/// it (JetStream reserves the whole size up front): the node says why in `/health`, and once
/// its stream fits (a smaller `[backbone] max_bytes`), it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_server_has_no_room_for_is_reported_with_the_reason() {
    let conf = tempdir();
    let path = conf.path().join("nats.conf");
    std::fs::write(&path, "jetstream { max_file_store: 16MB }\n").unwrap();
    let nats =
        crate::backbone::Nats::start_with(vec!["-c".into(), path.display().to_string()]).await;
    let dir = tempdir();
    let url = nats.url();
    let node = NodeProc::start_named(dir.path(), free_port(), "n1", &["--backbone", &url]).await;
    let h = poll(20, "the node to say the stream is refused", || async {
        let h = health(node.port).await;
        (h["status"] == "degraded").then_some(h)
    })
    .await;
    let reason = h["reasons"][0].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot publish") && reason.contains("insufficient storage"),
        "{h}"
    );
    assert_eq!(h["reasons"].as_array().map(Vec::len), Some(1), "{h}");
    // Its own agents are served all the same.
    let alice = node.client("alice").await;
    alice.send(msg("alice", "note to self")).await.unwrap();

    drop(alice);
    let port = node.port;
    assert!(node.terminate().await.success());
    std::fs::write(
        dir.path().join("config.toml"),
        "[backbone]\nmax_bytes = 8388608\n",
    )
    .unwrap();
    let node = NodeProc::start_named(dir.path(), port, "n1", &["--backbone", &url]).await;
    eventually(20, "the node healthy with a stream that fits", || async {
        health(node.port).await["status"] == "ok"
    })
    .await;
}
