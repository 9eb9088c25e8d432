//! Mutual authentication of two nodes with the shared mesh secret, never sent on the wire;
//! both ends, over a link's text sink and stream.
//!
//! ```text
//! dialer   → peer_hello     { nonce_d }
//! acceptor → peer_challenge { nonce_a }                       (nothing else: an intruder learns nothing)
//! dialer   → peer_auth      { node, proof = HMAC(s, "dial|nonce_d|nonce_a|node|instance"), incarnation, expect, seq, instance }
//! acceptor → peer_welcome   { node, proof = HMAC(s, "accept|nonce_d|nonce_a|node|instance"), incarnation, instance }
//! ```
//! The instance id is in the proof so that nobody without the secret can pass one data dir's
//! link off as another's (a node that predates instance ids sends none, and its proof has no
//! `|instance` part).
//!
//! Over TLS both proofs are also bound to the session: they cover its RFC 9266 `tls-exporter`
//! value (32 bytes only the two ends of this one TLS session know), in a second input format,
//! `switchboard-mesh-v2-cb|role|HEX(binding)|…`, with the binding at a fixed place and length
//! so no choice of nonces, names or instance ids can make one session's input read as
//! another's, nor as an unbound one. A man in the middle who terminates TLS holds two sessions
//! with two values, so a proof it relays from one verifies on neither. That is why a peer
//! link may accept a certificate it cannot verify (docs/PROTOCOL.md, "TLS and channel
//! binding"): the peer is authenticated by the proof, and the proof by the session.
//! Fresh nonces on both sides make every proof single-use; the labels stop a proof from being
//! reflected back in the other role. The acceptor reveals who it is (and refuses with
//! `wrong_node` a dialer that expected another node) only once the dialer has proven the
//! secret.

use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::frames::{PeerError, PeerFrame};
use super::topology::Order;
use crate::auth;
use crate::error::{Error, Result};

/// Time for the whole handshake.
pub const HANDSHAKE: Duration = Duration::from_secs(5);

/// What a proof covers besides the secret: the role, both nonces, the prover's node and
/// instance, and the TLS session's channel binding (empty on a plain link).
pub struct Transcript<'a> {
    /// `dial` or `accept`.
    pub role: &'a str,
    /// The dialer's nonce.
    pub dial_nonce: &'a str,
    /// The acceptor's nonce.
    pub accept_nonce: &'a str,
    /// The prover's node id.
    pub node: &'a str,
    /// The prover's instance id (empty from an older node).
    pub instance: &'a str,
    /// The session's `tls-exporter` value; empty when the link is plain.
    pub binding: &'a [u8],
}

fn mac(secret: &[u8], t: &Transcript<'_>) -> Option<Hmac<Sha256>> {
    // HMAC takes keys of any length; should that ever change, nothing verifies.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()?;
    let Transcript {
        role,
        dial_nonce,
        accept_nonce,
        node,
        instance,
        binding,
    } = t;
    let mut input = if binding.is_empty() {
        format!("switchboard-mesh-v1|{role}|{dial_nonce}|{accept_nonce}|{node}")
    } else {
        format!(
            "switchboard-mesh-v2-cb|{role}|{}|{dial_nonce}|{accept_nonce}|{node}",
            hex::encode(binding)
        )
    };
    if !instance.is_empty() {
        input.push('|');
        input.push_str(instance);
    }
    mac.update(input.as_bytes());
    Some(mac)
}

/// HMAC-SHA256 of the handshake transcript, hex.
pub fn proof(secret: &[u8], t: &Transcript<'_>) -> String {
    mac(secret, t)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Checks a proof (in constant time, by the MAC itself).
pub fn verify(secret: &[u8], t: &Transcript<'_>, given: &str) -> bool {
    let Ok(given) = hex::decode(given) else {
        return false;
    };
    mac(secret, t).is_some_and(|m| m.verify_slice(&given).is_ok())
}

/// Who this node is, for either end.
pub struct Us<'a> {
    /// The mesh secret.
    pub secret: &'a [u8],
    /// This node's id.
    pub node: &'a str,
    /// This node's incarnation.
    pub incarnation: u64,
    /// This data dir's instance id.
    pub instance: &'a str,
    /// The link's channel binding (empty when plain): both proofs cover it.
    pub binding: &'a [u8],
}

/// How a dial's handshake ended, short of a broken connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Dialed {
    /// The acceptor proved the secret.
    Welcome {
        /// Its node id.
        node: String,
        /// Its incarnation.
        incarnation: u64,
        /// Its instance id (empty from an older node).
        instance: String,
    },
    /// The acceptor is not the node the dialer expected (its message).
    WrongNode(String),
    /// The acceptor's proof was wrong: it has another mesh secret.
    Unauthenticated,
}

/// The dialer's end. `expect`: the node that must answer; `seq`: this dial's number.
pub async fn dial<S, R>(
    sink: &mut S,
    stream: &mut R,
    us: &Us<'_>,
    expect: Option<&str>,
    seq: u64,
) -> Result<Dialed>
where
    S: Sink<String> + Unpin,
    S::Error: std::fmt::Display,
    R: Stream<Item = std::result::Result<String, ()>> + Unpin,
{
    let nonce = auth::random_hex();
    let exchange = async {
        send(
            sink,
            PeerFrame::PeerHello {
                nonce: nonce.clone(),
                v: 1,
            },
        )
        .await?;
        let theirs = match recv(stream).await? {
            PeerFrame::PeerChallenge { nonce } => nonce,
            PeerFrame::Error { message, .. } => return Err(Error::Connection(message)),
            _ => return Err(Error::Connection("unexpected frame in handshake".into())),
        };
        let auth = PeerFrame::PeerAuth {
            node: us.node.to_owned(),
            proof: proof(
                us.secret,
                &Transcript {
                    role: "dial",
                    dial_nonce: &nonce,
                    accept_nonce: &theirs,
                    node: us.node,
                    instance: us.instance,
                    binding: us.binding,
                },
            ),
            incarnation: us.incarnation,
            expect: expect.map(str::to_owned),
            seq,
            instance: us.instance.to_owned(),
        };
        send(sink, auth).await?;
        match recv(stream).await? {
            PeerFrame::PeerWelcome {
                node,
                proof,
                incarnation,
                instance,
            } => {
                let transcript = Transcript {
                    role: "accept",
                    dial_nonce: &nonce,
                    accept_nonce: &theirs,
                    node: &node,
                    instance: &instance,
                    binding: us.binding,
                };
                if verify(us.secret, &transcript, &proof) {
                    Ok(Dialed::Welcome {
                        node,
                        incarnation,
                        instance,
                    })
                } else {
                    Ok(Dialed::Unauthenticated)
                }
            }
            PeerFrame::Error { code, message } => match PeerError::parse(&code) {
                Some(PeerError::WrongNode) => Ok(Dialed::WrongNode(message)),
                _ => Err(Error::Connection(message)),
            },
            _ => Err(Error::Connection("unexpected frame in handshake".into())),
        }
    };
    tokio::time::timeout(HANDSHAKE, exchange)
        .await
        .map_err(|_| Error::Connection("mesh handshake timed out".into()))?
}

/// How an accepted handshake ended, short of a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The dialer proved the secret and was welcomed.
    Peer {
        /// Its node id.
        node: String,
        /// What ranks the link (its incarnation and dial number).
        order: Order,
        /// Its instance id (empty from an older node).
        instance: String,
    },
    /// The dialer expected another node and was told so.
    WrongNode,
}

/// The acceptor's end; `hello_nonce`: the nonce of the dialer's first frame, already read.
/// An error means the dialer failed authentication (or the handshake broke or timed out):
/// the caller refuses it.
pub async fn accept<S, R>(
    sink: &mut S,
    stream: &mut R,
    us: &Us<'_>,
    hello_nonce: &str,
) -> Result<Accepted>
where
    S: Sink<String> + Unpin,
    S::Error: std::fmt::Display,
    R: Stream<Item = std::result::Result<String, ()>> + Unpin,
{
    let nonce = auth::random_hex();
    let exchange = async {
        send(
            sink,
            PeerFrame::PeerChallenge {
                nonce: nonce.clone(),
            },
        )
        .await?;
        match recv(stream).await? {
            PeerFrame::PeerAuth {
                node,
                proof: given,
                incarnation,
                expect,
                seq,
                instance,
            } if verify(
                us.secret,
                &Transcript {
                    role: "dial",
                    dial_nonce: hello_nonce,
                    accept_nonce: &nonce,
                    node: &node,
                    instance: &instance,
                    binding: us.binding,
                },
                &given,
            ) =>
            {
                // The dialer has proven the secret, so it may learn who we are.
                if let Some(want) = expect
                    && want != us.node
                {
                    let message = format!("this is node {}, not {want}", us.node);
                    send(sink, PeerFrame::refusal(PeerError::WrongNode, message)).await?;
                    return Ok(Accepted::WrongNode);
                }
                let welcome = PeerFrame::PeerWelcome {
                    node: us.node.to_owned(),
                    proof: proof(
                        us.secret,
                        &Transcript {
                            role: "accept",
                            dial_nonce: hello_nonce,
                            accept_nonce: &nonce,
                            node: us.node,
                            instance: us.instance,
                            binding: us.binding,
                        },
                    ),
                    incarnation: us.incarnation,
                    instance: us.instance.to_owned(),
                };
                send(sink, welcome).await?;
                Ok(Accepted::Peer {
                    node,
                    order: Order { incarnation, seq },
                    instance,
                })
            }
            _ => Err(Error::Connection("mesh authentication failed".into())),
        }
    };
    tokio::time::timeout(HANDSHAKE, exchange)
        .await
        .map_err(|_| Error::Connection("mesh handshake timed out".into()))?
}

/// Sends one frame.
pub async fn send<S: Sink<String> + Unpin>(sink: &mut S, f: PeerFrame) -> Result<()>
where
    S::Error: std::fmt::Display,
{
    sink.send(f.text())
        .await
        .map_err(|e| Error::Connection(e.to_string()))
}

async fn recv<R: Stream<Item = std::result::Result<String, ()>> + Unpin>(
    stream: &mut R,
) -> Result<PeerFrame> {
    match stream.next().await {
        Some(Ok(t)) => {
            serde_json::from_str(&t).map_err(|e| Error::Connection(format!("bad peer frame: {e}")))
        }
        _ => Err(Error::Connection("the peer closed the link".into())),
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
