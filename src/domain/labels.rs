//! What a token is for: a description and labels (`team=payments`), and the
//! label selectors that find tokens by them.

use std::collections::BTreeMap;

use crate::domain::error::InvalidArgument;
use crate::domain::text::validate_filter;

pub const MAX_DESCRIPTION_CHARS: usize = 500;
pub const MAX_LABELS: usize = 16;
pub const MAX_KEY_CHARS: usize = 63;
pub const MAX_VALUE_CHARS: usize = 255;
/// Terms in one selector, at most (more could never all match 16 labels).
pub const MAX_SELECTOR_TERMS: usize = MAX_LABELS;

/// An optional description: trimmed, at most 500 characters, the rules of a name.
pub fn validate_description(value: &str) -> Result<String, InvalidArgument> {
    Ok(validate_filter("description", value, MAX_DESCRIPTION_CHARS)?.unwrap_or_default())
}

/// `[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?`
pub fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let inner = |b: &u8| edge(b) || matches!(b, b'.' | b'_' | b'/' | b'-');
    !bytes.is_empty()
        && bytes.len() <= MAX_KEY_CHARS
        && edge(&bytes[0])
        && edge(&bytes[bytes.len() - 1])
        && bytes.iter().all(inner)
}

fn check_key(field: &str, key: &str) -> Result<(), InvalidArgument> {
    if is_valid_key(key) {
        return Ok(());
    }
    let shown: String = key.chars().take(70).collect();
    Err(InvalidArgument(format!(
        "{field}: key {shown:?} must be 1 to 63 lowercase letters, digits, '.', '_', '/' or '-', \
         starting and ending with a letter or digit"
    )))
}

/// A token's labels, by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// At most 16 entries; keys as [`is_valid_key`]; values trimmed, at most 255
    /// characters, the rules of a name (an empty value is allowed).
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Labels, InvalidArgument> {
        let mut labels = BTreeMap::new();
        for (key, value) in entries {
            if labels.len() == MAX_LABELS {
                return Err(InvalidArgument(format!(
                    "labels: at most {MAX_LABELS} entries"
                )));
            }
            check_key("labels", key)?;
            let value = validate_filter(&format!("labels[{key}]"), value, MAX_VALUE_CHARS)?
                .unwrap_or_default();
            labels.insert(key.clone(), value);
        }
        Ok(Labels(labels))
    }

    /// The stored form: a JSON object. Unreadable stored text (never written by
    /// patd) reads as no labels.
    pub fn from_stored(stored: &str) -> Labels {
        if stored.is_empty() {
            return Labels::default();
        }
        Labels(serde_json::from_str(stored).unwrap_or_default())
    }

    pub fn to_stored(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        serde_json::to_string(&self.0).expect("a string map serialises")
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_map<M: FromIterator<(String, String)>>(&self) -> M {
        self.0.clone().into_iter().collect()
    }
}

/// One term of a selector: a key with a value, or (`None`) a key alone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelTerm {
    pub key: String,
    pub value: Option<String>,
}

/// `team=payments,env=prod,owner`: every term must hold (`key` alone: the label
/// is present with any value). Empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector(pub Vec<LabelTerm>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, InvalidArgument> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(LabelSelector::default());
        }
        let mut terms = Vec::new();
        for term in text.split(',') {
            if terms.len() == MAX_SELECTOR_TERMS {
                return Err(InvalidArgument(format!(
                    "label_selector: at most {MAX_SELECTOR_TERMS} terms"
                )));
            }
            let term = term.trim();
            if term.is_empty() {
                return Err(InvalidArgument(
                    "label_selector: empty term (write key=value or key, separated by single commas)"
                        .to_owned(),
                ));
            }
            let (key, value) = match term.split_once('=') {
                None => (term, None),
                Some((key, value)) => {
                    // `key==value` as in Kubernetes; `!=`, `in (...)` are not supported.
                    let value = value.strip_prefix('=').unwrap_or(value);
                    if key.ends_with('!') {
                        return Err(InvalidArgument(format!(
                            "label_selector: {:?} is not key=value or key (only equality and \
                             presence are supported)",
                            term.chars().take(70).collect::<String>()
                        )));
                    }
                    let value = validate_filter("label_selector value", value, MAX_VALUE_CHARS)?
                        .unwrap_or_default();
                    (key.trim(), Some(value))
                }
            };
            check_key("label_selector", key)?;
            terms.push(LabelTerm {
                key: key.to_owned(),
                value,
            });
        }
        Ok(LabelSelector(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` satisfy every term (the store's query must agree).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0
            .iter()
            .all(|term| match (labels.0.get(&term.key), &term.value) {
                (Some(_), None) => true,
                (Some(have), Some(want)) => have == want,
                (None, _) => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(entries: &[(&str, &str)]) -> Result<Labels, InvalidArgument> {
        let owned: Vec<(String, String)> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Labels::parse(owned.iter().map(|(k, v)| (k, v)))
    }

    #[test]
    fn keys_follow_the_pattern() {
        for good in ["a", "team", "k8s.io/app", "a-b_c.d", "0", &"a".repeat(63)] {
            assert!(is_valid_key(good), "{good}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a b",
            "é",
            "a=b",
            &"a".repeat(64),
            "a,b",
        ] {
            assert!(!is_valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn labels_are_bounded_and_round_trip() {
        let parsed = labels(&[("team", " payments "), ("env", ""), ("t\"x", "1")]);
        assert!(parsed.unwrap_err().0.contains("key \"t\\\"x\""));
        let parsed = labels(&[("team", " payments "), ("env", "")]).unwrap();
        assert_eq!(
            parsed.iter().collect::<Vec<_>>(),
            [("env", ""), ("team", "payments")]
        );
        assert_eq!(Labels::from_stored(&parsed.to_stored()), parsed);
        assert_eq!(Labels::default().to_stored(), "");
        let many: Vec<(String, &str)> = (0..17).map(|n| (format!("k{n}"), "v")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert!(labels(&many).unwrap_err().0.contains("at most 16"));
        let long = "v".repeat(256);
        assert!(labels(&[("k", &long)]).unwrap_err().0.contains("255"));
        let err = labels(&[("k", "a\u{202e}b")]).unwrap_err();
        assert!(
            err.0.contains("labels[k]") && err.0.contains("U+202E"),
            "{err}"
        );
    }

    #[test]
    fn selectors_parse_and_match() {
        let have = labels(&[("team", "payments"), ("env", "prod")]).unwrap();
        for (selector, expected) in [
            ("", true),
            ("team=payments", true),
            ("team==payments", true),
            (" team = payments , env ", true),
            ("team=payments,env=prod", true),
            ("team=payments,env=dev", false),
            ("owner", false),
            ("team=", false),
            ("team=pay=ments", false),
        ] {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(&have), expected, "{selector:?}");
        }
        for bad in [
            ",", "a,", ",a", "a,,b", "=x", "A=b", "a!=b", "a in (b)", "a=\u{7}",
        ] {
            let err = LabelSelector::parse(bad).unwrap_err();
            assert!(err.0.starts_with("label_selector"), "{bad:?}: {err}");
        }
        let long: Vec<String> = (0..17).map(|n| format!("k{n}")).collect();
        assert!(LabelSelector::parse(&long.join(",")).is_err());
    }
}
