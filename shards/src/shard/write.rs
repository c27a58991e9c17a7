//! Writes: object writers (client writes, read-through fetches, replicas), their
//! durable commit, and abandonment.

use super::capacity::RESERVE_AHEAD;
use super::*;

impl Shard {
    /// Starts writing a new version of `key`. `expected_len`, when known, is checked up
    /// front (`InsufficientStorage` when it cannot fit even after evicting every unpinned
    /// object) but not reserved: disk space is reserved (evicting as needed) as bytes
    /// arrive, at most [`RESERVE_AHEAD`] bytes ahead of them, so a writer that declares a
    /// large size and sends nothing evicts nothing and holds nothing.
    pub async fn begin_write(
        self: &Rc<Self>,
        key: &str,
        expected_len: Option<u64>,
    ) -> Result<ObjectWriter, StoreError> {
        self.begin(key, expected_len, Some(Md5::new())).await
    }

    /// Starts storing a body fetched from the origin, whose ETag is the origin's: like
    /// [`Shard::begin_write`] without the body's MD5 (finish it with
    /// [`WriteAttrs::fetched`] set).
    pub async fn begin_fetched_write(
        self: &Rc<Self>,
        key: &str,
        expected_len: Option<u64>,
    ) -> Result<ObjectWriter, StoreError> {
        self.begin(key, expected_len, None).await
    }

    async fn begin(
        self: &Rc<Self>,
        key: &str,
        expected_len: Option<u64>,
        md5: Option<Md5>,
    ) -> Result<ObjectWriter, StoreError> {
        check_key(key)?;
        let core = &self.core;
        if let Some(n) = expected_len {
            core.check_fits(n)?;
        }
        let reserved = 0;
        let seq = core.alloc_seq();
        core.writing.borrow_mut().insert(seq);
        let base = core.state.borrow().index.seq(key);
        let path = core.object_path(seq);
        Ok(ObjectWriter {
            shard: self.clone(),
            key: key.to_owned(),
            seq,
            path,
            file: None,
            file_created: false,
            buf: Some(core.take_block_buf()),
            written: 0,
            reserved,
            expected_len,
            table: Vec::new(),
            body_crc: 0,
            md5,
            small: Some(BytesMut::new()),
            deferred: core.cfg.inline_object_max > 0,
            base,
            done: false,
        })
    }

    /// Starts storing a replica of `meta` (a version produced on another node); finish it
    /// with [`ObjectWriter::finish_replica`]. `Ok(None)` when the local copy is as new or
    /// newer (see [`Shard::is_newer`]). Observes `meta.hlc`.
    pub async fn begin_replica(
        self: &Rc<Self>,
        meta: &ObjectMeta,
    ) -> Result<Option<ObjectWriter>, StoreError> {
        self.core.hlc.observe(meta.hlc);
        if !self.is_newer(&meta.key, meta.hlc, &meta.etag) {
            return Ok(None);
        }
        // The replica keeps the writer's ETag: no MD5 of the body here.
        self.begin(&meta.key, Some(meta.size), None).await.map(Some)
    }
}

/// What must still hold when a finished write is committed.
enum Guard<'a> {
    /// Nothing: a client write always becomes the newest version.
    None,
    /// The key is unchanged since the write began (a read-through never resurrects a
    /// deleted key nor replaces a newer write).
    Base,
    /// The version is newer than what the key holds (last-writer-wins, for replicas).
    Newer { hlc: u64, etag: &'a str },
}

impl Guard<'_> {
    fn holds(&self, st: &State, journal: &Journal, key: &str, base: Option<u64>) -> bool {
        match self {
            Guard::None => true,
            Guard::Base => match st.index.seq(key) {
                None => st.tomb(journal, key).is_none(),
                seq => seq == base,
            },
            Guard::Newer { hlc, etag } => st.is_newer(journal, key, *hlc, etag),
        }
    }
}

/// An in-progress write. Dropping it without `finish` abandons it (the file is removed).
pub struct ObjectWriter {
    shard: Rc<Shard>,
    key: String,
    seq: u64,
    path: PathBuf,
    /// Created with the first full block, or at the end unless the body goes inline.
    file: Option<AnyFile>,
    file_created: bool,
    buf: Option<AlignedBuf>,
    written: u64,
    /// Disk bytes reserved for this write (>= written).
    reserved: u64,
    /// The size the writer declared, if any: reservations run ahead of the bytes written
    /// up to it.
    expected_len: Option<u64>,
    table: Vec<u32>,
    body_crc: u32,
    /// MD5 of the body so far, for the ETag of a client write; `None` when the ETag
    /// comes from elsewhere (the origin, a replica's writer).
    md5: Option<Md5>,
    /// The body while it is small enough for the memory tier, or to go inline.
    small: Option<BytesMut>,
    /// The body so far is only in `small`, not in the block buffer: it may still go
    /// inline, which then copies it once (into the journal) instead of twice.
    deferred: bool,
    /// Seq of the key's entry when the write began (for read-through supersession).
    base: Option<u64>,
    done: bool,
}

impl ObjectWriter {
    fn core(&self) -> &Core {
        &self.shard.core
    }

    /// Creates the object file if it is not there yet.
    async fn ensure_file(&mut self) -> Result<(), StoreError> {
        if self.file.is_none() {
            let f = self
                .shard
                .core
                .device
                .create(&self.path)
                .await
                .map_err(|e| StoreError::from_io(e, "creating an object file", 0))?;
            self.file = Some(f);
            self.file_created = true;
        }
        Ok(())
    }

    /// The body, when it goes inline into the journal rather than to a file: still kept
    /// back in `small` (never past the inline bound) and room in the journal's map.
    /// Otherwise the kept bytes go to the block buffer, for the file.
    async fn take_inline_body(&mut self) -> Result<Option<Bytes>, StoreError> {
        let core = &self.shard.core;
        if self.deferred
            && self.written <= core.cfg.inline_object_max
            && core.journal.inline_room(self.written)
        {
            self.deferred = false;
            let small = self.small.take().expect("deferred bytes are kept");
            debug_assert_eq!(small.len() as u64, self.written);
            return Ok(Some(small.freeze()));
        }
        // A file after all (no room in the journal): the kept bytes go to the file.
        self.undefer().await?;
        Ok(None)
    }

    /// Writes the full block in `buf` at its place in the file.
    async fn flush_block(&mut self) -> Result<(), StoreError> {
        self.ensure_file().await?;
        let mut buf = self.buf.take().expect("writer buffer");
        let len = buf.len();
        self.table.push(crc32c::crc32c(buf.as_slice()));
        buf.pad_to_alignment();
        let pos = BODY_OFFSET + (self.table.len() as u64 - 1) * BLOCK_SIZE;
        let file = self.file.as_ref().expect("writer file");
        let (res, mut buf) = file.write_all_at(buf, pos).await;
        buf.clear();
        self.buf = Some(buf);
        res.map_err(|e| StoreError::from_io(e, "writing an object file", len as u64))?;
        debug_assert!(len as u64 == BLOCK_SIZE || self.written % BLOCK_SIZE == len as u64);
        Ok(())
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let n = chunk.len() as u64;
        if self.written + n > self.reserved {
            // Reserve what arrived, plus up to RESERVE_AHEAD more of the declared size so
            // that a large body triggers one eviction batch per RESERVE_AHEAD, not per chunk.
            let exact = self.written + n - self.reserved;
            let ahead = self.expected_len.map_or(0, |declared| {
                declared.saturating_sub(self.reserved).min(RESERVE_AHEAD)
            });
            let (need, pending) = {
                let core = &self.shard.core;
                let mut st = core.state.borrow_mut();
                match core.reserve(&mut st, exact.max(ahead)) {
                    Ok(p) => (exact.max(ahead), p),
                    // The bytes at hand may still fit without the look-ahead.
                    Err(_) if ahead > exact => (exact, core.reserve(&mut st, exact)?),
                    Err(e) => return Err(e),
                }
            };
            self.reserved += need;
            if let Some((ack, files)) = pending {
                Journal::wait(ack).await?;
                self.core().remove_files(files).await;
            }
        }
        if let Some(md5) = &mut self.md5 {
            md5.update(&chunk);
        }
        self.body_crc = crc32c::crc32c_append(self.body_crc, &chunk);
        self.written += n;
        let cfg = &self.shard.core.cfg;
        let (mem_max, inline_max) = (cfg.memory_object_max, cfg.inline_object_max);
        if self.deferred {
            if self.written <= inline_max {
                // Still small enough to go inline: the bytes stay in `small` only.
                self.small
                    .as_mut()
                    .expect("deferred bytes are kept")
                    .extend_from_slice(&chunk);
                return Ok(());
            }
            self.undefer().await?;
        }
        if let Some(small) = &mut self.small {
            if self.written <= mem_max {
                small.extend_from_slice(&chunk);
            } else {
                self.small = None;
            }
        }
        self.to_blocks(&chunk).await
    }

    /// Copies `data` into the block buffer, writing out each block it fills.
    async fn to_blocks(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let mut rest = data;
        while !rest.is_empty() {
            let buf = self.buf.as_mut().expect("writer buffer");
            let copied = buf.extend_from_slice(rest);
            rest = &rest[copied..];
            if buf.remaining() == 0 {
                self.flush_block().await?;
            }
        }
        Ok(())
    }

    /// The body will not go inline after all: what was kept back in `small` goes to the
    /// block buffer (`small` stays for the memory tier only if within its bound).
    async fn undefer(&mut self) -> Result<(), StoreError> {
        if !self.deferred {
            return Ok(());
        }
        self.deferred = false;
        let Some(small) = self.small.take() else {
            return Ok(());
        };
        let kept = small.freeze();
        let res = self.to_blocks(&kept).await;
        if kept.len() as u64 <= self.shard.core.cfg.memory_object_max {
            self.small = Some(BytesMut::from(kept));
        }
        res
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the object durable (data synced, journal committed) and visible.
    /// For fetched objects, returns `Superseded` if the key was written or deleted after
    /// `begin_write` (a read-through never resurrects a deleted key).
    pub async fn finish(mut self, attrs: WriteAttrs) -> Result<Rc<ObjectMeta>, StoreError> {
        let fetched = attrs.fetched.is_some();
        if fetched && self.superseded() {
            return Err(StoreError::Superseded);
        }
        let (etag, last_modified_ms) = match (&attrs.fetched, self.md5.take()) {
            (Some(f), _) => (f.etag.trim_matches('"').to_owned(), f.last_modified_ms),
            (None, Some(md5)) => (hex::encode(md5.finalize()), wall_ms()),
            (None, None) => {
                return Err(StoreError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{:?}: a write begun for a fetched body finished without the origin's ETag",
                        self.key
                    ),
                )))
            }
        };
        let inline = self.take_inline_body().await?;
        self.write_out(inline.is_some()).await?;
        let guard = if fetched { Guard::Base } else { Guard::None };
        let upload = (!fetched && attrs.level >= 1).then_some(0);
        self.commit(guard, upload, inline, |core, size, crc32c, seq| {
            ObjectMeta {
                key: String::new(),
                size,
                etag,
                crc32c,
                content_type: attrs.content_type,
                name: attrs.name,
                user_meta: attrs.user_meta,
                last_modified_ms,
                hlc: core.hlc.now(),
                seq,
                level: attrs.level,
                in_origin: fetched,
                provenance: if fetched {
                    Provenance::Fetched
                } else {
                    Provenance::Client
                },
                headers: attrs.headers,
                validated_ms: wall_ms(),
                inline: false,
                derived: Default::default(),
            }
        })
        .await
    }

    /// Finishes a replica begun with [`Shard::begin_replica`]: checks the body's size and
    /// CRC32C against `meta` (`Corrupt` with expected and actual values when they differ;
    /// nothing is stored), then stores it with `meta`'s attributes, hlc, level, origin
    /// state and provenance but a new local seq. `Superseded` if a newer version or
    /// tombstone of the key arrived meanwhile. A replica of a fetched object is in the
    /// origin. If `level >= 1` and not in the origin, queues an upload that may not start
    /// before `upload_after_ms` (ms since epoch; `None` = now).
    pub async fn finish_replica(
        mut self,
        meta: &ObjectMeta,
        upload_after_ms: Option<u64>,
    ) -> Result<Rc<ObjectMeta>, StoreError> {
        if meta.key != self.key {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("replica of {:?} finished as {:?}", meta.key, self.key),
            )));
        }
        let check = |what, expected, actual| check_eq(&meta.key, what, expected, actual);
        check(
            "replica body size",
            meta.size.to_string(),
            self.written.to_string(),
        )?;
        check(
            "replica body checksum",
            format!("{:08x}", meta.crc32c),
            format!("{:08x}", self.body_crc),
        )?;
        let guard = Guard::Newer {
            hlc: meta.hlc,
            etag: &meta.etag,
        };
        // Cheap early out before writing the file; re-checked at commit.
        if !guard.holds(
            &self.core().state.borrow(),
            &self.core().journal,
            &self.key,
            self.base,
        ) {
            return Err(StoreError::Superseded);
        }
        let inline = self.take_inline_body().await?;
        self.write_out(inline.is_some()).await?;
        let in_origin = meta.in_origin || meta.provenance == Provenance::Fetched;
        let upload = (meta.level >= 1 && !in_origin).then_some(upload_after_ms.unwrap_or(0));
        self.commit(guard, upload, inline, |_, _, _, seq| ObjectMeta {
            seq,
            in_origin,
            derived: Default::default(),
            ..meta.clone()
        })
        .await
    }

    /// Writes the tail block, checksum table and header, and syncs the file; with
    /// `inline`, only gives the buffer back (the body goes into the journal's commit).
    async fn write_out(&mut self, inline: bool) -> Result<(), StoreError> {
        if inline {
            if let Some(buf) = self.buf.take() {
                self.core().return_block_buf(buf);
            }
            return Ok(());
        }
        self.ensure_file().await?;
        let size = self.written;
        let tail = self.buf.take().expect("writer buffer");
        let file = if self.table.is_empty() {
            // The whole body is in `tail`: header, body and checksum table go out in one
            // write (the common case for small objects: one I/O instead of three).
            if !tail.is_empty() {
                self.table.push(crc32c::crc32c(tail.as_slice()));
            }
            let header = Header::new(&self.key, self.seq, size, self.body_crc, &self.table);
            let table = format::encode_table(&self.table);
            let body_len = nearcache_file::align_up(tail.len());
            let mut all = AlignedBuf::with_capacity(
                format::HEADER_SIZE + body_len + nearcache_file::align_up(table.len()),
            );
            all.extend_from_slice(header.encode().as_slice());
            all.extend_from_slice(tail.as_slice());
            all.pad_to_alignment();
            all.extend_from_slice(&table);
            all.pad_to_alignment();
            self.core().return_block_buf(tail);
            let file = self.file.take().expect("writer file");
            let n = all.len() as u64;
            let (res, _) = file.write_all_at(all, 0).await;
            res.map_err(|e| StoreError::from_io(e, "writing an object file", n))?;
            file
        } else {
            // Tail block, checksum table, header.
            self.buf = Some(tail);
            if !self.buf.as_ref().expect("writer buffer").is_empty() {
                self.flush_block().await?;
            }
            if let Some(buf) = self.buf.take() {
                self.core().return_block_buf(buf);
            }
            let file = self.file.take().expect("writer file");
            let bytes = format::encode_table(&self.table);
            let mut tbuf = AlignedBuf::with_capacity(bytes.len());
            tbuf.extend_from_slice(&bytes);
            tbuf.pad_to_alignment();
            let n = tbuf.len() as u64;
            let (res, _) = file.write_all_at(tbuf, format::table_off(size)).await;
            res.map_err(|e| StoreError::from_io(e, "writing an object file", n))?;
            let header = Header::new(&self.key, self.seq, size, self.body_crc, &self.table);
            let (res, _) = file.write_all_at(header.encode(), 0).await;
            res.map_err(|e| StoreError::from_io(e, "writing an object file", HEADER_SIZE as u64))?;
            file
        };
        file.sync_data()
            .await
            .map_err(|e| StoreError::from_io(e, "syncing an object file", 0))?;
        Ok(())
    }

    /// Puts the written object in the index and tiers in place of whatever the key held
    /// (unless `guard` fails: `Superseded`), queues its journal batch and waits for it.
    /// `make` builds the meta from (core, size, crc32c, seq); its key is set here.
    /// `upload`: queue an origin upload not to start before this time (ms). `inline`:
    /// the body, committed into the journal with the entry (no object file).
    async fn commit(
        mut self,
        guard: Guard<'_>,
        upload: Option<u64>,
        inline: Option<Bytes>,
        make: impl FnOnce(&Core, u64, u32, u64) -> ObjectMeta,
    ) -> Result<Rc<ObjectMeta>, StoreError> {
        let core = self.shard.core.clone();
        let (ack, meta, files) = {
            let mut st = core.state.borrow_mut();
            if !guard.holds(&st, &core.journal, &self.key, self.base) {
                return Err(StoreError::Superseded);
            }
            let size = self.written;
            let meta = Rc::new(ObjectMeta {
                key: self.key.clone(),
                inline: inline.is_some(),
                ..make(&core, size, self.body_crc, self.seq)
            });
            let mut files = Vec::new();
            if let Some((_, Some(path))) = core.unlink_object(&mut st, &self.key) {
                files.push(path);
            }
            // Any previous object was unlinked above: what the key may still hold is a
            // tombstone, which this entry replaces in the journal.
            if st.tomb(&core.journal, &self.key).is_some() {
                st.fresh_tombs.remove(&self.key);
                st.tombstones = st.tombstones.saturating_sub(1);
            }
            let key: Rc<str> = Rc::from(self.key.as_str());
            st.index
                .insert(&core.journal, key, meta.clone(), !meta.in_origin);
            st.reserved = st.reserved.saturating_sub(self.reserved);
            self.reserved = 0;
            let mut ops = Vec::with_capacity(4);
            // The body first: the entry that marks it inline must not land without it.
            let mem_body = match inline {
                Some(body) => {
                    ops.push(Op::PutBody {
                        key: self.key.clone(),
                        seq: self.seq,
                        body: body.clone(),
                    });
                    Some(body)
                }
                None => self.small.take().map(BytesMut::freeze),
            };
            ops.extend([
                Op::PutEntry(self.key.clone(), StoredEntry::Object((*meta).clone())),
                Op::Record(Record {
                    seq: meta.seq,
                    hlc: meta.hlc,
                    kind: RecordKind::Put((*meta).clone()),
                }),
            ]);
            if let Some(not_before_ms) = upload {
                let rec = PendingRec {
                    seq: self.seq,
                    kind: PendingRecKind::Put,
                    not_before_ms,
                    hlc: meta.hlc,
                };
                st.set_pending(&self.key, rec.clone());
                ops.push(Op::PutPending(self.key.clone(), rec));
            } else if !st.pending.contains_key(&self.key) {
                ops.push(Op::RemovePending(self.key.clone()));
            }
            if let Some(body) = mem_body {
                core.mem_admit(&mut st, &self.key, self.seq, body);
            }
            core.refresh_metrics(&st);
            self.done = true;
            core.writing.borrow_mut().remove(&self.seq);
            (core.submit(ops)?, meta, files)
        };
        Journal::wait(ack).await?;
        core.remove_files(files).await;
        if upload.is_some() {
            self.shard.notify_pending();
        }
        Ok(meta)
    }

    fn superseded(&self) -> bool {
        !Guard::Base.holds(
            &self.core().state.borrow(),
            &self.core().journal,
            &self.key,
            self.base,
        )
    }

    pub async fn abort(self) {
        // Drop releases the reservation and removes the file.
    }
}

impl Drop for ObjectWriter {
    #[expect(
        clippy::disallowed_methods,
        reason = "unlinking an abandoned write (rare: failed or cut requests) needs no \
                  executor; Drop cannot await the ring"
    )]
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.core().return_block_buf(buf);
        }
        if self.done {
            return;
        }
        self.core().release(self.reserved);
        self.core().abandon_seq(self.seq);
        self.file.take();
        if !self.file_created {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "removing abandoned write");
            }
        }
    }
}
