//! Integration tests: real node processes, real sockets, real SQLite files, real MCP clients.

mod backbone;
mod chaos;
mod cli;
mod common;
mod data_dir_node;
mod durability;
mod embedded;
mod first_minutes;
mod forget;
mod hardening;
mod identity;
mod limits;
mod mcp;
mod mesh;
mod mesh_links;
mod mesh_ops;
mod names_mesh;
mod props;
mod push;
mod schemas;
mod shutdown;
mod tls;
mod tls_mesh;
mod unmeshed;
mod wake;
mod wire;
