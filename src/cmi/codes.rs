//! The one table of gRPC code names, used by the handler logs, the gRPC and MCM metrics and
//! the Machine status the controller writes.
//!
//! The names are Go's (`codes.Code.String()`), because MCM writes them into
//! `lastOperation.errorCode`: note `OK` and `Canceled`, which tonic spells differently. MCM's
//! machine codes are gRPC's, so the number MCM's metrics print is the code's own.

use tonic::Code;

/// Go's name of `code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The code's number on the wire, which is also MCM's machine code
/// (`strconv.Itoa(int(code))` in its metrics).
pub fn code_number(code: Code) -> i32 {
    code.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_gos() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(code_name(Code::ResourceExhausted), "ResourceExhausted");
    }

    #[test]
    fn mcm_error_codes_are_numeric_grpc_codes() {
        assert_eq!(code_number(Code::InvalidArgument), 3);
        assert_eq!(code_number(Code::Unavailable), 14);
        assert_eq!(code_number(Code::Cancelled), 1);
        assert_eq!(code_number(Code::Unknown), 2);
    }

    /// Every number 0–16 is a code of its own, with a name of its own.
    #[test]
    fn names_and_numbers_agree() {
        let mut names = std::collections::HashSet::new();
        for n in 0..=16 {
            let code = Code::from_i32(n);
            assert_eq!(code_number(code), n);
            assert!(names.insert(code_name(code)), "{n} shares a name");
        }
    }
}
