//! HTTP surface: the device endpoints of the Metal API (at the root, as Prism serves them,
//! and under `/metal/v1`, as the real base URL has them) plus `GET /_sim/stats`.
//!
//! Handlers only translate: header and path in, [`SimState`] call, JSON out. Bodies are
//! read as bytes and parsed by the state so that malformed JSON is a spec-declared 422,
//! not axum's plain-text 400. Path ids that are not UUIDs are answered 404 (declared for
//! every device operation), never 400.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::time::Instant;

use super::error::ApiError;
use super::faults::{self, Faults};
use super::paging::ListQuery;
use super::state::SimState;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub sim: Arc<SimState>,
    pub faults: Arc<Faults>,
}

/// The API base path of the real service.
pub const API_PREFIX: &str = "/metal/v1";

/// The whole router: API routes (with fault injection) at `/` and `/metal/v1`, and the
/// fault-free `/_sim/*` tool routes.
pub fn router(app: AppState) -> Router {
    let api = Router::new()
        .route(
            "/projects/{id}/devices",
            get(list_devices).post(create_device),
        )
        .route(
            "/devices/{id}",
            get(get_device).put(update_device).delete(delete_device),
        )
        .route("/devices/{id}/actions", post(perform_action))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            faults::middleware,
        ));
    Router::new()
        .merge(api.clone())
        .nest(API_PREFIX, api)
        .route("/_sim/stats", get(stats))
        .fallback(not_found)
        .with_state(app)
}

/// The spec's operationId for a matched route (`other` for anything else).
pub fn operation_id(method: &Method, matched_path: &str) -> &'static str {
    let path = matched_path
        .strip_prefix(API_PREFIX)
        .unwrap_or(matched_path);
    match (method.as_str(), path) {
        ("POST", "/projects/{id}/devices") => "createDevice",
        ("GET", "/projects/{id}/devices") => "findProjectDevices",
        ("GET", "/devices/{id}") => "findDeviceById",
        ("PUT", "/devices/{id}") => "updateDevice",
        ("DELETE", "/devices/{id}") => "deleteDevice",
        ("POST", "/devices/{id}/actions") => "performAction",
        _ => "other",
    }
}

fn token(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-auth-token").and_then(|v| v.to_str().ok())
}

async fn create_device(
    State(app): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let device = app
        .sim
        .create(token(&headers), &project, &body, Instant::now())?;
    Ok((StatusCode::CREATED, Json(device)).into_response())
}

async fn list_devices(
    State(app): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = token(&headers);
    // Authentication and project checks come before query validation, as in the real API.
    let q = match ListQuery::parse(query.as_deref()) {
        Ok(q) => q,
        Err(e) => {
            app.sim
                .list(token, &project, &ListQuery::parse(None)?, Instant::now())?;
            return Err(e);
        }
    };
    let list = app.sim.list(token, &project, &q, Instant::now())?;
    Ok(Json(list).into_response())
}

async fn get_device(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let device = app.sim.get(token(&headers), &id, Instant::now())?;
    Ok(Json(device).into_response())
}

async fn update_device(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let device = app
        .sim
        .update(token(&headers), &id, &body, Instant::now())?;
    Ok(Json(device).into_response())
}

async fn delete_device(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    // `force_delete` (detach storage volumes) has nothing to act on here.
    app.sim.delete(token(&headers), &id, Instant::now())?;
    Ok(StatusCode::NO_CONTENT)
}

async fn perform_action(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    app.sim
        .action(token(&headers), &id, &body, Instant::now())?;
    Ok(StatusCode::ACCEPTED)
}

async fn stats(State(app): State<AppState>) -> Response {
    Json(app.sim.stats(Instant::now())).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}
