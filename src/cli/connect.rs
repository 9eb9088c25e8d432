//! How CLI commands and `switchboard mcp` find their node and their token.

use std::path::PathBuf;

use crate::auth;
use crate::cli::Global;
use crate::client::{Client, ClientOptions};
use crate::config::{self, read_file_config, validate_ws_url};
use crate::embedded::Host;
use crate::error::{Error, Result};
use crate::protocol::Role;

/// A connected client, plus the node this process hosts if it had to.
pub struct Connection {
    /// The client.
    pub client: Client,
    /// Set when no `--node` was given: the embedded default.
    pub host: Option<Host>,
}

impl Connection {
    /// Stops the hosted node, if any.
    pub async fn close(self) {
        let Connection { client, host } = self;
        drop(client);
        if let Some(h) = host {
            h.stop().await;
        }
    }
}

/// The data dir: flag/env, or the platform default.
pub fn data_dir(g: &Global) -> Result<PathBuf> {
    match &g.data_dir {
        Some(d) => Ok(d.clone()),
        None => config::default_data_dir(),
    }
}

pub(super) fn token(g: &Global, dir: &std::path::Path, may_create: bool) -> Result<String> {
    if let Some(t) = &g.token {
        return Ok(t.trim().to_owned());
    }
    if let Some(f) = &g.token_file {
        let t = std::fs::read_to_string(f)
            .map_err(|e| Error::Config(format!("--token-file {}: {e}", f.display())))?;
        return Ok(t.trim().to_owned());
    }
    if may_create {
        return auth::load_or_create_secret(dir);
    }
    auth::read_secret(dir)?.ok_or_else(|| {
        Error::Config(format!(
            "no token: pass --token/--token-file (from `switchboard token issue NAME` on the node's \
             machine) or create {}",
            dir.join(auth::SECRET_FILE).display()
        ))
    })
}

/// What a client of this data dir trusts: the system roots, `--tls-ca` (or the config's
/// `[tls] ca`), and the data dir's own node's certificate, pinned.
pub fn client_tls(
    g: &Global,
    dir: &std::path::Path,
    file: &config::FileConfig,
) -> Result<crate::tls::ClientTls> {
    let ca: Vec<PathBuf> = g
        .tls_ca
        .clone()
        .or(file.tls.ca.clone())
        .into_iter()
        .collect();
    crate::tls::ClientTls::agent(&ca, crate::tls::server::data_dir_certificates(dir, file))
}

/// The `host:port` a client dials for a node listening on `listen`: a wildcard address
/// (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn dial_addr(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_owned(),
    }
}

/// `host:port` of a `ws://` or `wss://` URL whose host is this machine, or None.
fn loopback_addr(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))?;
    let addr = rest.split('/').next()?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]").then(|| addr.to_owned())
}

/// For a loopback `--node`: a refused TCP connection means no node runs there, which is what
/// to say (not that a token is missing, which is the next thing that would fail).
async fn check_running(url: &str) -> Result<()> {
    let Some(addr) = loopback_addr(url) else {
        return Ok(());
    };
    let dial = tokio::net::TcpStream::connect(addr.as_str());
    match tokio::time::timeout(std::time::Duration::from_secs(2), dial).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(Error::Connection(format!(
                "no node is running at {url}: cannot reach the switchboard node there (connection \
                 refused). Start one (`switchboard node --listen {addr}`), or leave out --node to \
                 use the data dir's node (hosted here if none runs)"
            )))
        }
        _ => Ok(()),
    }
}

/// Connects as `agent`: to `--node` if given (or `node` in config.toml), else to the data
/// dir's node (its config.toml `listen`), hosting it here if none answers.
pub async fn connect(g: &Global, agent: &str, role: Role, reconnect: bool) -> Result<Connection> {
    let dir = data_dir(g)?;
    let file = read_file_config(&dir)?;
    let explicit = g.node.clone().or(file.node.clone());
    let (url, host) = match explicit {
        Some(url) => {
            validate_ws_url(&url).map_err(|e| Error::Config(format!("--node: {e}")))?;
            // Refused here, before any connection attempt (the client checks again).
            crate::plaintext::check_client(&url, g.allow_plaintext || file.allow_plaintext)?;
            check_running(&url).await?;
            (url, None)
        }
        None => {
            let host = Host::new(dir.clone())?;
            let url = host.url();
            let (scheme, listen) = url.split_once("://").unwrap_or(("ws", &url));
            (format!("{scheme}://{}", dial_addr(listen)), Some(host))
        }
    };
    let token = token(g, &dir, host.is_some())?;
    let mut opts = ClientOptions::new(url, agent, token);
    opts.role = role;
    opts.reconnect = reconnect;
    opts.tls = Some(client_tls(g, &dir, &file)?);
    opts.allow_plaintext = g.allow_plaintext || file.allow_plaintext;
    if let Some(h) = &host {
        opts.on_unreachable = Some(h.hook());
        opts.max_backoff = std::time::Duration::from_millis(500);
    }
    let client = Client::connect(opts).await?;
    Ok(Connection { client, host })
}
