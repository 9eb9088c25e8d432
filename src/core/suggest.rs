//! "Did you mean": an unknown recipient is an error that names the closest known names, never
//! a new empty inbox (a typo'd recipient must not be a black hole).

use crate::error::Error;
use crate::message::MAX_NAME_LEN;
use crate::protocol::ErrorCode;

/// What was not found: an agent name, or a topic nobody subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// An agent name.
    Agent,
    /// A topic name (shown with its `#`).
    Topic,
}

/// "unknown agent 'bbo' — did you mean 'bob'? Nothing was sent." with up to three close names.
pub fn unknown<'a>(what: Unknown, name: &str, known: impl Iterator<Item = &'a String>) -> Error {
    let (code, noun, prefix, why) = match what {
        Unknown::Agent => (ErrorCode::UnknownAgent, "agent", "", ""),
        Unknown::Topic => (
            ErrorCode::UnknownTopic,
            "topic",
            "#",
            ": nobody subscribes to it",
        ),
    };
    let names: Vec<String> = closest(name, known)
        .into_iter()
        .map(|k| format!("'{prefix}{k}'"))
        .collect();
    let shown: String = name.chars().take(MAX_NAME_LEN).collect();
    let hint = match (names.len(), what) {
        // Nothing close: say how a name becomes known, since a new user's first send is here.
        (0, Unknown::Agent) => format!(
            ": no agent of that name has connected yet — start `switchboard mcp --agent {shown}`, \
             or `switchboard agent add {shown}`. Nothing was sent."
        ),
        (0, Unknown::Topic) => ". Nothing was sent.".to_owned(),
        _ => format!(" — did you mean {}? Nothing was sent.", names.join(" or ")),
    };
    Error::refused(code, format!("unknown {noun} '{prefix}{shown}'{why}{hint}"))
}

/// "unknown agent 'bbo' — did you mean 'bob'?" for an operation on an existing agent (such as
/// forgetting it), which changed nothing.
pub fn unknown_agent<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> Error {
    let names: Vec<String> = closest(name, known)
        .into_iter()
        .map(|k| format!("'{k}'"))
        .collect();
    let shown: String = name.chars().take(MAX_NAME_LEN).collect();
    let hint = match names.len() {
        0 => ".".to_owned(),
        _ => format!(" — did you mean {}?", names.join(" or ")),
    };
    Error::refused(
        ErrorCode::UnknownAgent,
        format!("unknown agent '{shown}'{hint} Nothing was changed."),
    )
}

/// Up to three known names close to `name`, closest first.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut close: Vec<(f64, &String)> = known
        .map(|k| (strsim::normalized_damerau_levenshtein(name, k), k))
        .filter(|(score, k)| {
            *score >= 0.5
                || strsim::damerau_levenshtein(name, k) <= 2
                || k.to_lowercase() == name.to_lowercase()
        })
        .collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    close.into_iter().take(3).map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        let known = ["bob".to_string(), "alice".to_string(), "robert".to_string()];
        let e = unknown(Unknown::Agent, "bbo", known.iter());
        assert!(
            e.to_string()
                .starts_with("unknown agent 'bbo' — did you mean 'bob'"),
            "{e}"
        );
        let e = unknown(Unknown::Agent, "zzzzzz", known.iter());
        assert!(!e.to_string().contains("did you mean"), "{e}");
        assert_eq!(
            e.to_string(),
            "unknown agent 'zzzzzz': no agent of that name has connected yet — start \
             `switchboard mcp --agent zzzzzz`, or `switchboard agent add zzzzzz`. Nothing was sent."
        );
        let e = unknown(Unknown::Topic, "zzzzzz", known.iter());
        assert_eq!(
            e.to_string(),
            "unknown topic '#zzzzzz': nobody subscribes to it. Nothing was sent."
        );
    }

    #[test]
    fn topics_say_nobody_subscribes() {
        let known = ["builds".to_string()];
        let e = unknown(Unknown::Topic, "bulds", known.iter());
        assert_eq!(e.code(), ErrorCode::UnknownTopic);
        assert_eq!(
            e.to_string(),
            "unknown topic '#bulds': nobody subscribes to it — did you mean '#builds'? Nothing was sent."
        );
    }
}
