//! Invalidation: drops the cached copies of one key, a prefix or a whole bucket on every
//! node of the cluster, so the next read fetches the origin's object again. A copy not
//! yet safe in the origin (level 0, or an upload or delete still pending) is never
//! dropped: it is kept and listed, since dropping it would lose an acknowledged write.
//! Tombstones stay too (they keep deleted objects from coming back).
//!
//! A read-through in flight when the invalidation runs stores its copy when it ends (after
//! its client has the body): the invalidation waits for it and drops that copy too.

use std::rc::Rc;

use http::Method;
use nearcache_shards::{Lookup, ObjectMeta};
use serde::{Deserialize, Serialize};

use super::{CacheKey, ObjectCtx, ObjectError};
use crate::cluster::fanout;
use crate::mesh::{on_every_shard, on_owner};

/// Most keys listed as pending in one answer (the count of dropped copies is exact).
pub const MAX_PENDING_LISTED: usize = 10_000;

/// Copies one shard drops at once (their journal records share group commits).
const DROP_AT_ONCE: usize = 512;

/// What an invalidation covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One object: a native id, or an S3-API object.
    Key(CacheKey),
    /// Every S3-API object of `bucket` whose key starts with `prefix` ("" = the bucket).
    Bucket { bucket: String, prefix: String },
    /// Native ids starting with `prefix`.
    NativePrefix(String),
}

impl Scope {
    /// The scope named by the query parameters `bucket`, `key` and `prefix` (empty values
    /// count as absent). Without a bucket, `key` and `prefix` name native ids.
    pub fn from_params(
        bucket: Option<&str>,
        key: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<Scope, String> {
        let nonempty = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_owned);
        let (bucket, key, prefix) = (nonempty(bucket), nonempty(key), nonempty(prefix));
        if key.is_some() && prefix.is_some() {
            return Err("give key or prefix, not both".into());
        }
        Ok(match (bucket, key, prefix) {
            (Some(b), Some(k), None) => Scope::Key(CacheKey::s3(&b, &k)),
            (Some(b), None, p) => Scope::Bucket {
                bucket: b,
                prefix: p.unwrap_or_default(),
            },
            (None, Some(k), None) => Scope::Key(CacheKey::native(k)),
            (None, None, Some(p)) => Scope::NativePrefix(p),
            (None, None, None) => {
                return Err(
                    "give bucket (with key or prefix, or alone for the whole bucket), \
                            or key or prefix (native ids)"
                        .into(),
                )
            }
            (_, Some(_), Some(_)) => unreachable!("refused above"),
        })
    }

    /// The query string that names this scope (for peers).
    pub fn to_query(&self) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        match self {
            Scope::Key(k) => match k.origin() {
                super::key::Origin::Native(id) => format!("key={}", enc(id)),
                super::key::Origin::Bucket { bucket, key } => {
                    format!("bucket={}&key={}", enc(bucket), enc(key))
                }
            },
            Scope::Bucket { bucket, prefix } => {
                format!("bucket={}&prefix={}", enc(bucket), enc(prefix))
            }
            Scope::NativePrefix(p) => format!("prefix={}", enc(p)),
        }
    }

    /// Whether a stored key is in this (prefix) scope.
    pub(crate) fn covers(&self, stored: &str) -> bool {
        match self {
            Scope::Key(k) => k.as_str() == stored,
            Scope::Bucket { bucket, prefix } => stored
                .strip_prefix(bucket.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|k| k.starts_with(prefix.as_str())),
            // Native ids never contain '/'; S3-API keys always do.
            Scope::NativePrefix(p) => stored.starts_with(p.as_str()) && !stored.contains('/'),
        }
    }

    /// A stored key as the client named it: the object key of a bucket, or the id.
    pub(crate) fn shown(&self, stored: &str) -> String {
        match self {
            Scope::Bucket { bucket, .. } => {
                stored.get(bucket.len() + 1..).unwrap_or(stored).to_owned()
            }
            Scope::Key(k) => match k.origin() {
                super::key::Origin::Bucket { key, .. } => key.to_owned(),
                super::key::Origin::Native(id) => id.to_owned(),
            },
            Scope::NativePrefix(_) => stored.to_owned(),
        }
    }

    /// Store keys start with this.
    fn stored_prefix(&self) -> String {
        match self {
            Scope::Key(k) => k.as_str().to_owned(),
            Scope::Bucket { bucket, prefix } => format!("{bucket}/{prefix}"),
            Scope::NativePrefix(p) => p.clone(),
        }
    }
}

/// What one node (or the whole cluster) dropped and kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dropped {
    /// Copies dropped.
    pub dropped: u64,
    /// Keys kept because they are not yet safe in the origin.
    pub pending: Vec<String>,
}

impl Dropped {
    fn add(&mut self, other: Dropped) {
        self.dropped += other.dropped;
        let room = MAX_PENDING_LISTED.saturating_sub(self.pending.len());
        self.pending.extend(other.pending.into_iter().take(room));
    }
}

/// The cluster-wide answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterDropped {
    pub dropped: u64,
    /// Nodes that answered (this one included).
    pub nodes: usize,
    pub pending: Vec<String>,
    pub failed_nodes: Vec<FailedNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedNode {
    pub node: String,
    pub error: String,
}

/// Drops the copies of `scope` on every node of the cluster (this node alone when it
/// runs alone). Nodes that fail are listed; the others' copies are dropped anyway.
pub async fn everywhere<C: ObjectCtx>(
    ctx: &Rc<C>,
    scope: &Scope,
) -> Result<ClusterDropped, ObjectError> {
    let here = on_this_node(ctx, scope).await?;
    let mut total = Dropped::default();
    total.add(here);
    let mut out = ClusterDropped {
        nodes: 1,
        ..Default::default()
    };
    if let Some(cs) = ctx.cluster() {
        let path = format!("/_nc/v1/ops/invalidate?{}", scope.to_query());
        let ms = super::jobs::node_timeout_ms(&ctx.objects().cfg);
        for a in fanout::to_peers(cs, Method::POST, &path, bytes::Bytes::new(), ms).await {
            match a
                .result
                .and_then(|v| serde_json::from_value::<Dropped>(v).map_err(|e| e.to_string()))
            {
                Ok(d) => {
                    out.nodes += 1;
                    total.add(d);
                }
                Err(error) => {
                    tracing::warn!(peer = %a.node, %error, "invalidation on a peer failed");
                    out.failed_nodes.push(FailedNode {
                        node: a.node,
                        error,
                    })
                }
            }
        }
    }
    out.dropped = total.dropped;
    out.pending = total.pending;
    out.pending.sort();
    out.pending.dedup();
    Ok(out)
}

/// After a write passed through to the origin uncached: older copies of the key are
/// dropped everywhere (a failure is logged; the write itself succeeded).
pub async fn after_pass_through<C: ObjectCtx>(ctx: &Rc<C>, key: CacheKey) {
    match everywhere(ctx, &Scope::Key(key)).await {
        Ok(d) if d.failed_nodes.is_empty() => {}
        Ok(d) => {
            tracing::warn!(
                failed = d.failed_nodes.len(),
                "dropping older copies after a pass-through write: some nodes failed"
            )
        }
        Err(e) => tracing::warn!(error = %e, "dropping older copies after a pass-through write"),
    }
}

/// Drops the copies of `scope` held by this node's shards.
pub async fn on_this_node<C: ObjectCtx>(
    ctx: &Rc<C>,
    scope: &Scope,
) -> Result<Dropped, ObjectError> {
    match scope {
        Scope::Key(k) => {
            if !k.fits_store() {
                return Ok(Dropped::default());
            }
            let (key, s) = (k.as_str().to_owned(), scope.clone());
            on_owner(ctx, k.as_str(), move |ctx| async move {
                let found = match ctx.store().peek(&key) {
                    Lookup::Hit { meta, .. } => {
                        let pending = ctx.store().pending_seq(&key).is_some();
                        vec![(meta, pending)]
                    }
                    _ => Vec::new(),
                };
                drop_here(&*ctx, &s, found).await
            })
            .await?
        }
        _ => {
            let s = scope.clone();
            let per_shard = on_every_shard(ctx, move |ctx| {
                let s = s.clone();
                async move {
                    let prefix = s.stored_prefix();
                    let found = ctx.store().objects_with_prefix(&prefix, |k| s.covers(k));
                    drop_here(&*ctx, &s, found).await
                }
            })
            .await?;
            let mut total = Dropped::default();
            for d in per_shard {
                total.add(d?);
            }
            Ok(total)
        }
    }
}

/// Whether a copy is not yet safe in the origin (never dropped).
fn unsafe_to_drop(meta: &ObjectMeta, pending: bool) -> bool {
    !meta.in_origin || pending
}

async fn drop_here<C: ObjectCtx>(
    ctx: &C,
    scope: &Scope,
    found: Vec<(Rc<ObjectMeta>, bool)>,
) -> Result<Dropped, ObjectError> {
    let mut out = Dropped::default();
    if let Some(cs) = ctx.cluster() {
        // Near copies of other nodes' objects held here go too (never pending here).
        out.dropped += crate::cluster::near::drop_where(cs, |k| scope.covers(k));
    }
    let store = ctx.store();
    let mut safe = Vec::new();
    for (meta, pending) in found {
        if !unsafe_to_drop(&meta, pending) {
            safe.push(meta);
        } else if out.pending.len() < MAX_PENDING_LISTED {
            out.pending.push(scope.shown(&meta.key));
        }
    }
    // Many drops at once, so that the journal commits them in a few group commits.
    for chunk in safe.chunks(DROP_AT_ONCE) {
        let drops = chunk.iter().map(|meta| async move {
            // Checked again right before dropping, in the same synchronous step as the
            // store's own check (a future's first poll runs both before anything else on
            // this thread): a write that landed since the scan is not dropped.
            match store.peek(&meta.key) {
                Lookup::Hit { meta: now, .. }
                    if now.seq == meta.seq
                        && store.pending_seq(&meta.key).is_none()
                        && !unsafe_to_drop(&now, false) =>
                {
                    store.forget(&meta.key).await.map(|()| 1u64)
                }
                _ => Ok(0),
            }
        });
        for r in futures::future::join_all(drops).await {
            out.dropped += r?;
        }
    }
    out.dropped += settle_fetches(ctx, scope).await?;
    ctx.ops().metrics.invalidated(ctx.mesh().id(), out.dropped);
    Ok(out)
}

/// Waits for this shard's read-throughs of keys in `scope` to end, then drops what they
/// stored (fetched copies are in the origin: safe to drop). Returns how many.
async fn settle_fetches<C: ObjectCtx>(ctx: &C, scope: &Scope) -> Result<u64, ObjectError> {
    let in_flight: Vec<String> = ctx
        .objects()
        .fetches
        .borrow()
        .keys()
        .filter(|k| scope.covers(k))
        .cloned()
        .collect();
    let mut dropped = 0;
    for key in in_flight {
        // The fetch leaves the map once its copy is stored (or given up).
        while ctx.objects().fetches.borrow().contains_key(&key) {
            monoio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let store = ctx.store();
        if let Lookup::Hit { meta, .. } = store.peek(&key) {
            if !unsafe_to_drop(&meta, store.pending_seq(&key).is_some()) {
                store.forget(&key).await?;
                dropped += 1;
            }
        }
    }
    Ok(dropped)
}

/// The decoded value of `name` in a query string (what a peer reads back).
#[cfg(test)]
pub(crate) fn query_value(q: &str, name: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_from_parameters() {
        assert_eq!(
            Scope::from_params(Some("b"), Some("k/1"), None).unwrap(),
            Scope::Key(CacheKey::s3("b", "k/1"))
        );
        assert_eq!(
            Scope::from_params(Some("b"), None, Some("p/")).unwrap(),
            Scope::Bucket {
                bucket: "b".into(),
                prefix: "p/".into()
            }
        );
        assert_eq!(
            Scope::from_params(Some("b"), Some(""), None).unwrap(),
            Scope::Bucket {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Scope::from_params(None, Some("01J"), None).unwrap(),
            Scope::Key(CacheKey::native("01J"))
        );
        assert!(Scope::from_params(Some("b"), Some("k"), Some("p")).is_err());
        assert!(Scope::from_params(None, None, None).is_err());
    }

    #[test]
    fn prefix_scopes_cover_their_keys_only() {
        let b = Scope::Bucket {
            bucket: "b".into(),
            prefix: "a/".into(),
        };
        assert!(b.covers("b/a/x"));
        assert!(!b.covers("b/ax"));
        assert!(!b.covers("bb/a/x"));
        assert_eq!(b.shown("b/a/x"), "a/x");
        let n = Scope::NativePrefix("01".into());
        assert!(n.covers("01ABC"));
        assert!(!n.covers("01/x"));
    }

    #[test]
    fn scopes_survive_the_trip_to_peers() {
        for s in [
            Scope::Key(CacheKey::s3("b", "a b/&?=%+")),
            Scope::Key(CacheKey::native("01J0000000000000000000000A")),
            Scope::Bucket {
                bucket: "b".into(),
                prefix: "x&y/".into(),
            },
            Scope::Bucket {
                bucket: "b".into(),
                prefix: String::new(),
            },
            Scope::NativePrefix("01J".into()),
        ] {
            let q = s.to_query();
            let p = |name: &str| query_value(&q, name);
            let back = Scope::from_params(
                p("bucket").as_deref(),
                p("key").as_deref(),
                p("prefix").as_deref(),
            )
            .unwrap();
            assert_eq!(back, s, "{q}");
        }
    }
}
