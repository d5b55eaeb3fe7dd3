//! What one request may ask of the server: per-file sizes like the Hub's, and bounds on the
//! work and memory of every request (objects per batch, parts per object and per answer, body
//! sizes, operations per commit, free disk space kept).
//!
//! Every number a client sends is checked against these before the server acts on it, so a
//! hostile or mistaken request costs at most what a legitimate one of the largest allowed
//! shape costs, and is refused with a 4xx (or a 507 when the disk is the limit).

/// Thresholds and limits of one server instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Preupload answers `lfs` for files at least this large (the Hub: 10 MiB).
    pub lfs_threshold: u64,
    /// LFS batch answers multipart for objects larger than this when the client offers it,
    /// basic otherwise.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (grown for objects that would need more than
    /// [`Limits::max_parts_per_object`] parts).
    pub part_size: u64,
    /// Largest object one `basic` transfer (a single PUT) may carry; larger ones need
    /// `multipart`. The Hub, like S3: 5 GB.
    pub max_basic_object: u64,
    /// Largest file accepted at all; larger ones are refused per object in the batch answer.
    /// The Hub: 500 GB.
    pub max_object_size: u64,
    /// Most parts one multipart upload is cut into (S3: 10,000).
    pub max_parts_per_object: u64,
    /// Most part URLs one batch answer hands out across its objects; when a batch names many
    /// large objects their parts grow instead. Bounds the answer's size (~230 bytes a URL) and
    /// the work of signing it.
    pub max_parts_per_batch: u64,
    /// Most objects one LFS batch call, and files one preupload call, may name (413 beyond;
    /// the official client sends at most 256).
    pub max_objects_per_batch: usize,
    /// Largest JSON (or form) request body: batch, preupload, verify, completion, paths-info,
    /// repo and branch management (413 beyond). Commits and uploads stream and have their own.
    pub max_json_body: usize,
    /// Longest accepted NDJSON commit line (413 beyond): a regular file is at most
    /// `lfs_threshold` bytes, 4/3 of that in base64.
    pub max_ndjson_line: usize,
    /// Largest accepted commit body (413 beyond).
    pub max_commit_bytes: u64,
    /// Most operations (added, deleted files and folders) in one commit (413 beyond). The
    /// Hub recommends fewer than 100 files per commit and 100,000 per repo.
    pub max_commit_operations: usize,
    /// Bytes kept free on the store's disk: an upload (LFS object, part, or a commit's inline
    /// files) that would eat into them is refused with 507, before any byte is written.
    /// `None`: free space is not checked (a full disk still answers 507 when a write fails).
    pub min_free_bytes: Option<u64>,
    /// Commits per repo per sliding hour (429 with `Retry-After` beyond); `None` = unlimited.
    /// The real Hub allows 128.
    pub commits_per_hour: Option<u32>,
    /// Lifetime of presigned URLs.
    pub presign_ttl_secs: u64,
    /// Entries per page of tree listings (pages are linked with `Link: rel="next"`).
    pub tree_page_size: usize,
    /// Largest serialized xorb accepted (413 beyond): the protocol's 64 MiB of chunks plus
    /// room for the footer `xet-core` appends.
    pub max_xorb_bytes: u64,
    /// Largest shard accepted (413 beyond).
    pub max_shard_bytes: u64,
    /// Xorb and shard uploads validated at once; more wait before their bodies are read, so
    /// memory stays below this many times [`Limits::max_xorb_bytes`].
    pub xet_uploads_in_flight: usize,
    /// Lifetime of Xet access tokens.
    pub xet_token_ttl_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            lfs_threshold: 10 << 20,
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            max_basic_object: 5_000_000_000,
            max_object_size: 500_000_000_000,
            max_parts_per_object: 10_000,
            max_parts_per_batch: 100_000,
            max_objects_per_batch: 1000,
            max_json_body: 8 << 20,
            max_ndjson_line: 64 << 20,
            max_commit_bytes: 512 << 20,
            max_commit_operations: 100_000,
            min_free_bytes: Some(256 << 20),
            commits_per_hour: None,
            presign_ttl_secs: 3600,
            tree_page_size: 1000,
            max_xorb_bytes: (64 << 20) + (1 << 20),
            max_shard_bytes: 32 << 20,
            xet_uploads_in_flight: 4,
            xet_token_ttl_secs: 3600,
        }
    }
}

impl Limits {
    /// Refuses settings the server cannot work with (a zero part size would divide by zero).
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("part_size", self.part_size),
            ("max_parts_per_object", self.max_parts_per_object),
            ("max_parts_per_batch", self.max_parts_per_batch),
            ("max_objects_per_batch", self.max_objects_per_batch as u64),
            ("max_json_body", self.max_json_body as u64),
            ("max_ndjson_line", self.max_ndjson_line as u64),
            ("max_commit_operations", self.max_commit_operations as u64),
            ("tree_page_size", self.tree_page_size as u64),
            ("xet_uploads_in_flight", self.xet_uploads_in_flight as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("`{name}` must be at least 1"));
        }
        if self.max_basic_object > self.max_object_size {
            return Err("`max_basic_object` must not exceed `max_object_size`".to_owned());
        }
        Ok(())
    }

    /// The part size and part count of a multipart upload of `size` bytes when at most
    /// `max_parts` parts may be handed out for it: the configured part size, grown until the
    /// parts fit.
    pub fn parts_for(&self, size: u64, max_parts: u64) -> (u64, u64) {
        let max_parts = max_parts.clamp(1, self.max_parts_per_object);
        let chunk = self.part_size.max(size.div_ceil(max_parts)).max(1);
        (chunk, size.div_ceil(chunk).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_that_no_object_needs_more_than_allowed() {
        let limits = Limits::default();
        assert_eq!(limits.parts_for(100 << 20, 10_000), (16 << 20, 7));
        let (chunk, parts) = limits.parts_for(500_000_000_000, 10_000);
        assert_eq!((chunk, parts), (50_000_000, 10_000));
        let (chunk, parts) = limits.parts_for(500_000_000_000, 100);
        assert!(parts <= 100 && chunk * parts >= 500_000_000_000);
        assert_eq!(limits.parts_for(u64::MAX, 10_000).1, 10_000);
        assert_eq!(limits.parts_for(0, 10).1, 1);
    }

    #[test]
    fn unusable_settings_are_refused() {
        assert!(Limits::default().check().is_ok());
        let zero_parts = Limits {
            part_size: 0,
            ..Limits::default()
        };
        assert!(zero_parts.check().unwrap_err().contains("part_size"));
    }
}
