//! How a client side decides whether to trust a node: the system's roots, the `--tls-ca`
//! bundle, and the certificates of the data dir's own node, pinned (a client of its own node
//! trusts the certificate that node serves, whatever name it dials it by). A peer link also
//! accepts a certificate that does not verify, because its mesh proof is bound to the TLS
//! session (docs/PROTOCOL.md, "TLS and channel binding"); an agent never does.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::server::read_certs;
use crate::error::{Error, Result};

/// The TLS settings of a client side: cheap to clone, shared by every connection it makes.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

/// The system's trust store, read once per process (it is a few hundred files).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "skipped part of the system's TLS roots");
        }
        found.certs
    })
}

impl ClientTls {
    /// What agents, the CLI and bench use: the system roots plus the PEM bundles `ca_files`,
    /// and the certificates in `pinned` (files read when a handshake needs them, so a node
    /// that makes its certificate after this client started is trusted too).
    pub fn agent(ca_files: &[PathBuf], pinned: Vec<PathBuf>) -> Result<ClientTls> {
        Self::build(ca_files, pinned, false)
    }

    /// What a node's peer links use: as [`ClientTls::agent`], but a certificate that does not
    /// verify is accepted; the channel-bound mesh handshake then authenticates the peer.
    pub fn mesh(ca_files: &[PathBuf], pinned: Vec<PathBuf>) -> Result<ClientTls> {
        Self::build(ca_files, pinned, true)
    }

    /// The system roots alone (built once per process).
    pub fn system() -> Result<ClientTls> {
        static SYSTEM: OnceLock<ClientTls> = OnceLock::new();
        if let Some(t) = SYSTEM.get() {
            return Ok(t.clone());
        }
        let t = Self::build(&[], Vec::new(), false)?;
        Ok(SYSTEM.get_or_init(|| t).clone())
    }

    fn build(ca_files: &[PathBuf], pinned: Vec<PathBuf>, mesh: bool) -> Result<ClientTls> {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(system_roots().iter().cloned());
        for f in ca_files {
            let certs = read_certs(f, "--tls-ca")?;
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::Config(format!(
                    "--tls-ca {}: none of its {ignored} certificates can be a trust anchor",
                    f.display()
                )));
            }
        }
        let mut v = Verifier::none(mesh);
        v.pinned = Pinned::new(pinned);
        if !roots.is_empty() {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::provider())
                    .build()
                    .map_err(|e| Error::Config(format!("TLS roots: {e}")))?;
            v.webpki = Some(webpki);
        }
        Ok(ClientTls {
            config: Arc::new(config(v)?),
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }
}

fn config(v: Verifier) -> Result<rustls::ClientConfig> {
    // TLS 1.3 only: its exporter is unique per session, which the channel binding relies on,
    // and every client and browser in use speaks it.
    let mut c = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(v))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Certificates trusted as they are, by their DER bytes.
#[derive(Debug, Default)]
struct Pinned {
    paths: Vec<PathBuf>,
    known: Mutex<Vec<Vec<u8>>>,
}

impl Pinned {
    fn new(paths: Vec<PathBuf>) -> Pinned {
        Pinned {
            paths,
            known: Mutex::default(),
        }
    }

    fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        if self.paths.is_empty() {
            return false;
        }
        let mut known = self.known.lock();
        if known.iter().any(|k| k.as_slice() == cert.as_ref()) {
            return true;
        }
        // A miss reads the files again: the node may have made its certificate since.
        *known = self
            .paths
            .iter()
            .filter_map(|p| read_certs(p, "pinned").ok())
            .filter_map(|mut certs| (!certs.is_empty()).then(|| certs.swap_remove(0).to_vec()))
            .collect();
        known.iter().any(|k| k.as_slice() == cert.as_ref())
    }
}

#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pinned: Pinned,
    /// A peer link's: what does not verify is still accepted (the mesh proof is bound).
    accept_unverified: bool,
}

impl Verifier {
    fn none(accept_unverified: bool) -> Verifier {
        Verifier {
            webpki: None,
            pinned: Pinned::default(),
            accept_unverified,
        }
    }

    fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
        super::provider().signature_verification_algorithms
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self.pinned.contains(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        let verified = match &self.webpki {
            Some(w) => w.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        match verified {
            Err(e) if self.accept_unverified => {
                tracing::debug!(peer = ?server_name, reason = %e, "a peer's certificate does not verify; the channel-bound mesh proof authenticates it");
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &Self::algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &Self::algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::algorithms().supported_schemes()
    }
}

/// What went wrong in a TLS handshake with `host`, in words, with what to do about it.
pub fn explain(host: &str, e: &rustls::Error) -> String {
    const CA_HINT: &str = "pass --tls-ca FILE (or set SWITCHBOARD_TLS_CA) with the CA that \
        signed it — for a node started with --tls-self-signed, its DATA_DIR/tls/cert.pem (check \
        the SHA-256 fingerprint the node logs and shows in /health)";
    let why = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "its certificate is signed by an unknown issuer (not in the system's roots nor \
                 in --tls-ca): {CA_HINT}"
            ),
            CertificateError::NotValidForName => {
                format!("its certificate is not valid for the name {host}")
            }
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "its certificate is not valid for the name {host} (it names {}); connect by \
                 one of those names",
                presented.join(", ")
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "its certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "its certificate is not valid yet (is this machine's clock right?)".to_owned()
            }
            CertificateError::Revoked => "its certificate has been revoked".to_owned(),
            CertificateError::BadSignature => {
                "its certificate is not correctly signed by its issuer".to_owned()
            }
            other => format!("its certificate was refused ({other:?})"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "it does not speak TLS on that port (a node without TLS is reached at ws://)".into()
        }
        rustls::Error::AlertReceived(a) => format!("it refused the TLS handshake ({a:?})"),
        other => other.to_string(),
    };
    format!("TLS with {host} failed: {why}")
}
