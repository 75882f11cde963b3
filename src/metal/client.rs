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
    StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    Call, DeviceActionInput, DeviceApi, DeviceCreateInput, DeviceList, DeviceUpdateInput,
    ErrorBody, ListQuery, Operation,
    error::{CUT_MARK, Error, flatten_whitespace},
    pagination,
    retry::{self, Decision, Idempotency, Outcome, RetryPolicy},
    tls,
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
    /// `base_url` is not an absolute http(s) URL without query or fragment.
    #[error("invalid Metal API base URL: {0}")]
    BaseUrl(String),
    /// A numeric setting out of range (`per_page`, `request_timeout`, `rate_limit`).
    #[error("invalid Metal client setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// reqwest refused the settings (e.g. the TLS backend failed to initialize).
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

/// One request, kept so that it can be sent again. Method and path come from its
/// [`Operation`].
struct Request {
    endpoint: Operation,
    /// The project or device id in the path.
    id: Uuid,
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

impl Request {
    fn new(endpoint: Operation, id: Uuid) -> Self {
        Self {
            endpoint,
            id,
            query: Vec::new(),
            body: None,
        }
    }

    fn with_query(mut self, query: Vec<(&'static str, String)>) -> Self {
        self.query = query;
        self
    }

    /// The JSON body; fails only if our own type does not serialize.
    fn with_json<T: serde::Serialize>(mut self, value: &T) -> Result<Self, Error> {
        self.body = Some(json_body(self.endpoint, value)?);
        Ok(self)
    }
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
        let http = tls::http_client_builder()
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
        let url = self.url(&endpoint.path(req.id));
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
        let kind = Idempotency::of(&endpoint.method());
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
                metrics.retry(endpoint.operation_id(), reason);
            }
            tracing::debug!(
                endpoint = endpoint.operation_id(),
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
            metrics.observe(req.endpoint.operation_id(), status, elapsed);
        }
        tracing::debug!(
            endpoint = req.endpoint.operation_id(),
            method = %req.endpoint.method(),
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
            .request(req.endpoint.method(), url)
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
        let req = Request::new(Operation::FindProjectDevices, project).with_query(
            pagination::page_params(query, page, self.inner.config.per_page),
        );
        self.json(call, req).await
    }
}

fn json_body<T: serde::Serialize>(endpoint: Operation, value: &T) -> Result<Vec<u8>, Error> {
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
        let req = Request::new(Operation::CreateDevice, project).with_json(input)?;
        self.json(call, req).await
    }

    async fn get_device(&self, call: &Call, id: Uuid) -> Result<Device, Error> {
        self.json(call, Request::new(Operation::FindDeviceById, id))
            .await
    }

    async fn list_project_devices_kept<T, K>(
        &self,
        call: &Call,
        project: Uuid,
        query: &ListQuery,
        keep: K,
    ) -> Result<Vec<T>, Error>
    where
        T: Send,
        K: FnMut(Device) -> Option<T> + Send,
    {
        pagination::collect_kept(
            Operation::FindProjectDevices,
            |page| self.device_page(call, project, query, page),
            keep,
        )
        .await
    }

    async fn update_device(
        &self,
        call: &Call,
        id: Uuid,
        input: &DeviceUpdateInput,
    ) -> Result<Device, Error> {
        let req = Request::new(Operation::UpdateDevice, id).with_json(input)?;
        self.json(call, req).await
    }

    async fn delete_device(&self, call: &Call, id: Uuid, force: bool) -> Result<(), Error> {
        let req = Request::new(Operation::DeleteDevice, id)
            .with_query(vec![("force_delete", force.to_string())]);
        self.send(call, req).await.map(drop)
    }

    async fn perform_action(
        &self,
        call: &Call,
        id: Uuid,
        input: &DeviceActionInput,
    ) -> Result<(), Error> {
        let req = Request::new(Operation::PerformAction, id).with_json(input)?;
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
fn decode<T: DeserializeOwned>(endpoint: Operation, body: &[u8]) -> Result<T, Error> {
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
    let flat = flatten_whitespace(&text);
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
        Some((cut, _)) => format!("{}{CUT_MARK}", &s[..cut]),
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
fn note_deprecation(endpoint: Operation, headers: &HeaderMap) {
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
        endpoint = endpoint.operation_id(),
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

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::atomic::AtomicUsize};

    use axum::{Router, extract::Request as AxRequest, response::IntoResponse};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::{
        metal::{DeviceActionType, DeviceState},
        secret::Secret,
        telemetry::metrics::Metrics,
    };

    const TOKEN: &str = "tok-SECRET-0123456789";

    /// What the test server saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        query: HashMap<String, String>,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    /// What the test server answers.
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
        delay: Duration,
    }

    fn reply(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    impl Reply {
        fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
            self.headers.push((name, value.into()));
            self
        }
        fn delay(mut self, delay: Duration) -> Self {
            self.delay = delay;
            self
        }
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// An axum server on 127.0.0.1:0 that records every request and answers with
    /// `respond(index of this request, request)`.
    async fn server<F>(respond: F) -> (String, Log)
    where
        F: Fn(usize, &Seen) -> Reply + Send + Sync + 'static,
    {
        let log: Log = Arc::default();
        let respond = Arc::new(respond);
        let handler_log = log.clone();
        let app = Router::new().fallback(move |req: AxRequest| {
            let log = handler_log.clone();
            let respond = respond.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default()
                    .to_vec();
                let query = parts
                    .uri
                    .query()
                    .map(|q| {
                        reqwest::Url::parse(&format!("http://x/?{q}"))
                            .unwrap()
                            .query_pairs()
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query,
                    headers,
                    body,
                };
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(seen.clone());
                    log.len() - 1
                };
                let r = respond(index, &seen);
                if !r.delay.is_zero() {
                    tokio::time::sleep(r.delay).await;
                }
                let mut resp = (StatusCode::from_u16(r.status).unwrap(), r.body).into_response();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                for (k, v) in r.headers {
                    resp.headers_mut()
                        .insert(k, HeaderValue::from_str(&v).unwrap());
                }
                resp
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), log)
    }

    /// A raw TCP server for what axum cannot do: for request `i` it reads the whole request,
    /// then writes `script[i]` (the last entry repeats) and closes, or with `None` closes
    /// without answering.
    async fn raw_server(script: Vec<Option<String>>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                if !read_request(&mut stream).await {
                    continue;
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let answer = script.get(n).or(script.last()).cloned().flatten();
                if let Some(answer) = answer {
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
                drop(stream);
            }
        });
        (format!("http://{addr}"), count)
    }

    async fn read_request(stream: &mut TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return false;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return true;
            }
        }
    }

    fn http_ok(status: &str, body: &str) -> Option<String> {
        Some(format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    }

    fn config(base: &str) -> ClientConfig {
        ClientConfig {
            base_url: base.to_owned(),
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(50),
            ..Default::default()
        }
    }

    fn client(base: &str) -> MetalClient {
        MetalClient::new(config(base), None).unwrap()
    }

    fn call() -> Call {
        Call::new(Secret::new(TOKEN.to_owned()))
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn device_json(n: u128) -> String {
        serde_json::json!({"id": id(n), "hostname": format!("m-{n}"), "state": "active"})
            .to_string()
    }

    fn create_input() -> DeviceCreateInput {
        DeviceCreateInput {
            metro: Some("sv".into()),
            plan: "c3.small.x86".into(),
            operating_system: "ubuntu_22_04".into(),
            hostname: Some("m-1".into()),
            userdata: Some(Secret::new("#cloud-config secret-userdata".into())),
            ..Default::default()
        }
    }

    fn hits(log: &Log) -> usize {
        log.lock().unwrap().len()
    }

    #[tokio::test]
    async fn get_sends_auth_headers_and_joins_a_prefixed_base() {
        let (base, log) = server(|_, seen| {
            if seen.path == format!("/metal/v1/devices/{}", id(7)) {
                reply(200, device_json(7))
                    .header("deprecation", "@1700000000")
                    .header("sunset", "Tue, 30 Jun 2026 00:00:00 GMT")
            } else {
                reply(404, r#"{"error":"no such path"}"#)
            }
        })
        .await;
        for prefix in ["/metal/v1", "/metal/v1/"] {
            let d = client(&format!("{base}{prefix}"))
                .get_device(&call(), id(7))
                .await
                .unwrap();
            assert_eq!(d.id, Some(id(7)));
            assert_eq!(d.hostname.as_deref(), Some("m-7"));
            assert_eq!(d.state, Some(DeviceState::Active));
        }
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        for s in seen {
            assert_eq!(s.method, "GET");
            assert_eq!(
                s.headers.get("x-auth-token").map(String::as_str),
                Some(TOKEN)
            );
            assert_eq!(
                s.headers.get("accept").map(String::as_str),
                Some("application/json")
            );
            assert!(
                s.headers
                    .get("user-agent")
                    .is_some_and(|ua| ua.starts_with("metal-driver/"))
            );
            assert!(s.body.is_empty());
        }
    }

    #[tokio::test]
    async fn base_without_prefix_works() {
        let (base, log) = server(|_, seen| {
            if seen.path == format!("/devices/{}", id(3)) {
                reply(200, device_json(3))
            } else {
                reply(404, "")
            }
        })
        .await;
        for b in [base.clone(), format!("{base}/")] {
            assert_eq!(
                client(&b).get_device(&call(), id(3)).await.unwrap().id,
                Some(id(3))
            );
        }
        assert_eq!(hits(&log), 2);
    }

    #[tokio::test]
    async fn lists_every_page_in_order_when_the_server_caps_per_page() {
        let project = id(99);
        let (base, log) = server(move |_, seen| {
            assert_eq!(seen.path, format!("/projects/{project}/devices"));
            let page: i64 = seen.query["page"].parse().unwrap();
            let per_page: i64 = seen.query["per_page"].parse::<i64>().unwrap().min(2); // capped
            let total = 5i64;
            let last = (total + per_page - 1) / per_page;
            let ids: Vec<serde_json::Value> = ((page - 1) * per_page + 1..=(page * per_page).min(total))
                .map(|n| serde_json::from_str(&device_json(n as u128)).unwrap())
                .collect();
            let mut meta = serde_json::json!({"current_page": page, "last_page": last, "total": total});
            if page < last {
                // A host we must not follow.
                meta["next"] = serde_json::json!({"href": format!("http://evil.invalid/projects/x/devices?page={}", page + 1)});
            }
            reply(200, serde_json::json!({"devices": ids, "meta": meta}).to_string())
        })
        .await;
        let q = ListQuery {
            tag: Some("cluster:shoot--a".into()),
            hostname: Some("m-".into()),
        };
        let devices = client(&base)
            .list_project_devices(&call(), project, &q)
            .await
            .unwrap();
        let got: Vec<Uuid> = devices.iter().map(|d| d.id.unwrap()).collect();
        assert_eq!(got, (1..=5).map(id).collect::<Vec<_>>());
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(s.query["page"], (i + 1).to_string());
            assert_eq!(s.query["per_page"], "1000");
            assert_eq!(s.query["tag"], "cluster:shoot--a");
            assert_eq!(s.query["hostname"], "m-");
            assert_eq!(
                s.headers.get("x-auth-token").map(String::as_str),
                Some(TOKEN)
            );
        }
    }

    #[tokio::test]
    async fn delete_sends_force_delete_as_query_without_body() {
        let (base, log) = server(|_, _| reply(204, "")).await;
        let c = client(&base);
        c.delete_device(&call(), id(5), true).await.unwrap();
        c.delete_device(&call(), id(5), false).await.unwrap();
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].method, "DELETE");
        assert_eq!(seen[0].path, format!("/devices/{}", id(5)));
        assert_eq!(
            seen[0].query.get("force_delete").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            seen[1].query.get("force_delete").map(String::as_str),
            Some("false")
        );
        assert!(seen.iter().all(|s| s.body.is_empty()));
    }

    #[tokio::test]
    async fn update_and_action_send_json_bodies() {
        let (base, log) = server(|_, seen| match seen.method.as_str() {
            "PUT" => reply(200, device_json(8)),
            _ => reply(202, ""),
        })
        .await;
        let c = client(&base);
        let upd = DeviceUpdateInput {
            locked: Some(false),
            ..Default::default()
        };
        assert_eq!(
            c.update_device(&call(), id(8), &upd).await.unwrap().id,
            Some(id(8))
        );
        let act = DeviceActionInput {
            type_: DeviceActionType::PowerOff,
            force_delete: None,
        };
        c.perform_action(&call(), id(8), &act).await.unwrap();
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen[0].method, "PUT");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&seen[0].body).unwrap(),
            serde_json::json!({"locked": false})
        );
        assert_eq!(seen[1].method, "POST");
        assert_eq!(seen[1].path, format!("/devices/{}/actions", id(8)));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&seen[1].body).unwrap(),
            serde_json::json!({"type": "power_off"})
        );
        for s in &seen {
            assert_eq!(
                s.headers.get("content-type").map(String::as_str),
                Some("application/json")
            );
        }
    }

    #[tokio::test]
    async fn create_posts_the_input_and_decodes_201() {
        let (base, log) = server(|_, _| reply(201, device_json(1))).await;
        let d = client(&base)
            .create_device(&call(), id(99), &create_input())
            .await
            .unwrap();
        assert_eq!(d.id, Some(id(1)));
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].path, format!("/projects/{}/devices", id(99)));
        let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(body["metro"], "sv");
        assert_eq!(body["userdata"], "#cloud-config secret-userdata");
    }

    #[tokio::test]
    async fn get_429_with_retry_after_is_retried_after_the_delay() {
        let (base, log) = server(|i, _| {
            if i == 0 {
                reply(429, r#"{"error":"slow down"}"#).header("retry-after", "1")
            } else {
                reply(200, device_json(2))
            }
        })
        .await;
        let metrics = Metrics::new();
        let mut cfg = config(&base);
        cfg.backoff_max = Duration::from_secs(5);
        let c = MetalClient::new(cfg, Some(metrics.metal.clone())).unwrap();
        let started = Instant::now();
        let d = c.get_device(&call(), id(2)).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(d.id, Some(id(2)));
        assert_eq!(hits(&log), 2);
        assert!(
            elapsed >= Duration::from_millis(900),
            "Retry-After not honoured: {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        let text = metrics.render();
        assert!(
            text.contains(
                r#"metal_driver_metal_api_retries_total{endpoint="findDeviceById",reason="429"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"metal_driver_metal_api_requests_total{endpoint="findDeviceById",status="429"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"metal_driver_metal_api_requests_total{endpoint="findDeviceById",status="200"} 1"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn create_is_not_retried_on_503() {
        let (base, log) = server(|_, _| reply(503, r#"{"errors":["maintenance"]}"#)).await;
        let err = client(&base)
            .create_device(&call(), id(99), &create_input())
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(503));
        assert!(err.may_have_committed());
        assert_eq!(err.api_message(), Some("maintenance"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(hits(&log), 1);
    }

    #[tokio::test]
    async fn create_is_not_retried_on_a_dropped_connection() {
        let (base, count) = raw_server(vec![None, http_ok("201 Created", &device_json(1))]).await;
        let err = client(&base)
            .create_device(&call(), id(99), &create_input())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        assert!(err.may_have_committed());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn create_and_action_are_retried_on_429() {
        let (base, log) = server(|i, seen| match (i % 2, seen.path.ends_with("/actions")) {
            (0, _) => reply(429, "").header("retry-after", "0"),
            (_, false) => reply(201, device_json(1)),
            (_, true) => reply(202, ""),
        })
        .await;
        let c = client(&base);
        assert_eq!(
            c.create_device(&call(), id(99), &create_input())
                .await
                .unwrap()
                .id,
            Some(id(1))
        );
        let act = DeviceActionInput {
            type_: DeviceActionType::Reboot,
            force_delete: None,
        };
        c.perform_action(&call(), id(1), &act).await.unwrap();
        assert_eq!(hits(&log), 4);
    }

    #[tokio::test]
    async fn idempotent_requests_retry_5xx_and_transport_errors() {
        let (base, log) = server(|i, _| match i {
            0 => reply(502, "<html>bad gateway</html>"),
            1 => reply(503, ""),
            _ => reply(200, device_json(4)),
        })
        .await;
        assert_eq!(
            client(&base).get_device(&call(), id(4)).await.unwrap().id,
            Some(id(4))
        );
        assert_eq!(hits(&log), 3);

        let (base, count) = raw_server(vec![None, None, http_ok("204 No Content", "")]).await;
        client(&base)
            .delete_device(&call(), id(4), false)
            .await
            .unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn non_retryable_statuses_and_exhaustion() {
        for (status, is_404) in [(501, false), (404, true), (422, false), (401, false)] {
            let (base, log) = server(move |_, _| reply(status, r#"{"errors":["nope"]}"#)).await;
            let err = client(&base).get_device(&call(), id(1)).await.unwrap_err();
            assert_eq!(err.status(), Some(status));
            assert_eq!(err.is_not_found(), is_404);
            assert_eq!(hits(&log), 1, "{status} must not be retried");
        }
        let (base, log) = server(|_, _| reply(503, "")).await;
        let mut cfg = config(&base);
        cfg.max_retries = 2;
        let err = MetalClient::new(cfg, None)
            .unwrap()
            .get_device(&call(), id(1))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(503));
        assert_eq!(hits(&log), 3);
    }

    #[tokio::test]
    async fn success_cut_off_mid_body_is_a_transport_error() {
        let cut = Some(
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{\"id\":"
                .to_owned(),
        );
        let (base, count) = raw_server(vec![cut]).await;
        let err = client(&base)
            .create_device(&call(), id(99), &create_input())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        assert!(err.may_have_committed());
        assert_eq!(count.load(Ordering::SeqCst), 1, "a create is never retried");
    }

    #[tokio::test]
    async fn error_body_shapes_become_messages() {
        let long = "x".repeat(5000);
        let bodies = vec![
            r#"{"error":"bad plan"}"#.to_owned(),
            r#"{"errors":["a","b"]}"#.to_owned(),
            String::new(),
            "<html>\n<body>oops\tthere</body></html>".to_owned(),
            long.clone(),
            r#"{"message":"other shape"}"#.to_owned(),
            r#"{"errors":[]}"#.to_owned(),
        ];
        let served = bodies.clone();
        let (base, _) = server(move |i, _| reply(422, served[i].clone())).await;
        let c = client(&base);
        let mut messages = Vec::new();
        for _ in &bodies {
            let err = c.get_device(&call(), id(1)).await.unwrap_err();
            assert_eq!(err.status(), Some(422));
            messages.push(err.api_message().unwrap().to_owned());
        }
        assert_eq!(messages[0], "bad plan");
        assert_eq!(messages[1], "a; b");
        assert_eq!(messages[2], "Unprocessable Entity");
        assert_eq!(messages[3], "<html> <body>oops there</body></html>");
        assert_eq!(messages[4].chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
        assert!(messages[4].ends_with('…'));
        assert_eq!(messages[5], r#"{"message":"other shape"}"#);
        assert_eq!(messages[6], r#"{"errors":[]}"#);
    }

    #[tokio::test]
    async fn error_message_never_contains_the_request_body() {
        let (base, _) = server(|_, _| reply(500, "")).await;
        let err = client(&base)
            .create_device(&call(), id(99), &create_input())
            .await
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("secret-userdata"), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
    }

    #[tokio::test]
    async fn deadline_cuts_a_slow_attempt() {
        let (base, log) =
            server(|_, _| reply(200, device_json(1)).delay(Duration::from_secs(5))).await;
        let started = Instant::now();
        let c = call().with_deadline(Some(Instant::now() + Duration::from_millis(200)));
        let err = client(&base).get_device(&c, id(1)).await.unwrap_err();
        assert!(matches!(err, Error::Deadline { .. }), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(hits(&log), 1);
    }

    #[tokio::test]
    async fn a_retry_that_would_overrun_the_deadline_returns_the_last_error() {
        let (base, log) =
            server(|_, _| reply(503, r#"{"error":"busy"}"#).header("retry-after", "10")).await;
        let mut cfg = config(&base);
        cfg.backoff_max = Duration::from_secs(30);
        let started = Instant::now();
        let c = call().with_deadline(Some(Instant::now() + Duration::from_secs(2)));
        let err = MetalClient::new(cfg, None)
            .unwrap()
            .get_device(&c, id(1))
            .await
            .unwrap_err();
        match &err {
            Error::Status {
                status: 503,
                retry_after,
                message,
                ..
            } => {
                assert_eq!(*retry_after, Some(Duration::from_secs(10)));
                assert_eq!(message, "busy");
            }
            other => panic!("expected the 503, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(hits(&log), 1);
    }

    #[tokio::test]
    async fn a_passed_deadline_sends_nothing() {
        let (base, log) = server(|_, _| reply(200, device_json(1))).await;
        let c = call().with_deadline(Some(Instant::now()));
        let err = client(&base).get_device(&c, id(1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Deadline {
                    endpoint: Operation::FindDeviceById
                }
            ),
            "{err:?}"
        );
        assert_eq!(hits(&log), 0);
    }

    #[tokio::test]
    async fn request_timeout_retries_gets_but_not_posts() {
        let (base, log) =
            server(|_, _| reply(201, device_json(1)).delay(Duration::from_secs(3))).await;
        let mut cfg = config(&base);
        cfg.request_timeout = Duration::from_millis(200);
        cfg.max_retries = 1;
        let c = MetalClient::new(cfg, None).unwrap();
        let err = c
            .create_device(&call(), id(99), &create_input())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Deadline { .. }), "{err:?}");
        assert!(err.may_have_committed());
        assert_eq!(hits(&log), 1);
        let err = c.get_device(&call(), id(1)).await.unwrap_err();
        assert!(matches!(err, Error::Deadline { .. }), "{err:?}");
        assert_eq!(hits(&log), 3, "the GET is tried twice");
    }

    #[tokio::test]
    async fn oversized_and_undecodable_bodies_are_decode_errors() {
        let (base, _) = server(|i, _| match i {
            0 => reply(200, device_json(1)),
            _ => reply(200, r#"{"id":"hunter2-is-not-a-uuid"}"#),
        })
        .await;
        let mut cfg = config(&base);
        cfg.max_response_bytes = 20;
        let err = MetalClient::new(cfg, None)
            .unwrap()
            .get_device(&call(), id(1))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        let err = client(&base).get_device(&call(), id(1)).await.unwrap_err();
        match &err {
            Error::Decode { reason, .. } => {
                assert!(reason.contains("`id`"), "{reason}");
                assert!(!reason.contains("hunter2"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_token_that_is_not_a_header_value_is_never_sent() {
        let (base, log) = server(|_, _| reply(200, device_json(1))).await;
        let c = Call::new(Secret::new("bad\ntoken".to_owned()));
        let err = client(&base).get_device(&c, id(1)).await.unwrap_err();
        assert_eq!(err.status(), Some(401));
        assert!(!err.to_string().contains("bad\ntoken"));
        assert_eq!(hits(&log), 0);
    }

    #[test]
    fn debug_never_shows_tokens_or_url_credentials() {
        let mut cfg = ClientConfig {
            base_url: "https://user:pa55word@api.example.com/metal/v1?key=sekrit".to_owned(),
            ..Default::default()
        };
        let text = format!("{cfg:?}");
        assert!(
            !text.contains("pa55word") && !text.contains("sekrit"),
            "{text}"
        );
        cfg.base_url = "https://user:pa55word@api.example.com/metal/v1".to_owned();
        let c = MetalClient::new(cfg, None).unwrap();
        let text = format!("{c:?} {:?}", call());
        assert!(!text.contains("pa55word"), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
        assert!(text.contains("api.example.com"), "{text}");
    }

    #[test]
    fn config_is_validated() {
        let bad = |f: fn(&mut ClientConfig)| {
            let mut cfg = ClientConfig::default();
            f(&mut cfg);
            MetalClient::new(cfg, None).unwrap_err()
        };
        assert!(matches!(
            bad(|c| c.base_url = "ftp://x/".into()),
            ConfigError::BaseUrl(_)
        ));
        assert!(matches!(
            bad(|c| c.base_url = "not a url".into()),
            ConfigError::BaseUrl(_)
        ));
        assert!(matches!(
            bad(|c| c.base_url = "https://x/v1?a=b".into()),
            ConfigError::BaseUrl(_)
        ));
        assert!(matches!(
            bad(|c| c.rate_limit = Some(0.0)),
            ConfigError::Invalid {
                field: "rate_limit",
                ..
            }
        ));
        assert!(matches!(
            bad(|c| c.rate_limit = Some(f64::NAN)),
            ConfigError::Invalid { .. }
        ));
        assert!(matches!(
            bad(|c| c.per_page = 0),
            ConfigError::Invalid {
                field: "per_page",
                ..
            }
        ));
        let c = MetalClient::new(ClientConfig::default(), None).unwrap();
        assert_eq!(
            c.url("/devices/x"),
            "https://api.equinix.com/metal/v1/devices/x"
        );
        assert_eq!(
            c.config().user_agent,
            concat!("metal-driver/", env!("CARGO_PKG_VERSION"))
        );
    }

    #[tokio::test]
    async fn rate_limit_spaces_requests_and_respects_deadlines() {
        let (base, log) = server(|_, _| reply(200, device_json(1))).await;
        let mut cfg = config(&base);
        cfg.rate_limit = Some(20.0); // burst 20, then one every 50 ms
        let c = MetalClient::new(cfg, None).unwrap();
        let started = Instant::now();
        let calls = (0..30).map(|_| {
            let c = c.clone();
            async move { c.get_device(&call(), id(1)).await }
        });
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        let elapsed = started.elapsed();
        assert_eq!(hits(&log), 30);
        assert!(
            elapsed >= Duration::from_millis(400),
            "10 requests beyond the burst at 20/s: {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

        let bucket = TokenBucket::new(1.0);
        bucket.acquire(None).await.unwrap();
        let soon = Some(Instant::now() + Duration::from_millis(100));
        assert!(
            bucket.acquire(soon).await.is_err(),
            "the next token is 1 s away"
        );
    }

    #[test]
    fn error_message_helper() {
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, br#"{"error":"Not found"}"#),
            "Not found"
        );
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, b"\xff\xfe"),
            "\u{fffd}\u{fffd}"
        );
        assert_eq!(truncate_chars("ééé", 2), "éé…");
    }

    /// End to end against the in-process Metal API simulator (`crate::sim`).
    mod against_the_simulator {
        use super::*;
        use crate::sim::{self, DEFAULT_PROJECT, DEFAULT_TOKEN, Fault, SimArgs, SimHandle};

        fn sim_client(sim: &SimHandle) -> MetalClient {
            client(&format!("{}/metal/v1", sim.base_url()))
        }

        fn sim_call() -> Call {
            Call::new(Secret::new(DEFAULT_TOKEN.to_owned()))
        }

        fn input(hostname: &str) -> DeviceCreateInput {
            DeviceCreateInput {
                metro: Some("sv".into()),
                plan: "c3.small.x86".into(),
                operating_system: "ubuntu_22_04".into(),
                hostname: Some(hostname.into()),
                tags: vec!["cluster-a".into()],
                ..Default::default()
            }
        }

        #[tokio::test]
        async fn create_get_list_update_act_delete() {
            let sim = sim::spawn(SimArgs {
                per_page_max: 7,
                ..SimArgs::for_tests()
            })
            .await
            .unwrap();
            let c = sim_client(&sim);
            let created = c
                .create_device(&sim_call(), DEFAULT_PROJECT, &input("m-0"))
                .await
                .unwrap();
            let dev_id = created.id.unwrap();
            assert_eq!(
                c.get_device(&sim_call(), dev_id)
                    .await
                    .unwrap()
                    .hostname
                    .as_deref(),
                Some("m-0")
            );
            for n in 1..20 {
                let mut i = input(&format!("m-{n}"));
                if n % 4 == 0 {
                    i.tags = vec!["other".into()];
                }
                sim.create_device_direct(DEFAULT_PROJECT, i);
            }
            // 16 tagged devices (m-4, m-8, m-12, m-16 are not) over pages of at most 7.
            let q = ListQuery {
                tag: Some("cluster-a".into()),
                hostname: None,
            };
            let listed = c
                .list_project_devices(&sim_call(), DEFAULT_PROJECT, &q)
                .await
                .unwrap();
            assert_eq!(listed.len(), 16);
            assert!(listed.iter().all(|d| d.has_tag("cluster-a")));
            let all = c
                .list_project_devices(&sim_call(), DEFAULT_PROJECT, &ListQuery::default())
                .await
                .unwrap();
            assert_eq!(all.len(), 20);

            let upd = DeviceUpdateInput {
                description: Some("hello".into()),
                ..Default::default()
            };
            let updated = c.update_device(&sim_call(), dev_id, &upd).await.unwrap();
            assert_eq!(updated.description.as_deref(), Some("hello"));
            let act = DeviceActionInput {
                type_: DeviceActionType::PowerOff,
                force_delete: None,
            };
            c.perform_action(&sim_call(), dev_id, &act).await.unwrap();
            c.delete_device(&sim_call(), dev_id, false).await.unwrap();
            let missing = c.get_device(&sim_call(), id(12345)).await.unwrap_err();
            assert!(missing.is_not_found(), "{missing:?}");
            let bad = Call::new(Secret::new("wrong-token".to_owned()));
            assert_eq!(
                c.get_device(&bad, dev_id).await.unwrap_err().status(),
                Some(401)
            );
            sim.shutdown().await;
        }

        #[tokio::test]
        async fn a_dropped_create_surfaces_and_is_not_repeated() {
            let sim = sim::spawn(SimArgs::for_tests()).await.unwrap();
            sim.inject(Operation::CreateDevice, Fault::Drop, 1);
            let err = sim_client(&sim)
                .create_device(&sim_call(), DEFAULT_PROJECT, &input("m-1"))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Transport { .. }), "{err:?}");
            assert!(err.may_have_committed());
            assert_eq!(sim.devices().len(), 1, "committed once, never repeated");
            sim.shutdown().await;
        }

        #[tokio::test]
        async fn create_503_surfaces_but_429_is_retried() {
            let sim = sim::spawn(SimArgs::for_tests()).await.unwrap();
            let c = sim_client(&sim);
            sim.inject(Operation::CreateDevice, Fault::ServerError, 1);
            let err = c
                .create_device(&sim_call(), DEFAULT_PROJECT, &input("m-1"))
                .await
                .unwrap_err();
            assert_eq!(err.status(), Some(503));
            assert!(sim.devices().is_empty());
            sim.inject(Operation::CreateDevice, Fault::TooManyRequests, 2);
            c.create_device(&sim_call(), DEFAULT_PROJECT, &input("m-1"))
                .await
                .unwrap();
            assert_eq!(sim.devices().len(), 1);
            sim.shutdown().await;
        }

        #[tokio::test]
        async fn gets_and_deletes_ride_out_5xx_and_drops() {
            let sim = sim::spawn(SimArgs::for_tests()).await.unwrap();
            let c = sim_client(&sim);
            let d = c
                .create_device(&sim_call(), DEFAULT_PROJECT, &input("m-1"))
                .await
                .unwrap();
            sim.inject(Operation::FindDeviceById, Fault::ServerError, 2);
            sim.inject(Operation::FindDeviceById, Fault::Drop, 1);
            assert_eq!(
                c.get_device(&sim_call(), d.id.unwrap()).await.unwrap().id,
                d.id
            );
            sim.inject(Operation::FindProjectDevices, Fault::TooManyRequests, 1);
            assert_eq!(
                c.list_project_devices(&sim_call(), DEFAULT_PROJECT, &ListQuery::default())
                    .await
                    .unwrap()
                    .len(),
                1
            );
            sim.inject(Operation::DeleteDevice, Fault::Drop, 1);
            c.delete_device(&sim_call(), d.id.unwrap(), false)
                .await
                .unwrap_or_else(|e| {
                    // The dropped delete committed; the retry may see the device already gone.
                    assert!(e.is_not_found(), "{e:?}");
                });
            sim.shutdown().await;
        }
    }
}
