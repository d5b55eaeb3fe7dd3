//! The scratch repo a rerun writes into, on the embedded hub: one named with `--into` that
//! holds no ledger yet, or a fresh one named after the sweep and the source head.

use super::{ReproduceError, SCRATCH_NAMESPACE, SourceLedger, Target};
use crate::hub::{HubClient, HubError, Repo, RepoId};
use crate::ledger::{LedgerState, StateError};

/// A fresh scratch repo's name: the sweep's name (made safe for a repo id, at most 64
/// characters) and the source head's first 12 hex digits, with `-N` from the second attempt.
pub(super) fn scratch_name(sweep: &str, head: &str, attempt: usize) -> String {
    let sweep: String = sweep
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let head = &head[..head.len().min(12)];
    match attempt {
        0 | 1 => format!("{sweep}-{head}"),
        n => format!("{sweep}-{head}-{n}"),
    }
}

/// The scratch repo: the named one if it holds no ledger, or the first free fresh name.
pub(super) async fn scratch_repo(
    client: &HubClient,
    target: &Target,
    source: &SourceLedger,
) -> Result<Repo, ReproduceError> {
    let named = |name: String| {
        RepoId::new(SCRATCH_NAMESPACE, &name)
            .map(Repo::dataset)
            .map_err(|source| ReproduceError::TargetName { name, source })
    };
    match target {
        Target::Named(id) => {
            let repo = Repo::dataset(id.clone());
            let state = LedgerState::read(client, &repo, "main")
                .await
                .map_err(|source| ReproduceError::Target {
                    repo: format!("local://datasets/{id}"),
                    source,
                })?;
            if state.has_ledger() {
                return Err(ReproduceError::TargetNotEmpty {
                    repo: format!("local://datasets/{id}"),
                });
            }
            Ok(repo)
        }
        Target::Fresh => {
            let mut attempt = 1;
            loop {
                let repo = named(scratch_name(&source.spec.name, &source.head, attempt))?;
                match client.head(&repo, "main").await {
                    Err(HubError::RepoNotFound { .. } | HubError::RevisionNotFound { .. }) => {
                        return Ok(repo);
                    }
                    Err(err) => {
                        return Err(ReproduceError::Target {
                            repo: repo.id.to_string(),
                            source: StateError::Hub(err),
                        });
                    }
                    Ok(_) => attempt += 1,
                }
            }
        }
    }
}
