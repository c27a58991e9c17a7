//! What can go wrong in a client command, and the exit code each kind means.

/// Exit codes: stable, documented in README.md ("Client CLI").
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// Anything else: a local file could not be read or written, an answer made no sense.
    pub const FAILURE: i32 = 1;
    /// Bad command line (clap uses 2 too).
    pub const USAGE: i32 = 2;
    /// The object, job or route does not exist (HTTP 404).
    pub const NOT_FOUND: i32 = 3;
    /// The node refused the request (another 4xx: bad input, precondition, conflict).
    pub const REFUSED: i32 = 4;
    /// The node or its origin failed (5xx), or only part of a cluster-wide action was
    /// done: retrying may help.
    pub const SERVER: i32 = 5;
    /// The node could not be reached (connection refused, timeout, DNS).
    pub const UNREACHABLE: i32 = 6;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments that clap could not catch.
    #[error("{0}")]
    Usage(String),
    /// No connection to the node; retrying later may help.
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The node answered with an error status.
    #[error("{what}: {status} {error}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    Status {
        what: String,
        status: u16,
        error: String,
        detail: String,
    },
    /// The node does not serve this route (an older or newer nearcache).
    #[error(
        "{what}: this node does not serve {route} (404); it may run another version of nearcache"
    )]
    NoRoute { what: String, route: String },
    /// A cluster-wide action reached only some nodes; retrying may help.
    #[error("{0}")]
    Partial(String),
    /// Local trouble (files) or a malformed answer.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::Status { status, .. } => match status {
                404 | 410 => exit::NOT_FOUND,
                400..=499 => exit::REFUSED,
                _ => exit::SERVER,
            },
            CliError::NoRoute { .. } => exit::NOT_FOUND,
            CliError::Partial(_) => exit::SERVER,
            CliError::Other(_) => exit::FAILURE,
        }
    }

    pub fn other(what: impl std::fmt::Display, e: impl std::fmt::Display) -> CliError {
        CliError::Other(format!("{what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        let st = |status| CliError::Status {
            what: "x".into(),
            status,
            error: "e".into(),
            detail: String::new(),
        };
        assert_eq!(st(404).exit_code(), exit::NOT_FOUND);
        assert_eq!(st(412).exit_code(), exit::REFUSED);
        assert_eq!(st(400).exit_code(), exit::REFUSED);
        assert_eq!(st(503).exit_code(), exit::SERVER);
        assert_eq!(st(504).exit_code(), exit::SERVER);
        assert_eq!(
            CliError::Unreachable {
                url: "u".into(),
                detail: "d".into()
            }
            .exit_code(),
            exit::UNREACHABLE
        );
        assert_eq!(st(400).to_string(), "x: 400 e");
    }
}
