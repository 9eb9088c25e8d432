//! Wake-ups for clients without push (issue 11): `switchboard wait`, and the README's Stop-hook
//! recipes run exactly as written against a real node.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::protocol::SendRequest;

use crate::common::*;
use crate::first_minutes::shell;

fn wait_cmd(node: &NodeProc, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.arg("--data-dir")
        .arg(&node.dir)
        .args(["--node", &node.url(), "wait"])
        .args(args)
        .env("SWITCHBOARD_LOG", "warn")
        .kill_on_drop(true);
    c
}

async fn send(node: &NodeProc, to: &str, subject: &str) {
    let alice = node.client("alice").await;
    alice
        .send(SendRequest {
            to: to.into(),
            body: "can you review?".into(),
            subject: Some(subject.into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn agent_add(node: &NodeProc, name: &str) {
    let o = output(
        tokio::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(&node.dir)
            .args(["--node", &node.url(), "agent", "add", name]),
    )
    .await;
    assert!(o.status.success(), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_when_mail_arrives_and_changes_nothing() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    agent_add(&node, "bob").await;
    let child = wait_cmd(&node, &["--as", "bob", "--timeout", "60s", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It found nothing and follows pushes: its one-shot and its watcher connections are open
    // (and nobody else's).
    eventually(20, "wait to follow pushes", || async {
        metric(node.port, "connections_active").await == 2
    })
    .await;
    let t = Instant::now();
    send(&node, "bob", "PR 7").await;
    let o = finish(child).await;
    eprintln!("send → wait returned: {:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["agent"], "bob");
    assert_eq!(v["unread"], 1);
    assert_eq!(v["from"]["alice"], 1);
    assert_eq!(v["messages"][0]["subject"], "PR 7");
    assert_eq!(v["timed_out"], false);

    // With mail waiting it returns at once, and still nothing is read or delivered.
    let o = output(&mut wait_cmd(&node, &["--as", "bob", "--timeout", "0"])).await;
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.starts_with("1 unread switchboard message(s) for bob: 1 from alice.")
            && text.contains("get_inbox")
            && text.contains("from alice: PR 7"),
        "{text}"
    );
    let bob = node
        .client_opts("bob", |o| o.role = switchboard::protocol::Role::Cli)
        .await;
    let r = bob
        .inbox(switchboard::protocol::InboxRequest::unread(10))
        .await
        .unwrap();
    assert_eq!(r.messages.len(), 1);
    assert!(!r.messages[0].read);
    let p = bob.presence(Some("bob".into())).await.unwrap();
    assert!(!p.agents[0].online, "a waiting `wait` is not presence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_with_exit_3_and_refuses_unknown_agents() {
    let dir = tempdir();
    let node = NodeProc::start(dir.path(), &[]).await;
    agent_add(&node, "carol").await;
    let t = Instant::now();
    let o = output(&mut wait_cmd(
        &node,
        &["--as", "carol", "--timeout", "1s", "--json"],
    ))
    .await;
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["timed_out"].clone(), v["unread"].clone()),
        (Value::Bool(true), 0.into())
    );

    let o = output(&mut wait_cmd(&node, &["--as", "carl", "--timeout", "1s"])).await;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown agent 'carl'") && err.contains("did you mean 'carol'"),
        "{err}"
    );
    let c = node.client("x").await;
    let known = c.presence(None).await.unwrap();
    assert!(
        known.agents.iter().all(|a| a.name != "carl"),
        "a typo made no agent"
    );

    let o = output(&mut wait_cmd(
        &node,
        &["--as", "carol", "--timeout", "soon"],
    ))
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("'soon' is not a duration"));
}

/// The command of a README recipe: the fenced block after `<!-- recipe: NAME -->`.
fn recipe(name: &str) -> String {
    let readme = include_str!("../../README.md");
    let marker = format!("<!-- recipe: {name} -->\n");
    let after = readme.split(&marker).nth(1).expect("a recipe marker");
    let (lang, rest) = after
        .strip_prefix("```")
        .and_then(|b| b.split_once('\n'))
        .expect("a fenced block right after the marker");
    let block = rest.split("```").next().unwrap();
    match lang {
        "json" => {
            let v: Value = serde_json::from_str(block).unwrap();
            v["hooks"]["Stop"][0]["hooks"][0]["command"]
                .as_str()
                .unwrap()
                .to_owned()
        }
        "toml" => {
            let v: toml::Value = toml::from_str(block).unwrap();
            let hook = &v["hooks"][0];
            assert_eq!(hook["event"].as_str(), Some("Stop"));
            hook["command"].as_str().unwrap().to_owned()
        }
        other => panic!("recipe {name}: a {other} block"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_stop_hook_recipes_work_as_written() {
    let (dir, port) = data_dir_on_free_port();
    let node = NodeProc::start_on(dir.path(), port, &[]).await;
    agent_add(&node, "alice").await;
    // The agent's name is its working directory's.
    let work = tempdir();
    let cwd = work.path().join("alice");
    std::fs::create_dir(&cwd).unwrap();
    let run = |command: String| {
        let mut c = shell(dir.path(), &command);
        c.current_dir(&cwd);
        async move { output(&mut c).await }
    };
    let recipes = ["claude-code", "codex", "kimi"].map(|r| (r, recipe(r)));
    for (name, command) in &recipes {
        assert!(
            command.starts_with("switchboard wait --as"),
            "{name}: {command}"
        );
        // No mail: the stop goes through.
        let o = run(command.clone()).await;
        assert_eq!(o.status.code(), Some(0), "{name} without mail: {o:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.trim().is_empty() || out.trim() == "{}", "{name}: {out}");
    }
    send(&node, "alice", "PR 7").await;
    for (name, command) in &recipes {
        let o = run(command.clone()).await;
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        let reason = if *name == "codex" {
            assert_eq!(o.status.code(), Some(0), "{name}: {o:?}");
            let v: Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(v["decision"], "block", "{out}");
            v["reason"].as_str().unwrap().to_owned()
        } else {
            assert_eq!(o.status.code(), Some(2), "{name} blocks the stop: {o:?}");
            assert!(out.is_empty(), "{name}: {out}");
            err.into_owned()
        };
        assert!(
            reason.starts_with("1 unread switchboard message(s) for alice: 1 from alice.")
                && reason.contains("get_inbox"),
            "{name}: {reason}"
        );
    }
}
