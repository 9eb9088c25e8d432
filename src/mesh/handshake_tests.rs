//! Both ends of the handshake against each other, over in-memory pipes.

use std::pin::Pin;

use super::*;

type TestSink = Pin<Box<dyn Sink<String, Error = &'static str> + Send>>;
type TestStream = Pin<Box<dyn Stream<Item = std::result::Result<String, ()>> + Send>>;

fn pipe() -> (TestSink, TestStream) {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    let sink = futures_util::sink::unfold(tx, |tx, s: String| async move {
        tx.send(s).await.map_err(|_| "closed")?;
        Ok(tx)
    });
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|s| (Ok(s), rx)) },
        );
    (Box::pin(sink), Box::pin(stream))
}

/// Runs a dial against an acceptor; the acceptor reads the hello first, as the node's
/// first-frame dispatch does.
async fn run(
    dialer: Us<'_>,
    acceptor: Us<'_>,
    expect: Option<&str>,
) -> (Result<Dialed>, Result<Accepted>) {
    let (mut to_acceptor, mut acceptor_in) = pipe();
    let (mut to_dialer, mut dialer_in) = pipe();
    let dial_end = dial(&mut to_acceptor, &mut dialer_in, &dialer, expect, 7);
    let acceptor = &acceptor;
    // Owns its pipe ends, so the dialer sees them close when the acceptor is done.
    let accept_end = async move {
        let hello = match recv(&mut acceptor_in).await {
            Ok(PeerFrame::PeerHello { nonce, .. }) => nonce,
            other => panic!("not a hello: {other:?}"),
        };
        accept(&mut to_dialer, &mut acceptor_in, acceptor, &hello).await
    };
    tokio::join!(dial_end, accept_end)
}

fn us<'a>(secret: &'a [u8], node: &'a str, incarnation: u64) -> Us<'a> {
    Us {
        secret,
        node,
        incarnation,
        instance: node,
        binding: &[],
    }
}

fn t<'a>(role: &'a str, nd: &'a str, na: &'a str, node: &'a str, inst: &'a str) -> Transcript<'a> {
    Transcript {
        role,
        dial_nonce: nd,
        accept_nonce: na,
        node,
        instance: inst,
        binding: &[],
    }
}

#[test]
fn proofs_bind_secret_role_nonces_and_node() {
    let p = proof(b"s3cret", &t("dial", "n1", "n2", "a", "i"));
    assert!(verify(b"s3cret", &t("dial", "n1", "n2", "a", "i"), &p));
    assert!(!verify(b"other", &t("dial", "n1", "n2", "a", "i"), &p));
    assert!(!verify(b"s3cret", &t("accept", "n1", "n2", "a", "i"), &p));
    assert!(!verify(b"s3cret", &t("dial", "n1", "n3", "a", "i"), &p));
    assert!(!verify(b"s3cret", &t("dial", "n1", "n2", "b", "i"), &p));
    // A man in the middle cannot swap the instance id, nor strip it.
    assert!(!verify(b"s3cret", &t("dial", "n1", "n2", "a", "j"), &p));
    assert!(!verify(b"s3cret", &t("dial", "n1", "n2", "a", ""), &p));
    assert!(!verify(
        b"s3cret",
        &t("dial", "n1", "n2", "a", "i"),
        "not hex"
    ));
    assert!(!verify(
        b"s3cret",
        &t("dial", "n1", "n2", "a", "i"),
        &p[..10]
    ));
    // A node without an instance id proves as before.
    let old = proof(b"s3cret", &t("dial", "n1", "n2", "a", ""));
    assert!(verify(b"s3cret", &t("dial", "n1", "n2", "a", ""), &old));
}

#[test]
fn proofs_over_tls_are_bound_to_the_session() {
    let bound = |b: &'static [u8]| Transcript {
        binding: b,
        ..t("dial", "n1", "n2", "a", "i")
    };
    static X: [u8; 32] = [1u8; 32];
    static Y: [u8; 32] = [2u8; 32];
    let p = proof(b"s3cret", &bound(&X));
    assert!(verify(b"s3cret", &bound(&X), &p));
    // Relayed into another TLS session, or onto a plain link: it verifies on neither.
    assert!(!verify(b"s3cret", &bound(&Y), &p));
    assert!(!verify(b"s3cret", &t("dial", "n1", "n2", "a", "i"), &p));
    // A plain acceptor cannot be fooled by an instance id that spells out a binding: the
    // bound input has another prefix and the binding before every chosen field.
    let spelled = format!("i|{}", hex::encode(X));
    assert!(!verify(
        b"s3cret",
        &t("dial", "n1", "n2", "a", &spelled),
        &p
    ));
    let cb_in_nonce = format!("{}|n1", hex::encode(X));
    let v1 = proof(b"s3cret", &t("dial", &cb_in_nonce, "n2", "a", "i"));
    assert!(!verify(b"s3cret", &bound(&X), &v1));
}

#[tokio::test]
async fn a_relayed_handshake_fails_on_both_ends() {
    static X: [u8; 32] = [7u8; 32];
    static Y: [u8; 32] = [9u8; 32];
    let s = b"s3cret-s3cret-16";
    let on = |node: &'static str, binding: &'static [u8]| Us {
        binding,
        ..us(s, node, 1)
    };
    // Same secret, but the two ends are in different TLS sessions (a man in the middle
    // terminating TLS relays the frames): the acceptor refuses the dialer's proof.
    let (d, a) = run(on("a", &X), on("b", &Y), None).await;
    assert!(a.is_err());
    assert!(d.is_err());
    // In one session, the same handshake succeeds.
    let (d, a) = run(on("a", &X), on("b", &X), None).await;
    assert!(matches!(d.unwrap(), Dialed::Welcome { .. }));
    assert!(matches!(a.unwrap(), Accepted::Peer { .. }));
}

#[tokio::test]
async fn nodes_with_one_secret_learn_each_other() {
    let (d, a) = run(
        us(b"s3cret-s3cret-16", "a", 3),
        us(b"s3cret-s3cret-16", "b", 9),
        None,
    )
    .await;
    assert_eq!(
        d.unwrap(),
        Dialed::Welcome {
            node: "b".into(),
            incarnation: 9,
            instance: "b".into(),
        }
    );
    let order = Order {
        incarnation: 3,
        seq: 7,
    };
    assert_eq!(
        a.unwrap(),
        Accepted::Peer {
            node: "a".into(),
            order,
            instance: "a".into(),
        }
    );
}

#[tokio::test]
async fn a_dialer_with_another_secret_is_refused() {
    let (d, a) = run(
        us(b"one-secret-xxxxx", "a", 1),
        us(b"another-secret-x", "b", 1),
        None,
    )
    .await;
    assert!(a.is_err());
    // The acceptor said nothing more; the dialer's pipe closed.
    assert!(d.is_err());
}

#[tokio::test]
async fn a_dialer_expecting_another_node_is_told_so() {
    let s = b"s3cret-s3cret-16";
    let (d, a) = run(us(s, "a", 1), us(s, "b", 1), Some("c")).await;
    assert_eq!(a.unwrap(), Accepted::WrongNode);
    assert_eq!(
        d.unwrap(),
        Dialed::WrongNode("this is node b, not c".into())
    );
    let (d, _) = run(us(s, "a", 1), us(s, "b", 1), Some("b")).await;
    assert!(matches!(d.unwrap(), Dialed::Welcome { .. }));
}
