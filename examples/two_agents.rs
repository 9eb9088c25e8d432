//! Two agents talking through an in-process switchboard node, using the Rust library.
//!
//! The example starts a node on a temporary data dir and a free port, connects two agents,
//! `alice` and `bob`, and has alice ask bob a question. Bob receives it as a push (no polling)
//! and answers with `reply_to` set, which puts both messages in one thread. Alice then prints
//! that thread and the node stops, flushing its store.
//!
//! Run it:
//!
//! ```text
//! cargo run --example two_agents
//! ```
//!
//! Nothing outside a temporary directory is touched, and the directory is removed at the end.
//! Set `RUST_LOG=switchboard=debug` to also see the node's own logs.

use std::time::Duration;

use switchboard::auth::load_or_create_secret;
use switchboard::client::{Client, ClientOptions};
use switchboard::config::NodeConfig;
use switchboard::message::{Message, MessageType};
use switchboard::node::Node;
use switchboard::protocol::{DeliveryStatus, SendRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The node's logs are off unless RUST_LOG asks for them.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();

    // 1. A node of our own: a throwaway data dir (SQLite store, secret, lock) and port 0, so
    //    the OS picks a free port. `node.url()` is the `ws://127.0.0.1:PORT` actually bound.
    let data_dir = tempfile::tempdir()?;
    let config = NodeConfig::for_data_dir(data_dir.path().to_path_buf(), "127.0.0.1:0")?;
    let node = Node::start(config).await?;
    let url = node.url();
    println!("node listening on {url}");

    // 2. Agents prove who they are with the data dir's local secret (the node created it on
    //    start; this reads it back). Remote agents would use a token from `switchboard token`.
    let secret = load_or_create_secret(data_dir.path())?;

    // 3. Connect both agents. Bob connects first, so the node knows him when alice sends:
    //    sending to a name the node has never seen is refused with a "did you mean" hint.
    let bob = Client::connect(ClientOptions::new(&url, "bob", &secret)).await?;
    let alice = Client::connect(ClientOptions::new(&url, "alice", &secret)).await?;

    // 4. Bob listens for pushes: every new message for him arrives here as it is stored.
    //    Subscribe *before* anything is sent so nothing can slip by.
    let mut bob_pushes = bob.pushes();

    // 5. Alice asks. `from` is never set by the sender: it is her authenticated name.
    let question = alice
        .send(SendRequest {
            to: "bob".into(),
            subject: Some("lunch".into()),
            body: "Pizza or sushi today?".into(),
            kind: MessageType::Question,
            ..Default::default()
        })
        .await?;
    println!(
        "alice -> bob: question {} ({}, {} recipient)",
        question.id,
        delivery(question.status),
        question.recipients
    );

    // 6. Bob receives the push, and answers it with `reply_to` set to the question's id.
    let incoming: Message = tokio::time::timeout(Duration::from_secs(5), bob_pushes.recv())
        .await
        .map_err(|_| anyhow::anyhow!("bob got no push within 5 s"))??;
    println!(
        "bob got [{}] from {}: {:?}",
        incoming.kind, incoming.from, incoming.body
    );
    let answer = bob
        .send(SendRequest {
            to: incoming.from.clone(),
            body: "Sushi, definitely.".into(),
            kind: MessageType::Answer,
            reply_to: Some(incoming.id.clone()),
            ..Default::default()
        })
        .await?;
    println!(
        "bob -> alice: answer {} ({})",
        answer.id,
        delivery(answer.status)
    );
    // Bob has dealt with the question: mark it read in his inbox.
    bob.mark_read(vec![incoming.id], false).await?;

    // 7. Alice prints the whole thread. Any message id of the thread works; both messages
    //    share the question's `thread_id`.
    let thread = alice.thread(question.id.clone()).await?;
    println!(
        "thread {} ({} messages):",
        question.thread_id,
        thread.messages.len()
    );
    for m in &thread.messages {
        let reply = m
            .reply_to
            .as_deref()
            .map(|r| format!(" (reply to {r})"))
            .unwrap_or_default();
        println!(
            "  {} {} -> {} [{}]{}: {}",
            m.created_at, m.from, m.to, m.kind, reply, m.body
        );
    }

    // 8. Clean up: drop the clients (closing their sockets), then stop the node, which says
    //    goodbye to any session left, flushes the store and releases the data dir's lock.
    drop(alice);
    drop(bob);
    node.stop().await?;
    println!("node stopped");
    Ok(())
}

/// How far a send got, as the wire and the MCP tools spell it.
fn delivery(status: DeliveryStatus) -> &'static str {
    match status {
        // A session of the recipient confirmed it holds the message.
        DeliveryStatus::Delivered => "delivered",
        // Stored durably; the recipient will get it when it connects.
        DeliveryStatus::Queued => "queued",
        // Sent to a topic's subscribers.
        DeliveryStatus::Published => "published",
    }
}
