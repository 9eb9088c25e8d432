//! The JSON documents in `schemas/`, generated from the Rust types so they cannot drift (a test
//! compares them with the files).

use serde_json::{Value, json};

use crate::mcp::McpServer;
use crate::message::Message;
use crate::protocol::{ClientFrame, ServerFrame};

/// `(file name, content)` for every file in `schemas/`.
pub fn all() -> Vec<(&'static str, Value)> {
    let message = serde_json::to_value(schemars::schema_for!(Message)).unwrap_or_default();
    let client = serde_json::to_value(schemars::schema_for!(ClientFrame)).unwrap_or_default();
    let server = serde_json::to_value(schemars::schema_for!(ServerFrame)).unwrap_or_default();
    let wire = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "switchboard wire protocol v1",
        "description": "JSON text frames over ws://HOST:PORT/ws. client: frames a client sends; server: frames a node sends. See docs/PROTOCOL.md.",
        "client": client,
        "server": server,
    });
    let tools = json!({ "tools": McpServer::tool_router().list_all() });
    vec![
        ("message.schema.json", message),
        ("wire.schema.json", wire),
        ("tools.json", tools),
    ]
}
