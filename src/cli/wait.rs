//! `switchboard wait --as NAME [--timeout D] [--json | --stop-hook]`: block until the agent has
//! unread mail (exit 0, a summary) or the timeout passes (exit 3), changing nothing.
//!
//! It is the wake-up for clients that cannot be pushed to (Codex, Kimi, scripts): a client's
//! `Stop` hook runs it, and its summary tells the model to read its mail. No new wire op is
//! needed: a one-shot connection checks that the agent exists (presence) and peeks at the inbox
//! (`inbox` never marks read); only if nothing is there does a watcher connection follow pushes,
//! peeking again after subscribing (so nothing falls in between) and after every push. A
//! watcher is neither presence nor an ack that makes a send `delivered`, and the name is checked
//! first so that a typo is refused instead of becoming a new agent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::commands::{Step, Stop, json, out};
use super::connect::{Connection, connect};
use crate::cli::{Global, WaitArgs};
use crate::client::Client;
use crate::error::Error;
use crate::message::validate_name;
use crate::protocol::{InboxRequest, Role};

/// Unread messages listed in a summary.
const LISTED: usize = 5;

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Summary {
    agent: String,
    /// Unread messages in all.
    unread: u32,
    /// Unread messages by sender, of the first 200.
    from: BTreeMap<String, u32>,
    /// The oldest unread messages, at most 20.
    messages: Vec<Brief>,
    timed_out: bool,
}

#[derive(Debug, Serialize)]
struct Brief {
    id: String,
    from: String,
    #[serde(rename = "type")]
    kind: String,
    priority: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    created_at: String,
}

/// `DURATION`: `30s`, `5m`, `1h30m` (humantime), or a bare number of seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{s}' is not a duration (a number of seconds ≥ 0, or 30s, 5m)"));
    }
    humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration ({e}; e.g. 30s, 5m)"))
}

pub(super) async fn wait(g: &Global, a: WaitArgs) -> Step {
    validate_name(&a.agent).map_err(|e| Error::Config(format!("--as: agent name {e}")))?;
    // A timeout too large for the clock is no timeout.
    let deadline = a
        .timeout
        .and_then(|t| tokio::time::Instant::now().checked_add(t));
    let once = connect(g, &a.agent, Role::Cli, false).await?;
    let found = look(&once.client, &a.agent, true).await;
    let found = match found {
        Ok(None) if a.timeout != Some(Duration::ZERO) => follow(g, &a.agent, deadline).await,
        other => other,
    };
    once.close().await;
    match found? {
        Some(s) => show(&s, &a),
        None => {
            let s = Summary {
                agent: a.agent.clone(),
                unread: 0,
                from: BTreeMap::new(),
                messages: vec![],
                timed_out: true,
            };
            if a.json {
                json(&s)?;
            } else if a.stop_hook {
                out("{}")?;
            }
            Err(Stop::TimedOut)
        }
    }
}

/// Follows pushes on a watcher connection until unread mail exists or the deadline passes.
async fn follow(
    g: &Global,
    agent: &str,
    deadline: Option<tokio::time::Instant>,
) -> Result<Option<Summary>, Error> {
    let watch: Connection = connect(g, agent, Role::Watch, true).await?;
    let mut pushes = watch.client.pushes();
    let found = async {
        loop {
            if let Some(s) = look(&watch.client, agent, false).await? {
                return Ok(Some(s));
            }
            // Wait for a push of unread mail; then look again (it may be read already).
            loop {
                tokio::select! {
                    _ = until(deadline) => return Ok(None),
                    p = pushes.recv() => match p {
                        Ok(m) if m.read => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return Err(Error::Connection(
                            "the connection to the node was closed".into(),
                        )),
                    },
                }
            }
        }
    }
    .await;
    watch.close().await;
    found
}

async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The unread summary, or None when nothing is unread. `check` first refuses an unknown agent
/// (with the node's "did you mean").
async fn look(client: &Client, agent: &str, check: bool) -> Result<Option<Summary>, Error> {
    if check {
        client.presence(Some(agent.to_owned())).await?;
    }
    let r = client.inbox(InboxRequest::unread(200)).await?;
    if r.messages.is_empty() {
        return Ok(None);
    }
    let mut from = BTreeMap::new();
    for m in &r.messages {
        *from.entry(m.from.clone()).or_default() += 1;
    }
    Ok(Some(Summary {
        agent: client.welcomed_as().to_owned(),
        unread: r.messages.len() as u32 + r.unread_remaining,
        from,
        messages: r
            .messages
            .iter()
            .take(20)
            .map(|m| Brief {
                id: m.id.clone(),
                from: m.from.clone(),
                kind: m.kind.to_string(),
                priority: m.priority.to_string(),
                subject: m.subject.clone(),
                created_at: m.created_at.clone(),
            })
            .collect(),
        timed_out: false,
    }))
}

fn show(s: &Summary, a: &WaitArgs) -> Step {
    if a.json {
        return json(s);
    }
    let text = text(s);
    if a.stop_hook {
        let decision = serde_json::json!({"decision": "block", "reason": text});
        return out(&decision.to_string());
    }
    out(&text)
}

/// "3 unread switchboard message(s) for bob: 2 from alice, 1 from carol. …"
fn text(s: &Summary) -> String {
    let mut by: Vec<(&String, &u32)> = s.from.iter().collect();
    by.sort_by(|x, y| y.1.cmp(x.1).then_with(|| x.0.cmp(y.0)));
    let senders: Vec<String> = by.iter().map(|(n, c)| format!("{c} from {n}")).collect();
    let mut t = format!(
        "{} unread switchboard message(s) for {}: {}. Call get_inbox to read them (they are \
         from other agents, not from your user).",
        s.unread,
        s.agent,
        senders.join(", ")
    );
    for m in s.messages.iter().take(LISTED) {
        let what = m.subject.as_deref().unwrap_or("(no subject)");
        let what: String = what.chars().take(80).collect();
        t.push_str(&format!("\n- [{}] from {}: {what}", m.id, m.from));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::parse_timeout;
    use std::time::Duration;

    #[test]
    fn timeouts_are_durations_or_seconds() {
        assert_eq!(parse_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_timeout("-1").is_err());
        assert!(
            parse_timeout("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
