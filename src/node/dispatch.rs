//! One request frame of a client session, decoded and handed to the core; the answer comes
//! back as the frame to write (a send is answered later, through the session's queue).

use std::sync::Arc;

use crate::core::{Metrics, Router, SendQueue};
use crate::error::{Error, Result};
use crate::protocol::{
    ClientFrame, ErrorCode, MarkResult, MessagesResult, PresenceResult, Role, ServerFrame,
    TopicsResult,
};

/// What a session's requests act as.
pub struct Conn {
    /// The core.
    pub router: Arc<Router>,
    /// The authenticated agent.
    pub agent: String,
    /// What the connection is for.
    pub role: Role,
    /// It holds the local secret.
    pub admin: bool,
    /// The node's peer links, when it is part of a mesh.
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
    /// Its sends in flight.
    pub sends: SendQueue,
}

impl Conn {
    /// Handles one text frame; returns the answer to write, if any.
    pub async fn handle(&self, text: &str) -> Option<ServerFrame> {
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                Metrics::inc(&self.router.metrics.frames_rejected_total);
                let req = request_id(text);
                return Some(ServerFrame::error(
                    req,
                    ErrorCode::BadFrame,
                    format!("bad frame: {e}"),
                ));
            }
        };
        let req = frame.req();
        match self.dispatch(frame).await {
            Ok(reply) => reply,
            Err(e) => {
                Metrics::inc(&self.router.metrics.frames_rejected_total);
                Some(crate::core::error_frame(req, &e))
            }
        }
    }

    async fn dispatch(&self, frame: ClientFrame) -> Result<Option<ServerFrame>> {
        let (r, agent) = (&self.router, self.agent.as_str());
        Ok(Some(match frame {
            ClientFrame::Hello(_) => {
                return Err(Error::Invalid(
                    "hello: this connection is already authenticated".into(),
                ));
            }
            ClientFrame::Send(req) => {
                r.send(&self.sends, agent, self.role, req).await?;
                return Ok(None);
            }
            ClientFrame::Ack(a) => {
                r.acked(agent, self.role, a.ids);
                return Ok(None);
            }
            ClientFrame::Inbox(q) => ServerFrame::Inbox {
                req: q.req,
                result: r.inbox(agent, q).await?,
            },
            ClientFrame::MarkRead(m) => ServerFrame::Marked {
                req: m.req,
                result: MarkResult {
                    marked: r.mark_read(agent, m).await?,
                },
            },
            ClientFrame::Presence(p) => ServerFrame::Presence {
                req: p.req,
                result: PresenceResult {
                    agents: r.presence(p.agent.as_deref())?,
                },
            },
            ClientFrame::SetStatus(s) => ServerFrame::Status {
                req: s.req,
                result: r.set_status(agent, s.status, s.text).await?,
            },
            ClientFrame::Subscribe(t) => ServerFrame::Topics {
                req: t.req,
                result: TopicsResult {
                    topics: r.subscribe(agent, &t.topic, true).await?,
                },
            },
            ClientFrame::Unsubscribe(t) => ServerFrame::Topics {
                req: t.req,
                result: TopicsResult {
                    topics: r.subscribe(agent, &t.topic, false).await?,
                },
            },
            ClientFrame::Thread(t) => ServerFrame::Messages {
                req: t.req,
                result: MessagesResult {
                    messages: r.thread(agent, t.id).await?,
                },
            },
            ClientFrame::Search(s) => ServerFrame::Messages {
                req: s.req,
                result: MessagesResult {
                    messages: r.search(agent, s).await?,
                },
            },
            ClientFrame::Token(t) => ServerFrame::Tokens {
                req: t.req,
                result: r.token(self.admin, t.action, t.name, t.operator).await?,
            },
            ClientFrame::Forget(f) => ServerFrame::Forgotten {
                req: f.req,
                result: r.forget(self.admin, &f.name).await?,
            },
            ClientFrame::MeshForget(f) => ServerFrame::MeshForgot {
                req: f.req,
                result: self.mesh_forget(&f.node).await?,
            },
            ClientFrame::Prune(p) => ServerFrame::Pruned {
                req: p.req,
                result: r.prune(self.admin, p.dry_run).await?,
            },
            ClientFrame::Ping(p) => ServerFrame::Pong { req: p.req },
        }))
    }
}

impl Conn {
    async fn mesh_forget(&self, node: &str) -> Result<crate::protocol::MeshForgetResult> {
        if !self.admin {
            return Err(Error::refused(
                ErrorCode::Forbidden,
                "mesh_forget needs the local secret",
            ));
        }
        match &self.mesh {
            Some(m) => m.forget(node).await,
            None => Err(Error::Invalid(
                "node: this node is not in a mesh (it has no mesh secret), so it knows no \
                 other node"
                    .into(),
            )),
        }
    }
}

/// The `req` of a frame that did not decode, so its error still answers the right request:
/// the top-level object's keys are read one by one until `req`, and nothing past it, so a
/// frame nested too deeply to parse whole still names its `req` when that comes first.
pub fn request_id(text: &str) -> Option<u64> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

    struct Req<'a>(&'a mut Option<u64>);

    impl<'de> Visitor<'de> for Req<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "req" {
                    *self.0 = map.next_value::<u64>().ok();
                    // Stop here: what follows may be what made the frame unreadable.
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let mut req = None;
    // The error after an early stop (the object is not consumed to its end) is expected.
    let _ = serde_json::Deserializer::from_str(text).deserialize_map(Req(&mut req));
    req
}

#[cfg(test)]
mod tests {
    use super::request_id;

    #[test]
    fn req_is_found_in_frames_that_do_not_decode() {
        assert_eq!(request_id(r#"{"op":"nope","req":7}"#), Some(7));
        assert_eq!(request_id(r#"{"req":8,"op":"send","to":1}"#), Some(8));
        let deep = format!(
            r#"{{"op":"send","req":9,"data":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
        assert_eq!(request_id(&deep), Some(9));
        assert_eq!(request_id("not json"), None);
        assert_eq!(request_id(r#"{"op":"send","req":"x"}"#), None);
        assert_eq!(request_id("[1,2]"), None);
    }
}
