//! `switchboard mesh`: every node the data dir's node (or `--node`) knows, how each is reached,
//! its link's state and lag, and node-id conflicts. Read from the node's `/health`, as
//! `switchboard status` does, so asking changes nothing and hosts no node.
//! `switchboard mesh forget NODE`: drops a departed node at that node, over a connection with
//! the local secret (the operation is the node's `mesh_forget`).

use serde::{Deserialize, Serialize};

use crate::cli::Global;
use crate::cli::connect::{self, connect};
use crate::error::{Error, Result};
use crate::mesh::{Conflict, NodeView, Route};
use crate::protocol::{MeshForgetResult, Role};

/// What `switchboard mesh` shows: the node asked, what it knows, and the conflicts it refused.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// The node that answered.
    pub node_id: String,
    /// Its instance (data dir).
    pub instance: Option<String>,
    /// Every node it knows.
    #[serde(default)]
    pub nodes: Vec<NodeView>,
    /// Node ids claimed by two instances, refused there.
    #[serde(default)]
    pub conflicts: Vec<Conflict>,
    /// The NATS backbone, when the node replicates through one.
    #[serde(default)]
    pub backbone: Option<crate::backbone::BackboneStatus>,
}

const MESH_ASKS: &str = "`switchboard mesh` asks the running node what it knows";

/// The URL of the node to ask: `--node` (or `node` in config.toml), else the data dir's node,
/// which must be running (a node hosted just to answer would know no other node, and a link
/// to it would die with this command). `why` says why to the person, after "not running".
pub(super) async fn node_url(g: &Global, why_running: &str) -> Result<String> {
    let dir = connect::data_dir(g)?;
    if let Some(url) = g
        .node
        .clone()
        .or(crate::config::read_file_config(&dir)?.node)
    {
        crate::config::validate_ws_url(&url).map_err(|e| Error::Config(format!("--node: {e}")))?;
        return Ok(url);
    }
    let status = super::status::report(dir).await?;
    if status.running {
        return Ok(status.url);
    }
    let why = match &status.answering_node_id {
        Some(other) => format!("node '{other}' answers at {} instead", status.url),
        None => format!("nothing answers at {}", status.url),
    };
    Err(Error::Connection(format!(
        "the data dir's node ({}) is not running ({why}); {why_running}: start it with \
         `switchboard node`, or pass --node URL",
        status.node_id
    )))
}

/// `switchboard mesh`.
pub async fn report(g: &Global) -> Result<Report> {
    let url = node_url(g, MESH_ASKS).await?;
    let dir = super::connect::data_dir(g)?;
    let file = crate::config::read_file_config(&dir)?;
    let tls = super::connect::client_tls(g, &dir, &file)?;
    let health = super::status::health(&url, &tls)
        .await
        .ok_or_else(|| Error::Connection(format!("no switchboard node answers at {url}")))?;
    serde_json::from_value(health).map_err(|e| {
        Error::Connection(format!(
            "the node at {url} answered /health in a form this switchboard does not read \
             (another version?): {e}"
        ))
    })
}

/// `switchboard mesh forget NODE`.
pub async fn forget(g: &Global, node: &str) -> Result<MeshForgetResult> {
    let url = node_url(g, MESH_ASKS).await?;
    let g = Global {
        node: Some(url),
        ..g.clone()
    };
    let conn = connect(&g, super::commands::CLI_AGENT, Role::Cli, false).await?;
    let r = conn.client.mesh_forget(node.to_owned()).await;
    conn.close().await;
    r
}

/// What `forget` did, for people.
pub fn forgot_text(r: &MeshForgetResult) -> String {
    let mut s = format!(
        "forgot {}: not dialed any more, its agents are offline",
        r.node
    );
    if r.was_linked {
        s.push_str("; its link was up and is closed (a node still running links again)");
    }
    if r.configured {
        s.push_str(
            "; a --peer URL led to it: not dialed until the node links again or this node \
             restarts (remove the URL from the command line or config.toml to make it stay)",
        );
    }
    if r.released {
        s.push_str("; its node id is free for the next data dir that links under it");
    }
    s
}

/// The table for people.
pub fn text(r: &Report) -> String {
    let named = r.nodes.iter().filter(|n| n.node.is_some());
    let up = |n: &&NodeView| n.state == crate::mesh::LinkState::Up;
    let linked = named
        .clone()
        .filter(up)
        .filter(|n| n.route == Route::Direct)
        .count();
    let relayed = named.clone().filter(up).count() - linked;
    let mut out = format!(
        "{} (instance {}): {linked} of {} known nodes linked",
        r.node_id,
        r.instance.as_deref().unwrap_or("?"),
        named.count()
    );
    if relayed > 0 {
        out.push_str(&format!(", {relayed} reached through others"));
    }
    let silent = r.nodes.iter().filter(|n| n.node.is_none()).count();
    if silent > 0 {
        out.push_str(&format!(
            "; {silent} --peer URL{} not answering as a node yet",
            if silent == 1 { "" } else { "s" }
        ));
    }
    if let Some(b) = &r.backbone {
        out.push('\n');
        out.push_str(&b.text());
    }
    if r.nodes.is_empty() && r.backbone.is_some() {
        out.push_str("\nNo other node heard on the backbone yet.");
    } else if r.nodes.is_empty() {
        out.push_str(
            "\nNo other node is known: no --peer has answered and no peer has dialed in (a node \
             links only with a mesh secret, --mesh-secret-file).",
        );
    } else {
        let mut rows = vec![
            [
                "NODE",
                "INSTANCE",
                "ROUTE",
                "STATE",
                "SINCE",
                "BEHIND OUT/IN",
                "APPLIED",
                "URL",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        let num = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
        for n in &r.nodes {
            rows.push(vec![
                n.node.clone().unwrap_or_else(|| "?".into()),
                n.instance
                    .as_deref()
                    .map_or("-".into(), |i| i.chars().take(12).collect()),
                match &n.route {
                    Route::Direct => "direct".into(),
                    Route::Via(v) => format!("via {v}"),
                    Route::Backbone => "backbone".into(),
                },
                word(&n.state),
                n.since.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", num(n.lag.to_peer), num(n.lag.from_peer)),
                n.lag
                    .applied_seconds_ago
                    .map_or("-".into(), |s| format!("{s}s ago")),
                match (&n.url, n.undialable) {
                    (_, true) => "none (dials out)".into(),
                    (Some(u), false) => u.clone(),
                    (None, false) => "-".into(),
                },
            ]);
        }
        out.push('\n');
        out.push_str(&columns(&rows));
        for n in r.nodes.iter().filter(|n| n.error.is_some()) {
            let who = n.node.as_deref().or(n.url.as_deref()).unwrap_or("?");
            let error = n.error.as_deref().unwrap_or_default();
            if error.starts_with(who) {
                out.push_str(&format!("\n{error}"));
            } else {
                out.push_str(&format!("\n{who}: {error}"));
            }
        }
    }
    if !r.conflicts.is_empty() {
        out.push_str(
            "\n\nNode-id conflicts (refused here; restart one of the two with another --node-id):",
        );
        for c in &r.conflicts {
            out.push_str(&format!(
                "\n  {}: held by instance {}, claimed by instance {} since {}",
                c.node,
                c.holder,
                c.claimant,
                crate::message::rfc3339(c.since)
            ));
        }
    }
    out
}

fn word(s: &crate::mesh::LinkState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Rows as columns two spaces apart, each as wide as its widest cell.
fn columns(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_as_a_table_with_errors_and_both_instances_of_a_conflict() {
        let health = serde_json::json!({
            "node_id": "n1", "instance": "aaaa", "status": "degraded", "peers": [],
            "nodes": [
                {"node": "n2", "instance": "0123456789abcdef", "route": "direct", "state": "up",
                 "since": "t", "origin": "configured", "url": "ws://h:1", "error": null,
                 "reported_by": [], "lag": {"to_peer": 0, "from_peer": 3,
                 "last_applied": "t", "applied_seconds_ago": 2}},
                {"node": "n3", "instance": null, "route": "via", "via": "n2", "state": "down",
                 "since": null, "origin": null, "url": null, "error": "refused",
                 "reported_by": ["n2"], "lag": {"to_peer": null, "from_peer": null,
                 "last_applied": null, "applied_seconds_ago": null}}
            ],
            "conflicts": [{"node": "n2", "holder": "h0", "claimant": "c1", "since": 0}]
        });
        let r: Report = serde_json::from_value(health).unwrap();
        let t = text(&r);
        assert!(
            t.starts_with("n1 (instance aaaa): 1 of 2 known nodes linked"),
            "{t}"
        );
        assert!(t.contains("n2    0123456789ab  direct"), "{t}");
        assert!(
            t.contains("0/3") && t.contains("2s ago") && t.contains("via n2"),
            "{t}"
        );
        assert!(t.contains("\nn3: refused"), "{t}");
        assert!(
            t.contains("held by instance h0, claimed by instance c1"),
            "{t}"
        );
    }
}
