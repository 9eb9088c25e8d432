//! Limits that stop storms: the per-sender rate limit and the per-thread loop guard.

use switchboard::Error;
use switchboard::protocol::{ErrorCode, SendRequest};

use crate::common::*;

fn msg(to: &str, body: &str) -> SendRequest {
    SendRequest {
        to: to.into(),
        body: body.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn rate_limit_stops_message_storms() {
    const RATE: u32 = 5;
    const BURST: u32 = 200;
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &["--send-rate", "5"]).await;
    let alice = node.client("alice").await;
    // Sends until the first refusal; returns how many were accepted and the refusal's text.
    let storm = |label: &'static str| {
        let alice = &alice;
        async move {
            for i in 0..2 * BURST {
                match alice.send(msg("alice", &format!("{label} {i}"))).await {
                    Ok(_) => {}
                    Err(Error::Remote {
                        code: ErrorCode::RateLimited,
                        message,
                    }) => return (i, message),
                    Err(e) => panic!("{e}"),
                }
            }
            panic!("{} sends at {RATE}/s were never limited", 2 * BURST);
        }
    };
    let start = std::time::Instant::now();
    let (accepted, message) = storm("burst").await;
    // The whole burst, plus what refilled at RATE/s while it was being sent.
    let refilled = (start.elapsed().as_secs_f64() * f64::from(RATE)).ceil() as u32;
    assert!(
        (BURST..=BURST + refilled).contains(&accepted),
        "accepted {accepted} before the first refusal; burst {BURST}, refilled {refilled}"
    );
    assert!(
        message.starts_with("rate limit: at most 5 messages/s (burst 200) per sender"),
        "{message}"
    );
    // The bucket refills at RATE per second: measure it over one second (the sleep is the
    // time being measured, not a synchronisation).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (refill, _) = storm("refill").await;
    assert!(
        (RATE - 1..=RATE + 2).contains(&refill),
        "{refill} sends accepted one second after the bucket ran dry, at {RATE}/s"
    );
}

#[tokio::test]
async fn the_loop_guard_stops_a_reply_storm_in_one_thread() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("config.toml"),
        "[limits]\nthread_per_minute = 5\n",
    )
    .unwrap();
    let node = NodeProc::start(dir.path(), &[]).await;
    let alice = node.client("alice").await;
    let bob = node.client("bob").await;
    let mut last = alice.send(msg("bob", "thanks!")).await.unwrap().id;
    let mut stopped = None;
    for i in 0..10 {
        let (from, to) = if i % 2 == 0 {
            (&bob, "alice")
        } else {
            (&alice, "bob")
        };
        let mut reply = msg(to, "thanks for the thanks!");
        reply.reply_to = Some(last.clone());
        match from.send(reply).await {
            Ok(r) => last = r.id,
            Err(Error::Remote { code, message }) => {
                assert_eq!(code, ErrorCode::RateLimited);
                assert!(
                    message.contains("loop guard")
                        && message.contains("(limit 5). Nothing was sent."),
                    "{message}"
                );
                stopped = Some(i);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(stopped, Some(4), "the 6th message of the thread is refused");
    // A new conversation is not affected.
    alice.send(msg("bob", "new topic")).await.unwrap();
}
