//! The controller's own Machine writes that the Machine cache has not shown yet.
//!
//! kube-runtime hands a reconcile the Machine as its cache holds it when the reconcile starts.
//! A Machine queued again while its previous reconcile was writing (a class reconcile
//! re-enqueues every Machine of the class whenever a Machine is added, as MCM's does, so during
//! a scale-up that is most of them) runs again at once, usually before the watch has brought
//! the writes back: from that copy the create flow would run a second time (another
//! bootstrap-token read, another CreateMachine lookup and identity patch, a status written
//! again) and a failed create would be retried without its retry period. So each Machine
//! write records the resourceVersion it produced, the watch clears the record when it
//! delivers that version, and a reconcile that starts from an older copy waits for the cache
//! instead of acting on it.
//!
//! A record is only a hint: one older than [`SETTLE`] is ignored (a watch that re-listed
//! may never show the intermediate version), so a lost record can delay a Machine by at most
//! that long and never stops it.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::api::ObjectMeta;

/// How long a write may take to come back through the watch before its record is ignored.
pub const SETTLE: Duration = Duration::from_secs(10);

/// How soon a reconcile that found the cache behind looks again (the watch event of the
/// write usually triggers it sooner).
pub const RECHECK: Duration = Duration::from_millis(500);

/// Per Machine UID, the resourceVersion of our last write not yet seen in the cache.
#[derive(Default)]
pub struct OwnWrites {
    pending: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    resource_version: String,
    at: Instant,
}

impl OwnWrites {
    /// Records a write whose answer was the Machine `written`.
    pub fn wrote(&self, written: &ObjectMeta) {
        let (Some(uid), Some(rv)) = (written.uid.as_deref(), written.resource_version.as_deref())
        else {
            return;
        };
        let now = Instant::now();
        let mut pending = self.lock();
        // Records outlive their use only when a watch re-list skipped their version.
        pending.retain(|_, p| now.duration_since(p.at) < SETTLE);
        pending.insert(
            uid.to_owned(),
            Pending {
                resource_version: rv.to_owned(),
                at: now,
            },
        );
    }

    /// The watch delivered this version of a Machine.
    pub fn observed(&self, delivered: &ObjectMeta) {
        let Some(uid) = delivered.uid.as_deref() else {
            return;
        };
        let resource_version = delivered.resource_version.as_deref();
        let mut pending = self.lock();
        if pending
            .get(uid)
            .is_some_and(|p| resource_version == Some(p.resource_version.as_str()))
        {
            pending.remove(uid);
        }
    }

    /// The Machine is gone: nothing of it is awaited any more.
    pub fn forget(&self, gone: &ObjectMeta) {
        if let Some(uid) = gone.uid.as_deref() {
            self.lock().remove(uid);
        }
    }

    /// Whether this copy of a Machine predates one of our writes that the watch has not
    /// delivered yet (within [`SETTLE`] of the write).
    pub fn is_behind(&self, copy: &ObjectMeta) -> bool {
        let Some(uid) = copy.uid.as_deref() else {
            return false;
        };
        let resource_version = copy.resource_version.as_deref();
        let mut pending = self.lock();
        let Some(p) = pending.get(uid) else {
            return false;
        };
        if resource_version == Some(p.resource_version.as_str()) {
            pending.remove(uid);
            return false;
        }
        if p.at.elapsed() >= SETTLE {
            pending.remove(uid);
            return false;
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(uid: Option<&str>, rv: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            uid: uid.map(str::to_owned),
            resource_version: rv.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn a_copy_older_than_our_write_is_behind_until_the_watch_brings_it() {
        let w = OwnWrites::default();
        w.wrote(&at(Some("u1"), Some("11")));
        assert!(w.is_behind(&at(Some("u1"), Some("10"))));
        // Another object's copy is unaffected.
        assert!(!w.is_behind(&at(Some("u2"), Some("10"))));
        // A version the watch delivers on the way is not ours: still behind.
        w.observed(&at(Some("u1"), Some("10")));
        assert!(w.is_behind(&at(Some("u1"), Some("10"))));
        w.observed(&at(Some("u1"), Some("11")));
        assert!(!w.is_behind(&at(Some("u1"), Some("10"))), "record cleared");
    }

    #[test]
    fn the_copy_at_our_version_is_current_and_clears_the_record() {
        let w = OwnWrites::default();
        w.wrote(&at(Some("u1"), Some("11")));
        assert!(!w.is_behind(&at(Some("u1"), Some("11"))));
        // A later copy written by someone else is not held back by the cleared record.
        assert!(!w.is_behind(&at(Some("u1"), Some("12"))));
    }

    #[test]
    fn a_forgotten_or_unnamed_machine_is_never_behind() {
        let w = OwnWrites::default();
        w.wrote(&at(Some("u1"), Some("11")));
        w.forget(&at(Some("u1"), None));
        assert!(!w.is_behind(&at(Some("u1"), Some("10"))));
        w.wrote(&at(None, Some("11")));
        w.wrote(&at(Some("u3"), None));
        assert!(!w.is_behind(&at(None, Some("10"))));
        assert!(!w.is_behind(&at(Some("u3"), Some("10"))));
    }

    #[test]
    fn a_record_older_than_the_settle_time_is_ignored() {
        let w = OwnWrites::default();
        w.wrote(&at(Some("u1"), Some("11")));
        let Some(long_ago) = Instant::now().checked_sub(SETTLE) else {
            return; // a clock younger than SETTLE cannot express the case
        };
        w.lock().get_mut("u1").expect("record").at = long_ago;
        assert!(!w.is_behind(&at(Some("u1"), Some("10"))));
        assert!(w.lock().is_empty(), "expired record dropped");
    }
}
