//! The MCP handler (capabilities, instructions, resource requests) and serving it on stdio.

use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, CustomRequest,
    CustomResult, DiscoverResult, Implementation, InitializeRequestParams, InitializeResult,
    JsonObject, ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ServerCapabilities,
    ServerConfig, SubscriptionFilter,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool_handler};
use tokio_util::sync::CancellationToken;

use super::compat::Served;
use super::{McpServer, PushSettings, channel, instructions};
use crate::client::Client;

#[tool_handler]
impl ServerHandler for McpServer {
    /// Every tool call ends when the server shuts down (stdin closed, SIGTERM): a call waiting
    /// on the node — a long-poll, or any request while the node is unreachable — would
    /// otherwise hold the exit for rmcp's drain of in-flight handlers (5 s).
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let router = Self::tool_router();
        let call = router.call(ToolCallContext::new(self, request, context));
        // Biased: at shutdown the request's own token is cancelled right after ours, and the
        // answer must say why, not that the call was cancelled.
        tokio::select! {
            biased;
            _ = self.inner.shutdown.cancelled() => Ok(CallToolResult::error(vec![
                ContentBlock::text("the switchboard MCP server is shutting down; nothing more was done"),
            ])
            .into()),
            r = call => r,
        }
    }

    fn get_info(&self) -> ServerConfig {
        let push = self.inner.push.is_on();
        let mut capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_resources_subscribe()
            .build();
        if push {
            capabilities.experimental = Some(
                [(channel::CAPABILITY.to_owned(), JsonObject::new())]
                    .into_iter()
                    .collect(),
            );
        }
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                "switchboard",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(instructions(&self.inner.agent, push))
    }

    /// `--push auto` decides here, from `clientInfo`, before the capabilities are answered.
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        self.inner.push.decide(Some(&request.client_info));
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    /// A 2026-07-28 client has no `initialize`: its `clientInfo` rides in the `_meta`.
    async fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, McpError> {
        self.inner.push.decide(context.meta.client_info().as_ref());
        Ok(DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        ))
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
        self.known(&request.uri)?;
        let text = self.summary().await?;
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, request.uri.clone())]).into())
    }

    /// `resources/subscribe` and `resources/unsubscribe`, on every protocol version (see
    /// `compat`).
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, McpError> {
        self.custom_request(request)
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
        self.listen_updates(cx).await
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

/// Serves MCP on stdin/stdout until the client goes away (stdin closes) or `stop` is
/// cancelled (a signal). Either way pending tool calls are answered at once and the service
/// ends without waiting for them.
pub async fn serve_stdio(
    client: Client,
    stop: CancellationToken,
    push: PushSettings,
) -> crate::Result<()> {
    use rmcp::ServiceExt;
    let shutdown = stop;
    let server = McpServer::new(client, shutdown.clone(), push);
    let (stdin, stdout) = rmcp::transport::stdio();
    let stdin = EofSignal {
        inner: stdin,
        eof: shutdown.clone(),
    };
    let running = tokio::select! {
        r = Served(server.clone()).serve((stdin, stdout)) => r
            .map_err(|e| crate::Error::Connection(format!("MCP handshake failed: {e}")))?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    server.start_notifier(running.peer().clone());
    server.start_push(running.peer().clone());
    let cancel = running.cancellation_token();
    let waiting = running.waiting();
    tokio::pin!(waiting);
    let result = tokio::select! {
        r = &mut waiting => r,
        _ = shutdown.cancelled() => {
            // The tool calls have their answers (see `call_tool`); rmcp writes them and ends.
            cancel.cancel();
            waiting.await
        }
    };
    shutdown.cancel();
    server.stop_tasks().await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "MCP service ended with an error");
    }
    Ok(())
}
