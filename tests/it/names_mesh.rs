//! Names are one name in any case across the mesh too: two nodes that made `Bob` and `bob`
//! before they were linked end with one agent each, whose one inbox has all the mail.

use std::collections::HashMap;

use serde_json::Value;
use switchboard::client::{Client, ClientOptions};
use switchboard::protocol::InboxRequest;

use crate::common::*;
use crate::mesh::secret_file;

/// The agents of `who --json` at `node` whose name is bob in any case.
async fn bobs(node: &NodeProc) -> Vec<String> {
    let who: Value = serde_json::from_str(&node.cli(&["who", "--json"]).await).unwrap();
    who["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .filter(|n| n.eq_ignore_ascii_case("bob"))
        .map(str::to_owned)
        .collect()
}

/// Every message in bob's inbox at `node` (read or not), by body → how many times.
async fn bobs_mail(bob: &Client) -> HashMap<String, usize> {
    let all = InboxRequest {
        unread_only: false,
        ..InboxRequest::unread(200)
    };
    let mut count = HashMap::new();
    for m in bob.inbox(all).await.map(|r| r.messages).unwrap_or_default() {
        *count.entry(m.body).or_default() += 1;
    }
    count
}

#[tokio::test]
async fn bob_and_bob_made_apart_are_one_agent_with_one_inbox_once_linked() {
    let secret_dir = tempdir();
    let secret = secret_file(secret_dir.path(), "correct horse battery staple");
    let secret = secret.display().to_string();
    let (d1, d2) = (tempdir(), tempdir());
    let (p1, p2) = (free_port(), free_port());
    let alone = ["--mesh-secret-file", secret.as_str()];
    let n1 = NodeProc::start_named(d1.path(), p1, "n1", &alone).await;
    let n2 = NodeProc::start_named(d2.path(), p2, "n2", &alone).await;

    // Apart: n1 knows Bob, n2 knows bob; each gets mail under both spellings, and a token.
    n1.cli(&["agent", "add", "Bob"]).await;
    n2.cli(&["agent", "add", "bob"]).await;
    let mut bodies = Vec::new();
    for (node, sender) in [(&n1, "alice"), (&n2, "carol")] {
        for to in ["Bob", "bob"] {
            let body = format!("{sender} to {to}");
            node.cli(&["send", "--as", sender, "--to", to, &body]).await;
            bodies.push(body);
        }
    }
    let token = n1.cli(&["token", "issue", "Bob"]).await.trim().to_owned();
    assert_eq!(bobs(&n1).await, ["Bob"]);
    assert_eq!(bobs(&n2).await, ["bob"]);

    // Linked: n2 restarts with n1 as its peer.
    n2.terminate().await;
    let peer = format!("ws://127.0.0.1:{p1}");
    let linked = [
        "--mesh-secret-file",
        secret.as_str(),
        "--peer",
        peer.as_str(),
    ];
    let n2 = NodeProc::start_named(d2.path(), p2, "n2", &linked).await;

    // Every node: one agent, spelled as that node first wrote it, with all four messages once.
    for (node, spelling) in [(&n1, "Bob"), (&n2, "bob")] {
        let bob = node.client("BOB").await;
        assert_eq!(bob.welcomed_as(), spelling);
        let mail = poll(30, "all four messages in bob's one inbox", || async {
            let m = bobs_mail(&bob).await;
            (m.len() >= bodies.len()).then_some(m)
        })
        .await;
        for b in &bodies {
            assert_eq!(mail.get(b), Some(&1), "{b:?} exactly once: {mail:?}");
        }
        assert_eq!(mail.len(), bodies.len(), "{mail:?}");
        assert_eq!(bobs(node).await, [spelling], "one agent");
    }
    // The token issued to Bob at n1 is bob's at n2, the one token of the one agent.
    let tokens = poll(20, "the token replicated to n2", || async {
        let list = n2.cli(&["token", "list", "--json"]).await;
        let names: Vec<String> = serde_json::from_str(&list).unwrap();
        (!names.is_empty()).then_some(names)
    })
    .await;
    assert_eq!(tokens, ["bob"]);
    let mut o = ClientOptions::new(n2.url(), "BOB", token);
    o.reconnect = false;
    let by_token = Client::connect(o).await.unwrap();
    assert_eq!(by_token.welcomed_as(), "bob");
    drop(by_token);
    n2.terminate().await;
    n1.terminate().await;
}
