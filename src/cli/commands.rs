//! One function per command, and how a command's output ends.

use std::io::{IsTerminal, Read, Write};

use crate::cli::connect::{self, connect};
use crate::cli::signals::Signals;
use crate::cli::{
    AgentCommand, Cli, Command, InboxArgs, MeshCommand, NodeArgs, SendArgs, SyncArg, TailArgs,
    TokenCommand,
};
use crate::config::{NodeConfig, NodeOverrides};
use crate::error::{Error, Result};
use crate::message::{Message, validate_name};
use crate::node::Node;
use crate::protocol::{InboxRequest, Role, SendRequest, TokenAction};
use crate::store::SyncMode;

/// The name CLI commands that act as nobody in particular (who, token) say hello with.
pub(super) const CLI_AGENT: &str = "cli";

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did its work.
    Done,
    /// Whoever read stdout closed it (`| head`): the rest was not wanted, which is no failure.
    StdoutClosed,
    /// `wait` saw no mail before its timeout (exit code 3).
    TimedOut,
}

/// Why a command stopped before its end.
pub(super) enum Stop {
    Failed(Error),
    StdoutClosed,
    TimedOut,
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

pub(super) type Step<T = ()> = std::result::Result<T, Stop>;

/// Writes a line to stdout; a closed pipe stops the command quietly, as it should.
pub(super) fn out(text: &str) -> Step {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Stop::StdoutClosed),
        Err(e) => Err(Error::io("writing to stdout", e).into()),
    }
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> Step {
    out(&serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<Outcome> {
    match dispatch(cli).await {
        Ok(()) => Ok(Outcome::Done),
        Err(Stop::StdoutClosed) => Ok(Outcome::StdoutClosed),
        Err(Stop::TimedOut) => Ok(Outcome::TimedOut),
        Err(Stop::Failed(e)) => Err(e),
    }
}

async fn dispatch(cli: Cli) -> Step {
    let g = cli.global;
    match cli.command {
        Command::Node(a) => node(&g, a).await,
        Command::Mcp(a) => mcp(&g, a).await,
        Command::Send(a) => send(&g, a).await,
        Command::Inbox(a) => inbox(&g, a).await,
        Command::Who(a) => {
            let conn = connect(&g, CLI_AGENT, Role::Cli, false).await?;
            let r = conn.client.presence(None).await;
            conn.close().await;
            let mut r = r?;
            if a.online {
                r.agents.retain(|p| p.online);
            }
            if a.json {
                json(&r)?;
            } else if r.agents.is_empty() && a.online {
                out("No agent is online.")?;
            } else if r.agents.is_empty() {
                out("No agents known yet.")?;
            } else {
                let mut t = format!(
                    "{:<24} {:<8} {:<16} {:<10} {}",
                    "NAME", "ONLINE", "NODE", "STATUS", "LAST SEEN"
                );
                for p in &r.agents {
                    let mut status = p.status.as_str().to_owned();
                    if let Some(text) = &p.status_text {
                        status = format!("{status} ({text})");
                    }
                    t.push_str(&format!(
                        "\n{:<24} {:<8} {:<16} {:<10} {}",
                        p.name,
                        if p.online { "yes" } else { "no" },
                        p.node,
                        status,
                        if p.online {
                            "now".into()
                        } else {
                            p.last_seen.clone().unwrap_or_else(|| "never".into())
                        }
                    ));
                }
                out(&t)?;
            }
            Ok(())
        }
        Command::Tail(a) => tail(&g, a).await,
        Command::Wait(a) => crate::cli::wait::wait(&g, a).await,
        Command::Token(t) => token(&g, t).await,
        Command::Agent(AgentCommand::Add { name }) => agent_add(&g, &name).await,
        Command::Agent(AgentCommand::Forget { name }) => agent_forget(&g, &name).await,
        Command::Mesh(m) => mesh(&g, m).await,
        Command::Prune { dry_run, json } => crate::cli::prune::prune(&g, dry_run, json).await,
        Command::Dashboard(a) => dashboard(&g, a).await,
        Command::Status { json } => {
            let r = crate::cli::status::report(connect::data_dir(&g)?).await?;
            if json {
                out(&crate::cli::status::json(&r)?)
            } else {
                out(&crate::cli::status::text(&r))
            }
        }
        #[cfg(feature = "bench")]
        Command::Bench(a) => bench(&g, a).await,
    }
}

/// `switchboard mcp`. SIGTERM or SIGINT stop it as closing stdin does: pending tool calls are
/// answered at once, and a node hosted here stops in order (sessions told, store flushed, the
/// data dir's lock released) so that another process can take over or a node restart at once.
async fn mcp(g: &crate::cli::Global, a: crate::cli::McpArgs) -> Step {
    let agent = match a.agent {
        Some(a) => a,
        None => default_agent()?,
    };
    validate_name(&agent).map_err(|e| Error::Config(format!("--agent: agent name {e}")))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    let mut signals = Signals::new();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    let push = crate::mcp::PushSettings {
        mode: push_mode(g, a.push)?,
        one_by_one: a.push_burst,
    };
    let conn = tokio::select! {
        c = connect(g, &agent, Role::Agent, true) => c?,
        _ = stop.cancelled() => return Ok(()),
    };
    let host = conn.host.clone();
    let served = crate::mcp::serve_stdio(conn.client, stop, push).await;
    if let Some(h) = host {
        h.stop().await;
    }
    Ok(served?)
}

/// `--push` / `SWITCHBOARD_PUSH`, else config.toml's `push`, else auto.
fn push_mode(g: &crate::cli::Global, flag: Option<String>) -> Result<crate::mcp::PushMode> {
    let (value, from) = match flag {
        Some(v) => (v, "--push".to_owned()),
        None => {
            let dir = connect::data_dir(g)?;
            match crate::config::read_file_config(&dir)?.push {
                Some(v) => (
                    v,
                    format!("{}: push", dir.join(crate::config::CONFIG_FILE).display()),
                ),
                None => return Ok(crate::mcp::PushMode::Auto),
            }
        }
    };
    value
        .parse()
        .map_err(|e| Error::Config(format!("{from}: {e}")))
}

/// The current directory's name, made into a valid agent name.
fn default_agent() -> Result<String> {
    let cwd = std::env::current_dir().map_err(|e| Error::io("reading the current directory", e))?;
    let name: String = cwd
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name
        .trim_start_matches(['.', '-'])
        .chars()
        .take(crate::message::MAX_NAME_LEN)
        .collect::<String>();
    if name.is_empty() {
        return Err(Error::Config(
            "cannot derive an agent name from the current directory; pass --agent".into(),
        ));
    }
    Ok(name)
}

async fn node(g: &crate::cli::Global, a: NodeArgs) -> Step {
    let mut signals = Signals::new();
    let dir = connect::data_dir(g)?;
    let config = NodeConfig::resolve(
        dir,
        NodeOverrides {
            listen: a.listen,
            node_id: a.node_id,
            peers: a.peers,
            mesh_secret_file: a.mesh_secret_file,
            max_frame_bytes: a.max_frame_bytes,
            send_per_second: a.send_rate,
            sync: a.sync.map(|s| match s {
                SyncArg::Normal => SyncMode::Normal,
                SyncArg::Full => SyncMode::Full,
            }),
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            tls_self_signed: a.tls_self_signed,
            tls_ca: g.tls_ca.clone(),
            allow_plaintext: g.allow_plaintext,
            backbone: a.backbone,
            backbone_creds: a.backbone_creds,
            retain_read: a.retain_read,
            retain_unread: a.retain_unread,
            prune_interval: a.prune_interval,
            retain_log: a.retain_log,
            compact_interval: a.compact_interval,
            advertise: a.advertise,
        },
    )?;
    let node = Node::start(config).await?;
    let stop = node.shutdown_token();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    node.run_until_stopped().await?;
    Ok(())
}

async fn send(g: &crate::cli::Global, a: SendArgs) -> Step {
    let kind = a
        .kind
        .parse()
        .map_err(|e| Error::Config(format!("--type: {e} [invalid_argument]")))?;
    let priority = a
        .priority
        .parse()
        .map_err(|e| Error::Config(format!("--priority: {e} [invalid_argument]")))?;
    let data = match &a.data {
        Some(d) => match serde_json::from_str::<serde_json::Value>(d) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => return Err(Error::Config("--data: must be a JSON object".into()).into()),
        },
        None => None,
    };
    validate_name(&a.from).map_err(|e| Error::Config(format!("--as: agent name {e}")))?;
    let body = if a.body == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::io("reading the body from stdin", e))?;
        s
    } else {
        a.body
    };
    let conn = connect(g, &a.from, Role::Cli, false).await?;
    let to = a.to.clone();
    let r = conn
        .client
        .send(SendRequest {
            req: 0,
            id: None,
            to: a.to,
            body,
            subject: a.subject,
            kind,
            priority,
            reply_to: a.reply_to,
            data,
        })
        .await;
    conn.close().await;
    let r = r?;
    if a.json {
        json(&r)?;
    } else {
        out(&format!(
            "{} to {to}: id {} (thread {})",
            status_word(&r.status),
            r.id,
            r.thread_id
        ))?;
    }
    Ok(())
}

fn status_word(s: &crate::protocol::DeliveryStatus) -> &'static str {
    match s {
        crate::protocol::DeliveryStatus::Delivered => "delivered",
        crate::protocol::DeliveryStatus::Queued => "queued",
        crate::protocol::DeliveryStatus::Published => "published",
    }
}

fn show(m: &Message) -> String {
    let mut s = format!(
        "── {}  from {}  to {}  {}",
        m.id, m.from, m.to, m.created_at
    );
    if m.kind != crate::message::MessageType::Message
        || m.priority != crate::message::Priority::Normal
    {
        s.push_str(&format!("  [{} {}]", m.kind, m.priority));
    }
    if let Some(subj) = &m.subject {
        s.push_str(&format!("\nSubject: {subj}"));
    }
    s.push_str(&format!("\n{}", m.body));
    if let Some(d) = &m.data {
        s.push_str(&format!("\ndata: {}", serde_json::Value::Object(d.clone())));
    }
    s
}

async fn inbox(g: &crate::cli::Global, a: InboxArgs) -> Step {
    if !(1..=200).contains(&a.limit) {
        return Err(Error::Config("--limit: must be between 1 and 200".into()).into());
    }
    validate_name(&a.agent).map_err(|e| Error::Config(format!("--as: agent name {e}")))?;
    let conn = connect(g, &a.agent, Role::Cli, false).await?;
    let r = conn
        .client
        .inbox(InboxRequest {
            req: 0,
            unread_only: true,
            limit: if a.count { 1 } else { a.limit },
            from: a.from,
            topic: a.topic,
            mark_read: false,
        })
        .await;
    let r = match r {
        Ok(r) if !a.peek && !a.count && !r.messages.is_empty() => {
            let ids = r.messages.iter().map(|m| m.id.clone()).collect();
            conn.client.mark_read(ids, false).await.map(|_| r)
        }
        other => other,
    };
    conn.close().await;
    let r = r?;
    if a.count {
        out(&(r.messages.len() as u32 + r.unread_remaining).to_string())?;
    } else if a.json {
        json(&r)?;
    } else if r.messages.is_empty() {
        out("No unread messages.")?;
    } else {
        let shown: Vec<String> = r.messages.iter().map(show).collect();
        out(&shown.join("\n\n"))?;
        if r.unread_remaining > 0 {
            out(&format!("\n({} more unread)", r.unread_remaining))?;
        }
    }
    Ok(())
}

async fn tail(g: &crate::cli::Global, a: TailArgs) -> Step {
    validate_name(&a.agent).map_err(|e| Error::Config(format!("--as: agent name {e}")))?;
    // Caught from here on: Ctrl-C while connecting, or before the first push, stops cleanly too.
    let mut signals = Signals::new();
    let conn = tokio::select! {
        c = connect(g, &a.agent, Role::Watch, true) => c?,
        _ = signals.recv() => return Ok(()),
    };
    let followed = follow(&conn, &a, &mut signals).await;
    conn.close().await;
    followed
}

/// Prints the agent's unread mail, then every push until Ctrl-C.
async fn follow(conn: &connect::Connection, a: &TailArgs, signals: &mut Signals) -> Step {
    let mut pushes = conn.client.pushes();
    if std::io::stderr().is_terminal() {
        eprintln!("following {}'s messages; Ctrl-C to stop", a.agent);
    }
    let print = |m: &Message| -> Step {
        if a.json {
            out(&serde_json::to_string(m).map_err(|e| Error::Invalid(e.to_string()))?)
        } else {
            out(&format!("{}\n", show(m)))
        }
    };
    // The node replays unread mail as soon as the connection opens, possibly before the
    // subscription above: show it from the inbox (leaving it unread), then follow pushes.
    let mut seen = std::collections::HashSet::new();
    let unread = conn.client.inbox(InboxRequest::unread(200)).await?;
    for m in &unread.messages {
        seen.insert(m.id.clone());
        print(m)?;
    }
    if unread.unread_remaining > 0 {
        tracing::warn!(
            "{} more unread messages are not shown; see `switchboard inbox`",
            unread.unread_remaining
        );
    }
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            p = pushes.recv() => match p {
                Ok(m) => {
                    // Reconnects replay unread mail; show each message once.
                    if seen.insert(m.id.clone()) {
                        print(&m)?;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("{n} messages were not shown (terminal too slow); they are in the inbox");
                }
                Err(_) => break,
            }
        }
    }
    Ok(())
}

async fn token(g: &crate::cli::Global, t: TokenCommand) -> Step {
    let (action, name, as_json, operator) = match t {
        TokenCommand::Issue { name, operator } => (TokenAction::Issue, Some(name), false, operator),
        TokenCommand::Revoke { name } => (TokenAction::Revoke, Some(name), false, false),
        TokenCommand::List { json } => (TokenAction::List, None, json, false),
    };
    if let Some(n) = &name {
        validate_name(n).map_err(|e| Error::Config(format!("NAME: agent name {e}")))?;
    }
    let conn = connect(g, CLI_AGENT, Role::Cli, false).await?;
    let r = if operator {
        conn.client.operator_token(name.unwrap_or_default()).await
    } else {
        conn.client.token(action, name).await
    };
    conn.close().await;
    let r = r?;
    match action {
        TokenAction::Issue => out(r.token.as_deref().unwrap_or_default())?,
        TokenAction::Revoke => out(&format!("revoked the token of {}", r.names.join(", ")))?,
        TokenAction::List if as_json => json(&r.names)?,
        TokenAction::List if r.names.is_empty() => out("No tokens issued.")?,
        TokenAction::List => out(&r.names.join("\n"))?,
    }
    Ok(())
}

/// `switchboard dashboard`: the link is the last line of stdout, for scripts.
async fn dashboard(g: &crate::cli::Global, a: crate::cli::DashboardArgs) -> Step {
    let (answer, link) = crate::cli::dashboard::mint(g, &a).await?;
    out(&format!(
        "Open this link to log in to the dashboard as {} (it works once, for {} s):",
        answer.agent, answer.expires_in_seconds
    ))?;
    out(&link)?;
    if a.open {
        crate::cli::dashboard::open(&link);
    }
    Ok(())
}

/// Connecting as a watcher registers and stores the name (as `tail --as` does) without going
/// online, so no new wire op is needed; the connection ends right after the welcome.
async fn agent_add(g: &crate::cli::Global, name: &str) -> Step {
    validate_name(name).map_err(|e| Error::Config(format!("NAME: agent name {e}")))?;
    let conn = connect(g, name, Role::Watch, false).await?;
    let known = conn.client.welcomed_as().to_owned();
    conn.close().await;
    out(&format!(
        "{known} is known: mail to {known} is stored until it connects"
    ))
}

async fn agent_forget(g: &crate::cli::Global, name: &str) -> Step {
    validate_name(name).map_err(|e| Error::Config(format!("NAME: agent name {e}")))?;
    let conn = connect(g, CLI_AGENT, Role::Cli, false).await?;
    let r = conn.client.forget(name.to_owned()).await;
    conn.close().await;
    let r = r?;
    let mail = match r.unread_dropped {
        0 => String::new(),
        1 => "; its 1 unread message is gone".to_owned(),
        n => format!("; its {n} unread messages are gone"),
    };
    out(&format!(
        "forgot {}: no longer known, on any node{mail}",
        r.name
    ))
}

async fn mesh(g: &crate::cli::Global, m: crate::cli::MeshArgs) -> Step {
    use crate::cli::mesh;
    match m.command {
        None => {
            let r = mesh::report(g).await?;
            if m.json {
                json(&r)
            } else {
                out(&mesh::text(&r))
            }
        }
        Some(MeshCommand::Forget {
            peer,
            json: as_json,
        }) => {
            let r = mesh::forget(g, &peer).await?;
            if as_json {
                json(&r)
            } else {
                out(&mesh::forgot_text(&r))
            }
        }
    }
}

#[cfg(feature = "bench")]
async fn bench(g: &crate::cli::Global, a: crate::cli::BenchArgs) -> Step {
    let mut opts = a.into_options(None);
    opts.check()?;
    // The mesh mode starts its own nodes; only a single-node run measures `--node`.
    if opts.mesh == 0
        && let Some(url) = &g.node
    {
        let dir = connect::data_dir(g)?;
        let token = match &g.token {
            Some(t) => t.clone(),
            None => crate::auth::read_secret(&dir)?.ok_or_else(|| {
                Error::Config("--node given: pass --token (the node's local secret)".into())
            })?,
        };
        let file = crate::config::read_file_config(&dir)?;
        opts.node = Some(crate::bench::Remote {
            url: url.clone(),
            token,
            tls: Some(connect::client_tls(g, &dir, &file)?),
            child_env: [
                Some(("SWITCHBOARD_DATA_DIR", Some(dir.clone().into_os_string()))),
                Some((
                    "SWITCHBOARD_TLS_CA",
                    g.tls_ca.clone().map(|p| p.into_os_string()),
                )),
                g.allow_plaintext
                    .then(|| ("SWITCHBOARD_ALLOW_PLAINTEXT", Some("true".into()))),
            ]
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect(),
            allow_plaintext: g.allow_plaintext || file.allow_plaintext,
        });
    }
    Ok(crate::bench::run(opts).await?)
}
