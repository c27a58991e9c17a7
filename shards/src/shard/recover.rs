//! Opening a shard: the journal's entries and pending ops rebuild the in-memory index
//! and tiers; data files of writes that never committed are removed.

use super::*;

impl Shard {
    /// Opens (or creates) the shard in `cfg.dir`: opens the journal, rebuilds the
    /// in-memory index, removes orphaned data files left by writes that never committed.
    #[expect(
        clippy::disallowed_methods,
        reason = "start-up, before the shard serves any request"
    )]
    pub async fn open(cfg: ShardConfig) -> Result<(Shard, RecoveryReport), StoreError> {
        let started = Instant::now();
        let objects_dir = cfg.dir.join("objects");
        for i in 0..256 {
            std::fs::create_dir_all(objects_dir.join(format!("{i:02x}")))?;
        }
        let metrics = Arc::new(ShardMetrics::default());
        metrics
            .disk_capacity
            .store(cfg.disk_capacity, Ordering::Relaxed);
        metrics
            .memory_capacity
            .store(cfg.memory_capacity, Ordering::Relaxed);
        let (journal, rec) = Journal::open(
            &cfg.dir.join("journal"),
            cfg.lmdb_map_size,
            cfg.journal_retain,
            metrics.clone(),
            cfg.shard_id,
        )?;

        let mut report = RecoveryReport::default();
        let mut st = State {
            index: index::Index::new(
                cfg.disk_capacity,
                rec.entry_count as usize,
                cfg.meta_cache_objects,
                metrics.clone(),
            ),
            reserved: 0,
            mem: S3Fifo::new(cfg.memory_capacity),
            mem_bodies: HashMap::default(),
            pending: HashMap::new(),
            pending_order: BTreeMap::new(),
            tombstones: 0,
            fresh_tombs: HashMap::new(),
            tomb_filter: HashSet::new(),
            tomb_filter_added: None,
            oldest_tomb_ms: u64::MAX,
        };
        let mut max_seq = rec.last_record_seq;
        let mut max_hlc = rec.hlc;
        let mut live = HashSet::with_capacity(rec.entry_count as usize);
        // Pending records written before they carried the hlc take their tombstone's.
        let legacy_pending: HashSet<String> = rec
            .pending
            .iter()
            .filter(|(_, p)| p.hlc == 0)
            .map(|(k, _)| k.clone())
            .collect();
        let mut legacy_tomb_hlc: HashMap<String, (u64, u64)> = HashMap::new();
        journal.for_each_entry(|e| match e {
            StoredEntry::Object(m) => {
                max_seq = max_seq.max(m.seq);
                max_hlc = max_hlc.max(m.hlc);
                live.insert(m.seq);
                report.objects += 1;
                let key: Rc<str> = Rc::from(m.key.as_str());
                st.index
                    .insert_cold(key, m.seq, m.inline, m.size, !m.in_origin);
            }
            StoredEntry::Tombstone(t) => {
                max_seq = max_seq.max(t.seq);
                max_hlc = max_hlc.max(t.hlc);
                report.tombstones += 1;
                st.tombstones += 1;
                st.tomb_filter.insert(key_fingerprint(&t.key));
                if legacy_pending.contains(t.key.as_str()) {
                    legacy_tomb_hlc.insert(t.key.clone(), (t.seq, t.hlc));
                }
                st.oldest_tomb_ms = st.oldest_tomb_ms.min(t.deleted_at_ms);
            }
        })?;
        // Sized for every entry, tombstones included; only objects stay in the index.
        // Shrinking copies it, so only when tombstones took much of the room.
        if report.tombstones > report.objects / 8 {
            st.index.shrink_to_fit();
        }
        for (key, mut p) in rec.pending {
            max_seq = max_seq.max(p.seq);
            report.pending += 1;
            if p.hlc == 0 {
                // Written before pending records carried the hlc.
                p.hlc = match st.index.get(&journal, key.as_str()) {
                    Some(m) if m.seq == p.seq => m.hlc,
                    _ => legacy_tomb_hlc
                        .get(&key)
                        .filter(|(seq, _)| *seq == p.seq)
                        .map_or(0, |(_, hlc)| *hlc),
                };
            }
            st.set_pending(&key, p);
        }

        // Files of writes that crashed before their commit.
        for i in 0..256 {
            for de in std::fs::read_dir(objects_dir.join(format!("{i:02x}")))? {
                let de = de?;
                let name = de.file_name();
                let seq = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok());
                if seq.is_some_and(|s| live.contains(&s)) {
                    continue;
                }
                match std::fs::remove_file(de.path()) {
                    Ok(()) => report.orphans_removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %de.path().display(), error = %e, "removing orphan")
                    }
                }
            }
        }

        let core = Core {
            device: AnyDevice::new(cfg.device),
            hlc: Hlc::starting_after(max_hlc),
            metrics,
            journal,
            next_seq: Cell::new(rec.next_seq.max(max_seq + 1).max(1)),
            writing: RefCell::new(BTreeSet::new()),
            last_queued: Cell::new(rec.last_record_seq),
            state: RefCell::new(st),
            pending_notify: tokio::sync::Notify::new(),
            sync: RefCell::new(synclog::SyncState::recover(rec.sync)?),
            sync_notify: tokio::sync::Notify::new(),
            cfg,
            block_bufs: RefCell::new(Vec::new()),
        };
        core.refresh_metrics(&core.state.borrow());
        report.elapsed = started.elapsed();
        tracing::info!(
            shard = core.cfg.shard_id, objects = report.objects, tombstones = report.tombstones,
            pending = report.pending, orphans = report.orphans_removed,
            device = ?core.device.active_kind(), direct_io = core.device.direct_io(),
            elapsed_ms = report.elapsed.as_millis() as u64, "shard recovered"
        );
        Ok((
            Shard {
                core: Rc::new(core),
            },
            report,
        ))
    }
}
