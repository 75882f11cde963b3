//! How a Machine's Node is drained: normally (evictions, PodDisruptionBudgets respected,
//! volumes followed) or by force (pods deleted with grace period 0, nothing waited for, then
//! the Node's VolumeAttachments deleted), and with which limits. MCM's `drainNode` rules.

use std::time::Duration;

use k8s_openapi::{api::core::v1::NodeCondition, jiff::Timestamp};

use crate::controller::{context::Config, crd::Machine, duration, status::elapsed};

/// The Machine label that forces the drain (Gardener sets it on every Machine of a Worker
/// being deleted). Read with Go's `strconv.ParseBool`.
pub const FORCE_DELETION_LABEL: &str = "force-deletion";

/// Evictions a PodDisruptionBudget refuses are retried this often.
pub const EVICTION_RETRY_INTERVAL: Duration = Duration::from_secs(20);

/// A Node NotReady (or with a read-only filesystem) this long cannot run pods anyway:
/// its pods are deleted rather than evicted.
pub const UNHEALTHY_NODE_GRACE: Duration = Duration::from_secs(5 * 60);

/// The drain timeout once the drain is forced.
pub const FORCED_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a drain is forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForceReason {
    /// The `force-deletion` label is true.
    Label,
    /// The drain timeout has passed since the Machine's deletion.
    Timeout,
    /// The Node has been NotReady for over 5 minutes.
    NodeNotReady,
    /// The Node has had a read-only filesystem for over 5 minutes.
    ReadonlyFilesystem,
}

/// How to drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mode {
    /// `Some` → delete pods with grace 0 and do not wait for them (MCM's `forceDeletePods`).
    pub force: Option<ForceReason>,
    /// The drain gives up after this long.
    pub timeout: Duration,
    /// 429 answers tolerated per pod before it is deleted instead of evicted.
    pub max_evict_retries: u32,
}

/// Go's `strconv.ParseBool`: `1 t T TRUE true True` and `0 f F FALSE false False`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The Machine's drain timeout: `spec.drainTimeout`, else the flag. An unparsable override
/// falls back to the flag (logged).
pub fn drain_timeout(m: &Machine, cfg: &Config) -> Duration {
    match m.spec.drain_timeout.as_deref() {
        None | Some("") => cfg.drain_timeout,
        Some(v) => duration::parse(v).unwrap_or_else(|e| {
            tracing::warn!(machine = m.metadata.name.as_deref(), field = "drainTimeout", error = %e, "ignoring spec override");
            cfg.drain_timeout
        }),
    }
}

/// `min(maxEvictRetries, drainTimeout / 20 s)`, truncated as MCM's integer conversion does.
pub fn max_evict_retries(m: &Machine, cfg: &Config, timeout: Duration) -> u32 {
    let configured = m.spec.max_evict_retries.unwrap_or(cfg.max_evict_retries);
    let configured = u64::try_from(configured).unwrap_or(0);
    let by_time = timeout.as_secs() / EVICTION_RETRY_INTERVAL.as_secs();
    u32::try_from(configured.min(by_time)).unwrap_or(u32::MAX)
}

fn condition<'a>(m: &'a Machine, type_: &str) -> Option<&'a NodeCondition> {
    m.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_))
}

/// Whether `type_` (copied from the Node into the Machine's status) has been other than
/// `healthy` for longer than [`UNHEALTHY_NODE_GRACE`]. A missing transition time counts as
/// long ago (Go's zero time).
fn unhealthy_too_long(m: &Machine, type_: &str, healthy: &str, now: Timestamp) -> bool {
    condition(m, type_).is_some_and(|c| {
        c.status != healthy
            && c.last_transition_time
                .as_ref()
                .is_none_or(|t| elapsed(now, t.0) > UNHEALTHY_NODE_GRACE)
    })
}

/// How to drain `m` at `now`. The label and the timeout also shorten the drain to
/// [`FORCED_DRAIN_TIMEOUT`] with one eviction attempt; an unhealthy Node only switches to
/// deleting pods (MCM's order: label/timeout win over the Node's state).
pub fn decide(m: &Machine, cfg: &Config, now: Timestamp) -> Mode {
    let timeout = drain_timeout(m, cfg);
    let mut mode = Mode {
        force: None,
        timeout,
        max_evict_retries: max_evict_retries(m, cfg, timeout),
    };
    if unhealthy_too_long(m, "Ready", "True", now) {
        mode.force = Some(ForceReason::NodeNotReady);
    } else if unhealthy_too_long(m, "ReadonlyFilesystem", "False", now) {
        mode.force = Some(ForceReason::ReadonlyFilesystem);
    }
    let label = match m.labels().get(FORCE_DELETION_LABEL) {
        None => false,
        Some(v) => parse_go_bool(v).unwrap_or_else(|| {
            tracing::warn!(machine = m.metadata.name.as_deref(), label = FORCE_DELETION_LABEL, value = %v, "not a boolean; ignored");
            false
        }),
    };
    let timed_out = m
        .metadata
        .deletion_timestamp
        .as_ref()
        .is_some_and(|t| elapsed(now, t.0) > timeout);
    if label || timed_out {
        mode.force = Some(if label {
            ForceReason::Label
        } else {
            ForceReason::Timeout
        });
        mode.timeout = FORCED_DRAIN_TIMEOUT;
        mode.max_evict_retries = 1;
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::crd::MachineSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn cfg() -> Config {
        crate::controller::fixtures::config()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn machine(deleted: &str) -> Machine {
        let mut m = Machine::new("m1", MachineSpec::default());
        m.metadata.deletion_timestamp = Some(Time(ts(deleted)));
        m
    }

    fn with_condition(mut m: Machine, type_: &str, status: &str, since: &str) -> Machine {
        let st = m.status.get_or_insert_with(Default::default);
        st.conditions = Some(vec![
            serde_json::from_value(
                json!({"type": type_, "status": status, "lastTransitionTime": since}),
            )
            .unwrap(),
        ]);
        m
    }

    #[test]
    fn go_parse_bool_accepts_exactly_gos_spellings() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Some(false), "{f}");
        }
        for bad in ["yes", "tRUE", "", " true", "2"] {
            assert_eq!(parse_go_bool(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_fresh_deletion_drains_normally_with_mcm_limits() {
        let m = machine("2026-01-01T00:00:00Z");
        let mode = decide(&m, &cfg(), ts("2026-01-01T00:01:00Z"));
        assert_eq!(
            mode,
            Mode {
                force: None,
                timeout: Duration::from_secs(7200),
                max_evict_retries: 360
            }
        );
    }

    #[test]
    fn evict_retries_are_capped_by_the_drain_timeout() {
        let mut m = machine("2026-01-01T00:00:00Z");
        m.spec.drain_timeout = Some("50s".into());
        assert_eq!(max_evict_retries(&m, &cfg(), drain_timeout(&m, &cfg())), 2);
        m.spec.max_evict_retries = Some(1);
        assert_eq!(max_evict_retries(&m, &cfg(), drain_timeout(&m, &cfg())), 1);
        m.spec.drain_timeout = Some("10s".into());
        m.spec.max_evict_retries = None;
        assert_eq!(max_evict_retries(&m, &cfg(), drain_timeout(&m, &cfg())), 0);
        m.spec.max_evict_retries = Some(-3);
        m.spec.drain_timeout = Some("1h".into());
        assert_eq!(max_evict_retries(&m, &cfg(), drain_timeout(&m, &cfg())), 0);
    }

    #[test]
    fn the_label_forces_with_a_short_drain() {
        let mut m = machine("2026-01-01T00:00:00Z");
        m.metadata.labels = Some([(FORCE_DELETION_LABEL.into(), "True".into())].into());
        let mode = decide(&m, &cfg(), ts("2026-01-01T00:00:01Z"));
        assert_eq!(mode.force, Some(ForceReason::Label));
        assert_eq!(mode.timeout, FORCED_DRAIN_TIMEOUT);
        assert_eq!(mode.max_evict_retries, 1);
        m.metadata.labels = Some([(FORCE_DELETION_LABEL.into(), "yes".into())].into());
        assert_eq!(decide(&m, &cfg(), ts("2026-01-01T00:00:01Z")).force, None);
        m.metadata.labels = Some([(FORCE_DELETION_LABEL.into(), "false".into())].into());
        assert_eq!(decide(&m, &cfg(), ts("2026-01-01T00:00:01Z")).force, None);
    }

    #[test]
    fn the_drain_timeout_counts_from_the_deletion_timestamp() {
        let mut m = machine("2026-01-01T00:00:00Z");
        m.spec.drain_timeout = Some("10m".into());
        assert_eq!(decide(&m, &cfg(), ts("2026-01-01T00:10:00Z")).force, None);
        let mode = decide(&m, &cfg(), ts("2026-01-01T00:10:01Z"));
        assert_eq!(mode.force, Some(ForceReason::Timeout));
        assert_eq!(mode.timeout, FORCED_DRAIN_TIMEOUT);
    }

    #[test]
    fn an_unhealthy_node_for_over_five_minutes_deletes_pods() {
        let m = with_condition(
            machine("2026-01-01T00:00:00Z"),
            "Ready",
            "Unknown",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(decide(&m, &cfg(), ts("2026-01-01T00:05:00Z")).force, None);
        let mode = decide(&m, &cfg(), ts("2026-01-01T00:05:01Z"));
        assert_eq!(mode.force, Some(ForceReason::NodeNotReady));
        // Only the pods are forced: the limits stay the normal ones.
        assert_eq!(mode.timeout, Duration::from_secs(7200));
        let ro = with_condition(
            machine("2026-01-01T00:00:00Z"),
            "ReadonlyFilesystem",
            "True",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            decide(&ro, &cfg(), ts("2026-01-01T00:06:00Z")).force,
            Some(ForceReason::ReadonlyFilesystem)
        );
        let healthy = with_condition(
            machine("2026-01-01T00:00:00Z"),
            "ReadonlyFilesystem",
            "False",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            decide(&healthy, &cfg(), ts("2026-01-01T01:00:00Z")).force,
            None
        );
    }
}
