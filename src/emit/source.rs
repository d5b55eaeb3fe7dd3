//! A source's data, read through the Hub client at its pinned commit: the three metrics tables
//! and the node ids of the ledger's successful records. Every table row must name a node the
//! ledger records, so a number traces to a record that `verify` checks.

use std::collections::{HashMap, HashSet};

use super::columns::TableKind;
use super::types::Source;
use crate::hub::{HubClient, HubError, Repo, RepoId};
use crate::ledger::tables::{OverlapRow, SpectrumRow, WeightRow};
use crate::ledger::verify::{self, VerifyError, VerifyOptions, VerifyReport};
use crate::spec::RepoType;

/// One row of a metrics table, as JSON (column → value).
pub type Row = serde_json::Map<String, serde_json::Value>;

/// What a source holds at its commit.
#[derive(Debug, Clone, Default)]
pub struct SourceData {
    /// Rows of each table, in file order.
    pub tables: HashMap<TableKind, Vec<Row>>,
    /// Singular values of the spectrum files that spectrum figures draw, by path in the repo.
    pub spectra: HashMap<String, SingularValues>,
}

/// The singular values of one spectrum file (non-increasing).
#[derive(Debug, Clone, Default)]
pub struct SingularValues {
    /// Of `XᵀX`.
    pub raw: Vec<f64>,
    /// Of the centred Gram matrix.
    pub centred: Vec<f64>,
}

impl SourceData {
    /// The rows of `kind`.
    pub fn rows(&self, kind: TableKind) -> &[Row] {
        self.tables.get(&kind).map_or(&[], Vec::as_slice)
    }
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The repo or commit does not exist (or is not visible with this token).
    #[error("`{repo}` has no commit `{commit}`, or the repo does not exist")]
    NotFound {
        /// The repo.
        repo: String,
        /// The commit.
        commit: String,
        /// The Hub's answer.
        #[source]
        source: Box<HubError>,
    },
    /// The Hub refused or failed.
    #[error("cannot read `{path}` of `{repo}`")]
    Hub {
        /// The repo.
        repo: String,
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: Box<HubError>,
    },
    /// A file is not what the ledger format says.
    #[error("`{path}` of `{repo}` is not valid")]
    Invalid {
        /// The repo.
        repo: String,
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A table row names a node the ledger does not record as done.
    #[error("`{path}` of `{repo}` has a row of node `{node}`, which the ledger does not record")]
    Untraced {
        /// The repo.
        repo: String,
        /// The table.
        path: String,
        /// The node id.
        node: String,
    },
    /// The repo id is not a Hub id.
    #[error("`{repo}` is not a repo id")]
    RepoId {
        /// The id.
        repo: String,
        /// Cause.
        #[source]
        source: crate::hub::InvalidRepoId,
    },
}

/// The Hub repo of a source.
pub fn hub_repo(source: &Source) -> Result<Repo, SourceError> {
    let id_text = &source.reference.repo_id;
    let (namespace, name) = id_text.split_once('/').unwrap_or((id_text, ""));
    let id = RepoId::new(namespace, name).map_err(|e| SourceError::RepoId {
        repo: id_text.clone(),
        source: e,
    })?;
    Ok(match source.reference.repo_type {
        Some(RepoType::Model) => Repo::model(id),
        _ => Repo::dataset(id),
    })
}

fn parse_table<T>(repo: &str, kind: TableKind, bytes: &[u8]) -> Result<Vec<Row>, SourceError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let invalid = |source: Box<dyn std::error::Error + Send + Sync>| SourceError::Invalid {
        repo: repo.to_owned(),
        path: kind.path().to_owned(),
        source,
    };
    // Rows are read as the documented types first (unknown shapes refused), then as maps.
    let typed: Vec<T> =
        crate::report::parse_rows(kind.path(), bytes).map_err(|e| invalid(Box::new(e)))?;
    typed
        .iter()
        .map(|row| match serde_json::to_value(row) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Ok(Row::new()),
            Err(e) => Err(invalid(Box::new(e))),
        })
        .collect()
}

/// Why a source was not read: `emit` reads only ledgers that verify.
#[derive(Debug)]
pub enum Refusal {
    /// The repo or commit does not exist.
    Missing(VerifyError),
    /// The verify could not run (the Hub failed).
    Unverifiable(VerifyError),
    /// Its ledger does not verify (shallow); the report says why.
    DoesNotVerify(Box<VerifyReport>),
    /// It verifies, but reading it failed.
    Read(SourceError),
}

/// Verifies `source`'s ledger (shallow) at its commit, then reads it: what every front end of
/// `emit` does with a source.
pub async fn read_verified(client: &HubClient, source: &Source) -> Result<SourceData, Refusal> {
    let repo = hub_repo(source).map_err(Refusal::Read)?;
    match verify::verify(client, &repo, &source.commit, &VerifyOptions::default()).await {
        Ok(report) if report.passed() => {}
        Ok(report) => return Err(Refusal::DoesNotVerify(Box::new(report))),
        Err(e @ VerifyError::NotFound { .. }) => return Err(Refusal::Missing(e)),
        Err(e) => return Err(Refusal::Unverifiable(e)),
    }
    read(client, source).await.map_err(Refusal::Read)
}

/// Reads `source` at its commit through `client`.
pub async fn read(client: &HubClient, source: &Source) -> Result<SourceData, SourceError> {
    let repo = hub_repo(source)?;
    let name = source.display();
    let commit = &source.commit;
    if let Err(e) = client.head(&repo, commit).await {
        return Err(match e {
            HubError::RepoNotFound { .. } | HubError::RevisionNotFound { .. } => {
                SourceError::NotFound {
                    repo: name,
                    commit: commit.clone(),
                    source: Box::new(e),
                }
            }
            other => SourceError::Hub {
                repo: name,
                path: String::new(),
                source: Box::new(other),
            },
        });
    }
    let fetch = |path: &'static str| {
        let (repo, name) = (&repo, &name);
        async move {
            client
                .download_bytes(repo, commit, path)
                .await
                .map_err(|source| SourceError::Hub {
                    repo: name.clone(),
                    path: path.to_owned(),
                    source: Box::new(source),
                })
        }
    };
    let index = fetch(crate::ledger::INDEX_PATH).await?;
    let records = crate::ledger::parse_records(crate::ledger::INDEX_PATH, &index).map_err(|e| {
        SourceError::Invalid {
            repo: name.clone(),
            path: crate::ledger::INDEX_PATH.to_owned(),
            source: Box::new(e),
        }
    })?;
    let done: HashSet<String> = records
        .into_iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.id)
        .collect();
    let mut data = SourceData::default();
    for kind in TableKind::ALL {
        let bytes = match fetch(kind.path()).await {
            Ok(bytes) => bytes,
            // A ledger from before a table existed has no file: no rows.
            Err(SourceError::Hub { source, .. })
                if matches!(*source, HubError::EntryNotFound { .. }) =>
            {
                bytes::Bytes::new()
            }
            Err(e) => return Err(e),
        };
        let rows = match kind {
            TableKind::Spectra => parse_table::<SpectrumRow>(&name, kind, &bytes)?,
            TableKind::Overlaps => parse_table::<OverlapRow>(&name, kind, &bytes)?,
            TableKind::Weights => parse_table::<WeightRow>(&name, kind, &bytes)?,
        };
        if let Some(node) = rows
            .iter()
            .filter_map(|r| r.get("node").and_then(|n| n.as_str()))
            .find(|n| !done.contains(*n))
        {
            return Err(SourceError::Untraced {
                repo: name,
                path: kind.path().to_owned(),
                node: node.to_owned(),
            });
        }
        data.tables.insert(kind, rows);
    }
    Ok(data)
}

/// Reads the spectrum files `files` of `source` at its commit through `client` into `data`.
pub async fn read_spectra(
    client: &HubClient,
    source: &Source,
    files: &std::collections::BTreeSet<String>,
    data: &mut SourceData,
) -> Result<(), SourceError> {
    let repo = hub_repo(source)?;
    let name = source.display();
    for file in files {
        let bytes = client
            .download_bytes(&repo, &source.commit, file)
            .await
            .map_err(|source| SourceError::Hub {
                repo: name.clone(),
                path: file.clone(),
                source: Box::new(source),
            })?;
        let spectrum = crate::analysis::Spectrum::from_safetensors(&bytes).map_err(|e| {
            SourceError::Invalid {
                repo: name.clone(),
                path: file.clone(),
                source: Box::new(e),
            }
        })?;
        data.spectra.insert(
            file.clone(),
            SingularValues {
                raw: spectrum.raw.singular_values,
                centred: spectrum.centred.singular_values,
            },
        );
    }
    Ok(())
}
