//! The object service's one error type. Cloneable: coalesced requests share one
//! outcome. Each API edge maps it to its own answer, once.

use nearcache_s3::OriginError;
use nearcache_shards::StoreError;

use crate::cluster::ClusterError;
use crate::mesh::MeshError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjectError {
    /// Neither cached nor in the origin (or read-through is off).
    #[error("{0}")]
    NotFound(String),
    /// Deleted through nearcache (a tombstone) at this wall-clock time.
    #[error("{key} was deleted at {at_ms} ms")]
    Deleted { key: String, at_ms: u64 },
    /// If-Match / If-Unmodified-Since (or a write condition) did not hold.
    #[error("a precondition did not hold: {0}")]
    PreconditionFailed(String),
    /// The range starts at or past the end of an object of `size` bytes.
    #[error("the requested range is outside the object's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// The object is larger than the configured limit.
    #[error("object of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    /// The request body ended before its declared length (or its stream broke).
    #[error("received {got} bytes but {expected}; nothing was stored")]
    IncompleteBody { got: u64, expected: String },
    /// The request body arrived too slowly (idle too long, or below the minimum rate);
    /// nothing was stored.
    #[error("{0}; nothing was stored")]
    RequestTimeout(String),
    /// No room: only objects not yet safe in the origin are left, or the disk is full.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The store failed (I/O, journal). A human should look.
    #[error("storage error: {0}")]
    Storage(String),
    /// A stored copy failed verification and was dropped.
    #[error("{0}")]
    Corrupt(String),
    /// A newer write of the key landed first.
    #[error("{0}")]
    Superseded(String),
    /// The origin is unreachable or slow (timeouts, 5xx). Retrying later may help.
    #[error("origin unavailable: {0}")]
    OriginUnavailable(String),
    /// The origin refused our credentials.
    #[error("origin refused access: {0}")]
    OriginDenied(String),
    /// The origin answered with an S3 error.
    #[error("origin answered {status} {code}: {message}")]
    Origin {
        status: u16,
        code: String,
        message: String,
    },
    /// Any other origin failure.
    #[error("origin error: {0}")]
    OriginOther(String),
    /// Stored locally and queued; the origin write failed (it will be retried).
    #[error("stored locally and queued; the origin write failed and will be retried: {0}")]
    OriginWriteFailed(String),
    /// Stored locally and queued; the origin did not take it within the wait bound.
    #[error(
        "stored locally and queued for the origin, which did not take it within {secs} s \
         (it will be retried)"
    )]
    OriginWriteTimedOut { secs: u64 },
    /// The cluster could not take or replicate the request.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Shutting down, or a shard stopped.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Writes and deletes are switched off (the node, or the bucket, is read-only).
    #[error("{0}")]
    ReadOnly(String),
}

impl ObjectError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ObjectError::OriginUnavailable(_)
            | ObjectError::OriginWriteFailed(_)
            | ObjectError::OriginWriteTimedOut { .. }
            | ObjectError::Unavailable(_)
            | ObjectError::Superseded(_) => true,
            ObjectError::Cluster(c) => c.is_retryable(),
            ObjectError::Origin { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

impl From<StoreError> for ObjectError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::InsufficientStorage { .. } => {
                ObjectError::InsufficientStorage(e.to_string())
            }
            StoreError::NotFound => ObjectError::NotFound(e.to_string()),
            StoreError::Superseded => ObjectError::Superseded(e.to_string()),
            StoreError::Closed => ObjectError::Unavailable(e.to_string()),
            StoreError::Corrupt { .. } => ObjectError::Corrupt(e.to_string()),
            StoreError::Io(_) | StoreError::Journal(_) => ObjectError::Storage(e.to_string()),
        }
    }
}

impl From<OriginError> for ObjectError {
    fn from(e: OriginError) -> Self {
        match &e {
            OriginError::NotFound => {
                ObjectError::NotFound("object not found here or in the origin".into())
            }
            // Revalidation handles a 304 itself; reaching here means nobody asked for one.
            OriginError::InvalidRange | OriginError::NotModified => {
                ObjectError::OriginOther(e.to_string())
            }
            // The variants' own texts, without OriginError's prefix (ours says it).
            OriginError::Unavailable(m) => ObjectError::OriginUnavailable(m.clone()),
            OriginError::Closed => {
                ObjectError::OriginUnavailable("the origin bridge is shut down".into())
            }
            OriginError::Denied(m) => ObjectError::OriginDenied(m.clone()),
            OriginError::Rejected(_) => ObjectError::OriginOther(e.to_string()),
            OriginError::Service { status, .. } if *status < 400 => {
                ObjectError::OriginOther(format!("the origin's {status} answer could not be read"))
            }
            OriginError::Service {
                status,
                code,
                message,
                ..
            } => ObjectError::Origin {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
        }
    }
}

impl From<MeshError> for ObjectError {
    fn from(e: MeshError) -> Self {
        ObjectError::Unavailable(e.to_string())
    }
}
