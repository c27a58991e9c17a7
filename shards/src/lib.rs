//! # nearcache-shards: the per-core shard engine
//!
//! One [`Shard`] owns one slice of the key space on one core: an object store on disk
//! (one file per object, written with O_DIRECT aligned buffers through
//! [`nearcache_file`]'s device layer; small bodies inline in the journal instead, so
//! that concurrent small writes share one sync), an LMDB journal and index (one heed
//! env per shard, group-committed on a writer thread), a memory tier for hot small objects,
//! and S3-FIFO eviction for both tiers.
//!
//! Goals:
//! - an acknowledged write survives kill -9: data is fdatasync'ed and the journal
//!   record committed before [`ObjectWriter::finish`] returns;
//! - nothing corrupt is ever served: every object carries per-block CRC32C checksums,
//!   verified on every read;
//! - objects not yet safe in the origin (level 0, pending upload) are never evicted;
//! - no locks on the data path: a `Shard` is `!Send` and used from its own thread only.
//!
//! Non-goals: sockets, HTTP, S3 (those live in `src/` and `io/`); replication and
//! cluster placement. The engine gives the cluster layer what it builds on: the journal
//! exported as [`Change`]s ([`Shard::changes_since`]), last-writer-wins by HLC
//! ([`Shard::is_newer`]), replicas and remote tombstones applied with their origin
//! uploads or deletes deferred ([`Shard::begin_replica`], [`Shard::apply_tombstone`]).
//!
//! ## Fuzzing
//!
//! The persistent codecs (journal values, object file header, checksum table and blocks)
//! have fuzz targets in `src/fuzz_tests.rs`, written with [bolero](https://docs.rs/bolero)
//! so that they run as ordinary tests on stable Rust: each target draws random inputs for
//! 1 s in `cargo test`. A longer run (here 10 minutes per target, optimised build):
//!
//! ```text
//! BOLERO_RANDOM_TEST_TIME_MS=600000 cargo test -p nearcache-shards --release fuzz_tests -- --nocapture
//! ```
//!
//! `BOLERO_RANDOM_ITERATIONS=N` runs N cases per target instead; a failure prints a
//! `BOLERO_RANDOM_SEED=...` to replay it. Each crash found becomes a regression test next
//! to the code it broke (see `format::tests`).

#![forbid(unsafe_code)]

#[cfg(test)]
mod cluster_tests;
mod error;
pub mod eviction;
mod format;
#[cfg(test)]
mod fuzz_tests;
pub mod hlc;
#[cfg(test)]
mod index_tests;
mod inline;
mod journal;
mod shard;
#[cfg(test)]
mod space_tests;
pub mod synclog;
#[cfg(test)]
mod tests;
mod types;

pub use error::{NoSpaceReason, StoreError};
pub use hlc::Hlc;
pub use journal::{cut_changes, cut_index_page, records_to_trim, ChangesRead};
pub use shard::{ObjectReader, ObjectWriter, Shard};
pub use synclog::{SyncBacklog, SyncCause, SyncEntry, SyncKind};
pub use types::*;

/// Hashing of keys in the shard's maps (index, memory tier, eviction): foldhash with a
/// random seed per map, several times cheaper than std's SipHash on the hot path (a hit
/// hashes its key four times); seeded at random, so colliding keys cannot be precomputed.
pub(crate) type KeyHasher = foldhash::quality::RandomState;
