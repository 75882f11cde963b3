//! The controller's one table: a CMI result code → what MCM's machine controller does with it
//! (phase, `lastOperation`, retry period), plus the status patches that write it.
//!
//! MCM's machine codes 0–16 are gRPC's, so `tonic::Code` maps straight onto MCM's reaction
//! table (`reference/notes/mcm.md` §2). Every requeue period the controller uses comes from
//! [`RetryPeriods`]; nothing else in the controller picks a period.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::NodeCondition,
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use serde_json::json;
use tonic::Code;

use super::crd::{CurrentStatus, LastOperation};
use crate::cmi::{RetryClass, codes::code_name};

/// `status.currentStatus.phase` values (MCM's `MachinePhase`).
pub mod phase {
    /// Created on the provider, Node not joined yet.
    pub const PENDING: &str = "Pending";
    /// Created, and there is no target cluster to join (`--target-kubeconfig=none`).
    pub const AVAILABLE: &str = "Available";
    /// Node joined and healthy.
    pub const RUNNING: &str = "Running";
    /// Node unhealthy or gone; the health timeout is counting.
    pub const UNKNOWN: &str = "Unknown";
    /// Given up; MCM's MachineSet controller replaces it.
    pub const FAILED: &str = "Failed";
    /// Being deleted.
    pub const TERMINATING: &str = "Terminating";
    /// Create keeps failing and no device exists yet; retried.
    pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
}

/// `lastOperation.state` values.
pub mod state {
    /// In progress.
    pub const PROCESSING: &str = "Processing";
    /// Done.
    pub const SUCCESSFUL: &str = "Successful";
    /// Failed; will be retried.
    pub const FAILED: &str = "Failed";
}

/// `lastOperation.type` values.
pub mod op {
    /// The create flow (and joining the cluster).
    pub const CREATE: &str = "Create";
    /// The delete flow.
    pub const DELETE: &str = "Delete";
    /// Node-condition driven health changes.
    pub const HEALTH_CHECK: &str = "HealthCheck";
}

/// MCM's retry periods (`machineutils.RetryPeriod`), with the one that is a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPeriods {
    /// After a lost optimistic-concurrency race: 200 ms.
    pub conflict: Duration,
    /// Transient driver errors (Unknown, DeadlineExceeded, Aborted, Unavailable): 5 s.
    pub short: Duration,
    /// Everything else the driver says no to: 3 min. MCM never gives up on a create.
    pub medium: Duration,
    /// Steady state re-checks and hard delete failures: 10 min.
    pub long: Duration,
    /// `--resource-exhausted-retry` (default 10 min): no capacity right now.
    pub resource_exhausted: Duration,
}

impl Default for RetryPeriods {
    fn default() -> Self {
        Self {
            conflict: Duration::from_millis(200),
            short: Duration::from_secs(5),
            medium: Duration::from_secs(180),
            long: Duration::from_secs(600),
            resource_exhausted: Duration::from_secs(600),
        }
    }
}

/// Codes MCM treats as "try again soon".
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown | Code::DeadlineExceeded | Code::Aborted | Code::Unavailable
    )
}

impl RetryPeriods {
    /// How long to wait after a driver call failed with `code`, by the table its RPC uses.
    pub fn after_error(&self, class: RetryClass, code: Code) -> Duration {
        match class {
            RetryClass::CreateFlow => self.after_create_error(code),
            RetryClass::DeleteFlow => self.after_delete_error(code),
        }
    }

    /// How long to wait after a failed GetMachineStatus/CreateMachine in the create flow.
    pub fn after_create_error(&self, code: Code) -> Duration {
        match code {
            Code::ResourceExhausted => self.resource_exhausted,
            c if is_transient(c) => self.short,
            _ => self.medium,
        }
    }

    /// How long to wait after a failed DeleteMachine: transient → short, otherwise long
    /// ("Aborting operation", still retried).
    pub fn after_delete_error(&self, code: Code) -> Duration {
        if is_transient(code) {
            self.short
        } else {
            self.long
        }
    }
}

/// MCM's rendering of a driver error (`status.Error()`), so descriptions read the same as
/// under MCM: `machine codes error: code = [InvalidArgument] message = [...]`.
pub fn machine_codes_error(code: Code, message: &str) -> String {
    format!(
        "machine codes error: code = [{}] message = [{}]",
        code_name(code),
        message
    )
}

/// The phase after a failed create attempt: CrashLoopBackOff while the creation timeout
/// (counted from `metadata.creationTimestamp`) has not passed, Failed after.
pub fn phase_after_create_error(
    now: Timestamp,
    created: Option<Timestamp>,
    creation_timeout: Duration,
) -> &'static str {
    match created {
        Some(created) if elapsed(now, created) >= creation_timeout => phase::FAILED,
        _ => phase::CRASH_LOOP_BACK_OFF,
    }
}

/// `now - since`, saturating at zero (clock skew between us and the API server).
pub fn elapsed(now: Timestamp, since: Timestamp) -> Duration {
    let d: SignedDuration = now.duration_since(since);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// A status change: whichever parts are `Some` are written, the rest left alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusUpdate {
    /// New `currentStatus`.
    pub current: Option<CurrentStatus>,
    /// New `lastOperation` (written whole, so a stale `errorCode` is cleared).
    pub last_operation: Option<LastOperation>,
    /// New `conditions` (copied from the Node).
    pub conditions: Option<Vec<NodeCondition>>,
    /// New `lastKnownState`.
    pub last_known_state: Option<String>,
}

impl StatusUpdate {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The JSON merge patch for the status subresource.
    pub fn to_patch(&self) -> serde_json::Value {
        let mut status = serde_json::Map::new();
        if let Some(c) = &self.current {
            status.insert("currentStatus".into(), json!(c));
        }
        if let Some(l) = &self.last_operation {
            status.insert("lastOperation".into(), json!(l));
        }
        if let Some(c) = &self.conditions {
            status.insert("conditions".into(), json!(c));
        }
        if let Some(s) = &self.last_known_state {
            status.insert("lastKnownState".into(), json!(s));
        }
        json!({ "status": status })
    }
}

/// A `currentStatus` entering `phase` now.
pub fn current(phase: &str, timeout_active: bool, now: Timestamp) -> CurrentStatus {
    CurrentStatus {
        phase: phase.to_owned(),
        timeout_active,
        last_update_time: Some(Time(now)),
        ..Default::default()
    }
}

/// A `lastOperation` record written now.
pub fn last_op(
    type_: &str,
    state: &str,
    description: impl Into<String>,
    error_code: Option<Code>,
    now: Timestamp,
) -> LastOperation {
    LastOperation {
        description: description.into(),
        error_code: error_code.map(|c| code_name(c).to_owned()),
        last_update_time: Some(Time(now)),
        state: state.to_owned(),
        type_: type_.to_owned(),
    }
}

/// The status written when GetMachineStatus or CreateMachine fails in the create flow:
/// `lastOperation{description: "Cloud provider message - …", errorCode, state: Failed,
/// type: Create}` and phase CrashLoopBackOff/Failed by the creation timeout.
pub fn create_failed(
    code: Code,
    message: &str,
    now: Timestamp,
    created: Option<Timestamp>,
    creation_timeout: Duration,
) -> StatusUpdate {
    let phase = phase_after_create_error(now, created, creation_timeout);
    StatusUpdate {
        current: Some(current(phase, phase != phase::FAILED, now)),
        last_operation: Some(last_op(
            op::CREATE,
            state::FAILED,
            format!(
                "Cloud provider message - {}",
                machine_codes_error(code, message)
            ),
            Some(code),
            now,
        )),
        ..StatusUpdate::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn retry_periods_follow_mcm() {
        let p = RetryPeriods::default();
        for c in [
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Unavailable,
        ] {
            assert_eq!(p.after_create_error(c), Duration::from_secs(5), "{c:?}");
            assert_eq!(p.after_delete_error(c), Duration::from_secs(5), "{c:?}");
        }
        assert_eq!(
            p.after_create_error(Code::ResourceExhausted),
            Duration::from_secs(600)
        );
        for c in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
            Code::AlreadyExists,
            Code::OutOfRange,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::NotFound,
        ] {
            assert_eq!(p.after_create_error(c), Duration::from_secs(180), "{c:?}");
            assert_eq!(p.after_delete_error(c), Duration::from_secs(600), "{c:?}");
        }
        let custom = RetryPeriods {
            resource_exhausted: Duration::from_secs(42),
            ..p
        };
        assert_eq!(
            custom.after_create_error(Code::ResourceExhausted),
            Duration::from_secs(42)
        );
    }

    #[test]
    fn create_failure_is_crashloop_within_timeout_then_failed() {
        let created = Some(ts("2026-01-01T00:00:00Z"));
        let timeout = Duration::from_secs(1200);
        let early = create_failed(
            Code::InvalidArgument,
            "metro: unknown",
            ts("2026-01-01T00:10:00Z"),
            created,
            timeout,
        );
        let cur = early.current.unwrap();
        assert_eq!(cur.phase, phase::CRASH_LOOP_BACK_OFF);
        let lo = early.last_operation.unwrap();
        assert_eq!(lo.error_code.as_deref(), Some("InvalidArgument"));
        assert_eq!(lo.state, "Failed");
        assert_eq!(lo.type_, "Create");
        assert_eq!(
            lo.description,
            "Cloud provider message - machine codes error: code = [InvalidArgument] message = [metro: unknown]"
        );
        let late = create_failed(
            Code::Unavailable,
            "x",
            ts("2026-01-01T00:20:00Z"),
            created,
            timeout,
        );
        assert_eq!(late.current.unwrap().phase, phase::FAILED);
        // No creation timestamp (should not happen): keep retrying.
        assert_eq!(
            phase_after_create_error(ts("2030-01-01T00:00:00Z"), None, timeout),
            phase::CRASH_LOOP_BACK_OFF
        );
    }

    #[test]
    fn patch_clears_a_stale_error_code_and_keeps_other_fields() {
        let now = ts("2026-01-01T00:00:00Z");
        let u = StatusUpdate {
            current: Some(current(phase::PENDING, true, now)),
            last_operation: Some(last_op(
                op::CREATE,
                state::PROCESSING,
                "Creating machine on cloud provider",
                None,
                now,
            )),
            ..Default::default()
        };
        let p = u.to_patch();
        assert_eq!(
            p["status"]["lastOperation"]["errorCode"],
            serde_json::Value::Null
        );
        assert!(
            p["status"]["lastOperation"]
                .as_object()
                .unwrap()
                .contains_key("errorCode")
        );
        assert_eq!(p["status"]["currentStatus"]["phase"], "Pending");
        assert_eq!(p["status"]["currentStatus"]["timeoutActive"], true);
        assert_eq!(
            p["status"]["currentStatus"]["lastUpdateTime"],
            "2026-01-01T00:00:00Z"
        );
        assert!(p["status"].get("conditions").is_none());
        assert!(StatusUpdate::default().is_empty());
    }
}
