//! The tools: each a thin translation of its arguments to one or two client requests, and of
//! the answer to structured content plus a short text.

use std::future::Future;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::params::*;
use super::{MAX_WAIT_SECONDS, McpServer, render, schema};
use crate::message::Message;
use crate::protocol::{
    InboxRequest, InboxResult, MarkResult, MessagesResult, PresenceEntry, PresenceResult,
    SendRequest, SendResult, TopicsResult,
};

/// A tool result: `value` as structured content, `text` for clients that show only text.
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

/// Marks what a tool returns read. A node whose disk takes no writes cannot store the marks:
/// the messages are returned all the same (they stay unread, and come again), with a line that
/// says so — a full disk must not hide mail that is there to read.
async fn mark_returned(c: &crate::client::Client, ids: Vec<String>) -> Result<String, String> {
    if ids.is_empty() {
        return Ok(String::new());
    }
    match c.mark_read(ids, false).await {
        Ok(_) => Ok(String::new()),
        Err(
            e @ crate::Error::Remote {
                code:
                    crate::protocol::ErrorCode::StorageFull | crate::protocol::ErrorCode::StorageError,
                ..
            },
        ) => Ok(format!("\n(Not marked read: {e}; they stay unread.)")),
        Err(e) => Err(err(e)),
    }
}

/// The shape of most tools: one client call, its result rendered.
async fn reply<T: Serialize>(
    call: impl Future<Output = crate::Result<T>>,
    render: impl FnOnce(&T) -> String,
) -> Result<CallToolResult, String> {
    let r = call.await.map_err(err)?;
    let text = render(&r);
    ok(&r, text)
}

#[allow(missing_docs)] // the macro-generated `tool_router()` is the tools/list source
#[tool_router(vis = "pub")]
impl McpServer {
    #[tool(
        description = "Send a message to an agent, a #topic, or * (everyone). Durable before it returns.",
        output_schema = schema::output::<SendResult>(),
        input_schema = schema::input::<SendArgs>()
    )]
    async fn send_message(
        &self,
        Parameters(a): Parameters<JsonObject>,
    ) -> Result<CallToolResult, String> {
        let a: SendArgs = parse(a, &[MESSAGE_TYPES, PRIORITIES])?;
        let to = a.to.clone();
        let send = self.inner.client.send(SendRequest {
            req: 0,
            id: None,
            to: a.to,
            body: a.body,
            subject: a.subject,
            kind: a.kind.unwrap_or_default(),
            priority: a.priority.unwrap_or_default(),
            reply_to: a.reply_to,
            data: a.data,
        });
        reply(send, |r| render::sent(&to, r)).await
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
        let mut note = String::new();
        if a.mark_read.unwrap_or(true) {
            let ids: Vec<String> = r
                .messages
                .iter()
                .filter(|m| !m.read)
                .map(|m| m.id.clone())
                .collect();
            note = mark_returned(c, ids).await?;
        }
        let heading = match r.messages.len() {
            0 => "No messages.".to_owned(),
            n => format!("{n} message(s); {} more unread.", r.unread_remaining),
        };
        let text = render::messages(&heading, &r.messages) + &note;
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
                biased;
                _ = self.inner.shutdown.cancelled() => return Err("wait_for_messages: the server is shutting down".into()),
                _ = ctx.ct.cancelled() => return Err("wait_for_messages: cancelled".into()),
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
        let note = mark_returned(&self.inner.client, ids).await?;
        let r = WaitResult {
            messages,
            timed_out: false,
        };
        let text = render::messages(
            &format!("{} new message(s).", r.messages.len()),
            &r.messages,
        ) + &note;
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
        reply(self.inner.client.presence(a.agent), |r| {
            let text = r
                .agents
                .iter()
                .map(render::presence)
                .collect::<Vec<_>>()
                .join("\n");
            if text.is_empty() {
                "No agents known.".into()
            } else {
                text
            }
        })
        .await
    }

    #[tool(
        description = "Set your status (available, busy, away) and an optional text.",
        output_schema = schema::output::<PresenceEntry>(),
        input_schema = schema::input::<StatusArgs>()
    )]
    async fn set_status(
        &self,
        Parameters(a): Parameters<JsonObject>,
    ) -> Result<CallToolResult, String> {
        let a: StatusArgs = parse(a, &[STATUSES])?;
        reply(
            self.inner.client.set_status(a.status, a.text),
            render::presence,
        )
        .await
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
        reply(self.inner.client.mark_read(ids, all), |r| {
            format!("{} marked read.", r.marked)
        })
        .await
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
        reply(self.inner.client.subscribe(topic, on), |r| {
            if r.topics.is_empty() {
                "Subscribed to no topics.".to_owned()
            } else {
                format!("Subscribed to: #{}", r.topics.join(", #"))
            }
        })
        .await
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
        reply(self.inner.client.thread(a.id), |r| {
            render::messages(
                &format!("Thread of {} message(s).", r.messages.len()),
                &r.messages,
            )
        })
        .await
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
        reply(self.inner.client.search(a.query, limit), |r| {
            render::messages(&format!("{} match(es).", r.messages.len()), &r.messages)
        })
        .await
    }
}
