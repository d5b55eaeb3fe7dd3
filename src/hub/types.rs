//! Small types shared by the client and the server: repo kinds, repo ids, the token.

use std::fmt;
use std::str::FromStr;

/// The kind of a Hub repo. Decides the API path segment (`models`, `datasets`) and the git-side
/// prefix (none, `datasets/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    /// A model repo.
    Model,
    /// A dataset repo.
    Dataset,
}

impl RepoType {
    /// The plural used in `/api/{plural}/…` paths.
    pub fn api_plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }

    /// The prefix of git-side paths (`resolve`, `.git/info/lfs`): empty or `datasets/`.
    pub fn git_prefix(self) -> &'static str {
        match self {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
        }
    }

    /// The singular used in `/api/repos/create` bodies.
    pub fn singular(self) -> &'static str {
        match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
        }
    }
}

/// A repo id `namespace/name`, checked to be two non-empty segments without `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoId {
    namespace: String,
    name: String,
}

/// A repo id that is not `namespace/name`.
#[derive(Debug, thiserror::Error)]
#[error("invalid repo id `{0}`: expected `namespace/name` with letters, digits, `-`, `_`, `.`")]
pub struct InvalidRepoId(pub String);

impl RepoId {
    /// Builds a repo id from its two parts.
    pub fn new(namespace: &str, name: &str) -> Result<Self, InvalidRepoId> {
        format!("{namespace}/{name}").parse()
    }

    /// The namespace (user or organisation).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The repo name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for RepoId {
    type Err = InvalidRepoId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let ok_segment = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        match text.split_once('/') {
            Some((namespace, name)) if ok_segment(namespace) && ok_segment(name) => Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(InvalidRepoId(text.to_owned())),
        }
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Hub access token. `Debug` and `Display` print a mask, so it cannot leak through logs or
/// error messages; the client sends it only to the configured endpoint's origin.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token string.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that builds the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(****)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_prints_its_secret() {
        let token = Token::new("hf_supersecret");
        assert!(!format!("{token:?} {token}").contains("supersecret"));
    }

    #[test]
    fn repo_ids_parse_strictly() {
        assert_eq!(
            "org/name".parse::<RepoId>().unwrap().to_string(),
            "org/name"
        );
        for bad in ["org", "org/", "/name", "a/b/c", "../x", "a/b c"] {
            assert!(bad.parse::<RepoId>().is_err(), "{bad}");
        }
    }
}
