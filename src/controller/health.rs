//! Machine health from Node conditions (MCM's `reconcileMachineHealth`), as a pure function
//! of the Machine, its Node and the clock so every transition is unit-tested:
//!
//! | phase   | Node                         | → phase / lastOperation                         |
//! |---------|------------------------------|-------------------------------------------------|
//! | Pending | healthy                      | Running; Create Successful ("joined")           |
//! | Pending | not (yet) healthy, past the creation timeout | Failed; Create Failed          |
//! | Running | unhealthy or missing         | Unknown; HealthCheck Processing                 |
//! | Unknown | healthy                      | Running; HealthCheck Successful                 |
//! | Unknown | unhealthy past the health timeout | Failed; HealthCheck Failed                 |
//!
//! Healthy is MCM's `isHealthy`: the Node reports at least one condition, `Ready` (when
//! reported) is `True`, and every condition type listed in `--node-conditions` (or the
//! Machine's `spec.nodeConditions`; comma-separated, case-sensitive) is `False` — `Unknown`
//! counts as unhealthy. A Pending machine also waits for Gardener's
//! `node.gardener.cloud/critical-components-not-ready` NoSchedule taint to go: until then the
//! Node is not ready for workloads, and a rolling update must not move on. Node conditions
//! are copied into `status.conditions` when their type/status/reason/message change
//! (heartbeat times are ignored so a kubelet heartbeat does not cost a status write). The
//! creation timeout counts from `metadata.creationTimestamp`, the health timeout from
//! `currentStatus.lastUpdateTime`. Not done here (MCM does): the per-MachineDeployment permit
//! that limits health-timeout replacements to one at a time.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::{Node, NodeCondition},
    jiff::Timestamp,
};

use super::{
    context::Config,
    crd::Machine,
    duration,
    status::{self, StatusUpdate, elapsed, last_op, op, phase, state},
};

/// What the health check decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Status to write (may be empty).
    pub update: StatusUpdate,
    /// When to look again without a Node event; `None` when no timeout is counting.
    pub recheck: Option<Duration>,
    /// The machine just joined after its create (MCM: Running reached while the last
    /// operation is an unfinished Create): its bootstrap token has served and is deleted.
    pub joined_after_create: bool,
}

/// Gardener's taint on a Node whose critical DaemonSets (CNI, kube-proxy, …) are not ready
/// yet; MCM keeps a Pending machine Pending while it is there.
pub const CRITICAL_COMPONENTS_NOT_READY_TAINT: &str =
    "node.gardener.cloud/critical-components-not-ready";

/// The machine's creation and health timeouts: `spec` overrides, else the flags. `None`
/// health timeout when `spec.disableHealthTimeout` is set. An unparsable override falls back
/// to the flag (logged), so a typo cannot make a machine time out at once.
pub fn timeouts(m: &Machine, cfg: &Config) -> (Duration, Option<Duration>) {
    let pick = |field: &str, value: &Option<String>, default: Duration| {
        match value.as_deref() {
        None | Some("") => default,
        Some(v) => duration::parse(v).unwrap_or_else(|e| {
            tracing::warn!(machine = m.metadata.name.as_deref(), field, error = %e, "ignoring spec override");
            default
        }),
    }
    };
    let creation = pick(
        "creationTimeout",
        &m.spec.creation_timeout,
        cfg.creation_timeout,
    );
    let health = pick("healthTimeout", &m.spec.health_timeout, cfg.health_timeout);
    let health = (m.spec.disable_health_timeout != Some(true)).then_some(health);
    (creation, health)
}

/// The condition types that make a Node unhealthy unless `False`: `spec.nodeConditions` when
/// set (even empty, as in MCM), else `--node-conditions`. Split on commas exactly as MCM does
/// (no trimming, case-sensitive), so a list behaves the same under both controllers.
pub fn bad_conditions(m: &Machine, cfg: &Config) -> Vec<String> {
    m.spec
        .node_conditions
        .as_deref()
        .unwrap_or(&cfg.node_conditions)
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// MCM's `isHealthy`: at least one condition, no `Ready` other than `True`, and every bad
/// condition type that is reported is `False`.
pub fn is_healthy(node: &Node, bad: &[String]) -> bool {
    let conditions = node_conditions(node);
    !conditions.is_empty()
        && conditions.iter().all(|c| {
            let ready_ok = c.type_ != "Ready" || c.status == "True";
            let bad_ok = c.status == "False" || !bad.contains(&c.type_);
            ready_ok && bad_ok
        })
}

/// Whether Gardener's critical-components taint (NoSchedule) is on the Node.
pub fn critical_components_not_ready(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
        .iter()
        .any(|t| t.key == CRITICAL_COMPONENTS_NOT_READY_TAINT && t.effect == "NoSchedule")
}

fn node_conditions(node: &Node) -> &[NodeCondition] {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[])
}

fn conditions_changed(old: Option<&[NodeCondition]>, new: &[NodeCondition]) -> bool {
    let key = |c: &NodeCondition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        )
    };
    let mut a: Vec<_> = old.unwrap_or(&[]).iter().map(key).collect();
    let mut b: Vec<_> = new.iter().map(key).collect();
    a.sort();
    b.sort();
    a != b
}

fn summary(node: Option<&Node>) -> String {
    match node {
        None => "Node not found".into(),
        Some(n) => node_conditions(n)
            .iter()
            .map(|c| format!("{}={}", c.type_, c.status))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The type of the Machine's current lastOperation, or `fallback` without one: MCM keeps the
/// type when a timeout fails the Machine (a create that never joined stays a `Create`).
fn last_op_type<'a>(m: &'a Machine, fallback: &'a str) -> &'a str {
    m.status
        .as_ref()
        .and_then(|s| s.last_operation.as_ref())
        .map(|lo| lo.type_.as_str())
        .filter(|t| !t.is_empty())
        .unwrap_or(fallback)
}

/// Whether the Machine has recorded its Node's conditions.
fn has_conditions(m: &Machine) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| !c.is_empty())
}

/// Whether the last operation is a Create that has not succeeded (MCM's test for "this
/// Running is the first join").
fn create_unfinished(m: &Machine) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.last_operation.as_ref())
        .is_some_and(|lo| lo.type_ == op::CREATE && lo.state != state::SUCCESSFUL)
}

/// Decides the health transition of a machine whose Node is `node` (looked up by the `node`
/// label). Only Pending, Running and Unknown machines move; others get no update.
pub fn evaluate(m: &Machine, node: Option<&Node>, cfg: &Config, now: Timestamp) -> Outcome {
    let name = m.metadata.name.as_deref().unwrap_or_default();
    let (creation_timeout, health_timeout) = timeouts(m, cfg);
    let bad = bad_conditions(m, cfg);
    let healthy = node.is_some_and(|n| is_healthy(n, &bad));
    let tainted = node.is_some_and(critical_components_not_ready);
    let mut out = Outcome::default();

    if let Some(n) = node {
        let old = m.status.as_ref().and_then(|s| s.conditions.as_deref());
        if conditions_changed(old, node_conditions(n)) {
            out.update.conditions = Some(node_conditions(n).to_vec());
        }
    }

    let created = m.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let since_update = m
        .status
        .as_ref()
        .and_then(|s| s.current_status.as_ref())
        .and_then(|c| c.last_update_time.as_ref())
        .map(|t| t.0);
    let set = |out: &mut Outcome, ph: &str, active: bool, lo| {
        out.update.current = Some(status::current(ph, active, now));
        out.update.last_operation = Some(lo);
    };

    match m.phase() {
        phase::PENDING => {
            let age = created.map_or(Duration::ZERO, |c| elapsed(now, c));
            if healthy && !tainted {
                out.joined_after_create = create_unfinished(m);
                // MCM's words exactly (no duration): a Machine reads the same whichever of
                // the two controllers brought it up.
                let lo = last_op(
                    op::CREATE,
                    state::SUCCESSFUL,
                    format!("Machine {name} successfully joined the cluster"),
                    None,
                    now,
                );
                set(&mut out, phase::RUNNING, false, lo);
            } else if age >= creation_timeout {
                // MCM's words, including its "<Go duration> minutes".
                let lo = last_op(
                    last_op_type(m, op::CREATE),
                    state::FAILED,
                    format!(
                        "Machine {name} failed to join the cluster in {} minutes.",
                        duration::format(creation_timeout),
                    ),
                    None,
                    now,
                );
                set(&mut out, phase::FAILED, false, lo);
            } else {
                out.recheck = Some(creation_timeout - age);
            }
        }
        // As MCM: a Running Machine whose Node went missing turns Unknown only when it had
        // seen the Node's conditions (a Machine that never had any stays as it is).
        phase::RUNNING if node.is_none() && !has_conditions(m) => {}
        phase::RUNNING if !healthy => {
            let description = match node {
                None => format!(
                    "Node object went missing. Machine {name} is unhealthy - changing MachinePhase to Unknown"
                ),
                Some(_) => format!(
                    "Machine {name} is unhealthy - changing MachinePhase to Unknown. Node conditions: {}",
                    summary(node)
                ),
            };
            let lo = last_op(op::HEALTH_CHECK, state::PROCESSING, description, None, now);
            set(&mut out, phase::UNKNOWN, true, lo);
            out.recheck = health_timeout;
        }
        phase::UNKNOWN => {
            let unhealthy_for = since_update.map_or(Duration::ZERO, |t| elapsed(now, t));
            if healthy {
                out.joined_after_create = create_unfinished(m);
                let lo = last_op(
                    op::HEALTH_CHECK,
                    state::SUCCESSFUL,
                    format!("Machine {name} successfully re-joined the cluster"),
                    None,
                    now,
                );
                set(&mut out, phase::RUNNING, false, lo);
            } else if let Some(timeout) = health_timeout {
                if unhealthy_for >= timeout {
                    let lo = last_op(
                        last_op_type(m, op::HEALTH_CHECK),
                        state::FAILED,
                        format!(
                            "Machine {name} health checks failing since last {} minutes. Updating machine phase to Failed. Node Conditions: {}",
                            duration::format(timeout),
                            summary(node)
                        ),
                        None,
                        now,
                    );
                    set(&mut out, phase::FAILED, false, lo);
                } else {
                    out.recheck = Some(timeout - unhealthy_for);
                }
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::crd::{CurrentStatus, MachineSpec, MachineStatus};
    use k8s_openapi::{api::core::v1::NodeStatus, apimachinery::pkg::apis::meta::v1::Time};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// MCM's default tunables, as every controller test uses them.
    fn cfg() -> Config {
        crate::controller::fixtures::config()
    }

    fn machine(ph: &str, updated: &str) -> Machine {
        let mut m = Machine::new("m1", MachineSpec::default());
        m.metadata.creation_timestamp = Some(Time(ts("2026-01-01T00:00:00Z")));
        m.status = Some(MachineStatus {
            current_status: Some(CurrentStatus {
                phase: ph.into(),
                timeout_active: true,
                last_update_time: Some(Time(ts(updated))),
                ..Default::default()
            }),
            ..Default::default()
        });
        m
    }

    fn node(conds: &[(&str, &str)]) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: Some(
                    conds
                        .iter()
                        .map(|(t, s)| NodeCondition {
                            type_: (*t).into(),
                            status: (*s).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn phase_of(o: &Outcome) -> Option<&str> {
        o.update.current.as_ref().map(|c| c.phase.as_str())
    }

    #[test]
    fn pending_becomes_running_when_the_node_is_ready() {
        let m = machine("Pending", "2026-01-01T00:00:00Z");
        let o = evaluate(
            &m,
            Some(&node(&[("Ready", "True"), ("DiskPressure", "False")])),
            &cfg(),
            ts("2026-01-01T00:03:00Z"),
        );
        assert_eq!(phase_of(&o), Some("Running"));
        let lo = o.update.last_operation.unwrap();
        assert_eq!(
            (lo.type_.as_str(), lo.state.as_str()),
            ("Create", "Successful")
        );
        assert_eq!(lo.description, "Machine m1 successfully joined the cluster");
        assert!(o.update.conditions.is_some());
    }

    #[test]
    fn pending_waits_then_fails_after_the_creation_timeout() {
        let m = machine("Pending", "2026-01-01T00:00:00Z");
        let waiting = evaluate(&m, None, &cfg(), ts("2026-01-01T00:15:00Z"));
        assert_eq!(phase_of(&waiting), None);
        assert_eq!(waiting.recheck, Some(Duration::from_secs(300)));
        let not_ready = node(&[("Ready", "False")]);
        let failed = evaluate(&m, Some(&not_ready), &cfg(), ts("2026-01-01T00:20:00Z"));
        assert_eq!(phase_of(&failed), Some("Failed"));
        let lo = failed.update.last_operation.unwrap();
        assert_eq!((lo.type_.as_str(), lo.state.as_str()), ("Create", "Failed"));
        assert_eq!(
            lo.description,
            "Machine m1 failed to join the cluster in 20m0s minutes."
        );
    }

    #[test]
    fn running_becomes_unknown_on_bad_condition_or_missing_node() {
        let m = machine("Running", "2026-01-01T00:05:00Z");
        let now = ts("2026-01-01T01:00:00Z");
        assert_eq!(
            evaluate(&m, Some(&node(&[("Ready", "True")])), &cfg(), now)
                .update
                .current,
            None
        );
        let mut seen_node = m.clone();
        seen_node.status.as_mut().unwrap().conditions =
            node(&[("Ready", "True")]).status.and_then(|s| s.conditions);
        for (m, n, words) in [
            (
                &m,
                Some(node(&[("Ready", "True"), ("DiskPressure", "True")])),
                "Machine m1 is unhealthy - changing MachinePhase to Unknown. Node conditions: Ready=True, DiskPressure=True",
            ),
            (
                &m,
                Some(node(&[("Ready", "Unknown")])),
                "Machine m1 is unhealthy - changing MachinePhase to Unknown. Node conditions: Ready=Unknown",
            ),
            (
                &seen_node,
                None,
                "Node object went missing. Machine m1 is unhealthy - changing MachinePhase to Unknown",
            ),
        ] {
            let o = evaluate(m, n.as_ref(), &cfg(), now);
            assert_eq!(phase_of(&o), Some("Unknown"));
            assert!(o.update.current.as_ref().unwrap().timeout_active);
            let lo = o.update.last_operation.unwrap();
            assert_eq!(
                (lo.type_.as_str(), lo.description.as_str()),
                ("HealthCheck", words)
            );
            assert_eq!(o.recheck, Some(Duration::from_secs(600)));
        }
        // A Machine that never recorded its Node's conditions stays Running when the Node is
        // missing, as under MCM.
        assert_eq!(evaluate(&m, None, &cfg(), now).update.current, None);
        // spec.nodeConditions overrides the default list.
        let mut custom = m.clone();
        custom.spec.node_conditions = Some("MemoryPressure".into());
        let o = evaluate(
            &custom,
            Some(&node(&[("Ready", "True"), ("DiskPressure", "True")])),
            &cfg(),
            now,
        );
        assert_eq!(phase_of(&o), None);
    }

    #[test]
    fn unknown_recovers_or_fails_after_the_health_timeout() {
        let m = machine("Unknown", "2026-01-01T01:00:00Z");
        let healthy = node(&[("Ready", "True")]);
        let sick = node(&[("Ready", "False")]);
        let back = evaluate(&m, Some(&healthy), &cfg(), ts("2026-01-01T01:05:00Z"));
        assert_eq!(phase_of(&back), Some("Running"));
        let wait = evaluate(&m, Some(&sick), &cfg(), ts("2026-01-01T01:04:00Z"));
        assert_eq!(phase_of(&wait), None);
        assert_eq!(wait.recheck, Some(Duration::from_secs(360)));
        let failed = evaluate(&m, Some(&sick), &cfg(), ts("2026-01-01T01:10:00Z"));
        assert_eq!(phase_of(&failed), Some("Failed"));
        let lo = failed.update.last_operation.unwrap();
        assert_eq!(lo.state, "Failed");
        assert_eq!(
            lo.description,
            "Machine m1 health checks failing since last 10m0s minutes. Updating machine phase to Failed. Node Conditions: Ready=False"
        );

        let mut disabled = m.clone();
        disabled.spec.disable_health_timeout = Some(true);
        assert_eq!(
            phase_of(&evaluate(
                &disabled,
                Some(&sick),
                &cfg(),
                ts("2026-01-02T00:00:00Z")
            )),
            None
        );
        let mut short = m;
        short.spec.health_timeout = Some("1m0s".into());
        assert_eq!(
            phase_of(&evaluate(
                &short,
                Some(&sick),
                &cfg(),
                ts("2026-01-01T01:01:00Z")
            )),
            Some("Failed")
        );
    }

    #[test]
    fn conditions_are_copied_only_when_they_change() {
        let mut m = machine("Running", "2026-01-01T00:05:00Z");
        let n = node(&[("Ready", "True")]);
        let first = evaluate(&m, Some(&n), &cfg(), ts("2026-01-01T00:06:00Z"));
        m.status.as_mut().unwrap().conditions = first.update.conditions.clone();
        let mut heartbeat = n.clone();
        heartbeat
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_heartbeat_time = Some(Time(ts("2026-01-01T00:07:00Z")));
        assert!(
            evaluate(&m, Some(&heartbeat), &cfg(), ts("2026-01-01T00:07:00Z"))
                .update
                .is_empty()
        );
    }

    #[test]
    fn other_phases_are_left_alone() {
        for ph in ["", "CrashLoopBackOff", "Failed", "Terminating", "Available"] {
            let m = machine(ph, "2026-01-01T00:00:00Z");
            let o = evaluate(&m, None, &cfg(), ts("2027-01-01T00:00:00Z"));
            assert!(o.update.is_empty() && o.recheck.is_none(), "{ph}");
        }
    }

    fn tainted(mut n: Node, key: &str, effect: &str) -> Node {
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(vec![k8s_openapi::api::core::v1::Taint {
                key: key.into(),
                effect: effect.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    #[test]
    fn health_follows_mcm_rules_exactly() {
        let bad = |list: &str| list.split(',').map(str::to_owned).collect::<Vec<_>>();
        let default = bad(crate::controller::context::DEFAULT_NODE_CONDITIONS);
        // Unknown is not False: unhealthy.
        assert!(!is_healthy(
            &node(&[("Ready", "True"), ("DiskPressure", "Unknown")]),
            &default
        ));
        assert!(!is_healthy(&node(&[("Ready", "Unknown")]), &default));
        // No conditions at all: the kubelet has not reported yet.
        assert!(!is_healthy(&node(&[]), &default));
        // Types are compared case-sensitively.
        assert!(is_healthy(
            &node(&[("Ready", "True"), ("DiskPressure", "True")]),
            &bad("diskpressure")
        ));
        // A bad type that is not reported does not count; Ready is only checked when present.
        assert!(is_healthy(&node(&[("MemoryPressure", "False")]), &default));
        assert!(is_healthy(
            &node(&[("Ready", "True"), ("KernelDeadlock", "False")]),
            &default
        ));
    }

    #[test]
    fn node_conditions_come_from_the_flag_unless_the_machine_overrides_them() {
        let mut m = machine("Running", "2026-01-01T00:05:00Z");
        let mut c = cfg();
        c.node_conditions = "FrequentKubeletRestart".into();
        let n = node(&[("Ready", "True"), ("FrequentKubeletRestart", "True")]);
        let now = ts("2026-01-01T01:00:00Z");
        assert_eq!(phase_of(&evaluate(&m, Some(&n), &c, now)), Some("Unknown"));
        // An empty override means no bad types at all, as in MCM.
        m.spec.node_conditions = Some(String::new());
        assert_eq!(phase_of(&evaluate(&m, Some(&n), &c, now)), None);
    }

    #[test]
    fn pending_waits_for_the_critical_components_taint_to_go() {
        let mut m = machine("Pending", "2026-01-01T00:00:00Z");
        m.status.as_mut().unwrap().last_operation = Some(last_op(
            op::CREATE,
            state::PROCESSING,
            "Creating machine on cloud provider",
            None,
            ts("2026-01-01T00:00:00Z"),
        ));
        let ready = node(&[("Ready", "True")]);
        let now = ts("2026-01-01T00:03:00Z");
        let held = evaluate(
            &m,
            Some(&tainted(
                ready.clone(),
                CRITICAL_COMPONENTS_NOT_READY_TAINT,
                "NoSchedule",
            )),
            &cfg(),
            now,
        );
        assert_eq!(phase_of(&held), None);
        assert!(!held.joined_after_create);
        assert_eq!(held.recheck, Some(Duration::from_secs(17 * 60)));
        // Another effect of the same key, or another key, does not hold it.
        for other in [
            tainted(
                ready.clone(),
                CRITICAL_COMPONENTS_NOT_READY_TAINT,
                "NoExecute",
            ),
            tainted(ready.clone(), "example.com/other", "NoSchedule"),
            ready.clone(),
        ] {
            let o = evaluate(&m, Some(&other), &cfg(), now);
            assert_eq!(phase_of(&o), Some("Running"));
            assert!(o.joined_after_create);
        }
        // Still tainted at the creation timeout: Failed.
        let late = evaluate(
            &m,
            Some(&tainted(
                ready.clone(),
                CRITICAL_COMPONENTS_NOT_READY_TAINT,
                "NoSchedule",
            )),
            &cfg(),
            ts("2026-01-01T00:20:00Z"),
        );
        assert_eq!(phase_of(&late), Some("Failed"));
        // A Running machine is not affected by the taint.
        let running = machine("Running", "2026-01-01T00:05:00Z");
        let o = evaluate(
            &running,
            Some(&tainted(
                ready,
                CRITICAL_COMPONENTS_NOT_READY_TAINT,
                "NoSchedule",
            )),
            &cfg(),
            now,
        );
        assert_eq!(phase_of(&o), None);
    }

    #[test]
    fn a_rejoin_after_a_successful_create_is_not_a_first_join() {
        let mut m = machine("Unknown", "2026-01-01T01:00:00Z");
        m.status.as_mut().unwrap().last_operation = Some(last_op(
            op::HEALTH_CHECK,
            state::PROCESSING,
            "unhealthy",
            None,
            ts("2026-01-01T01:00:00Z"),
        ));
        let o = evaluate(
            &m,
            Some(&node(&[("Ready", "True")])),
            &cfg(),
            ts("2026-01-01T01:01:00Z"),
        );
        assert_eq!(phase_of(&o), Some("Running"));
        assert!(!o.joined_after_create);
    }
}
