//! `switchboard dashboard`: asks the running node for a one-time login code and prints the
//! dashboard's URL with it (the last line of stdout), opening a browser with `--open`.
//!
//! The code is minted over `/ws` with a first frame of its own (`dashboard_login`), holding
//! the local secret or an operator token, so asking needs no HTTP client and hosts no node: a
//! link to a node this command had hosted would die with it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::cli::{DashboardArgs, Global};
use crate::dashboard::login::{CodeAnswer, First};
use crate::error::{Error, Result};
use crate::protocol::ErrorFrame;

/// The page's URL for the node at `ws_url`, with the code in the fragment (never sent to a
/// server, never in a `Referer`).
pub fn login_url(ws_url: &str, code: &str) -> String {
    let (scheme, rest) = match ws_url.split_once("://") {
        Some(("wss", rest)) => ("https", rest),
        Some((_, rest)) => ("http", rest),
        None => ("http", ws_url),
    };
    let host = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{host}/#code={code}")
}

/// Mints a code at the node and returns the answer and the URL.
pub async fn mint(g: &Global, a: &DashboardArgs) -> Result<(CodeAnswer, String)> {
    let why = "the dashboard is served by the running node";
    let url = super::mesh::node_url(g, why).await?;
    let dir = super::connect::data_dir(g)?;
    let file = crate::config::read_file_config(&dir)?;
    let token = super::connect::token(g, &dir, false)?;
    crate::plaintext::check_client(&url, g.allow_plaintext || file.allow_plaintext)?;
    let tls = super::connect::client_tls(g, &dir, &file)?;
    let endpoint = crate::config::ws_endpoint(&url);
    let request = endpoint
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Config(format!("bad node URL '{url}': {e}")))?;
    let first = First::DashboardLogin {
        token,
        agent: a.agent.clone(),
        ttl_seconds: a.ttl.map(|t| t.as_secs().max(1)),
    };
    let ask = async {
        let (socket, _) = crate::tls::connect(&endpoint, Some(&tls)).await?;
        let (mut ws, _) = tokio_tungstenite::client_async(request, socket)
            .await
            .map_err(|e| Error::Connection(format!("{url}: {e}")))?;
        let text = serde_json::to_string(&first).map_err(|e| Error::Invalid(e.to_string()))?;
        ws.send(WsMessage::Text(text.into()))
            .await
            .map_err(|e| Error::Connection(format!("{url}: {e}")))?;
        while let Some(frame) = ws.next().await {
            let frame = frame.map_err(|e| Error::Connection(format!("{url}: {e}")))?;
            let WsMessage::Text(t) = frame else { continue };
            if let Ok(answer) = serde_json::from_str::<CodeAnswer>(&t) {
                return Ok(answer);
            }
            if let Ok(e) = serde_json::from_str::<ErrorFrame>(&t) {
                return Err(Error::Remote {
                    code: e.code,
                    message: e.message,
                });
            }
        }
        Err(Error::Connection(format!(
            "the node at {url} closed without a login code (an older switchboard?)"
        )))
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .map_err(|_| {
            Error::Connection(format!("no answer from the node at {url} within 10 s"))
        })??;
    let link = login_url(&url, &answer.code);
    Ok((answer, link))
}

/// Opens `url` in the desktop's browser; a failure is only a warning (the URL is printed).
pub fn open(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    match std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not open a browser ({opener}); open the link yourself")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::login_url;

    #[test]
    fn the_page_is_on_the_nodes_port() {
        assert_eq!(
            login_url("ws://127.0.0.1:8765", "ab"),
            "http://127.0.0.1:8765/#code=ab"
        );
        assert_eq!(
            login_url("wss://n1.example:443/ws", "ab"),
            "https://n1.example:443/#code=ab"
        );
    }
}
