//! [`MetalClient`]: the production [`DeviceApi`], Equinix Metal over HTTPS with reqwest.
//!
//! One `reqwest::Client` (rustls, one connection pool) serves every API token: the token
//! is a per-request `X-Auth-Token` header marked sensitive, so machines of many Secrets
//! share connections. Every call runs the loop of [`MetalClient::send`]:
//!
//! 1. wait for the optional process-wide token bucket ([`ClientConfig::rate_limit`]);
//! 2. one attempt, bounded by `min(request_timeout, deadline - now)`;
//! 3. on failure ask [`RetryPolicy`] whether and when to try again (a `POST` only after
//!    a 429); sleep, unless the sleep would overrun the caller's deadline.
//!
//! Deadline choice: when the caller's deadline has passed before or during an attempt,
//! the result is [`Error::Deadline`]. When a retry is warranted but its delay would
//! overrun the deadline, the *last* error is returned instead (a 429 or 503 with its
//! `retry_after`, or a transport error), because it says why the call failed and that a
//! later call may succeed; `Deadline` would hide that.
//!
//! Nothing here logs a body, a token or a URL (a base URL may carry credentials): logs
//! and errors name the endpoint (the spec's operationId) only.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use reqwest::{
    Method, StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    Call, DeviceActionInput, DeviceApi, DeviceCreateInput, DeviceList, DeviceUpdateInput,
    ErrorBody, ListQuery,
    error::{Endpoint, Error},
    pagination,
    retry::{self, Decision, Idempotency, Outcome, RetryPolicy},
    types::Device,
};
use crate::telemetry::metrics::MetalApiMetrics;

/// The production API root (`servers[0].url` of the spec).
pub const DEFAULT_BASE_URL: &str = "https://api.equinix.com/metal/v1";

/// Longest API error message we keep in [`Error::Status`], in characters.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 512;

/// How much of an error body we read to find its message (the rest is discarded).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Settings of [`MetalClient`]. `Default` is production-ready.
#[derive(Clone)]
pub struct ClientConfig {
    /// The API root, with or without a path prefix and trailing slash
    /// (`https://api.equinix.com/metal/v1`, `http://127.0.0.1:4010`).
    pub base_url: String,
    /// TCP + TLS connect limit per connection.
    pub connect_timeout: Duration,
    /// Limit of one attempt (send and read the whole answer); the caller's deadline may
    /// shorten it.
    pub request_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff ceiling, doubled per retry (full jitter).
    pub backoff_base: Duration,
    /// Cap of every delay, including `Retry-After` values.
    pub backoff_max: Duration,
    /// `per_page` asked for when listing (the spec allows up to 1000).
    pub per_page: u32,
    /// Client-side limit, requests per second over all tokens and clones of the client
    /// (token bucket, burst of one second's worth). `None` disables it.
    pub rate_limit: Option<f64>,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Largest response body we accept; beyond it the answer is an [`Error::Decode`], so
    /// a broken or hostile server cannot exhaust memory.
    pub max_response_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_retries: 5,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            per_page: pagination::MAX_PER_PAGE,
            rate_limit: None,
            user_agent: concat!("metal-driver/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_response_bytes: 32 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &redact_url(&self.base_url))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("per_page", &self.per_page)
            .field("rate_limit", &self.rate_limit)
            .field("user_agent", &self.user_agent)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

/// A URL without user info, query or fragment (where credentials could hide).
fn redact_url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "<unparsable>".to_owned(),
    }
}

/// A [`ClientConfig`] that cannot work; reported at startup, never per call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid Metal API base URL: {0}")]
    BaseUrl(String),
    #[error("invalid Metal client setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// The Equinix Metal API client. Cheap to clone (one `Arc`); clones share the connection
/// pool and the rate limiter.
#[derive(Clone)]
pub struct MetalClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `base_url` without trailing `/`; paths are appended as `/...`.
    base: String,
    config: ClientConfig,
    policy: RetryPolicy,
    metrics: Option<MetalApiMetrics>,
    limiter: Option<TokenBucket>,
}

impl fmt::Debug for MetalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetalClient")
            .field("config", &self.inner.config)
            .field("metrics", &self.inner.metrics.is_some())
            .finish_non_exhaustive()
    }
}

/// One request, kept so that it can be sent again.
struct Request {
    endpoint: Endpoint,
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

/// A failed attempt: the error to return, and what the retry policy sees (`None`: never
/// retry, e.g. an oversized body).
struct Failed {
    error: Error,
    outcome: Option<Outcome>,
    /// Metric `status` label: the HTTP status, `transport` or `timeout`.
    label: String,
}

impl MetalClient {
    /// Build the client (and its connection pool). Fails only on bad settings.
    pub fn new(
        config: ClientConfig,
        metrics: Option<MetalApiMetrics>,
    ) -> Result<Self, ConfigError> {
        let base = validate_base_url(&config.base_url)?;
        if config.per_page == 0 {
            return Err(ConfigError::Invalid {
                field: "per_page",
                reason: "must be at least 1".into(),
            });
        }
        if config.request_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                field: "request_timeout",
                reason: "must be positive".into(),
            });
        }
        let limiter = match config.rate_limit {
            None => None,
            Some(rate) if rate.is_finite() && rate > 0.0 => Some(TokenBucket::new(rate)),
            Some(rate) => {
                return Err(ConfigError::Invalid {
                    field: "rate_limit",
                    reason: format!("{rate} is not a positive number of requests per second"),
                });
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone())
            .default_headers(headers)
            // A redirect could carry X-Auth-Token to another host; the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .build()
            .map_err(|e| ConfigError::Http(error_chain(&e.without_url())))?;
        let policy = RetryPolicy {
            max_retries: config.max_retries,
            backoff_base: config.backoff_base,
            backoff_max: config.backoff_max,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                config,
                policy,
                metrics,
                limiter,
            }),
        })
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.inner.base, path.trim_start_matches('/'))
    }

    /// Send `req` with retries; the body of the 2xx answer.
    async fn send(&self, call: &Call, req: Request) -> Result<Vec<u8>, Error> {
        let endpoint = req.endpoint;
        let url = self.url(&req.path);
        let Ok(mut token) = HeaderValue::from_str(call.token.expose()) else {
            // Nothing was sent. A token that is not a header value cannot authenticate,
            // so report it the way the API would have: 401.
            return Err(Error::Status {
                endpoint,
                status: 401,
                message:
                    "the API token contains characters not allowed in an HTTP header (not sent)"
                        .into(),
                retry_after: None,
            });
        };
        token.set_sensitive(true);
        let kind = Idempotency::of(&req.method);
        let cfg = &self.inner.config;
        let mut retries = 0u32;
        loop {
            if let Some(limiter) = &self.inner.limiter
                && limiter.acquire(call.deadline).await.is_err()
            {
                return Err(Error::Deadline { endpoint });
            }
            let (limit, deadline_bound) = match call.deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Deadline { endpoint });
                    }
                    (left.min(cfg.request_timeout), left < cfg.request_timeout)
                }
                None => (cfg.request_timeout, false),
            };
            let started = Instant::now();
            let result = tokio::time::timeout(limit, self.attempt(&req, &url, &token)).await;
            let elapsed = started.elapsed();
            let failed = match result {
                Ok(Ok((status, body))) => {
                    self.record(&req, status.as_str(), retries, elapsed);
                    return Ok(body);
                }
                Ok(Err(failed)) => failed,
                Err(_) => Failed {
                    error: Error::Deadline { endpoint },
                    outcome: Some(Outcome::Timeout),
                    label: "timeout".into(),
                },
            };
            self.record(&req, &failed.label, retries, elapsed);
            if deadline_bound && matches!(failed.outcome, Some(Outcome::Timeout)) {
                return Err(failed.error);
            }
            let Some(outcome) = failed.outcome else {
                return Err(failed.error);
            };
            // Not held across an await: ThreadRng is not Send.
            let decision = self
                .inner
                .policy
                .decide(kind, retries, &outcome, &mut rand::rng());
            let Decision::Retry { delay, reason } = decision else {
                return Err(failed.error);
            };
            if call
                .deadline
                .is_some_and(|deadline| Instant::now() + delay >= deadline)
            {
                // See the module doc: the last error explains more than `Deadline`.
                return Err(failed.error);
            }
            if let Some(metrics) = &self.inner.metrics {
                metrics.retry(endpoint, reason);
            }
            tracing::debug!(
                endpoint,
                reason,
                delay_ms = millis(delay),
                retry = retries + 1,
                "Metal API retry"
            );
            tokio::time::sleep(delay).await;
            retries += 1;
        }
    }

    fn record(&self, req: &Request, status: &str, retries: u32, elapsed: Duration) {
        if let Some(metrics) = &self.inner.metrics {
            metrics.observe(req.endpoint, status, elapsed);
        }
        tracing::debug!(
            endpoint = req.endpoint,
            method = %req.method,
            status,
            attempt = retries + 1,
            elapsed_ms = millis(elapsed),
            "Metal API attempt"
        );
    }

    /// One exchange: send, read the (capped) body, classify.
    async fn attempt(
        &self,
        req: &Request,
        url: &str,
        token: &HeaderValue,
    ) -> Result<(StatusCode, Vec<u8>), Failed> {
        let endpoint = req.endpoint;
        let mut builder = self
            .inner
            .http
            .request(req.method.clone(), url)
            .header("X-Auth-Token", token.clone());
        if !req.query.is_empty() {
            builder = builder.query(&req.query);
        }
        if let Some(body) = &req.body {
            builder = builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let mut response = builder.send().await.map_err(|e| Failed {
            error: Error::Transport {
                endpoint,
                reason: error_chain(&e.without_url()),
            },
            outcome: Some(Outcome::Transport),
            label: "transport".into(),
        })?;
        let status = response.status();
        note_deprecation(endpoint, response.headers());

        if status.is_success() {
            return match read_capped(&mut response, self.inner.config.max_response_bytes).await {
                Ok(body) => Ok((status, body)),
                Err(ReadError::TooLarge) => Err(Failed {
                    error: Error::Decode {
                        endpoint,
                        reason: format!(
                            "response body larger than {} bytes",
                            self.inner.config.max_response_bytes
                        ),
                    },
                    outcome: None,
                    label: status.as_str().to_owned(),
                }),
                // The status said success but the answer was cut off: the request may well
                // have taken effect, which is what Transport means for a mutation.
                Err(ReadError::Io(e)) => Err(Failed {
                    error: Error::Transport {
                        endpoint,
                        reason: format!(
                            "HTTP {} response cut off: {}",
                            status.as_u16(),
                            error_chain(&e.without_url())
                        ),
                    },
                    outcome: Some(Outcome::Transport),
                    label: "transport".into(),
                }),
            };
        }

        let hint = retry::server_delay(
            status.as_u16(),
            header_str(response.headers(), header::RETRY_AFTER.as_str()),
            header_str(response.headers(), "x-ratelimit-reset"),
            SystemTime::now(),
        );
        // Only the message is wanted; an unreadable or huge body still leaves a status.
        let body = read_prefix(&mut response, MAX_ERROR_BODY_BYTES).await;
        Err(Failed {
            error: Error::Status {
                endpoint,
                status: status.as_u16(),
                message: error_message(status, &body),
                retry_after: hint,
            },
            outcome: Some(Outcome::Status {
                status: status.as_u16(),
                hint,
            }),
            label: status.as_str().to_owned(),
        })
    }

    async fn json<T: DeserializeOwned>(&self, call: &Call, req: Request) -> Result<T, Error> {
        let endpoint = req.endpoint;
        let body = self.send(call, req).await?;
        decode(endpoint, &body)
    }

    /// One page of `findProjectDevices`, decoded (the raw body is dropped here).
    async fn device_page(
        &self,
        call: &Call,
        project: Uuid,
        query: &ListQuery,
        page: u32,
    ) -> Result<DeviceList, Error> {
        let req = Request {
            endpoint: "findProjectDevices",
            method: Method::GET,
            path: format!("/projects/{project}/devices"),
            query: pagination::page_params(query, page, self.inner.config.per_page),
            body: None,
        };
        self.json(call, req).await
    }
}

fn json_body<T: serde::Serialize>(endpoint: Endpoint, value: &T) -> Result<Vec<u8>, Error> {
    // Our own types always serialize; keep the reason free of the (secret-bearing) input.
    serde_json::to_vec(value).map_err(|e| Error::Decode {
        endpoint,
        reason: format!("cannot encode request: {:?}", e.classify()),
    })
}

impl DeviceApi for MetalClient {
    async fn create_device(
        &self,
        call: &Call,
        project: Uuid,
        input: &DeviceCreateInput,
    ) -> Result<Device, Error> {
        let endpoint = "createDevice";
        let req = Request {
            endpoint,
            method: Method::POST,
            path: format!("/projects/{project}/devices"),
            query: Vec::new(),
            body: Some(json_body(endpoint, input)?),
        };
        self.json(call, req).await
    }

    async fn get_device(&self, call: &Call, id: Uuid) -> Result<Device, Error> {
        let req = Request {
            endpoint: "findDeviceById",
            method: Method::GET,
            path: format!("/devices/{id}"),
            query: Vec::new(),
            body: None,
        };
        self.json(call, req).await
    }

    async fn list_project_devices(
        &self,
        call: &Call,
        project: Uuid,
        query: &ListQuery,
    ) -> Result<Vec<Device>, Error> {
        pagination::collect_all("findProjectDevices", |page| {
            self.device_page(call, project, query, page)
        })
        .await
    }

    async fn update_device(
        &self,
        call: &Call,
        id: Uuid,
        input: &DeviceUpdateInput,
    ) -> Result<Device, Error> {
        let endpoint = "updateDevice";
        let req = Request {
            endpoint,
            method: Method::PUT,
            path: format!("/devices/{id}"),
            query: Vec::new(),
            body: Some(json_body(endpoint, input)?),
        };
        self.json(call, req).await
    }

    async fn delete_device(&self, call: &Call, id: Uuid, force: bool) -> Result<(), Error> {
        let req = Request {
            endpoint: "deleteDevice",
            method: Method::DELETE,
            path: format!("/devices/{id}"),
            query: vec![("force_delete", force.to_string())],
            body: None,
        };
        self.send(call, req).await.map(drop)
    }

    async fn perform_action(
        &self,
        call: &Call,
        id: Uuid,
        input: &DeviceActionInput,
    ) -> Result<(), Error> {
        let endpoint = "performAction";
        let req = Request {
            endpoint,
            method: Method::POST,
            path: format!("/devices/{id}/actions"),
            query: Vec::new(),
            body: Some(json_body(endpoint, input)?),
        };
        self.send(call, req).await.map(drop)
    }
}

/// Check and normalize the base URL: http(s), a host, no query or fragment; trailing `/`
/// removed so that `base + "/devices/..."` never has a double slash.
fn validate_base_url(raw: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| ConfigError::BaseUrl(format!("{}: {e}", redact_url(raw))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::BaseUrl(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::BaseUrl("no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::BaseUrl(
            "must not have a query or fragment".into(),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Decode a 2xx body. The reason names the JSON path and error class, never the value
/// (a device carries `root_password`).
fn decode<T: DeserializeOwned>(endpoint: Endpoint, body: &[u8]) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        Error::Decode {
            endpoint,
            reason: format!(
                "{:?} error at `{path}` (line {}, column {})",
                inner.classify(),
                inner.line(),
                inner.column()
            ),
        }
    })
}

/// The API's error text from an error body: `{"error": ..}`, `{"errors": [..]}`, other
/// text as is, or the status' reason phrase when empty. Control characters are flattened
/// and the result truncated to [`MAX_ERROR_MESSAGE_CHARS`].
pub fn error_message(status: StatusCode, body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.message())
        .filter(|m| !m.trim().is_empty());
    let text = match parsed {
        Some(message) => message,
        None => String::from_utf8_lossy(body).into_owned(),
    };
    let flat = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if flat.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_owned();
    }
    truncate_chars(&flat, MAX_ERROR_MESSAGE_CHARS)
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

enum ReadError {
    TooLarge,
    Io(reqwest::Error),
}

/// Read the whole body, refusing more than `cap` bytes (checked against `Content-Length`
/// first, then while streaming).
async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    let announced = response.content_length().unwrap_or(0);
    if announced > cap as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::with_capacity((announced as usize).min(64 * 1024));
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Io)? {
        if body.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Up to `cap` bytes of the body, whatever goes wrong (an error body is best effort).
async fn read_prefix(response: &mut reqwest::Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(cap - body.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    body
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

static DEPRECATION_LOGGED: AtomicBool = AtomicBool::new(false);

/// Log RFC 8594/9745 `Deprecation`, `Sunset` and `Link: rel="sunset"` once per process:
/// operators should hear about it, but not on every request.
fn note_deprecation(endpoint: Endpoint, headers: &HeaderMap) {
    let deprecation = header_str(headers, "deprecation");
    let sunset = header_str(headers, "sunset");
    let link = headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| {
            v.to_ascii_lowercase().contains("rel=\"sunset\"")
                || v.to_ascii_lowercase().contains("rel=sunset")
        });
    if deprecation.is_none() && sunset.is_none() && link.is_none() {
        return;
    }
    if DEPRECATION_LOGGED.swap(true, Ordering::Relaxed) {
        return;
    }
    let short = |v: Option<&str>| v.map(|v| truncate_chars(v, 200));
    tracing::warn!(
        endpoint,
        deprecation = short(deprecation),
        sunset = short(sunset),
        link = short(link),
        "the Metal API announces deprecation or sunset of an endpoint we use (logged once)"
    );
}

/// An error and its sources, `a: b: c`, for transport reasons (URL already stripped).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A token bucket shared by all clones of one client: `rate` tokens per second, burst of
/// `max(1, rate)`. Waiters reserve a slot (the count may go negative) so they are served
/// in arrival order without a queue.
struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

struct BucketState {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        let burst = rate.max(1.0);
        Self {
            rate,
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                refilled: Instant::now(),
            }),
        }
    }

    /// Take a token, waiting if needed. `Err` (and no token taken) when the wait would
    /// pass `deadline`.
    async fn acquire(&self, deadline: Option<Instant>) -> Result<(), ()> {
        let wait = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            let refill = now.saturating_duration_since(state.refilled).as_secs_f64() * self.rate;
            state.tokens = (state.tokens + refill).min(self.burst);
            state.refilled = now;
            let wait = if state.tokens >= 1.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64((1.0 - state.tokens) / self.rate)
            };
            if deadline.is_some_and(|d| now + wait >= d) && !wait.is_zero() {
                return Err(());
            }
            state.tokens -= 1.0;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}
