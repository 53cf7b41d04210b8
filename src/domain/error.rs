//! The error of every domain rule: a request that breaks one.

use std::fmt;

use crate::domain::scope::UnknownScopes;

/// A request that breaks a rule; the text says which, for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidArgument(pub String);

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidArgument {}

impl From<UnknownScopes> for InvalidArgument {
    fn from(unknown: UnknownScopes) -> Self {
        InvalidArgument(unknown.to_string())
    }
}
