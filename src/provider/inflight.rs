//! A per-machine in-flight guard: at most one mutating call (create, delete, shutdown) per
//! machine at a time in this process.
//!
//! CMI says the client ensures one call per machine but may lose track (restarts, retries
//! after a timeout); two overlapping creates would each find nothing and create two devices.
//! A second call gets [`Error::MachineBusy`] (gRPC `Aborted`, which the client retries).
//!
//! The lock is a `std::sync::Mutex` held only to insert/remove a key, never across an
//! `.await`; the guard releases on drop, also when the RPC future is cancelled.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use uuid::Uuid;

use super::Error;

/// The set of machines with a call in progress, keyed by (project, machine name): the same
/// machine name in two projects is two different machines.
#[derive(Debug, Default)]
pub struct InFlight {
    busy: Mutex<HashSet<(Uuid, String)>>,
}

/// Holds a machine's slot; dropping it frees the slot.
#[derive(Debug)]
#[must_use = "the machine is released as soon as the guard is dropped"]
pub struct InFlightGuard<'a> {
    owner: &'a InFlight,
    key: (Uuid, String),
}

impl InFlight {
    /// Claims `machine` in `project`, or fails with [`Error::MachineBusy`] if another call
    /// holds it.
    pub fn try_acquire(&self, project: Uuid, machine: &str) -> Result<InFlightGuard<'_>, Error> {
        let key = (project, machine.to_string());
        if self.lock().insert(key.clone()) {
            Ok(InFlightGuard { owner: self, key })
        } else {
            Err(Error::MachineBusy {
                machine: machine.to_string(),
            })
        }
    }

    /// How many machines are busy (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A poisoned lock only means a panic happened while the set was consistent (insert and
    /// remove cannot panic halfway), so keep using it.
    fn lock(&self) -> MutexGuard<'_, HashSet<(Uuid, String)>> {
        self.busy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_fails_until_release() {
        let f = InFlight::default();
        let p = Uuid::from_u128(1);
        let g = f.try_acquire(p, "m1").unwrap();
        assert!(
            matches!(f.try_acquire(p, "m1"), Err(Error::MachineBusy { machine }) if machine == "m1")
        );
        // Other machines and other projects are independent.
        let _g2 = f.try_acquire(p, "m2").unwrap();
        let _g3 = f.try_acquire(Uuid::from_u128(2), "m1").unwrap();
        assert_eq!(f.len(), 3);
        drop(g);
        let _g4 = f.try_acquire(p, "m1").unwrap();
    }

    #[test]
    fn released_when_future_is_cancelled() {
        use futures::FutureExt;
        let f = InFlight::default();
        let p = Uuid::from_u128(1);
        let fut = async {
            let _g = f.try_acquire(p, "m").unwrap();
            std::future::pending::<()>().await;
        };
        // Polled once (claims the slot), then dropped mid-await.
        assert!(fut.now_or_never().is_none());
        assert!(f.is_empty());
    }
}
