//! Settings: flags win over environment variables (clap reads both), which win over
//! `DATA_DIR/config.toml`, which wins over the defaults here. Resolved once, at start-up, into
//! plain structs so the rest of the program never looks at a flag or a file again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::retention::retention_of;
pub use crate::retention::{Compaction, Retention, parse_retention};

mod advertise;
pub use advertise::Advertise;
pub mod backbone;
pub use backbone::BackboneConfig;

/// Where a node listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8765";
/// The node clients use when nothing says otherwise.
pub const DEFAULT_NODE_URL: &str = "ws://127.0.0.1:8765";
/// The config file's name inside the data dir.
pub const CONFIG_FILE: &str = "config.toml";
/// The SQLite file's name inside the data dir.
pub const DB_FILE: &str = "switchboard.db";

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// WAL with `synchronous=NORMAL`: a commit survives a crash of the process (kill -9);
    /// a power loss or OS crash may lose the last commits, never the file.
    #[default]
    Normal,
    /// WAL with `synchronous=FULL`: every group commit is fsynced, so it also survives power loss.
    Full,
}

/// `DATA_DIR/config.toml`. Unknown keys are an error: a typo must not silently do nothing.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `host:port` the node listens on.
    pub listen: Option<String>,
    /// The node's id in the mesh.
    pub node_id: Option<String>,
    /// Peer node URLs.
    #[serde(default)]
    pub peers: Vec<String>,
    /// File holding the mesh secret.
    pub mesh_secret_file: Option<PathBuf>,
    /// The node clients connect to.
    pub node: Option<String>,
    /// Durability of commits.
    pub sync: Option<SyncMode>,
    /// `switchboard mcp --push` (auto, channel or off), checked where it is used.
    pub push: Option<String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: FileLimits,
    /// TLS on the node's port, and extra roots for clients and peer links.
    #[serde(default)]
    pub tls: FileTls,
    /// Permit credentials and peer links over plain `ws://` to other machines.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Replicate through NATS JetStream instead of direct peer links.
    #[serde(default)]
    pub backbone: backbone::FileBackbone,
    /// How long messages are kept.
    #[serde(default)]
    pub retention: FileRetention,
    /// The URL peers should dial for this node, or `none` (see [`Advertise`]).
    pub advertise: Option<String>,
}

/// The `[retention]` table: durations as `30d`, `12h`, `90m`, `45s`, or `never`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetention {
    /// Read messages are deleted this long after every recipient read them.
    pub read: Option<String>,
    /// Unread messages are deleted this long after they were sent.
    pub unread: Option<String>,
    /// A peer that is away keeps its replication backlog this long.
    pub log: Option<String>,
}

/// The `[tls]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// PEM certificate chain the node serves.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Make and serve a self-signed certificate (DATA_DIR/tls/).
    #[serde(default)]
    pub self_signed: bool,
    /// PEM bundle of extra roots to trust (clients and peer links).
    pub ca: Option<PathBuf>,
}

/// Where a node's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// The operator's PEM files.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// DATA_DIR/tls/cert.pem and key.pem, made by the node on its first start.
    SelfSigned,
}

/// The `[limits]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Largest accepted WebSocket frame, bytes.
    pub max_frame_bytes: Option<usize>,
    /// Messages per second each sender may send (0: unlimited).
    pub send_per_second: Option<u32>,
    /// Burst allowance above the rate.
    pub send_burst: Option<u32>,
    /// Replies one thread may get per minute before the loop guard refuses more (0: off).
    pub thread_per_minute: Option<u32>,
    /// Seconds a new connection has to send its HTTP request, and then to say hello.
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds between keep-alive pings; a client silent for two intervals is cut off.
    pub ping_interval_secs: Option<u64>,
    /// Frames queued for one connection before it counts as too slow and is cut off.
    pub outbound_queue: Option<usize>,
    /// Most simultaneous connections.
    pub max_connections: Option<usize>,
}

/// Limits a node enforces, with their defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted frame (default 1 MiB).
    pub max_frame_bytes: usize,
    /// Sender rate; 0 turns the limit off.
    pub send_per_second: u32,
    /// Sender burst.
    pub send_burst: u32,
    /// Loop guard: messages per thread per minute; 0 turns it off.
    pub thread_per_minute: u32,
    /// Time to send the HTTP request headers, and then to say hello.
    pub handshake_timeout: Duration,
    /// Keep-alive ping interval.
    pub ping_interval: Duration,
    /// Per-connection outbound queue.
    pub outbound_queue: usize,
    /// Connection cap.
    pub max_connections: usize,
    /// How long messages are kept.
    pub retention: Retention,
    /// How long the replication log is kept for peers.
    pub compaction: Compaction,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            send_per_second: 50,
            send_burst: 200,
            thread_per_minute: 60,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(15),
            outbound_queue: 1024,
            max_connections: 16_384,
            retention: Retention::default(),
            compaction: Compaction::default(),
        }
    }
}

impl Limits {
    fn merge(file: &FileLimits) -> Result<Limits> {
        let d = Limits::default();
        let l = Limits {
            max_frame_bytes: file.max_frame_bytes.unwrap_or(d.max_frame_bytes),
            send_per_second: file.send_per_second.unwrap_or(d.send_per_second),
            send_burst: file.send_burst.unwrap_or(d.send_burst),
            thread_per_minute: file.thread_per_minute.unwrap_or(d.thread_per_minute),
            handshake_timeout: file
                .handshake_timeout_secs
                .map_or(d.handshake_timeout, Duration::from_secs),
            ping_interval: file
                .ping_interval_secs
                .map_or(d.ping_interval, Duration::from_secs),
            outbound_queue: file.outbound_queue.unwrap_or(d.outbound_queue),
            max_connections: file.max_connections.unwrap_or(d.max_connections),
            retention: d.retention,
            compaction: d.compaction,
        };
        if l.max_frame_bytes < 1024 {
            return Err(Error::Config(
                "limits.max_frame_bytes must be at least 1024".into(),
            ));
        }
        if l.outbound_queue == 0 || l.max_connections == 0 {
            return Err(Error::Config(
                "limits.outbound_queue and limits.max_connections must be positive".into(),
            ));
        }
        if l.ping_interval.is_zero() || l.handshake_timeout.is_zero() {
            return Err(Error::Config(
                "limits.ping_interval_secs and limits.handshake_timeout_secs must be positive"
                    .into(),
            ));
        }
        Ok(l)
    }
}

/// Everything a node needs, resolved.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The data dir (store, secret, lock, config).
    pub data_dir: PathBuf,
    /// `host:port`; port 0 picks a free one.
    pub listen: String,
    /// The node's id in the mesh.
    pub node_id: String,
    /// Peer URLs.
    pub peers: Vec<String>,
    /// File holding the mesh secret.
    pub mesh_secret_file: Option<PathBuf>,
    /// Durability of commits.
    pub sync: SyncMode,
    /// Limits.
    pub limits: Limits,
    /// TLS on the port (`None`: plain).
    pub tls: Option<TlsSource>,
    /// Extra roots the node's peer links trust (they accept any certificate when the
    /// channel-bound mesh proof holds, but log whether it verified).
    pub tls_ca: Vec<PathBuf>,
    /// Permit plain peer links to and from other machines.
    pub allow_plaintext: bool,
    /// What peers are told about dialing this node.
    pub advertise: Advertise,
    /// The NATS JetStream backbone, if the node replicates through one.
    pub backbone: Option<BackboneConfig>,
}

/// Command-line (and env) overrides for a node; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct NodeOverrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--node-id`.
    pub node_id: Option<String>,
    /// `--peer`, repeatable; replaces the config's list when given.
    pub peers: Vec<String>,
    /// `--mesh-secret-file`.
    pub mesh_secret_file: Option<PathBuf>,
    /// `--max-frame-bytes`.
    pub max_frame_bytes: Option<usize>,
    /// `--send-rate`.
    pub send_per_second: Option<u32>,
    /// `--sync`.
    pub sync: Option<SyncMode>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-self-signed`.
    pub tls_self_signed: bool,
    /// `--tls-ca` (or `SWITCHBOARD_TLS_CA`).
    pub tls_ca: Option<PathBuf>,
    /// `--allow-plaintext`.
    pub allow_plaintext: bool,
    /// `--backbone`, repeatable; replaces the config's list when given.
    pub backbone: Vec<String>,
    /// `--backbone-creds`.
    pub backbone_creds: Option<PathBuf>,
    /// `--retain-read`, as typed.
    pub retain_read: Option<String>,
    /// `--retain-unread`, as typed.
    pub retain_unread: Option<String>,
    /// `--prune-interval` (hidden, for tests), as typed.
    pub prune_interval: Option<String>,
    /// `--retain-log`, as typed.
    pub retain_log: Option<String>,
    /// `--compact-interval` (hidden, for tests), as typed.
    pub compact_interval: Option<String>,
    /// `--advertise`.
    pub advertise: Option<String>,
}

/// The platform data dir (e.g. `~/.local/share/switchboard`).
pub fn default_data_dir() -> Result<PathBuf> {
    dirs::data_dir()
        .map(|d| d.join("switchboard"))
        .ok_or_else(|| {
            Error::Config(
                "cannot find a data dir for this platform; pass --data-dir or set SWITCHBOARD_DATA_DIR"
                    .into(),
            )
        })
}

/// Reads `DATA_DIR/config.toml`, or the defaults when there is none.
pub fn read_file_config(data_dir: &Path) -> Result<FileConfig> {
    let path = data_dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "{}: {}",
                path.display(),
                e.message().replace('\n', " ")
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

impl NodeConfig {
    /// Resolves a node's settings from overrides, the data dir's config file and defaults.
    pub fn resolve(data_dir: PathBuf, o: NodeOverrides) -> Result<NodeConfig> {
        let file = read_file_config(&data_dir)?;
        let tls = tls_source(&o, &file.tls)?;
        let mut limits = Limits::merge(&file.limits)?;
        if let Some(m) = o.max_frame_bytes {
            if m < 1024 {
                return Err(Error::Config(
                    "--max-frame-bytes must be at least 1024".into(),
                ));
            }
            limits.max_frame_bytes = m;
        }
        if let Some(r) = o.send_per_second {
            limits.send_per_second = r;
        }
        let d = Retention::default();
        let every = match o.prune_interval.as_deref() {
            Some(t) => {
                parse_retention(t).map_err(|e| Error::Config(format!("--prune-interval: {e}")))?
            }
            None => None,
        };
        limits.retention = Retention {
            every,
            read: retention_of(
                o.retain_read.as_deref(),
                file.retention.read.as_deref(),
                "read",
                d.read,
            )?,
            unread: retention_of(
                o.retain_unread.as_deref(),
                file.retention.unread.as_deref(),
                "unread",
                d.unread,
            )?,
        };
        limits.compaction = Compaction::resolve(
            o.retain_log.as_deref(),
            file.retention.log.as_deref(),
            o.compact_interval.as_deref(),
        )?;
        let listen = o
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        validate_listen(&listen)?;
        let node_id = o
            .node_id
            .or(file.node_id)
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
        crate::message::validate_name(&node_id)
            .map_err(|e| Error::Config(format!("node id {e}")))?;
        let peers = if o.peers.is_empty() {
            file.peers
        } else {
            o.peers
        };
        let allow_plaintext = o.allow_plaintext || file.allow_plaintext;
        for p in &peers {
            validate_ws_url(p).map_err(|e| Error::Config(format!("peer {e}")))?;
            crate::plaintext::check_peer(p, allow_plaintext)?;
        }
        let advertise = match o.advertise.or(file.advertise) {
            Some(a) => Advertise::parse(&a, tls.is_some())?,
            None => Advertise::Default,
        };
        let backbone =
            backbone::resolve(o.backbone, o.backbone_creds, file.backbone, allow_plaintext)?;
        if backbone.is_some() && !peers.is_empty() {
            return Err(Error::Config(
                "--backbone replaces --peer: a node replicates through NATS or through direct \
                 links, not both (drop the peers, or the backbone)"
                    .into(),
            ));
        }
        Ok(NodeConfig {
            backbone,
            data_dir,
            listen,
            node_id,
            peers,
            mesh_secret_file: o.mesh_secret_file.or(file.mesh_secret_file),
            sync: o.sync.or(file.sync).unwrap_or_default(),
            limits,
            tls,
            tls_ca: o.tls_ca.or(file.tls.ca).into_iter().collect(),
            allow_plaintext,
            advertise,
        })
    }

    /// Defaults for a data dir and listen address: what tests and the embedded node use.
    pub fn for_data_dir(data_dir: PathBuf, listen: &str) -> Result<NodeConfig> {
        NodeConfig::resolve(
            data_dir,
            NodeOverrides {
                listen: Some(listen.into()),
                ..Default::default()
            },
        )
    }
}

/// The certificate flags win over the `[tls]` table as a whole, so a flag never mixes with
/// half of the file's setting.
fn tls_source(o: &NodeOverrides, file: &FileTls) -> Result<Option<TlsSource>> {
    let flags = o.tls_cert.is_some() || o.tls_key.is_some() || o.tls_self_signed;
    let (cert, key, self_signed, whence) = if flags {
        (
            o.tls_cert.clone(),
            o.tls_key.clone(),
            o.tls_self_signed,
            ("--tls-cert", "--tls-key", "--tls-self-signed"),
        )
    } else {
        (
            file.cert.clone(),
            file.key.clone(),
            file.self_signed,
            ("[tls] cert", "[tls] key", "[tls] self_signed"),
        )
    };
    let (c, k, s) = whence;
    match (cert, key, self_signed) {
        (None, None, false) => Ok(None),
        (None, None, true) => Ok(Some(TlsSource::SelfSigned)),
        (Some(cert), Some(key), false) => Ok(Some(TlsSource::Files { cert, key })),
        (Some(_), Some(_), true) => Err(Error::Config(format!(
            "{s} makes its own certificate: leave out {c} and {k}, or {s}"
        ))),
        (Some(_), None, _) => Err(Error::Config(format!(
            "{c} needs {k} (the certificate's private key, PEM)"
        ))),
        (None, Some(_), _) => Err(Error::Config(format!(
            "{k} needs {c} (the certificate chain, PEM)"
        ))),
    }
}

fn validate_listen(listen: &str) -> Result<()> {
    let Some((host, port)) = listen.rsplit_once(':') else {
        return Err(Error::Config(format!(
            "listen address '{listen}' must be HOST:PORT (e.g. 127.0.0.1:8765)"
        )));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(Error::Config(format!(
            "listen address '{listen}' must be HOST:PORT with a port from 0 to 65535"
        )));
    }
    Ok(())
}

/// Checks that a node URL is `ws://` or `wss://` with a host.
pub fn validate_ws_url(url: &str) -> std::result::Result<(), String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| format!("URL '{url}' must start with ws:// or wss://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("URL '{url}' has no host"));
    }
    Ok(())
}

/// The WebSocket endpoint for a node URL: `/ws` is added when the URL has no path.
pub fn ws_endpoint(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, r)| r);
    if after_scheme.contains('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/ws")
    }
}

#[cfg(test)]
mod tests;
