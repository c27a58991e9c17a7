//! Coalescing: one origin request per key (or chunk) at a time on its owner shard.
//! The first request registers a [`Fetch`]; later ones wait for its outcome and then
//! read what it stored.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::watch;

use super::{CacheKey, ObjectCtx, ObjectError};

/// One in-progress read-through or revalidation. Waiters learn the outcome; on success
/// they read the now-stored object like any hit.
pub struct Fetch {
    done: watch::Sender<Option<Result<(), ObjectError>>>,
}

impl Fetch {
    pub async fn wait(&self) -> Result<(), ObjectError> {
        let mut rx = self.done.subscribe();
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return Err(ObjectError::OriginOther(
                    "the origin fetch this request waited on was abandoned".into(),
                ));
            }
        }
    }
}

/// Registers a fetch of `key` on this shard and always releases it: waiters learn the
/// outcome given to [`FetchGuard::finish`], or an error if the fetch task ends without
/// one (a panic-free early return, a dropped task).
pub struct FetchGuard<C: ObjectCtx> {
    ctx: Rc<C>,
    key: String,
    fetch: Rc<Fetch>,
    outcome: Option<Result<(), ObjectError>>,
}

impl<C: ObjectCtx> FetchGuard<C> {
    pub fn register(ctx: Rc<C>, key: &str) -> Self {
        let fetch = Rc::new(Fetch {
            done: watch::channel(None).0,
        });
        ctx.objects()
            .fetches
            .borrow_mut()
            .insert(key.to_owned(), fetch.clone());
        FetchGuard {
            ctx,
            key: key.to_owned(),
            fetch,
            outcome: None,
        }
    }

    pub fn finish(mut self, outcome: Result<(), ObjectError>) {
        self.outcome = Some(outcome);
    }
}

impl<C: ObjectCtx> Drop for FetchGuard<C> {
    fn drop(&mut self) {
        let mut f = self.ctx.objects().fetches.borrow_mut();
        if f.get(&self.key)
            .is_some_and(|cur| Rc::ptr_eq(cur, &self.fetch))
        {
            f.remove(&self.key);
        }
        drop(f);
        let outcome = self.outcome.take().unwrap_or_else(|| {
            Err(ObjectError::OriginOther(
                "the origin fetch ended without an outcome".into(),
            ))
        });
        self.fetch.done.send_replace(Some(outcome));
    }
}

/// The fetch or revalidation of `key` under way on this shard, if any (counted: the
/// caller waits for it instead of asking the origin itself).
pub fn fetch_in_progress<C: ObjectCtx>(ctx: &C, key: &CacheKey) -> Option<Rc<Fetch>> {
    let fetch = ctx.objects().fetches.borrow().get(key.as_str()).cloned()?;
    ctx.objects().metrics.coalesced.fetch_add(1, Relaxed);
    Some(fetch)
}
