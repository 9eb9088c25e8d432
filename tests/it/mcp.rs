//! `switchboard mcp` driven by rmcp's client over a child process's stdio.
#![allow(deprecated)] // client.subscribe() is the 2025-11-25 path, deprecated in rmcp 3.x

use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion, ReadResourceRequestParams, ResourceContents, ResourceUpdatedNotificationParam,
    ServerNotification, SubscribeRequestParams, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::common::*;

#[derive(Clone)]
pub struct TestClient {
    updates: mpsc::UnboundedSender<String>,
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("switchboard-tests", "0"),
        )
    }
    async fn on_resource_updated(
        &self,
        p: ResourceUpdatedNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        let _ = self.updates.send(p.uri);
    }
}

pub type Mcp = RunningService<RoleClient, TestClient>;

fn command(dir: &std::path::Path, agent: &str, node: Option<&str>) -> tokio::process::Command {
    let dir = dir.to_owned();
    let agent = agent.to_owned();
    let node = node.map(str::to_owned);
    tokio::process::Command::new(BIN).configure(move |c| {
        c.arg("--data-dir")
            .arg(&dir)
            .args(["mcp", "--agent", &agent]);
        if let Some(n) = &node {
            c.args(["--node", n]);
        }
        c.env("SWITCHBOARD_LOG", "warn")
            .env_remove("SWITCHBOARD_NODE");
    })
}

/// Spawns `switchboard mcp` and connects rmcp's client (protocol 2025-11-25).
pub async fn spawn(
    dir: &std::path::Path,
    agent: &str,
    node: Option<&str>,
) -> (Mcp, mpsc::UnboundedReceiver<String>) {
    spawn_command(command(dir, agent, node)).await
}

/// Runs this `switchboard mcp` command and connects rmcp's client (protocol 2025-11-25).
pub async fn spawn_command(cmd: tokio::process::Command) -> (Mcp, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let transport = TokioChildProcess::new(cmd).unwrap();
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        TestClient { updates: tx }.serve(transport),
    )
    .await
    .expect("the MCP server did not initialize within 20 s")
    .unwrap();
    (client, rx)
}

pub async fn call(c: &Mcp, tool: &str, args: Value) -> CallToolResult {
    // The longest tool call a test makes is a 300 s-capped wait it sets far lower; 30 s is
    // what no call here may take.
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        c.call_tool(
            CallToolRequestParams::new(tool.to_owned())
                .with_arguments(args.as_object().unwrap().clone()),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{tool} did not answer within 30 s"))
    .unwrap()
}

pub async fn ok(c: &Mcp, tool: &str, args: Value) -> Value {
    let r = call(c, tool, args.clone()).await;
    assert_ne!(
        r.is_error,
        Some(true),
        "{tool} {args} failed: {:?}",
        r.content
    );
    let s = r
        .structured_content
        .clone()
        .expect("structuredContent on success");
    assert!(!r.content.is_empty(), "a text rendering too");
    s
}

/// The text content of a tool result.
pub fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

fn error_text(r: &CallToolResult) -> String {
    assert_eq!(r.is_error, Some(true), "expected an error: {r:?}");
    text(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_works_through_a_real_mcp_client() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let (alice, _) = spawn(dir.path(), "alice", Some(&node.url())).await;
    let (bob, _) = spawn(dir.path(), "bob", Some(&node.url())).await;

    let info = alice.peer_info().unwrap();
    assert!(
        info.instructions
            .as_deref()
            .unwrap()
            .contains("You are agent 'alice'")
    );
    let tools = alice.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "get_inbox",
            "get_thread",
            "mark_read",
            "presence",
            "search_messages",
            "send_message",
            "set_status",
            "subscribe",
            "unsubscribe",
            "wait_for_messages"
        ]
    );
    assert!(
        tools.iter().all(|t| t.output_schema.is_some()),
        "every tool has an output schema"
    );
    let size = serde_json::to_string(&json!({"tools": tools}))
        .unwrap()
        .len();
    assert!(size <= 8192, "tools/list is {size} bytes");

    // bob is online: a send to him is delivered.
    let sent = ok(&alice, "send_message", json!({"to":"bob","body":"review PR 7?","type":"question","priority":"high","subject":"PR 7","data":{"pr":7}})).await;
    assert_eq!(sent["status"], "delivered");
    assert_eq!(sent["recipients"], 1);
    let qid = sent["id"].as_str().unwrap().to_owned();

    // Peek, then read.
    let peek = ok(&bob, "get_inbox", json!({"mark_read": false})).await;
    assert_eq!(peek["messages"][0]["from"], "alice");
    assert_eq!(peek["messages"][0]["type"], "question");
    assert_eq!(peek["messages"][0]["data"]["pr"], 7);
    let read = ok(&bob, "get_inbox", json!({})).await;
    assert_eq!(read["messages"].as_array().unwrap().len(), 1);
    let again = ok(&bob, "get_inbox", json!({})).await;
    assert!(again["messages"].as_array().unwrap().is_empty());

    // wait_for_messages returns when the reply arrives.
    let waiter = {
        let peer = alice.peer().clone();
        tokio::spawn(async move {
            peer.call_tool(
                CallToolRequestParams::new("wait_for_messages").with_arguments(
                    json!({"timeout_seconds": 30, "from": "bob"})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
            )
            .await
            .unwrap()
        })
    };
    let reply = ok(
        &bob,
        "send_message",
        json!({"to":"alice","body":"LGTM","type":"answer","reply_to":qid}),
    )
    .await;
    assert_eq!(reply["thread_id"], qid.as_str());
    let got = waiter.await.unwrap().structured_content.unwrap();
    assert_eq!(got["timed_out"], false);
    assert_eq!(got["messages"][0]["body"], "LGTM");
    let timed = ok(&alice, "wait_for_messages", json!({"timeout_seconds": 0})).await;
    assert_eq!(
        timed["timed_out"], true,
        "the reply was marked read by the wait"
    );

    let thread = ok(&alice, "get_thread", json!({"id": reply["id"]})).await;
    let bodies: Vec<&str> = thread["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["review PR 7?", "LGTM"]);

    let found = ok(&bob, "search_messages", json!({"query": "review"})).await;
    assert_eq!(found["messages"][0]["id"], qid.as_str());

    let st = ok(
        &bob,
        "set_status",
        json!({"status":"busy","text":"reviewing"}),
    )
    .await;
    assert_eq!(st["status"], "busy");
    let p = ok(&alice, "presence", json!({"agent":"bob"})).await;
    assert_eq!(p["agents"][0]["online"], true);
    assert_eq!(p["agents"][0]["status_text"], "reviewing");
    assert_eq!(p["agents"][0]["node"], "test-node");

    let t = ok(&bob, "subscribe", json!({"topic":"#deploys"})).await;
    assert_eq!(t["topics"], json!(["deploys"]));
    let pubd = ok(
        &alice,
        "send_message",
        json!({"to":"#deploys","body":"v1.2 is out"}),
    )
    .await;
    assert_eq!(pubd["status"], "published");
    let topical = ok(
        &bob,
        "get_inbox",
        json!({"topic":"deploys","mark_read":false}),
    )
    .await;
    assert_eq!(topical["messages"][0]["topic"], "deploys");
    let marked = ok(&bob, "mark_read", json!({"all": true})).await;
    assert_eq!(marked["marked"], 1);
    let t = ok(&bob, "unsubscribe", json!({"topic":"deploys"})).await;
    assert_eq!(t["topics"], json!([]));

    // Errors: unknown recipient with a suggestion; bad arguments named.
    let e = error_text(&call(&alice, "send_message", json!({"to":"bbo","body":"x"})).await);
    assert!(
        e.contains("unknown agent 'bbo'") && e.contains("did you mean 'bob'"),
        "{e}"
    );
    let e = error_text(&call(&alice, "get_inbox", json!({"limit": 500})).await);
    assert!(e.contains("limit"), "{e}");
    let e = error_text(&call(&alice, "wait_for_messages", json!({"timeout_seconds": 301})).await);
    assert!(e.contains("timeout_seconds"), "{e}");
    let e = error_text(
        &call(
            &alice,
            "send_message",
            json!({"to":"bob","body":"x","priority":"asap"}),
        )
        .await,
    );
    assert!(e.contains("asap") || e.contains("priority"), "{e}");
    let e = error_text(
        &call(
            &alice,
            "send_message",
            json!({"to":"bob","body":"x","from":"boss"}),
        )
        .await,
    );
    assert!(e.contains("from"), "spoofing `from` is refused: {e}");
    let e = error_text(&call(&alice, "mark_read", json!({})).await);
    assert!(e.contains("ids"), "{e}");

    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_resource_updates_reach_2025_and_2026_clients() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    let sender = node.client("carol").await;

    // 2025-11-25: resources/subscribe + notifications/resources/updated.
    let (bob, mut updates) = spawn(dir.path(), "bob", Some(&node.url())).await;
    bob.subscribe(SubscribeRequestParams::new("inbox://bob"))
        .await
        .unwrap();
    sender
        .send(switchboard::protocol::SendRequest {
            to: "bob".into(),
            body: "ping".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let uri = tokio::time::timeout(Duration::from_secs(10), updates.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(uri, "inbox://bob");
    let r = bob
        .read_resource(ReadResourceRequestParams::new("inbox://bob"))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &r.contents[0] else {
        panic!()
    };
    assert!(text.starts_with("1 unread message(s) for bob"), "{text}");
    bob.cancel().await.unwrap();

    // 2026-07-28: subscriptions/listen.
    let (tx, _rx) = mpsc::unbounded_channel();
    let transport = TokioChildProcess::new(command(dir.path(), "dave", Some(&node.url()))).unwrap();
    let dave = TestClient { updates: tx }
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap();
    let mut sub = dave
        .listen(
            SubscriptionFilter::builder()
                .resource_subscription("inbox://dave")
                .build(),
        )
        .await
        .unwrap();
    // The catch-up update comes first; then one per arriving message.
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        first,
        Some(ServerNotification::ResourceUpdatedNotification(_))
    ));
    sender
        .send(switchboard::protocol::SendRequest {
            to: "dave".into(),
            body: "ping".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(ServerNotification::ResourceUpdatedNotification(u)) => {
            assert_eq!(u.params.uri, "inbox://dave")
        }
        other => panic!("{other:?}"),
    }
    let got = ok(&dave, "get_inbox", json!({})).await;
    assert_eq!(got["messages"][0]["body"], "ping");
    sub.cancel().await.unwrap();
    dave.cancel().await.unwrap();
}
