//! Channel push: every message that reaches the agent while its MCP session is up becomes a
//! `notifications/claude/channel` event, so Claude Code shows it to the model at once — no
//! polling, no hook.
//!
//! **When.** `--push channel` always; `--push auto` (the default) only when the client says it
//! is Claude Code (`clientInfo.name` in `initialize`, or in a 2026-07-28 `server/discover`'s
//! `_meta`), since other clients do not know the notification; `--push off` never. The
//! capability `experimental["claude/channel"]` is declared exactly when push is on.
//!
//! **What.** At start, one summary if unread mail is waiting (not one event per old message);
//! then one event per arriving message. A push never marks anything read: events are not
//! acknowledged, so they are no proof that the model saw the message, and the mail stays unread
//! until a tool reads or marks it.
//!
//! **Bursts** ([`Coalescer`]): in a window of [`WINDOW`] from the first message, up to
//! [`ONE_BY_ONE`] (`--push-burst`) messages go out one by one, at once; the rest of the window's messages are
//! counted and announced in one summary when it ends. While the flood goes on, every following
//! window sends only its summary, and each window is twice as long as the one before (up to
//! [`MAX_WINDOW`]); the first window that ends empty resets the rule. So 200 messages in a second
//! make 5 events and one summary; an endless flood makes a summary every 2, 4, 8, 16, 30, 30… s.

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::time::Duration;

use rmcp::model::{CustomNotification, Implementation, ServerNotification};
use rmcp::{Peer, RoleServer};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::channel::{self, Event, Tally};
use super::{Inner, McpServer};
use crate::protocol::InboxRequest;

/// Messages pushed one by one in a window before the rest is summarised.
pub const ONE_BY_ONE: usize = 5;
/// The first window of a burst.
pub const WINDOW: Duration = Duration::from_secs(2);
/// The longest window while a flood lasts.
pub const MAX_WINDOW: Duration = Duration::from_secs(30);
/// Message ids remembered so a replay after a reconnect is not pushed again.
const SEEN: usize = 8192;
/// How long a sender's node, looked up for the rendering, is trusted.
const NODE_TTL: Duration = Duration::from_secs(30);

/// `--push`: whether arriving mail is pushed into the session as channel events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushMode {
    /// `channel` for Claude Code, `off` for every other client.
    #[default]
    Auto,
    /// Always push.
    Channel,
    /// Never push.
    Off,
}

impl FromStr for PushMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PushMode::Auto),
            "channel" => Ok(PushMode::Channel),
            "off" => Ok(PushMode::Off),
            other => Err(format!(
                "'{other}' is not a push mode (auto, channel or off)"
            )),
        }
    }
}

/// `--push` and `--push-burst`: when to push, and how many messages of a burst window go out
/// one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushSettings {
    /// When to push.
    pub mode: PushMode,
    /// Messages pushed one by one per window before the rest is summarised.
    pub one_by_one: usize,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            mode: PushMode::Auto,
            one_by_one: ONE_BY_ONE,
        }
    }
}

/// Whether a client's `clientInfo` is Claude Code's (it sends `claude-code`).
pub fn is_claude_code(client: &Implementation) -> bool {
    let name: String = client
        .name
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '_' { '-' } else { c })
        .collect();
    name == "claude-code"
}

/// The push setting and, for `auto`, the decision the client's handshake made.
pub(super) struct Push {
    mode: PushMode,
    one_by_one: usize,
    on: tokio::sync::watch::Sender<bool>,
}

impl Push {
    pub(super) fn new(s: PushSettings) -> Push {
        Push {
            mode: s.mode,
            one_by_one: s.one_by_one,
            on: tokio::sync::watch::Sender::new(s.mode == PushMode::Channel),
        }
    }

    /// With `auto`, turns push on for Claude Code (a handshake decides once; later requests
    /// cannot take back a capability already declared).
    pub(super) fn decide(&self, client: Option<&Implementation>) {
        if self.mode == PushMode::Auto && client.is_some_and(is_claude_code) {
            self.on.send_replace(true);
        }
    }

    /// Whether events are sent (and the capability declared).
    pub(super) fn is_on(&self) -> bool {
        *self.on.borrow()
    }
}

/// What the burst rule decides for one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Push it now, on its own.
    Now,
    /// Counted for the window's summary.
    Held,
}

/// The burst rule (see the module docs), as a pure state machine over the clock it is given.
#[derive(Debug)]
pub struct Coalescer {
    /// Messages a fresh window pushes one by one.
    one_by_one: usize,
    /// End of the open window, if one is open.
    ends: Option<Instant>,
    /// Length of the next window.
    next: Duration,
    /// Messages the open window may still push one by one.
    budget: usize,
    held: Tally,
}

impl Coalescer {
    /// A rule that pushes `one_by_one` messages of a fresh window on their own.
    pub fn new(one_by_one: usize) -> Coalescer {
        Coalescer {
            one_by_one,
            ends: None,
            next: WINDOW,
            budget: one_by_one,
            held: Tally::default(),
        }
    }

    /// A message from `from` arrived at `now`.
    pub fn offer(&mut self, now: Instant, from: &str) -> Offer {
        self.open(now);
        if self.budget > 0 {
            self.budget -= 1;
            Offer::Now
        } else {
            self.held.add(from);
            Offer::Held
        }
    }

    /// `n` messages were missed (the push channel lagged): they go into the summary.
    pub fn missed(&mut self, now: Instant, n: u64) {
        self.open(now);
        self.held.add_unknown(n);
    }

    /// When the open window ends.
    pub fn deadline(&self) -> Option<Instant> {
        self.ends
    }

    /// Ends the window (call at its deadline): its summary, if it held anything, and the
    /// window's length in seconds.
    pub fn close(&mut self, now: Instant) -> Option<(Tally, u64)> {
        let secs = self.next.as_secs();
        self.ends = None;
        if self.held.total() == 0 {
            *self = Coalescer::new(self.one_by_one);
            return None;
        }
        // Still flooding: the next window opens now, summary only, twice as long.
        self.next = (self.next * 2).min(MAX_WINDOW);
        self.budget = 0;
        self.ends = Some(now + self.next);
        Some((std::mem::take(&mut self.held), secs))
    }

    fn open(&mut self, now: Instant) {
        if self.ends.is_none() {
            self.ends = Some(now + self.next);
        }
    }
}

/// Ids already pushed (or covered by the start summary): the node replays unread mail after
/// every reconnect, and none of it may come twice. Bounded: the oldest ids are forgotten first.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// True the first time `id` is seen.
    fn first(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

impl McpServer {
    /// Starts the pusher: it waits until push is on (at once with `channel`; with `auto` when
    /// the handshake names Claude Code), then sends channel events until shutdown.
    pub fn start_push(&self, peer: Peer<RoleServer>) {
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            let mut on = inner.push.on.subscribe();
            loop {
                if *on.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    changed = on.changed() => if changed.is_err() { return },
                }
            }
            Pusher {
                inner: &inner,
                peer,
                nodes: HashMap::new(),
            }
            .run()
            .await;
        });
    }
}

struct Pusher<'a> {
    inner: &'a Inner,
    peer: Peer<RoleServer>,
    /// Sender → (its node, when looked up).
    nodes: HashMap<String, (Option<String>, Instant)>,
}

impl Pusher<'_> {
    async fn run(mut self) {
        let client = &self.inner.client;
        // Subscribe before looking at the inbox, so nothing arrives unseen in between.
        let mut pushes = client.pushes();
        let mut seen = Seen::default();
        match client.inbox(InboxRequest::unread(200)).await {
            Ok(r) => {
                let mut waiting = Tally::default();
                for m in &r.messages {
                    seen.first(&m.id);
                    waiting.add(&m.from);
                }
                waiting.add_unknown(u64::from(r.unread_remaining));
                if waiting.total() > 0 && !self.send(channel::waiting(&waiting, self.me())).await {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the inbox for the start summary"),
        }
        let mut rule = Coalescer::new(self.inner.push.one_by_one);
        loop {
            let deadline = rule.deadline();
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if let Some((held, secs)) = rule.close(Instant::now())
                        && !self.send(channel::burst(&held, self.me(), secs)).await
                    {
                        return;
                    }
                }
                p = pushes.recv() => match p {
                    Ok(m) => {
                        if m.read || !seen.first(&m.id) {
                            continue;
                        }
                        if rule.offer(Instant::now(), &m.from) == Offer::Now {
                            let node = self.node_of(&m.from).await;
                            if !self.send(channel::message(&m, self.me(), node.as_deref())).await {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => rule.missed(Instant::now(), n),
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    fn me(&self) -> &str {
        self.inner.client.welcomed_as()
    }

    /// Sends one event; false once the client is gone (or the server is shutting down).
    async fn send(&self, e: Event) -> bool {
        let note = ServerNotification::CustomNotification(CustomNotification::new(
            channel::METHOD,
            Some(e.params()),
        ));
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => false,
            r = self.peer.send_notification(note) => r.is_ok(),
        }
    }

    /// The node the sender is on (or was last on), from presence, cached for [`NODE_TTL`].
    async fn node_of(&mut self, from: &str) -> Option<String> {
        if let Some((node, at)) = self.nodes.get(from)
            && at.elapsed() < NODE_TTL
        {
            return node.clone();
        }
        let node = match self.inner.client.presence(Some(from.to_owned())).await {
            Ok(r) => r.agents.into_iter().next().map(|p| p.node),
            Err(e) => {
                tracing::debug!(error = %e, from, "no presence for a channel event's sender");
                None
            }
        };
        if self.nodes.len() >= 1024 {
            self.nodes.clear();
        }
        self.nodes
            .insert(from.to_owned(), (node.clone(), Instant::now()));
        node
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Implementation {
        Implementation::new(name, "2.1.90")
    }

    #[test]
    fn claude_code_is_recognised_by_its_client_name() {
        assert!(is_claude_code(&named("claude-code")));
        assert!(is_claude_code(&named("Claude Code")));
        assert!(!is_claude_code(&named("codex-mcp-client")));
        assert!(!is_claude_code(&named("claude-code-imitation")));
    }

    #[test]
    fn auto_turns_on_for_claude_code_only_and_off_stays_off() {
        let with = |mode| {
            Push::new(PushSettings {
                mode,
                ..Default::default()
            })
        };
        let auto = with(PushMode::Auto);
        auto.decide(Some(&named("codex-mcp-client")));
        assert!(!auto.is_on());
        auto.decide(Some(&named("claude-code")));
        assert!(auto.is_on());
        let off = with(PushMode::Off);
        off.decide(Some(&named("claude-code")));
        assert!(!off.is_on());
        assert!(with(PushMode::Channel).is_on());
        assert_eq!("channel".parse(), Ok(PushMode::Channel));
        assert!(
            "on".parse::<PushMode>()
                .unwrap_err()
                .contains("auto, channel or off")
        );
    }

    #[test]
    fn a_burst_pushes_five_then_one_summary_per_doubling_window() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ONE_BY_ONE);
        let now: Vec<Offer> = (0..200).map(|_| c.offer(t0, "alice")).collect();
        assert_eq!(now.iter().filter(|o| **o == Offer::Now).count(), ONE_BY_ONE);
        assert_eq!(c.deadline(), Some(t0 + WINDOW));
        let (held, secs) = c.close(t0 + WINDOW).unwrap();
        assert_eq!((held.total(), secs), (195, 2));
        // The flood goes on: summary only, in a window twice as long.
        let t1 = t0 + WINDOW;
        assert_eq!(c.offer(t1, "carol"), Offer::Held);
        assert_eq!(c.deadline(), Some(t1 + 2 * WINDOW));
        let (held, secs) = c.close(t1 + 2 * WINDOW).unwrap();
        assert_eq!((held.total(), secs), (1, 4));
        // A window that ends empty resets the rule.
        assert!(c.close(t1 + 6 * WINDOW).is_none());
        assert_eq!(c.deadline(), None);
        assert_eq!(c.offer(t1 + 7 * WINDOW, "dave"), Offer::Now);
    }

    #[test]
    fn windows_stop_growing_at_the_cap() {
        let mut t = Instant::now();
        let mut c = Coalescer::new(ONE_BY_ONE);
        for _ in 0..=ONE_BY_ONE {
            c.offer(t, "alice");
        }
        for _ in 0..10 {
            t = c.deadline().unwrap();
            c.close(t).unwrap();
            c.missed(t, 3);
        }
        assert_eq!(c.deadline(), Some(t + MAX_WINDOW));
    }

    #[test]
    fn seen_ids_are_bounded() {
        let mut s = Seen::default();
        assert!(s.first("a"));
        assert!(!s.first("a"));
        for i in 0..SEEN {
            s.first(&i.to_string());
        }
        assert!(s.first("a"), "the oldest id was forgotten");
        assert!(s.ids.len() <= SEEN + 1);
    }
}
