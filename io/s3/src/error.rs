#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    #[error("object not found in origin")]
    NotFound,
    /// A conditional GET's validator still holds: the stored copy is current (304).
    #[error("object not modified in origin")]
    NotModified,
    /// A range outside the object.
    #[error("requested range not satisfiable")]
    InvalidRange,
    /// The origin refused the credentials or the bucket (retrying will not help).
    #[error("origin denied access: {0}")]
    Denied(String),
    /// Network trouble, timeouts, 5xx, throttling: retrying may help.
    #[error("origin unavailable: {0}")]
    Unavailable(String),
    /// Anything else the origin rejected (4xx other than the above).
    #[error("origin rejected the request: {0}")]
    Rejected(String),
    #[error("origin bridge is shut down")]
    Closed,
    /// An S3 error answer passed through as is (bucket-aware operations of the S3 API):
    /// the client sees the origin's status and code.
    #[error("origin answered {status} {code}: {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
}

impl OriginError {
    /// A bound of [`OriginDeadlines`](crate::OriginDeadlines) ran out: `what` (e.g.
    /// "GetObject k") took longer than `limit`; `bound` names the bound. Retryable.
    pub fn timed_out(what: &str, limit: std::time::Duration, bound: &str) -> OriginError {
        OriginError::Unavailable(format!(
            "{what} timed out after {:.1} s ({bound})",
            limit.as_secs_f64()
        ))
    }

    /// Whether this error is a bound of [`OriginDeadlines`](crate::OriginDeadlines)
    /// running out (see [`OriginError::timed_out`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, OriginError::Unavailable(m) if m.contains(" timed out after "))
    }

    /// Whether retrying the same request later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, OriginError::Unavailable(_))
    }
}
