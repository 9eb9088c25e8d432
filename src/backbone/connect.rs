//! The NATS connection and the stream: how a node reaches the backbone, and the stream every
//! node's log goes to, created by the first node that finds it missing.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use async_nats::{ConnectOptions, Event};

use super::{STREAM, Shared};
use crate::config::BackboneConfig;
use crate::config::backbone::host_of;
use crate::error::{Error, Result};

/// How long a retried publish stays deduplicated by its message id. JetStream's default: a
/// retry comes well within it, and a later one is skipped by the consumers' cursors anyway.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long a lookup of the stream may wait. A server answers in milliseconds, but while a
/// cluster elects a new stream leader nobody answers, and the client's request timeout (10 s)
/// kept the publisher idle for 5 s past the election (measured with a killed leader).
const LOOKUP: Duration = Duration::from_secs(2);

/// Why the client last failed to reach a server, until it connects again.
pub(crate) type LastError = std::sync::Arc<parking_lot::Mutex<Option<String>>>;

/// The client (connecting in the background), a watch of whether it is connected, and why it
/// last failed to connect.
pub(super) async fn connect(
    config: &BackboneConfig,
    tls_ca: &[std::path::PathBuf],
    node: &str,
) -> Result<(
    async_nats::Client,
    tokio::sync::watch::Receiver<bool>,
    LastError,
)> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let tx = std::sync::Arc::new(tx);
    let last_error = LastError::default();
    let mut options = ConnectOptions::new();
    if let Some(creds) = &config.creds {
        options = options.credentials_file(creds).await.map_err(|e| {
            Error::Config(format!(
                "backbone credentials file {}: {e}",
                creds.display()
            ))
        })?;
    }
    for ca in tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    // Mail must not cross the network in clear text: a plain nats:// URL to another machine
    // has to upgrade to TLS unless the operator allowed plaintext.
    let remote_plain = config
        .urls
        .iter()
        .any(|u| u.starts_with("nats://") && !crate::plaintext::is_loopback_host(&host_of(u)));
    if remote_plain && !config.allow_plaintext {
        options = options.require_tls(true);
    }
    let tls = (remote_plain && !config.allow_plaintext)
        || config.urls.iter().any(|u| u.starts_with("tls://"));
    let events = tx.clone();
    let failures = last_error.clone();
    let options = options
        .name(format!("switchboard {node}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempt| {
            crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_millis(500))
                .delay(attempt.min(20) as u32)
        })
        .event_callback(move |event| {
            let events = events.clone();
            let failures = failures.clone();
            async move {
                match event {
                    Event::Connected => {
                        tracing::info!("backbone connected");
                        *failures.lock() = None;
                        events.send_replace(true);
                    }
                    Event::ClientError(e) => failed(&failures, tls, &e.to_string()),
                    Event::ServerError(e) => failed(&failures, tls, &e.to_string()),
                    Event::Disconnected | Event::Closed => {
                        tracing::warn!(
                            "backbone disconnected: other nodes' agents count as offline and \
                             sends to them answer queued until it is back"
                        );
                        events.send_replace(false);
                    }
                    _ => {}
                }
            }
        });
    let addrs: Vec<async_nats::ServerAddr> = config
        .urls
        .iter()
        .map(|u| {
            u.parse()
                .map_err(|e| Error::Config(format!("backbone URL '{u}': {e}")))
        })
        .collect::<Result<_>>()?;
    let client = options
        .connect(addrs.as_slice())
        .await
        .map_err(|e| Error::Config(format!("backbone: {e}")))?;
    Ok((client, rx, last_error))
}

/// Records why connecting failed, logged once per reason (the client retries every half
/// second; one line each time would bury everything else).
fn failed(last: &LastError, tls: bool, reason: &str) {
    let why = match reason {
        // A certificate that does not verify fails inside the TLS handshake, which the client
        // reports as an I/O error with the cause dropped.
        r if tls && r.contains("IO error") => format!(
            "{r}: the NATS server is not answering, or its certificate did not verify (a CA \
             of your own is trusted with --tls-ca)"
        ),
        r if r.contains("TLS") => format!(
            "{r}: the NATS server's certificate did not verify, or TLS is required on one side \
             only (a CA of your own is trusted with --tls-ca)"
        ),
        r if r.contains("authorization") || r.contains("signing nonce") => {
            format!("{r}: the NATS server refused this node's credentials (--backbone-creds)")
        }
        r => r.to_owned(),
    };
    let mut last = last.lock();
    if last.as_deref() != Some(why.as_str()) {
        tracing::warn!("backbone: cannot connect: {why}");
        *last = Some(why);
    }
}

/// The stream's settings from the node's.
fn stream_config(config: &BackboneConfig) -> Config {
    Config {
        name: STREAM.into(),
        description: Some("switchboard: every node's replication log".into()),
        subjects: vec![super::events_filter()],
        storage: StorageType::File,
        num_replicas: config.replicas,
        max_age: config.max_age,
        max_bytes: i64::try_from(config.max_bytes).unwrap_or(i64::MAX),
        discard: DiscardPolicy::Old,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The stream, created if it is missing. A stream made by another node with other limits is
/// used as it is (nodes do not fight over its settings); the difference is logged once.
pub(super) async fn stream(
    s: &Shared,
) -> std::result::Result<async_nats::jetstream::stream::Stream, String> {
    let want = stream_config(&s.config);
    let found = tokio::time::timeout(LOOKUP, s.js.get_stream(STREAM))
        .await
        .map_err(|_| format!("looking up the stream {STREAM}: no answer within {LOOKUP:?}"))?;
    match found {
        Ok(stream) => {
            let have = &stream.cached_info().config;
            if have.num_replicas != want.num_replicas
                || have.max_age != want.max_age
                || have.max_bytes != want.max_bytes
            {
                s.status.note_stream_mismatch(format!(
                    "the stream {STREAM} has replicas {}, max_age {}s, max_bytes {}; this \
                     node's settings say {}, {}s, {} (the stream's own stay in force)",
                    have.num_replicas,
                    have.max_age.as_secs(),
                    have.max_bytes,
                    want.num_replicas,
                    want.max_age.as_secs(),
                    want.max_bytes
                ));
            }
            Ok(stream)
        }
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(_)
            ) =>
        {
            s.js.get_or_create_stream(want)
                .await
                .map_err(|e| format!("creating the stream {STREAM}: {e}"))
        }
        Err(e) => Err(format!("looking up the stream {STREAM}: {e}")),
    }
}
