//! The command line: clap definitions, settings resolution, and one function per command.
//! Everything that prints for people lives here; `switchboard mcp` prints nothing to stdout
//! but the MCP stream.

mod commands;
mod connect;
mod dashboard;
mod mesh;
mod prune;
mod signals;
mod status;
mod wait;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use commands::{Outcome, run};
pub use connect::data_dir as data_dir_of;

/// Real-time, durable messaging between LLM agents.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about = None)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Data dir (store, secret, lock, config.toml) [default: the platform data dir]
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node to connect to [default: ws://127.0.0.1:8765, hosted in-process if none runs]
    #[arg(long, env = "SWITCHBOARD_NODE", global = true, value_name = "URL")]
    pub node: Option<String>,
    /// Token (an agent token, or the local secret) [default: DATA_DIR/local.secret]
    #[arg(long, env = "SWITCHBOARD_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the token.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// PEM bundle of extra roots to trust for wss:// nodes (and a node's peer links); a
    /// client of a data dir also trusts that data dir's node's own certificate.
    #[arg(long, env = "SWITCHBOARD_TLS_CA", global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Permit sending a token over plain ws:// to another machine (and, for `node`, plain peer
    /// links to and from other machines). Refused otherwise.
    #[arg(long, env = "SWITCHBOARD_ALLOW_PLAINTEXT", global = true)]
    pub allow_plaintext: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: WebSocket server + SQLite store (+ mesh links to peers).
    Node(NodeArgs),
    /// Run the MCP stdio server for one agent.
    Mcp(McpArgs),
    /// Send a message from the command line.
    Send(SendArgs),
    /// Print an agent's unread messages (and mark them read unless --peek).
    Inbox(InboxArgs),
    /// Print presence: every known agent, online or not.
    Who(WhoArgs),
    /// Follow an agent's incoming messages live until Ctrl-C.
    Tail(TailArgs),
    /// Block until the agent has unread mail (exit 0) or the timeout passes (exit 3); marks
    /// nothing read (for hooks).
    Wait(WaitArgs),
    /// Manage per-agent tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Which node the data dir belongs to (listen address, id) and whether it runs.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make agent names known before they first connect, or forget them.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// The mesh as the data dir's node sees it: every node, how it is reached, link state, lag.
    Mesh(MeshArgs),
    /// Delete now what the node's retention deletes (--dry-run: only count it); needs the
    /// local secret.
    Prune {
        /// Count what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time login link for the web dashboard of the running node (last line).
    Dashboard(DashboardArgs),
    /// Load generator: latency percentiles and throughput of a node.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
}

/// `switchboard node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Address to listen on [default: 127.0.0.1:8765]
    #[arg(long, env = "SWITCHBOARD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// This node's id in the mesh [default: the host name]
    #[arg(long, env = "SWITCHBOARD_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// A peer node's URL (repeatable).
    #[arg(long = "peer", value_name = "URL")]
    pub peers: Vec<String>,
    /// File holding the shared mesh secret.
    #[arg(long, value_name = "FILE")]
    pub mesh_secret_file: Option<PathBuf>,
    /// Replicate through this NATS JetStream server (nats:// or tls://; repeatable seed URLs)
    /// instead of direct peer links.
    #[arg(long = "backbone", value_name = "URL")]
    pub backbone: Vec<String>,
    /// A NATS credentials file for the backbone.
    #[arg(long, value_name = "FILE")]
    pub backbone_creds: Option<PathBuf>,
    /// Largest accepted frame in bytes [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Messages per second each sender may send; 0 turns the limit off [default: 50]
    #[arg(long, value_name = "N")]
    pub send_rate: Option<u32>,
    /// Commit durability: normal (survives a process crash) or full (also power loss).
    #[arg(long, value_enum)]
    pub sync: Option<SyncArg>,
    /// Serve TLS only (wss://, https://) with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS only with a certificate made once for this host (DATA_DIR/tls/); its
    /// SHA-256 fingerprint is logged at start and shown in /health.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls_self_signed: bool,
    /// Delete read messages this long after every recipient read them (30d, 12h, 90m, 45s,
    /// or never) [default: config `[retention] read`, else 30d]
    #[arg(long, value_name = "DURATION")]
    pub retain_read: Option<String>,
    /// Delete unread messages this long after they were sent [default: config
    /// `[retention] unread`, else never]
    #[arg(long, value_name = "DURATION")]
    pub retain_unread: Option<String>,
    /// How often retention passes run [default: a quarter of the shortest retention, at most
    /// 30 s]. For tests.
    #[arg(long, value_name = "DURATION", hide = true)]
    pub prune_interval: Option<String>,
    /// Keep the replication log this long for a peer that is away (7d, 12h, or never); past
    /// it the peer catches up from a snapshot of the current state [default: config
    /// `[retention] log`, else 7d]
    #[arg(long, value_name = "DURATION")]
    pub retain_log: Option<String>,
    /// How often the replication log is compacted [default: 30s]. For tests.
    #[arg(long, value_name = "DURATION", hide = true)]
    pub compact_interval: Option<String>,
    /// The URL peers should dial for this node [default: the URL they dialed, or the address
    /// this node dialed from with its port]; `none` for a node nobody can dial (behind NAT):
    /// it only dials out, and its peers relay its mail and presence.
    #[arg(long, env = "SWITCHBOARD_ADVERTISE", value_name = "URL|none")]
    pub advertise: Option<String>,
}

/// `--sync` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SyncArg {
    /// Survives a crash of the process.
    Normal,
    /// Also survives power loss (fsync on every group commit).
    Full,
}

/// `switchboard mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Agent name [default: the name of the current directory]
    #[arg(long, env = "SWITCHBOARD_AGENT", value_name = "NAME")]
    pub agent: Option<String>,
    /// Push arriving mail into the session as Claude Code channel events: auto (when the
    /// client is Claude Code), channel (always) or off [default: config `push`, else auto]
    #[arg(long, env = "SWITCHBOARD_PUSH", value_name = "MODE")]
    pub push: Option<String>,
    /// With push on: messages of a burst pushed one by one per 2 s window before the rest
    /// is summarised.
    #[arg(long, value_name = "N", default_value_t = crate::mcp::push::ONE_BY_ONE)]
    pub push_burst: usize,
}

/// `switchboard send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Send as this agent.
    #[arg(long = "as", value_name = "NAME")]
    pub from: String,
    /// Agent name, #topic, or * (every known agent).
    #[arg(long, value_name = "TO")]
    pub to: String,
    /// Subject line.
    #[arg(long)]
    pub subject: Option<String>,
    /// message, task, result, question, answer or event.
    #[arg(long = "type", default_value = "message")]
    pub kind: String,
    /// low, normal, high or urgent.
    #[arg(long, default_value = "normal")]
    pub priority: String,
    /// Id of the message this answers.
    #[arg(long, value_name = "ID")]
    pub reply_to: Option<String>,
    /// A JSON object to attach.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The message; `-` reads it from stdin.
    pub body: String,
}

/// `switchboard inbox`.
#[derive(Debug, Args)]
pub struct InboxArgs {
    /// Whose inbox.
    #[arg(long = "as", value_name = "NAME")]
    pub agent: String,
    /// Leave the messages unread.
    #[arg(long)]
    pub peek: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// At most this many (1-200).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only from this agent.
    #[arg(long)]
    pub from: Option<String>,
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Print only the number of unread messages (cheap; for hooks).
    #[arg(long, conflicts_with = "json")]
    pub count: bool,
}

/// `switchboard who`.
#[derive(Debug, Args)]
pub struct WhoArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Only agents online now.
    #[arg(long)]
    pub online: bool,
}

/// `switchboard tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Whose messages.
    #[arg(long = "as", value_name = "NAME")]
    pub agent: String,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// `switchboard wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Whose inbox.
    #[arg(long = "as", value_name = "NAME")]
    pub agent: String,
    /// Give up after this long (30s, 5m, or seconds; 0 only looks) [default: wait forever]
    #[arg(long, value_name = "DURATION", value_parser = wait::parse_timeout)]
    pub timeout: Option<std::time::Duration>,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
    /// Print what a Stop hook answers: {"decision":"block","reason":SUMMARY} on mail, {} on
    /// timeout.
    #[arg(long, conflicts_with = "json")]
    pub stop_hook: bool,
}

/// `switchboard token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new token bound to NAME (replaces its old one).
    Issue {
        /// The agent.
        name: String,
        /// An operator token: it also logs in to the web dashboard (as NAME).
        #[arg(long)]
        operator: bool,
    },
    /// Revoke NAME's token.
    Revoke {
        /// The agent.
        name: String,
    },
    /// List agents holding tokens.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `switchboard agent ...`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Make NAME known: mail to it is stored until it connects.
    Add {
        /// The agent.
        name: String,
    },
    /// Forget NAME (no session may be open): its entry, token, subscriptions and unread mail
    /// go, on every node; messages it sent or got stay in the other agents' threads.
    Forget {
        /// The agent.
        name: String,
    },
}

/// `switchboard dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// The name the dashboard writes as [default: human; an operator token's own name]
    #[arg(long = "as", value_name = "NAME")]
    pub agent: Option<String>,
    /// Open the link in the desktop's browser too.
    #[arg(long)]
    pub open: bool,
    /// How long the link works (e.g. 30s, 5m; at most 10m) [default: 2m]
    #[arg(long, value_name = "DURATION", value_parser = wait::parse_timeout)]
    pub ttl: Option<std::time::Duration>,
}

/// `switchboard mesh [forget NODE]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MeshArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Instead of listing, change something.
    #[command(subcommand)]
    pub command: Option<MeshCommand>,
}

/// `switchboard mesh ...`.
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Drop a departed node now, instead of dialing it for an hour (needs the local secret).
    Forget {
        /// The node id.
        #[arg(value_name = "NODE")]
        peer: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `switchboard bench`.
#[cfg(feature = "bench")]
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Agents connected for the latency and throughput phases.
    #[arg(long, default_value_t = 50)]
    pub agents: usize,
    /// Paced send rate for the latency phase, messages/s.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds for the latency phase and for the throughput phase each.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Sends in flight per sender in the throughput phase.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Extra idle connections to open to measure memory per connection (0 skips).
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Round trips through two `switchboard mcp` processes (0 skips).
    #[arg(long, default_value_t = 500)]
    pub mcp_rounds: usize,
    /// Sends timed to their channel event at a `switchboard mcp --push channel` (0 skips).
    #[arg(long, default_value_t = 500)]
    pub channel_rounds: usize,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
    /// Mesh mode: start this many nodes in a full mesh and measure cross-node delivery,
    /// presence convergence and reconnection after a node restart (`--agents` per node).
    #[arg(long, default_value_t = 0, value_name = "NODES")]
    pub mesh: usize,
    /// Mesh mode: nodes with --tls-self-signed linked over wss:// and clients trusting them
    /// (on), or plain and TLS runs alternating with a side-by-side table (compare).
    #[arg(long, value_enum, default_value = "off")]
    pub tls: BenchTls,
    /// With --tls compare: how many plain + TLS pairs to run.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Mesh mode: the nodes replicate through a nats-server -js the bench starts (--backbone)
    /// instead of linking every pair.
    #[arg(long)]
    pub backbone: bool,
}

/// `bench --tls` values.
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchTls {
    /// Plain ws://.
    Off,
    /// wss:// with self-signed certificates.
    On,
    /// Plain and TLS alternating, side by side.
    Compare,
}

#[cfg(feature = "bench")]
impl BenchArgs {
    /// The bench's own options; `node` is the running node to measure, if any.
    pub fn into_options(self, node: Option<crate::bench::Remote>) -> crate::bench::Options {
        crate::bench::Options {
            agents: self.agents,
            rate: self.rate,
            seconds: self.seconds,
            window: self.window,
            idle: self.idle,
            mcp_rounds: self.mcp_rounds,
            channel_rounds: self.channel_rounds,
            json: self.json,
            mesh: self.mesh,
            node,
            tls: match self.tls {
                BenchTls::Off => crate::bench::TlsMode::Off,
                BenchTls::On => crate::bench::TlsMode::On,
                BenchTls::Compare => crate::bench::TlsMode::Compare,
            },
            rounds: self.rounds,
            backbone: self.backbone,
        }
    }
}
