//! A node that ran for a while without a mesh (no log written) and is meshed later brings its
//! peers everything it did meanwhile, exactly once — even when the un-meshed run went under
//! another node id, as it does when a `switchboard` command hosts the node with the data dir's
//! config.toml (default id: the host name) while the operator gives `--node-id` and
//! `--mesh-secret-file` only on the `switchboard node` command line.

use std::collections::HashMap;

use switchboard::protocol::InboxRequest;

use crate::common::*;
use crate::mesh::secret_file;

#[tokio::test]
async fn a_node_meshed_after_an_unmeshed_run_under_another_id_ships_everything_once() {
    let (dir, port) = data_dir_on_free_port();
    let secret_dir = tempdir();
    let secret = secret_file(secret_dir.path(), "correct horse battery staple");
    let secret = secret.display().to_string();
    let meshed = ["--mesh-secret-file", secret.as_str()];

    // Meshed, alone for now: these are logged as they happen.
    let n1 = NodeProc::start_named(dir.path(), port, "n1", &meshed).await;
    run_ok(dir.path(), &["agent", "add", "bob"]).await;
    let mut bodies = Vec::new();
    for i in 0..3 {
        let body = format!("meshed {i}");
        run_ok(dir.path(), &["send", "--as", "alice", "--to", "bob", &body]).await;
        bodies.push(body);
    }
    n1.terminate().await;

    // No node runs: each command hosts it from config.toml alone — the host name as node id,
    // no mesh secret, so nothing is logged.
    for i in 0..3 {
        let body = format!("unmeshed {i}");
        run_ok(dir.path(), &["send", "--as", "alice", "--to", "bob", &body]).await;
        bodies.push(body);
    }
    let read = run_ok(dir.path(), &["inbox", "--as", "bob"]).await;
    assert!(read.contains("unmeshed 2"), "{read}");
    for i in 3..5 {
        let body = format!("unmeshed {i}");
        run_ok(dir.path(), &["send", "--as", "carol", "--to", "bob", &body]).await;
        bodies.push(body);
    }

    // Meshed again as n1, and linked to n2 for the first time.
    let n1 = NodeProc::start_named(dir.path(), port, "n1", &meshed).await;
    let dir2 = tempdir();
    let peer = n1.url();
    let with_peer = [
        "--mesh-secret-file",
        secret.as_str(),
        "--peer",
        peer.as_str(),
    ];
    let n2 = NodeProc::start_named(dir2.path(), free_port(), "n2", &with_peer).await;
    let bob = n2.client("bob").await;
    let all = InboxRequest {
        unread_only: false,
        ..InboxRequest::unread(200)
    };
    let mail = poll(30, "all 8 messages in bob's inbox at n2", || async {
        let r = bob.inbox(all.clone()).await.ok()?;
        (r.messages.len() >= bodies.len()).then_some(r.messages)
    })
    .await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in &mail {
        *count.entry(m.body.as_str()).or_default() += 1;
    }
    for b in &bodies {
        assert_eq!(
            count.get(b.as_str()),
            Some(&1),
            "{b:?} exactly once: {count:?}"
        );
    }
    assert_eq!(mail.len(), bodies.len(), "nothing else: {count:?}");
    // The read marks made meanwhile came too: what bob read un-meshed is read at n2.
    eventually(10, "the un-meshed read marks at n2", || async {
        let Ok(r) = bob.inbox(all.clone()).await else {
            return false;
        };
        let unread_left = ["unmeshed 3", "unmeshed 4"];
        r.messages
            .iter()
            .all(|m| m.read != unread_left.contains(&m.body.as_str()))
    })
    .await;
    drop(bob);
    n2.terminate().await;
    n1.terminate().await;
}
