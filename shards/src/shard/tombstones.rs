//! Deletes: tombstones (local and from peers), their expiry, and forgetting objects.

use super::*;

/// A tombstone put in the index whose journal batch is queued.
struct QueuedTombstone {
    ack: Ack,
    /// The replaced object's file, removed once the tombstone is durable.
    files: Vec<PathBuf>,
    /// An origin delete was queued.
    queued: bool,
    tomb: Tombstone,
}

impl Shard {
    /// Writes a durable tombstone. With `level >= 1` an origin delete is queued as pending.
    pub async fn delete(&self, key: &str, level: u8) -> Result<Tombstone, StoreError> {
        check_key(key)?;
        let core = &self.core;
        let tomb = {
            let mut st = core.state.borrow_mut();
            let tomb = Tombstone {
                key: key.to_owned(),
                hlc: core.hlc.now(),
                seq: core.alloc_seq(),
                deleted_at_ms: wall_ms(),
                level,
            };
            let origin_delete = (level >= 1).then_some(0);
            self.queue_tombstone(&mut st, tomb, origin_delete)?
        };
        self.finish_tombstone(tomb).await
    }

    /// Applies a tombstone produced elsewhere if it is newer (last-writer-wins: it beats a
    /// version with a lower or equal hlc) and, when the key holds nothing, not past its
    /// TTL ([`crate::tombstone_applies`]). Observes `t.hlc`. The stored tombstone keeps
    /// `t`'s hlc, deleted_at_ms and level but gets a local seq. If `origin_delete_after_ms`
    /// is `Some` and `t.level >= 1`, queues an origin delete the uploader may not start
    /// before that wall-clock time (ms since epoch). Returns true if applied.
    pub async fn apply_tombstone(
        &self,
        t: &Tombstone,
        origin_delete_after_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        check_key(&t.key)?;
        let core = &self.core;
        core.hlc.observe(t.hlc);
        let tomb = {
            let mut st = core.state.borrow_mut();
            let ttl_ms = core.cfg.tombstone_ttl.as_millis() as u64;
            if !st.tombstone_applies(t, ttl_ms, wall_ms()) {
                return Ok(false);
            }
            let tomb = Tombstone {
                seq: core.alloc_seq(),
                ..t.clone()
            };
            let origin_delete = origin_delete_after_ms.filter(|_| t.level >= 1);
            self.queue_tombstone(&mut st, tomb, origin_delete)?
        };
        self.finish_tombstone(tomb).await?;
        Ok(true)
    }

    /// Puts `tomb` in the index in place of whatever the key held and queues its journal
    /// batch; `origin_delete`: queue an origin delete not to start before this time (ms).
    fn queue_tombstone(
        &self,
        st: &mut State,
        tomb: Tombstone,
        origin_delete: Option<u64>,
    ) -> Result<QueuedTombstone, StoreError> {
        let core = &self.core;
        let key = tomb.key.as_str();
        let mut files = Vec::new();
        if let Some((_, Some(path))) = core.unlink_object(st, key) {
            files.push(path);
        }
        if !matches!(
            st.index
                .insert(key.to_owned(), Entry::Tombstone(Tomb::of(&tomb))),
            Some(Entry::Tombstone(_))
        ) {
            st.tombstones += 1;
        }
        let mut ops = vec![
            Op::PutEntry(key.to_owned(), StoredEntry::Tombstone(tomb.clone())),
            Op::Record(Record {
                seq: tomb.seq,
                hlc: tomb.hlc,
                kind: RecordKind::Delete(tomb.clone()),
            }),
        ];
        if let Some(not_before_ms) = origin_delete {
            let rec = PendingRec {
                seq: tomb.seq,
                kind: PendingRecKind::Delete,
                not_before_ms,
                hlc: tomb.hlc,
            };
            st.set_pending(key, rec.clone());
            ops.push(Op::PutPending(key.to_owned(), rec));
        } else if !st.pending.contains_key(key) {
            // unlink_object dropped a pending put, if any.
            ops.push(Op::RemovePending(key.to_owned()));
        }
        core.refresh_metrics(st);
        Ok(QueuedTombstone {
            ack: core.submit(ops)?,
            files,
            queued: origin_delete.is_some(),
            tomb,
        })
    }

    /// Waits for a tombstone's commit, then removes the replaced file.
    async fn finish_tombstone(&self, q: QueuedTombstone) -> Result<Tombstone, StoreError> {
        Journal::wait(q.ack).await?;
        self.core.remove_files(q.files).await;
        if q.queued {
            self.notify_pending();
        }
        Ok(q.tomb)
    }

    /// Drops the object (not a delete: no tombstone) — e.g. after the origin says it's gone.
    pub async fn forget(&self, key: &str) -> Result<(), StoreError> {
        let core = &self.core;
        let (ack, files) = {
            let mut st = core.state.borrow_mut();
            let mut files = Vec::new();
            match st.index.get(key) {
                None => return Ok(()),
                Some(Entry::Object(_)) => {
                    if let Some((_, Some(path))) = core.unlink_object(&mut st, key) {
                        files.push(path);
                    }
                }
                Some(Entry::Tombstone(_)) => {
                    st.index.remove(key);
                    st.tombstones -= 1;
                }
            }
            st.clear_pending(key);
            let ops = vec![
                Op::RemoveEntry(key.to_owned()),
                Op::RemovePending(key.to_owned()),
                core.record(RecordKind::Forget {
                    key: key.to_owned(),
                }),
            ];
            core.refresh_metrics(&st);
            (core.submit(ops)?, files)
        };
        Journal::wait(ack).await?;
        core.remove_files(files).await;
        Ok(())
    }

    /// Removes expired tombstones (those without a pending origin delete). Returns how many.
    pub async fn sweep_tombstones(&self) -> Result<u64, StoreError> {
        self.sweep_tombstones_where(|_| true).await
    }

    /// Removes expired tombstones (TTL, no pending origin delete) for which `may_drop` is
    /// true, e.g. only those every peer has seen. Returns how many.
    pub async fn sweep_tombstones_where(
        &self,
        may_drop: impl Fn(&Tombstone) -> bool,
    ) -> Result<u64, StoreError> {
        let core = &self.core;
        let ttl_ms = core.cfg.tombstone_ttl.as_millis() as u64;
        let now = wall_ms();
        let ack = {
            let mut st = core.state.borrow_mut();
            let expired: Vec<(String, u64)> = st
                .index
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Tombstone(t)
                        if crate::tombstone_expired(t.deleted_at_ms, ttl_ms, now)
                            && !st.pending.contains_key(k)
                            && may_drop(&t.with_key(k)) =>
                    {
                        Some((k.clone(), t.seq))
                    }
                    _ => None,
                })
                .collect();
            if expired.is_empty() {
                return Ok(0);
            }
            let mut ops = Vec::new();
            for (key, seq) in &expired {
                st.index.remove(key);
                st.tombstones -= 1;
                ops.push(Op::RemoveEntry(key.clone()));
                ops.push(core.record(RecordKind::TombstoneExpired {
                    key: key.clone(),
                    seq: *seq,
                }));
            }
            core.refresh_metrics(&st);
            (core.submit(ops)?, expired.len() as u64)
        };
        Journal::wait(ack.0).await?;
        Ok(ack.1)
    }
}
