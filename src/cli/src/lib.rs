//! # nearcache-cli: the client commands of the `nearcache` binary
//!
//! `nearcache put|get|stat|rm|ls|cluster|stats|top|invalidate|prewarm|jobs|drain` talk to
//! a running node over its public HTTP API (`ls` over its S3-compatible API). They run in
//! a plain process, outside any shard: a blocking HTTP client is enough.
//!
//! Output is for humans by default; `--json` prints one JSON document (or, for `top`, one
//! per refresh) for scripts. Exit codes (see [`exit`]) say what kind of failure happened.
//! The server library does not depend on this crate.

#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    reason = "a client process: no shard thread runs here, blocking file calls are fine"
)]

mod admin;
mod conn;
mod error;
mod jobs;
mod ls;
mod object;
mod top;
mod util;

use clap::Subcommand;

pub use conn::Common;
pub use error::{exit, CliError};

/// The client subcommands (flattened beside `serve` in the binary).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a file (or stdin with `-`); prints the object's id.
    Put(object::PutArgs),
    /// Fetch an object to a file (`-o FILE`) or stdout (`-o -`, the default).
    Get(object::GetArgs),
    /// Show an object's metadata.
    Stat(object::StatArgs),
    /// Delete an object (a tombstone; at level >= 1 the origin copy too).
    Rm(object::RmArgs),
    /// List buckets, or a bucket's keys, through the S3-compatible API.
    Ls(ls::LsArgs),
    /// Cluster members, their states, placement of a key, sync lag.
    Cluster(admin::ClusterArgs),
    /// Per-shard objects, bytes, memory, hits, misses, pending uploads.
    Stats(admin::StatsArgs),
    /// A live view of request rate, hit ratio, latency and pending uploads per node.
    Top(top::TopArgs),
    /// Drop a key (or every key under a prefix) of a bucket from the cache, cluster-wide.
    Invalidate(jobs::InvalidateArgs),
    /// Start a job that reads every object under a prefix into the cache.
    Prewarm(jobs::PrewarmArgs),
    /// List jobs, show one, wait for it, or cancel it.
    Jobs(jobs::JobsArgs),
    /// Take this node out of the cluster gracefully: stop taking keys, hand over, leave.
    Drain(admin::DrainArgs),
}

/// Runs a client command; prints its error (if any) to stderr and returns the exit code.
pub fn run(cmd: Command) -> i32 {
    let result = match cmd {
        Command::Put(a) => object::put(a),
        Command::Get(a) => object::get(a),
        Command::Stat(a) => object::stat(a),
        Command::Rm(a) => object::rm(a),
        Command::Ls(a) => ls::ls(a),
        Command::Cluster(a) => admin::cluster(a),
        Command::Stats(a) => admin::stats(a),
        Command::Top(a) => top::top(a),
        Command::Invalidate(a) => jobs::invalidate(a),
        Command::Prewarm(a) => jobs::prewarm(a),
        Command::Jobs(a) => jobs::jobs(a),
        Command::Drain(a) => admin::drain(a),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("nearcache: {e}");
            e.exit_code()
        }
    }
}
