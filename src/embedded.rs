//! The embedded default: use the local node, or become it.
//!
//! Every `switchboard mcp` (and CLI command) without an explicit `--node` connects to the
//! data dir's node address. When nothing answers there, it tries to host the node itself,
//! in-process: taking the data dir's lock decides who wins, so exactly one process hosts and the
//! others connect to it. When the host exits, its clients see the socket close, their
//! reconnect loop finds nobody, and the first to take the lock hosts next — well within 2 s,
//! because the first retry comes at once and the OS frees the lock the moment the host dies.
//! Nothing is lost: the store is the SQLite file, and a message is acknowledged only after it
//! is committed there.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::client::UnreachableHook;
use crate::config::{NodeConfig, NodeOverrides};
use crate::error::{Error, Result};
use crate::node::Node;

/// A slot for the node this process may host.
#[derive(Clone)]
pub struct Host {
    config: NodeConfig,
    node: Arc<Mutex<Slot>>,
}

/// What the process hosts.
enum Slot {
    /// Nothing yet: the next unreachable node may be hosted here.
    Free,
    Hosting(Node),
    /// The process is exiting: a reconnect after the hosted node stopped must not start it
    /// again (that would hold the data dir's lock that another process is about to take).
    Stopped,
}

impl Host {
    /// A host for the data dir's node (its address from the data dir's config, or the default).
    pub fn new(data_dir: PathBuf) -> Result<Host> {
        let config = NodeConfig::resolve(data_dir, NodeOverrides::default())?;
        Ok(Host {
            config,
            node: Arc::new(Mutex::new(Slot::Free)),
        })
    }

    /// `ws://` (with TLS configured, `wss://`) URL of the data dir's node.
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}", self.config.listen)
    }

    /// Tries to start the node here; quietly does nothing if another process holds the data
    /// dir or the port (then that process is the host).
    pub async fn try_host(&self) {
        let mut slot = self.node.lock().await;
        if !matches!(*slot, Slot::Free) {
            return;
        }
        match Node::start(self.config.clone()).await {
            Ok(node) => {
                tracing::info!(addr = %node.addr(), "no node was running: hosting it in this process");
                *slot = Slot::Hosting(node);
            }
            Err(Error::Locked(_)) => tracing::debug!("another process hosts the node"),
            Err(e) => tracing::debug!(error = %e, "could not host the node"),
        }
    }

    /// The hook for [`crate::client::ClientOptions::on_unreachable`].
    pub fn hook(&self) -> UnreachableHook {
        let host = self.clone();
        Arc::new(move || {
            let host = host.clone();
            Box::pin(async move { host.try_host().await })
        })
    }

    /// Stops the hosted node, if any, so another process can take over; this process hosts
    /// nothing after it.
    pub async fn stop(&self) {
        let mut slot = self.node.lock().await;
        if let Slot::Hosting(node) = std::mem::replace(&mut *slot, Slot::Stopped)
            && let Err(e) = node.stop().await
        {
            tracing::warn!(error = %e, "stopping the hosted node");
        }
    }
}
