//! Near copies: hot objects owned by other nodes, kept in memory on the nodes that serve
//! them, so a hot GET through a non-owner node does not cross the network every time.
//!
//! - **Holder side.** A non-owner proxies a read it cannot serve (`object::read::get_held`
//!   returns None). The second such read of a key within the admission window fetches a
//!   near copy in the background: `GET /_nc/v1/replica?key=K&lease=1` from the first
//!   reachable node of the key's ranking, whole, when it is at most
//!   `cluster.near_object_max`. The copy is served from memory until its lease ends
//!   (`cluster.near_lease_ms`, counted from before the request was sent, so it ends no later
//!   than the owner's record of it) or the owner says it changed. Copies live on the key's
//!   owner shard of this node, `cluster.near_cache_bytes / shards` each (oldest first out).
//! - **Owner side.** Granting a lease records (key, holder, end). While a shard has leases,
//!   it watches its journal every `cluster.near_watch_ms`: any new version or tombstone of
//!   a leased key (a client write here, a replica, an anti-entropy pull, a read-through
//!   refill) sends `POST /_nc/v1/near/drop` to its holders, best effort. A journal gap drops
//!   every lease of the shard (holders are told to drop everything from this node's shard).
//! - **Writes through the holder.** A write or delete this node forwards drops its own near
//!   copy first, and an invalidation (`/api/v1/invalidate`) drops near copies in its scope.
//!
//! What a client may see: after a write elsewhere, a near copy can serve the previous
//! version until the owner's notice arrives (the watch interval plus one node-to-node
//! request, a few ms), and at most until the lease ends if the notice is lost (the owner
//! down, a partition). Set `cluster.near_cache_bytes = 0` for none of this.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use nearcache_shards::{Change, ObjectMeta, Shard};

use super::peer::{self, PeerBody};
use super::sync::{decode_meta, key_query};
use super::{ClusterShard, H_META};

/// A lease's length, in a replica answer to `lease=1`.
pub const H_LEASE_MS: &str = "x-nc-lease-ms";
/// Keys tracked by the admission filter per generation (two generations are kept).
const SEEN_PER_GENERATION: usize = 16_384;
/// Most changes read from the journal per watch step.
const WATCH_BATCH: usize = 1024;

/// One shard thread's near copies (as a holder) and leases (as an owner).
#[derive(Default)]
pub struct NearShard {
    copies: RefCell<Copies>,
    seen: RefCell<Seen>,
    filling: RefCell<HashSet<String>>,
    /// Keys whose owner sent a change notice while their near copy was being fetched:
    /// the copy that arrives may be the replaced version, so it is not kept.
    spoiled: RefCell<HashSet<String>>,
    leases: RefCell<Leases>,
    watching: Cell<bool>,
}

#[derive(Default)]
struct Copies {
    map: HashMap<String, NearCopy>,
    /// Insertion order, for eviction; entries whose copy was replaced or dropped are
    /// skipped (their `gen` no longer matches).
    order: VecDeque<(String, u64)>,
    bytes: u64,
    next_gen: u64,
}

struct NearCopy {
    meta: Rc<ObjectMeta>,
    body: Bytes,
    until: Instant,
    gen: u64,
}

/// Keys proxied once recently: a second proxied read admits the key.
#[derive(Default)]
struct Seen {
    current: HashSet<String>,
    previous: HashSet<String>,
}

#[derive(Default)]
struct Leases {
    /// Key -> (holder node id, end of its lease).
    by_key: HashMap<String, Vec<(String, Instant)>>,
    /// Journal seq up to which changes were checked.
    checked_seq: u64,
}

fn enabled(cs: &ClusterShard) -> bool {
    cs.cl.cfg.near_cache_bytes.0 > 0
}

fn budget(cs: &ClusterShard, shards: usize) -> u64 {
    cs.cl.cfg.near_cache_bytes.0 / shards.max(1) as u64
}

/// The near copy of `key` held here, if its lease still runs.
pub fn lookup(cs: &ClusterShard, key: &str) -> Option<(Rc<ObjectMeta>, Bytes)> {
    if !enabled(cs) {
        return None;
    }
    let near = &cs.near;
    let mut copies = near.copies.borrow_mut();
    match copies.map.get(key) {
        Some(c) if c.until > Instant::now() => {
            cs.cl.metrics.near_hits.fetch_add(1, Relaxed);
            Some((c.meta.clone(), c.body.clone()))
        }
        Some(_) => {
            copies.remove(key, &cs.cl.metrics);
            None
        }
        None => None,
    }
}

/// A read of `key` this node could not serve and proxies: true when it should fetch a
/// near copy now (the key was proxied before, recently, and no fetch is running).
pub fn admit(cs: &ClusterShard, key: &str) -> bool {
    if !enabled(cs) {
        return false;
    }
    let near = &cs.near;
    if near.filling.borrow().contains(key) {
        return false;
    }
    let mut seen = near.seen.borrow_mut();
    if seen.current.remove(key) || seen.previous.remove(key) {
        near.filling.borrow_mut().insert(key.to_owned());
        return true;
    }
    if seen.current.len() >= SEEN_PER_GENERATION {
        seen.previous = std::mem::take(&mut seen.current);
    }
    seen.current.insert(key.to_owned());
    false
}

/// Drops the near copy of `key` (a write or delete of it goes through this node, or its
/// owner said it changed).
pub fn drop_key(cs: &ClusterShard, key: &str) {
    cs.near.copies.borrow_mut().remove(key, &cs.cl.metrics);
}

/// Drops the near copies whose key `pred` accepts (an invalidation); returns how many.
pub fn drop_where(cs: &ClusterShard, pred: impl Fn(&str) -> bool) -> u64 {
    let mut copies = cs.near.copies.borrow_mut();
    let keys: Vec<String> = copies.map.keys().filter(|k| pred(k)).cloned().collect();
    for k in &keys {
        copies.remove(k, &cs.cl.metrics);
    }
    keys.len() as u64
}

impl Copies {
    fn remove(&mut self, key: &str, m: &super::ClusterMetrics) {
        if let Some(c) = self.map.remove(key) {
            self.bytes -= c.body.len() as u64;
            m.near_bytes.fetch_sub(c.body.len() as u64, Relaxed);
        }
    }

    fn insert(
        &mut self,
        key: String,
        meta: Rc<ObjectMeta>,
        body: Bytes,
        until: Instant,
        budget: u64,
        m: &super::ClusterMetrics,
    ) {
        self.remove(&key, m);
        let len = body.len() as u64;
        // A copy larger than the whole budget is not kept, and evicts nothing.
        if len > budget {
            return;
        }
        while self.bytes + len > budget {
            let Some((old, gen)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|c| c.gen == gen) {
                self.remove(&old, m);
            }
        }
        if self.bytes + len > budget {
            return;
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        self.order.push_back((key.clone(), gen));
        self.bytes += len;
        m.near_bytes.fetch_add(len, Relaxed);
        self.map.insert(
            key,
            NearCopy {
                meta,
                body,
                until,
                gen,
            },
        );
        // Entries of dropped copies stay in `order` until they reach its front; bound them.
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|c| c.gen == *g));
        }
    }
}

/// Fetches a near copy of `key` from the first reachable node of its ranking, with a
/// lease, and keeps it (run on the key's owner shard of this node, after [`admit`]).
/// `fresh` decides whether the copy may be served now (the freshness rules).
pub async fn fill(
    cs: ClusterShard,
    shards: usize,
    key: String,
    fresh: impl Fn(&ObjectMeta) -> bool,
) {
    let result = fetch(&cs, &key).await;
    cs.near.filling.borrow_mut().remove(&key);
    let spoiled = cs.near.spoiled.borrow_mut().remove(&key);
    match result {
        Ok(Some((meta, body, until))) if fresh(&meta) && !spoiled => {
            cs.cl.metrics.near_fills.fetch_add(1, Relaxed);
            let budget = budget(&cs, shards);
            cs.near.copies.borrow_mut().insert(
                key,
                Rc::new(meta),
                body,
                until,
                budget,
                &cs.cl.metrics,
            );
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(key, error = %e, "fetching a near copy failed"),
    }
}

async fn fetch(
    cs: &ClusterShard,
    key: &str,
) -> Result<Option<(ObjectMeta, Bytes, Instant)>, String> {
    let max = cs.cl.cfg.near_object_max.0;
    let ranking = cs.cl.ranking(key);
    let Some(owner) = ranking.iter().find(|m| !m.is_self) else {
        return Ok(None);
    };
    let started = Instant::now();
    let req: Request<PeerBody> = Request::builder()
        .method(Method::GET)
        .uri(format!("/_nc/v1/replica?key={}&lease=1", key_query(key)))
        .body(peer::empty())
        .expect("valid request");
    let resp = cs.send(owner, req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Ok(None);
    }
    let h = resp.headers();
    let Some(lease_ms) = h
        .get(H_LEASE_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        // No lease granted (too large there, or an older node): nothing to keep.
        return Ok(None);
    };
    let meta = h
        .get(H_META)
        .ok_or_else(|| format!("replica answer lacks {H_META}"))
        .and_then(|v| decode_meta(v.as_bytes()))?;
    if meta.key != key || meta.size > max {
        return Ok(None);
    }
    let body = http_body_util::Limited::new(resp.into_body(), max as usize)
        .collect()
        .await
        .map_err(|e| format!("reading the near copy: {e}"))?
        .to_bytes();
    if body.len() as u64 != meta.size {
        return Err(format!(
            "the near copy has {} bytes where its metadata says {}",
            body.len(),
            meta.size
        ));
    }
    Ok(Some((
        meta,
        body,
        started + Duration::from_millis(lease_ms),
    )))
}

/// Owner side: records a lease of `key` for node `holder` and returns its length. Starts
/// the shard's journal watch if it is not running.
pub fn grant(cs: &ClusterShard, store: &Rc<Shard>, key: &str, holder: &str) -> Duration {
    let len = Duration::from_millis(cs.cl.cfg.near_lease_ms.max(1));
    let near = &cs.near;
    {
        let mut leases = near.leases.borrow_mut();
        if leases.by_key.is_empty() && !near.watching.get() {
            // Changes before now are in the copy being sent.
            leases.checked_seq = store.last_seq();
        }
        let until = Instant::now() + len;
        let holders = leases.by_key.entry(key.to_owned()).or_default();
        match holders.iter_mut().find(|(h, _)| h == holder) {
            Some(h) => h.1 = until,
            None => holders.push((holder.to_owned(), until)),
        }
    }
    cs.cl.metrics.near_leases.fetch_add(1, Relaxed);
    if !near.watching.get() {
        near.watching.set(true);
        monoio::spawn(watch(cs.clone(), store.clone()));
    }
    len
}

/// Owner side, before a write or delete of `key` is answered: ends every lease of it.
/// Each holder is told and acknowledges; a holder that cannot be told is waited out (its
/// lease ends on its own), so no client is answered while a near copy of the replaced
/// version may still be served.
pub async fn release(cs: &ClusterShard, key: &str) {
    let holders = match cs.near.leases.borrow_mut().by_key.remove(key) {
        Some(h) => h,
        None => return,
    };
    let now = Instant::now();
    let waits = holders
        .into_iter()
        .filter(|(_, until)| *until > now)
        .map(|(holder, until)| {
            let (cs, key) = (cs.clone(), key.to_owned());
            async move {
                let left = until.saturating_duration_since(Instant::now());
                let told = monoio::time::timeout(left, notify(cs, holder, vec![key])).await;
                if !matches!(told, Ok(true)) {
                    monoio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                }
            }
        });
    futures::future::join_all(waits).await;
}

/// Watches the shard's journal while it has leases, telling holders of changed keys.
async fn watch(cs: ClusterShard, store: Rc<Shard>) {
    let every = Duration::from_millis(cs.cl.cfg.near_watch_ms.max(1));
    loop {
        monoio::time::sleep(every).await;
        let mut notices: HashMap<String, Vec<String>> = HashMap::new();
        let mut everything = false;
        {
            let mut leases = cs.near.leases.borrow_mut();
            let now = Instant::now();
            leases.by_key.retain(|_, hs| {
                hs.retain(|(_, until)| *until > now);
                !hs.is_empty()
            });
            while leases.checked_seq < store.last_seq() {
                let batch = match store.changes_since(leases.checked_seq, WATCH_BATCH) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the journal for near-copy leases failed; dropping them all");
                        everything = true;
                        break;
                    }
                };
                if batch.gap {
                    everything = true;
                }
                for (_, change) in &batch.changes {
                    let key = match change {
                        Change::Put(m) => &m.key,
                        Change::Delete(t) => &t.key,
                        _ => continue,
                    };
                    if let Some(hs) = leases.by_key.remove(key) {
                        for (h, _) in hs {
                            notices.entry(h).or_default().push(key.clone());
                        }
                    }
                }
                if batch.next_after <= leases.checked_seq {
                    // A write still in progress: look again next time.
                    break;
                }
                leases.checked_seq = batch.next_after;
            }
            if everything {
                for (key, hs) in leases.by_key.drain() {
                    for (h, _) in hs {
                        notices.entry(h).or_default().push(key.clone());
                    }
                }
            }
            if leases.by_key.is_empty() && notices.is_empty() {
                cs.near.watching.set(false);
                return;
            }
        }
        for (holder, keys) in notices {
            let cs = cs.clone();
            monoio::spawn(async move {
                notify(cs, holder, keys).await;
            });
        }
    }
}

/// Tells `holder` that `keys` changed here; true when it acknowledged.
async fn notify(cs: ClusterShard, holder: String, keys: Vec<String>) -> bool {
    let view = cs.cl.view();
    let Some(m) = view.members.iter().find(|m| m.id == holder) else {
        return false;
    };
    let body = serde_json::to_vec(&serde_json::json!({ "keys": keys })).expect("serializes");
    let req: Request<PeerBody> = Request::builder()
        .method(Method::POST)
        .uri("/_nc/v1/near/drop")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(peer::full(Bytes::from(body)))
        .expect("valid request");
    match cs.send(m, req).await {
        Ok(r) if r.status().is_success() => {
            cs.cl
                .metrics
                .near_notices_sent
                .fetch_add(keys.len() as u64, Relaxed);
            true
        }
        Ok(r) => {
            tracing::debug!(peer = %holder, status = %r.status(), "a near-copy notice was refused");
            false
        }
        Err(e) => {
            tracing::debug!(peer = %holder, error = %e, "a near-copy notice failed; its leases end anyway");
            false
        }
    }
}

/// The keys of a `POST /_nc/v1/near/drop` body.
pub fn parse_drop(body: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Drop {
        keys: Vec<String>,
    }
    serde_json::from_slice::<Drop>(body)
        .map(|d| d.keys)
        .map_err(|e| format!("a near-copy notice must be {{\"keys\": [...]}}: {e}"))
}

/// A notice received: drops the copies of `keys` held on this shard.
pub fn dropped(cs: &ClusterShard, keys: &[String]) {
    let mut copies = cs.near.copies.borrow_mut();
    let filling = cs.near.filling.borrow();
    for k in keys {
        if filling.contains(k) {
            cs.near.spoiled.borrow_mut().insert(k.clone());
        }
        if copies.map.contains_key(k) {
            copies.remove(k, &cs.cl.metrics);
            cs.cl.metrics.near_notices_applied.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, size: u64) -> Rc<ObjectMeta> {
        let mut m: ObjectMeta = serde_json::from_value(serde_json::json!({
            "key": key, "size": size, "etag": "e", "crc32c": 0, "content_type": "x", "name": null,
            "user_meta": {}, "last_modified_ms": 0, "level": 1, "hlc": 1, "seq": 1,
            "in_origin": true, "provenance": "Fetched",
        }))
        .unwrap_or_else(|e| panic!("test meta: {e}"));
        m.size = size;
        Rc::new(m)
    }

    #[test]
    fn copies_stay_within_their_budget_oldest_out() {
        let m = super::super::ClusterMetrics::default();
        let mut c = Copies::default();
        let until = Instant::now() + Duration::from_secs(60);
        for i in 0..10 {
            let k = format!("k{i}");
            c.insert(
                k.clone(),
                meta(&k, 100),
                Bytes::from(vec![0u8; 100]),
                until,
                350,
                &m,
            );
            assert!(c.bytes <= 350);
        }
        assert_eq!(c.map.len(), 3);
        assert!(c.map.contains_key("k9") && c.map.contains_key("k7") && !c.map.contains_key("k6"));
        assert_eq!(m.near_bytes.load(Relaxed), 300);
        // Too large for the budget: not kept, nothing else lost.
        c.insert(
            "big".into(),
            meta("big", 400),
            Bytes::from(vec![0u8; 400]),
            until,
            350,
            &m,
        );
        assert!(!c.map.contains_key("big"));
        c.remove("k9", &m);
        assert_eq!((c.bytes, m.near_bytes.load(Relaxed)), (200, 200));
        // Replacing a key keeps one copy and the right byte count.
        c.insert(
            "k8".into(),
            meta("k8", 50),
            Bytes::from(vec![0u8; 50]),
            until,
            350,
            &m,
        );
        assert_eq!(c.bytes, 150);
    }

    #[test]
    fn drop_notices_parse_or_say_why_not() {
        assert_eq!(
            parse_drop(br#"{"keys":["a","b/c"]}"#).unwrap(),
            vec!["a", "b/c"]
        );
        assert!(parse_drop(b"{}").unwrap_err().contains("keys"));
        assert!(parse_drop(b"\xff").is_err());
    }
}
