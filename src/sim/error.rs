//! The simulator's API error: a status plus the `{"errors": [...]}` body the spec's `Error`
//! schema allows. One type so every failure path renders the same, spec-valid shape.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::metal::types::ErrorBody;

/// Message for 401 (missing or unknown `X-Auth-Token`).
pub const MSG_UNAUTHENTICATED: &str = "Invalid authentication token";
/// Message for 403 (token without access to the project).
pub const MSG_FORBIDDEN: &str = "You are not authorized to view this page";
/// Message for 404.
pub const MSG_NOT_FOUND: &str = "Not found";
/// Message for 422 on deleting a locked device.
pub const MSG_LOCKED: &str = "Cannot delete a locked device";

/// An error response of the simulated API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `errors` array.
    pub messages: Vec<String>,
}

impl ApiError {
    /// One message with any status (faults use it for 429/500/503).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            messages: vec![message.into()],
        }
    }

    /// 401: missing or unknown `X-Auth-Token`.
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, MSG_UNAUTHENTICATED)
    }

    /// 403: the token has no access to the project (or the device's project).
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, MSG_FORBIDDEN)
    }

    /// 404: unknown project or device, or an id that is not a UUID.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, MSG_NOT_FOUND)
    }

    /// 422: validation, placement or state problems.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// A 422 carrying every validation problem at once, as the real API does.
    pub fn unprocessable_all(messages: Vec<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            messages,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: None,
            errors: Some(self.messages),
        };
        (self.status, Json(body)).into_response()
    }
}
