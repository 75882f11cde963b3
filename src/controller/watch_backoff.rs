//! How soon a broken watch is tried again.
//!
//! kube-runtime's default (client-go's reflector backoff) doubles from 0.8 s up to 30 s. After
//! an API server outage of half a minute a watch may then wait another ~25 s after the server
//! is back, and the freeze ([`super::freeze`]) may have thawed meanwhile: its status checks are
//! plain GETs that succeed at once. Health would then be judged from a Node cache that still
//! shows the outage (Machines reset to Running turn Unknown again at once), for as long as
//! the watch sleeps. A 4 s ceiling keeps that window short against any health timeout; a
//! stopped API server costs one failed connect per watch every 4 s, as cheap as the status
//! checks themselves.

use std::time::Duration;

use kube::runtime::utils::Backoff;
use rand::RngExt;

/// The first delay after a watch error.
const FIRST: Duration = Duration::from_millis(250);
/// The longest delay between two attempts.
pub const CEILING: Duration = Duration::from_secs(4);

/// Exponential from [`FIRST`] to [`CEILING`] with ±20% jitter (so the watches of one process
/// do not retry in lockstep); back to [`FIRST`] after any successful event.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(CEILING);
        let jitter = rand::rng().random_range(0.8..1.2);
        Some(base.mul_f64(jitter).min(CEILING))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_resets() {
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = b.by_ref().take(8).collect();
        assert!(
            delays[0] <= FIRST.mul_f64(1.2) && delays[0] >= FIRST.mul_f64(0.8),
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= CEILING), "{delays:?}");
        assert!(delays[7] >= CEILING.mul_f64(0.8), "{delays:?}");
        b.reset();
        assert!(b.next().unwrap() <= FIRST.mul_f64(1.2));
    }
}
