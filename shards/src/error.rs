use std::io;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Only pinned objects (not yet safe in the origin) are left to evict.
    #[error("insufficient storage: need {needed} bytes, {available} could be freed")]
    InsufficientStorage { needed: u64, available: u64 },
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
    #[error("disk I/O: {0}")]
    Io(#[from] io::Error),
    #[error("journal: {0}")]
    Journal(String),
    #[error("shard is shutting down")]
    Closed,
}
