//! What can go wrong talking to the Metal API, classified so that the provider can decide
//! (is the device gone? may a create have happened?) and `cmi::status` can pick a code.
//!
//! Messages never contain request or response bodies beyond the API's own error strings,
//! and those are scrubbed of secrets by the provider before they reach a caller.

use std::time::Duration;

/// The API operation (the spec's `operationId`), used in errors, logs and metric labels.
pub type Endpoint = &'static str;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The API answered with a non-success status. `message` is the API's own error text.
    #[error("Metal API {endpoint} returned HTTP {status}: {message}")]
    Status {
        endpoint: Endpoint,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },

    /// No HTTP answer: connection refused or reset, TLS failure, or the response was lost.
    /// For a create this is ambiguous: the device may exist.
    #[error("Metal API {endpoint} unreachable: {reason}")]
    Transport { endpoint: Endpoint, reason: String },

    /// The caller's deadline (or our request timeout) passed before an answer.
    #[error("Metal API {endpoint} did not answer within the deadline")]
    Deadline { endpoint: Endpoint },

    /// The API answered 2xx with a body we cannot decode.
    #[error("Metal API {endpoint} sent a response that does not match the spec: {reason}")]
    Decode { endpoint: Endpoint, reason: String },
}

impl Error {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        match self {
            Self::Status { endpoint, .. }
            | Self::Transport { endpoint, .. }
            | Self::Deadline { endpoint }
            | Self::Decode { endpoint, .. } => endpoint,
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
