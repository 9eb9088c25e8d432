//! TLS on both ends of every connection (rustls with the ring provider; no OpenSSL): the
//! node's certificate and acceptor ([`server`]), what a client side trusts ([`verify`]), and
//! the two places a connection is made — [`connect`] for clients and peer links, [`accept`]
//! for the node's port. Which hosts a credential may reach over plain `ws://` is a rule of its
//! own, [`crate::plaintext`].
//!
//! Both ends take the session's RFC 9266 `tls-exporter` value ([`ChannelBinding`]), which the
//! mesh handshake mixes into its proofs: a man in the middle who terminates TLS has two
//! sessions with two different values, so no proof it relays verifies.

pub mod server;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;

use crate::error::{Error, Result};
pub use server::ServerTls;
pub use verify::ClientTls;

/// A client's socket: plain TCP or TLS over it.
pub type Stream = MaybeTlsStream<TcpStream>;

/// The RFC 9266 `tls-exporter` channel binding of a TLS session: 32 bytes only its two
/// endpoints know. Plain connections have none.
pub type ChannelBinding = Option<[u8; 32]>;

const BINDING_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// The crypto the whole program uses (ring: small, no C toolchain beyond `cc`).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A session's exporter value: label `EXPORTER-Channel-Binding`, empty context, 32 bytes.
fn binding<D>(conn: &rustls::ConnectionCommon<D>) -> ChannelBinding {
    conn.export_keying_material([0u8; 32], BINDING_LABEL, Some(&[]))
        .ok()
}

/// Opens the socket under a WebSocket to `url` (`ws://` or `wss://`): TCP, and for `wss://`
/// the TLS handshake, verified by `tls` (the system roots when `None`). A certificate that does
/// not verify is [`Error::Tls`], naming the host and why; anything else that fails is
/// [`Error::Connection`].
pub async fn connect(url: &str, tls: Option<&ClientTls>) -> Result<(Stream, ChannelBinding)> {
    let (host, secure) = crate::plaintext::url_host(url)
        .ok_or_else(|| Error::Config(format!("bad node URL '{url}'")))?;
    let uri: tokio_tungstenite::tungstenite::http::Uri = url
        .parse()
        .map_err(|e| Error::Config(format!("bad node URL '{url}': {e}")))?;
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| Error::Connection(format!("{host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    if !secure {
        return Ok((MaybeTlsStream::Plain(tcp), None));
    }
    let tls = match tls {
        Some(t) => t.clone(),
        None => ClientTls::system()?,
    };
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Error::Config(format!("bad host name in '{url}': {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls.config())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(r) => Error::Tls(verify::explain(&host, r)),
                None => Error::Connection(format!("TLS with {host}: {e}")),
            }
        })?;
    let b = binding(stream.get_ref().1);
    Ok((MaybeTlsStream::Rustls(stream), b))
}

/// What the node answers a client that speaks plain HTTP (or `ws://`) to its TLS port.
const PLAIN_ANSWER: &str = "this switchboard node speaks TLS only: connect with wss:// (or https://), not ws:// or http://\n";

/// The server side of a connection on a TLS port, within `deadline`. A client that starts
/// with anything but a TLS handshake record (a plain HTTP request, say) gets a plain
/// `400` that says to use `wss://`, and `None`, as does a handshake that fails.
pub async fn accept(
    tls: &ServerTls,
    mut tcp: TcpStream,
    remote: SocketAddr,
    deadline: Duration,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ChannelBinding)> {
    let run = async {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await.ok()? == 0 {
            return None;
        }
        // 0x16: a TLS handshake record; every ClientHello starts with it.
        if first[0] != 0x16 {
            tracing::info!(%remote, "refused a connection that does not speak TLS on the TLS port (a ws:// or http:// client?)");
            answer_plain(&mut tcp).await;
            return None;
        }
        match tls.acceptor.accept(tcp).await {
            Ok(s) => {
                let b = binding(s.get_ref().1);
                Some((s, b))
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                None
            }
        }
    };
    tokio::time::timeout(deadline, run).await.ok().flatten()
}

/// Reads the request (so closing does not reset the connection before the client reads the
/// answer), answers `400` in plain HTTP, and closes.
async fn answer_plain(tcp: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = tcp.read(&mut buf).await;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PLAIN_ANSWER}",
        PLAIN_ANSWER.len()
    );
    if tcp.write_all(answer.as_bytes()).await.is_ok() {
        let _ = tcp.shutdown().await;
        // Wait (briefly) for the client to close, so it reads the answer before any reset.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// `GET path` on the node at `url` (`ws://` or `wss://`; TLS verified by `tls`), within
/// `within`: the status code and the body (at most 1 MiB).
pub async fn http_get(
    url: &str,
    path: &str,
    tls: Option<&ClientTls>,
    within: Duration,
) -> Result<(u16, String)> {
    let get = async {
        let (mut s, _) = connect(url, tls).await?;
        let host = crate::plaintext::url_host(url).map_or_else(String::new, |(h, _)| h);
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| Error::io(format!("GET {path}"), e))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        // A peer that closes without TLS's close_notify still said all it had to say.
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 || buf.len() > 1 << 20 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| Error::Connection(format!("GET {path}: no HTTP answer")))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(within, get)
        .await
        .map_err(|_| Error::Connection(format!("GET {path}: no answer within {within:?}")))?
}
