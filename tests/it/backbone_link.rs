//! A network link between a NATS client (or leaf node) and its server that the test controls,
//! and what a node does when its link drops with batches on their way to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backbone::{Nats, all_caught_up, all_hear_each_other, more_accepted};
use crate::chaos::{acked, check_exactly_once, numbered_sender_to};
use crate::common::*;

/// What a [`Link`] does with what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Forwards both ways.
    Up,
    /// Forwards towards the server; what the server sends is read and dropped, as bytes in
    /// flight are when a connection dies: the server has sent them, the client never gets them.
    Lossy,
    /// Drops every connection it carries and every new one.
    Cut,
}

/// A TCP forwarder from a free loopback port to `to`: a laptop's network, which a test cuts
/// while both ends keep running.
pub struct Link {
    pub port: u16,
    state: tokio::sync::watch::Sender<State>,
    /// Bytes from the server dropped while [`State::Lossy`].
    pub lost: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    pub async fn start(to: u16) -> Link {
        let port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let (state, rx) = tokio::sync::watch::channel(State::Up);
        let lost = Arc::new(AtomicU64::new(0));
        let dropped = lost.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *rx.borrow() == State::Cut {
                    continue;
                }
                let (rx, dropped) = (rx.clone(), dropped.clone());
                tokio::spawn(carry(inbound, to, rx, dropped));
            }
        });
        Link {
            port,
            state,
            lost,
            accept,
        }
    }

    pub fn set(&self, state: State) {
        self.state.send_replace(state);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One connection through the link, until either end closes it or the link is cut.
async fn carry(
    inbound: tokio::net::TcpStream,
    to: u16,
    mut state: tokio::sync::watch::Receiver<State>,
    lost: Arc<AtomicU64>,
) {
    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
        return;
    };
    let (mut client_in, mut client_out) = inbound.into_split();
    let (mut server_in, mut server_out) = outbound.into_split();
    let watch = state.clone();
    let towards_server = tokio::io::copy(&mut client_in, &mut server_out);
    let towards_client = async {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = server_in.read(&mut buf).await?;
            if n == 0 {
                return std::io::Result::Ok(());
            }
            if *watch.borrow() == State::Lossy {
                lost.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                client_out.write_all(&buf[..n]).await?;
            }
        }
    };
    tokio::select! {
        _ = towards_server => {}
        _ = towards_client => {}
        _ = state.wait_for(|s| *s == State::Cut) => {}
    }
}

/// Two nodes on one NATS server: n1 connected directly, n2 through a [`Link`]; both hear each
/// other, and the agent `sink` is known (offline) at n2, so sends to it answer `queued` at
/// once and batches come fast. Fields drop in order: nodes, link, server, data dirs.
struct Pair {
    n1: NodeProc,
    n2: NodeProc,
    link: Link,
    ports: [u16; 2],
    _nats: Nats,
    _dirs: [tempfile::TempDir; 2],
}

impl Pair {
    async fn start() -> Pair {
        let nats = Nats::start().await;
        let link = Link::start(nats.port).await;
        let dirs = [tempdir(), tempdir()];
        let ports = [free_port(), free_port()];
        let (direct, linked) = (nats.url(), format!("nats://127.0.0.1:{}", link.port));
        let n1 =
            NodeProc::start_named(dirs[0].path(), ports[0], "n1", &["--backbone", &direct]).await;
        let n2 =
            NodeProc::start_named(dirs[1].path(), ports[1], "n2", &["--backbone", &linked]).await;
        all_hear_each_other(&ports).await;
        n2.cli(&["agent", "add", "sink"]).await;
        Pair {
            n1,
            n2,
            link,
            ports,
            _nats: nats,
            _dirs: dirs,
        }
    }
}

/// A node whose connection to NATS dies while batches are on their way to it — the server
/// has sent them, the node never got them — reads them again, in order: nothing is skipped,
/// no gap is reported. Three times, under a stream of mail from another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_lost_in_flight_to_a_node_are_read_again_in_order() {
    let pair = Pair::start().await;
    let (n1, n2, link, ports) = (&pair.n1, &pair.n2, &pair.link, pair.ports);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = numbered_sender_to(n1, 0, "sink", stop.clone()).await;
    let connected = |up: bool| async move {
        let what = format!("n2 connected: {up}");
        eventually(30, &what, || async move {
            health(ports[1]).await["backbone"]["connected"] == up
        })
        .await;
    };
    for _ in 0..3 {
        more_accepted(ports[0], 100).await;
        // What the server sends n2 now is lost: at least a few batches (presence heartbeats
        // alone are far fewer bytes), then the connection dies.
        let before = link.lost.load(Ordering::Relaxed);
        link.set(State::Lossy);
        more_accepted(ports[0], 50).await;
        eventually(30, "batches lost on their way to n2", || async {
            link.lost.load(Ordering::Relaxed) > before + 4096
        })
        .await;
        link.set(State::Cut);
        connected(false).await;
        link.set(State::Up);
        connected(true).await;
    }
    more_accepted(ports[0], 100).await;
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.unwrap();
    all_caught_up(&ports).await;
    let h = health(ports[1]).await;
    assert_eq!(h["backbone"]["gaps"], serde_json::json!([]), "{h}");
    let total = check_exactly_once(&n2.client("sink").await, &[acked(&sent)]).await;
    assert_eq!(health(ports[1]).await["status"], "ok");
    eprintln!(
        "backbone: {total} messages exactly once across three connections that died with {} \
         bytes in flight",
        link.lost.load(Ordering::Relaxed)
    );
}

/// Mail lost on its way to a node whose connection then dies, with nothing sent after it,
/// arrives as soon as the connection is back: the node reads again from what it committed,
/// instead of waiting for the server to hand the lost batches out again (30 s after it sent
/// them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_lost_in_flight_with_nothing_after_it_arrives_once_the_link_is_back() {
    let pair = Pair::start().await;
    let (n1, n2, link, ports) = (&pair.n1, &pair.n2, &pair.link, pair.ports);
    all_caught_up(&ports).await;
    let stored_at_n2 = || async { health(ports[1]).await["store"]["messages"].as_u64() };
    assert_eq!(stored_at_n2().await, Some(0));

    link.set(State::Lossy);
    let alice = n1.client("alice").await;
    for i in 0..20 {
        alice
            .send(switchboard::protocol::SendRequest {
                to: "sink".into(),
                body: format!("lost {i}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The server has sent them all (nothing is pending for n2's consumer), into the void.
    eventually(30, "the batches sent towards n2", || async {
        let lost = link.lost.load(Ordering::Relaxed);
        lost > 2_000 && health(ports[1]).await["store"]["messages"] == 0
    })
    .await;
    link.set(State::Cut);
    eventually(30, "n2 disconnected", || async {
        health(ports[1]).await["backbone"]["connected"] == false
    })
    .await;
    link.set(State::Up);
    let back = std::time::Instant::now();
    // Well before the server's 30 s redelivery.
    eventually(15, "the lost mail at n2", || async {
        stored_at_n2().await == Some(20)
    })
    .await;
    eprintln!(
        "backbone: 20 messages lost in flight stored at n2 {} ms after the link came back",
        back.elapsed().as_millis()
    );
    check_exactly_once_plain(n2, 20).await;
}

/// The sink's inbox holds `n` messages, each once.
async fn check_exactly_once_plain(node: &NodeProc, n: usize) {
    let sink = node.client("sink").await;
    let inbox = sink
        .inbox(switchboard::protocol::InboxRequest {
            req: 0,
            unread_only: true,
            limit: 200,
            from: None,
            topic: None,
            mark_read: false,
        })
        .await
        .unwrap();
    let mut bodies: Vec<&str> = inbox.messages.iter().map(|m| m.body.as_str()).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), n, "{bodies:?}");
    assert_eq!(inbox.messages.len(), n);
}
