//! The node's side of TLS: its certificate (given as PEM files, or made once with rcgen and
//! kept in the data dir), its fingerprint, and the acceptor the accept loop runs every
//! connection through.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsSource;
use crate::error::{Error, Result};

/// The folder of a self-signed certificate inside the data dir.
pub const TLS_DIR: &str = "tls";
/// The certificate's file name in [`TLS_DIR`].
pub const CERT_FILE: &str = "cert.pem";
/// The key's file name in [`TLS_DIR`].
pub const KEY_FILE: &str = "key.pem";

/// The certificates of the node a data dir belongs to, which a client using that data dir
/// trusts as they are (pinned): the self-signed one, and the `[tls] cert` of its config.
pub fn data_dir_certificates(data_dir: &Path, file: &crate::config::FileConfig) -> Vec<PathBuf> {
    let mut v = vec![data_dir.join(TLS_DIR).join(CERT_FILE)];
    v.extend(file.tls.cert.clone());
    v
}

/// A node's TLS: what the accept loop uses and what `/health` and the log show.
#[derive(Clone)]
pub struct ServerTls {
    /// Runs the server side of every handshake.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// SHA-256 of the certificate (DER), as colon-separated hex pairs.
    pub fingerprint: String,
    /// Made by the node itself (`--tls-self-signed`).
    pub self_signed: bool,
    /// Where the certificate is.
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("fingerprint", &self.fingerprint)
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

/// SHA-256 of a certificate, `AB:CD:…` (the form browsers and `openssl x509 -fingerprint`
/// show, so an operator can compare it by eye).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: String| Error::Config(format!("{what} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(pem_error(e)))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_error(e)))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        e => format!("not a readable PEM file ({e})"),
    }
}

impl ServerTls {
    /// The TLS a node serves: `source`'s files, or the data dir's self-signed certificate
    /// (made now if there is none yet, for `host_names`).
    pub fn load(source: &TlsSource, data_dir: &Path, host_names: &[String]) -> Result<ServerTls> {
        let (cert, key, self_signed) = match source {
            TlsSource::Files { cert, key } => (cert.clone(), key.clone(), false),
            TlsSource::SelfSigned => {
                let dir = data_dir.join(TLS_DIR);
                if !dir.join(CERT_FILE).exists() {
                    make_self_signed(data_dir, host_names)?;
                }
                (dir.join(CERT_FILE), dir.join(KEY_FILE), true)
            }
        };
        let certs = read_certs(&cert, "--tls-cert")?;
        let private = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
            Error::Config(format!(
                "--tls-key {}: {} (expected a PEM private key: PKCS#8, PKCS#1 or SEC1)",
                key.display(),
                pem_error(e)
            ))
        })?;
        warn_if_readable_by_others(&key);
        let fingerprint = fingerprint(&certs[0]);
        let mut config = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .map_err(|e| {
                Error::Config(format!(
                    "--tls-cert {} with --tls-key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            fingerprint,
            self_signed,
            cert_path: cert,
        })
    }
}

/// Makes DATA_DIR/tls/{cert.pem,key.pem}: written into a fresh folder first and renamed into
/// place, so a process that looks at the same moment sees both files or neither; of two
/// processes making one at once, the first rename wins and the other uses it.
fn make_self_signed(data_dir: &Path, host_names: &[String]) -> Result<()> {
    crate::auth::ensure_data_dir(data_dir)?;
    let mut names: Vec<String> = Vec::new();
    for n in host_names
        .iter()
        .map(String::as_str)
        .chain(["localhost", "127.0.0.1", "::1"])
    {
        let n = n.trim_start_matches('[').trim_end_matches(']');
        if n.is_empty() || names.iter().any(|m| m.eq_ignore_ascii_case(n)) {
            continue;
        }
        if rustls::pki_types::ServerName::try_from(n).is_err() {
            tracing::warn!(name = %n, "left out of the self-signed certificate: not a DNS name or an IP address");
            continue;
        }
        names.push(n.to_owned());
    }
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|e| Error::Config(format!("making a self-signed certificate: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "switchboard node (self-signed)",
    );
    let key =
        rcgen::KeyPair::generate().map_err(|e| Error::Config(format!("making a TLS key: {e}")))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::Config(format!("making a self-signed certificate: {e}")))?;
    let tmp = data_dir.join(format!(
        ".{TLS_DIR}.new-{}",
        crate::auth::random_hex().get(..12).unwrap_or_default()
    ));
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir(&tmp)?;
        write_file(&tmp.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&tmp.join(CERT_FILE), cert.pem().as_bytes(), 0o644)?;
        Ok(())
    })();
    let placed = written.and_then(|()| std::fs::rename(&tmp, data_dir.join(TLS_DIR)));
    let _ = std::fs::remove_dir_all(&tmp);
    match placed {
        Ok(()) => {
            tracing::info!(names = ?names, dir = %data_dir.join(TLS_DIR).display(), "made a self-signed TLS certificate");
            Ok(())
        }
        // Someone else's rename came first (the folder is there and not empty): use theirs.
        Err(_) if data_dir.join(TLS_DIR).join(CERT_FILE).exists() => Ok(()),
        Err(e) => Err(Error::io(
            format!(
                "writing the self-signed certificate to {}",
                data_dir.join(TLS_DIR).display()
            ),
            e,
        )),
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn warn_if_readable_by_others(key: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(key)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(key = %key.display(), "the TLS key is readable by other users: chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = key;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["my-host".to_owned(), "bad_name!".to_owned()];
        let first = ServerTls::load(&TlsSource::SelfSigned, dir.path(), &names).unwrap();
        assert!(first.self_signed);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let again = ServerTls::load(&TlsSource::SelfSigned, dir.path(), &names).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join(TLS_DIR).join(KEY_FILE);
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary folder is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn unreadable_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not pem").unwrap();
        let source = TlsSource::Files {
            cert: cert.clone(),
            key: dir.path().join("missing.pem"),
        };
        let e = ServerTls::load(&source, dir.path(), &[]).unwrap_err();
        assert!(matches!(e, Error::Config(_)));
        assert!(e.to_string().contains("no certificate"), "{e}");
        let made = ServerTls::load(&TlsSource::SelfSigned, dir.path(), &[]).unwrap();
        let source = TlsSource::Files {
            cert: made.cert_path.clone(),
            key: dir.path().join("missing.pem"),
        };
        let e = ServerTls::load(&source, dir.path(), &[]).unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
    }
}
