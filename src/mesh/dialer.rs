//! Dialers: one per configured `--peer` URL, for as long as the node runs, and one per node
//! heard of through peers, while nobody links it. A dialer waits while its node is linked by
//! another connection, dials with a growing pause while it is not, and runs each link it
//! makes; a reported node that stays out of reach and unreported is forgotten.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Mesh;
use super::handshake::{self, Dialed, HANDSHAKE, Us};
use super::link::{Opened, Via, far_future};
use super::status::{LinkOrigin, LinkState};
use super::topology::{Order, Target};
use crate::error::{Error, Result};

/// A node heard of through a peer is dialed only after it has stayed unlinked this long: a
/// node that is starting dials its configured peers itself, and two dials crossing would make
/// two links where one is closed again.
const DISCOVERY_GRACE: Duration = Duration::from_secs(1);
/// A reported node that stays unreachable this long, and that no peer reports any more, is
/// forgotten: a decommissioned node is not dialed (nor counted in `peers_known`) forever.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// What a configured URL's dialer shows while the node it led to is dropped.
const DROPPED: &str = "forgotten (switchboard mesh forget): not dialed until the node links \
                       again or this node restarts";
/// A link that lasted this long resets its dialer's backoff; one refused or closed at once
/// does not, so a dialer does not hammer a peer that keeps refusing it.
const STABLE_LINK: Duration = Duration::from_secs(2);

/// The pause before dial `attempt` (counted from 0): doubling from 100 ms up to 5 s, with
/// jitter so that dialers do not move in step.
fn backoff(attempt: u32) -> Duration {
    crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
        .max_doublings(6)
        .delay(attempt)
}

impl Mesh {
    /// Starts a dialer for a configured URL.
    pub(super) fn spawn_configured(self: &Arc<Self>, url: String) {
        let m = self.clone();
        self.tracker
            .spawn(async move { m.dial_forever(Target::Url(url)).await });
    }

    /// Starts a dialer for a node heard of through peers.
    pub(super) fn spawn_discovery(self: &Arc<Self>, node: String) {
        let m = self.clone();
        self.tracker
            .spawn(async move { m.dial_forever(Target::Node(node)).await });
    }

    /// Waits until there is something to dial: for a configured URL, at once, unless the node
    /// behind it is linked already; for a reported node, once it has stayed unlinked for the
    /// grace period (counted from `unlinked_since`, kept across retries) while there is a URL
    /// for it. `None` on shutdown, or once the node is forgotten.
    async fn next_dial(
        &self,
        target: &Target,
        known: Option<&str>,
        attempt: &mut u32,
        key: &str,
        unlinked_since: &mut Option<tokio::time::Instant>,
    ) -> Option<String> {
        let mut changed = self.changed.subscribe();
        loop {
            let now = tokio::time::Instant::now();
            let look = self.topology.lock().look(target, known, *attempt);
            let wake = if look.dropped && matches!(target, Target::Url(_)) {
                // Dropped by an operator: a configured URL waits until the node links again
                // (or this node restarts and reads its configuration again).
                self.statuses.update(key, |s| {
                    if s.error.as_deref() != Some(DROPPED) {
                        s.enter(LinkState::Down, Some(DROPPED.into()));
                    }
                });
                None
            } else if look.linked {
                // Linked by another connection: when it drops, start over from a short pause.
                *attempt = 0;
                *unlinked_since = None;
                // A dialer with nothing to do says so, if it has shown up in /health yet.
                self.statuses.update(key, |s| {
                    if s.state != LinkState::Standby {
                        s.enter(LinkState::Standby, None);
                    }
                });
                None
            } else {
                let since = *unlinked_since.get_or_insert(now);
                match (target, look.url) {
                    (Target::Url(_), Some(url)) => return Some(url),
                    (Target::Node(n), _)
                        if (look.dropped || (!look.reported && now >= since + FORGET_AFTER))
                            && self.forget_node(n, key, !look.dropped) =>
                    {
                        return None;
                    }
                    (_, Some(url)) if now >= since + DISCOVERY_GRACE => return Some(url),
                    (_, Some(_)) => Some(since + DISCOVERY_GRACE),
                    (_, None) => Some(since + FORGET_AFTER),
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                r = changed.changed() => if r.is_err() { return None },
                _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {}
            }
        }
    }

    /// Stops looking for `node`, unless it was linked or reported again since the caller
    /// looked. `hour_passed`: it has been out of reach that long (else it was dropped by an
    /// operator). True if it was forgotten.
    fn forget_node(&self, node: &str, key: &str, hour_passed: bool) -> bool {
        if !self.topology.lock().forget_node(node, hour_passed) {
            return false;
        }
        self.statuses.remove(key);
        if hour_passed {
            tracing::info!(
                ?node,
                "forgot a node that has been out of reach for an hour"
            );
        }
        true
    }

    async fn dial_forever(self: Arc<Self>, target: Target) {
        let (key, origin, mut known) = match &target {
            Target::Url(u) => (format!("dial {u}"), LinkOrigin::Configured, None),
            Target::Node(n) => (
                format!("discover {n}"),
                LinkOrigin::Discovered,
                Some(n.clone()),
            ),
        };
        if let Target::Url(u) = &target {
            self.statuses.set(&key, origin, |s| s.url = Some(u.clone()));
        }
        let mut attempt = 0u32;
        let mut unlinked_since = None;
        loop {
            let Some(url) = self
                .next_dial(
                    &target,
                    known.as_deref(),
                    &mut attempt,
                    &key,
                    &mut unlinked_since,
                )
                .await
            else {
                return;
            };
            self.statuses.set(&key, origin, |s| {
                s.url = Some(url.clone());
                s.node = known.clone();
            });
            let expect = match &target {
                Target::Url(_) => None,
                Target::Node(n) => Some(n.as_str()),
            };
            let result = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.dial_once(&url, &key, origin, expect, known.as_deref()) => r,
            };
            match result {
                Ok((peer, lasted)) => {
                    known = Some(peer);
                    // The link was up: the grace before a discovery dial counts from now.
                    unlinked_since = None;
                    if lasted >= STABLE_LINK {
                        attempt = 0;
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = ?url, error = ?e.to_string(), "peer link failed");
                    self.statuses.set(&key, origin, |s| {
                        s.enter(LinkState::Down, Some(e.to_string()))
                    });
                }
            }
            let pause = backoff(attempt);
            attempt += 1;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Dials `url`, authenticates, and runs the link until it ends. Returns the peer's node id
    /// and how long the link was up. `expect`: the node that must answer, for a URL a peer
    /// reported (it may lead elsewhere by now); `None` for a configured URL.
    /// `before`: the node a configured URL led to last time.
    async fn dial_once(
        self: &Arc<Self>,
        url: &str,
        key: &str,
        origin: LinkOrigin,
        expect: Option<&str>,
        before: Option<&str>,
    ) -> Result<(String, Duration)> {
        crate::plaintext::check_peer(url, self.reach.allow_plaintext)?;
        let endpoint = crate::config::ws_endpoint(url);
        let open = async {
            let (socket, binding) = crate::tls::connect(&endpoint, Some(&self.reach.tls)).await?;
            let (ws, _) = tokio_tungstenite::client_async(endpoint.as_str(), socket)
                .await
                .map_err(|e| Error::Connection(e.to_string()))?;
            Ok::<_, Error>((ws, binding))
        };
        let (ws, binding) = tokio::time::timeout(HANDSHAKE, open)
            .await
            .map_err(|_| Error::Connection(format!("{url}: timed out")))?
            .map_err(|e| Error::Connection(format!("{url}: {e}")))?;
        let (writer, reader) = crate::transport::split(ws);
        let (mut sink, mut stream) = (writer.into_text(), reader.into_text());
        let me = self.router.node_id.clone();
        let us = Us {
            secret: &self.secret,
            node: &me,
            incarnation: self.router.incarnation,
            instance: self.router.store.instance(),
            binding: binding.as_ref().map_or(&[][..], |b| &b[..]),
        };
        let seq = self.next_dial.fetch_add(1, Ordering::Relaxed);
        let (peer, theirs, instance) = match handshake::dial(
            &mut sink,
            &mut stream,
            &us,
            expect,
            seq,
        )
        .await?
        {
            Dialed::Welcome {
                node,
                incarnation,
                instance,
            } => (node, incarnation, instance),
            Dialed::Unauthenticated => {
                tracing::warn!(peer = ?url, "peer failed mesh authentication (wrong mesh secret?)");
                return Err(Error::Connection(
                    "the peer failed mesh authentication".into(),
                ));
            }
            Dialed::WrongNode(message) => {
                if let Some(want) = expect {
                    self.topology.lock().forget_url(want, url);
                }
                return Err(Error::Connection(format!("{url}: {message}")));
            }
        };
        if peer == me {
            return Err(Error::Connection(format!("{url} is this node itself")));
        }
        if let Some(want) = expect
            && want != peer
        {
            // An acceptor of an older version does not check `expect` itself.
            self.topology.lock().forget_url(want, url);
            return Err(Error::Connection(format!(
                "{url} is node {peer}, not {want}"
            )));
        }
        if expect.is_none() {
            self.topology.lock().configured_at(url, &peer, before);
        }
        tracing::debug!(peer = ?peer, url = ?url, "mesh handshake done (dialed)");
        let started = tokio::time::Instant::now();
        let order = Order {
            incarnation: theirs,
            seq,
        };
        let opened = Opened {
            peer: peer.clone(),
            key: key.to_owned(),
            origin,
            via: Via::Dialed(url.to_owned()),
            order,
            instance,
        };
        let ended = self.clone().link(opened, sink, stream).await;
        self.statuses.set(key, origin, |s| {
            s.node = Some(peer.clone());
            s.enter(LinkState::Down, Some(ended.to_string()));
        });
        Ok((peer, started.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_five_seconds_with_jitter() {
        for _ in 0..100 {
            let first = backoff(0);
            assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(150));
            let late = backoff(30);
            assert!(late >= Duration::from_millis(2500) && late < Duration::from_millis(7500));
        }
    }
}
