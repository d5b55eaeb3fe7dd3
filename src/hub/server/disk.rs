//! Free space on the store's filesystem, and making many new objects durable at once.

use std::path::Path;

/// Bytes an unprivileged writer may still use on the filesystem holding `path`; `None` where
/// the platform does not say (then uploads are not checked in advance, and a full disk shows
/// up as a write error, answered 507 all the same).
pub fn available_bytes(path: &Path) -> Option<u64> {
    imp::available_bytes(path)
}

/// Makes everything written so far on the filesystem holding `dir` durable with one call
/// (`syncfs`): a commit of thousands of inline files would otherwise pay two fsyncs per file
/// (~5 ms each on the project's machines). `false` where the platform has no such call; the
/// caller then syncs file by file.
pub fn sync_filesystem(dir: &Path) -> std::io::Result<bool> {
    imp::sync_filesystem(dir)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod imp {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::io::AsRawFd as _;
    use std::path::Path;

    pub fn available_bytes(path: &Path) -> Option<u64> {
        let path = CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `path` is a valid NUL-terminated string and `stats` points to writable memory
        // of the right type; statvfs fills it completely when it returns 0.
        let stats = unsafe {
            if libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) != 0 {
                return None;
            }
            stats.assume_init()
        };
        Some(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    pub fn sync_filesystem(dir: &Path) -> std::io::Result<bool> {
        let folder = std::fs::File::open(dir)?;
        // SAFETY: the descriptor belongs to `folder`, which outlives the call.
        if unsafe { libc::syncfs(folder.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(true)
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use std::path::Path;

    pub fn available_bytes(_path: &Path) -> Option<u64> {
        None
    }

    pub fn sync_filesystem(_dir: &Path) -> std::io::Result<bool> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_temp_folder_has_some_space() {
        let free = super::available_bytes(&std::env::temp_dir()).expect("statvfs works");
        assert!(free > 0);
        assert!(super::sync_filesystem(&std::env::temp_dir()).unwrap());
    }
}
