//! Input checks and small encodings the server needs: repo ids, file paths, object ids, git
//! blob ids, `.gitattributes` LFS patterns and timestamps.
//!
//! Everything a client sends in a path or a body passes through here before it touches the
//! store, so that `..`, absolute paths, NUL bytes and the like are refused with a 4xx and never
//! reach the filesystem.

use sha1::{Digest as _, Sha1};

/// Longest accepted repo file path, in bytes (the Hub's own limit is not public; this is
/// generous for model layouts and keeps a hostile path from growing the store's records).
const MAX_FILE_PATH: usize = 1024;
/// Longest accepted repo namespace or name (the Hub allows 96 characters).
const MAX_NAME: usize = 96;

/// Why a repo id or path was refused; turned into a 400 by the handlers.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what} `{value}`: {reason}")]
pub struct InvalidInput {
    /// What was being checked (`repo id`, `path`, `oid`, `revision`).
    pub what: &'static str,
    /// The offending value, with control characters escaped.
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> InvalidInput {
    InvalidInput {
        what,
        value: value.escape_debug().to_string(),
        reason,
    }
}

/// Checks one segment of a repo id (namespace or name): the Hub's alphabet, no leading or
/// trailing `.`/`-`, no `..`, at most 96 characters.
pub fn check_repo_segment(segment: &str) -> Result<(), InvalidInput> {
    let what = "repo id";
    if segment.is_empty() || segment.len() > MAX_NAME {
        return Err(invalid(
            what,
            segment,
            "each part must have 1 to 96 characters",
        ));
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            what,
            segment,
            "only letters, digits, `-`, `_` and `.` are allowed",
        ));
    }
    if segment.contains("..") || segment.contains("--") {
        return Err(invalid(what, segment, "`..` and `--` are not allowed"));
    }
    let first = segment.as_bytes()[0];
    let last = segment.as_bytes()[segment.len() - 1];
    if matches!(first, b'.' | b'-') || matches!(last, b'.' | b'-') {
        return Err(invalid(
            what,
            segment,
            "must not start or end with `.` or `-`",
        ));
    }
    if segment.ends_with(".git") {
        return Err(invalid(what, segment, "must not end with `.git`"));
    }
    Ok(())
}

/// Checks a file path inside a repo: relative, `/`-separated, no empty, `.` or `..` segment,
/// no NUL, no backslash, no control characters, and not inside `.git/`.
pub fn check_file_path(path: &str) -> Result<(), InvalidInput> {
    let what = "path";
    if path.is_empty() || path.len() > MAX_FILE_PATH {
        return Err(invalid(what, path, "must have 1 to 1024 bytes"));
    }
    if path.starts_with('/') {
        return Err(invalid(what, path, "must be relative"));
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(invalid(
            what,
            path,
            "control characters and `\\` are not allowed",
        ));
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(invalid(
                what,
                path,
                "empty, `.` and `..` segments are not allowed",
            ));
        }
    }
    if path == ".git" || path.starts_with(".git/") {
        return Err(invalid(what, path, "`.git` is reserved"));
    }
    Ok(())
}

/// Checks a folder prefix as used by `deletedFolder` and tree listings (a trailing `/` is
/// allowed and removed).
pub fn normalize_folder(path: &str) -> Result<String, InvalidInput> {
    let trimmed = path.trim_end_matches('/');
    check_file_path(trimmed)?;
    Ok(trimmed.to_owned())
}

/// Whether `oid` is a sha256 in lowercase hex, the only LFS object id the server accepts.
pub fn is_sha256_hex(oid: &str) -> bool {
    oid.len() == 64 && oid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `id` looks like a full commit id (40 lowercase hex characters).
pub fn is_commit_id(id: &str) -> bool {
    id.len() == 40 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The git blob id of `content` (`sha1("blob <len>\0" + content)`): what the Hub reports as a
/// regular file's `oid`/`ETag`, and what the Python client compares to skip unchanged files.
pub fn git_blob_id(content: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", content.len()).as_bytes());
    hasher.update(content);
    hex::encode(hasher.finalize())
}

/// The git-LFS pointer file for an object; its git blob id is an LFS file's top-level `oid`.
pub fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

/// The `.gitattributes` a new repo starts with: the usual binary and weight formats go to LFS.
pub const DEFAULT_GITATTRIBUTES: &str = "\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
";

/// The patterns of a `.gitattributes` text that carry `filter=lfs`.
pub fn lfs_patterns(gitattributes: &str) -> Vec<String> {
    gitattributes
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let pattern = words.next()?;
            if pattern.starts_with('#') {
                return None;
            }
            words
                .any(|attr| attr == "filter=lfs")
                .then(|| pattern.to_owned())
        })
        .collect()
}

/// Whether `path` matches a `.gitattributes` pattern: a pattern without `/` matches the file
/// name at any depth, one with `/` matches the whole path (git's rule), `**` spans folders.
pub fn gitattributes_match(pattern: &str, path: &str) -> bool {
    let pattern = pattern.strip_prefix('/').unwrap_or(pattern);
    if pattern.contains('/') {
        glob_match(pattern.as_bytes(), path.as_bytes(), true)
    } else {
        let name = path.rsplit('/').next().unwrap_or(path);
        glob_match(pattern.as_bytes(), name.as_bytes(), false)
    }
}

/// Minimal glob: `*` (not across `/` when `slash_sensitive`), `**` (across `/`), `?`.
fn glob_match(pattern: &[u8], text: &[u8], slash_sensitive: bool) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => {
            let (rest, crosses) = match rest.split_first() {
                Some((b'*', after)) => (after.strip_prefix(b"/").unwrap_or(after), true),
                _ => (rest, !slash_sensitive),
            };
            (0..=text.len()).any(|skip| {
                let skipped = &text[..skip];
                (crosses || !skipped.contains(&b'/'))
                    && glob_match(rest, &text[skip..], slash_sensitive)
            })
        }
        Some((b'?', rest)) => text
            .split_first()
            .is_some_and(|(c, tail)| *c != b'/' && glob_match(rest, tail, slash_sensitive)),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t, tail)| t == c && glob_match(rest, tail, slash_sensitive)),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.000Z` for a Unix time in seconds (the Hub's timestamp shape, which the
/// Python client parses).
pub fn iso8601(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "a//b",
            "a/./b",
            "a\0b",
            "a\\b",
            ".git/config",
            "a/",
        ] {
            assert!(check_file_path(bad).is_err(), "{bad:?} should be refused");
        }
        for good in [
            "a.txt",
            "dir/sub/model.safetensors",
            ".gitattributes",
            "a..b",
        ] {
            assert!(check_file_path(good).is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn hostile_repo_segments_are_refused() {
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "a\0",
            "x.git",
            "-a",
            "a--b",
            &"x".repeat(97),
        ] {
            assert!(
                check_repo_segment(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(check_repo_segment("pythia-70m_v1.0").is_ok());
    }

    #[test]
    fn git_blob_id_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(git_blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn gitattributes_patterns_match_like_git() {
        assert!(gitattributes_match("*.safetensors", "acts/L1.safetensors"));
        assert!(gitattributes_match(
            "*tfevents*",
            "runs/events.out.tfevents.1"
        ));
        assert!(!gitattributes_match("*.bin", "model.binx"));
        assert!(gitattributes_match("saved_model/**/*", "saved_model/a/b/c"));
        assert!(!gitattributes_match("data/*.txt", "data/sub/x.txt"));
        assert!(gitattributes_match("data/*.txt", "data/x.txt"));
        assert_eq!(
            lfs_patterns("*.pt filter=lfs diff=lfs\n# c\n*.md text\n"),
            vec!["*.pt".to_owned()]
        );
    }

    proptest::proptest! {
        /// Whatever a client sends, an accepted path joined under a root stays under it.
        #[test]
        fn accepted_paths_never_escape_the_root(path in "[a-z./\\\\\\x00-]{0,12}") {
            if check_file_path(&path).is_ok() {
                let root = std::path::Path::new("/root/store");
                let joined = root.join(&path);
                proptest::prop_assert!(joined.starts_with(root));
                proptest::prop_assert!(joined.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir)));
                proptest::prop_assert!(!path.contains('\0'));
            }
        }
    }

    #[test]
    fn timestamps_are_calendar_correct() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_800_000_000), "2027-01-15T08:00:00.000Z");
    }
}
