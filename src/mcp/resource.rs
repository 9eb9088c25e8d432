//! The `inbox://NAME` resource: its summary text, and the updates a push triggers — through
//! `resources/subscribe` (any protocol version), through `subscriptions/listen` for 2026-07-28.

use rmcp::model::ResourceUpdatedNotificationParam;
use rmcp::service::SubscriptionContext;
use rmcp::{ErrorData as McpError, Peer, RoleServer};
use tokio::sync::broadcast::error::RecvError;

use super::McpServer;
use crate::protocol::InboxRequest;

impl McpServer {
    /// Starts forwarding pushed messages as `notifications/resources/updated` to a client that
    /// subscribed to its inbox with `resources/subscribe`.
    pub fn start_notifier(&self, peer: Peer<RoleServer>) {
        *self.inner.peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer.clone());
        let inner = self.inner.clone();
        let mut pushes = inner.client.pushes();
        self.inner.tasks.spawn(async move {
            loop {
                let got = tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    p = pushes.recv() => p,
                };
                match got {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
                let subscribed = inner
                    .legacy_subscribed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&inner.uri);
                if subscribed {
                    let note = ResourceUpdatedNotificationParam::new(inner.uri.clone());
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => return,
                        r = peer.notify_resource_updated(note) => if r.is_err() { return },
                    }
                }
            }
        });
    }

    /// The text of the inbox resource: the unread count and the first unread subjects.
    pub(super) async fn summary(&self) -> Result<String, McpError> {
        let r = self
            .inner
            .client
            .inbox(InboxRequest {
                req: 0,
                unread_only: true,
                limit: 20,
                from: None,
                topic: None,
                mark_read: false,
            })
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let total = r.messages.len() as u32 + r.unread_remaining;
        let mut text = format!("{total} unread message(s) for {}.", self.inner.agent);
        for m in &r.messages {
            let subject = m
                .subject
                .clone()
                .unwrap_or_else(|| m.body.chars().take(80).collect());
            text.push_str(&format!("\n- [{}] from {}: {}", m.id, m.from, subject));
        }
        Ok(text)
    }

    /// Subscribes the session to `uri` (`resources/subscribe`).
    pub(super) fn subscribe_to(&self, uri: String) -> Result<(), McpError> {
        self.known(&uri)?;
        self.inner
            .legacy_subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uri);
        Ok(())
    }

    /// Ends the session's subscription to `uri` (`resources/unsubscribe`).
    pub(super) fn unsubscribe_from(&self, uri: &str) {
        self.inner
            .legacy_subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uri);
    }

    /// Refuses a URI other than this agent's inbox.
    pub(super) fn known(&self, uri: &str) -> Result<(), McpError> {
        if uri == self.inner.uri {
            return Ok(());
        }
        Err(McpError::resource_not_found(
            format!("no resource {uri}; this server has {}", self.inner.uri),
            None,
        ))
    }

    /// Sends an update for every accepted URI on each push, until the listen ends.
    pub(super) async fn listen_updates(&self, cx: SubscriptionContext) -> Result<(), McpError> {
        let uris = cx
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        if uris.is_empty() {
            cx.cancelled().await;
            return Ok(());
        }
        let mut pushes = self.inner.client.pushes();
        // The SDK acknowledged the subscription before calling us; anything that arrived in
        // between would be lost, so start with one catch-up update.
        for u in &uris {
            if cx.sink().notify_resource_updated(u.clone()).await.is_err() {
                return Ok(());
            }
        }
        loop {
            tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                _ = self.inner.shutdown.cancelled() => return Ok(()),
                p = pushes.recv() => match p {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        for u in &uris {
                            if cx.sink().notify_resource_updated(u.clone()).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Err(RecvError::Closed) => return Ok(()),
                },
            }
        }
    }
}
