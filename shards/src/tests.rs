//! Store tests. Every test runs on both devices (io_uring and plain syscalls).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::defaults::BLOCK_SIZE;
use crate::*;

pub(crate) const KIB: u64 = 1024;

pub(crate) fn cfg(dir: &Path, device: DeviceKind) -> ShardConfig {
    ShardConfig {
        shard_id: 3,
        dir: dir.to_owned(),
        memory_capacity: 1 << 20,
        memory_object_max: 4096,
        disk_capacity: 64 << 20,
        tombstone_ttl: Duration::from_secs(3600),
        device,
        lmdb_map_size: 64 << 20,
        journal_retain: 1000,
        inline_object_max: crate::defaults::INLINE_OBJECT_MAX,
        // Small, so that the tests read metas back from the journal as well as find them
        // resident.
        meta_cache_objects: 4,
    }
}

pub(crate) fn run<F: Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Runs `t` once per device kind, each in a fresh directory.
pub(crate) fn both<F, Fut>(t: F)
where
    F: Fn(ShardConfig) -> Fut,
    Fut: Future<Output = ()>,
{
    for kind in [DeviceKind::Uring, DeviceKind::Syscall] {
        let dir = tempfile::tempdir().unwrap();
        run(t(cfg(dir.path(), kind)));
    }
}

pub(crate) async fn open(cfg: &ShardConfig) -> (Rc<Shard>, RecoveryReport) {
    let (s, r) = Shard::open(cfg.clone()).await.expect("open shard");
    (Rc::new(s), r)
}

pub(crate) fn data(n: u64, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + i / 7) as u8) ^ seed).collect()
}

pub(crate) fn attrs(level: u8) -> WriteAttrs {
    WriteAttrs {
        level,
        ..Default::default()
    }
}

pub(crate) fn fetched(etag: &str) -> WriteAttrs {
    WriteAttrs {
        fetched: Some(FetchedFrom {
            etag: etag.into(),
            last_modified_ms: 1234,
        }),
        ..Default::default()
    }
}

pub(crate) async fn put_with(
    shard: &Rc<Shard>,
    key: &str,
    body: &[u8],
    a: WriteAttrs,
) -> Rc<ObjectMeta> {
    let mut w = shard
        .begin_write(key, Some(body.len() as u64))
        .await
        .expect("begin_write");
    for c in body.chunks(100_003) {
        w.write(Bytes::copy_from_slice(c)).await.expect("write");
    }
    assert_eq!(w.written(), body.len() as u64);
    w.finish(a).await.expect("finish")
}

pub(crate) async fn put(shard: &Rc<Shard>, key: &str, body: &[u8], level: u8) -> Rc<ObjectMeta> {
    put_with(shard, key, body, attrs(level)).await
}

pub(crate) fn meta_of(shard: &Shard, key: &str) -> Rc<ObjectMeta> {
    match shard.peek(key) {
        Lookup::Hit { meta, .. } => meta,
        other => panic!("{key}: expected a hit, got {other:?}"),
    }
}

async fn read_range(shard: &Shard, meta: &ObjectMeta, r: std::ops::Range<u64>) -> Vec<u8> {
    let mut rd = shard.open_reader(meta, r).await.expect("open_reader");
    let mut out = Vec::new();
    while let Some(c) = rd.next_chunk().await {
        let c = c.expect("chunk");
        assert!(!c.is_empty() && c.len() as u64 <= BLOCK_SIZE);
        out.extend_from_slice(&c);
    }
    out
}

pub(crate) fn file_of(cfg: &ShardConfig, seq: u64) -> PathBuf {
    cfg.dir
        .join("objects")
        .join(format!("{:02x}", seq & 0xff))
        .join(format!("{seq:016x}"))
}

pub(crate) fn m(shard: &Shard) -> Arc<ShardMetrics> {
    shard.metrics()
}

use std::sync::Arc;

#[test]
fn write_read_back_sizes() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let sizes = [0, 1, 4095, 4096, 4097, (1 << 20) + 3, 2 * BLOCK_SIZE + 5];
        for (i, &n) in sizes.iter().enumerate() {
            let body = data(n, i as u8);
            let key = format!("k{i}");
            let meta = put(&shard, &key, &body, 0).await;
            assert_eq!(meta.size, n);
            assert_eq!(
                meta.etag,
                hex::encode(<md5::Md5 as md5::Digest>::digest(&body))
            );
            assert_eq!(meta.crc32c, crc32c::crc32c(&body));
            assert_eq!(meta.provenance, Provenance::Client);
            assert!(!meta.in_origin);
            if n <= crate::defaults::INLINE_OBJECT_MAX {
                // Small bodies live in the journal: no file of their own.
                assert!(meta.inline, "size {n}");
                assert!(!file_of(&cfg, meta.seq).exists(), "size {n}");
            } else {
                assert!(!meta.inline, "size {n}");
                let expected_len = 4096
                    + nearcache_file::align_up_u64(n)
                    + nearcache_file::align_up_u64(n.div_ceil(BLOCK_SIZE) * 4);
                assert_eq!(
                    std::fs::metadata(file_of(&cfg, meta.seq)).unwrap().len(),
                    expected_len
                );
            }
            assert_eq!(
                &shard.read_all(&meta).await.unwrap()[..],
                &body[..],
                "size {n}"
            );
            assert_eq!(read_range(&shard, &meta, 0..n).await, body, "size {n}");
            // Small objects are in the memory tier.
            match shard.lookup(&key) {
                Lookup::Hit { body: b, .. } => assert_eq!(b.is_some(), n <= 4096, "size {n}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            m(&shard).objects.load(Ordering::Relaxed),
            sizes.len() as u64
        );
        assert_eq!(
            m(&shard).disk_bytes.load(Ordering::Relaxed),
            sizes.iter().sum::<u64>()
        );
        shard.close().await.unwrap();
        drop(shard);
        // From disk after reopen (memory tier empty).
        let (shard, rep) = open(&cfg).await;
        assert_eq!(rep.objects, sizes.len() as u64);
        for (i, &n) in sizes.iter().enumerate() {
            let meta = meta_of(&shard, &format!("k{i}"));
            if let Lookup::Hit { body, .. } = shard.lookup(&format!("k{i}")) {
                assert!(body.is_none());
            }
            assert_eq!(
                &shard.read_all(&meta).await.unwrap()[..],
                &data(n, i as u8)[..]
            );
        }
        assert_eq!(m(&shard).hits.load(Ordering::Relaxed), sizes.len() as u64);
        shard.lookup("nope");
        assert_eq!(m(&shard).misses.load(Ordering::Relaxed), 1);
        shard.close().await.unwrap();
    });
}

#[test]
fn ranges_across_blocks() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let n = 3 * BLOCK_SIZE + 100;
        let body = data(n, 9);
        let meta = put(&shard, "r", &body, 0).await;
        let b = BLOCK_SIZE;
        for r in [
            0..10,
            b - 5..b + 5,
            b..2 * b,
            100..3 * b + 100,
            3 * b + 50..u64::MAX,
            7..7,
            std::ops::Range {
                start: 5000,
                end: 4000,
            },
        ] {
            let got = read_range(&shard, &meta, r.clone()).await;
            let end = r.end.min(n);
            let start = r.start.min(end);
            assert_eq!(got, &body[start as usize..end as usize], "range {r:?}");
        }
        // The first chunk of a range ends at a block boundary.
        let mut rd = shard.open_reader(&meta, b - 5..b + 5).await.unwrap();
        assert_eq!(rd.next_chunk().await.unwrap().unwrap().len(), 5);
        assert_eq!(rd.next_chunk().await.unwrap().unwrap().len(), 5);
        assert!(rd.next_chunk().await.is_none());
        shard.close().await.unwrap();
    });
}

#[test]
fn overwrite_replaces_and_deletes_old_file() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let v1 = put(&shard, "k", &data(10_000, 1), 0).await;
        let v2 = put(&shard, "k", &data(20_000, 2), 0).await;
        assert!(v2.seq > v1.seq && v2.hlc > v1.hlc);
        assert!(!file_of(&cfg, v1.seq).exists());
        assert!(file_of(&cfg, v2.seq).exists());
        assert_eq!(meta_of(&shard, "k").seq, v2.seq);
        assert_eq!(
            &shard.read_all(&v2).await.unwrap()[..],
            &data(20_000, 2)[..]
        );
        assert_eq!(m(&shard).objects.load(Ordering::Relaxed), 1);
        assert_eq!(m(&shard).disk_bytes.load(Ordering::Relaxed), 20_000);
        // A reader opened on v2 keeps working while v3 replaces it.
        let mut rd = shard.open_reader(&v2, 0..20_000).await.unwrap();
        put(&shard, "k", &data(5, 3), 0).await;
        assert!(!file_of(&cfg, v2.seq).exists());
        assert_eq!(
            &rd.next_chunk().await.unwrap().unwrap()[..],
            &data(20_000, 2)[..]
        );
        shard.close().await.unwrap();
    });
}

#[test]
fn delete_tombstone_pending_and_sweep() {
    both(|mut cfg| async move {
        cfg.tombstone_ttl = Duration::ZERO;
        let (shard, _) = open(&cfg).await;
        let v = put(&shard, "k", &data(50_000, 1), 0).await;
        let t = shard.delete("k", 1).await.unwrap();
        assert!(t.seq > v.seq && t.hlc > v.hlc);
        assert_eq!(t.level, 1);
        assert!(!file_of(&cfg, v.seq).exists());
        match shard.lookup("k") {
            Lookup::Deleted(d) => assert_eq!(d, t),
            other => panic!("{other:?}"),
        }
        assert_eq!(m(&shard).hits.load(Ordering::Relaxed), 1);
        assert_eq!(m(&shard).tombstones.load(Ordering::Relaxed), 1);
        assert_eq!(m(&shard).objects.load(Ordering::Relaxed), 0);
        let p = shard.pending(10);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].key.as_str(), p[0].seq), ("k", t.seq));
        assert!(matches!(p[0].kind, PendingKind::Delete));
        // A tombstone with a pending origin delete is kept.
        assert_eq!(shard.sweep_tombstones().await.unwrap(), 0);
        shard.close().await.unwrap();
        drop(shard);
        let (shard, rep) = open(&cfg).await;
        assert_eq!((rep.tombstones, rep.pending), (1, 1));
        assert!(matches!(shard.peek("k"), Lookup::Deleted(_)));
        shard.complete_pending("k", t.seq).await.unwrap();
        assert!(shard.pending(10).is_empty());
        assert_eq!(shard.sweep_tombstones().await.unwrap(), 1);
        assert!(matches!(shard.peek("k"), Lookup::Miss));
        assert_eq!(m(&shard).tombstones.load(Ordering::Relaxed), 0);
        // Level-0 delete: no pending op; a fresh tombstone survives a sweep with a long TTL.
        shard.delete("j", 0).await.unwrap();
        assert!(shard.pending(10).is_empty());
        shard.close().await.unwrap();
        drop(shard);
        cfg.tombstone_ttl = Duration::from_secs(3600);
        let (shard, _) = open(&cfg).await;
        assert_eq!(shard.sweep_tombstones().await.unwrap(), 0);
        assert!(matches!(shard.peek("j"), Lookup::Deleted(_)));
        shard.close().await.unwrap();
    });
}

/// Tombstones live in the journal, not the index: after a restart they still delete,
/// win and lose last-writer-wins, and expire; the sweep's removal spares a newer delete.
#[test]
fn tombstones_live_in_the_journal() {
    both(|mut cfg| async move {
        cfg.tombstone_ttl = Duration::ZERO;
        let (shard, _) = open(&cfg).await;
        put(&shard, "k1", b"one", 0).await;
        put(&shard, "k2", b"two", 0).await;
        let t1 = shard.delete("k1", 0).await.unwrap();
        let t2 = shard.delete("k2", 0).await.unwrap();
        let tn = shard.delete("never-held", 0).await.unwrap();
        shard.close().await.unwrap();
        drop(shard);

        let (shard, rep) = open(&cfg).await;
        assert_eq!((rep.objects, rep.tombstones), (0, 3));
        for (k, t) in [("k1", &t1), ("k2", &t2), ("never-held", &tn)] {
            match shard.peek(k) {
                Lookup::Deleted(d) => assert_eq!(&d, t),
                other => panic!("{k}: {other:?}"),
            }
        }
        assert!(matches!(shard.peek("other"), Lookup::Miss));
        // Last-writer-wins against a tombstone only the journal holds.
        assert!(!shard.is_newer("k1", t1.hlc, "ffff"));
        assert!(shard.is_newer("k1", t1.hlc + 1, "0"));
        let older = Tombstone {
            hlc: t2.hlc - 1,
            ..t2.clone()
        };
        assert!(!shard.apply_tombstone(&older, None).await.unwrap());
        // A read-through begun now never brings a deleted key back.
        let mut w = shard.begin_write("k2", Some(3)).await.unwrap();
        w.write(Bytes::from_static(b"old")).await.unwrap();
        assert!(matches!(
            w.finish(fetched("abc")).await,
            Err(StoreError::Superseded)
        ));
        // A client write replaces a tombstone.
        put(&shard, "k1", b"again", 0).await;
        assert!(matches!(shard.peek("k1"), Lookup::Hit { .. }));
        assert_eq!(m(&shard).tombstones.load(Ordering::Relaxed), 2);
        // Expired (TTL zero): the sweep drops what it may, keeps what it may not.
        assert_eq!(
            shard
                .sweep_tombstones_where(|t| t.key != "k2")
                .await
                .unwrap(),
            1
        );
        assert!(matches!(shard.peek("never-held"), Lookup::Miss));
        assert!(matches!(shard.peek("k2"), Lookup::Deleted(_)));
        assert!(matches!(shard.peek("k1"), Lookup::Hit { .. }));
        assert_eq!(m(&shard).tombstones.load(Ordering::Relaxed), 1);
        // The sweep's removal of a tombstone a newer delete replaced removes nothing.
        let r1 = shard.delete("r", 0).await.unwrap();
        let r2 = shard.delete("r", 0).await.unwrap();
        shard.remove_tombstone_if("r", r1.seq).await;
        match shard.peek("r") {
            Lookup::Deleted(d) => assert_eq!(d, r2),
            other => panic!("{other:?}"),
        }
        shard.remove_tombstone_if("r", r2.seq).await;
        assert!(matches!(shard.peek("r"), Lookup::Miss));
        shard.close().await.unwrap();
        drop(shard);
        let (shard, rep) = open(&cfg).await;
        assert_eq!((rep.objects, rep.tombstones), (1, 1));
        shard.close().await.unwrap();
    });
}

#[test]
fn persistence_and_hlc_across_reopen() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let mut last_hlc = 0;
        for i in 0..20u64 {
            last_hlc = put(&shard, &format!("k{i}"), &data(i * 1000, i as u8), 0)
                .await
                .hlc;
        }
        // A remote timestamp far ahead is observed and then persisted by a write.
        let future = (crate::hlc::wall_ms() + 3_600_000) << 16;
        shard.hlc().observe(future);
        let t = shard.delete("k0", 0).await.unwrap();
        assert!(t.hlc > future && t.hlc > last_hlc);
        shard.close().await.unwrap();
        drop(shard);
        let (shard, rep) = open(&cfg).await;
        assert_eq!(
            (rep.objects, rep.tombstones, rep.orphans_removed),
            (19, 1, 0)
        );
        assert!(
            shard.hlc().now() > t.hlc,
            "HLC went backwards across reopen"
        );
        for i in 1..20u64 {
            let meta = meta_of(&shard, &format!("k{i}"));
            assert_eq!(
                &shard.read_all(&meta).await.unwrap()[..],
                &data(i * 1000, i as u8)[..]
            );
        }
        // Sequence numbers keep growing too.
        let v = put(&shard, "new", b"x", 0).await;
        assert!(v.seq > t.seq);
        shard.close().await.unwrap();
    });
}

#[test]
fn reopen_without_close_and_orphans() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let body = data(300_000, 4);
        put(&shard, "a", &body, 0).await;
        // An abandoned write leaves no file behind.
        let mut w = shard.begin_write("b", None).await.unwrap();
        w.write(Bytes::from(data(10_000, 1))).await.unwrap();
        w.abort().await;
        drop(shard); // no close()
                     // Files a crash would leave: a write that never committed, and junk.
        std::fs::write(file_of(&cfg, 0xdead_be07), b"partial").unwrap();
        std::fs::write(cfg.dir.join("objects/00/junk"), b"?").unwrap();
        let (shard, rep) = open(&cfg).await;
        assert_eq!((rep.objects, rep.orphans_removed), (1, 2));
        assert!(!file_of(&cfg, 0xdead_be07).exists());
        assert_eq!(
            &shard.read_all(&meta_of(&shard, "a")).await.unwrap()[..],
            &body[..]
        );
        assert!(matches!(shard.peek("b"), Lookup::Miss));
        assert_eq!(m(&shard).disk_bytes.load(Ordering::Relaxed), 300_000);
        shard.close().await.unwrap();
    });
}

#[test]
fn corruption_is_detected_and_dropped() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let n = BLOCK_SIZE + 5000;
        for k in ["flip", "trunc", "hdr", "gone", "stream"] {
            put(&shard, k, &data(n, 7), 1).await;
        }
        let path = |k: &str| file_of(&cfg, meta_of(&shard, k).seq);
        let flip = |p: PathBuf, off: u64| {
            let mut b = std::fs::read(&p).unwrap();
            b[off as usize] ^= 0x40;
            std::fs::write(&p, b).unwrap();
        };
        flip(path("flip"), 4096 + BLOCK_SIZE + 10);
        flip(path("hdr"), 20);
        flip(path("stream"), 4096 + BLOCK_SIZE + 1);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path("trunc"))
            .unwrap();
        f.set_len(4096 + 100).unwrap();
        std::fs::remove_file(path("gone")).unwrap();

        let expect = |k: &str, what: &str, r: Result<Bytes, StoreError>| match r {
            Err(StoreError::Corrupt {
                key,
                what: w,
                expected,
                actual,
            }) => {
                assert_eq!((key.as_str(), w), (k, what));
                assert_ne!(expected, actual);
            }
            other => panic!("{k}: expected Corrupt {what}, got {other:?}"),
        };
        for (k, what) in [
            ("flip", "block checksum"),
            ("trunc", "checksum table length"),
            ("hdr", "header checksum"),
            ("gone", "data file"),
        ] {
            let p = path(k);
            let meta = meta_of(&shard, k);
            expect(k, what, shard.read_all(&meta).await);
            assert!(matches!(shard.peek(k), Lookup::Miss), "{k} still indexed");
            assert!(!p.exists());
        }
        // Streaming: block 0 is fine, block 1 fails.
        let meta = meta_of(&shard, "stream");
        let mut rd = shard.open_reader(&meta, 0..n).await.unwrap();
        assert_eq!(
            &rd.next_chunk().await.unwrap().unwrap()[..],
            &data(n, 7)[..BLOCK_SIZE as usize]
        );
        expect("stream", "block checksum", rd.next_chunk().await.unwrap());
        assert!(rd.next_chunk().await.is_none());
        assert!(matches!(shard.peek("stream"), Lookup::Miss));

        assert_eq!(m(&shard).checksum_failures.load(Ordering::Relaxed), 5);
        assert_eq!(m(&shard).objects.load(Ordering::Relaxed), 0);
        // Dropped objects lose their pending uploads, durably.
        assert!(shard.pending(10).is_empty());
        shard.close().await.unwrap();
        drop(shard);
        let (shard, rep) = open(&cfg).await;
        assert_eq!((rep.objects, rep.pending), (0, 0));
        shard.close().await.unwrap();
    });
}

#[test]
fn eviction_and_pinning() {
    both(|mut cfg| async move {
        cfg.disk_capacity = 1 << 20;
        let (shard, _) = open(&cfg).await;
        let sz = 300 * KIB;
        let mut seqs = Vec::new();
        for i in 0..3 {
            let meta = put_with(&shard, &format!("f{i}"), &data(sz, i), fetched("\"e\"")).await;
            assert!(meta.in_origin);
            assert_eq!(meta.etag, "e");
            assert_eq!(meta.provenance, Provenance::Fetched);
            seqs.push(meta.seq);
        }
        // A fourth needs room: one fetched object goes.
        put_with(&shard, "f3", &data(sz, 3), fetched("e")).await;
        let mt = m(&shard);
        assert_eq!(mt.evictions.load(Ordering::Relaxed), 1);
        assert_eq!(mt.evicted_bytes.load(Ordering::Relaxed), sz);
        assert_eq!(mt.objects.load(Ordering::Relaxed), 3);
        assert!(mt.disk_bytes.load(Ordering::Relaxed) <= cfg.disk_capacity);
        let gone: Vec<_> = (0..3)
            .filter(|i| matches!(shard.peek(&format!("f{i}")), Lookup::Miss))
            .collect();
        assert_eq!(gone.len(), 1);
        assert!(!file_of(&cfg, seqs[gone[0]]).exists());

        // Pinned client writes (level 0) push out every fetched object, then are refused.
        for i in 0..3 {
            put(&shard, &format!("p{i}"), &data(sz, i), 0).await;
        }
        assert_eq!(mt.pinned_bytes.load(Ordering::Relaxed), 3 * sz);
        assert_eq!(mt.objects.load(Ordering::Relaxed), 3);
        match shard.begin_write("p3", Some(sz)).await {
            Err(StoreError::InsufficientStorage {
                needed, available, ..
            }) => {
                assert_eq!(needed, sz);
                assert_eq!(available, cfg.disk_capacity - 3 * sz);
            }
            Ok(_) => panic!("expected InsufficientStorage"),
            Err(e) => panic!("expected InsufficientStorage, got {e}"),
        }
        // Without expected_len the refusal comes from write().
        let mut w = shard.begin_write("p3", None).await.unwrap();
        let err = w.write(Bytes::from(data(sz, 1))).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InsufficientStorage { .. }),
            "{err}"
        );
        drop(w);
        for i in 0..3 {
            assert!(matches!(shard.peek(&format!("p{i}")), Lookup::Hit { .. }));
        }
        // The reservation of the refused write was released: a small write fits.
        put(&shard, "small", &data(1000, 1), 0).await;
        shard.close().await.unwrap();
        drop(shard);
        // Pinning survives a restart.
        let (shard, _) = open(&cfg).await;
        assert_eq!(
            m(&shard).pinned_bytes.load(Ordering::Relaxed),
            3 * sz + 1000
        );
        assert!(shard.begin_write("x", Some(sz)).await.is_err());
        shard.close().await.unwrap();
    });
}

#[test]
fn pending_lifecycle() {
    both(|mut cfg| async move {
        cfg.disk_capacity = 1 << 20;
        let (shard, _) = open(&cfg).await;
        let sz = 400 * KIB;
        let v1 = put(&shard, "k", &data(sz, 1), 1).await;
        // The put queued a pending op and left a permit for pending_changed.
        shard.pending_changed().await;
        let p = shard.pending(10);
        assert_eq!(p.len(), 1);
        match &p[0].kind {
            PendingKind::Put {
                body: BodyAt::File { path, offset },
                len,
                meta,
            } => {
                assert_eq!((*offset, *len, p[0].seq), (4096, sz, v1.seq));
                assert_eq!(meta, &*v1);
                let f = std::fs::read(path).unwrap();
                assert_eq!(&f[4096..4096 + sz as usize], &data(sz, 1)[..]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m(&shard).pinned_bytes.load(Ordering::Relaxed), sz);
        assert_eq!(m(&shard).pending_uploads.load(Ordering::Relaxed), 1);
        // Rewritten before the upload finished: the old completion is ignored.
        let v2 = put(&shard, "k", &data(sz, 2), 1).await;
        shard.complete_pending("k", v1.seq).await.unwrap();
        let p = shard.pending(10);
        assert_eq!((p.len(), p[0].seq), (1, v2.seq));
        assert!(!meta_of(&shard, "k").in_origin);
        shard.close().await.unwrap();
        drop(shard);
        let (shard, rep) = open(&cfg).await;
        assert_eq!(rep.pending, 1);
        assert_eq!(shard.pending(10)[0].seq, v2.seq);
        shard.complete_pending("k", v2.seq).await.unwrap();
        assert!(shard.pending(10).is_empty());
        assert!(meta_of(&shard, "k").in_origin);
        assert_eq!(m(&shard).pinned_bytes.load(Ordering::Relaxed), 0);
        // Now evictable: a larger write pushes it out.
        put(&shard, "other", &data(700 * KIB, 3), 0).await;
        assert!(matches!(shard.peek("k"), Lookup::Miss));
        assert_eq!(m(&shard).evictions.load(Ordering::Relaxed), 1);
        // Upgrade 0 -> 1 queues the upload of a local-only object.
        let u = put(&shard, "u", b"hello", 0).await;
        assert!(shard.pending(10).is_empty());
        let up = shard.upgrade("u", 2).await.unwrap();
        assert_eq!((up.level, up.seq), (2, u.seq));
        assert_eq!(shard.pending(10)[0].seq, u.seq);
        assert!(matches!(
            shard.upgrade("nope", 1).await,
            Err(StoreError::NotFound)
        ));
        // A level-1 delete replaces the pending put.
        let t = shard.delete("u", 1).await.unwrap();
        let p = shard.pending(10);
        assert_eq!(p.len(), 1);
        assert!(matches!(p[0].kind, PendingKind::Delete));
        assert_eq!(p[0].seq, t.seq);
        shard.close().await.unwrap();
    });
}

#[test]
fn fetched_write_superseded() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        // Deleted while fetching.
        let mut w = shard.begin_write("k", None).await.unwrap();
        w.write(Bytes::from(data(5000, 1))).await.unwrap();
        shard.delete("k", 0).await.unwrap();
        assert!(matches!(
            w.finish(fetched("e")).await,
            Err(StoreError::Superseded)
        ));
        assert!(matches!(shard.peek("k"), Lookup::Deleted(_)));
        // Written by a client while fetching.
        let mut w = shard.begin_write("j", Some(5000)).await.unwrap();
        w.write(Bytes::from(data(5000, 1))).await.unwrap();
        let c = put(&shard, "j", b"client", 0).await;
        assert!(matches!(
            w.finish(fetched("e")).await,
            Err(StoreError::Superseded)
        ));
        assert_eq!(meta_of(&shard, "j").seq, c.seq);
        // No leftover files: only k's tombstone and j's client version, which is small
        // enough to be inline (in the journal, no file); the abandoned fetch of 5000
        // bytes never created one either.
        let files: usize = std::fs::read_dir(cfg.dir.join("objects"))
            .unwrap()
            .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(files, 0);
        assert!(meta_of(&shard, "j").inline);
        assert_eq!(m(&shard).disk_bytes.load(Ordering::Relaxed), 6);
        shard.close().await.unwrap();
        drop(shard);
        let (shard, rep) = open(&cfg).await;
        assert_eq!(rep.orphans_removed, 0);
        shard.close().await.unwrap();
    });
}

#[test]
fn forget_and_journal_trim() {
    both(|mut cfg| async move {
        cfg.journal_retain = 5;
        let (shard, _) = open(&cfg).await;
        for i in 0..10 {
            put(&shard, &format!("k{i}"), b"abc", 0).await;
        }
        let v = meta_of(&shard, "k3");
        shard.forget("k3").await.unwrap();
        assert!(matches!(shard.peek("k3"), Lookup::Miss));
        assert!(!file_of(&cfg, v.seq).exists());
        let mt = m(&shard);
        assert_eq!(mt.journal_records.load(Ordering::Relaxed), 11);
        assert!(mt.journal_commits.load(Ordering::Relaxed) >= 1);
        assert!(mt.journal_last_seq.load(Ordering::Relaxed) > v.seq);
        shard.close().await.unwrap();
        drop(shard);
        // Only the last 5 records are kept.
        let (shard, rep) = open(&cfg).await;
        assert_eq!(rep.objects, 9);
        shard.close().await.unwrap();
        let env_len = count_journal_records(&cfg.dir.join("journal"));
        assert_eq!(env_len, 5);
    });
}

fn count_journal_records(dir: &Path) -> u64 {
    use heed::byteorder::BigEndian;
    use heed::types::{Bytes as RawBytes, U64};
    // The shard that used this env has been closed and dropped; nothing else has it open.
    let env = nearcache_file::open_lmdb_env(dir, 1 << 30, 4).unwrap();
    let wtxn = env.write_txn().unwrap();
    let db = env
        .create_databases_and_commit(wtxn, |o, wtxn| -> Result<_, heed::Error> {
            let db = o.create_database::<U64<BigEndian>, RawBytes>(wtxn, Some("journal"))?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
        })
        .unwrap()
        .commit()
        .unwrap();
    let rtxn = env.read_txn().unwrap();
    db.len(&rtxn).unwrap()
}

/// Kill -9 loop: a child process writes objects, records each acknowledged one, starts
/// one more write and aborts mid-way. Every acknowledged object must survive.
#[test]
fn crash_loop_child_process() {
    for kind in ["uring", "syscall"] {
        let dir = tempfile::tempdir().unwrap();
        let mut acked_total = 0;
        for round in 0..3 {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "tests::crash_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("NC_CRASH_DIR", dir.path())
                .env("NC_CRASH_DEVICE", kind)
                .env("NC_CRASH_ROUND", round.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(!status.success(), "child should have aborted");
            let acked = std::fs::read_to_string(dir.path().join("acked")).unwrap_or_default();
            let keys: Vec<&str> = acked.lines().collect();
            assert!(keys.len() > acked_total, "round {round}: no progress");
            acked_total = keys.len();
            let device = if kind == "uring" {
                DeviceKind::Uring
            } else {
                DeviceKind::Syscall
            };
            let c = cfg(&dir.path().join("shard"), device);
            run(async {
                let (shard, rep) = open(&c).await;
                assert!(
                    rep.orphans_removed >= 1,
                    "round {round}: the unfinished write's file"
                );
                for k in &keys {
                    let meta = meta_of(&shard, k);
                    let body = shard.read_all(&meta).await.unwrap();
                    assert_eq!(&body[..], &crash_body(k)[..], "{k}");
                }
                shard.close().await.unwrap();
            });
        }
    }
}

fn crash_body(key: &str) -> Vec<u8> {
    let n: u64 = key.rsplit('-').next().unwrap().parse().unwrap();
    data(n * 37_001 % 600_000, n as u8)
}

#[test]
#[ignore = "run by crash_loop_child_process in a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var("NC_CRASH_DIR") else {
        return;
    };
    let device = match std::env::var("NC_CRASH_DEVICE").as_deref() {
        Ok("uring") => DeviceKind::Uring,
        _ => DeviceKind::Syscall,
    };
    let round: u64 = std::env::var("NC_CRASH_ROUND").unwrap().parse().unwrap();
    let dir = PathBuf::from(dir);
    let c = cfg(&dir.join("shard"), device);
    run(async move {
        use std::io::Write;
        let (shard, _) = open(&c).await;
        let mut acked = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("acked"))
            .unwrap();
        for i in 0..8 {
            let key = format!("r{round}-{}", round * 100 + i);
            put(&shard, &key, &crash_body(&key), 0).await;
            writeln!(acked, "{key}").unwrap();
            acked.sync_all().unwrap();
        }
        let mut w = shard.begin_write("unfinished", None).await.unwrap();
        w.write(Bytes::from(data(BLOCK_SIZE + 10, 1)))
            .await
            .unwrap();
        std::process::abort();
    });
}

fn sync_entry(backend: &str, key: &str, kind: SyncKind, seq: u64) -> SyncEntry {
    SyncEntry {
        backend: backend.into(),
        key: key.into(),
        kind,
        cause: SyncCause::Missed,
        seq,
        size: 10,
        etag: "e".into(),
        created_ms: crate::hlc::wall_ms(),
        id: 0,
    }
}

/// The sync log: entries are committed with the completion of the pending op, a later
/// entry of the same backend and key supersedes the older one, a repair of a superseded
/// entry does not remove the newer one, and everything survives a reopen.
#[test]
fn sync_log_supersedes_and_survives_reopen() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let m = put(&shard, "k", &data(10, 1), 1).await;
        let missed = vec![sync_entry("dc2", "k", SyncKind::Put, m.seq)];
        shard
            .complete_pending_logging("k", m.seq, missed)
            .await
            .unwrap();
        assert!(shard.pending(10).is_empty());
        let e = shard.sync_entries(10, |_| true);
        assert_eq!(e.len(), 1);
        assert!(shard.sync_has("dc2", "k") && shard.sync_has_key("k"));
        assert!(!shard.sync_has("dc1", "k") && !shard.sync_has_key("j"));
        let taken = e[0].clone();
        // A delete supersedes the copy entry while its repair runs.
        let t = shard.delete("k", 1).await.unwrap();
        shard
            .complete_pending_logging(
                "k",
                t.seq,
                vec![sync_entry("dc2", "k", SyncKind::Delete, t.seq)],
            )
            .await
            .unwrap();
        assert!(!shard.complete_sync("dc2", "k", taken.id).await.unwrap());
        let e = shard.sync_entries(10, |_| true);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, SyncKind::Delete);
        // Drift and check repairs never override a queued entry of the key.
        let added = shard
            .log_sync(vec![sync_entry("dc1", "k", SyncKind::Put, 0)], true)
            .await
            .unwrap();
        assert_eq!(added, 0);
        assert_eq!(
            shard
                .log_sync(vec![sync_entry("dc1", "other", SyncKind::Put, 0)], true)
                .await
                .unwrap(),
            1
        );
        let backlog = shard.sync_backlog();
        assert_eq!(backlog["dc2"].entries, 1);
        assert_eq!(backlog["dc1"].bytes, 10);
        shard.close().await.unwrap();
        drop(shard);
        let (shard, _) = open(&cfg).await;
        let e = shard.sync_entries(10, |_| true);
        assert_eq!(e.len(), 2, "{e:?}");
        let del = e.iter().find(|x| x.backend == "dc2").unwrap().clone();
        assert_eq!(del.kind, SyncKind::Delete);
        assert!(shard.complete_sync("dc2", "k", del.id).await.unwrap());
        assert_eq!(shard.sync_entries(10, |_| true).len(), 1);
        // Ids keep rising across the reopen.
        let added = shard
            .log_sync(vec![sync_entry("dc2", "new", SyncKind::Put, 0)], false)
            .await
            .unwrap();
        assert_eq!(added, 1);
        let e = shard.sync_entries(10, |x| x.key == "new");
        assert!(e[0].id > del.id);
    });
}

/// Small bodies are kept in the journal (no file, one sync shared by concurrent writes);
/// they read back through every path, follow their entry on overwrite, delete, eviction
/// and restart, and a damaged one is caught and dropped, never served.
#[test]
fn inline_bodies_follow_their_entries() {
    both(|mut cfg| async move {
        cfg.disk_capacity = 64 * KIB;
        let (shard, _) = open(&cfg).await;
        let files = |cfg: &ShardConfig| -> usize {
            std::fs::read_dir(cfg.dir.join("objects"))
                .unwrap()
                .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
                .sum()
        };
        // 8 KiB: inline, and above the memory tier's 4 KiB, so reads go to the journal.
        let a1 = put(&shard, "a", &data(8 * KIB, 1), 0).await;
        assert!(a1.inline);
        assert!(shard.inline_body_stored("a").await);
        assert_eq!(files(&cfg), 0);
        assert_eq!(
            &shard.read_all(&a1).await.unwrap()[..],
            &data(8 * KIB, 1)[..]
        );
        assert_eq!(
            read_range(&shard, &a1, 100..5000).await,
            data(8 * KIB, 1)[100..5000]
        );
        // The upload source of a pending inline body is the journal.
        let b1 = put(&shard, "b", &data(3000, 2), 1).await;
        assert!(b1.inline);
        let p = shard.pending(10);
        assert!(matches!(
            &p[0].kind,
            PendingKind::Put {
                body: BodyAt::Journal,
                len: 3000,
                ..
            }
        ));
        assert_eq!(shard.stored_body("b").unwrap().0, BodyAt::Journal);
        // Inline -> inline, inline -> file, file -> inline.
        let a2 = put(&shard, "a", &data(9000, 3), 0).await;
        assert!(a2.inline);
        assert_eq!(&shard.read_all(&a2).await.unwrap()[..], &data(9000, 3)[..]);
        let a3 = put(&shard, "a", &data(20 * KIB, 4), 0).await;
        assert!(!a3.inline);
        assert!(
            !shard.inline_body_stored("a").await,
            "the file version took the body's place"
        );
        assert_eq!(files(&cfg), 1);
        let a4 = put(&shard, "a", &data(10, 5), 0).await;
        assert!(a4.inline);
        assert_eq!(files(&cfg), 0, "the file version's file was removed");
        // A read racing an overwrite: the old version is gone, the read says so (a miss
        // for the caller), without a checksum failure.
        assert!(matches!(
            shard.read_all(&a2).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(m(&shard).checksum_failures.load(Ordering::Relaxed), 0);
        // Delete: the body goes with the entry.
        shard.delete("a", 0).await.unwrap();
        assert!(!shard.inline_body_stored("a").await);
        // Eviction (fetched objects are in the origin, so evictable): bodies go too.
        for i in 0..20u8 {
            put_with(&shard, &format!("f{i}"), &data(8 * KIB, i), fetched("e")).await;
        }
        let mut evicted = 0;
        for i in 0..20u8 {
            let k = format!("f{i}");
            if matches!(shard.peek(&k), Lookup::Miss) {
                evicted += 1;
                assert!(!shard.inline_body_stored(&k).await, "{k}");
            }
        }
        assert!(evicted > 0);
        // Restart: inline bodies are read back from the journal.
        shard.close().await.unwrap();
        drop(shard);
        let (shard, rep) = open(&cfg).await;
        assert_eq!(rep.orphans_removed, 0);
        let b = meta_of(&shard, "b");
        assert!(b.inline);
        assert_eq!(&shard.read_all(&b).await.unwrap()[..], &data(3000, 2)[..]);
        // A damaged body is refused with what was expected, counted, and the version
        // dropped: never served.
        let f19 = meta_of(&shard, "f19");
        shard.damage_inline_body("f19").await;
        match shard.read_all(&f19).await {
            Err(StoreError::Corrupt { what, expected, .. }) => {
                assert_eq!(what, "inline body seq");
                assert_eq!(expected, f19.seq.to_string());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m(&shard).checksum_failures.load(Ordering::Relaxed), 1);
        assert!(matches!(shard.peek("f19"), Lookup::Miss));
        shard.close().await.unwrap();
    });
}

/// `inline_object_max = 0` keeps every body in a file, as before inline bodies existed.
#[test]
fn inline_bodies_can_be_turned_off() {
    both(|mut cfg| async move {
        cfg.inline_object_max = 0;
        let (shard, _) = open(&cfg).await;
        let a = put(&shard, "a", &data(100, 1), 0).await;
        assert!(!a.inline);
        assert!(file_of(&cfg, a.seq).exists());
        shard.close().await.unwrap();
    });
}

/// Bodies that arrive in small chunks are kept back while they may still go inline and
/// moved to the block buffer once they cannot: every size around the bounds reads back
/// whole, inline or from its file, also with a memory tier bound below the inline bound.
#[test]
fn small_chunks_cross_the_inline_bound() {
    both(|mut cfg| async move {
        for mem_max in [4096, 64 * KIB] {
            cfg.memory_object_max = mem_max;
            cfg.dir = cfg.dir.join(format!("m{mem_max}"));
            let (shard, _) = open(&cfg).await;
            let inline_max = crate::defaults::INLINE_OBJECT_MAX;
            for (i, n) in [
                0,
                1,
                999,
                inline_max - 1,
                inline_max,
                inline_max + 1,
                40 * KIB,
                BLOCK_SIZE + 7,
            ]
            .into_iter()
            .enumerate()
            {
                let body = data(n, i as u8);
                let key = format!("c{i}");
                let mut w = shard.begin_write(&key, None).await.unwrap();
                for c in body.chunks(1000) {
                    w.write(Bytes::copy_from_slice(c)).await.unwrap();
                }
                let meta = w.finish(attrs(0)).await.unwrap();
                assert_eq!(meta.inline, n <= inline_max, "size {n}");
                assert_eq!(file_of(&cfg, meta.seq).exists(), !meta.inline, "size {n}");
                assert_eq!(
                    &shard.read_all(&meta).await.unwrap()[..],
                    &body[..],
                    "size {n}"
                );
                assert_eq!(read_range(&shard, &meta, 0..n).await, body, "size {n}");
                assert_eq!(meta.crc32c, crc32c::crc32c(&body), "size {n}");
            }
            shard.close().await.unwrap();
        }
    });
}
