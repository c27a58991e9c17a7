//! Pending origin operations (uploads and deletes): queueing, listing, completion,
//! and consistency-level upgrades that queue uploads.

use super::*;

impl Shard {
    pub(super) fn notify_pending(&self) {
        self.core.pending_notify.notify_waiters();
        self.core.pending_notify.notify_one();
    }

    /// Raises the consistency level of the stored version; queues an upload when it
    /// moves from 0 to >= 1 and the object is not in the origin yet.
    pub async fn upgrade(&self, key: &str, level: u8) -> Result<Rc<ObjectMeta>, StoreError> {
        let core = &self.core;
        let (ack, meta, queued) = {
            let mut st = core.state.borrow_mut();
            let Some(old) = st.index.get(&core.journal, key) else {
                return Err(StoreError::NotFound);
            };
            if level <= old.level {
                return Ok(old);
            }
            let mut m = (*old).clone();
            m.level = level;
            let meta = Rc::new(m);
            st.index.replace(&core.journal, key, meta.clone());
            let mut ops = vec![
                Op::PutEntry(key.to_owned(), StoredEntry::Object((*meta).clone())),
                core.record(RecordKind::Upgrade {
                    key: key.to_owned(),
                    level,
                    hlc: meta.hlc,
                }),
            ];
            let queued = !meta.in_origin && !st.pending.contains_key(key);
            if queued {
                let rec = PendingRec {
                    seq: meta.seq,
                    kind: PendingRecKind::Put,
                    not_before_ms: 0,
                    hlc: meta.hlc,
                };
                st.set_pending(key, rec.clone());
                ops.push(Op::PutPending(key.to_owned(), rec));
            }
            core.refresh_metrics(&st);
            (core.submit(ops)?, meta, queued)
        };
        Journal::wait(ack).await?;
        if queued {
            self.notify_pending();
        }
        Ok(meta)
    }

    /// Raises the level of the version of `key` with this hlc, like [`Shard::upgrade`];
    /// no-op (false) when the key holds another version or already has that level.
    pub async fn upgrade_version(
        &self,
        key: &str,
        hlc: u64,
        level: u8,
    ) -> Result<bool, StoreError> {
        let matches = matches!(
            self.core.state.borrow().index.get(&self.core.journal, key),
            Some(m) if m.hlc == hlc && m.level < level
        );
        if !matches {
            return Ok(false);
        }
        // No await between the check and upgrade's own (synchronous) index update.
        self.upgrade(key, level).await?;
        Ok(true)
    }

    /// Pending origin operations that are due, oldest first (at most `limit`). Ops whose
    /// `not_before` lies in the future are left out until then.
    pub fn pending(&self, limit: usize) -> Vec<PendingOp> {
        let core = &self.core;
        let st = core.state.borrow();
        let now = wall_ms();
        let mut out = Vec::new();
        for (&seq, key) in &st.pending_order {
            if out.len() >= limit {
                break;
            }
            let Some(rec) = st.pending.get(key) else {
                continue;
            };
            if rec.not_before_ms > now {
                continue;
            }
            let kind = match rec.kind {
                PendingRecKind::Delete => PendingKind::Delete,
                PendingRecKind::Put => match st.index.seq(key) {
                    Some(s) if s == seq => match st.index.get(&core.journal, key) {
                        Some(m) => PendingKind::Put {
                            body: core.body_at(&m),
                            len: m.size,
                            meta: Rc::unwrap_or_clone(m),
                        },
                        None => continue,
                    },
                    _ => continue,
                },
            };
            out.push(PendingOp {
                key: key.clone(),
                seq,
                kind,
            });
        }
        out
    }

    /// Earliest `not_before` (ms since epoch) of pending ops not due yet, for the
    /// uploader's sleep. Call it before [`Shard::pending`]: an op that comes due between
    /// the two calls is then returned by `pending` rather than missed by both.
    pub fn next_deferred_ms(&self) -> Option<u64> {
        let now = wall_ms();
        self.core
            .state
            .borrow()
            .pending
            .values()
            .map(|p| p.not_before_ms)
            .filter(|&t| t > now)
            .min()
    }

    /// The seq of the key's pending origin op (upload or delete), if one is queued.
    pub fn pending_seq(&self, key: &str) -> Option<u64> {
        self.core.state.borrow().pending.get(key).map(|p| p.seq)
    }

    /// Resolves when a pending op may be available (after a write or delete that queued one).
    pub async fn pending_changed(&self) {
        self.core.pending_notify.notified().await;
    }

    /// Marks a pending op done. If the key has since been rewritten (another seq), the newer
    /// op stays pending. A completed put marks the object `in_origin` and unpins it.
    pub async fn complete_pending(&self, key: &str, seq: u64) -> Result<(), StoreError> {
        self.complete_pending_logging(key, seq, Vec::new()).await
    }

    /// [`Shard::complete_pending`], and in the same journal commit the sync log entries
    /// of the backends that missed the op (each supersedes the backend's older entry for
    /// the key). Nothing is logged if the op was superseded meanwhile: the newer op
    /// goes to every backend anyway.
    pub async fn complete_pending_logging(
        &self,
        key: &str,
        seq: u64,
        missed: Vec<crate::SyncEntry>,
    ) -> Result<(), StoreError> {
        let ack = {
            let mut st = self.core.state.borrow_mut();
            if st.pending.get(key).map(|p| p.seq) != Some(seq) {
                return Ok(());
            }
            let rec = st.clear_pending(key).expect("checked above");
            let put = rec.kind == PendingRecKind::Put;
            let extra = self.sync_ops(missed);
            self.origin_has(&mut st, key, Some(rec), |m| put && m.seq == seq, extra)?
        };
        Journal::wait(ack.expect("a pending op was cleared")).await
    }

    /// Marks the pending op of the entry of `key` whose hlc is `hlc` as done (the origin
    /// has it, e.g. a peer uploaded it): like [`Shard::complete_pending`] but matched by
    /// hlc. A version with that hlc also becomes `in_origin` (and unpinned) when it had no
    /// pending upload. Returns true if something changed.
    pub async fn mark_uploaded(&self, key: &str, hlc: u64) -> Result<bool, StoreError> {
        let ack = {
            let mut st = self.core.state.borrow_mut();
            let rec = if st.pending.get(key).is_some_and(|p| p.hlc == hlc) {
                st.clear_pending(key)
            } else {
                None
            };
            self.origin_has(&mut st, key, rec, |m| m.hlc == hlc, Vec::new())?
        };
        match ack {
            Some(ack) => Journal::wait(ack).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// The origin has an entry of `key`: `cleared` is its pending op (already taken out of
    /// the in-memory state); the current object becomes `in_origin` if `object` matches it.
    /// Journals both and an Uploaded record; `None` when neither applied.
    pub(super) fn origin_has(
        &self,
        st: &mut State,
        key: &str,
        cleared: Option<PendingRec>,
        object: impl Fn(&ObjectMeta) -> bool,
        extra: Vec<Op>,
    ) -> Result<Option<Ack>, StoreError> {
        let core = &self.core;
        let mut ops = extra;
        let mut done = None;
        if let Some(rec) = cleared {
            ops.push(Op::RemovePending(key.to_owned()));
            done = Some((rec.seq, rec.hlc));
        }
        if let Some(old) = st.index.get(&core.journal, key) {
            if !old.in_origin && object(&old) {
                let mut m = (*old).clone();
                m.in_origin = true;
                done = Some((m.seq, m.hlc));
                ops.push(Op::PutEntry(key.to_owned(), StoredEntry::Object(m.clone())));
                st.index.replace(&core.journal, key, Rc::new(m));
                st.index.set_pinned(key, false);
            }
        }
        let Some((seq, hlc)) = done else {
            return Ok(None);
        };
        ops.push(core.record(RecordKind::Uploaded {
            key: key.to_owned(),
            seq,
            hlc,
        }));
        core.refresh_metrics(st);
        core.submit(ops).map(Some)
    }
}
