//! The backbone's own security: `tls://` to a `nats-server` serving a certificate made here, and
//! `--backbone-creds` against a server in operator mode with JWTs signed here. A node that
//! cannot verify the server, or that the server refuses, says why in `/health` and keeps
//! serving its own agents.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::backbone::{JS_LIMITS, Nats};
use crate::common::*;
use crate::mesh::{msg, unread};
use crate::tls::pki;

/// A node named `id` on the backbone at `url`, with `extra` flags.
async fn node(dir: &Path, id: &str, url: &str, extra: &[&str]) -> NodeProc {
    let mut args = vec!["--backbone", url];
    args.extend_from_slice(extra);
    NodeProc::start_named(dir, free_port(), id, &args).await
}

/// Mail from alice at n1 reaches bob at n2 over the backbone.
async fn mail_crosses(n1: &NodeProc, n2: &NodeProc) {
    let alice = n1.client("alice").await;
    let bob = n2.client("bob").await;
    eventually(20, "bob (at n2) known at n1", || async {
        alice.send(msg("bob", "x")).await.is_ok()
    })
    .await;
    let got = poll(20, "alice's mail in bob's inbox", || async {
        let inbox = bob.inbox(unread(10)).await.ok()?;
        (!inbox.messages.is_empty()).then_some(inbox.messages)
    })
    .await;
    assert_eq!(got[0].body, "x");
}

/// `/health` of a node that cannot reach the backbone: degraded, and the reason names `what`.
async fn refused_for(node: &NodeProc, what: &str) -> Value {
    poll(
        20,
        &format!("/health degraded with a reason naming {what}"),
        || async {
            let h = health(node.port).await;
            let reasons = h["reasons"].to_string();
            (h["status"] == "degraded" && reasons.contains(what)).then_some(h)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_backbone_carries_mail_and_an_unverified_server_is_refused_with_a_reason() {
    let pki = pki(&["127.0.0.1"], false);
    let nats = Nats::start_with(vec![
        "--tls".into(),
        "--tlscert".into(),
        pki.cert.display().to_string(),
        "--tlskey".into(),
        pki.key.display().to_string(),
    ])
    .await;
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let ca = pki.ca.display().to_string();
    let (d1, d2, d3) = (tempdir(), tempdir(), tempdir());
    let n1 = node(d1.path(), "n1", &url, &["--tls-ca", &ca]).await;
    let n2 = node(d2.path(), "n2", &url, &["--tls-ca", &ca]).await;
    mail_crosses(&n1, &n2).await;
    assert_eq!(health(n1.port).await["backbone"]["connected"], true);

    // A node that does not trust the test CA never connects, and says why.
    let n3 = node(d3.path(), "n3", &url, &[]).await;
    let h = refused_for(&n3, "certificate").await;
    assert_eq!(h["backbone"]["connected"], false);
    assert!(
        h["backbone"]["connect_error"]
            .as_str()
            .is_some_and(|e| e.contains("--tls-ca")),
        "{h}"
    );
    // It still serves its own agents.
    let carol = n3.client("carol").await;
    let dave = n3.client("dave").await;
    carol.send(msg("dave", "local")).await.unwrap();
    eventually(10, "dave's local mail", || async {
        dave.inbox(unread(10))
            .await
            .is_ok_and(|i| i.messages.len() == 1)
    })
    .await;
}

/// An operator, its system account and one account with JetStream, as nats-server's operator
/// mode wants them, with the keys that sign users.
pub struct Operator {
    pub jwt: String,
    pub system: (nkeys::KeyPair, String),
    pub account: (nkeys::KeyPair, String),
}

impl Operator {
    /// The lines of a server config that put it in operator mode with these accounts.
    pub fn config(&self) -> String {
        format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: {}\n  {}: {}\n}}\n",
            self.jwt,
            self.system.0.public_key(),
            self.system.0.public_key(),
            self.system.1,
            self.account.0.public_key(),
            self.account.1,
        )
    }
}

fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": format!("{subject}{iat}"),
        "iat": iat,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let sig = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{sig}")
}

/// An account's JWT; only `jetstream` accounts may store (the system account may not).
fn account_jwt(op: &nkeys::KeyPair, acct: &nkeys::KeyPair, name: &str, jetstream: bool) -> String {
    let js = if jetstream { -1 } else { 0 };
    let limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js
    });
    let nats = json!({"limits": limits, "type": "account", "version": 2});
    jwt(op, &acct.public_key(), name, nats)
}

pub fn operator() -> Operator {
    let op = nkeys::KeyPair::new_operator();
    let sys = nkeys::KeyPair::new_account();
    let acct = nkeys::KeyPair::new_account();
    let op_jwt = jwt(
        &op,
        &op.public_key(),
        "test-operator",
        json!({"type": "operator", "version": 2}),
    );
    let sys_jwt = account_jwt(&op, &sys, "SYS", false);
    let acct_jwt = account_jwt(&op, &acct, "switchboard", true);
    Operator {
        jwt: op_jwt,
        system: (sys, sys_jwt),
        account: (acct, acct_jwt),
    }
}

/// A `.creds` file for a user of `account`, as `nsc` writes them.
pub fn creds(dir: &Path, file: &str, account: &nkeys::KeyPair) -> PathBuf {
    let user = nkeys::KeyPair::new_user();
    let nats = json!({
        "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
        "type": "user", "version": 2
    });
    let token = jwt(account, &user.public_key(), "node", nats);
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backbone_creds_sign_in_to_an_operator_mode_server_and_foreign_creds_are_refused() {
    let op = operator();
    let keys = tempdir();
    let conf = keys.path().join("nats.conf");
    std::fs::write(&conf, format!("{JS_LIMITS}{}", op.config())).unwrap();
    let nats = Nats::start_with(vec!["-c".into(), conf.display().to_string()]).await;
    let url = nats.url();
    let good = |f| creds(keys.path(), f, &op.account.0).display().to_string();
    let (c1, c2) = (good("n1.creds"), good("n2.creds"));
    let (d1, d2, d3) = (tempdir(), tempdir(), tempdir());
    let n1 = node(d1.path(), "n1", &url, &["--backbone-creds", &c1]).await;
    let n2 = node(d2.path(), "n2", &url, &["--backbone-creds", &c2]).await;
    mail_crosses(&n1, &n2).await;

    // A user signed by an account this server does not know.
    let stranger = nkeys::KeyPair::new_account();
    let bad = creds(keys.path(), "stranger.creds", &stranger)
        .display()
        .to_string();
    let n3 = node(d3.path(), "n3", &url, &["--backbone-creds", &bad]).await;
    let h = refused_for(&n3, "credentials").await;
    assert_eq!(h["backbone"]["connected"], false, "{h}");

    // No credentials at all: refused too.
    let d4 = tempdir();
    let n4 = node(d4.path(), "n4", &url, &[]).await;
    refused_for(&n4, "authorization").await;
}
