//! Resource restrictions: a token limited to named resources (`product:PR-7`,
//! `license:LK-1234`) as well as by scope. Empty means every resource.

use std::fmt;

use crate::domain::error::InvalidArgument;

/// At most this many resources per token.
pub const MAX_RESOURCES: usize = 32;
/// Characters of a resource's id, at most.
pub const MAX_ID_CHARS: usize = 128;
/// Characters of a resource's type, at most.
pub const MAX_TYPE_CHARS: usize = 64;

/// One resource name, `type:id`: the type is a letter then letters and digits,
/// the id 1–128 printable non-space characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource(Box<str>);

impl Resource {
    /// `field` names the request field, for the message (never echoing more than
    /// a prefix of the value).
    pub fn parse(field: &str, text: &str) -> Result<Resource, InvalidArgument> {
        let shown: String = text.chars().take(40).collect();
        let invalid = |why: &str| {
            InvalidArgument(format!(
                "{field}: {shown:?} is not a resource name `type:id` such as product:PR-7 ({why})"
            ))
        };
        let (kind, id) = text.split_once(':').ok_or_else(|| invalid("no `:`"))?;
        let mut kind_chars = kind.chars();
        if !kind_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !kind_chars.all(|c| c.is_ascii_alphanumeric())
        {
            return Err(invalid(
                "the type is a letter followed by letters and digits",
            ));
        }
        if kind.len() > MAX_TYPE_CHARS {
            return Err(invalid("the type is at most 64 characters"));
        }
        let id_chars = id.chars().take(MAX_ID_CHARS + 1).count();
        if id_chars == 0 || id_chars > MAX_ID_CHARS {
            return Err(invalid("the id is 1 to 128 characters"));
        }
        // Printable: no control, format or separator character, no white space.
        if id
            .chars()
            .any(|c| c.is_whitespace() || crate::domain::text::is_forbidden(c) || c.is_control())
        {
            return Err(invalid(
                "the id holds printable characters only, without spaces",
            ));
        }
        Ok(Resource(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The resources a token is restricted to, sorted and without repeats; empty:
/// every resource (no restriction).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceList(Vec<Resource>);

impl ResourceList {
    /// No restriction.
    pub const EVERY: ResourceList = ResourceList(Vec::new());

    pub fn parse<S: AsRef<str>>(field: &str, names: &[S]) -> Result<ResourceList, InvalidArgument> {
        if names.len() > MAX_RESOURCES {
            return Err(InvalidArgument(format!(
                "{field}: at most {MAX_RESOURCES} resources (got {})",
                names.len()
            )));
        }
        let mut resources = names
            .iter()
            .map(|name| Resource::parse(field, name.as_ref().trim()))
            .collect::<Result<Vec<_>, _>>()?;
        resources.sort();
        resources.dedup();
        Ok(ResourceList(resources))
    }

    /// The stored form: space-separated names (ids hold no white space). A
    /// name that does not parse (never written by patd) is dropped; a list
    /// left empty by that would allow everything, so it fails closed to a
    /// resource nothing is named.
    pub fn from_stored(stored: &str) -> ResourceList {
        let mut failed = false;
        let mut resources: Vec<Resource> = stored
            .split_whitespace()
            .filter_map(|name| {
                Resource::parse("resources", name)
                    .inspect_err(|_| failed = true)
                    .ok()
            })
            .collect();
        if failed && resources.is_empty() {
            resources.push(Resource("invalid:stored".into()));
        }
        resources.sort();
        resources.dedup();
        ResourceList(resources)
    }

    pub fn to_stored(&self) -> String {
        self.to_strings().join(" ")
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|r| r.as_str().to_owned()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a token with this restriction may be used on `resource`.
    pub fn allows(&self, resource: &Resource) -> bool {
        self.0.is_empty() || self.0.binary_search(resource).is_ok()
    }

    /// Whether everything `other` may be used on, this may be too: an
    /// unrestricted list covers all; a restricted one covers only non-empty
    /// subsets of itself.
    pub fn covers(&self, other: &ResourceList) -> bool {
        self.0.is_empty() || (!other.0.is_empty() && other.0.iter().all(|r| self.allows(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> ResourceList {
        ResourceList::parse("resources", names).unwrap()
    }

    #[test]
    fn names_are_type_colon_id() {
        for good in [
            "product:PR-7",
            "license:LK-1234",
            "a:b",
            "x9:ä/ö#1",
            "p:a:b",
        ] {
            assert!(Resource::parse("resources", good).is_ok(), "{good}");
        }
        let long_id = format!("p:{}", "x".repeat(129));
        for (bad, why) in [
            ("product", "no `:`"),
            (":x", "a letter"),
            ("9p:x", "a letter"),
            ("pro-duct:x", "a letter"),
            ("product:", "1 to 128"),
            (long_id.as_str(), "1 to 128"),
            ("product:a b", "without spaces"),
            ("product:a\u{202e}b", "without spaces"),
            ("product:a\u{7}", "without spaces"),
        ] {
            let err = Resource::parse("resources", bad).unwrap_err();
            assert!(err.0.contains(why), "{bad:?}: {err}");
            assert!(err.0.starts_with("resources: "), "{err}");
        }
    }

    #[test]
    fn lists_are_bounded_sorted_and_stored_losslessly() {
        let names: Vec<String> = (0..33).map(|n| format!("p:{n}")).collect();
        let err = ResourceList::parse("resources", &names).unwrap_err();
        assert!(err.0.contains("at most 32"), "{err}");
        let parsed = list(&["p:b", " p:a ", "p:b"]);
        assert_eq!(parsed.to_strings(), ["p:a", "p:b"]);
        assert_eq!(ResourceList::from_stored(&parsed.to_stored()), parsed);
        assert!(ResourceList::from_stored("").is_empty());
        // A corrupt stored list restricts, never opens up.
        let corrupt = ResourceList::from_stored("%%%");
        assert!(!corrupt.is_empty());
        assert!(!corrupt.allows(&Resource::parse("r", "p:a").unwrap()));
    }

    #[test]
    fn the_subset_rule_for_resources() {
        let any = ResourceList::default();
        let ab = list(&["p:a", "p:b"]);
        let a = list(&["p:a"]);
        let c = list(&["p:c"]);
        assert!(any.covers(&any) && any.covers(&ab));
        assert!(ab.covers(&a) && ab.covers(&ab));
        assert!(
            !ab.covers(&any),
            "unrestricted is wider than any restriction"
        );
        assert!(!ab.covers(&c) && !a.covers(&ab));
        let pa = Resource::parse("r", "p:a").unwrap();
        let pc = Resource::parse("r", "p:c").unwrap();
        assert!(any.allows(&pc) && ab.allows(&pa) && !ab.allows(&pc));
    }
}
