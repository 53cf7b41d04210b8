//! Who is calling (bearer token -> caller), and the one place where internal
//! errors become `tonic::Status`.

use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::model::{InvalidArgument, Owner};
use crate::scope::{MANAGE_TOKENS, ScopeSet};
use crate::store::StoreError;
use crate::verifier::{Inactive, Lane, Verifier};

/// An authenticated caller of the management API.
#[derive(Debug)]
pub struct Caller {
    pub token_id: String,
    pub owner: Owner,
    pub scopes: ScopeSet,
}

/// Authenticates the `authorization: Bearer <token>` metadata and requires the
/// token-management scope. Messages say what is wrong but never echo the token.
pub async fn authenticate(verifier: &Verifier, metadata: &MetadataMap) -> Result<Caller, Status> {
    let presented = bearer_token(metadata)?;
    let token = match verifier.verify(presented, Lane::Management).await? {
        Ok(token) => token,
        Err(inactive) => {
            tracing::debug!(reason = ?inactive, "caller token inactive");
            return Err(Status::unauthenticated(match inactive {
                Inactive::Malformed => "bearer token is malformed",
                Inactive::Unknown => "bearer token is not recognised",
                Inactive::Expired => "bearer token has expired",
                Inactive::Revoked => "bearer token has been revoked",
            }));
        }
    };
    if !token.scopes.contains(MANAGE_TOKENS) {
        return Err(Status::permission_denied(format!(
            "the caller's token lacks the {MANAGE_TOKENS} scope"
        )));
    }
    Ok(Caller {
        token_id: token.id().to_owned(),
        owner: token.owner(),
        scopes: token.scopes,
    })
}

/// The token of the single `authorization` entry, which must use the Bearer
/// scheme (matched case-insensitively, RFC 6750).
fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let mut values = metadata.get_all("authorization").iter();
    let value = values.next().ok_or_else(|| {
        Status::unauthenticated(
            "missing authorization metadata: send `authorization: Bearer <token>`",
        )
    })?;
    if values.next().is_some() {
        return Err(Status::unauthenticated(
            "more than one authorization entry: send exactly one",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization metadata is not printable ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Status::unauthenticated(
            "authorization must use the Bearer scheme: `authorization: Bearer <token>`",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Status::unauthenticated("bearer token is empty"));
    }
    Ok(token)
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Status {
        // Details stay in the log; callers learn only what they can act on.
        tracing::error!(error = %err, "storage call failed");
        match err {
            StoreError::Unavailable(_) => Status::unavailable(err.public_reason()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(values: &[&str]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for value in values {
            map.append("authorization", value.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_is_trimmed() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc "] {
            assert_eq!(bearer_token(&metadata(&[header])).unwrap(), "abc");
        }
    }

    #[test]
    fn missing_duplicate_and_foreign_schemes_are_unauthenticated() {
        let cases = [
            (metadata(&[]), "missing authorization"),
            (metadata(&["Bearer a", "Bearer b"]), "more than one"),
            (
                metadata(&["Basic YWxhZGRpbjpvcGVuc2VzYW1l"]),
                "Bearer scheme",
            ),
            (metadata(&["Bearer"]), "empty"),
            (metadata(&["Bearer   "]), "empty"),
            (metadata(&["patd_abc"]), "Bearer scheme"),
        ];
        for (map, expected) in cases {
            let status = bearer_token(&map).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains(expected), "{}", status.message());
        }
    }
}
