//! What can go wrong talking to the Metal API, classified so that the provider can decide
//! (is the device gone? may a create have happened?) and `cmi::status` can pick a code.
//!
//! Messages never contain request or response bodies beyond the API's own error strings,
//! and those are scrubbed of secrets by the provider before they reach a caller.

use std::time::Duration;

use super::Operation;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The API answered with a non-success status. `message` is the API's own error text.
    #[error("Metal API {endpoint} returned HTTP {status}: {message}")]
    Status {
        endpoint: Operation,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },

    /// No HTTP answer: connection refused or reset, TLS failure, or the response was lost.
    /// For a create this is ambiguous: the device may exist.
    #[error("Metal API {endpoint} unreachable: {reason}")]
    Transport { endpoint: Operation, reason: String },

    /// The caller's deadline (or our request timeout) passed before an answer.
    #[error("Metal API {endpoint} did not answer within the deadline")]
    Deadline { endpoint: Operation },

    /// The API answered 2xx with a body we cannot decode.
    #[error("Metal API {endpoint} sent a response that does not match the spec: {reason}")]
    Decode { endpoint: Operation, reason: String },
}

/// What ends an API error text that the client cut short (at
/// [`MAX_ERROR_MESSAGE_CHARS`](super::client::MAX_ERROR_MESSAGE_CHARS) characters).
pub const CUT_MARK: char = '…';

/// An API error text as the client keeps it: every run of whitespace and control characters
/// becomes one space, so a message is one log line. Whoever looks for a known string in such a
/// text (the provider's secret scrubber) flattens it the same way.
pub fn flatten_whitespace(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Error {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The operation that failed (its `operationId` names it in errors, logs and metrics).
    pub fn endpoint(&self) -> Operation {
        match self {
            Self::Status { endpoint, .. }
            | Self::Transport { endpoint, .. }
            | Self::Deadline { endpoint }
            | Self::Decode { endpoint, .. } => *endpoint,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// 429 or 5xx: the API is overloaded or broken, a retry later may succeed.
    pub fn is_retryable_status(&self) -> bool {
        matches!(self.status(), Some(429) | Some(500..=599))
    }

    /// True when a mutating request may have taken effect although we got no success
    /// answer (lost response, timeout, 5xx). A create that fails this way must be
    /// followed by a lookup before any new attempt, or a second device may be billed.
    pub fn may_have_committed(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Deadline { .. } | Self::Decode { .. } => true,
            Self::Status { status, .. } => *status >= 500,
        }
    }

    /// The API's own message text, if any (used to classify 422s).
    pub fn api_message(&self) -> Option<&str> {
        match self {
            Self::Status { message, .. } => Some(message),
            _ => None,
        }
    }
}
