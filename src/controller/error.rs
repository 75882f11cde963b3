//! `controller::Error`: one variant per failure source. Every variant knows how long to wait
//! before the next attempt ([`Error::retry_after`], from the one table in
//! [`super::status::RetryPeriods`]) and its Prometheus label ([`Error::metric_label`]).
//!
//! Messages name objects, keys and codes, never Secret values.

use std::time::Duration;

use super::status::{self, RetryPeriods};
use crate::cmi::{Rpc, calls::CallError, codes::code_name};
use crate::secret_data::MissingUserData;

/// A failed reconcile, or a failure to start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed. A 409 (lost an optimistic-concurrency race) is retried
    /// after MCM's ConflictRetry, anything else after ShortRetry.
    #[error("{action} failed: {source}")]
    Kube {
        /// What we were doing (`patch Machine status`, …).
        action: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },

    /// The driver answered a CMI call with an error status (its message is the driver's,
    /// which drivers keep free of secrets). Retried per the RPC's table in MCM
    /// ([`Rpc::retry_class`]: create-flow or delete-flow periods).
    #[error("{} failed: {}", .0.rpc(), status::machine_codes_error(.0.code(), .0.message()))]
    Cmi(CallError),

    /// `spec.class` does not name a MachineClass; nothing happens until the Machine changes.
    #[error("spec.class must refer to a MachineClass by name (kind {kind:?}, name {name:?})")]
    InvalidClassRef {
        /// `spec.class.kind` as found.
        kind: String,
        /// `spec.class.name` as found.
        name: String,
    },

    /// The referenced MachineClass does not exist (yet): retried soon, and its creation
    /// triggers a reconcile anyway.
    #[error("MachineClass {name:?} not found")]
    ClassNotFound {
        /// The class name.
        name: String,
    },

    /// The merged Secrets lack `userData`, which CreateMachine needs. Retried after
    /// ShortRetry as MCM does.
    #[error(transparent)]
    MissingUserData(#[from] MissingUserData),

    /// The machine's bootstrap token cannot be made or read (a name too short for MCM's id
    /// derivation, or a token Secret without id/secret). Retried after ShortRetry.
    #[error("bootstrap token for machine {machine:?}: {reason}")]
    BootstrapToken {
        /// The machine.
        machine: String,
        /// What is wrong (never the token itself).
        reason: String,
    },

    /// The driver answered OK without the ProviderID (or NodeName, with a target cluster):
    /// MCM's Internal/MediumRetry case.
    #[error("the driver's {rpc} answer lacks {field}")]
    IncompleteResponse {
        /// The RPC.
        rpc: Rpc,
        /// The missing field.
        field: &'static str,
    },

    /// A step of the delete flow failed; its `lastOperation` is recorded, and it is retried
    /// after MCM's period for that failure.
    #[error("delete flow: {description}")]
    DeleteStep {
        /// The `lastOperation.description` written.
        description: String,
        /// When to retry.
        retry_after: Duration,
    },

    /// Could not build a Kubernetes client from the kubeconfig flags.
    #[error("kubeconfig {path:?}: {reason}")]
    Kubeconfig {
        /// The flag value.
        path: String,
        /// Why it failed.
        reason: String,
    },

    /// Could not reach the driver at start-up.
    #[error(transparent)]
    Connect(#[from] crate::cmi::client::ClientError),

    /// The side port could not be bound.
    #[error("cannot bind the HTTP side port {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Another replica took the lease, or renewing it failed past the renew deadline. The
    /// process exits so that it restarts as a follower (client-go behaves the same way).
    #[error("leader election lost: {0}")]
    LeadershipLost(String),
}

/// Results in this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A Kubernetes API failure while doing `action`.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { action, source }
    }

    /// How long to wait before reconciling again.
    pub fn retry_after(&self, periods: &RetryPeriods) -> Duration {
        match self {
            Self::Kube { source, .. } => {
                if is_conflict(source) {
                    periods.conflict
                } else {
                    periods.short
                }
            }
            Self::Cmi(e) => periods.after_error(e.rpc().retry_class(), e.code()),
            Self::InvalidClassRef { .. } => periods.long,
            Self::ClassNotFound { .. }
            | Self::MissingUserData { .. }
            | Self::BootstrapToken { .. } => periods.short,
            Self::IncompleteResponse { .. } => periods.medium,
            Self::DeleteStep { retry_after, .. } => *retry_after,
            Self::Kubeconfig { .. }
            | Self::Connect(_)
            | Self::Bind { .. }
            | Self::LeadershipLost(_) => periods.medium,
        }
    }

    /// The `reason` label of `metal_driver_controller_reconcile_failures_total`.
    pub fn metric_label(&self) -> String {
        match self {
            Self::Kube { source, .. } if is_conflict(source) => "kube_conflict".into(),
            Self::Kube { .. } => "kube_api".into(),
            Self::Cmi(e) => format!("cmi_{}", code_name(e.code())),
            Self::InvalidClassRef { .. } => "invalid_class_ref".into(),
            Self::ClassNotFound { .. } => "class_not_found".into(),
            Self::MissingUserData { .. } => "missing_user_data".into(),
            Self::BootstrapToken { .. } => "bootstrap_token".into(),
            Self::IncompleteResponse { .. } => "incomplete_response".into(),
            Self::DeleteStep { .. } => "delete_step".into(),
            Self::Kubeconfig { .. } => "kubeconfig".into(),
            Self::Connect(_) => "connect".into(),
            Self::Bind { .. } => "bind".into(),
            Self::LeadershipLost(_) => "leadership_lost".into(),
        }
    }
}

/// Whether the API server refused a write because the object changed underneath us.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether the API server answered 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn delete_and_create_use_their_own_rows() {
        let p = RetryPeriods::default();
        let del = Error::Cmi(CallError::new(Rpc::DeleteMachine, Code::Internal, ""));
        let create = Error::Cmi(CallError::new(Rpc::CreateMachine, Code::Internal, ""));
        assert_eq!(del.retry_after(&p), p.long);
        assert_eq!(create.retry_after(&p), p.medium);
        assert_eq!(create.metric_label(), "cmi_Internal");
    }
}
