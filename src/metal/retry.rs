//! The retry policy of the Metal client: which failed attempts may be repeated, and after
//! how long. Pure (no IO, no clock reads, randomness passed in) so every rule is tested.
//!
//! The rule that matters most: a `POST` (create, actions) is repeated **only** after a 429,
//! because a 429 means the API refused the request and nothing was committed. A 5xx, a
//! transport error or a timeout on a `POST` surfaces to the caller, which looks the device
//! up before trying again — a blind retry of a create can bill a second machine.
//! `GET`, `PUT` (an update sets absolute values, so repeating it is harmless) and `DELETE`
//! are repeated on 429, 5xx (except 501, which will not change) and transport errors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, RngExt};

/// Whether repeating a request can change the outcome beyond what one success would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// `GET`, `PUT`, `DELETE`: safe to repeat after any transient failure.
    Idempotent,
    /// `POST`: repeat only when the server refused it outright (429).
    NonIdempotent,
}

impl Idempotency {
    /// The class of an HTTP method: only `POST` and `PATCH` (and unknown methods) are not
    /// safe to repeat.
    pub fn of(method: &reqwest::Method) -> Self {
        use reqwest::Method;
        if [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ]
        .contains(method)
        {
            Self::Idempotent
        } else {
            Self::NonIdempotent
        }
    }
}

/// What one attempt produced, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with a non-success status. `hint` is the delay the server asked
    /// for ([`server_delay`]), if any.
    Status { status: u16, hint: Option<Duration> },
    /// No (complete) answer: connect/reset/TLS failure, or the body was cut off.
    Transport,
    /// Our per-attempt timeout fired (not the caller's deadline, which never retries).
    Timeout,
}

/// Why we are retrying; the metric label of `MetalApiMetrics::retry`.
pub fn reason_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Status { status: 429, .. } => "429",
        Outcome::Status { .. } => "5xx",
        Outcome::Transport | Outcome::Timeout => "transport",
    }
}

/// The verdict for one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sleep `delay`, then send the request again. `reason` is the metric label.
    Retry {
        delay: Duration,
        reason: &'static str,
    },
    /// Return the error to the caller.
    Stop,
}

/// The knobs of the policy (copied from `ClientConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so `max_retries + 1` attempts at most).
    pub max_retries: u32,
    /// The first backoff ceiling; doubled per retry.
    pub backoff_base: Duration,
    /// Upper bound of every delay, including server-requested ones.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Whether this outcome is worth repeating for this kind of request (ignoring the count).
pub fn is_retryable(kind: Idempotency, outcome: &Outcome) -> bool {
    match (kind, outcome) {
        // Refused, so nothing happened: safe for everything.
        (_, Outcome::Status { status: 429, .. }) => true,
        (Idempotency::NonIdempotent, _) => false,
        (Idempotency::Idempotent, Outcome::Status { status, .. }) => {
            (500..=599).contains(status) && *status != 501
        }
        (Idempotency::Idempotent, Outcome::Transport | Outcome::Timeout) => true,
    }
}

impl RetryPolicy {
    /// Decide after a failed attempt. `retries_done` counts the retries already made for
    /// this call (0 after the first attempt).
    pub fn decide(
        &self,
        kind: Idempotency,
        retries_done: u32,
        outcome: &Outcome,
        rng: &mut impl Rng,
    ) -> Decision {
        if retries_done >= self.max_retries || !is_retryable(kind, outcome) {
            return Decision::Stop;
        }
        let delay = match outcome {
            Outcome::Status {
                hint: Some(hint), ..
            } => *hint,
            _ => self.backoff(retries_done, rng),
        };
        Decision::Retry {
            delay: delay.min(self.backoff_max),
            reason: reason_label(outcome),
        }
    }

    /// Full-jitter exponential backoff: uniform in `[0, min(max, base * 2^attempt)]`.
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        let ceiling = self
            .backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

/// Parse `Retry-After`: delta-seconds (`"3"`) or an HTTP-date. A date in the past means
/// "now" (zero). Anything else is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Values of `X-RateLimit-Reset` below this are taken as delta-seconds, not a Unix time
/// (it is 2001-09-09; no real reset lies before it).
const RESET_EPOCH_THRESHOLD: u64 = 1_000_000_000;

/// Parse `X-RateLimit-Reset` (Unix seconds, as packngo read it; a small number is taken as
/// delta-seconds). A reset time already past tells us nothing, so it yields `None` and the
/// caller falls back to backoff.
pub fn parse_rate_limit_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let secs = value.trim().parse::<u64>().ok()?;
    if secs < RESET_EPOCH_THRESHOLD {
        return (secs > 0).then(|| Duration::from_secs(secs));
    }
    let when = UNIX_EPOCH.checked_add(Duration::from_secs(secs))?;
    when.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// The delay the server asked for on a failed answer: `Retry-After` on any status, else
/// `X-RateLimit-Reset` on a 429 (on a 5xx the rate window says nothing about recovery).
pub fn server_delay(
    status: u16,
    retry_after: Option<&str>,
    rate_limit_reset: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    retry_after
        .and_then(|v| parse_retry_after(v, now))
        .or_else(|| {
            if status == 429 {
                rate_limit_reset.and_then(|v| parse_rate_limit_reset(v, now))
            } else {
                None
            }
        })
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn status(s: u16) -> Outcome {
        Outcome::Status {
            status: s,
            hint: None,
        }
    }

    #[test]
    fn method_classes() {
        use reqwest::Method;
        assert_eq!(Idempotency::of(&Method::GET), Idempotency::Idempotent);
        assert_eq!(Idempotency::of(&Method::PUT), Idempotency::Idempotent);
        assert_eq!(Idempotency::of(&Method::DELETE), Idempotency::Idempotent);
        assert_eq!(Idempotency::of(&Method::POST), Idempotency::NonIdempotent);
        assert_eq!(Idempotency::of(&Method::PATCH), Idempotency::NonIdempotent);
    }

    #[test]
    fn which_outcomes_retry() {
        use Idempotency::*;
        for s in [429, 500, 502, 503, 504, 599] {
            assert!(is_retryable(Idempotent, &status(s)), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422, 501] {
            assert!(!is_retryable(Idempotent, &status(s)), "{s}");
        }
        assert!(is_retryable(Idempotent, &Outcome::Transport));
        assert!(is_retryable(Idempotent, &Outcome::Timeout));

        // POST: only a refusal.
        assert!(is_retryable(NonIdempotent, &status(429)));
        for s in [500, 502, 503, 504, 422, 404] {
            assert!(!is_retryable(NonIdempotent, &status(s)), "{s}");
        }
        assert!(!is_retryable(NonIdempotent, &Outcome::Transport));
        assert!(!is_retryable(NonIdempotent, &Outcome::Timeout));
    }

    #[test]
    fn stops_after_max_retries() {
        let p = RetryPolicy {
            max_retries: 2,
            ..Default::default()
        };
        let mut r = rng();
        assert!(matches!(
            p.decide(Idempotency::Idempotent, 0, &status(503), &mut r),
            Decision::Retry { .. }
        ));
        assert!(matches!(
            p.decide(Idempotency::Idempotent, 1, &status(503), &mut r),
            Decision::Retry { .. }
        ));
        assert_eq!(
            p.decide(Idempotency::Idempotent, 2, &status(503), &mut r),
            Decision::Stop
        );
        let none = RetryPolicy {
            max_retries: 0,
            ..Default::default()
        };
        assert_eq!(
            none.decide(Idempotency::Idempotent, 0, &status(429), &mut r),
            Decision::Stop
        );
    }

    #[test]
    fn hint_wins_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 5,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(30),
        };
        let mut r = rng();
        let o = Outcome::Status {
            status: 429,
            hint: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            p.decide(Idempotency::NonIdempotent, 0, &o, &mut r),
            Decision::Retry {
                delay: Duration::from_secs(7),
                reason: "429"
            }
        );
        let o = Outcome::Status {
            status: 503,
            hint: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            p.decide(Idempotency::Idempotent, 3, &o, &mut r),
            Decision::Retry {
                delay: Duration::from_secs(30),
                reason: "5xx"
            }
        );
        assert_eq!(
            p.decide(Idempotency::Idempotent, 0, &Outcome::Timeout, &mut r),
            Decision::Retry {
                delay: p.backoff(0, &mut rng()),
                reason: "transport"
            }
        );
    }

    #[test]
    fn jitter_bounds_grow_and_cap() {
        let p = RetryPolicy {
            max_retries: 50,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        };
        let mut r = rng();
        for attempt in 0..40u32 {
            let ceiling = Duration::from_millis(200)
                .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .min(Duration::from_secs(30));
            let mut max_seen = Duration::ZERO;
            for _ in 0..200 {
                let d = p.backoff(attempt, &mut r);
                assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
                max_seen = max_seen.max(d);
            }
            // Full jitter actually spreads over the range (not stuck at 0 or the base).
            assert!(max_seen > ceiling / 2, "attempt {attempt}: {max_seen:?}");
        }
        // Decide caps the backoff too.
        for _ in 0..100 {
            let Decision::Retry { delay, .. } =
                p.decide(Idempotency::Idempotent, 30, &Outcome::Transport, &mut r)
            else {
                panic!("should retry")
            };
            assert!(delay <= Duration::from_secs(30));
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(42))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
    }

    #[test]
    fn rate_limit_reset_unix_or_delta() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_rate_limit_reset("1700000005", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_rate_limit_reset("12", now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_rate_limit_reset("1699999990", now),
            None,
            "past reset is no hint"
        );
        assert_eq!(parse_rate_limit_reset("0", now), None);
        assert_eq!(parse_rate_limit_reset("x", now), None);
    }

    #[test]
    fn server_delay_precedence() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            server_delay(429, Some("2"), Some("1700000009"), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            server_delay(429, None, Some("1700000009"), now),
            Some(Duration::from_secs(9))
        );
        assert_eq!(
            server_delay(429, Some("bogus"), Some("4"), now),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            server_delay(503, Some("1"), None, now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(server_delay(503, None, Some("1700000009"), now), None);
        assert_eq!(server_delay(429, None, None, now), None);
    }

    #[test]
    fn reason_labels() {
        assert_eq!(reason_label(&status(429)), "429");
        assert_eq!(reason_label(&status(502)), "5xx");
        assert_eq!(reason_label(&Outcome::Transport), "transport");
        assert_eq!(reason_label(&Outcome::Timeout), "transport");
    }
}
