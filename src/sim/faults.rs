//! Fault injection for the Metal API routes (never for `/_sim/*`): added latency, a
//! per-token token-bucket rate limit, random 429s (with `Retry-After` and
//! `X-RateLimit-*`), random 500/503s, and "commit, then drop the connection" — the lost
//! response that makes a naive client create a duplicate device.
//!
//! 429 and 5xx are answered *instead of* executing the request (nothing is committed);
//! a drop executes the request fully and then closes the connection without writing any
//! response, so the client sees a transport error although the change happened.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use crate::metal::Operation;

use super::args::SimArgs;
use super::error::ApiError;
use super::server::ConnDrop;
use super::state::SimState;

/// The `X-RateLimit-Limit` reported when no `--rate-limit` is configured.
const NOMINAL_LIMIT: u64 = 5000;

/// Fault settings (from the flags).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    pub p429: f64,
    pub p5xx: f64,
    pub pdrop: f64,
    pub retry_after: u64,
    pub latency: Duration,
    /// Requests per second per token.
    pub rate_limit: Option<f64>,
}

impl FaultConfig {
    pub fn from_args(a: &SimArgs) -> Self {
        Self {
            p429: a.fault_rate_429,
            p5xx: a.fault_rate_5xx,
            pdrop: a.fault_rate_drop,
            retry_after: a.retry_after_seconds,
            latency: Duration::from_millis(a.latency_ms),
            rate_limit: a.rate_limit,
        }
    }
}

/// A random fault drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    None,
    TooManyRequests,
    ServerError(StatusCode),
    Drop,
}

/// The rate-limit view of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_in: u64,
    /// Seconds until one request is allowed (0 if this one was).
    pub retry_after: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A fault a test schedules for the next requests of one operation (see
/// [`super::SimHandle::inject`]), so a scenario such as "the create's response is lost"
/// happens exactly when the test wants it rather than at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After`; nothing is executed.
    TooManyRequests,
    /// 503 with `Retry-After`; nothing is executed.
    ServerError,
    /// Execute the request, then drop the connection without a response.
    Drop,
}

impl Fault {
    fn draw(self) -> Draw {
        match self {
            Self::TooManyRequests => Draw::TooManyRequests,
            Self::ServerError => Draw::ServerError(StatusCode::SERVICE_UNAVAILABLE),
            Self::Drop => Draw::Drop,
        }
    }
}

/// Fault decisions; one per simulator.
#[derive(Debug)]
pub struct Faults {
    cfg: FaultConfig,
    rng: Mutex<StdRng>,
    buckets: Mutex<HashMap<String, Bucket>>,
    scripted: Mutex<HashMap<Operation, VecDeque<Fault>>>,
}

impl Faults {
    /// Fault state for one simulator; `seed` makes the random faults reproducible.
    pub fn new(cfg: FaultConfig, seed: Option<u64>) -> Self {
        let rng = seed.map_or_else(|| StdRng::from_rng(&mut rand::rng()), StdRng::seed_from_u64);
        Self {
            cfg,
            rng: Mutex::new(rng),
            buckets: Mutex::new(HashMap::new()),
            scripted: Mutex::new(HashMap::new()),
        }
    }

    /// Schedules `fault` for the next `times` requests of `operation`.
    pub fn script(&self, operation: Operation, fault: Fault, times: usize) {
        let mut scripted = self.scripted.lock().unwrap_or_else(PoisonError::into_inner);
        scripted
            .entry(operation)
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// This request's fault: a scheduled one for `operation` first, else a random draw.
    pub fn draw_for(&self, operation: Option<Operation>) -> Draw {
        let scheduled = operation.and_then(|op| {
            self.scripted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&op)
                .and_then(VecDeque::pop_front)
        });
        scheduled.map_or_else(|| self.draw(), Fault::draw)
    }

    /// The configured rates, latency and limits.
    pub fn config(&self) -> &FaultConfig {
        &self.cfg
    }

    /// Draws this request's random fault (429, then 5xx, then drop, by cumulative rate).
    pub fn draw(&self) -> Draw {
        let c = &self.cfg;
        if c.p429 + c.p5xx + c.pdrop <= 0.0 {
            return Draw::None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let r: f64 = rng.random();
        if r < c.p429 {
            Draw::TooManyRequests
        } else if r < c.p429 + c.p5xx {
            let code = if rng.random_bool(0.5) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Draw::ServerError(code)
        } else if r < c.p429 + c.p5xx + c.pdrop {
            Draw::Drop
        } else {
            Draw::None
        }
    }

    /// Takes one request from `token`'s bucket. `None` when no rate limit is configured;
    /// `retry_after > 0` when the request must be refused.
    pub fn rate_check(&self, token: &str, now: Instant) -> Option<RateInfo> {
        let rate = self.cfg.rate_limit?;
        let burst = rate.max(1.0);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets.entry(token.to_string()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        }
        let retry_after = if allowed {
            0
        } else {
            ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64
        };
        Some(RateInfo {
            limit: burst.ceil() as u64,
            remaining: b.tokens.floor().max(0.0) as u64,
            reset_in: ((burst - b.tokens) / rate).ceil() as u64,
            retry_after,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn set_rate_headers(h: &mut HeaderMap, limit: u64, remaining: u64, reset_in: u64) {
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    h.insert(
        "x-ratelimit-reset",
        HeaderValue::from(unix_now() + reset_in),
    );
}

fn too_many(retry_after: u64, limit: u64, reset_in: u64) -> Response {
    let mut resp =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response();
    let h = resp.headers_mut();
    h.insert("retry-after", HeaderValue::from(retry_after));
    set_rate_headers(h, limit, 0, reset_in);
    resp
}

/// The state of [`middleware`]: the fault decisions, and the simulator whose request
/// counters it keeps.
#[derive(Clone)]
pub struct FaultLayer {
    pub faults: Arc<Faults>,
    pub sim: Arc<SimState>,
}

/// The tower middleware (an axum `route_layer` on the API routes).
pub async fn middleware(State(app): State<FaultLayer>, req: Request, next: Next) -> Response {
    let operation = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| Operation::from_route(req.method(), path.as_str()));
    let op = operation.map_or("other", Operation::operation_id);
    let recorder = &app.sim.recorder;
    recorder.request(op);
    let cfg = app.faults.config();
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    let token = req
        .headers()
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let rate = app.faults.rate_check(token, Instant::now());
    if let Some(info) = rate
        && info.retry_after > 0
    {
        recorder.fault("rate_limit");
        recorder.response(429);
        tracing::debug!(operation = op, "rate limit exceeded: 429");
        return too_many(info.retry_after, info.limit, info.reset_in);
    }
    match app.faults.draw_for(operation) {
        Draw::None => {}
        Draw::TooManyRequests => {
            recorder.fault("429");
            recorder.response(429);
            tracing::debug!(operation = op, "fault: 429");
            let limit = rate.map_or(NOMINAL_LIMIT, |r| r.limit);
            return too_many(cfg.retry_after, limit, cfg.retry_after);
        }
        Draw::ServerError(code) => {
            recorder.fault(code.as_str());
            recorder.response(code.as_u16());
            tracing::debug!(
                operation = op,
                status = code.as_u16(),
                "fault: server error"
            );
            let msg = code.canonical_reason().unwrap_or("Server Error");
            let mut resp = ApiError::new(code, msg).into_response();
            if code == StatusCode::SERVICE_UNAVAILABLE {
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from(cfg.retry_after));
            }
            return resp;
        }
        Draw::Drop => {
            let conn = req.extensions().get::<ConnDrop>().cloned();
            let committed = next.run(req).await;
            recorder.fault("drop");
            tracing::info!(
                operation = op,
                status = committed.status().as_u16(),
                "fault: request executed, response dropped"
            );
            drop(committed);
            return match conn {
                Some(conn) => match conn.close_without_response().await {},
                None => broken_response(),
            };
        }
    }
    let mut resp = next.run(req).await;
    if let Some(info) = rate {
        set_rate_headers(
            resp.headers_mut(),
            info.limit,
            info.remaining,
            info.reset_in,
        );
    }
    recorder.response(resp.status().as_u16());
    tracing::debug!(
        operation = op,
        status = resp.status().as_u16(),
        "request served"
    );
    resp
}

/// Only when served outside our accept loop: a response whose body fails at once, which
/// makes hyper abort the connection (the client still gets no usable response body).
fn broken_response() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("response dropped by fault injection"))
    });
    Response::new(Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(p429: f64, p5xx: f64, pdrop: f64, rate: Option<f64>) -> Faults {
        Faults::new(
            FaultConfig {
                p429,
                p5xx,
                pdrop,
                retry_after: 1,
                latency: Duration::ZERO,
                rate_limit: rate,
            },
            Some(42),
        )
    }

    #[test]
    fn draws_follow_the_rates_and_the_seed() {
        assert_eq!(faults(0.0, 0.0, 0.0, None).draw(), Draw::None);
        assert_eq!(faults(1.0, 0.0, 0.0, None).draw(), Draw::TooManyRequests);
        assert_eq!(faults(0.0, 0.0, 1.0, None).draw(), Draw::Drop);
        assert!(matches!(
            faults(0.0, 1.0, 0.0, None).draw(),
            Draw::ServerError(_)
        ));
        let a: Vec<Draw> = {
            let f = faults(0.3, 0.3, 0.3, None);
            (0..50).map(|_| f.draw()).collect()
        };
        let b: Vec<Draw> = {
            let f = faults(0.3, 0.3, 0.3, None);
            (0..50).map(|_| f.draw()).collect()
        };
        assert_eq!(a, b, "same seed, same faults");
        assert!(a.contains(&Draw::None) && a.contains(&Draw::Drop));
    }

    #[test]
    fn token_bucket_refills() {
        let f = faults(0.0, 0.0, 0.0, Some(2.0));
        let t0 = Instant::now();
        assert_eq!(f.rate_check("a", t0).unwrap().retry_after, 0);
        assert_eq!(f.rate_check("a", t0).unwrap().retry_after, 0);
        let refused = f.rate_check("a", t0).unwrap();
        assert_eq!(
            (refused.retry_after, refused.remaining, refused.limit),
            (1, 0, 2)
        );
        assert_eq!(
            f.rate_check("b", t0).unwrap().retry_after,
            0,
            "buckets are per token"
        );
        assert_eq!(
            f.rate_check("a", t0 + Duration::from_millis(500))
                .unwrap()
                .retry_after,
            0
        );
        assert!(faults(0.0, 0.0, 0.0, None).rate_check("a", t0).is_none());
    }
}
