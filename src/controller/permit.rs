//! Meltdown protection: a Machine `Unknown` past its health timeout becomes `Failed` (and so is
//! replaced by MCM's MachineSet controller) only while fewer than [`MAX_REPLACEMENTS`] Machines
//! of the same MachineDeployment are already being replaced. When a network incident turns
//! every Node of a pool NotReady at once, the pool is replaced one Machine at a time instead
//! of all at once, and the Machines that were only cut off get the chance to come back.
//!
//! The rule is MCM's `canMarkMachineFailed`: Machines are grouped by their `name` label (the
//! MachineDeployment's name; a Machine without it is grouped with those whose label is empty,
//! so it is never held back by others). Every Machine of the group that is neither `Running`
//! nor `Unknown` counts as one replacement in progress — unless it is a preserved one (it is
//! not being replaced) — and a `Terminating` one counts twice, so the gap between the old
//! Machine going away and the MachineSet's new one appearing is covered.
//!
//! Decisions for one group are serialized by an in-process lock (MCM's permit). The group is
//! read from the Machine cache inside it, as MCM reads its lister; so that the next decision
//! sees this one's Failed write, the permit is held until the cache shows it (polled every
//! 100 ms for up to 1 s; after that MCM waits 10 s more before it lets go, and so do we).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{ResourceExt, core::DeserializeGuard, runtime::reflector::ObjectRef};

use super::{context::Context, crd::Machine, error::Result, status::phase};

/// How often the cache is looked at for the Failed write (MCM's `pollInterval`).
const CACHE_POLL: Duration = Duration::from_millis(100);
/// How long the cache is polled (MCM's `cacheUpdateTimeout`).
const CACHE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the permit is held after the cache did not show the write (MCM's fixed wait).
const CACHE_GRACE: Duration = Duration::from_secs(10);

/// MCM's `maxReplacements`: at most this many Machines of one MachineDeployment in
/// replacement before another Unknown one may be marked Failed.
pub const MAX_REPLACEMENTS: usize = 1;

/// The label naming a Machine's MachineDeployment.
pub const DEPLOYMENT_LABEL: &str = "name";

/// The MachineDeployment group of `m` (empty when it has no `name` label).
pub fn deployment_of(m: &Machine) -> &str {
    m.labels().get(DEPLOYMENT_LABEL).map_or("", String::as_str)
}

/// How many replacements the group's Machines stand for (MCM's `inProgress`).
pub fn replacements_in_progress<'a>(group: impl IntoIterator<Item = &'a Machine>) -> usize {
    group
        .into_iter()
        .map(|m| {
            let ph = m.phase();
            if ph == phase::RUNNING || ph == phase::UNKNOWN {
                return 0;
            }
            let preserved = m
                .status
                .as_ref()
                .and_then(|s| s.current_status.as_ref())
                .is_some_and(|c| c.preserve_expiry_time.is_some());
            usize::from(!preserved) + usize::from(ph == phase::TERMINATING)
        })
        .sum()
}

/// Whether one more Machine of the group may be marked Failed.
pub fn may_mark_failed<'a>(group: impl IntoIterator<Item = &'a Machine>) -> bool {
    replacements_in_progress(group) < MAX_REPLACEMENTS
}

/// One lock per MachineDeployment group.
#[derive(Default)]
pub struct Permits(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Permits {
    /// Waits for the group's permit; held until the guard drops.
    pub async fn acquire(&self, group: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(group.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Holds the group's permit, reads the group from the Machine cache and, when the rule
/// allows, runs `mark` (the Failed write), then holds the permit until the cache shows the
/// write (see the module docs). Returns whether `mark` ran.
pub async fn with_permit<F, Fut>(ctx: &Context, m: &Machine, mark: F) -> Result<bool>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let group = deployment_of(m).to_owned();
    let _permit = ctx.safety.permits.acquire(&group).await;
    let cached = ctx.caches.machines();
    let machines = cached
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|x| deployment_of(x) == group);
    let in_progress = replacements_in_progress(machines);
    if in_progress >= MAX_REPLACEMENTS {
        tracing::info!(
            machine = m.metadata.name.as_deref().unwrap_or_default(),
            machine_deployment = %group,
            in_progress,
            max = MAX_REPLACEMENTS,
            "health timeout reached but not marked Failed: other machines of the deployment are being replaced"
        );
        return Ok(false);
    }
    mark().await?;
    if !cache_shows_replacement(ctx, m).await {
        tracing::info!(
            machine = %m.name_any(),
            "the Machine cache does not show the Failed phase yet; holding the permit {CACHE_GRACE:?}"
        );
        tokio::select! {
            () = tokio::time::sleep(CACHE_GRACE) => {}
            () = ctx.stop.cancelled() => {}
        }
    }
    Ok(true)
}

/// Whether the cache shows `m` Failed or Terminating (or gone) within [`CACHE_TIMEOUT`].
async fn cache_shows_replacement(ctx: &Context, m: &Machine) -> bool {
    let key =
        ObjectRef::<DeserializeGuard<Machine>>::new(&m.name_any()).within(&ctx.config.namespace);
    let deadline = tokio::time::Instant::now() + CACHE_TIMEOUT;
    loop {
        let shown = match ctx.caches.machines.get(&key) {
            None => true,
            Some(g) => {
                g.0.as_ref()
                    .is_ok_and(|c| c.phase() == phase::FAILED || c.phase() == phase::TERMINATING)
            }
        };
        if shown {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(CACHE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::crd::{CurrentStatus, MachineSpec, MachineStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn m(ph: &str) -> Machine {
        let mut m = Machine::new("m", MachineSpec::default());
        m.status = Some(MachineStatus {
            current_status: Some(CurrentStatus {
                phase: ph.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        m
    }

    fn preserved(ph: &str) -> Machine {
        let mut x = m(ph);
        x.status
            .as_mut()
            .unwrap()
            .current_status
            .as_mut()
            .unwrap()
            .preserve_expiry_time = Some(Time("2030-01-01T00:00:00Z".parse().unwrap()));
        x
    }

    #[test]
    fn running_and_unknown_are_not_replacements() {
        let group = [m("Running"), m("Unknown"), m("Unknown")];
        assert_eq!(replacements_in_progress(&group), 0);
        assert!(may_mark_failed(&group));
    }

    #[test]
    fn every_other_phase_counts_and_terminating_twice() {
        for ph in ["Failed", "Pending", "CrashLoopBackOff", "", "Available"] {
            assert_eq!(replacements_in_progress(&[m(ph)]), 1, "{ph:?}");
            assert!(!may_mark_failed(&[m("Unknown"), m(ph)]), "{ph:?}");
        }
        assert_eq!(replacements_in_progress(&[m("Terminating")]), 2);
        assert_eq!(
            replacements_in_progress(&[m("Terminating"), m("Failed"), m("Running")]),
            3
        );
    }

    #[test]
    fn preserved_machines_do_not_count_except_the_terminating_extra() {
        assert_eq!(replacements_in_progress(&[preserved("Failed")]), 0);
        assert!(may_mark_failed(&[preserved("Failed"), m("Unknown")]));
        // MCM adds the Terminating extra whether or not the machine is preserved.
        assert_eq!(replacements_in_progress(&[preserved("Terminating")]), 1);
    }

    #[test]
    fn group_is_the_name_label() {
        let mut x = m("Unknown");
        assert_eq!(deployment_of(&x), "");
        x.metadata.labels = Some([("name".to_owned(), "md1".to_owned())].into());
        assert_eq!(deployment_of(&x), "md1");
    }

    #[tokio::test]
    async fn permits_serialize_one_group_only() {
        let p = Permits::default();
        let a = p.acquire("md1").await;
        // Another group is not blocked.
        let _b = tokio::time::timeout(std::time::Duration::from_secs(1), p.acquire("md2"))
            .await
            .expect("md2 free");
        // The same group is, until the first guard drops.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), p.acquire("md1"))
                .await
                .is_err()
        );
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(1), p.acquire("md1"))
            .await
            .expect("md1 free again");
    }

    fn cached(name: &str, ph: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": name, "namespace": "ns", "labels": {"name": "md1"}},
            "spec": {"class": {"kind": "MachineClass", "name": "c"}},
            "status": {"currentStatus": {"phase": ph}}})
    }

    fn unknown_in_md1(name: &str) -> Machine {
        serde_json::from_value(cached(name, "Unknown")).unwrap()
    }

    /// The group comes from the cache (no API call); a permitted mark holds the permit until
    /// the cache shows it, and the next decision then sees it.
    #[tokio::test]
    async fn the_group_is_read_from_the_cache_and_decides() {
        use crate::controller::fixtures::{caches, context_with, mock_client};
        use kube::runtime::{reflector, watcher};
        let (client, mock) = mock_client(vec![]);
        let (store, mut writer) = reflector::store::<DeserializeGuard<Machine>>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for (n, ph) in [("m0", "Unknown"), ("m1", "Unknown"), ("m2", "Running")] {
            let g = serde_json::from_value(cached(n, ph)).unwrap();
            writer.apply_watcher_event(&watcher::Event::InitApply(g));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let empty = caches(vec![], vec![], vec![], vec![]);
        let ctx = context_with(
            client,
            crate::controller::caches::Caches::new(
                "ns",
                store,
                empty.classes.clone(),
                empty.secrets.clone(),
                empty.nodes.clone(),
            ),
        );
        let marked = std::sync::atomic::AtomicUsize::new(0);
        let writer = std::sync::Mutex::new(writer);
        // The mark "writes" Failed; the watch brings it to the cache a moment later.
        let mark = || async {
            marked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            let g = serde_json::from_value(cached("m0", "Failed")).unwrap();
            writer
                .lock()
                .unwrap()
                .apply_watcher_event(&watcher::Event::Apply(g));
            Ok(())
        };
        assert!(
            with_permit(&ctx, &unknown_in_md1("m0"), mark)
                .await
                .unwrap()
        );
        let never = || async { panic!("a second Machine of md1 marked Failed") };
        assert!(
            !with_permit(&ctx, &unknown_in_md1("m1"), never)
                .await
                .unwrap()
        );
        assert_eq!(marked.load(std::sync::atomic::Ordering::SeqCst), 1);
        mock.await.unwrap();
    }

    /// A write the cache never shows holds the permit for MCM's extra 10 s.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_cache_does_not_show_holds_the_permit_longer() {
        use crate::controller::fixtures::{caches, context_with, mock_client};
        let (client, mock) = mock_client(vec![]);
        let ctx = context_with(
            client,
            caches(vec![cached("m0", "Unknown")], vec![], vec![], vec![]),
        );
        let started = tokio::time::Instant::now();
        let mark = || async { Ok(()) };
        assert!(
            with_permit(&ctx, &unknown_in_md1("m0"), mark)
                .await
                .unwrap()
        );
        assert!(started.elapsed() >= CACHE_TIMEOUT + CACHE_GRACE);
        mock.await.unwrap();
    }
}
