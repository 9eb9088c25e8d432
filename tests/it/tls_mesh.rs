//! A mesh of `--tls-self-signed` nodes over `wss://`: linked with no certificate copied,
//! delivering across nodes, presence converging, nothing acknowledged lost on kill -9.

use std::path::PathBuf;

use futures_util::StreamExt;
use switchboard::client::Client;
use switchboard::protocol::DeliveryStatus;
use switchboard::tls::ClientTls;

use crate::common::*;
use crate::mesh::{msg, online_at, secret_file, send_live, unread};
use crate::tls::{client, https_json};

/// Three nodes with `--tls-self-signed` certificates, linked over wss:// with no certificate
/// copied anywhere.
struct TlsMesh {
    dirs: Vec<tempfile::TempDir>,
    ports: Vec<u16>,
    nodes: Vec<Option<NodeProc>>,
    secret: PathBuf,
    _secret_dir: tempfile::TempDir,
}

impl TlsMesh {
    async fn start(n: usize) -> TlsMesh {
        let secret_dir = tempdir();
        let secret = secret_file(secret_dir.path(), &switchboard::auth::random_hex());
        let mut m = TlsMesh {
            dirs: (0..n).map(|_| tempdir()).collect(),
            ports: (0..n).map(|_| free_port()).collect(),
            nodes: Vec::new(),
            secret,
            _secret_dir: secret_dir,
        };
        for i in 0..n {
            let node = m.spawn(i).await;
            m.nodes.push(Some(node));
        }
        m.wait_linked().await;
        m
    }

    async fn spawn(&self, i: usize) -> NodeProc {
        let mut args = vec![
            "--send-rate".to_owned(),
            "0".to_owned(),
            "--tls-self-signed".to_owned(),
            "--mesh-secret-file".to_owned(),
            self.secret.display().to_string(),
        ];
        for p in &self.ports[..i] {
            args.push("--peer".into());
            args.push(format!("wss://127.0.0.1:{p}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = format!("n{}", i + 1);
        NodeProc::start_named(self.dirs[i].path(), self.ports[i], &id, &args).await
    }

    fn url(&self, i: usize) -> String {
        format!("wss://127.0.0.1:{}", self.ports[i])
    }

    /// What a client of node i's data dir trusts: that node's own certificate.
    fn tls(&self, i: usize) -> ClientTls {
        let cert = self.dirs[i].path().join("tls").join("cert.pem");
        ClientTls::agent(&[], vec![cert]).unwrap()
    }

    async fn client(&self, i: usize, agent: &str) -> Client {
        let secret = self.nodes[i].as_ref().unwrap().secret();
        client(&self.url(i), agent, &secret, &self.tls(i)).await
    }

    async fn wait_linked(&self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect();
        for &i in &running {
            let want = running.len() - 1;
            let (url, tls) = (self.url(i), self.tls(i));
            eventually(
                30,
                &format!("n{} linked to {want} peers over wss", i + 1),
                || {
                    let (url, tls) = (url.clone(), tls.clone());
                    async move {
                        let h = https_json(&url, "/health", &tls).await;
                        let mut up: Vec<&str> = h["peers"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|p| p["state"] == "up")
                            .filter_map(|p| p["node"].as_str())
                            .collect();
                        up.sort();
                        up.dedup();
                        up.len() >= want
                    }
                },
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_of_self_signed_nodes_over_wss_delivers_and_loses_nothing_on_kill_9() {
    let mut mesh = TlsMesh::start(3).await;
    // Every link is wss://, dialed or discovered.
    let h = https_json(&mesh.url(2), "/health", &mesh.tls(2)).await;
    assert_eq!(h["tls"]["self_signed"], true, "{h}");
    let urls: Vec<&str> = h["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["url"].as_str())
        .collect();
    assert!(
        !urls.is_empty() && urls.iter().all(|u| u.starts_with("wss://")),
        "{urls:?}"
    );

    // Delivery across nodes, and presence converging everywhere.
    let alice = mesh.client(0, "alice").await;
    let bob = mesh.client(2, "bob").await;
    send_live(&alice, &bob, "n3", "across the mesh over TLS").await;
    let watcher = mesh.client(1, "watcher").await;
    eventually(10, "bob online at n3, seen from n2", || async {
        online_at(&watcher, "bob").await.as_deref() == Some("n3")
    })
    .await;
    drop(bob);
    eventually(20, "bob offline, seen from n1", || async {
        online_at(&alice, "bob").await.is_none()
    })
    .await;

    // kill -9 of the sending node mid-stream: every acknowledged message reaches the sink's
    // node once the killed node is back.
    drop(mesh.client(2, "sink").await);
    let sender = std::sync::Arc::new(mesh.client(1, "sender").await);
    eventually(10, "the sink known at n2", || async {
        sender
            .presence(Some("sink".into()))
            .await
            .is_ok_and(|p| !p.agents.is_empty())
    })
    .await;
    const SENDS: u32 = 50_000;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u32, String)>::new()));
    let sending = {
        let (sender, acked) = (sender.clone(), acked.clone());
        tokio::spawn(async move {
            let mut inflight = futures_util::stream::FuturesOrdered::new();
            for i in 0..SENDS {
                let c = sender.clone();
                inflight.push_back(async move { (i, c.send(msg("sink", &format!("m{i}"))).await) });
                if inflight.len() >= 16 {
                    match inflight.next().await {
                        Some((i, Ok(r))) => acked.lock().unwrap().push((i, r.id)),
                        _ => return,
                    }
                }
            }
        })
    };
    eventually(30, "300 sends acknowledged", || async {
        acked.lock().unwrap().len() >= 300
    })
    .await;
    mesh.nodes[1].take().unwrap().kill9().await;
    let _ = sending.await;
    drop(sender);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() < SENDS as usize, "killed mid-stream");
    eprintln!("killed n2 after {} acknowledged sends", acked.len());
    mesh.nodes[1] = Some(mesh.spawn(1).await);
    mesh.wait_linked().await;
    let sink = mesh.client(2, "sink").await;
    let got = std::sync::Mutex::new(std::collections::HashSet::new());
    poll(
        30,
        "every acknowledged message at the sink's node",
        || async {
            let page = sink.inbox(unread(200)).await.ok()?.messages;
            if !page.is_empty() {
                let ids: Vec<String> = page.iter().map(|m| m.id.clone()).collect();
                sink.mark_read(ids.clone(), false).await.ok()?;
                got.lock().unwrap().extend(ids);
                return None;
            }
            let got = got.lock().unwrap();
            acked.iter().all(|(_, id)| got.contains(id)).then_some(())
        },
    )
    .await;
    let r = alice.send(msg("sink", "after the restart")).await.unwrap();
    assert!(matches!(
        r.status,
        DeliveryStatus::Delivered | DeliveryStatus::Queued
    ));
}
