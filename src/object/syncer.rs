//! The per-shard syncer: replays the shard's sync log (see [`super::backends`]) until
//! every backend has what it missed, with capped exponential backoff per entry.
//!
//! - A copy comes from the local copy when the cache holds the version, else from a
//!   backend of the set that has the key (its body staged in a file, never held in
//!   memory). It is verified afterwards: size and ETag (the body's MD5) by a HEAD.
//! - A delete is applied and verified by a HEAD that answers 404.
//! - Never a resurrection: a copy entry for a key the cache holds a tombstone for is
//!   applied as a delete; an entry superseded while its repair ran (a later write or
//!   delete) stays queued and runs next; a backend in maintenance or with its circuit
//!   open is left alone until it is back (the repair after the cool-down is its probe).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures::StreamExt;
use nearcache_backends::{Admit, Target};
use nearcache_s3::{OriginError, PutMeta, PutSource};
use nearcache_shards::{Lookup, SyncEntry, SyncKind};

use super::backends::{set_of, target};
use super::{CacheKey, ObjectCtx};

#[derive(Default)]
struct State {
    in_flight: usize,
    /// db key -> (failures so far, not before).
    backoff: HashMap<String, (u32, Instant)>,
}

/// The syncer loop of one shard, until shutdown.
pub async fn run<C: ObjectCtx>(ctx: Rc<C>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let state = Rc::new(RefCell::new(State::default()));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let objects = ctx.objects();
        let bk = objects.backends.clone();
        *objects
            .metrics
            .sync_backlog
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ctx.store().sync_backlog();
        let concurrency = objects.cfg.origin.sync_concurrency.max(1);
        let free = concurrency.saturating_sub(state.borrow().in_flight);
        let now = Instant::now();
        let mut next_due: Option<Instant> = None;
        let taken = if free == 0 {
            Vec::new()
        } else {
            let st = state.borrow();
            let busy = objects.fanout.borrow();
            ctx.store().sync_entries(free, |e| {
                let Some(i) = bk.index_of(&e.backend) else {
                    return false;
                };
                if busy.busy.contains(&(i, e.key.clone())) {
                    return false;
                }
                if let Some(&(_, due)) = st.backoff.get(&e.db_key()) {
                    if due > now {
                        next_due = Some(next_due.map_or(due, |d: Instant| d.min(due)));
                        return false;
                    }
                }
                // Last: a granted probe must be used.
                bk.admit(i) != Admit::No
            })
        };
        for e in taken {
            let i = bk.index_of(&e.backend).expect("filtered above");
            objects.fanout.borrow_mut().busy.insert((i, e.key.clone()));
            state.borrow_mut().in_flight += 1;
            monoio::spawn(repair(ctx.clone(), state.clone(), e, i));
        }
        // Entries of a backend that is out wait for its cool-down: look again soon.
        let wait = next_due
            .map_or(Duration::from_millis(500), |d| {
                d.saturating_duration_since(now)
            })
            .clamp(Duration::from_millis(5), Duration::from_millis(500));
        monoio::select! {
            _ = ctx.store().sync_changed() => {}
            _ = monoio::time::sleep(wait) => {}
            _ = objects.sync_slot_freed.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn repair<C: ObjectCtx>(ctx: Rc<C>, state: Rc<RefCell<State>>, e: SyncEntry, i: usize) {
    let objects = ctx.objects();
    let res = repair_one(&*ctx, &e, i).await;
    objects.fanout.borrow_mut().busy.remove(&(i, e.key.clone()));
    let db_key = e.db_key();
    match res {
        Ok(bytes) => {
            state.borrow_mut().backoff.remove(&db_key);
            match ctx.store().complete_sync(&e.backend, &e.key, e.id).await {
                Ok(_) => {
                    objects.metrics.sync_repaired.fetch_add(1, Relaxed);
                    objects
                        .metrics
                        .sync_repaired_bytes
                        .fetch_add(bytes, Relaxed);
                    tracing::debug!(key = %e.key, backend = %e.backend, kind = ?e.kind, "repaired");
                }
                Err(err) => {
                    tracing::warn!(key = %e.key, backend = %e.backend, error = %err, "recording a repair failed")
                }
            }
        }
        Err(msg) => {
            objects.metrics.sync_repair_failures.fetch_add(1, Relaxed);
            let cap = Duration::from_secs(objects.cfg.origin.sync_max_backoff_secs.max(1));
            let base = Duration::from_millis(objects.cfg.origin.initial_backoff_ms.max(10));
            let mut st = state.borrow_mut();
            let b = st.backoff.entry(db_key).or_insert((0, Instant::now()));
            b.0 += 1;
            let delay = base.saturating_mul(1u32 << b.0.min(16)).min(cap);
            b.1 = Instant::now() + delay;
            tracing::warn!(key = %e.key, backend = %e.backend, failures = b.0, retry_in = ?delay,
                error = %msg, "repair of a backend failed; will retry");
        }
    }
    state.borrow_mut().in_flight -= 1;
    objects.sync_slot_freed.notify_one();
}

/// Brings backend `i` to what `e` says; returns the bytes copied.
async fn repair_one<C: ObjectCtx>(ctx: &C, e: &SyncEntry, i: usize) -> Result<u64, String> {
    let key = CacheKey::from_stored(&e.key);
    let tgt = target(&key);
    let deleted = matches!(ctx.store().peek(&e.key), Lookup::Deleted(_));
    if e.kind == SyncKind::Delete || deleted {
        return delete_verified(ctx, i, &tgt).await.map(|()| 0);
    }
    if let Some((body, meta)) = ctx.store().stored_body(&e.key) {
        if e.etag.is_empty() || meta.etag == e.etag {
            let single = super::backends::put_version(ctx, i, &tgt, &key, &body, &meta)
                .await
                .map_err(|err| format!("copy from the local copy: {err}"))?;
            let plain_md5 = single && !meta.etag.contains('-');
            verify(
                ctx,
                i,
                &tgt,
                meta.size,
                plain_md5.then_some(meta.etag.as_str()),
            )
            .await?;
            return Ok(meta.size);
        }
    }
    copy_from_backend(ctx, e, i, &key, &tgt).await
}

async fn delete_verified<C: ObjectCtx>(ctx: &C, i: usize, tgt: &Target) -> Result<(), String> {
    let bk = &ctx.objects().backends;
    bk.delete(i, tgt)
        .await
        .map_err(|e| format!("delete: {e}"))?;
    match bk.head_on(i, tgt).await {
        Err(OriginError::NotFound) => Ok(()),
        Ok(_) => Err("the object is still there after the delete".into()),
        Err(e) => Err(format!("verifying the delete: {e}")),
    }
}

/// A HEAD on backend `i` must show `size` and, when given, `etag`.
async fn verify<C: ObjectCtx>(
    ctx: &C,
    i: usize,
    tgt: &Target,
    size: u64,
    etag: Option<&str>,
) -> Result<(), String> {
    let m = ctx
        .objects()
        .backends
        .head_on(i, tgt)
        .await
        .map_err(|e| format!("verifying the copy: {e}"))?;
    if m.size != size {
        return Err(format!(
            "copy verification: size {} where {size} was sent",
            m.size
        ));
    }
    if let Some(want) = etag {
        if m.etag != want {
            return Err(format!(
                "copy verification: ETag {} where {want} was sent",
                m.etag
            ));
        }
    }
    Ok(())
}

/// Copies the key from a backend of its set that has it (staged in a file).
async fn copy_from_backend<C: ObjectCtx>(
    ctx: &C,
    e: &SyncEntry,
    i: usize,
    key: &CacheKey,
    tgt: &Target,
) -> Result<u64, String> {
    let bk = &ctx.objects().backends;
    let mut source = None;
    let mut failure = None;
    for j in bk.read_order(set_of(bk, key)) {
        if j == i {
            continue;
        }
        match bk.get_on(j, tgt).await {
            Ok(obj) => {
                source = Some((j, obj));
                break;
            }
            Err(OriginError::NotFound) => {}
            Err(err) => failure = Some(format!("{}: {err}", bk.get_backend(j).name)),
        }
    }
    let Some((j, obj)) = source else {
        return match failure {
            Some(f) => Err(format!("no backend could give a copy: {f}")),
            None => {
                // Gone everywhere else too (deleted behind nearcache's back): nothing to copy.
                tracing::warn!(key = %e.key, backend = %e.backend,
                    "repair source gone from every backend; dropping the entry");
                Ok(0)
            }
        };
    };
    if !e.etag.is_empty() && obj.meta.etag != e.etag {
        tracing::info!(key = %e.key, from = %bk.get_backend(j).name, want = %e.etag, found = %obj.meta.etag,
            "repair source holds another version; copying the one it has");
    }
    let meta = obj.meta.clone();
    let body = futures::stream::unfold(obj.body, |mut b| async move {
        b.next_chunk().await.map(|r| (r, b))
    })
    .boxed();
    let staged = super::write::stage(ctx, body, u64::MAX)
        .await
        .map_err(|err| match err {
            super::write::WriteError::Body { got, error } => {
                format!("reading the source after {got} bytes: {error}")
            }
            super::write::WriteError::Object(o) => format!("staging the copy: {o}"),
        })?;
    if staged.len != meta.size {
        let got = staged.len;
        staged.remove().await;
        return Err(format!("source sent {got} bytes of {}", meta.size));
    }
    let pm = PutMeta {
        content_type: meta.content_type.clone(),
        user_meta: meta.user_meta.clone(),
        md5_hex: Some(staged.md5_hex.clone()),
        headers: meta.headers.clone(),
    };
    let src = PutSource::File {
        path: staged.path.clone(),
        offset: 0,
        len: staged.len,
    };
    let res = super::backends::put_stored(ctx, i, tgt, src, pm)
        .await
        .map_err(|err| format!("copy from {}: {err}", bk.get_backend(j).name));
    let (len, md5) = (staged.len, staged.md5_hex.clone());
    staged.remove().await;
    let single = res?;
    verify(ctx, i, tgt, len, single.then_some(md5.as_str())).await?;
    Ok(len)
}
