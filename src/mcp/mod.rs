//! `switchboard mcp`: the MCP stdio server through which one agent talks.
//!
//! Every tool is a thin translation to the node's wire protocol through a reconnecting
//! [`Client`]; the node does the work and keeps the state, so an MCP process can die and
//! restart without losing anything. Pushed messages wake `wait_for_messages` and become
//! `notifications/resources/updated` for `inbox://NAME` — for 2025-11-25 clients through
//! `resources/subscribe`, for 2026-07-28 clients through `subscriptions/listen`.

pub mod params;
mod render;
mod schema;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{
    ErrorData as McpError, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router,
};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::message::Message;
use crate::protocol::{
    InboxRequest, InboxResult, MarkResult, MessagesResult, PresenceEntry, PresenceResult,
    SendRequest, SendResult, TopicsResult,
};
use params::*;

/// Longest `wait_for_messages` timeout, seconds.
pub const MAX_WAIT_SECONDS: f64 = 300.0;

struct Inner {
    client: Client,
    agent: String,
    uri: String,
    /// Cancelled when stdin closes, so long-polls end at once instead of holding the exit.
    shutdown: CancellationToken,
    /// 2025-11-25 sessions subscribed to their inbox resource.
    legacy_subscribed: Mutex<HashSet<String>>,
    /// Set once serving starts; used by the background notifier.
    peer: Mutex<Option<Peer<RoleServer>>>,
}

/// The MCP server of one agent.
#[derive(Clone)]
pub struct McpServer {
    inner: Arc<Inner>,
}

fn ok<T: Serialize>(value: &T, text: String) -> Result<CallToolResult, String> {
    let json = serde_json::to_value(value).map_err(|e| e.to_string())?;
    let mut r = CallToolResult::structured(json);
    r.content = vec![ContentBlock::text(text)];
    Ok(r)
}

fn check_limit(limit: Option<i64>) -> Result<u32, String> {
    match limit {
        None => Ok(20),
        Some(l) if (1..=200).contains(&l) => Ok(l as u32),
        Some(l) => Err(format!("limit: must be between 1 and 200 (got {l})")),
    }
}

fn err(e: crate::Error) -> String {
    e.to_string()
}

/// The instructions an agent reads first.
pub fn instructions(agent: &str) -> String {
    format!(
        "You are agent '{agent}' on switchboard, a real-time message bus between agents. Other \
agents reach you by that name; your inbox is durable.\n\
- Check get_inbox when you start and whenever inbox://{agent} is updated.\n\
- Waiting for a reply? Call wait_for_messages (it returns the moment mail arrives) instead of polling.\n\
- send_message to an agent, \"#topic\" (its subscribers) or \"*\" (everyone). Pass reply_to to keep threads. \
status \"delivered\" means the recipient's session has it; \"queued\" means stored until they return.\n\
- presence shows who is online; set_status busy/away tells others.\n\
- Do not answer acknowledgements or thanks with acknowledgements: end conversations explicitly. \
Make each message self-contained."
    )
}

#[allow(missing_docs)] // the macro-generated `tool_router()` is the tools/list source
#[tool_router(vis = "pub")]
impl McpServer {
    /// Wraps a connected client. `shutdown` should be cancelled when stdin closes.
    pub fn new(client: Client, shutdown: CancellationToken) -> McpServer {
        let agent = client.agent().to_owned();
        McpServer {
            inner: Arc::new(Inner {
                uri: format!("inbox://{agent}"),
                agent,
                client,
                shutdown,
                legacy_subscribed: Mutex::new(HashSet::new()),
                peer: Mutex::new(None),
            }),
        }
    }

    #[tool(
        description = "Send a message to an agent, a #topic, or * (everyone). Durable before it returns.",
        output_schema = schema::output::<SendResult>(),
        input_schema = schema::input::<SendArgs>()
    )]
    async fn send_message(
        &self,
        Parameters(a): Parameters<SendArgs>,
    ) -> Result<CallToolResult, String> {
        let to = a.to.clone();
        let r = self
            .inner
            .client
            .send(SendRequest {
                req: 0,
                id: None,
                to: a.to,
                body: a.body,
                subject: a.subject,
                kind: a.kind.unwrap_or_default(),
                priority: a.priority.unwrap_or_default(),
                reply_to: a.reply_to,
                data: a.data,
            })
            .await
            .map_err(err)?;
        let text = render::sent(&to, &r);
        ok(&r, text)
    }

    #[tool(
        description = "Read your inbox, oldest first. Marks returned messages read unless mark_read is false.",
        output_schema = schema::output::<InboxResult>(),
        input_schema = schema::input::<InboxArgs>()
    )]
    async fn get_inbox(
        &self,
        Parameters(a): Parameters<InboxArgs>,
    ) -> Result<CallToolResult, String> {
        let limit = check_limit(a.limit)?;
        let c = &self.inner.client;
        let r = c
            .inbox(InboxRequest {
                req: 0,
                unread_only: a.unread_only.unwrap_or(true),
                limit,
                from: a.from,
                topic: a.topic,
                mark_read: false,
            })
            .await
            .map_err(err)?;
        if a.mark_read.unwrap_or(true) {
            let ids: Vec<String> = r
                .messages
                .iter()
                .filter(|m| !m.read)
                .map(|m| m.id.clone())
                .collect();
            if !ids.is_empty() {
                c.mark_read(ids, false).await.map_err(err)?;
            }
        }
        let heading = match r.messages.len() {
            0 => "No messages.".to_owned(),
            n => format!("{n} message(s); {} more unread.", r.unread_remaining),
        };
        let text = render::messages(&heading, &r.messages);
        ok(&r, text)
    }

    #[tool(
        description = "Wait until a message arrives (or timeout) and return it, marked read. Use instead of polling.",
        output_schema = schema::output::<WaitResult>(),
        input_schema = schema::input::<WaitArgs>()
    )]
    async fn wait_for_messages(
        &self,
        Parameters(a): Parameters<WaitArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let secs = a.timeout_seconds.unwrap_or(60.0);
        if !(0.0..=MAX_WAIT_SECONDS).contains(&secs) {
            return Err(format!(
                "timeout_seconds: must be between 0 and 300 (got {secs})"
            ));
        }
        let topic = a.topic.map(|t| t.trim_start_matches('#').to_owned());
        let c = &self.inner.client;
        // Subscribe to pushes before looking, so nothing can arrive unseen in between.
        let mut pushes = c.pushes();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
        let matches = |m: &Message| {
            a.from.as_ref().is_none_or(|f| *f == m.from)
                && topic.as_ref().is_none_or(|t| m.topic.as_ref() == Some(t))
        };
        let mut look = true;
        loop {
            if look {
                let r = c
                    .inbox(InboxRequest {
                        req: 0,
                        unread_only: true,
                        limit: 50,
                        from: a.from.clone(),
                        topic: topic.clone(),
                        mark_read: false,
                    })
                    .await
                    .map_err(err)?;
                if !r.messages.is_empty() {
                    return self.take(r.messages).await;
                }
                look = false;
            }
            tokio::select! {
                _ = ctx.ct.cancelled() => return Err("wait_for_messages: cancelled".into()),
                _ = self.inner.shutdown.cancelled() => return Err("wait_for_messages: the server is shutting down".into()),
                _ = tokio::time::sleep_until(deadline) => {
                    let r = WaitResult { messages: vec![], timed_out: true };
                    return ok(&r, format!("No message within {secs} s."));
                }
                p = pushes.recv() => match p {
                    Ok(m) if matches(&m) && !m.read => return self.take(vec![m]).await,
                    Ok(_) => {}
                    // Missed some pushes, or reconnected: look at the inbox again.
                    Err(RecvError::Lagged(_)) => look = true,
                    Err(RecvError::Closed) => return Err("wait_for_messages: the connection to the node was closed".into()),
                },
            }
        }
    }

    async fn take(&self, messages: Vec<Message>) -> Result<CallToolResult, String> {
        let ids = messages.iter().map(|m| m.id.clone()).collect();
        self.inner.client.mark_read(ids, false).await.map_err(err)?;
        let r = WaitResult {
            messages,
            timed_out: false,
        };
        let text = render::messages(
            &format!("{} new message(s).", r.messages.len()),
            &r.messages,
        );
        ok(&r, text)
    }

    #[tool(
        description = "Who is known: online or not, node, status, last seen.",
        output_schema = schema::output::<PresenceResult>(),
        input_schema = schema::input::<PresenceArgs>()
    )]
    async fn presence(
        &self,
        Parameters(a): Parameters<PresenceArgs>,
    ) -> Result<CallToolResult, String> {
        let r = self.inner.client.presence(a.agent).await.map_err(err)?;
        let text = r
            .agents
            .iter()
            .map(render::presence)
            .collect::<Vec<_>>()
            .join("\n");
        ok(
            &r,
            if text.is_empty() {
                "No agents known.".into()
            } else {
                text
            },
        )
    }

    #[tool(
        description = "Set your status (available, busy, away) and an optional text.",
        output_schema = schema::output::<PresenceEntry>(),
        input_schema = schema::input::<StatusArgs>()
    )]
    async fn set_status(
        &self,
        Parameters(a): Parameters<StatusArgs>,
    ) -> Result<CallToolResult, String> {
        let r = self
            .inner
            .client
            .set_status(a.status, a.text)
            .await
            .map_err(err)?;
        let text = render::presence(&r);
        ok(&r, text)
    }

    #[tool(
        description = "Mark messages read: ids, or all: true.",
        output_schema = schema::output::<MarkResult>(),
        input_schema = schema::input::<MarkArgs>()
    )]
    async fn mark_read(
        &self,
        Parameters(a): Parameters<MarkArgs>,
    ) -> Result<CallToolResult, String> {
        let ids = a.ids.unwrap_or_default();
        let all = a.all.unwrap_or(false);
        if ids.is_empty() && !all {
            return Err("ids: give message ids, or all: true".into());
        }
        let r = self.inner.client.mark_read(ids, all).await.map_err(err)?;
        let text = format!("{} marked read.", r.marked);
        ok(&r, text)
    }

    #[tool(
        description = "Subscribe to a #topic: its messages come to your inbox.",
        output_schema = schema::output::<TopicsResult>(),
        input_schema = schema::input::<TopicArgs>()
    )]
    async fn subscribe(
        &self,
        Parameters(a): Parameters<TopicArgs>,
    ) -> Result<CallToolResult, String> {
        self.topic(a.topic, true).await
    }

    #[tool(
        description = "Unsubscribe from a #topic.",
        output_schema = schema::output::<TopicsResult>(),
        input_schema = schema::input::<TopicArgs>()
    )]
    async fn unsubscribe(
        &self,
        Parameters(a): Parameters<TopicArgs>,
    ) -> Result<CallToolResult, String> {
        self.topic(a.topic, false).await
    }

    async fn topic(&self, topic: String, on: bool) -> Result<CallToolResult, String> {
        let r = self.inner.client.subscribe(topic, on).await.map_err(err)?;
        let text = if r.topics.is_empty() {
            "Subscribed to no topics.".to_owned()
        } else {
            format!("Subscribed to: #{}", r.topics.join(", #"))
        };
        ok(&r, text)
    }

    #[tool(
        description = "A whole thread, oldest first, from any of its message ids.",
        output_schema = schema::output::<MessagesResult>(),
        input_schema = schema::input::<ThreadArgs>()
    )]
    async fn get_thread(
        &self,
        Parameters(a): Parameters<ThreadArgs>,
    ) -> Result<CallToolResult, String> {
        let r = self.inner.client.thread(a.id).await.map_err(err)?;
        let text = render::messages(
            &format!("Thread of {} message(s).", r.messages.len()),
            &r.messages,
        );
        ok(&r, text)
    }

    #[tool(
        description = "Full-text search of messages you sent or received, best match first.",
        output_schema = schema::output::<MessagesResult>(),
        input_schema = schema::input::<SearchArgs>()
    )]
    async fn search_messages(
        &self,
        Parameters(a): Parameters<SearchArgs>,
    ) -> Result<CallToolResult, String> {
        let limit = check_limit(a.limit)?;
        let r = self
            .inner
            .client
            .search(a.query, limit)
            .await
            .map_err(err)?;
        let text = render::messages(&format!("{} match(es).", r.messages.len()), &r.messages);
        ok(&r, text)
    }
}

impl McpServer {
    /// Starts forwarding pushed messages as `notifications/resources/updated` to a 2025-11-25
    /// client that subscribed to its inbox.
    pub fn start_notifier(&self, peer: Peer<RoleServer>) {
        *self.inner.peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer.clone());
        let inner = self.inner.clone();
        let mut pushes = inner.client.pushes();
        tokio::spawn(async move {
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

    async fn summary(&self) -> Result<String, McpError> {
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
}

#[tool_handler]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new(
            "switchboard",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(instructions(&self.inner.agent))
    }

    async fn list_resources(
        &self,
        _r: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(
                self.inner.uri.clone(),
                format!("inbox of {}", self.inner.agent),
            )
            .with_mime_type("text/plain"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if request.uri != self.inner.uri {
            return Err(McpError::resource_not_found(
                format!(
                    "no resource {}; this server has {}",
                    request.uri, self.inner.uri
                ),
                None,
            ));
        }
        let text = self.summary().await?;
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, request.uri.clone())]).into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if request.uri != self.inner.uri {
            return Err(McpError::resource_not_found(
                format!(
                    "no resource {}; this server has {}",
                    request.uri, self.inner.uri
                ),
                None,
            ));
        }
        self.inner
            .legacy_subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.inner
            .legacy_subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request.uri);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = requested.clone();
        if let Some(uris) = accepted.resource_subscriptions.as_mut() {
            uris.retain(|u| *u == self.inner.uri);
        }
        Some(accepted)
    }

    async fn listen(&self, cx: SubscriptionContext) -> Result<(), McpError> {
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

/// stdin that cancels a token at end of file. rmcp waits up to 5 s for in-flight handlers after
/// stdin closes; a pending `wait_for_messages` would hold the exit that long, so we notice EOF
/// ourselves and end long-polls at once.
struct EofSignal<R> {
    inner: R,
    eof: CancellationToken,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EofSignal<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.eof.cancel();
        }
        r
    }
}

/// Serves MCP on stdin/stdout until the client goes away.
pub async fn serve_stdio(client: Client) -> crate::Result<()> {
    use rmcp::ServiceExt;
    let shutdown = CancellationToken::new();
    let server = McpServer::new(client, shutdown.clone());
    let (stdin, stdout) = rmcp::transport::stdio();
    let stdin = EofSignal {
        inner: stdin,
        eof: shutdown.clone(),
    };
    let running = server
        .clone()
        .serve((stdin, stdout))
        .await
        .map_err(|e| crate::Error::Connection(format!("MCP handshake failed: {e}")))?;
    server.start_notifier(running.peer().clone());
    let result = running.waiting().await;
    shutdown.cancel();
    if let Err(e) = result {
        tracing::debug!(error = %e, "MCP service ended with an error");
    }
    Ok(())
}
