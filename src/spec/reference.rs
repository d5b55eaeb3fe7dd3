//! One grammar for naming a model or a repo, the same in a spec's `repo:` and `output:` and on
//! every command line that takes a model or a repo (`capture`, `inspect`, `hub download`,
//! `hub import --repo`, `verify`, `report`, `reproduce`):
//!
//! | written | names |
//! | --- | --- |
//! | `local://NS/NAME`, `local://models/NS/NAME`, `local://datasets/NS/NAME` | a repo of the embedded hub (`$HUBSWEEP_HOME/hub`) |
//! | `hf://NS/NAME`, `hf://models/NS/NAME`, `hf://datasets/NS/NAME` | a repo of the Hub at `HF_ENDPOINT` |
//! | `NS/NAME` | a repo of the Hub at `HF_ENDPOINT`, as `from_pretrained` reads it |
//! | `/abs/dir`, `./dir`, `../dir`, `~/dir`, and any other text that is not `NS/NAME` (`dir`, `a/b/c`) | a folder in HF layout |
//!
//! Every repo form takes an optional `@REVISION` (branch, tag or commit sha). A repo whose type is
//! not written has none here: a command decides (a model for `capture`, results — a dataset —
//! for `verify`). `NS/NAME` is a repo even when a folder of that name exists: write `./NS/NAME`
//! for the folder. Parsing reads nothing from disk.

use std::fmt;
use std::path::PathBuf;

use super::types::{HubKind, ModelSource, RepoType};
use super::validate::check_repo_id;

/// A model or repo as written, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A repo on a hub.
    Repo(RepoReference),
    /// A folder on this machine.
    Folder(PathBuf),
}

/// A repo on a hub, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoReference {
    /// `local://` (the embedded hub) or `hf://` and bare ids (the Hub at `HF_ENDPOINT`).
    pub hub: HubKind,
    /// `models/` or `datasets/`, when written.
    pub repo_type: Option<RepoType>,
    /// `NS/NAME`, checked as the Hub checks ids.
    pub repo_id: String,
    /// The revision after `@`, when written.
    pub revision: Option<String>,
}

/// Why a text names no model or repo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing was written.
    #[error("an empty name is neither a folder nor a repo")]
    Empty,
    /// `@` with nothing after it.
    #[error("`{text}` has an empty revision after `@`")]
    EmptyRevision {
        /// The text.
        text: String,
    },
    /// A `local://` or `hf://` URL whose repo id is not `NS/NAME`.
    #[error("`{text}` is not a repo: {reason}")]
    RepoId {
        /// The text.
        text: String,
        /// What is wrong with the id.
        reason: String,
    },
}

/// The forms, for help texts and hints.
pub const FORMS: &str = "`local://NS/NAME`, `hf://NS/NAME`, `hf://datasets/NS/NAME`, `NS/NAME` (each with an optional `@REVISION`), or a folder (`./DIR`, `/abs/DIR`)";

impl Reference {
    /// Parses a model or repo reference (see the module docs for the grammar).
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let url = [("local://", HubKind::Local), ("hf://", HubKind::Hf)]
            .into_iter()
            .find_map(|(scheme, hub)| Some((hub, text.strip_prefix(scheme)?)));
        let Some((hub, rest)) = url.or_else(|| is_bare_repo(text).then_some((HubKind::Hf, text)))
        else {
            return Ok(Reference::Folder(PathBuf::from(text)));
        };
        let (rest, revision) = match rest.split_once('@') {
            Some((_, "")) => {
                return Err(ReferenceError::EmptyRevision {
                    text: text.to_owned(),
                });
            }
            Some((rest, revision)) => (rest, Some(revision.to_owned())),
            None => (rest, None),
        };
        let (repo_type, repo_id) = if let Some(id) = rest.strip_prefix("datasets/") {
            (Some(RepoType::Dataset), id)
        } else if let Some(id) = rest.strip_prefix("models/") {
            (Some(RepoType::Model), id)
        } else {
            (None, rest)
        };
        check_repo_id(repo_id).map_err(|reason| ReferenceError::RepoId {
            text: text.to_owned(),
            reason,
        })?;
        Ok(Reference::Repo(RepoReference {
            hub,
            repo_type,
            repo_id: repo_id.to_owned(),
            revision,
        }))
    }

    /// Where a spec's model comes from. A revision written here is dropped: a spec gives
    /// revisions in `revision:` (its `repo:` may not hold `@`).
    pub fn model_source(&self) -> ModelSource {
        match self {
            Reference::Folder(path) => ModelSource::Path(path.clone()),
            Reference::Repo(repo) => match repo.hub {
                HubKind::Hf => ModelSource::Hub(repo.repo_id.clone()),
                HubKind::Local => ModelSource::Local(repo.repo_id.clone()),
            },
        }
    }
}

/// `NS/NAME`, optionally `@REV`, that is not a path (`./x`, `/x`, `~/x`).
fn is_bare_repo(text: &str) -> bool {
    let id = text.split_once('@').map_or(text, |(id, _)| id);
    !text.starts_with(['.', '/', '~']) && check_repo_id(id).is_ok()
}

impl RepoReference {
    /// The revision, `main` unless written.
    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for RepoReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.hub {
            HubKind::Hf => "hf://",
            HubKind::Local => "local://",
        };
        let kind = match self.repo_type {
            Some(RepoType::Model) => "models/",
            Some(RepoType::Dataset) => "datasets/",
            None => "",
        };
        write!(f, "{scheme}{kind}{}", self.repo_id)?;
        if let Some(revision) = &self.revision {
            write!(f, "@{revision}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(hub: HubKind, repo_type: Option<RepoType>, id: &str, rev: Option<&str>) -> Reference {
        Reference::Repo(RepoReference {
            hub,
            repo_type,
            repo_id: id.to_owned(),
            revision: rev.map(str::to_owned),
        })
    }

    #[test]
    fn every_form_parses() {
        use HubKind::{Hf, Local};
        use RepoType::{Dataset, Model};
        let cases = [
            (
                "local://hubsweep/tiny-llama",
                repo(Local, None, "hubsweep/tiny-llama", None),
            ),
            (
                "local://models/a/b@v1",
                repo(Local, Some(Model), "a/b", Some("v1")),
            ),
            (
                "local://datasets/a/b",
                repo(Local, Some(Dataset), "a/b", None),
            ),
            ("hf://a/b", repo(Hf, None, "a/b", None)),
            (
                "hf://datasets/a/b@main",
                repo(Hf, Some(Dataset), "a/b", Some("main")),
            ),
            ("hf://models/a/b", repo(Hf, Some(Model), "a/b", None)),
            (
                "EleutherAI/pythia-70m@step0",
                repo(Hf, None, "EleutherAI/pythia-70m", Some("step0")),
            ),
            ("./a/b", Reference::Folder("./a/b".into())),
            ("/abs/dir", Reference::Folder("/abs/dir".into())),
            (
                "tests/fixtures/llama_tiny",
                Reference::Folder("tests/fixtures/llama_tiny".into()),
            ),
            ("model-dir", Reference::Folder("model-dir".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(Reference::parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn malformed_urls_are_refused() {
        assert!(matches!(
            Reference::parse("local://only-a-name"),
            Err(ReferenceError::RepoId { .. })
        ));
        assert!(matches!(
            Reference::parse("hf://a/b@"),
            Err(ReferenceError::EmptyRevision { .. })
        ));
        assert_eq!(Reference::parse("  "), Err(ReferenceError::Empty));
    }

    #[test]
    fn display_round_trips() {
        for text in ["local://a/b", "hf://datasets/a/b@v2", "hf://models/a/b"] {
            let Ok(Reference::Repo(repo)) = Reference::parse(text) else {
                panic!("{text}");
            };
            assert_eq!(repo.to_string(), text);
        }
    }
}
