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
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::time::Instant;

use crate::metal::operation::{API_ROOT_PATH, Operation};

use super::error::ApiError;
use super::faults::{self, FaultLayer, Faults};
use super::paging::ListQuery;
use super::state::SimState;

/// The whole router: API routes (with fault injection) at `/` and `/metal/v1`, and the
/// fault-free `/_sim/*` tool routes. Handlers see the simulator state only; the fault layer
/// also sees `faults`.
pub fn router(sim: Arc<SimState>, faults: Arc<Faults>) -> Router {
    let layer = FaultLayer {
        faults,
        sim: sim.clone(),
    };
    let api = Router::new()
        .route(
            Operation::CreateDevice.path_template(),
            get(list_devices).post(create_device),
        )
        .route(
            Operation::FindDeviceById.path_template(),
            get(get_device).put(update_device).delete(delete_device),
        )
        .route(
            Operation::PerformAction.path_template(),
            post(perform_action),
        )
        .route_layer(middleware::from_fn_with_state(layer, faults::middleware));
    Router::new()
        .merge(api.clone())
        .nest(API_ROOT_PATH, api)
        .route("/_sim/stats", get(stats))
        .fallback(not_found)
        .with_state(sim)
}

fn token(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-auth-token").and_then(|v| v.to_str().ok())
}

async fn create_device(
    State(sim): State<Arc<SimState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let device = sim.create(token(&headers), &project, &body, Instant::now())?;
    Ok((StatusCode::CREATED, Json(device)).into_response())
}

async fn list_devices(
    State(sim): State<Arc<SimState>>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = token(&headers);
    // Authentication and project checks come before query validation, as in the real API.
    let q = match ListQuery::parse(query.as_deref()) {
        Ok(q) => q,
        Err(e) => {
            sim.list(token, &project, &ListQuery::parse(None)?, Instant::now())?;
            return Err(e);
        }
    };
    if let Some(hostname) = &q.hostname {
        sim.recorder.hostname_lookup(hostname);
    }
    let list = sim.list(token, &project, &q, Instant::now())?;
    Ok(Json(list).into_response())
}

async fn get_device(
    State(sim): State<Arc<SimState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let device = sim.get(token(&headers), &id, Instant::now())?;
    Ok(Json(device).into_response())
}

async fn update_device(
    State(sim): State<Arc<SimState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let device = sim.update(token(&headers), &id, &body, Instant::now())?;
    Ok(Json(device).into_response())
}

async fn delete_device(
    State(sim): State<Arc<SimState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    // `force_delete` (detach storage volumes) has nothing to act on here.
    sim.delete(token(&headers), &id, Instant::now())?;
    Ok(StatusCode::NO_CONTENT)
}

async fn perform_action(
    State(sim): State<Arc<SimState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    sim.action(token(&headers), &id, &body, Instant::now())?;
    Ok(StatusCode::ACCEPTED)
}

async fn stats(State(sim): State<Arc<SimState>>) -> Response {
    Json(sim.stats(Instant::now())).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}
