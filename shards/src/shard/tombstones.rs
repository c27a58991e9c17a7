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
            if !st.tombstone_applies(&core.journal, t, ttl_ms, wall_ms()) {
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
        if st.tomb(&core.journal, key).is_none() {
            st.tombstones += 1;
        }
        st.add_tomb(key, Tomb::of(&tomb));
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
        let committed = Journal::wait(q.ack).await;
        {
            // Committed, the journal shows it; failed, it was never stored. Either way the
            // queued copy goes (unless a later delete of the key replaced it).
            let mut st = self.core.state.borrow_mut();
            if st
                .fresh_tombs
                .get(&q.tomb.key)
                .is_some_and(|t| t.seq == q.tomb.seq)
            {
                st.fresh_tombs.remove(&q.tomb.key);
            }
        }
        committed?;
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
            if st.index.contains_key(key) {
                if let Some((_, Some(path))) = core.unlink_object(&mut st, key) {
                    files.push(path);
                }
            } else if st.tomb(&core.journal, key).is_some() {
                st.fresh_tombs.remove(key);
                st.tombstones = st.tombstones.saturating_sub(1);
            } else {
                return Ok(());
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
    /// true, e.g. only those every peer has seen. Returns how many. The journal is scanned
    /// off the shard thread, and only once a tombstone may have expired; the scan also
    /// rebuilds the tombstone filter.
    pub async fn sweep_tombstones_where(
        &self,
        may_drop: impl Fn(&Tombstone) -> bool,
    ) -> Result<u64, StoreError> {
        let core = &self.core;
        let ttl_ms = core.cfg.tombstone_ttl.as_millis() as u64;
        let now = wall_ms();
        {
            let mut st = core.state.borrow_mut();
            if st.tomb_filter_added.is_some()
                || !crate::tombstone_expired(st.oldest_tomb_ms, ttl_ms, now)
            {
                return Ok(0);
            }
            // Tombstones queued from here on may miss the scan's snapshot: their
            // fingerprints are kept when the filter is swapped.
            let queued: Vec<u64> = st.fresh_tombs.keys().map(|k| key_fingerprint(k)).collect();
            st.tomb_filter_added = Some(queued);
        }
        let scan = core.journal.scan_tombstones(ttl_ms, now).await;
        let (ack, swept) = self.apply_scan(scan, &may_drop)?;
        if let Some(ack) = ack {
            Journal::wait(ack).await?;
        }
        Ok(swept)
    }

    /// The synchronous half of a sweep: swaps in the rebuilt filter and queues the
    /// removal of the expired tombstones that may go.
    fn apply_scan(
        &self,
        scan: Result<crate::journal::TombstoneScan, StoreError>,
        may_drop: &impl Fn(&Tombstone) -> bool,
    ) -> Result<(Option<Ack>, u64), StoreError> {
        let core = &self.core;
        let mut st = core.state.borrow_mut();
        let added = st.tomb_filter_added.take().unwrap_or_default();
        let scan = scan?;
        let mut filter: HashSet<u64> = scan.fingerprints.into_iter().chain(added).collect();
        let mut oldest = scan.oldest_kept_ms;
        for t in st.fresh_tombs.values() {
            oldest = oldest.min(t.deleted_at_ms);
        }
        let mut ops = Vec::new();
        let mut swept = 0u64;
        for t in scan.expired {
            // A newer write or delete of the key since the scan's snapshot keeps it (the
            // journal removes the entry only if it is still this tombstone).
            let kept = st.index.contains_key(t.key.as_str())
                || st.fresh_tombs.contains_key(&t.key)
                || st.pending.contains_key(&t.key)
                || !may_drop(&t);
            if kept {
                filter.insert(key_fingerprint(&t.key));
                oldest = oldest.min(t.deleted_at_ms);
                continue;
            }
            swept += 1;
            // Filtered until the next scan: the removal below commits later.
            filter.insert(key_fingerprint(&t.key));
            ops.push(Op::RemoveTombstone {
                key: t.key.clone(),
                seq: t.seq,
            });
            ops.push(core.record(RecordKind::TombstoneExpired {
                key: t.key,
                seq: t.seq,
            }));
        }
        st.tomb_filter = filter;
        st.oldest_tomb_ms = oldest;
        st.tombstones = st.tombstones.saturating_sub(swept);
        core.refresh_metrics(&st);
        if ops.is_empty() {
            return Ok((None, 0));
        }
        Ok((Some(core.submit(ops)?), swept))
    }
}

#[cfg(test)]
impl Shard {
    /// Queues the sweep's conditional removal of `key`'s tombstone `seq` (tests: a sweep
    /// racing a newer delete of the key).
    pub(crate) async fn remove_tombstone_if(&self, key: &str, seq: u64) {
        let ack = self
            .core
            .submit(vec![Op::RemoveTombstone {
                key: key.to_owned(),
                seq,
            }])
            .unwrap();
        Journal::wait(ack).await.unwrap();
    }
}
