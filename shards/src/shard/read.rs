//! Reads: lookups, whole-object reads, streaming readers, and verification of object
//! files (header, checksum table, blocks) with corrupt versions dropped.

use super::*;

/// An object file opened and verified up to its checksum table.
pub(super) struct OpenObject {
    file: AnyFile,
    header: Header,
    table: Vec<u32>,
}

impl Core {
    /// Counts and logs a verification failure, drops the object version from the index
    /// (journaled) and deletes its file. Returns the error to hand to the caller.
    pub(super) async fn drop_corrupt(&self, meta: &ObjectMeta, err: StoreError) -> StoreError {
        let StoreError::Corrupt {
            what,
            expected,
            actual,
            ..
        } = &err
        else {
            return err;
        };
        self.metrics
            .checksum_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            shard = self.cfg.shard_id, key = %meta.key, seq = meta.seq, what = *what,
            expected = %expected, actual = %actual,
            "object failed verification; dropping it"
        );
        let ack = {
            let mut st = self.state.borrow_mut();
            if st.holds_version(&meta.key, meta.seq) {
                self.unlink_object(&mut st, &meta.key);
                let ops = vec![
                    Op::RemoveEntry(meta.key.clone()),
                    Op::RemovePending(meta.key.clone()),
                    self.record(RecordKind::Corrupt {
                        key: meta.key.clone(),
                        seq: meta.seq,
                    }),
                ];
                self.refresh_metrics(&st);
                self.submit(ops).ok()
            } else {
                None
            }
        };
        if let Some(ack) = ack {
            if let Err(e) = Journal::wait(ack).await {
                tracing::error!(error = %e, "journaling the removal of a corrupt object");
            }
        }
        if !meta.inline {
            self.remove_files(vec![self.object_path(meta.seq)]).await;
        }
        err
    }

    /// Reads and verifies an inline body from the journal. `NotFound` when the version
    /// was replaced or removed while the read was on its way (a file stays readable
    /// while open; an inline body goes with its entry): the caller looks the key up again.
    pub(super) async fn read_inline(&self, meta: &ObjectMeta) -> Result<Bytes, StoreError> {
        let key = &meta.key;
        let value = self.journal.read_body(key).await?;
        let checked = match &value {
            None => Err(Mismatch::new("inline body", "present", "missing")),
            Some(v) => crate::inline::decode(v, meta.seq, meta.size, meta.crc32c).map(drop),
        };
        if let Err(m) = checked {
            if !self.state.borrow().holds_version(key, meta.seq) {
                return Err(StoreError::NotFound);
            }
            return Err(corrupt(key, m));
        }
        let value = value.unwrap_or_default();
        let mut b = Bytes::from(value);
        Ok(b.split_off(crate::inline::INLINE_HEADER))
    }

    /// Opens an object file and verifies its header against `meta` and its table.
    pub(super) async fn open_object(&self, meta: &ObjectMeta) -> Result<OpenObject, StoreError> {
        let key = &meta.key;
        let file = match self.device.open(&self.object_path(meta.seq)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(
                    key,
                    Mismatch::new("data file", "present", "missing"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let (res, buf) = file
            .read_full_at(AlignedBuf::with_capacity(HEADER_SIZE), 0, HEADER_SIZE)
            .await;
        res?;
        let header = Header::decode(buf.as_slice()).map_err(|m| corrupt(key, m))?;
        let check = |what, expected, actual| check_eq(key, what, expected, actual);
        check("header key", key.clone(), header.key.clone())?;
        check("header seq", meta.seq.to_string(), header.seq.to_string())?;
        check(
            "body size",
            meta.size.to_string(),
            header.body_size.to_string(),
        )?;
        check(
            "body checksum",
            format!("{:08x}", meta.crc32c),
            format!("{:08x}", header.body_crc),
        )?;
        let tlen = format::table_len(header.n_blocks);
        let mut table = Vec::new();
        if tlen > 0 {
            let want = align_up(tlen);
            let (res, buf) = file
                .read_full_at(AlignedBuf::with_capacity(want), header.table_off, want)
                .await;
            res?;
            table = format::check_table(&header, buf.as_slice()).map_err(|m| corrupt(key, m))?;
        }
        Ok(OpenObject {
            file,
            header,
            table,
        })
    }

    /// Reads block `i` into `buf` and verifies it; returns the buffer and the block's
    /// body length (`buf.as_slice()[..len]` is the verified data).
    pub(super) async fn read_block(
        obj: &OpenObject,
        i: u64,
        buf: AlignedBuf,
    ) -> Result<(AlignedBuf, usize), StoreError> {
        let key = &obj.header.key;
        let start = i * BLOCK_SIZE;
        let want = align_up(format::block_len(obj.header.body_size, i));
        let (res, buf) = obj.file.read_full_at(buf, BODY_OFFSET + start, want).await;
        res?;
        let len = format::check_block(&obj.header, &obj.table, i, buf.as_slice())
            .map_err(|m| corrupt(key, m))?;
        Ok((buf, len))
    }

    /// Admits a body just read to the memory tier, if its version is still the current one.
    fn admit_read(&self, meta: &ObjectMeta, body: &Bytes) {
        let mut st = self.state.borrow_mut();
        if st.holds_version(&meta.key, meta.seq) {
            self.mem_admit(&mut st, &meta.key, meta.seq, body.clone());
            self.refresh_metrics(&st);
        }
    }

    pub(super) async fn read_all_inner(&self, meta: &ObjectMeta) -> Result<Bytes, StoreError> {
        if meta.inline {
            return self.read_inline(meta).await;
        }
        let obj = self.open_object(meta).await?;
        let mut out = BytesMut::with_capacity(meta.size as usize);
        let mut buf = AlignedBuf::with_capacity(BLOCK_SIZE as usize);
        for i in 0..obj.header.n_blocks {
            let (b, len) = Self::read_block(&obj, i, buf).await?;
            out.extend_from_slice(&b.as_slice()[..len]);
            buf = b;
        }
        Ok(out.freeze())
    }
}

impl Shard {
    pub(super) fn lookup_inner(&self, key: &str, count: bool) -> Lookup {
        let core = &self.core;
        let mut st = core.state.borrow_mut();
        let m = &core.metrics;
        match st.index.get_keep(&core.journal, key, count) {
            Some(meta) => {
                let body = st
                    .mem_bodies
                    .get(key)
                    .filter(|(s, _)| *s == meta.seq)
                    .map(|(_, b)| b.clone());
                if count {
                    m.hits.fetch_add(1, Ordering::Relaxed);
                    if body.is_some() {
                        m.memory_hits.fetch_add(1, Ordering::Relaxed);
                        st.mem.access(key);
                    }
                }
                Lookup::Hit { meta, body }
            }
            None => match st.tomb(&core.journal, key) {
                Some(t) => {
                    if count {
                        m.hits.fetch_add(1, Ordering::Relaxed);
                    }
                    Lookup::Deleted(t.with_key(key))
                }
                None => {
                    if count {
                        m.misses.fetch_add(1, Ordering::Relaxed);
                    }
                    Lookup::Miss
                }
            },
        }
    }

    /// Objects whose key starts with `prefix` and passes `keep` (tombstones are not
    /// listed): their metadata, and whether an origin op of the key is still pending.
    /// A scan of the whole index (invalidation by prefix, an admin operation).
    pub fn objects_with_prefix(
        &self,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<(Rc<ObjectMeta>, bool)> {
        let st = self.core.state.borrow();
        st.index
            .keys()
            .filter(|k| k.starts_with(prefix) && keep(k))
            .filter_map(|k| {
                let meta = st.index.get(&self.core.journal, k)?;
                Some((meta, st.pending.contains_key(&**k)))
            })
            .collect()
    }

    /// Looks a key up; counts a hit or a miss (a tombstone counts as a hit); touches eviction state.
    pub fn lookup(&self, key: &str) -> Lookup {
        self.lookup_inner(key, true)
    }

    /// Looks a key up without counting or touching eviction state.
    pub fn peek(&self, key: &str) -> Lookup {
        self.lookup_inner(key, false)
    }

    /// Reads and verifies a whole object (any size the caller is willing to hold) and,
    /// if small enough, admits it to the memory tier. On a checksum mismatch the object is
    /// dropped from the index (journaled), counted, and `Corrupt` returned.
    pub async fn read_all(&self, meta: &ObjectMeta) -> Result<Bytes, StoreError> {
        let core = &self.core;
        if let Some(b) = core.mem_get(&meta.key, meta.seq, true) {
            return Ok(b);
        }
        match core.read_all_inner(meta).await {
            Ok(body) => {
                core.admit_read(meta, &body);
                Ok(body)
            }
            Err(e) => Err(core.drop_corrupt(meta, e).await),
        }
    }

    /// Opens a streaming reader over `range` of the object's body. Each chunk it yields
    /// has been checked against its block checksum. The range is clamped to the body.
    pub async fn open_reader(
        &self,
        meta: &ObjectMeta,
        range: Range<u64>,
    ) -> Result<ObjectReader, StoreError> {
        let core = &self.core;
        let end = range.end.min(meta.size);
        let start = range.start.min(end);
        let source = if let Some(b) = core.mem_get(&meta.key, meta.seq, true) {
            Source::Memory(b)
        } else if meta.inline {
            match core.read_inline(meta).await {
                Ok(b) => {
                    core.admit_read(meta, &b);
                    Source::Memory(b)
                }
                Err(e) => return Err(core.drop_corrupt(meta, e).await),
            }
        } else {
            match core.open_object(meta).await {
                Ok(obj) => Source::File(obj, None),
                Err(e) => return Err(core.drop_corrupt(meta, e).await),
            }
        };
        Ok(ObjectReader {
            core: core.clone(),
            meta: meta.clone(),
            source,
            pos: start,
            end,
        })
    }
}

enum Source {
    Memory(Bytes),
    File(OpenObject, Option<AlignedBuf>),
}

/// Streams verified chunks of one object's body. Keeps the file open, so an overwrite
/// or eviction of the key while streaming does not disturb it.
pub struct ObjectReader {
    core: Rc<Core>,
    meta: ObjectMeta,
    source: Source,
    pos: u64,
    end: u64,
}

impl ObjectReader {
    /// The next chunk of the requested range, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, StoreError>> {
        if self.pos >= self.end {
            return None;
        }
        let block = self.pos / BLOCK_SIZE;
        let block_start = block * BLOCK_SIZE;
        let from = (self.pos - block_start) as usize;
        let to = (self.end.min(block_start + BLOCK_SIZE) - block_start) as usize;
        let chunk = match &mut self.source {
            Source::Memory(b) => b.slice(block_start as usize + from..block_start as usize + to),
            Source::File(obj, spare) => {
                let buf = spare
                    .take()
                    .unwrap_or_else(|| AlignedBuf::with_capacity(BLOCK_SIZE as usize));
                match Core::read_block(obj, block, buf).await {
                    Ok((buf, _len)) => {
                        let chunk = Bytes::copy_from_slice(&buf.as_slice()[from..to]);
                        *spare = Some(buf);
                        chunk
                    }
                    Err(e) => {
                        self.pos = self.end;
                        return Some(Err(self.core.drop_corrupt(&self.meta, e).await));
                    }
                }
            }
        };
        self.pos = block_start + to as u64;
        Some(Ok(chunk))
    }
}
