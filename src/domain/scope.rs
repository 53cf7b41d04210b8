//! The scope catalog from the product spec, parsing (with aliases) and set algebra.
//!
//! A set of scopes is a bitmask over the catalog: subset checks on the hot path are
//! one AND, and the catalog order is the order in which scopes are always returned.

use std::fmt;

pub struct ScopeDef {
    pub name: &'static str,
    pub description: &'static str,
}

const fn scope(name: &'static str, description: &'static str) -> ScopeDef {
    ScopeDef { name, description }
}

/// The 29 scopes of the spec's table, in its order. The spec misspells
/// `licenseTemplate:write`; the canonical name is spelled right (see [`ALIASES`]).
pub const CATALOG: [ScopeDef; 29] = [
    scope("account:read", "Read-only access to the account details."),
    scope("account:write", "Update and delete account."),
    scope(
        "activation:read",
        "Read-only access to all the license activations.",
    ),
    scope("analytics:read", "Read-only access to analytics."),
    scope("eventLog:read", "Read-only access to event logs."),
    scope("invoice:read", "Read-only access to all the invoices."),
    scope("license:read", "Read-only access to all the licenses."),
    scope("license:write", "Create, update and delete licenses."),
    scope(
        "licenseTemplate:read",
        "Read-only access to all the license templates.",
    ),
    scope(
        "licenseTemplate:write",
        "Create, update and delete license templates.",
    ),
    scope(
        "paymentMethod:read",
        "Read-only access to all the credit cards.",
    ),
    scope(
        "paymentMethod:write",
        "Create, update and delete credit cards.",
    ),
    scope(
        "personalAccessToken:write",
        "Create, revoke and delete personal access tokens.",
    ),
    scope(
        "product:read",
        "Read-only access to all the products and related policies.",
    ),
    scope("product:write", "Create, update and delete products."),
    scope("release:read", "Read-only access to all the releases."),
    scope(
        "release:write",
        "Create, update, publish and delete releases.",
    ),
    scope("role:read", "Read-only access to all the roles."),
    scope("role:write", "Create, update and delete roles."),
    scope("tag:read", "Read-only access to all the tags."),
    scope("tag:write", "Create, update and delete tags."),
    scope(
        "trialActivation:read",
        "Read-only access to all the trial activations.",
    ),
    scope(
        "trialActivation:write",
        "Extend and delete trial activations.",
    ),
    scope(
        "trialPolicy:read",
        "Read-only access to all the trial policies.",
    ),
    scope(
        "trialPolicy:write",
        "Create, update and delete trial policies.",
    ),
    scope("user:read", "Read-only access to all the users."),
    scope(
        "user:write",
        "Create, update and delete users. Generate password reset tokens for users with USER role.",
    ),
    scope("webhook:read", "Read-only access to all the webhooks."),
    scope("webhook:write", "Create, update and delete webhooks."),
];

/// Accepted spellings that stand for a canonical name: (alias, canonical).
pub const ALIASES: [(&str, &str); 1] = [("licenseTemaplate:write", "licenseTemplate:write")];

/// The scope a caller needs to manage tokens.
pub const MANAGE_TOKENS: &str = "personalAccessToken:write";
/// The scope that reads the audit trail (ListTokenEvents).
pub const READ_EVENTS: &str = "eventLog:read";

/// A set of catalog scopes.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ScopeSet(u32);

/// Scope names that are not in the catalog, as given (bounded for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownScopes(pub Vec<String>);

impl fmt::Display for UnknownScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 5;
        let names: Vec<String> = self.0.iter().take(SHOWN).map(|n| quoted(n)).collect();
        write!(f, "unknown scope {}", names.join(", "))?;
        if self.0.len() > SHOWN {
            write!(f, " and {} more", self.0.len() - SHOWN)?;
        }
        write!(f, " (ListScopes lists the catalog)")
    }
}

impl std::error::Error for UnknownScopes {}

/// Quotes user input for an error message, cut to a readable length. Input that
/// cannot be a scope name (every scope has a `:`) is not echoed: it may be a token
/// sent in the wrong field.
fn quoted(input: &str) -> String {
    const MAX_CHARS: usize = 40;
    if !input.contains(':') {
        return "(a name without ':')".to_owned();
    }
    let mut shown: String = input.chars().take(MAX_CHARS).collect();
    if shown.len() < input.len() {
        shown.push_str("...");
    }
    format!("{shown:?}")
}

/// The catalog index of a name or alias.
fn index_of(name: &str) -> Option<usize> {
    let canonical = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, canonical)| canonical);
    CATALOG.iter().position(|def| def.name == canonical)
}

impl ScopeSet {
    pub const EMPTY: ScopeSet = ScopeSet(0);
    /// Every scope in the catalog.
    pub const ALL: ScopeSet = ScopeSet((1 << CATALOG.len()) - 1);

    /// The set of the given names; aliases resolve to their canonical scope and
    /// duplicates collapse. Every unknown name is reported.
    pub fn parse<I, S>(names: I) -> Result<ScopeSet, UnknownScopes>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = ScopeSet::EMPTY;
        let mut unknown = Vec::new();
        for name in names {
            let name = name.as_ref().trim();
            match index_of(name) {
                Some(index) => set.0 |= 1 << index,
                None => unknown.push(name.to_owned()),
            }
        }
        if unknown.is_empty() {
            Ok(set)
        } else {
            Err(UnknownScopes(unknown))
        }
    }

    /// Parses the space-separated canonical form kept in storage. Names that are no
    /// longer in the catalog grant nothing.
    pub fn from_stored(stored: &str) -> ScopeSet {
        let mut set = ScopeSet::EMPTY;
        for index in stored.split(' ').filter_map(index_of) {
            set.0 |= 1 << index;
        }
        set
    }

    /// The space-separated canonical form kept in storage.
    pub fn to_stored(self) -> String {
        self.names().collect::<Vec<_>>().join(" ")
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, name: &str) -> bool {
        index_of(name).is_some_and(|index| self.0 & (1 << index) != 0)
    }

    /// The scopes of `self` that `other` lacks.
    pub fn minus(self, other: ScopeSet) -> ScopeSet {
        ScopeSet(self.0 & !other.0)
    }

    /// Canonical names in catalog order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        CATALOG
            .iter()
            .enumerate()
            .filter(move |(index, _)| self.0 & (1 << index) != 0)
            .map(|(_, def)| def.name)
    }

    pub fn to_names(self) -> Vec<String> {
        self.names().map(str::to_owned).collect()
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_29_distinct_names() {
        let mut names: Vec<_> = CATALOG.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 29);
        assert!(u32::BITS as usize >= CATALOG.len());
    }

    #[test]
    fn alias_resolves_to_canonical_name() {
        let set = ScopeSet::parse(["licenseTemaplate:write"]).unwrap();
        assert_eq!(set.to_names(), vec!["licenseTemplate:write"]);
        assert_eq!(set, ScopeSet::parse(["licenseTemplate:write"]).unwrap());
        assert!(set.contains("licenseTemaplate:write"));
    }

    #[test]
    fn duplicates_collapse_and_order_is_catalog_order() {
        let set = ScopeSet::parse(["webhook:read", "account:read", "webhook:read"]).unwrap();
        assert_eq!(set.to_names(), vec!["account:read", "webhook:read"]);
    }

    #[test]
    fn unknown_names_are_all_reported() {
        let err = ScopeSet::parse(["license:read", "nope", "Account:Read"]).unwrap_err();
        assert_eq!(err.0, vec!["nope", "Account:Read"]);
        let message = err.to_string();
        assert!(message.contains("(a name without ':')") && message.contains("\"Account:Read\""));
    }

    #[test]
    fn names_that_cannot_be_scopes_are_not_echoed() {
        let secret = "patd_DZhsW6sA9cWBUSfpcfShwPYjqCTy2guQVdgt6mF9aPj4BxweA";
        let message = ScopeSet::parse([secret]).unwrap_err().to_string();
        assert!(!message.contains("DZhsW6"), "{message}");
    }

    #[test]
    fn message_for_many_unknown_names_is_bounded() {
        let names: Vec<String> = (0..10_000)
            .map(|i| format!("x{i}{}", "y".repeat(500)))
            .collect();
        let message = ScopeSet::parse(&names).unwrap_err().to_string();
        assert!(message.len() < 1_000, "{} bytes", message.len());
        assert!(message.contains("and 9995 more"));
    }

    #[test]
    fn stored_form_round_trips_and_ignores_retired_names() {
        let set = ScopeSet::parse(["user:write", "account:read", "tag:read"]).unwrap();
        assert_eq!(set.to_stored(), "account:read tag:read user:write");
        assert_eq!(ScopeSet::from_stored(&set.to_stored()), set);
        assert_eq!(
            ScopeSet::from_stored("retired:scope tag:read"),
            ScopeSet::parse(["tag:read"]).unwrap()
        );
        assert_eq!(ScopeSet::from_stored(""), ScopeSet::EMPTY);
    }

    #[test]
    fn minus_lists_what_the_other_set_lacks() {
        let wanted = ScopeSet::parse(["license:read", "license:write", "tag:read"]).unwrap();
        let held = ScopeSet::parse(["license:read", "user:read"]).unwrap();
        assert_eq!(
            wanted.minus(held).to_names(),
            vec!["license:write", "tag:read"]
        );
        assert!(held.minus(held).is_empty());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn parsing_never_panics_and_messages_stay_short(names in prop::collection::vec(".{0,200}", 0..200)) {
                match ScopeSet::parse(&names) {
                    Ok(set) => prop_assert!(set.names().all(|name| CATALOG.iter().any(|d| d.name == name))),
                    Err(unknown) => prop_assert!(unknown.to_string().len() < 1_000),
                }
            }

            #[test]
            fn stored_form_round_trips(bits in 0u32..(1 << 29)) {
                let set = ScopeSet(bits);
                prop_assert_eq!(ScopeSet::from_stored(&set.to_stored()), set);
            }
        }
    }
}
