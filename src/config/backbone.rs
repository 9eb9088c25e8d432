//! The backbone's settings: `--backbone URL` (repeatable), `--backbone-creds FILE` and the
//! `[backbone]` table of config.toml, resolved once into [`BackboneConfig`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// How long the stream keeps entries by default: long enough that a laptop closed for a
/// holiday catches up from the stream alone.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(90 * 86_400);
/// How many bytes the stream keeps by default (the oldest entries go first past it).
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// The `[backbone]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackbone {
    /// NATS seed URLs (`nats://` or `tls://`).
    #[serde(default)]
    pub urls: Vec<String>,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// Stream replicas: 1 for one NATS server, 3 for a cluster.
    pub replicas: Option<usize>,
    /// How long the stream keeps entries (`90d`, `720h`).
    pub max_age: Option<String>,
    /// How many bytes the stream keeps.
    pub max_bytes: Option<u64>,
    /// The JetStream domain of the servers that hold the stream (a hub reached through a
    /// leaf node runs JetStream in its own domain).
    pub domain: Option<String>,
}

/// The backbone a node replicates through, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackboneConfig {
    /// NATS seed URLs.
    pub urls: Vec<String>,
    /// A NATS credentials file.
    pub creds: Option<PathBuf>,
    /// Stream replicas (1–5).
    pub replicas: usize,
    /// The stream's age limit.
    pub max_age: Duration,
    /// The stream's size limit.
    pub max_bytes: u64,
    /// The JetStream domain, if the stream lives in a named one.
    pub domain: Option<String>,
    /// Plain `nats://` to another machine is permitted (`--allow-plaintext`); otherwise such a
    /// connection must upgrade to TLS.
    pub allow_plaintext: bool,
}

/// The backbone from flags (which win when given) and the file; `None` without any URL.
pub fn resolve(
    urls: Vec<String>,
    creds: Option<PathBuf>,
    file: FileBackbone,
    allow_plaintext: bool,
) -> Result<Option<BackboneConfig>> {
    let urls = if urls.is_empty() { file.urls } else { urls };
    let creds = creds.or(file.creds);
    if urls.is_empty() {
        if creds.is_some() {
            return Err(Error::Config(
                "--backbone-creds needs a backbone: pass --backbone nats://HOST:PORT".into(),
            ));
        }
        return Ok(None);
    }
    for u in &urls {
        validate_url(u).map_err(|e| Error::Config(format!("backbone {e}")))?;
    }
    let replicas = file.replicas.unwrap_or(1);
    if !(1..=5).contains(&replicas) {
        return Err(Error::Config(format!(
            "backbone replicas must be 1 to 5 (JetStream's limit), not {replicas}"
        )));
    }
    let max_age = match file.max_age {
        Some(a) => humantime::parse_duration(&a)
            .map_err(|e| Error::Config(format!("backbone max_age '{a}': {e} (e.g. 90d, 720h)")))?,
        None => DEFAULT_MAX_AGE,
    };
    if max_age < Duration::from_secs(60) {
        return Err(Error::Config(
            "backbone max_age must be at least 1m: nodes must have time to read the stream".into(),
        ));
    }
    let max_bytes = file.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    if max_bytes < 1 << 20 {
        return Err(Error::Config(
            "backbone max_bytes must be at least 1048576 (1 MiB)".into(),
        ));
    }
    if let Some(c) = &creds
        && !c.is_file()
    {
        return Err(Error::Config(format!(
            "backbone credentials file {} does not exist",
            c.display()
        )));
    }
    if let Some(d) = &file.domain
        && (d.is_empty()
            || d.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace()))
    {
        return Err(Error::Config(format!(
            "backbone domain '{d}' must be one NATS subject token (no '.', '*', '>' or spaces)"
        )));
    }
    Ok(Some(BackboneConfig {
        domain: file.domain,
        urls,
        creds,
        replicas,
        max_age,
        max_bytes,
        allow_plaintext,
    }))
}

/// `nats://HOST:PORT` or `tls://HOST:PORT` (the port may be left out: 4222).
pub fn validate_url(url: &str) -> std::result::Result<(), String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or_else(|| format!("URL '{url}' must start with nats:// or tls://"))?;
    let host = url_host(rest);
    if host.is_empty() {
        return Err(format!("URL '{url}' has no host"));
    }
    Ok(())
}

/// The host of a backbone URL without its scheme, credentials, port or path.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    url_host(rest)
}

fn url_host(rest: &str) -> String {
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default().to_owned();
    }
    host_port.split(':').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_nats_scheme_and_a_host() {
        assert!(validate_url("nats://127.0.0.1:4222").is_ok());
        assert!(validate_url("tls://hub.example:4222").is_ok());
        assert!(validate_url("ws://x:1").unwrap_err().contains("nats://"));
        assert!(validate_url("nats://").unwrap_err().contains("no host"));
        assert_eq!(host_of("nats://u:p@[::1]:4222"), "::1");
        assert_eq!(host_of("tls://hub:4222/x"), "hub");
    }

    #[test]
    fn flags_win_and_bad_limits_are_refused() {
        let file = FileBackbone {
            urls: vec!["nats://file:4222".into()],
            max_age: Some("30d".into()),
            ..Default::default()
        };
        let c = resolve(vec!["nats://flag:4222".into()], None, file, false)
            .unwrap()
            .unwrap();
        assert_eq!(c.urls, ["nats://flag:4222"]);
        assert_eq!(c.max_age, Duration::from_secs(30 * 86_400));
        let bad = FileBackbone {
            replicas: Some(7),
            ..Default::default()
        };
        let e = resolve(vec!["nats://h".into()], None, bad, false).unwrap_err();
        assert!(e.to_string().contains("replicas"), "{e}");
        assert!(
            resolve(Vec::new(), None, FileBackbone::default(), false)
                .unwrap()
                .is_none()
        );
    }
}
