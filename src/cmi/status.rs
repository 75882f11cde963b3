//! The one table from a provider failure to a gRPC code.
//!
//! The code is what MCM-style clients act on (see `reference/notes/mcm.md` §2): on create,
//! `Unavailable`/`DeadlineExceeded`/`Aborted`/`Unknown` retry after 5 s, `ResourceExhausted`
//! after 10 min, anything else after 3 min with the Machine in CrashLoopBackOff; on status,
//! `NotFound` makes the client create; on delete, `NotFound` counts as done. So a user mistake
//! must never look transient, an outage must never look like "the machine is gone", and a
//! device that is not ours must never look gone either. The match is exhaustive with no `_`
//! arm: a new failure kind without a chosen code does not compile.

use tonic::{Code, Status};

use crate::provider;

/// The gRPC code for a provider failure.
pub fn code_for(error: &provider::Error) -> Code {
    use provider::Error as E;
    match error {
        // The MachineClass or Secret is wrong: retrying cannot help until a human fixes it.
        E::InvalidField { .. } => Code::InvalidArgument,
        // The device truly is not there (CMI: "VM not at provider"): the client creates.
        E::DeviceNotFound { .. }
        | E::DeviceDeprovisioning { .. }
        | E::NoDeviceForMachine { .. } => Code::NotFound,
        // A device we cannot name is as good as absent for acting on it.
        E::DeviceWithoutId { .. } => Code::NotFound,
        // It exists but is another cluster's (CMI: act only on the cluster's machines):
        // NotFound would make the client create a duplicate or drop the Machine while the
        // device runs on, so the operator is told instead.
        E::DeviceNotInCluster { .. } => Code::FailedPrecondition,
        // The operator must unlock it or allow unlockOnDelete.
        E::DeviceLocked { .. } => Code::FailedPrecondition,
        // CMI: "VM exists but params mismatch".
        E::DeviceMismatch { .. } => Code::AlreadyExists,
        // Not in a state that allows a power-off yet: the client retries later.
        E::DeviceNotReady { .. } | E::PowerOffRefused { .. } => Code::FailedPrecondition,
        // No capacity or reservation: MCM waits its long resource-exhausted period.
        E::NoCapacity { .. } => Code::ResourceExhausted,
        // CMI: "operation pending for machine", the client retries with backoff.
        E::MachineBusy { .. } => Code::Aborted,
        // CMI: GetMachineStatus "multiple VMs for name" triggers orphan collection.
        E::MultipleDevices { .. } => Code::OutOfRange,
        // The caller stopped waiting.
        E::DeadlinePassed { .. } => Code::DeadlineExceeded,
        // A bad or revoked token (401): the Secret must be fixed.
        E::TokenRefused(_) => Code::Unauthenticated,
        // The token may not do this (403).
        E::AccessDenied(_) => Code::PermissionDenied,
        // The API rejected the request as invalid (bad plan, OS, metro, ...).
        E::RequestRejected(_) => Code::InvalidArgument,
        // The project (or another referenced resource) does not exist (404).
        E::ResourceMissing(_) => Code::NotFound,
        // A conflicting change is in progress (409): retry soon.
        E::ApiConflict(_) => Code::Aborted,
        // Still throttled or failing after our retries, or unreachable: transient.
        E::UpstreamUnavailable(_) => Code::Unavailable,
        E::UpstreamTimeout(_) => Code::DeadlineExceeded,
        // Off-spec data or an unexpected status: retrying soon is the best bet.
        E::UpstreamUnexpected(_) => Code::Unknown,
    }
}

/// The status a caller sees: the code from [`code_for`] and the error's message, which names
/// the field for user mistakes. `details` stay empty, as CMI requires.
pub fn to_status(error: &provider::Error) -> Status {
    Status::new(code_for(error), error.to_string())
}

impl From<provider::Error> for Status {
    fn from(error: provider::Error) -> Self {
        to_status(&error)
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::metal::{self, DeviceState, Operation};
    use provider::{Error as E, error::Foreign};

    fn api(status: u16) -> E {
        E::api(metal::Error::Status {
            endpoint: Operation::FindDeviceById,
            status,
            message: "x".into(),
            retry_after: None,
        })
    }

    #[test]
    fn table_matches_the_design() {
        let device = Uuid::nil();
        let machine = || "m".to_string();
        let cases = [
            (
                E::invalid("providerSpec.metro", "required"),
                Code::InvalidArgument,
            ),
            (E::DeviceNotFound { device }, Code::NotFound),
            (E::DeviceDeprovisioning { device }, Code::NotFound),
            (E::NoDeviceForMachine { machine: machine() }, Code::NotFound),
            (E::DeviceWithoutId { machine: machine() }, Code::NotFound),
            (
                E::DeviceNotInCluster {
                    device,
                    why: Foreign::MissingClusterTag {
                        tag: "kubernetes.io/cluster/x".into(),
                    },
                },
                Code::FailedPrecondition,
            ),
            (E::DeviceLocked { device }, Code::FailedPrecondition),
            (
                E::DeviceMismatch {
                    device,
                    machine: machine(),
                    differences: vec!["plan".into()],
                },
                Code::AlreadyExists,
            ),
            (
                E::DeviceNotReady {
                    device,
                    state: DeviceState::Provisioning,
                },
                Code::FailedPrecondition,
            ),
            (
                E::PowerOffRefused {
                    device,
                    source: metal::Error::Status {
                        endpoint: Operation::PerformAction,
                        status: 422,
                        message: "busy".into(),
                        retry_after: None,
                    },
                },
                Code::FailedPrecondition,
            ),
            (
                E::NoCapacity {
                    machine: machine(),
                    refusals: vec!["on-demand: no capacity".into()],
                    reserved_only: false,
                },
                Code::ResourceExhausted,
            ),
            (E::MachineBusy { machine: machine() }, Code::Aborted),
            (
                E::MultipleDevices {
                    machine: machine(),
                    devices: vec![device, device],
                },
                Code::OutOfRange,
            ),
            (E::DeadlinePassed { during: "x" }, Code::DeadlineExceeded),
            (api(401), Code::Unauthenticated),
            (api(403), Code::PermissionDenied),
            (api(404), Code::NotFound),
            (api(409), Code::Aborted),
            (api(422), Code::InvalidArgument),
            (api(429), Code::Unavailable),
            (api(503), Code::Unavailable),
            (
                E::api(metal::Error::Transport {
                    endpoint: Operation::CreateDevice,
                    reason: "reset".into(),
                }),
                Code::Unavailable,
            ),
            (
                E::api(metal::Error::Deadline {
                    endpoint: Operation::CreateDevice,
                }),
                Code::DeadlineExceeded,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(code_for(&error), code, "{error}");
        }
    }

    #[test]
    fn invalid_argument_message_names_the_field() {
        let s = to_status(&E::invalid(
            "providerSpec.billingCycle",
            "must be one of hourly, daily",
        ));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().starts_with("providerSpec.billingCycle: "),
            "{}",
            s.message()
        );
        assert!(s.details().is_empty());
    }
}
