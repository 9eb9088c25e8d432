//! switchboard: real-time, durable messaging between LLM agents.
//!
//! # Layout
//!
//! - [`message`] — the message record and names, shared by every layer.
//! - [`protocol`] — the WebSocket wire frames (`docs/PROTOCOL.md`).
//! - [`store`] — SQLite: migrations, queries, the group-commit writer thread.
//! - [`node`] — the server: HTTP/WebSocket listener, per-connection sessions, the router.
//! - [`client`] — a reconnecting WebSocket client used by the MCP server, the CLI and bench.
//! - [`mcp`] — the MCP stdio server (`switchboard mcp`).
//! - [`mesh`] — peer links between nodes: authentication, log replication, presence.
//! - [`backbone`] — replication, presence and delivery notices through NATS JetStream.
//! - [`dashboard`] — the web dashboard the node serves at `/`.
//! - [`embedded`] — "use the local node, or host it": the embedded default and takeover.
//! - [`cli`] — the command line: parsing, settings, the human-facing commands.
//! - `bench` — the load generator (`switchboard bench`, cargo feature `bench`).
//! - [`tls`] — TLS for the node's port, clients and peer links; [`plaintext`] — where a
//!   credential may go without it.
//! - [`backoff`] — the one retry-pause rule (client reconnects, mesh dialer).
//! - [`auth`], [`config`], [`error`] — secrets and locks, settings, errors.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod backbone;
pub mod backoff;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod dashboard;
pub mod embedded;
pub mod error;
pub mod mcp;
pub mod mesh;
pub mod message;
pub mod node;
pub mod plaintext;
pub mod protocol;
pub mod retention;
pub mod schemas;
pub mod store;
pub mod tls;
pub mod transport;

pub use error::{Error, Result};
