//! The WebSocket under every connection, client sessions and peer links alike: framing,
//! timeouts, batching, close reasons, and turning socket-level events into what the edges act
//! on. Whatever the socket (accepted on the node's port or dialed to a peer), the rest of the
//! program sees text frames.

use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::core::Frame;
use crate::protocol::{ErrorCode, ServerFrame};

/// A write that takes longer than this means the other side is gone or stuck.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames written per flush at most; bounds how long one busy connection holds its task.
const WRITE_BATCH: usize = 128;
/// A close reason may hold at most 123 bytes.
const CLOSE_REASON_MAX: usize = 120;

/// What a read brought.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame.
    Text(Utf8Bytes),
    /// A binary frame (the protocol has none).
    Binary,
    /// A ping or pong: the other side is alive (tungstenite answers pings itself).
    Alive,
    /// The other side closed, or the socket ended.
    Closed,
    /// A frame over the size limit: the connection cannot go on.
    TooLarge(String),
    /// An unreadable frame or a broken socket.
    Broken(String),
}

impl Incoming {
    /// The wire code and text for a read that ended the connection (not for `Text`).
    pub fn refusal(&self) -> (ErrorCode, String) {
        match self {
            Incoming::TooLarge(m) => (ErrorCode::FrameTooLarge, m.clone()),
            Incoming::Broken(m) => (ErrorCode::BadFrame, m.clone()),
            Incoming::Binary => (
                ErrorCode::BadFrame,
                "binary frames are not supported; send JSON text frames".into(),
            ),
            Incoming::Text(_) | Incoming::Alive | Incoming::Closed => {
                (ErrorCode::BadFrame, String::new())
            }
        }
    }
}

/// The reading half of a connection.
pub struct Reader<S> {
    stream: SplitStream<WebSocketStream<S>>,
}

/// The writing half of a connection.
pub struct Writer<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
}

/// Splits a WebSocket into its halves.
pub fn split<S>(ws: WebSocketStream<S>) -> (Writer<S>, Reader<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sink, stream) = ws.split();
    (Writer { sink }, Reader { stream })
}

fn describe(e: WsError) -> Incoming {
    match e {
        WsError::Capacity(c) => Incoming::TooLarge(format!("frame too large: {c}")),
        WsError::ConnectionClosed | WsError::AlreadyClosed => Incoming::Closed,
        e => Incoming::Broken(format!("unreadable frame: {e}")),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Reader<S> {
    /// The next frame.
    pub async fn next(&mut self) -> Incoming {
        match self.stream.next().await {
            None | Some(Ok(Message::Close(_))) => Incoming::Closed,
            Some(Err(e)) => describe(e),
            Some(Ok(Message::Text(t))) => Incoming::Text(t),
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
            Some(Ok(_)) => Incoming::Alive,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    /// Writes one frame and flushes; false if the socket failed or timed out.
    pub async fn send(&mut self, text: Utf8Bytes) -> bool {
        timed(self.sink.send(Message::Text(text))).await
    }

    /// Writes a server frame.
    pub async fn send_frame(&mut self, frame: &ServerFrame) -> bool {
        self.send_queued(Frame::encode(frame)).await
    }

    /// Writes a frame from a session queue.
    pub async fn send_queued(&mut self, frame: Frame) -> bool {
        match text(frame) {
            Some(t) => self.send(t).await,
            None => true,
        }
    }

    /// Writes `first` and whatever else is already queued, then flushes once: under load many
    /// frames share one syscall instead of one each. Frames `skip` says so of are dropped.
    pub async fn send_batch(
        &mut self,
        first: Frame,
        rx: &mut mpsc::Receiver<Frame>,
        mut skip: impl FnMut(&Frame) -> bool,
    ) -> bool {
        let sink = &mut self.sink;
        let batch = async {
            let mut next = Some(first);
            for _ in 0..WRITE_BATCH {
                let Some(f) = next.take().or_else(|| rx.try_recv().ok()) else {
                    break;
                };
                if !skip(&f)
                    && let Some(t) = text(f)
                {
                    sink.feed(Message::Text(t)).await?;
                }
            }
            sink.flush().await
        };
        timed(batch).await
    }

    /// A keep-alive ping.
    pub async fn ping(&mut self) -> bool {
        timed(self.sink.send(Message::Ping(Default::default()))).await
    }

    /// Closes the socket without a reason.
    pub async fn close(&mut self) {
        let _ = timed(self.sink.send(Message::Close(None))).await;
    }

    /// Sends an error frame and closes with a matching close code: for connections that
    /// cannot go on.
    pub async fn refuse(mut self, code: ErrorCode, message: String) {
        let _ = self
            .send_frame(&ServerFrame::error(None, code, message.clone()))
            .await;
        let mut reason = String::new();
        for c in message.chars() {
            if reason.len() + c.len_utf8() > CLOSE_REASON_MAX {
                break;
            }
            reason.push(c);
        }
        let close = CloseFrame {
            code: match code {
                ErrorCode::FrameTooLarge => CloseCode::Size,
                ErrorCode::ShuttingDown => CloseCode::Away,
                _ => CloseCode::Policy,
            },
            reason: reason.into(),
        };
        let _ = timed(self.sink.send(Message::Close(Some(close)))).await;
    }
}

/// Our frames are UTF-8 by construction; a frame that somehow is not is dropped, not sent.
fn text(frame: Frame) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(frame.into_bytes()).ok()
}

async fn timed(f: impl Future<Output = Result<(), WsError>>) -> bool {
    matches!(tokio::time::timeout(WRITE_TIMEOUT, f).await, Ok(Ok(())))
}

/// A text sink over a WebSocket, for peer links.
pub type TextSink = Pin<Box<dyn Sink<String, Error = WsError> + Send>>;
/// A text stream over a WebSocket, for peer links: `Err` once the socket is closed or broken.
pub type TextStream = Pin<Box<dyn Stream<Item = Result<String, ()>> + Send>>;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Writer<S> {
    /// This half as a sink of text frames.
    pub fn into_text(self) -> TextSink {
        Box::pin(
            self.sink
                .with(|t: String| futures_util::future::ready(Ok(Message::Text(t.into())))),
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Reader<S> {
    /// This half as a stream of text frames; control frames are skipped.
    pub fn into_text(self) -> TextStream {
        Box::pin(self.stream.filter_map(|m| {
            futures_util::future::ready(match m {
                Ok(Message::Text(t)) => Some(Ok(t.to_string())),
                Ok(Message::Close(_)) | Err(_) => Some(Err(())),
                Ok(_) => None,
            })
        }))
    }
}
