//! Public value types of the shard engine. These are the contract with `src/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
pub use nearcache_file::DeviceKind;

/// Named defaults, shared with the server's config module.
pub mod defaults {
    pub const MEMORY_CAPACITY: u64 = 256 << 20;
    pub const MEMORY_OBJECT_MAX: u64 = 1 << 20;
    pub const DISK_CAPACITY: u64 = 10 << 30;
    pub const TOMBSTONE_TTL_SECS: u64 = 24 * 3600;
    pub const LMDB_MAP_SIZE: u64 = 64 << 30;
    pub const JOURNAL_RETAIN: u64 = 1_000_000;
    /// Size of the chunks an [`crate::ObjectReader`] yields, and of checksummed blocks.
    pub const BLOCK_SIZE: u64 = 256 << 10;
    pub const INLINE_OBJECT_MAX: u64 = 16 << 10;
    /// Per shard.
    pub const META_CACHE_OBJECTS: usize = 65_536;
}

#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub shard_id: u16,
    /// This shard's own directory (`<data-dir>/shard-<id>`); created if missing.
    pub dir: PathBuf,
    /// Bytes of object bodies kept in the memory tier.
    pub memory_capacity: u64,
    /// Objects up to this size are also kept in memory after a write or a read.
    pub memory_object_max: u64,
    /// Bytes of object bodies kept on disk (data only; headers and checksums excluded).
    pub disk_capacity: u64,
    pub tombstone_ttl: Duration,
    pub device: DeviceKind,
    pub lmdb_map_size: u64,
    /// Journal records kept for incremental sync; older ones are trimmed.
    pub journal_retain: u64,
    /// Bodies up to this size are stored in the journal's LMDB env instead of an object
    /// file: concurrent small writes then share one data sync (the group commit) instead
    /// of one file creation and fdatasync each. 0 turns it off. Inline bodies use at most
    /// half of `lmdb_map_size`; past that, small bodies go to files.
    pub inline_object_max: u64,
    /// Objects whose metadata stays in memory (the most recently used and written);
    /// the others' is read from the journal when next needed. Each resident meta costs
    /// about 400 B; each object, resident or not, about 150 B.
    pub meta_cache_objects: usize,
}

/// Where an object's bytes came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Provenance {
    /// Written by a client through nearcache.
    Client,
    /// Read through from the origin; it is by definition safe there.
    Fetched,
}

/// What a key holds, as last-writer-wins sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held<'a> {
    Nothing,
    Version { hlc: u64, etag: &'a str },
    Tombstone { hlc: u64 },
}

/// Last-writer-wins for a version: does (hlc, etag) replace what the key holds? Versions
/// are ordered by hlc, then etag; a tombstone beats a version with a lower or equal hlc.
/// The one rule [`crate::Shard::is_newer`], replicas and anti-entropy apply.
pub fn version_wins(hlc: u64, etag: &str, held: Held<'_>) -> bool {
    match held {
        Held::Nothing => true,
        Held::Version { hlc: h, etag: e } => (hlc, etag) > (h, e),
        Held::Tombstone { hlc: h } => hlc > h,
    }
}

/// Last-writer-wins for a tombstone with this hlc: it beats a version with a lower or
/// equal hlc, and an older tombstone.
pub fn tombstone_wins(hlc: u64, held: Held<'_>) -> bool {
    match held {
        Held::Nothing => true,
        Held::Version { hlc: h, .. } => hlc >= h,
        Held::Tombstone { hlc: h } => hlc > h,
    }
}

/// Whether a tombstone deleted at `deleted_at_ms` has outlived `ttl_ms` at `now_ms` (all
/// wall-clock ms; the sweep also needs every peer to have read past it).
pub fn tombstone_expired(deleted_at_ms: u64, ttl_ms: u64, now_ms: u64) -> bool {
    deleted_at_ms.saturating_add(ttl_ms) <= now_ms
}

/// Whether a tombstone produced elsewhere is stored over what the key holds: it must win
/// last-writer-wins ([`tombstone_wins`]), and a key that holds nothing takes none that is
/// already past its TTL at `now_ms`: there is nothing to delete, the sweep would drop it
/// at once, and storing it journals it anew for peers that swept it already, which then
/// store it again (after a rescan, expired tombstones went round the cluster forever).
pub fn tombstone_applies(t: &Tombstone, held: Held<'_>, ttl_ms: u64, now_ms: u64) -> bool {
    tombstone_wins(t.hlc, held)
        && !(held == Held::Nothing && tombstone_expired(t.deleted_at_ms, ttl_ms, now_ms))
}

/// Everything known about a stored object, as kept in the index and the journal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Quoted-less hex ETag: MD5 of the body for client writes, the origin's ETag
    /// (quotes stripped) for fetched objects.
    pub etag: String,
    /// CRC32C of the whole body.
    pub crc32c: u32,
    pub content_type: Option<String>,
    /// Original file name (objstore's X-Meta-Name).
    pub name: Option<String>,
    pub user_meta: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch.
    pub last_modified_ms: u64,
    /// Hybrid logical clock timestamp of the write that produced this version.
    pub hlc: u64,
    /// Journal sequence number of that write; also names the data file.
    pub seq: u64,
    /// Consistency level: 0 local, 1 local + origin, 2 all nodes + origin.
    pub level: u8,
    /// True once the bytes are known to be in the origin. Until then the object is pinned.
    pub in_origin: bool,
    pub provenance: Provenance,
    /// Other response headers kept with the object (lowercase names), e.g. the S3 API's
    /// content-encoding, content-disposition, cache-control, content-language, expires.
    /// Absent in journals written before it existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Wall-clock ms when this version was last known to be the origin's current one:
    /// when it was written or fetched, or last revalidated ([`crate::Shard::renew`]).
    /// Freshness is measured from here. 0 in journals written before it existed (such a
    /// copy counts as old: it is revalidated on its first read under a TTL).
    #[serde(default)]
    pub validated_ms: u64,
    /// Where this node keeps the body: in the journal's `bodies` db (small objects, see
    /// [`ShardConfig::inline_object_max`]) instead of an object file. Local: set by the
    /// shard that stores the version, whatever a peer's copy says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
    /// What the layers above derive from this version (response header values), made
    /// on first use so that every later hit reuses it. Not persisted.
    #[serde(skip)]
    pub derived: Derived,
}

/// Values derived from one stored version, computed once. Opaque to the store; ignored
/// by equality (it is a cache of the fields).
#[derive(Clone, Default)]
pub struct Derived(std::sync::OnceLock<std::sync::Arc<dyn std::any::Any + Send + Sync>>);

impl Derived {
    /// The derived value, made by `f` the first time. `None` if another type was stored
    /// first (one layer owns this slot).
    pub fn get_or_init<T: std::any::Any + Send + Sync>(&self, f: impl FnOnce() -> T) -> Option<&T> {
        self.0
            .get_or_init(|| std::sync::Arc::new(f()))
            .downcast_ref::<T>()
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Derived(set)"
        } else {
            "Derived(empty)"
        })
    }
}

/// Caller-supplied attributes for a write.
#[derive(Debug, Clone, Default)]
pub struct WriteAttrs {
    pub content_type: Option<String>,
    pub name: Option<String>,
    pub user_meta: BTreeMap<String, String>,
    pub level: u8,
    /// Set for read-through writes: the origin's ETag and Last-Modified.
    pub fetched: Option<FetchedFrom>,
    /// Stored as [`ObjectMeta::headers`].
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct FetchedFrom {
    pub etag: String,
    pub last_modified_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tombstone {
    pub key: String,
    pub hlc: u64,
    pub seq: u64,
    pub deleted_at_ms: u64,
    pub level: u8,
}

/// One exported change of a shard's journal, for peers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// A version was stored (client write, read-through, or applied replica).
    Put(ObjectMeta),
    Delete(Tombstone),
    /// The version of `key` with this hlc was raised to `level`.
    Upgrade {
        key: String,
        hlc: u64,
        level: u8,
    },
    /// The pending origin op (upload or delete) of the version/tombstone with this hlc completed.
    Uploaded {
        key: String,
        hlc: u64,
    },
}

/// One page of a shard's index in key order, for a peer that must resync because the
/// journal records it missed were trimmed. Result of [`crate::Shard::index_page`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IndexPage {
    /// Current objects as `Change::Put`, tombstones as `Change::Delete`.
    pub entries: Vec<Change>,
    /// Ask for the page after this key next; None when this was the last page.
    pub next_key: Option<String>,
    /// Every journal record up to this seq is reflected in the pages; resume the journal
    /// from here once the scan is done.
    pub through: u64,
}

/// Result of [`crate::Shard::changes_since`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChangeBatch {
    /// (journal seq, change), ascending seq, only seqs > `after`.
    pub changes: Vec<(u64, Change)>,
    /// Ask for `after = next_after` next time (covers skipped internal records too).
    /// It stops short of a write still in progress (its seq was taken when it began, so
    /// it commits after records with higher seqs): nothing is skipped that lands later.
    pub next_after: u64,
    /// Highest journal seq written so far by this shard.
    pub last_seq: u64,
    /// True when records after `after` were already trimmed (journal_retain), i.e. the
    /// caller missed changes and must resync another way.
    pub gap: bool,
}

/// Result of [`crate::Shard::lookup`].
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Present. `body` is set when the memory tier holds the whole body (already verified).
    Hit {
        meta: std::rc::Rc<ObjectMeta>,
        body: Option<Bytes>,
    },
    Deleted(Tombstone),
    Miss,
}

/// A write or delete the origin has not acknowledged yet.
#[derive(Debug, Clone)]
pub struct PendingOp {
    pub key: String,
    /// Sequence number of the write this op belongs to; passed back to `complete_pending`.
    pub seq: u64,
    pub kind: PendingKind,
}

// Boxing the meta would change what `src/` matches on; these values are few and short-lived.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum PendingKind {
    /// Upload the body (`len` bytes, found at `body`) with this metadata.
    Put {
        body: BodyAt,
        len: u64,
        meta: ObjectMeta,
    },
    Delete,
}

/// Where a stored version's body can be read by work off the shard's request path (the
/// uploader, repairs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAt {
    /// At `offset` in the file at `path`, contiguous (an upload can send it as is).
    File { path: PathBuf, offset: u64 },
    /// Inline in the journal: read it with [`crate::Shard::read_all`].
    Journal,
}

#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub objects: u64,
    pub tombstones: u64,
    pub pending: u64,
    pub orphans_removed: u64,
    pub elapsed: Duration,
}

/// Counters written only by the owning shard thread, read by anyone (metrics, stats).
#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub objects: AtomicU64,
    pub tombstones: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub memory_bytes: AtomicU64,
    pub memory_objects: AtomicU64,
    /// Objects whose meta is in memory (see `ShardConfig::meta_cache_objects`).
    pub resident_metas: AtomicU64,
    /// Object metas read back from the journal because they were not in memory.
    pub meta_reads: AtomicU64,
    pub disk_capacity: AtomicU64,
    pub memory_capacity: AtomicU64,
    pub hits: AtomicU64,
    pub memory_hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub checksum_failures: AtomicU64,
    pub pending_uploads: AtomicU64,
    pub pinned_bytes: AtomicU64,
    pub journal_commits: AtomicU64,
    pub journal_records: AtomicU64,
    pub journal_last_seq: AtomicU64,
}
