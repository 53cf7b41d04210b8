//! How to reach storage: the database URL, whose password never reaches a log.

use std::fmt;

/// How to reach storage. `Debug` hides the URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for logs and messages.
    pub fn redacted(&self) -> String {
        let url = match self.0.split_once('?') {
            // A password may also be a query parameter (`?password=...`).
            Some((base, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .map(|param| match param.split_once('=') {
                        Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                            format!("{key}=***")
                        }
                        _ => param.to_owned(),
                    })
                    .collect();
                format!("{base}?{}", params.join("&"))
            }
            None => self.0.clone(),
        };
        let url = &url;
        let Some(scheme_end) = url.find("://") else {
            return url.clone();
        };
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            return url.clone();
        };
        match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.clone(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_only() {
        let url = DatabaseUrl::new("postgres://patd:s3cret@db.internal:5432/patd?sslmode=require");
        assert_eq!(
            url.redacted(),
            "postgres://patd:***@db.internal:5432/patd?sslmode=require"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        let in_query = DatabaseUrl::new("postgres://patd@db/patd?sslmode=require&password=s3cret");
        assert_eq!(
            in_query.redacted(),
            "postgres://patd@db/patd?sslmode=require&password=***"
        );
        for plain in [
            "postgres://postgres@127.0.0.1/test",
            "sqlite:patd.db",
            "sqlite://patd.db?mode=rwc",
        ] {
            assert_eq!(DatabaseUrl::new(plain).redacted(), plain);
        }
    }
}
