//! `--kube-api-qps` / `--kube-api-burst`: a client-side token bucket on every request a kube
//! [`Client`](kube::Client) sends, as client-go's `flowcontrol.NewTokenBucketRateLimiter`
//! does for MCM: the bucket holds up to `burst` tokens, refills at `qps` per second, starts
//! full, and a request waits for its token. Each client has its own bucket (MCM builds one
//! limiter per client), so the control cluster, the target cluster and the leader lease are
//! limited separately.
//!
//! Why it matters: a provider sidecar runs in hundreds of shoot namespaces against one seed
//! API server; after a restart every controller relists and reconciles everything at once.
//! Gardener passes `--kube-api-qps=100 --kube-api-burst=200`; MCM's defaults are 20 and 30.
//!
//! Like `golang.org/x/time/rate`, a token is reserved when a request asks for one and the
//! request then waits until its reservation is due, so concurrent requests are served in
//! order, none starves, and watches cost a token only when they (re)connect.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// MCM's `--kube-api-qps` default.
pub const DEFAULT_QPS: f32 = 20.0;
/// MCM's `--kube-api-burst` default.
pub const DEFAULT_BURST: u32 = 30;

/// Refill rate and capacity of one client's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub qps: f64,
    /// Bucket capacity: requests that may go at once after a quiet period.
    pub burst: u32,
}

impl Default for Rate {
    fn default() -> Self {
        Self {
            qps: f64::from(DEFAULT_QPS),
            burst: DEFAULT_BURST,
        }
    }
}

impl Rate {
    /// From the (validated) flags, MCM's defaults for what is unset.
    pub fn new(qps: Option<f32>, burst: Option<u32>) -> Self {
        Self {
            qps: f64::from(qps.unwrap_or(DEFAULT_QPS)),
            burst: burst.unwrap_or(DEFAULT_BURST),
        }
    }
}

/// clap parser of `--kube-api-qps`: a finite number above zero (MCM rejects ≤ 0 too).
pub fn parse_qps(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(qps) if qps.is_finite() && qps > 0.0 => Ok(qps),
        _ => Err(format!("must be a number greater than zero, got {s:?}")),
    }
}

/// clap parser of `--kube-api-burst`: at least 1 (with 0, client-go fails every request).
pub fn parse_burst(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(burst) if burst >= 1 => Ok(burst),
        _ => Err(format!("must be a whole number of at least 1, got {s:?}")),
    }
}

/// The shared state of one client's bucket.
#[derive(Debug)]
struct Bucket {
    rate: Rate,
    /// Tokens at `at`; negative while reservations are queued.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            at: Instant::now(),
        }
    }

    /// Takes one token and says how long the caller must wait until it is due.
    fn reserve(&mut self, now: Instant) -> Duration {
        let since = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + since * self.rate.qps).min(f64::from(self.rate.burst));
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate.qps)
        }
    }
}

/// Adds a token bucket in front of a client's HTTP service.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<Bucket>>,
}

impl RateLimitLayer {
    /// One bucket: every service this layer wraps shares it.
    pub fn new(rate: Rate) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(Bucket::new(rate))),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
            wait: None,
            reserved: false,
        }
    }
}

/// The service of [`RateLimitLayer`]: not ready until its token is due.
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    wait: Option<Pin<Box<Sleep>>>,
    reserved: bool,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        // A clone reserves its own tokens.
        Self {
            inner: self.inner.clone(),
            bucket: self.bucket.clone(),
            wait: None,
            reserved: false,
        }
    }
}

impl<S, R> Service<R> for RateLimit<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.reserved {
            let delay = self
                .bucket
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .reserve(Instant::now());
            self.reserved = true;
            if !delay.is_zero() {
                self.wait = Some(Box::pin(tokio::time::sleep(delay)));
            }
        }
        if let Some(wait) = self.wait.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The token was spent on this request; the next one reserves again.
        self.reserved = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{Api, Client, client::Body};

    #[test]
    fn flags_default_to_mcms_and_reject_what_cannot_work() {
        assert_eq!(
            Rate::new(None, None),
            Rate {
                qps: 20.0,
                burst: 30
            }
        );
        assert_eq!(
            Rate::new(Some(100.0), Some(200)),
            Rate {
                qps: 100.0,
                burst: 200
            }
        );
        assert_eq!(parse_qps("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "x", ""] {
            assert!(parse_qps(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_burst("1"), Ok(1));
        for bad in ["0", "-1", "1.5", ""] {
            assert!(parse_burst(bad).is_err(), "{bad}");
        }
    }

    /// A kube Client over a mock API server, rate-limited at 2 qps with a burst of 3. Returns
    /// the virtual instants at which each of `n` concurrent GETs reached the server.
    async fn arrivals(n: usize, rate: Rate) -> Vec<Duration> {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(RateLimitLayer::new(rate).layer(service), "ns");
        let start = Instant::now();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((_request, send)) = handle.next_request().await {
                seen.push(start.elapsed());
                let body = serde_json::to_vec(&serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}
                }))
                .unwrap();
                send.send_response(Response::builder().body(Body::from(body)).unwrap());
            }
            seen
        });
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        let gets = (0..n).map(|_| {
            let api = api.clone();
            async move { api.get("c").await.unwrap() }
        });
        futures::future::join_all(gets).await;
        drop(api);
        server.await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_wait_for_the_refill() {
        let seen = arrivals(9, Rate { qps: 2.0, burst: 3 }).await;
        assert_eq!(seen.len(), 9);
        let at = |d: &Duration| (d.as_secs_f64() * 1000.0).round() as u64;
        // The burst goes at once; then one request every 1/qps = 500 ms.
        let expected: Vec<u64> = vec![0, 0, 0, 500, 1000, 1500, 2000, 2500, 3000];
        assert_eq!(seen.iter().map(at).collect::<Vec<_>>(), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_period_refills_the_bucket_up_to_the_burst_only() {
        let rate = Rate {
            qps: 10.0,
            burst: 2,
        };
        let layer = RateLimitLayer::new(rate);
        let mut bucket = layer.bucket.lock().unwrap();
        let t0 = Instant::now();
        assert_eq!(bucket.reserve(t0), Duration::ZERO);
        assert_eq!(bucket.reserve(t0), Duration::ZERO);
        assert_eq!(bucket.reserve(t0), Duration::from_millis(100));
        // Ten seconds later the bucket holds `burst` tokens, not 100.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(bucket.reserve(later), Duration::ZERO);
        assert_eq!(bucket.reserve(later), Duration::ZERO);
        assert_eq!(bucket.reserve(later), Duration::from_millis(100));
    }
}
