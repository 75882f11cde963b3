//! API-server freeze (MCM's `reconcileClusterMachineSafetyAPIServer`): when the control or the
//! target cluster's API server cannot be reached, the controller only sees stale Nodes and
//! cannot tell a dead machine from a cut-off one. So every
//! `--machine-safety-apiserver-statuscheck-period` both are asked (a GET of a Machine on the
//! control cluster and a Node on the target; "not found" counts as reachable), and after
//! `--machine-safety-apiserver-statuscheck-timeout` of failures the controller freezes:
//! Machines that are not being deleted get no create and no health decision (their
//! reconciles return at once), while deletions go on. Metric `mcm_machine_controller_frozen`
//! is 1 meanwhile.
//!
//! On recovery every `Unknown` Machine is reset to `Running` with MCM's description
//! ("Machine Health Timeout was reset due to APIServer being unreachable"): its health
//! timeout was counting while nobody could see its Node, and without the reset a pool cut off
//! for longer than the timeout would be replaced the moment the API server returns. Every
//! Machine is then reconciled again.
//!
//! While unfrozen and failing, the check repeats every fifth of the timeout, so the freeze
//! comes within a fifth of the timeout after it is due. Unlike MCM, a success before the
//! freeze forgets the failures: MCM keeps the start of the first failure until it freezes,
//! so two short blips hours apart would freeze it at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{Api, Client, ResourceExt, api::Patch};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::{
    context::Context,
    crd::Machine,
    error::{Error, Result, is_not_found},
    field_manager,
    status::{self, StatusUpdate, last_op, op, phase, state},
};

/// The description MCM writes on the Machines it resets after a freeze.
pub const RESET_DESCRIPTION: &str =
    "Machine Health Timeout was reset due to APIServer being unreachable";

/// The name looked up on both API servers (MCM's; it never exists, so the answer is 404).
const PROBE_NAME: &str = "dummy_name";

/// Whether the controller is frozen; shared by the checker and the reconcilers.
#[derive(Debug, Default)]
pub struct Freeze(AtomicBool);

impl Freeze {
    /// True while the controller must not create machines or judge their health.
    pub fn is_frozen(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, frozen: bool) {
        self.0.store(frozen, Ordering::Release);
    }

    /// Sets the state directly (unit tests of the reconcilers).
    #[cfg(test)]
    pub fn set_for_test(&self, frozen: bool) {
        self.set(frozen);
    }
}

/// What one check changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing.
    None,
    /// Unreachable for longer than the timeout: freeze now.
    Freeze,
    /// Reachable again after a freeze: reset Unknown Machines and unfreeze.
    Thaw,
}

/// The checker's memory: the pure part of the rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Frozen now.
    pub frozen: bool,
    /// When the current run of failed checks began (unfrozen only).
    pub down_since: Option<Instant>,
}

impl Tracker {
    /// Takes one check's result; returns what changed and when to check next.
    pub fn observe(
        &mut self,
        up: bool,
        now: Instant,
        period: Duration,
        timeout: Duration,
    ) -> (Transition, Duration) {
        if self.frozen {
            if up {
                self.frozen = false;
                self.down_since = None;
                return (Transition::Thaw, period);
            }
            return (Transition::None, period);
        }
        if up {
            self.down_since = None;
            return (Transition::None, period);
        }
        let since = *self.down_since.get_or_insert(now);
        let retry = (timeout / 5).max(Duration::from_millis(100));
        if now.duration_since(since) > timeout {
            self.frozen = true;
            self.down_since = None;
            return (Transition::Freeze, retry);
        }
        (Transition::None, retry)
    }
}

/// Whether both API servers answer (404 counts as an answer) within `deadline`.
async fn api_servers_up(ctx: &Context, deadline: Duration) -> bool {
    let control: Api<Machine> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let control_ok = answered("control", deadline, control.get_metadata_opt(PROBE_NAME)).await;
    if !control_ok {
        return false;
    }
    match &ctx.target {
        Some(target) => {
            let nodes: Api<Node> = Api::all(Client::clone(target));
            answered("target", deadline, nodes.get_metadata_opt(PROBE_NAME)).await
        }
        None => true,
    }
}

async fn answered<T>(
    cluster: &'static str,
    deadline: Duration,
    call: impl Future<Output = kube::Result<T>>,
) -> bool {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) if is_not_found(&e) => true,
        Ok(Err(error)) => {
            tracing::warn!(cluster, %error, "API server status check failed");
            false
        }
        Err(_) => {
            tracing::warn!(cluster, ?deadline, "API server status check timed out");
            false
        }
    }
}

/// The status a reset Machine gets (MCM: Running, timeout off, HealthCheck Successful).
pub fn reset_update(now: Timestamp) -> StatusUpdate {
    StatusUpdate {
        current: Some(status::current(phase::RUNNING, false, now)),
        last_operation: Some(last_op(
            op::HEALTH_CHECK,
            state::SUCCESSFUL,
            RESET_DESCRIPTION,
            None,
            now,
        )),
        ..Default::default()
    }
}

/// Resets every Unknown Machine of the Machine cache (MCM reads its lister here too) to
/// Running; returns how many.
async fn reset_unknown_machines(ctx: &Context) -> Result<usize> {
    let typed: Api<Machine> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let mut reset = 0;
    for m in ctx.caches.machines_where(|m| m.phase() == phase::UNKNOWN) {
        let update = reset_update(Timestamp::now());
        match typed
            .patch_status(
                &m.name_any(),
                &field_manager::patch(),
                &Patch::Merge(update.to_patch()),
            )
            .await
        {
            Ok(written) => {
                ctx.own_writes.wrote(&written.metadata);
                reset += 1;
                tracing::info!(machine = %m.name_any(), node = m.node_name(), provider_id = m.provider_id(), "health timeout reset after the API servers came back");
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::kube("reset Machine status")(e)),
        }
    }
    Ok(reset)
}

/// Runs the check until `stop`. `reconcile_all` asks the Machine controller to look at every
/// Machine again (sent after a thaw).
pub async fn run(
    ctx: Arc<Context>,
    period: Duration,
    timeout: Duration,
    reconcile_all: UnboundedSender<()>,
    stop: CancellationToken,
) {
    let mut tracker = Tracker::default();
    let deadline = (timeout / 5).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut wait = period;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let up = tokio::select! {
            () = stop.cancelled() => return,
            up = api_servers_up(&ctx, deadline) => up,
        };
        let (transition, next) = tracker.observe(up, Instant::now(), period, timeout);
        wait = next;
        match transition {
            Transition::None => {}
            Transition::Freeze => {
                ctx.safety.freeze.set(true);
                ctx.metrics.mcm.set_controller_frozen(true);
                tracing::warn!(
                    ?timeout,
                    "API server unreachable past the status-check timeout: machine controller frozen (deletions continue)"
                );
            }
            Transition::Thaw => match tokio::select! {
                () = stop.cancelled() => return,
                reset = reset_unknown_machines(&ctx) => reset,
            } {
                Ok(reset) => {
                    ctx.safety.freeze.set(false);
                    ctx.metrics.mcm.set_controller_frozen(false);
                    tracing::info!(
                        reset,
                        "API servers reachable again: machine controller unfrozen"
                    );
                    let _ = reconcile_all.send(());
                }
                Err(error) => {
                    // Stay frozen; the next check tries the thaw again.
                    tracker.frozen = true;
                    tracing::warn!(%error, "thaw failed; staying frozen");
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(60);
    const T: Duration = Duration::from_secs(30);

    #[test]
    fn freezes_only_after_the_timeout_and_checks_faster_meanwhile() {
        let t0 = Instant::now();
        let mut tr = Tracker::default();
        assert_eq!(tr.observe(true, t0, P, T), (Transition::None, P));
        assert_eq!(
            tr.observe(false, t0, P, T),
            (Transition::None, Duration::from_secs(6))
        );
        assert_eq!(
            tr.observe(false, t0 + Duration::from_secs(30), P, T),
            (Transition::None, Duration::from_secs(6)),
            "exactly the timeout is not past it"
        );
        assert_eq!(
            tr.observe(false, t0 + Duration::from_secs(31), P, T).0,
            Transition::Freeze
        );
        assert!(tr.frozen);
        // Still down: stays frozen, checked every period.
        assert_eq!(
            tr.observe(false, t0 + Duration::from_secs(200), P, T),
            (Transition::None, P)
        );
        assert_eq!(
            tr.observe(true, t0 + Duration::from_secs(260), P, T),
            (Transition::Thaw, P)
        );
        assert_eq!(tr, Tracker::default());
    }

    #[test]
    fn a_success_forgets_earlier_failures() {
        let t0 = Instant::now();
        let mut tr = Tracker::default();
        tr.observe(false, t0, P, T);
        tr.observe(true, t0 + Duration::from_secs(10), P, T);
        // A new failure much later starts its own count.
        assert_eq!(
            tr.observe(false, t0 + Duration::from_secs(3600), P, T).0,
            Transition::None
        );
        assert!(!tr.frozen);
    }

    #[test]
    fn reset_is_mcms_running_record() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let u = reset_update(now);
        let c = u.current.unwrap();
        assert_eq!((c.phase.as_str(), c.timeout_active), ("Running", false));
        let lo = u.last_operation.unwrap();
        assert_eq!(
            (
                lo.type_.as_str(),
                lo.state.as_str(),
                lo.description.as_str()
            ),
            ("HealthCheck", "Successful", RESET_DESCRIPTION)
        );
        assert!(u.conditions.is_none(), "conditions are left as they are");
    }

    const MACHINES: &str = "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machines";

    #[tokio::test]
    async fn not_found_means_reachable_and_errors_do_not() {
        use crate::controller::fixtures::{Call, context, mock_client, not_found};
        let unavailable = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "ServiceUnavailable", "code": 503, "message": "etcd down"});
        let (client, mock) = mock_client(vec![
            Call::new("GET", format!("{MACHINES}/{PROBE_NAME}"), 404, not_found()),
            Call::new(
                "GET",
                format!("/api/v1/nodes/{PROBE_NAME}"),
                404,
                not_found(),
            ),
            Call::new("GET", format!("{MACHINES}/{PROBE_NAME}"), 404, not_found()),
            Call::new(
                "GET",
                format!("/api/v1/nodes/{PROBE_NAME}"),
                503,
                unavailable,
            ),
        ]);
        let ctx = context(client);
        assert!(api_servers_up(&ctx, Duration::from_secs(2)).await);
        assert!(!api_servers_up(&ctx, Duration::from_secs(2)).await);
        mock.await.unwrap();
    }
}
