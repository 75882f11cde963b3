//! The one table from a provider failure to a gRPC code.
//!
//! The code is what MCM-style clients act on (see `reference/notes/mcm.md` §2): on create,
//! `Unavailable`/`DeadlineExceeded`/`Aborted`/`Unknown` retry after 5 s, `ResourceExhausted`
//! after 10 min, anything else after 3 min with the Machine in CrashLoopBackOff; on status,
//! `NotFound` makes the client create. So a user mistake must never look transient, and an
//! outage must never look like "the machine is gone". The match is exhaustive with no `_`
//! arm on our own variants: a new failure kind without a chosen code does not compile.

use tonic::{Code, Status};

use crate::{metal, provider};

/// The gRPC code for a provider failure.
pub fn code_for(error: &provider::Error) -> Code {
    use provider::Error as E;
    match error {
        // The MachineClass or Secret is wrong: retrying cannot help until a human fixes it.
        E::InvalidArgument { .. } => Code::InvalidArgument,
        // Only when the device truly does not exist: the client will create a new one.
        E::NotFound(_) => Code::NotFound,
        // A device for this machine exists with other parameters (CMI: "VM exists but
        // params mismatch").
        E::AlreadyExists(_) => Code::AlreadyExists,
        // e.g. a locked device on delete: the operator must act.
        E::FailedPrecondition(_) => Code::FailedPrecondition,
        // No capacity or reservation: MCM waits its long resource-exhausted period.
        E::ResourceExhausted(_) => Code::ResourceExhausted,
        // CMI: "operation pending for machine", client retries with backoff.
        E::Concurrent { .. } => Code::Aborted,
        // CMI: GetMachineStatus "multiple VMs for name" triggers orphan collection.
        E::MultipleDevices { .. } => Code::OutOfRange,
        E::Deadline(_) => Code::DeadlineExceeded,
        E::Api(api) => code_for_api(api),
    }
}

/// The gRPC code for a Metal API failure that the provider passed through.
pub fn code_for_api(error: &metal::Error) -> Code {
    match error {
        metal::Error::Status { status, .. } => match *status {
            // The API rejected the request as invalid (bad plan, OS, metro, ...).
            400 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::Aborted,
            // Still throttled or failing after our retries: transient for the caller.
            429 | 500..=599 => Code::Unavailable,
            _ => Code::Unknown,
        },
        metal::Error::Transport { .. } => Code::Unavailable,
        metal::Error::Deadline { .. } => Code::DeadlineExceeded,
        // The API answered 2xx with something off-spec; retrying soon is the best bet.
        metal::Error::Decode { .. } => Code::Unknown,
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
    use super::*;
    use crate::metal::Operation;
    use provider::Error as E;

    fn api(status: u16) -> E {
        E::Api(metal::Error::Status {
            endpoint: Operation::FindDeviceById,
            status,
            message: "x".into(),
            retry_after: None,
        })
    }

    #[test]
    fn table_matches_the_design() {
        let cases = [
            (
                E::invalid("providerSpec.metro", "required"),
                Code::InvalidArgument,
            ),
            (E::NotFound("gone".into()), Code::NotFound),
            (E::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                E::FailedPrecondition("locked".into()),
                Code::FailedPrecondition,
            ),
            (
                E::ResourceExhausted("no capacity".into()),
                Code::ResourceExhausted,
            ),
            (
                E::Concurrent {
                    machine: "m".into(),
                },
                Code::Aborted,
            ),
            (
                E::MultipleDevices {
                    machine: "m".into(),
                    count: 2,
                    ids: "a, b".into(),
                },
                Code::OutOfRange,
            ),
            (E::Deadline("x".into()), Code::DeadlineExceeded),
            (api(401), Code::Unauthenticated),
            (api(403), Code::PermissionDenied),
            (api(404), Code::NotFound),
            (api(422), Code::InvalidArgument),
            (api(429), Code::Unavailable),
            (api(503), Code::Unavailable),
            (
                E::Api(metal::Error::Transport {
                    endpoint: Operation::CreateDevice,
                    reason: "reset".into(),
                }),
                Code::Unavailable,
            ),
            (
                E::Api(metal::Error::Deadline {
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
