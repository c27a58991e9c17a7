//! Errors of starting a membership agent. Once running, network trouble is counted
//! in the metrics and logged, never returned: membership heals by itself.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("node id {0:?} is not a ULID")]
    InvalidNodeId(String),
    #[error("invalid membership config: {0}")]
    InvalidConfig(String),
    #[error("binding gossip socket {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("setting up gossip socket")]
    Socket(#[source] io::Error),
    #[error("spawning the membership thread")]
    Spawn(#[source] io::Error),
}
