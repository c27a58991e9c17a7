use std::fmt;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No room for the write: `reason` says whether the shard's configured capacity is
    /// taken by pinned objects (not yet safe in the origin) and writes in progress, or the
    /// file system itself is full. Either way nothing already stored was lost.
    #[error("insufficient storage: {reason}: need {needed} bytes, {available} could be freed")]
    InsufficientStorage {
        needed: u64,
        available: u64,
        reason: NoSpaceReason,
    },
    /// A stored structure failed verification; the object has been dropped.
    #[error("corrupt {what} for key {key:?}: expected {expected}, found {actual}")]
    Corrupt {
        key: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// A newer write or delete of the key landed while this write was in progress.
    #[error("superseded by a newer version of the key")]
    Superseded,
    #[error("not found")]
    NotFound,
    /// Any I/O error other than a full file system (ENOSPC and EDQUOT become
    /// [`StoreError::InsufficientStorage`] through the `From` conversion).
    #[error("disk I/O: {0}")]
    Io(io::Error),
    #[error("journal: {0}")]
    Journal(String),
    #[error("shard is shutting down")]
    Closed,
}

/// Why a [`StoreError::InsufficientStorage`] was returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoSpaceReason {
    /// The shard's configured disk capacity: only pinned objects (not yet in the origin)
    /// and other writes' reservations are left, or the declared size exceeds it.
    ShardCapacity,
    /// The file system refused to store more (ENOSPC or EDQUOT) while doing `during`
    /// ("writing an object file", "syncing an object file", "committing the journal", ...).
    /// The failed operation was rolled back; what was stored before is intact.
    FileSystemFull {
        during: &'static str,
        os_error: String,
    },
}

impl fmt::Display for NoSpaceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoSpaceReason::ShardCapacity => {
                f.write_str("shard capacity taken by pinned objects and writes in progress")
            }
            NoSpaceReason::FileSystemFull { during, os_error } => {
                write!(f, "the file system is full ({os_error}) while {during}")
            }
        }
    }
}

/// True for the errors of a full file system: ENOSPC (no space) and EDQUOT (quota).
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_consts::ENOSPC | libc_consts::EDQUOT)
    ) || e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
}

/// Linux errno values (the crate does not depend on libc).
mod libc_consts {
    pub const ENOSPC: i32 = 28;
    pub const EDQUOT: i32 = 122;
}

impl StoreError {
    /// `e` as a store error: a full file system becomes `InsufficientStorage` (reason
    /// [`NoSpaceReason::FileSystemFull`], `needed` bytes), anything else `Io`.
    pub(crate) fn from_io(e: io::Error, during: &'static str, needed: u64) -> StoreError {
        if is_no_space(&e) {
            StoreError::InsufficientStorage {
                needed,
                available: 0,
                reason: NoSpaceReason::FileSystemFull {
                    during,
                    os_error: e.to_string(),
                },
            }
        } else {
            StoreError::Io(e)
        }
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> StoreError {
        StoreError::from_io(e, "writing to disk", 0)
    }
}
