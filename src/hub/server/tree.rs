//! Parsed commits kept in memory, and the sorted listing of each commit's tree that the tree
//! endpoint pages through.
//!
//! A commit record never changes once written (its id is the hash of its content), so a cached
//! copy cannot go stale, whichever process wrote the store. Without the cache every request
//! re-read and re-parsed the whole commit, and every tree page rebuilt the whole listing: for a
//! 100,000-file repo that was ~2.7 s per 1,000-entry page. With it, a page is a binary search
//! to the cursor plus copying up to a page of pre-rendered entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use serde_json::{Value, json};
use sha1::{Digest as _, Sha1};

use super::paths;
use super::store::{CommitRecord, FileEntry, RepoKey};

/// Files held by the cache across all cached commits (about 0.6 KB each with the listing), so
/// a few 100,000-file commits fit and memory stays bounded; the newest commit always stays.
const CACHED_FILES_BUDGET: usize = 250_000;

/// A commit record with its listing, built on first use.
#[derive(Debug)]
pub struct CachedCommit {
    /// The commit as stored.
    pub record: CommitRecord,
    listing: OnceLock<Listing>,
}

impl CachedCommit {
    /// Wraps a record read from the store.
    pub fn new(record: CommitRecord) -> Self {
        Self {
            record,
            listing: OnceLock::new(),
        }
    }

    /// Every file and folder of the tree, sorted by path, rendered once (`xet_hash` names the
    /// Xet file hash of an LFS file's sha256 when it is stored through Xet).
    pub fn listing(&self, xet_hash: impl Fn(&str) -> Option<String>) -> &Listing {
        self.listing
            .get_or_init(|| Listing::build(&self.record, xet_hash))
    }
}

/// Recently used commits by repo and id, within [`CACHED_FILES_BUDGET`].
#[derive(Debug, Default)]
pub struct CommitCache {
    inner: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    entries: HashMap<(RepoKey, String), (Arc<CachedCommit>, u64)>,
    files: usize,
    clock: u64,
}

impl CommitCache {
    /// The cached commit, if present (and marks it used).
    pub fn get(&self, key: &RepoKey, id: &str) -> Option<Arc<CachedCommit>> {
        let mut state = self.inner.lock().expect("commit cache");
        state.clock += 1;
        let now = state.clock;
        let (commit, used) = state.entries.get_mut(&(key.clone(), id.to_owned()))?;
        *used = now;
        Some(commit.clone())
    }

    /// Drops every cached commit of a repo (it was deleted).
    pub fn forget_repo(&self, key: &RepoKey) {
        let mut state = self.inner.lock().expect("commit cache");
        let mut dropped = 0;
        state.entries.retain(|(k, _), (commit, _)| {
            let keep = k != key;
            if !keep {
                dropped += commit.record.files.len();
            }
            keep
        });
        state.files -= dropped;
    }

    /// Adds a commit, evicting the least recently used ones beyond the budget.
    pub fn insert(&self, key: &RepoKey, commit: Arc<CachedCommit>) {
        let mut state = self.inner.lock().expect("commit cache");
        state.clock += 1;
        let now = state.clock;
        let files = commit.record.files.len();
        let id = (key.clone(), commit.record.id.clone());
        if let Some((old, _)) = state.entries.insert(id, (commit, now)) {
            state.files -= old.record.files.len();
        }
        state.files += files;
        while state.files > CACHED_FILES_BUDGET && state.entries.len() > 1 {
            let Some(oldest) = state
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((evicted, _)) = state.entries.remove(&oldest) {
                state.files -= evicted.record.files.len();
            }
        }
    }
}

/// One listed file or folder.
#[derive(Debug)]
struct Listed {
    path: Box<str>,
    /// The entry as the tree endpoint answers it (JSON object text).
    json: Box<str>,
}

/// A commit's files and folders (all depths), sorted by path.
#[derive(Debug)]
pub struct Listing {
    entries: Vec<Listed>,
}

/// One page of a tree listing.
#[derive(Debug)]
pub struct Page<'a> {
    /// Entries as JSON object texts, in path order.
    pub entries: Vec<&'a str>,
    /// The cursor of the next page, when there is one.
    pub next: Option<String>,
}

/// Why a listing request cannot be answered.
#[derive(Debug, PartialEq, Eq)]
pub enum PageError {
    /// The folder has no entries (no such folder, or it names a file).
    NoSuchFolder,
    /// The cursor is not one this server handed out.
    BadCursor,
}

impl Listing {
    fn build(commit: &CommitRecord, xet_hash: impl Fn(&str) -> Option<String>) -> Self {
        let mut entries: Vec<Listed> = Vec::with_capacity(commit.files.len() + 16);
        let mut folders: Vec<&str> = Vec::new();
        for (path, entry) in &commit.files {
            // Every proper prefix ending before a `/` is a folder; files arrive sorted, so a
            // folder is new exactly when it is not the previous file's same-depth folder.
            for (end, _) in path.match_indices('/') {
                folders.push(&path[..end]);
            }
            entries.push(Listed {
                path: path.as_str().into(),
                json: file_json(path, entry, &xet_hash).to_string().into(),
            });
        }
        folders.sort_unstable();
        folders.dedup();
        entries.extend(folders.into_iter().map(|folder| Listed {
            path: folder.into(),
            json: directory_json(&commit.id, folder).to_string().into(),
        }));
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Self { entries }
    }

    /// Index of the first entry whose path is not below `bound`.
    fn seek(&self, bound: &str) -> usize {
        self.entries.partition_point(|e| &*e.path < bound)
    }

    /// The entries under `folder` (the root when empty), all depths or only its children,
    /// after `cursor`, at most `limit` of them.
    pub fn page(
        &self,
        folder: &str,
        recursive: bool,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<'_>, PageError> {
        let prefix = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let first = self.seek(&prefix);
        if !self
            .entries
            .get(first)
            .is_some_and(|e| e.path.starts_with(&prefix))
        {
            return if folder.is_empty() {
                Ok(Page {
                    entries: Vec::new(),
                    next: None,
                })
            } else {
                Err(PageError::NoSuchFolder)
            };
        }
        let mut at = match cursor {
            None => first,
            Some(cursor) => {
                let after = decode_cursor(cursor).ok_or(PageError::BadCursor)?;
                // Strictly after the last path served: seek to the first path above it.
                first.max(self.entries.partition_point(|e| *e.path <= *after))
            }
        };
        let mut entries = Vec::new();
        let mut last: Option<&str> = None;
        while let Some(entry) = self.entries.get(at) {
            if !entry.path.starts_with(&prefix) {
                break;
            }
            let rest = &entry.path[prefix.len()..];
            if !recursive && let Some(slash) = rest.find('/') {
                // Below a child folder: jump past everything under it (`0` follows `/`).
                let child = &entry.path[..prefix.len() + slash];
                at = self.seek(&format!("{child}0"));
                continue;
            }
            if entries.len() == limit {
                return Ok(Page {
                    entries,
                    next: last.map(encode_cursor),
                });
            }
            entries.push(&*entry.json);
            last = Some(&entry.path);
            at += 1;
        }
        Ok(Page {
            entries,
            next: None,
        })
    }
}

/// Cursors are opaque to clients (the Hub's are too): the last path served, base64url.
fn encode_cursor(path: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(path)
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Size of the LFS pointer file the Hub reports for an LFS entry.
pub fn pointer_size(entry: &FileEntry) -> usize {
    paths::lfs_pointer(&entry.sha256, entry.size).len()
}

/// A file as tree and paths-info answer it: an LFS file with its `lfs` object, and its
/// `xetHash` when it is stored through Xet (as the Hub lists it; the official client reads it
/// as `RepoFile.xet_hash`).
pub fn file_json(
    path: &str,
    entry: &FileEntry,
    xet_hash: impl Fn(&str) -> Option<String>,
) -> Value {
    let mut value = json!({"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path});
    if entry.lfs {
        value["lfs"] =
            json!({"oid": entry.sha256, "size": entry.size, "pointerSize": pointer_size(entry)});
        if let Some(hash) = xet_hash(&entry.sha256) {
            value["xetHash"] = json!(hash);
        }
    }
    value
}

/// A folder as tree and paths-info answer it.
pub fn directory_json(commit_id: &str, path: &str) -> Value {
    // Not a real git tree id; stable per commit and folder, which is all clients use it for.
    let oid = hex::encode(
        Sha1::new()
            .chain_update(commit_id)
            .chain_update(path)
            .finalize(),
    );
    json!({"type": "directory", "oid": oid, "size": 0, "path": path})
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn commit(paths: &[&str]) -> CommitRecord {
        let entry = FileEntry {
            size: 1,
            sha256: "0".repeat(64),
            lfs: false,
            git_oid: "0".repeat(40),
        };
        CommitRecord {
            id: "c".repeat(40),
            parents: Vec::new(),
            title: String::new(),
            message: String::new(),
            author: String::new(),
            time: 0,
            files: paths
                .iter()
                .map(|p| ((*p).to_owned(), entry.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn paths_of(page: &Page<'_>) -> Vec<String> {
        page.entries
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["path"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// Follows cursors page by page, as a client does.
    fn all_pages(listing: &Listing, folder: &str, recursive: bool, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = listing
                .page(folder, recursive, cursor.as_deref(), limit)
                .unwrap();
            assert!(page.entries.len() <= limit);
            out.extend(paths_of(&page));
            match page.next {
                Some(next) => cursor = Some(next),
                None => return out,
            }
        }
    }

    #[test]
    fn pages_concatenate_to_the_whole_listing_for_every_page_size() {
        // `a-b` sorts between `a` and `a/…` (`-` < `/`): the non-recursive skip must not lose it.
        let record = commit(&["a-b", "a/x/1", "a/x/2", "a/y", "a0", "b/c/d/e", "top"]);
        let listing = CachedCommit::new(record);
        let listing = listing.listing(|_| None);
        let recursive = [
            "a", "a-b", "a/x", "a/x/1", "a/x/2", "a/y", "a0", "b", "b/c", "b/c/d", "b/c/d/e", "top",
        ];
        let children = ["a", "a-b", "a0", "b", "top"];
        for limit in 1..=13 {
            assert_eq!(all_pages(listing, "", true, limit), recursive, "{limit}");
            assert_eq!(all_pages(listing, "", false, limit), children, "{limit}");
            assert_eq!(all_pages(listing, "a", false, limit), ["a/x", "a/y"]);
            assert_eq!(
                all_pages(listing, "a", true, limit),
                ["a/x", "a/x/1", "a/x/2", "a/y"]
            );
        }
        assert_eq!(
            listing.page("nope", true, None, 5).unwrap_err(),
            PageError::NoSuchFolder
        );
        // A file is not a folder.
        assert_eq!(
            listing.page("top", false, None, 5).unwrap_err(),
            PageError::NoSuchFolder
        );
        assert_eq!(
            listing.page("", true, Some("not base64!"), 5).unwrap_err(),
            PageError::BadCursor
        );
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_keeps_the_newest() {
        let cache = CommitCache::default();
        let key = RepoKey {
            kind: crate::hub::RepoType::Model,
            namespace: "ns".into(),
            name: "n".into(),
        };
        let paths: Vec<String> = (0..CACHED_FILES_BUDGET / 2 + 1)
            .map(|i| format!("f{i}"))
            .collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        for (n, id) in ["1", "2", "3"].iter().enumerate() {
            let mut record = commit(&refs);
            record.id = id.repeat(40);
            cache.insert(&key, Arc::new(CachedCommit::new(record)));
            assert!(cache.get(&key, &id.repeat(40)).is_some(), "{n}");
        }
        // Two halves-plus-one exceed the budget: only the newest remains.
        assert!(cache.get(&key, &"1".repeat(40)).is_none());
        assert!(cache.get(&key, &"2".repeat(40)).is_none());
        assert!(cache.get(&key, &"3".repeat(40)).is_some());
    }
}
