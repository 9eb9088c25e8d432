//! NATS JetStream as the mesh's backbone (`--backbone URL`): instead of a link to every other
//! node, each node keeps one connection to NATS.
//!
//! - [`publish`]: this node's own replication log goes, in batches and in order, to the stream
//!   `SWITCHBOARD` on the subject `switchboard.events.<node>.<instance>`, each batch with a
//!   `Nats-Msg-Id` of the data dir's instance and the batch's seqs, so a retried publish is
//!   stored once. An entry counts as shipped only when JetStream has acknowledged its batch
//!   (the PubAck), and the next batch goes only then, so the stream never holds a later batch
//!   of an origin without the earlier ones.
//! - [`consume`]: one durable pull consumer per node reads every origin's batches and applies
//!   them through the store's own apply (idempotent, the per-origin cursor moved in the same
//!   transaction, as the direct mesh does), then acks. The stream position read so far is
//!   committed in the same transaction too, and a restarted node re-creates its consumer at
//!   that position: what the store holds decides, never what the consumer believes. Each batch
//!   names the seq before it (`prev`), so an origin's entries that the stream dropped (its age
//!   or size limit) before this node read them are seen as a gap, recorded, and filled from a
//!   snapshot (below).
//! - [`presence`]: soft state on plain NATS subjects: a snapshot of the node's online agents
//!   on every change, a small heartbeat every second (a node missed for 10 s is gone), and
//!   snapshots on request for nodes that join later. Delivery notices go to the origin's subject.
//! - `snapshot`, `catchup`, `survey`: gaps filled from a snapshot of another node's
//!   store state (`store::snapshot`), paged by request and reply on
//!   `switchboard.catchup.<instance>`, which every node answers; and logs the stream lost
//!   whole, found by asking the nodes what they hold.
//! - `compact`: this node's own log is compacted once the stream has acknowledged it (the
//!   stream stands in `peer_applied` as one more peer), so a backbone node's store stays
//!   bounded too.
//! - [`status`]: what `/health` and `switchboard mesh` show.
//!
//! The backbone owns no durable state of its own beyond the store's marks: the stream is the
//! shared log, and everything this node knows of it is either in its store or rebuilt from the
//! stream and the heartbeats after a restart.

mod catchup;
mod compact;
mod connect;
pub mod consume;
pub mod presence;
pub mod publish;
mod snapshot;
pub mod status;
mod survey;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BackboneConfig;
use crate::core::Router;
use crate::error::Result;

pub use status::{BackboneStatus, CatchUp, Gap, OriginStatus};

/// The stream every node's log goes to.
pub const STREAM: &str = "SWITCHBOARD";
/// The first token of every subject the backbone uses.
const PREFIX: &str = "switchboard";

/// A node id as one subject token: NATS splits subjects at `.`, which a node id may contain
/// (a host name); `~` may not appear in a node id, so the mapping is one to one.
pub fn token(node: &str) -> String {
    node.replace('.', "~")
}

/// The subject of one data dir's log entries.
pub fn events_subject(node: &str, instance: &str) -> String {
    format!("{PREFIX}.events.{}.{instance}", token(node))
}

/// The subjects of the stream.
pub fn events_filter() -> String {
    format!("{PREFIX}.events.>")
}

/// Where a node announces its presence.
fn presence_subject(node: &str) -> String {
    format!("{PREFIX}.presence.{}", token(node))
}

/// Where a node answers requests for its full presence snapshot.
fn snapshot_subject(node: &str) -> String {
    format!("{PREFIX}.snapshot.{}", token(node))
}

/// Where a data dir answers requests for pages of its store's state (gaps are filled from
/// them). By instance, not node id: a gap is in one data dir's log.
fn catchup_subject(instance: &str) -> String {
    format!("{PREFIX}.catchup.{instance}")
}

/// Where delivery notices for messages accepted at `node` go.
fn delivered_subject(node: &str) -> String {
    format!("{PREFIX}.delivered.{}", token(node))
}

/// The backbone side of a node.
pub struct Backbone {
    shared: Arc<Shared>,
}

/// What the backbone's tasks share.
pub(crate) struct Shared {
    pub(crate) router: Arc<Router>,
    pub(crate) config: BackboneConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) status: status::Status,
    /// `true` while the client is connected (from the client's events).
    pub(crate) connected: tokio::sync::watch::Receiver<bool>,
    /// Why the client last failed to connect, until it connects.
    pub(crate) connect_error: connect::LastError,
    /// Wakes the task that fills gaps.
    pub(crate) catch_up: catchup::Wake,
}

impl Backbone {
    /// Connects (in the background: a node starts and serves its own clients while NATS is
    /// out of reach) and starts publishing, consuming and presence. Every task belongs to
    /// `tracker`. Fails only on settings that can never work (an unreadable credentials file).
    pub async fn start(
        router: Arc<Router>,
        config: BackboneConfig,
        tls_ca: &[std::path::PathBuf],
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Backbone> {
        let (client, connected, connect_error) =
            connect::connect(&config, tls_ca, &router.node_id).await?;
        let js = match &config.domain {
            Some(d) => async_nats::jetstream::with_domain(client.clone(), d),
            None => async_nats::jetstream::new(client.clone()),
        };
        let shared = Arc::new(Shared {
            router,
            config,
            client,
            js,
            shutdown,
            tracker: tracker.clone(),
            status: status::Status::default(),
            connected,
            connect_error,
            catch_up: catchup::Wake::default(),
        });
        consume::load_gaps(&shared).await;
        tracker.spawn(publish::run(shared.clone()));
        tracker.spawn(consume::run(shared.clone()));
        tracker.spawn(snapshot::serve(shared.clone()));
        tracker.spawn(catchup::run(shared.clone()));
        tracker.spawn(compact::run(shared.clone()));
        presence::start(&shared).await;
        tracing::info!(urls = ?shared.config.urls, "replicating through the NATS backbone");
        Ok(Backbone { shared })
    }

    /// The backbone's state for `/health`.
    pub fn status(&self) -> BackboneStatus {
        status::report(&self.shared)
    }

    /// Every other node the backbone knows, as `switchboard mesh` lists nodes.
    pub fn nodes(&self) -> Vec<crate::mesh::NodeView> {
        status::nodes(&self.shared)
    }

    /// What needs an operator: origin entries lost to the stream's retention and not filled
    /// yet (with what the catch-up waits for), or no NATS server reachable (with the reason
    /// the client gave).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.shared.status.has_gaps() {
            let c = self.shared.status.catch_up_now();
            let why = match (&c.from, &c.waiting) {
                (Some(from), _) => format!("catching up from a snapshot of {from}"),
                (None, Some(w)) => format!("not filled yet: {w}"),
                (None, None) => "catching up from a snapshot".to_owned(),
            };
            out.push(format!(
                "the backbone's stream dropped entries this node never read (see \
                 backbone.gaps); {why}"
            ));
        }
        let connected =
            self.shared.client.connection_state() == async_nats::connection::State::Connected;
        if let Some(e) = self
            .shared
            .connect_error
            .lock()
            .clone()
            .filter(|_| !connected)
        {
            out.push(format!("the backbone is not connected: {e}"));
        }
        // Connected, yet the stream refuses: say why (JetStream reserves a stream's whole
        // `max_bytes` up front, and refuses a stream larger than the disk it has left).
        if connected {
            let (publish, consume) = self.shared.status.errors();
            if let Some(e) = &publish {
                out.push(format!(
                    "the backbone cannot publish this node's changes: {e}"
                ));
            }
            // Both fail alike when the stream cannot be created: once is enough.
            if let Some(e) = consume.filter(|c| Some(c) != publish.as_ref()) {
                out.push(format!(
                    "the backbone cannot read other nodes' changes: {e}"
                ));
            }
        }
        out
    }

    /// (nodes heard now, nodes known), as `/metrics` counts peers.
    pub fn counts(&self) -> (usize, usize) {
        self.shared.status.counts()
    }
}

/// Waits until the client is connected (or the node stops: `false`).
pub(crate) async fn until_connected(s: &Shared) -> bool {
    let mut c = s.connected.clone();
    tokio::select! {
        _ = s.shutdown.cancelled() => false,
        r = c.wait_for(|up| *up) => r.is_ok(),
    }
}

/// Pauses before retry `attempt` of a backbone operation; `false` if the node stops meanwhile.
pub(crate) async fn pause(s: &Shared, attempt: u32) -> bool {
    let rule = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(2),
    );
    tokio::select! {
        _ = s.shutdown.cancelled() => false,
        _ = tokio::time::sleep(rule.delay(attempt)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_one_token_per_node_id() {
        assert_eq!(token("laptop.local"), "laptop~local");
        assert_eq!(events_subject("a.b", "ff00"), "switchboard.events.a~b.ff00");
        assert_ne!(token("a.b"), token("a_b"));
    }
}
