//! `switchboard status`: which node a data dir belongs to and whether it runs. Read from the
//! data dir's settings and the node's `/health`, never by connecting as an agent, so asking
//! changes nothing (and hosts no node).

use std::time::Duration;

use serde::Serialize;

use crate::config::{NodeConfig, NodeOverrides, read_file_config};
use crate::error::{Error, Result};

/// What `status` found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The data dir asked about.
    pub data_dir: String,
    /// The node id its settings give (config.toml, or the host name).
    pub node_id: String,
    /// Where its node listens (config.toml `listen`, or the default).
    pub listen: String,
    /// The URL clients dial.
    pub url: String,
    /// A node answers there with this data dir's node id.
    pub running: bool,
    /// The id of whatever node answers there, if one does.
    pub answering_node_id: Option<String>,
    /// That node's `/health`, if one answers.
    pub health: Option<serde_json::Value>,
}

/// Looks at the data dir's node.
pub async fn report(dir: std::path::PathBuf) -> Result<Report> {
    let config = NodeConfig::resolve(dir.clone(), NodeOverrides::default())?;
    let addr = super::connect::dial_addr(&config.listen);
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let mut url = format!("{scheme}://{addr}");
    let file = read_file_config(&dir)?;
    let tls = crate::tls::ClientTls::agent(
        &config.tls_ca,
        crate::tls::server::data_dir_certificates(&dir, &file),
    )?;
    let mut health = health(&url, &tls).await;
    if health.is_none() && config.tls.is_none() {
        // Started with --tls-self-signed or --tls-cert on its command line, not in config.toml.
        let tls_url = format!("wss://{addr}");
        health = self::health(&tls_url, &tls).await;
        if health.is_some() {
            url = tls_url;
        }
    }
    let answering = health
        .as_ref()
        .and_then(|h| h.get("node_id"))
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    Ok(Report {
        data_dir: dir.display().to_string(),
        running: answering.as_deref() == Some(config.node_id.as_str()),
        node_id: config.node_id,
        url,
        listen: config.listen,
        answering_node_id: answering,
        health,
    })
}

/// The text for people.
pub fn text(r: &Report) -> String {
    let state = match (&r.answering_node_id, r.running) {
        (_, true) => format!("running ({})", r.url),
        (Some(other), false) => format!(
            "not running: node '{other}' answers at {} instead (another data dir's node)",
            r.url
        ),
        (None, false) => format!(
            "not running (nothing answers at {}); `switchboard node` starts it, and any \
             command without --node hosts it",
            r.url
        ),
    };
    format!(
        "data dir  {}\nnode      {}\nlisten    {}\nstate     {state}",
        r.data_dir, r.node_id, r.listen
    )
}

/// `GET /health`, or None when nothing (or no switchboard node) answers within 2 s.
pub(super) async fn health(url: &str, tls: &crate::tls::ClientTls) -> Option<serde_json::Value> {
    let (_, body) = crate::tls::http_get(url, "/health", Some(tls), Duration::from_secs(2))
        .await
        .ok()?;
    serde_json::from_str(&body).ok()
}

/// For `--json`.
pub fn json(r: &Report) -> Result<String> {
    serde_json::to_string_pretty(r).map_err(|e| Error::Invalid(e.to_string()))
}
