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

fn token(g: &Global, dir: &std::path::Path, may_create: bool) -> Result<String> {
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

/// Connects as `agent`: to `--node` if given (or `node` in config.toml), else to the data
/// dir's local node, hosting it here if none answers.
pub async fn connect(g: &Global, agent: &str, role: Role, reconnect: bool) -> Result<Connection> {
    let dir = data_dir(g)?;
    let file = read_file_config(&dir)?;
    let explicit = g.node.clone().or(file.node);
    let (url, host) = match explicit {
        Some(url) => {
            validate_ws_url(&url).map_err(|e| Error::Config(format!("--node: {e}")))?;
            (url, None)
        }
        None => {
            let host = Host::new(dir.clone())?;
            (host.url(), Some(host))
        }
    };
    let token = token(g, &dir, host.is_some())?;
    let mut opts = ClientOptions::new(url, agent, token);
    opts.role = role;
    opts.reconnect = reconnect;
    if let Some(h) = &host {
        opts.on_unreachable = Some(h.hook());
        opts.max_backoff = std::time::Duration::from_millis(500);
    }
    let client = Client::connect(opts).await?;
    Ok(Connection { client, host })
}
