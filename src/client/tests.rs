//! Reconnect and re-send against a real loopback WebSocket server that plays the node.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Client, ClientOptions};
use crate::error::Error;
use crate::protocol::*;

/// Every wait in these tests ends by then.
const DEADLINE: Duration = Duration::from_secs(5);

type Server = WebSocketStream<TcpStream>;

/// How the fake node treats each connection, in order.
#[derive(Clone, Copy)]
enum Turn {
    /// Welcome, take one request, then drop the connection without answering.
    DropAfterRequest,
    /// Welcome, then answer every send.
    Answer,
    /// Refuse the hello as unauthorized.
    Refuse,
    /// Welcome, then refuse the first request as too large (no `req`) and close, as a node
    /// whose limit is below what its welcome said would.
    TooLarge,
}

/// What the fake node saw: each connection's request frames, as parsed JSON.
#[derive(Debug)]
enum Seen {
    Hello,
    Request(serde_json::Value),
}

async fn frame(ws: &mut Server) -> Option<String> {
    while let Some(Ok(m)) = ws.next().await {
        if let WsMessage::Text(t) = m {
            return Some(t.to_string());
        }
    }
    None
}

async fn say(ws: &mut Server, f: &ServerFrame) {
    let text = serde_json::to_string(f).unwrap_or_default();
    let _ = ws.send(WsMessage::Text(text.into())).await;
}

/// Serves `turns`, one per accepted connection, reporting what it saw on `seen`.
async fn fake_node(turns: Vec<Turn>) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (seen, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for turn in turns {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            if frame(&mut ws).await.is_none() {
                continue;
            }
            let _ = seen.send(Seen::Hello);
            if let Turn::Refuse = turn {
                let refusal = ErrorFrame {
                    req: None,
                    code: ErrorCode::Unauthorized,
                    message: "bad token".into(),
                };
                say(&mut ws, &ServerFrame::Error(refusal)).await;
                continue;
            }
            let welcome = Welcome {
                agent: "a".into(),
                node: "fake".into(),
                v: PROTOCOL_VERSION,
                max_frame_bytes: 1 << 20,
            };
            say(&mut ws, &ServerFrame::Welcome(welcome)).await;
            while let Some(text) = frame(&mut ws).await {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let _ = seen.send(Seen::Request(v.clone()));
                if let Turn::DropAfterRequest = turn {
                    break;
                }
                if let Turn::TooLarge = turn {
                    let refusal = ErrorFrame {
                        req: None,
                        code: ErrorCode::FrameTooLarge,
                        message: "frame too large".into(),
                    };
                    say(&mut ws, &ServerFrame::Error(refusal)).await;
                    let _ = ws.close(None).await;
                    break;
                }
                let answer = ServerFrame::Sent {
                    req: v["req"].as_u64().unwrap_or_default(),
                    result: SendResult {
                        id: v["id"].as_str().unwrap_or_default().to_owned(),
                        status: DeliveryStatus::Queued,
                        recipients: 1,
                        thread_id: "t".into(),
                    },
                };
                say(&mut ws, &answer).await;
            }
            // Dropping `ws` here closes the TCP connection without a close frame.
        }
    });
    (url, rx)
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    timeout(DEADLINE, seen.recv())
        .await
        .expect("the fake node saw nothing in time")
        .expect("the fake node stopped")
}

fn request(seen: Seen) -> serde_json::Value {
    match seen {
        Seen::Request(v) => v,
        Seen::Hello => panic!("expected a request, got a hello"),
    }
}

fn options(url: &str) -> ClientOptions {
    let mut o = ClientOptions::new(url, "a", "secret");
    o.request_timeout = DEADLINE;
    o.connect_timeout = DEADLINE;
    o
}

fn a_send() -> SendRequest {
    SendRequest {
        to: "b".into(),
        body: "hi".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_dropped_request_is_sent_again_after_reconnecting() {
    let (url, mut seen) = fake_node(vec![Turn::DropAfterRequest, Turn::Answer]).await;
    let client = timeout(DEADLINE, Client::connect(options(&url)))
        .await
        .expect("connect in time")
        .expect("connect");
    assert!(matches!(next(&mut seen).await, Seen::Hello));
    let sending = tokio::spawn(async move { client.send(a_send()).await });
    let first = request(next(&mut seen).await);
    assert!(matches!(next(&mut seen).await, Seen::Hello), "reconnected");
    let again = request(next(&mut seen).await);
    assert_eq!(first, again, "the same frame, same req and message id");
    assert_eq!(first["op"], "send");
    let result = timeout(DEADLINE, sending)
        .await
        .expect("answered in time")
        .expect("the task ran")
        .expect("the send succeeded");
    assert_eq!(Some(result.id.as_str()), first["id"].as_str());
    assert_eq!(result.status, DeliveryStatus::Queued);
}

#[tokio::test]
async fn a_refused_reconnect_fails_the_request_without_resending_it() {
    let (url, mut seen) = fake_node(vec![Turn::DropAfterRequest, Turn::Refuse]).await;
    let client = timeout(DEADLINE, Client::connect(options(&url)))
        .await
        .expect("connect in time")
        .expect("connect");
    assert!(matches!(next(&mut seen).await, Seen::Hello));
    let sending = tokio::spawn(async move { client.send(a_send()).await });
    request(next(&mut seen).await);
    assert!(matches!(next(&mut seen).await, Seen::Hello), "reconnected");
    let result = timeout(DEADLINE, sending)
        .await
        .expect("failed in time")
        .expect("the task ran");
    match result {
        Err(Error::Remote {
            code: ErrorCode::Unauthorized,
            ..
        }) => {}
        other => panic!("expected the unauthorized refusal, got {other:?}"),
    }
    // The fake node has no more turns: the request was never sent again.
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn a_refused_hello_is_not_retried() {
    let (url, mut seen) = fake_node(vec![Turn::Refuse, Turn::Answer]).await;
    let result = timeout(DEADLINE, Client::connect(options(&url)))
        .await
        .expect("connect gave up in time");
    match result {
        Err(Error::Remote {
            code: ErrorCode::Unauthorized,
            ..
        }) => {}
        Err(e) => panic!("expected the unauthorized refusal, got {e}"),
        Ok(_) => panic!("expected the unauthorized refusal, got a connection"),
    }
    assert!(matches!(next(&mut seen).await, Seen::Hello));
    assert!(seen.try_recv().is_err(), "one hello only");
}

#[tokio::test]
async fn a_request_the_node_closed_the_connection_over_is_not_sent_again() {
    let (url, mut seen) = fake_node(vec![Turn::TooLarge, Turn::Answer]).await;
    let client = timeout(DEADLINE, Client::connect(options(&url)))
        .await
        .expect("connect in time")
        .expect("connect");
    assert!(matches!(next(&mut seen).await, Seen::Hello));
    let result = timeout(DEADLINE, client.send(a_send()))
        .await
        .expect("failed in time");
    match result {
        Err(Error::Remote {
            code: ErrorCode::FrameTooLarge,
            message,
        }) => assert!(message.contains("not retried"), "{message}"),
        other => panic!("expected frame_too_large, got {other:?}"),
    }
    request(next(&mut seen).await);
    assert!(matches!(next(&mut seen).await, Seen::Hello), "reconnected");
    // The next request goes through, and is the only one the new connection sees.
    let ok = timeout(DEADLINE, client.send(a_send()))
        .await
        .expect("answered in time")
        .expect("the second send succeeded");
    let v = request(next(&mut seen).await);
    assert_eq!(v["id"].as_str(), Some(ok.id.as_str()));
    assert!(
        seen.try_recv().is_err(),
        "the refused frame was never re-sent"
    );
}

#[tokio::test]
async fn a_frame_over_the_welcomed_limit_is_refused_before_it_is_sent() {
    let (url, mut seen) = fake_node(vec![Turn::Answer]).await;
    let client = timeout(DEADLINE, Client::connect(options(&url)))
        .await
        .expect("connect in time")
        .expect("connect");
    assert!(matches!(next(&mut seen).await, Seen::Hello));
    let big = SendRequest {
        body: "x".repeat(2 << 20),
        ..a_send()
    };
    match client.send(big).await {
        Err(
            e @ Error::Remote {
                code: ErrorCode::FrameTooLarge,
                ..
            },
        ) => assert!(e.to_string().contains("limit of 1048576 bytes"), "{e}"),
        other => panic!("expected frame_too_large, got {other:?}"),
    }
    assert!(seen.try_recv().is_err(), "nothing was sent");
}
