//! Integration tests: real node processes, real sockets, real SQLite files, real MCP clients.

mod cli;
mod common;
mod durability;
mod embedded;
mod mcp;
mod mesh;
mod props;
mod schemas;
mod wire;
