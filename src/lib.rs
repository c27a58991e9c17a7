//! # nearcache: the server
//!
//! Process assembly, configuration, the HTTP APIs, the object service and the cluster
//! layer. The engine lives in `nearcache-shards`, what talks to the outside below the
//! server (files, S3, gossip) in `io/`.
//!
//! Goals: one API-neutral object service under every API edge; no locks and no blocking
//! calls on the shard threads' data path; every failure answered with a clear error,
//! never a panic or a hang; nothing acknowledged lost. Non-goals: being a general S3
//! server (objects live in the origin; nearcache caches them and queues writes to it),
//! and TLS termination (not yet).
//!
//! ## Layers
//!
//! Imports point one way: [`server`] (process assembly) → [`api`] (native, admin, S3,
//! node-to-node edges) → [`ctx`] (the per-shard context) → [`object`] (the object
//! service) → [`cluster`] (placement, peers, anti-entropy) → [`mesh`] (cross-shard work)
//! → the store, origin and membership crates. [`metrics`], [`history`], [`http_util`] and
//! [`body`] import nothing of the server.
//!
//! ## Thread model
//!
//! ```text
//!                 clients (HTTP/1.1, h2c)
//!                          |
//!            SO_REUSEPORT: the kernel spreads connections
//!          +---------------+---------------+
//!          v                               v
//!  +------------------+  channel jobs  +------------------+
//!  | shard-0 (core 0) | <------------> | shard-1 (core 1) |   one monoio executor
//!  |  hyper conns     |  (key owned    |  hyper conns     |   per core, pinned;
//!  |  Shard: index,   |   elsewhere)   |  Shard: index,   |   no locks on the
//!  |  disk, memory,   |                |  disk, memory,   |   data path
//!  |  uploader        |                |  uploader        |
//!  +--+----------+----+                +--+----------+----+
//!     |          | journal batches        |          |
//!     |          v                        |          v
//!     |   journal-0 thread (LMDB,         |   journal-1 thread
//!     |   group commit, fsync)            |
//!     |                                   |
//!     +------------ tokio mpsc -----------+
//!                        v
//!              s3-bridge thread(s): tokio current-thread runtime,
//!              aws-sdk-s3 (or the embedded local origin); bodies
//!              stream through bounded channels
//! ```
//!
//! A request is parsed on the shard that accepted it. If another shard owns the key
//! (xxh3 of the key modulo the shard count), the typed request moves there as a job over
//! an unbounded channel; the response (its body a `Send` channel) comes back over a
//! oneshot. Each shard runs a background uploader that drains its journal's pending
//! origin writes, and owner-side coalescing makes concurrent misses share one origin GET.
//!
//! In a cluster ([`cluster`]), a `membership` thread runs SWIM gossip, every shard also
//! serves node-to-node HTTP/2 on the private address, proxies requests for keys other
//! nodes own over its own persistent connection per peer, and pulls peers' journal
//! changes (anti-entropy) for the shards assigned to it.

#![forbid(unsafe_code)]

pub mod api;
pub mod body;
pub mod cluster;
pub mod config;
pub mod ctx;
pub mod history;
pub mod http_util;
pub mod jwt;
pub mod mesh;
pub mod metrics;
pub mod object;
pub mod server;
pub mod tls;
pub mod uring_conn;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod fuzz_ops;

pub use config::Config;
pub use server::{start, ServerHandle};
