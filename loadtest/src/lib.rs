//! nearcache-loadtest: a thread-per-core HTTP load generator that checks every answer.
//!
//! # Goals
//! - Saturate a nearcache node (or any HTTP object store) from the same small machine
//!   without being the bottleneck: N worker threads (`--threads`), each a single-threaded
//!   tokio runtime driving many keep-alive HTTP/1.1 or h2c connections through hyper's
//!   connection-level client. No locks and no shared counters on the hot path: every
//!   thread owns its histogram and counters, merged once at the end.
//! - Honest latency: hdrhistogram with fixed bounds (1 µs .. 60 s, 3 digits); closed loop
//!   by default, open loop at a fixed total rate (`--rate`) measuring from the intended
//!   send time as wrk2 does, so a stalled server cannot hide behind coordinated omission.
//! - A fast wrong answer is an error, not a request served: status, Content-Length, body
//!   length and (for a sample, always in miss-storm) the body MD5 are checked against a
//!   manifest. Ids and bodies are deterministic functions of `--seed` (see [`content`]),
//!   so the manifest holds MD5s, never bodies.
//! - Scenarios nearcache cares about: seeding, hot reads (uniform or Zipf), mixed
//!   read/write, miss storms (concurrent misses on cold keys, with metric deltas that show
//!   coalescing from the outside) and writes at each consistency level.
//! - Output for humans (a table, a progress line per second) and for scripts (`--json`
//!   with stable field names).
//!
//! # Non-goals
//! - TLS, authentication, S3 request signing (use moto or a proxy that ignores signatures).
//! - Being a general benchmark suite (no scripting, no request bodies other than ours).
//! - Distributed load generation from several machines (run several instances and add up
//!   their JSON).
//! - Measuring the client: its own CPU use is not reported; compare with wrk instead.
//!
//! # Thread model
//! See [`engine`]: the main thread plans, starts the workers, prints progress and merges;
//! worker `t` owns connections `c` with `c % threads == t` and runs one request loop
//! ("slot") per HTTP/1.1 connection or `--streams` per HTTP/2 connection.
#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    reason = "a tool: no shard threads here, blocking file calls are fine"
)]

pub mod cli;
pub mod content;
pub mod engine;
pub mod manifest;
pub mod scenario;
pub mod stats;
pub mod target;
pub mod zipf;

pub use cli::{Cli, Command};
pub use stats::Report;

/// Runs a parsed command line; the caller prints the report.
pub fn run(cli: Cli) -> anyhow::Result<Report> {
    scenario::run(cli.command)
}
