//! kill -9 of a node loses no acknowledged message.

use std::collections::HashSet;
use std::sync::Arc;

use switchboard::protocol::{InboxRequest, SendRequest};
use tokio::sync::Mutex;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_message() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &["--send-rate", "0"]).await;
    drop(node.client("bob").await);
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 400;
    let acked: Arc<Mutex<Vec<(usize, usize, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let client = Arc::new(node.client(&format!("sender{s}")).await);
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            // Pipelined: up to 32 sends in flight per sender, queued in order.
            let mut inflight = futures_util::stream::FuturesOrdered::new();
            use futures_util::StreamExt;
            for i in 0..PER_SENDER {
                let c = client.clone();
                inflight.push_back(async move {
                    let r = c
                        .send(SendRequest {
                            to: "bob".into(),
                            body: format!("{s}:{i}"),
                            ..Default::default()
                        })
                        .await;
                    (i, r)
                });
                if inflight.len() >= 32 {
                    let (i, r) = inflight.next().await.unwrap();
                    match r {
                        Ok(r) => acked.lock().await.push((s, i, r.id)),
                        Err(_) => return,
                    }
                }
            }
            while let Some((i, r)) = inflight.next().await {
                match r {
                    Ok(r) => acked.lock().await.push((s, i, r.id)),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill the node while the senders are mid-stream.
    eventually(60, "half the sends acknowledged", || async {
        acked.lock().await.len() >= SENDERS * PER_SENDER / 2
    })
    .await;
    let dir_path = node.kill9().await;
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().await.clone();
    assert!(acked.len() >= SENDERS * PER_SENDER / 2);

    // Restart on the same data dir and read bob's whole inbox.
    let node = NodeProc::start(&dir_path, &[]).await;
    let bob = node.client("bob").await;
    let mut stored = Vec::new();
    // Every page marks what it returns read, so this ends within a page per 200 messages.
    for _ in 0..=SENDERS * PER_SENDER / 200 + 1 {
        let page = bob
            .inbox(InboxRequest {
                mark_read: true,
                ..InboxRequest::unread(200)
            })
            .await
            .unwrap();
        if page.messages.is_empty() {
            break;
        }
        stored.extend(page.messages);
    }
    let ids: HashSet<&str> = stored.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "a message is in the inbox twice");
    for (s, i, id) in &acked {
        assert!(
            ids.contains(id.as_str()),
            "acknowledged message {s}:{i} ({id}) was lost"
        );
    }
    // Per-sender order: the inbox (oldest first) lists each sender's messages in send order.
    for s in 0..SENDERS {
        let seq: Vec<usize> = stored
            .iter()
            .filter(|m| m.from == format!("sender{s}"))
            .map(|m| m.body.split(':').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "sender{s} out of order: {seq:?}"
        );
    }
}
