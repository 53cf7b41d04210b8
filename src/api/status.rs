//! The one place where what went wrong becomes a `tonic::Status`: storage
//! errors, broken rules, inactive credentials, refused rotations. Each mapping
//! is one exhaustive `match` (no wildcard arm: a new variant must be placed
//! here on purpose), and tested below.
//!
//! Messages say what the caller can act on and never carry a driver's text, a
//! secret or a hash; details stay in the server's log.

use tonic::Status;

use crate::domain::error::InvalidArgument;
use crate::store::{Rotated, StoreError};
use crate::verify::Inactive;

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Status {
        tracing::error!(error = %err, "storage call failed");
        match err {
            StoreError::Unavailable(_) => Status::unavailable(err.public_reason()),
            StoreError::Rejected(_) => Status::invalid_argument(err.public_reason()),
            StoreError::Config(_) | StoreError::Failed(_) | StoreError::Migrate(_) => {
                Status::internal(err.public_reason())
            }
        }
    }
}

impl From<InvalidArgument> for Status {
    fn from(err: InvalidArgument) -> Status {
        Status::invalid_argument(err.0)
    }
}

/// A management call's credential that is not active (the reason is the
/// caller's own token's, so it may be told).
pub fn inactive_credential(inactive: Inactive) -> Status {
    Status::unauthenticated(match inactive {
        Inactive::Malformed => "bearer token is malformed",
        Inactive::Unknown => "bearer token is not recognised",
        Inactive::Expired => "bearer token has expired",
        Inactive::Revoked => "bearer token has been revoked",
        Inactive::Suspended => "bearer token is suspended",
        Inactive::AddressNotAllowed => {
            "bearer token may not be used from this address (see its allowed_cidrs)"
        }
    })
}

/// A token id the caller may not see: missing and not yours read the same.
pub fn not_found(id: &str) -> Status {
    Status::not_found(format!("no token with id {id}"))
}

/// Why rotating token `id` did not happen.
pub fn rotation_refused(id: &str, refused: Rotated) -> Status {
    match refused {
        Rotated::NotFound => not_found(id),
        Rotated::Exceeds(exceeds) => Status::permission_denied(format!(
            "rotating token {id} would hand out more than the caller holds: {exceeds}"
        )),
        Rotated::Inactive(state) => Status::failed_precondition(format!(
            "token {id} is {}: only active tokens can be rotated",
            state.as_str()
        )),
        // `Done` is a rotation that happened; a caller that reports it as a
        // refusal raced with itself, which retrying resolves.
        Rotated::Conflict | Rotated::Done { .. } => Status::aborted(format!(
            "token {id} changed while it was being rotated (rotated, revoked or deleted by \
             another call); retry"
        )),
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::domain::authority::Exceeds;
    use crate::domain::model::TokenState;
    use crate::domain::scope::ScopeSet;

    fn io(kind: std::io::ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(kind, "driver text: host db.internal"))
    }

    #[test]
    fn storage_errors_map_to_what_a_caller_can_act_on() {
        let cases = [
            (
                StoreError::from(io(std::io::ErrorKind::ConnectionRefused)),
                Code::Unavailable,
            ),
            (
                StoreError::from(io(std::io::ErrorKind::TimedOut)),
                Code::Unavailable,
            ),
            (
                StoreError::from(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
            ),
            (StoreError::from(sqlx::Error::RowNotFound), Code::Internal),
            (StoreError::Config("bad url".to_owned()), Code::Internal),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(!status.message().contains("db.internal"), "{status:?}");
            assert!(!status.message().contains("bad url"), "{status:?}");
        }
        let timed_out = Status::from(StoreError::from(io(std::io::ErrorKind::TimedOut)));
        assert_eq!(
            timed_out.message(),
            "storage did not answer in time; retry later"
        );
    }

    #[test]
    fn broken_rules_are_invalid_argument_with_their_reason() {
        let status = Status::from(InvalidArgument("name is required".to_owned()));
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, "name is required")
        );
    }

    #[test]
    fn inactive_credentials_are_unauthenticated_saying_why() {
        for (inactive, words) in [
            (Inactive::Malformed, "malformed"),
            (Inactive::Unknown, "not recognised"),
            (Inactive::Expired, "expired"),
            (Inactive::Revoked, "revoked"),
            (Inactive::AddressNotAllowed, "allowed_cidrs"),
        ] {
            let status = inactive_credential(inactive);
            assert_eq!(status.code(), Code::Unauthenticated);
            assert!(status.message().contains(words), "{}", status.message());
        }
    }

    #[test]
    fn refused_rotations_say_what_to_do() {
        let exceeds = Exceeds {
            lacking_scopes: ScopeSet::parse(["user:write"]).unwrap(),
            networks: None,
            lifetime: None,
            resources: None,
        };
        let cases = [
            (Rotated::NotFound, Code::NotFound, "no token with id"),
            (
                Rotated::Exceeds(exceeds),
                Code::PermissionDenied,
                "lacks scopes: user:write",
            ),
            (
                Rotated::Inactive(TokenState::Revoked),
                Code::FailedPrecondition,
                "is revoked",
            ),
            (Rotated::Conflict, Code::Aborted, "retry"),
        ];
        for (refused, code, words) in cases {
            let status = rotation_refused("Zqz69FDzybpmChQeXByl6E", refused);
            assert_eq!(status.code(), code);
            assert!(status.message().contains(words), "{}", status.message());
        }
    }
}
