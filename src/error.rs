//! Library errors. Each maps to a stable wire [`ErrorCode`] so the node, the CLI and the MCP
//! server report the same failure the same way.

use crate::protocol::ErrorCode;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied value broke a rule; the text names the argument and the rule.
    #[error("{0}")]
    Invalid(String),
    /// A client-chosen message id a send cannot use: not a ULID, outside the window around
    /// now, or already another sender's. One answer for all, so it reveals nothing.
    #[error(
        "id: '{0}' cannot be used: give a ULID made in the last 7 days (at most 5 minutes ahead of the node's clock), or leave id out"
    )]
    UnusableId(String),
    /// A refusal the peer should see with a specific code (unknown agent, rate limited, ...).
    #[error("{message}")]
    Refused {
        /// The wire code.
        code: ErrorCode,
        /// What to tell the caller.
        message: String,
    },
    /// The SQLite store failed.
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
    /// A file or socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Settings could not be resolved (bad flag, bad config file).
    #[error("{0}")]
    Config(String),
    /// The data dir is held by another node.
    #[error(
        "the data dir {0} is in use by another switchboard node (only one node may hold a data dir)"
    )]
    Locked(String),
    /// The node (or the store thread) has stopped.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Talking to a node failed.
    #[error("{0}")]
    Connection(String),
    /// A TLS handshake failed on the certificate or the protocol (the text names the host and
    /// why): retrying cannot fix it, so clients give up at once.
    #[error("{0}")]
    Tls(String),
    /// No message with this id that the asking agent may read; the text names the argument
    /// (`id: no message 'X' that you can read`).
    #[error("{field}: no message '{id}' that you can read")]
    UnknownMessage {
        /// The argument that named it (`id`, `reply_to`).
        field: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The thread loop guard stopped a reply.
    #[error(
        "loop guard: this thread had {count} messages in the last minute (limit {limit}). \
         Nothing was sent. Do not answer acknowledgements with acknowledgements."
    )]
    LoopGuard {
        /// Messages the thread had in the last minute.
        count: u32,
        /// The configured limit per minute.
        limit: u32,
    },
    /// The store's transaction did not commit; the job's effect is gone.
    #[error("the store could not commit: {reason}")]
    NotCommitted {
        /// What kind of failure it was, for the wire code.
        fault: Fault,
        /// Why (SQLite's text, for the node's log).
        reason: String,
    },
    /// The node refused a request with an error frame.
    #[error("{message} [{code}]", code = code.as_str())]
    Remote {
        /// The wire code.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The answer for an unusable client-chosen id (shown cut to 40 characters).
    pub fn unusable_id(id: &str) -> Self {
        Error::UnusableId(id.chars().take(40).collect())
    }

    /// A refusal with a wire code.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Refused {
            code,
            message: message.into(),
        }
    }

    /// The wire code a peer sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) | Error::UnusableId(_) => ErrorCode::InvalidArgument,
            Error::Refused { code, .. } | Error::Remote { code, .. } => *code,
            Error::ShuttingDown => ErrorCode::ShuttingDown,
            Error::UnknownMessage { .. } => ErrorCode::UnknownMessage,
            Error::LoopGuard { .. } => ErrorCode::RateLimited,
            Error::Store(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
                ErrorCode::StorageFull
            }
            Error::Store(_) => ErrorCode::StorageError,
            Error::NotCommitted {
                fault: Fault::Full, ..
            } => ErrorCode::StorageFull,
            Error::NotCommitted { .. } => ErrorCode::StorageError,
            _ => ErrorCode::Internal,
        }
    }

    /// What a client is told. The store's own text (SQL, file names) stays in the node's log:
    /// it means nothing to an agent and tells an outsider about the node's insides.
    pub fn client_message(&self) -> String {
        match self.code() {
            ErrorCode::StorageFull => {
                "the node's disk is full: nothing was stored; try again later".into()
            }
            ErrorCode::StorageError => {
                "the node's store failed: nothing was stored (the node's log says why)".into()
            }
            _ => self.to_string(),
        }
    }
}

/// Why the store could not write: what decides `storage_full` or `storage_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Out of disk space (SQLITE_FULL).
    Full,
    /// Any other failure to write.
    Failed,
}

/// Shorthand used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32, text: &str) -> Error {
        Error::Store(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            Some(text.into()),
        ))
    }

    #[test]
    fn store_failures_have_codes_and_no_store_text() {
        let full = sqlite(rusqlite::ffi::SQLITE_FULL, "database or disk is full");
        assert_eq!(full.code(), ErrorCode::StorageFull);
        assert!(
            !full.client_message().contains("database"),
            "{}",
            full.client_message()
        );
        let other = sqlite(
            rusqlite::ffi::SQLITE_CORRUPT,
            "near \"x\": syntax error in messages",
        );
        assert_eq!(other.code(), ErrorCode::StorageError);
        assert!(
            !other.client_message().contains("syntax"),
            "{}",
            other.client_message()
        );
        let invalid = Error::Invalid("limit: must be between 1 and 200".into());
        assert_eq!(invalid.client_message(), "limit: must be between 1 and 200");
    }
}
