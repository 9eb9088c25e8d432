//! The service rmcp serves: the handler, plus `resources/subscribe` and
//! `resources/unsubscribe` on every protocol version.
//!
//! Protocol 2026-07-28 replaced those two methods by `subscriptions/listen`, and rmcp answers
//! them -32601 (method not found) on such a session before any handler runs — while the
//! `resources.subscribe` capability it also advertises there (meaning "listen accepts resource
//! subscriptions") tells a client the opposite. A client that negotiated 2026-07-28 and still
//! subscribes the old way is common during the transition, so the subscription is accepted and
//! served as for 2025-11-25: `notifications/resources/updated` whenever mail arrives. The requests
//! are handed to the handler as custom requests, so rmcp still checks the session's version and
//! the request's `_meta` as it does for any other request.

use std::borrow::Cow;

use rmcp::model::{
    ClientNotification, ClientRequest, CustomRequest, CustomResult, ErrorCode, ProtocolVersion,
    ServerConfig, ServerResult, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData as McpError, RoleServer, Service};

use super::McpServer;

const SUBSCRIBE: &str = "resources/subscribe";
const UNSUBSCRIBE: &str = "resources/unsubscribe";

/// [`McpServer`] as rmcp serves it.
#[derive(Clone)]
pub struct Served(pub McpServer);

impl Service<RoleServer> for Served {
    async fn handle_request(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, McpError> {
        #[allow(deprecated)] // the legacy requests are exactly what this serves
        let request = match request {
            ClientRequest::SubscribeRequest(r) => custom(SUBSCRIBE, &r.params)?,
            ClientRequest::UnsubscribeRequest(r) => custom(UNSUBSCRIBE, &r.params)?,
            other => other,
        };
        Service::handle_request(&self.0, request, context).await
    }

    async fn handle_notification(
        &self,
        notification: ClientNotification,
        context: NotificationContext<RoleServer>,
    ) -> Result<(), McpError> {
        Service::handle_notification(&self.0, notification, context).await
    }

    fn get_info(&self) -> ServerConfig {
        Service::get_info(&self.0)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Service::supported_protocol_versions(&self.0)
    }
}

fn custom(method: &str, params: &impl serde::Serialize) -> Result<ClientRequest, McpError> {
    let params = serde_json::to_value(params)
        .map_err(|e| McpError::invalid_params(format!("{method}: {e}"), None))?;
    Ok(ClientRequest::CustomRequest(CustomRequest::new(
        method,
        Some(params),
    )))
}

/// A legacy subscription request's params.
fn params<T: serde::de::DeserializeOwned>(r: &CustomRequest) -> Result<T, McpError> {
    let bad = |why: String| McpError::invalid_params(format!("{}: {why}", r.method), None);
    r.params_as()
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("params.uri is required".into()))
}

impl McpServer {
    /// The handler's answer to a custom request: the two legacy subscription methods.
    pub(super) fn custom_request(&self, request: CustomRequest) -> Result<CustomResult, McpError> {
        match request.method.as_str() {
            SUBSCRIBE => {
                let p: SubscribeRequestParams = params(&request)?;
                self.subscribe_to(p.uri)?;
            }
            UNSUBSCRIBE => {
                let p: UnsubscribeRequestParams = params(&request)?;
                self.unsubscribe_from(&p.uri);
            }
            other => {
                return Err(McpError::new(
                    ErrorCode::METHOD_NOT_FOUND,
                    format!("no method {other}"),
                    None,
                ));
            }
        }
        Ok(CustomResult::new(serde_json::json!({})))
    }
}
