//! Mutual authentication of two nodes with the shared mesh secret, never sent on the wire.
//!
//! ```text
//! dialer   → peer_hello     { nonce_d }
//! acceptor → peer_challenge { nonce_a }                       (nothing else: an intruder learns nothing)
//! dialer   → peer_auth      { node, proof = HMAC(s, "dial|nonce_d|nonce_a|node") }
//! acceptor → peer_welcome   { node, proof = HMAC(s, "accept|nonce_d|nonce_a|node") }
//! ```
//! Fresh nonces on both sides make every proof single-use; the labels stop a proof from being
//! reflected back in the other role.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256 of the handshake transcript, hex.
pub fn proof(
    secret: &[u8],
    role: &str,
    dial_nonce: &str,
    accept_nonce: &str,
    node: &str,
) -> String {
    // HMAC takes keys of any length; should that ever change, an empty proof verifies nothing.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(format!("switchboard-mesh-v1|{role}|{dial_nonce}|{accept_nonce}|{node}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a proof in constant time.
pub fn verify(
    secret: &[u8],
    role: &str,
    dial_nonce: &str,
    accept_nonce: &str,
    node: &str,
    given: &str,
) -> bool {
    let expected = proof(secret, role, dial_nonce, accept_nonce, node);
    !expected.is_empty() && crate::auth::constant_time_eq(&expected, given)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_role_nonces_and_node() {
        let p = proof(b"s3cret", "dial", "n1", "n2", "a");
        assert!(verify(b"s3cret", "dial", "n1", "n2", "a", &p));
        assert!(!verify(b"other", "dial", "n1", "n2", "a", &p));
        assert!(!verify(b"s3cret", "accept", "n1", "n2", "a", &p));
        assert!(!verify(b"s3cret", "dial", "n1", "n3", "a", &p));
        assert!(!verify(b"s3cret", "dial", "n1", "n2", "b", &p));
    }
}
