//! The per-shard background uploader: applies pending writes and deletes to the origin,
//! retrying with capped exponential backoff until each succeeds. Pending ops live in the
//! shard's journal, so they survive kill -9 and resume at start.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nearcache_shards::{PendingKind, PendingOp};

use super::ObjectCtx;

struct State {
    in_flight: HashSet<String>,
    /// Key -> (failures so far, not before).
    backoff: HashMap<String, (u32, Instant)>,
}

/// The uploader loop of one shard, until shutdown.
pub async fn run<C: ObjectCtx>(ctx: Rc<C>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let state = Rc::new(RefCell::new(State {
        in_flight: HashSet::new(),
        backoff: HashMap::new(),
    }));
    let concurrency = ctx.objects().cfg.origin.upload_concurrency.max(1);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = Instant::now();
        let mut next_due: Option<Instant> = None;
        let ops = ctx
            .store()
            .pending(concurrency * 8 + state.borrow().in_flight.len());
        for op in ops {
            let mut st = state.borrow_mut();
            if st.in_flight.len() >= concurrency {
                break;
            }
            if st.in_flight.contains(&op.key) {
                continue;
            }
            if let Some(&(_, due)) = st.backoff.get(&op.key) {
                if due > now {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    continue;
                }
            }
            st.in_flight.insert(op.key.clone());
            drop(st);
            monoio::spawn(apply(ctx.clone(), state.clone(), op));
        }
        let wait = next_due.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
        monoio::select! {
            _ = ctx.store().pending_changed() => {}
            _ = monoio::time::sleep(wait.max(Duration::from_millis(5))) => {}
            _ = ctx.objects().upload_slot_freed.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn apply<C: ObjectCtx>(ctx: Rc<C>, state: Rc<RefCell<State>>, op: PendingOp) {
    let objects = ctx.objects();
    // Every backend of the key's set; those that miss it go to the sync log.
    let result = super::backends::write(&ctx, &op).await;
    let outcome = match result {
        Ok(missed) => {
            let logged = missed.len() as u64;
            match ctx
                .store()
                .complete_pending_logging(&op.key, op.seq, missed)
                .await
            {
                Ok(()) => {
                    objects.metrics.sync_logged.fetch_add(logged, Relaxed);
                    match op.kind {
                        PendingKind::Put { .. } => objects.metrics.uploads_ok.fetch_add(1, Relaxed),
                        PendingKind::Delete => {
                            objects.metrics.origin_deletes_ok.fetch_add(1, Relaxed)
                        }
                    };
                    state.borrow_mut().backoff.remove(&op.key);
                    Ok(())
                }
                Err(e) => Err(format!("recording the upload in the journal failed: {e}")),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(msg) = &outcome {
        objects.metrics.upload_failures.fetch_add(1, Relaxed);
        let cap = Duration::from_secs(objects.cfg.origin.upload_max_backoff_secs.max(1));
        let base = Duration::from_millis(objects.cfg.origin.initial_backoff_ms.max(10));
        let mut st = state.borrow_mut();
        let entry = st
            .backoff
            .entry(op.key.clone())
            .or_insert((0, Instant::now()));
        entry.0 += 1;
        let delay = base.saturating_mul(1u32 << entry.0.min(16)).min(cap);
        entry.1 = Instant::now() + delay;
        tracing::warn!(shard = ctx.mesh().id(), failures = entry.0, retry_in = ?delay, error = %msg,
            "origin write failed; will retry");
    }
    state.borrow_mut().in_flight.remove(&op.key);
    objects.upload_slot_freed.notify_one();
    objects.notify_upload(&op.key, op.seq, outcome);
}
