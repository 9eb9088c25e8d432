//! `--advertise`: how peers are told to reach this node.

use super::validate_ws_url;
use crate::error::{Error, Result};

/// What a node tells its peers about dialing it (`--advertise URL|none`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Advertise {
    /// Nothing said: peers dial the URL they dialed, or the address an accepted link came
    /// from with the port this node listens on.
    #[default]
    Default,
    /// Peers should dial this URL (a public name, a port forwarded by NAT, a proxy).
    Url(String),
    /// This node cannot be dialed (a laptop behind NAT): it only dials out, nobody dials it,
    /// and its peers relay for it.
    None,
}

impl Advertise {
    /// Reads `--advertise` (or config `advertise`): `none` or a `ws://`/`wss://` URL. A node
    /// serving TLS that advertises `ws://` would never be reached: refused here.
    pub fn parse(text: &str, serves_tls: bool) -> Result<Advertise> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("none") {
            return Ok(Advertise::None);
        }
        validate_ws_url(t).map_err(|e| {
            Error::Config(format!(
                "--advertise: {e} (or `none` for a node nobody dials)"
            ))
        })?;
        if serves_tls && t.starts_with("ws://") {
            return Err(Error::Config(format!(
                "--advertise: this node serves TLS only; advertise wss://, not {t}"
            )));
        }
        Ok(Advertise::Url(t.to_owned()))
    }

    /// What peers are told: `None` for the default, else `none` or the URL.
    pub fn wire(&self) -> Option<String> {
        match self {
            Advertise::Default => None,
            Advertise::Url(u) => Some(u.clone()),
            Advertise::None => Some("none".into()),
        }
    }
}
