//! Which hosts a credential may reach over plain `ws://`: this machine's loopback only.
//!
//! The rule is decided on the URL's text, before any lookup or connection: a literal loopback
//! address (`127.0.0.0/8`, `::1`, either one IPv4-mapped) or the name `localhost`. Any other
//! name counts as another machine, even one that resolves to loopback today (a resolver or an
//! `/etc/hosts` line can change under us; the token would already be gone). `0.0.0.0` and
//! `::` are not addresses one connects to, so they are not loopback either.

use std::net::IpAddr;

use tokio_tungstenite::tungstenite::http::Uri;

use crate::error::{Error, Result};

/// Whether `host` (as written in a URL: an IPv6 address may be in brackets) is certainly this
/// machine's loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(ip) => is_loopback_ip(ip),
        Err(_) => bare.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    }
}

/// Whether an address is loopback, an IPv4-mapped IPv6 one (`::ffff:127.0.0.1`) included.
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The host of a `ws://` or `wss://` URL (an IPv6 address without its brackets) and whether
/// the URL is TLS. The one parser behind both this rule and the connection itself, so the host
/// judged is the host dialed.
pub fn url_host(url: &str) -> Option<(String, bool)> {
    let uri: Uri = url.parse().ok()?;
    let tls = match uri.scheme_str()? {
        "wss" | "https" => true,
        "ws" | "http" => false,
        _ => return None,
    };
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_owned(), tls))
}

/// Refuses a client credential (a token or the local secret) over plain `ws://` to a host that
/// is not loopback, unless the user allowed it. Nothing has been sent when this fails.
pub fn check_client(url: &str, allow_plaintext: bool) -> Result<()> {
    match url_host(url) {
        Some((host, false)) if !allow_plaintext && !is_loopback_host(&host) => {
            Err(Error::Config(format!(
                "refusing to send a token in clear text to {host} over {url}: anyone on the path \
                 could read it and act as your agent. Use the node's wss:// URL (run the node \
                 with --tls-cert/--tls-key or --tls-self-signed), or pass --allow-plaintext if \
                 the network between here and {host} is trusted"
            )))
        }
        _ => Ok(()),
    }
}

/// Refuses a plain peer link dialed to a host that is not loopback, unless allowed.
pub fn check_peer(url: &str, allow_plaintext: bool) -> Result<()> {
    match url_host(url) {
        Some((host, false)) if !allow_plaintext && !is_loopback_host(&host) => {
            Err(Error::Config(format!(
                "refusing a plain peer link to {url}: mail between nodes would cross the network \
                 in clear text. Run the nodes with TLS (--tls-cert/--tls-key or \
                 --tls-self-signed) and dial wss://, or pass --allow-plaintext to the node if \
                 the network is trusted"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.1.2.3",
            "127.255.255.254",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]",
            "::ffff:127.9.9.9",
            "localhost",
            "LocalHost",
            "localhost.",
        ] {
            assert!(is_loopback_host(h), "{h} is loopback");
        }
        for h in [
            "0.0.0.0",
            "[::]",
            "::",
            "10.0.0.1",
            "192.168.1.2",
            "128.0.0.1",
            "[::ffff:10.0.0.1]",
            "[::127.0.0.1]", // IPv4-compatible (deprecated), not routed to loopback
            "[fe80::1]",
            "example.com",
            "localhost.example.com",
            "mylocalhost",
            "evil-localhost",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h} is not loopback");
        }
    }

    #[test]
    fn hosts_of_urls() {
        let h = url_host;
        assert_eq!(h("ws://127.0.0.1:8765"), Some(("127.0.0.1".into(), false)));
        assert_eq!(h("wss://h.example:1/ws"), Some(("h.example".into(), true)));
        assert_eq!(h("ws://[::1]:9/ws"), Some(("::1".into(), false)));
        assert_eq!(h("ws://localhost"), Some(("localhost".into(), false)));
        // The host after the user info is the one dialed, and the one judged.
        assert_eq!(
            h("ws://127.0.0.1@evil.example:1"),
            Some(("evil.example".into(), false))
        );
        assert_eq!(h("ftp://x"), None);
        assert_eq!(h("ws://:1"), None);
    }

    #[test]
    fn credentials_stay_off_plain_links_to_other_machines() {
        assert!(check_client("ws://127.0.0.1:8765", false).is_ok());
        assert!(check_client("ws://localhost:8765/ws", false).is_ok());
        assert!(check_client("ws://[::1]:8765", false).is_ok());
        assert!(check_client("wss://example.com:443", false).is_ok());
        let e = check_client("ws://example.invalid:1", false).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("example.invalid"), "{text}");
        assert!(text.contains("wss://") && text.contains("--allow-plaintext"));
        assert!(matches!(e, Error::Config(_)));
        assert!(check_client("ws://example.invalid:1", true).is_ok());
        assert!(check_client("ws://0.0.0.0:8765", false).is_err());
        assert!(check_peer("ws://10.1.2.3:8765", false).is_err());
        assert!(check_peer("ws://10.1.2.3:8765", true).is_ok());
        assert!(check_peer("ws://127.0.0.1:8765", false).is_ok());
        assert!(check_peer("wss://10.1.2.3:8765", false).is_ok());
    }
}
