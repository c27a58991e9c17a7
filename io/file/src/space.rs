//! Free space of a file system (statvfs), for telling a full disk from other failures
//! when a library reports only EIO (LMDB turns a short write into EIO).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Space of the file system holding a path, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Size of the file system.
    pub total: u64,
    /// Free bytes available to unprivileged users (`f_bavail`).
    pub available: u64,
    /// Free bytes including the blocks reserved for root (`f_bfree`).
    pub free: u64,
}

impl FsSpace {
    /// True when fewer than `margin` bytes are free for the calling user (root may use
    /// the reserved blocks, so it counts `free`).
    pub fn is_full(&self, margin: u64) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let left = if root { self.free } else { self.available };
        left < margin
    }
}

/// statvfs(2) of the file system holding `path`.
#[allow(
    clippy::unnecessary_cast,
    reason = "statvfs field widths differ between targets (u32 on some 32-bit ones); not #[expect], which would fail there"
)]
pub fn fs_space(path: &Path) -> io::Result<FsSpace> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `st` points to writable
    // memory of the right type, which statvfs fills completely when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize as u64;
    Ok(FsSpace {
        total: (st.f_blocks as u64).saturating_mul(frsize),
        available: (st.f_bavail as u64).saturating_mul(frsize),
        free: (st.f_bfree as u64).saturating_mul(frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_of_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = fs_space(dir.path()).unwrap();
        assert!(s.total > 0 && s.free <= s.total && s.available <= s.free);
        assert!(!s.is_full(0));
        assert!(s.is_full(u64::MAX));
        let e = fs_space(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
