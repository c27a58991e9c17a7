//! Tests of the engine APIs for the cluster layer: journal export, last-writer-wins,
//! replicas, deferred origin ops. Every test runs on both devices (see `tests::both`).

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::defaults::BLOCK_SIZE;
use crate::hlc::wall_ms;
use crate::journal::{decode, PendingRec, PendingRecKind, Record, RecordKind, MAX_SCAN};
use crate::tests::{both, data, fetched, file_of, m, meta_of, open, put, put_with};
use crate::*;

/// A second shard (another node's, say) beside the one of `cfg`.
fn peer_cfg(cfg: &ShardConfig) -> ShardConfig {
    ShardConfig {
        shard_id: cfg.shard_id + 1,
        dir: cfg.dir.join("peer"),
        ..cfg.clone()
    }
}

/// The meta another node would send for a client write of `body`.
fn remote_meta(key: &str, body: &[u8], hlc: u64, level: u8) -> ObjectMeta {
    ObjectMeta {
        key: key.into(),
        size: body.len() as u64,
        etag: hex::encode(<md5::Md5 as md5::Digest>::digest(body)),
        crc32c: crc32c::crc32c(body),
        content_type: None,
        name: None,
        user_meta: Default::default(),
        last_modified_ms: 1000,
        hlc,
        seq: 424_242,
        level,
        in_origin: false,
        provenance: Provenance::Client,
        headers: Default::default(),
        validated_ms: 0,
        inline: false,
        derived: Default::default(),
    }
}

fn remote_tomb(key: &str, hlc: u64, level: u8) -> Tombstone {
    Tombstone {
        key: key.into(),
        hlc,
        seq: 424_242,
        deleted_at_ms: wall_ms(),
        level,
    }
}

async fn write_body(w: &mut ObjectWriter, body: &[u8]) {
    for c in body.chunks(100_003) {
        w.write(Bytes::copy_from_slice(c)).await.expect("write");
    }
}

async fn replicate(
    shard: &Rc<Shard>,
    meta: &ObjectMeta,
    body: &[u8],
    upload_after_ms: Option<u64>,
) -> Result<Rc<ObjectMeta>, StoreError> {
    let mut w = shard
        .begin_replica(meta)
        .await?
        .expect("the replica is newer");
    write_body(&mut w, body).await;
    w.finish_replica(meta, upload_after_ms).await
}

fn changes(shard: &Shard, after: u64) -> Vec<(u64, Change)> {
    shard.changes_since(after, usize::MAX).unwrap().changes
}

fn object_files(cfg: &ShardConfig) -> usize {
    std::fs::read_dir(cfg.dir.join("objects"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum()
}

async fn sleep_until(ms: u64) {
    let now = wall_ms();
    if ms >= now {
        monoio::time::sleep(Duration::from_millis(ms - now + 1)).await;
    }
}

#[test]
fn changes_since_pages_and_skips_internal_records() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let b = shard.changes_since(0, 10).unwrap();
        assert!(b.changes.is_empty() && !b.gap);
        assert_eq!((b.next_after, b.last_seq, shard.last_seq()), (0, 0, 0));

        let a = put(&shard, "a", b"aa", 0).await;
        let bb = put(&shard, "b", b"bb", 0).await;
        let c = put(&shard, "c", b"cc", 0).await;
        shard.forget("b").await.unwrap(); // internal
        let t = shard.delete("c", 0).await.unwrap();
        shard.upgrade("a", 1).await.unwrap();
        shard.complete_pending("a", a.seq).await.unwrap();
        shard.forget("a").await.unwrap(); // internal, last
        let all = vec![
            (a.seq, Change::Put((*a).clone())),
            (bb.seq, Change::Put((*bb).clone())),
            (c.seq, Change::Put((*c).clone())),
            (t.seq, Change::Delete(t.clone())),
            (
                t.seq + 1,
                Change::Upgrade {
                    key: "a".into(),
                    hlc: a.hlc,
                    level: 1,
                },
            ),
            (
                t.seq + 2,
                Change::Uploaded {
                    key: "a".into(),
                    hlc: a.hlc,
                },
            ),
        ];
        let last = shard.last_seq();
        assert_eq!(last, t.seq + 3, "the trailing forget");

        let p1 = shard.changes_since(0, 2).unwrap();
        assert_eq!(p1.changes, all[..2]);
        assert_eq!((p1.next_after, p1.last_seq, p1.gap), (bb.seq, last, false));
        // Limit 0 still moves past the internal record that follows c's put.
        let z = shard.changes_since(c.seq, 0).unwrap();
        assert!(z.changes.is_empty());
        assert_eq!(z.next_after, c.seq + 1);
        assert!(z.next_after < t.seq);
        let z = shard.changes_since(c.seq, 1).unwrap();
        assert_eq!(z.changes, all[3..4]);
        assert_eq!(z.next_after, t.seq);
        // The rest; next_after covers the trailing internal record.
        let p2 = shard.changes_since(p1.next_after, 100).unwrap();
        assert_eq!(p2.changes, all[2..]);
        assert_eq!(p2.next_after, last);
        let p3 = shard.changes_since(p2.next_after, 100).unwrap();
        assert!(p3.changes.is_empty());
        assert_eq!(p3.next_after, last);
        // Beyond the end: nothing, and next_after does not go back.
        assert_eq!(
            shard.changes_since(last + 50, 10).unwrap().next_after,
            last + 50
        );

        shard.close().await.unwrap();
        drop(shard);
        let (shard, _) = open(&cfg).await;
        assert_eq!(shard.last_seq(), last);
        let b = shard.changes_since(0, 100).unwrap();
        assert_eq!(b.changes, all);
        assert_eq!((b.next_after, b.gap), (last, false));
        shard.close().await.unwrap();
    });
}

#[test]
fn changes_since_reads_a_bounded_number_of_records() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let n = MAX_SCAN as u64 + 10;
        let mut puts = Vec::new();
        for i in 0..n {
            puts.push(put(&shard, &format!("k{i}"), b"x", 0).await.seq);
        }
        let b = shard.changes_since(0, usize::MAX).unwrap();
        assert_eq!(b.changes.len(), MAX_SCAN);
        assert_eq!(b.next_after, puts[MAX_SCAN - 1]);
        let b = shard.changes_since(b.next_after, usize::MAX).unwrap();
        assert_eq!(b.changes.len(), 10);
        let after_puts = b.next_after;
        assert_eq!(after_puts, puts[n as usize - 1]);
        // Internal records only: an empty batch that still moves on.
        for i in 0..n {
            shard.forget(&format!("k{i}")).await.unwrap();
        }
        let b = shard.changes_since(after_puts, usize::MAX).unwrap();
        assert!(b.changes.is_empty());
        assert_eq!(b.next_after, after_puts + MAX_SCAN as u64);
        assert!(b.next_after < b.last_seq);
        let b = shard.changes_since(b.next_after, usize::MAX).unwrap();
        assert!(b.changes.is_empty());
        assert_eq!(b.next_after, b.last_seq);
        shard.close().await.unwrap();
    });
}

#[test]
fn changes_since_reports_trimmed_gap() {
    both(|mut cfg| async move {
        cfg.journal_retain = 4;
        let (shard, _) = open(&cfg).await;
        let mut metas = Vec::new();
        for i in 0..10 {
            metas.push(put(&shard, &format!("k{i}"), b"x", 0).await);
        }
        let check = |shard: &Shard| {
            let b = shard.changes_since(0, 100).unwrap();
            assert!(b.gap);
            let kept: Vec<_> = metas[6..]
                .iter()
                .map(|m| (m.seq, Change::Put((**m).clone())))
                .collect();
            assert_eq!(b.changes, kept);
            assert_eq!(b.next_after, metas[9].seq);
            let first_kept = metas[6].seq;
            let b = shard.changes_since(first_kept - 1, 100).unwrap();
            assert!(!b.gap);
            assert_eq!(b.changes.len(), 4);
            assert!(shard.changes_since(first_kept - 2, 100).unwrap().gap);
        };
        check(&shard);
        shard.close().await.unwrap();
        drop(shard);
        let (shard, _) = open(&cfg).await;
        check(&shard);
        shard.close().await.unwrap();
    });
}

#[test]
fn changes_since_waits_for_writes_in_progress() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        // `slow` takes its seq first but commits after `fast`.
        let mut w = shard.begin_write("slow", Some(4)).await.unwrap();
        let fast = put(&shard, "fast", b"fast", 0).await;
        let b = shard.changes_since(0, 10).unwrap();
        assert!(b.changes.is_empty(), "{:?}", b.changes);
        assert_eq!(b.next_after, 0);
        assert_eq!(b.last_seq, fast.seq);
        w.write(Bytes::from_static(b"slow")).await.unwrap();
        let slow = w.finish(WriteAttrs::default()).await.unwrap();
        assert!(slow.seq < fast.seq);
        let b = shard.changes_since(b.next_after, 10).unwrap();
        assert_eq!(
            b.changes,
            vec![
                (slow.seq, Change::Put((*slow).clone())),
                (fast.seq, Change::Put((*fast).clone())),
            ]
        );

        // An abandoned write stops holding back what came after it, without another write.
        let w = shard.begin_write("gone", None).await.unwrap();
        let later = put(&shard, "later", b"l", 0).await;
        assert!(changes(&shard, b.next_after).is_empty());
        drop(w);
        let mut got = Vec::new();
        for _ in 0..1000 {
            got = changes(&shard, b.next_after);
            if !got.is_empty() {
                break;
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(got, vec![(later.seq, Change::Put((*later).clone()))]);
        shard.close().await.unwrap();
    });
}

#[test]
fn last_writer_wins_matrix() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        assert!(shard.is_newer("k", 1, ""));
        let v = put(&shard, "k", b"v", 0).await;
        let e = v.etag.as_str();
        assert!(!shard.is_newer("k", v.hlc - 1, "zzzz"));
        assert!(!shard.is_newer("k", v.hlc, e));
        assert!(
            shard.is_newer("k", v.hlc, &format!("{e}0")),
            "etag breaks the tie"
        );
        assert!(!shard.is_newer("k", v.hlc, ""));
        assert!(shard.is_newer("k", v.hlc + 1, ""));
        let older = remote_meta("k", b"old", v.hlc - 1, 0);
        assert!(shard.begin_replica(&older).await.unwrap().is_none());
        let same = ObjectMeta {
            seq: 7,
            ..(*v).clone()
        };
        assert!(shard.begin_replica(&same).await.unwrap().is_none());

        // Tombstone against the object: older loses, equal hlc wins.
        assert!(!shard
            .apply_tombstone(&remote_tomb("k", v.hlc - 1, 0), None)
            .await
            .unwrap());
        assert_eq!(meta_of(&shard, "k").seq, v.seq);
        let t = remote_tomb("k", v.hlc, 0);
        assert!(shard.apply_tombstone(&t, None).await.unwrap());
        let local = match shard.peek("k") {
            Lookup::Deleted(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (local.hlc, local.deleted_at_ms, local.level),
            (t.hlc, t.deleted_at_ms, 0)
        );
        assert!(local.seq > v.seq, "a local seq, not the sender's");
        assert!(!file_of(&cfg, v.seq).exists());
        assert_eq!(m(&shard).tombstones.load(Ordering::Relaxed), 1);
        assert_eq!(m(&shard).objects.load(Ordering::Relaxed), 0);
        assert_eq!(
            changes(&shard, v.seq),
            vec![(local.seq, Change::Delete(local.clone()))]
        );
        // The same tombstone again, or an older one: no-op.
        assert!(!shard.apply_tombstone(&t, None).await.unwrap());
        assert!(!shard
            .apply_tombstone(&remote_tomb("k", v.hlc - 5, 0), None)
            .await
            .unwrap());

        // Versions against the tombstone: equal hlc loses, higher wins.
        assert!(!shard.is_newer("k", t.hlc, "zzzz"));
        let tie = remote_meta("k", b"tie", t.hlc, 0);
        assert!(shard.begin_replica(&tie).await.unwrap().is_none());
        let newer = remote_meta("k", b"newer", t.hlc + 1, 0);
        let r = replicate(&shard, &newer, b"newer", None).await.unwrap();
        assert_eq!(r.hlc, t.hlc + 1);
        assert_eq!(&shard.read_all(&r).await.unwrap()[..], b"newer");
        assert_eq!(m(&shard).tombstones.load(Ordering::Relaxed), 0);
        // A newer tombstone wins over a replica too.
        assert!(shard
            .apply_tombstone(&remote_tomb("k", r.hlc + 1, 0), None)
            .await
            .unwrap());
        assert!(!file_of(&cfg, r.seq).exists());

        // Overtaken while writing: a local delete lands before the replica commits.
        let next = remote_meta("j", b"body", shard.hlc().now() + 10, 0);
        let mut w = shard.begin_replica(&next).await.unwrap().unwrap();
        write_body(&mut w, b"body").await;
        let d = shard.delete("j", 0).await.unwrap();
        assert!(d.hlc > next.hlc, "begin_replica observed the remote hlc");
        assert!(matches!(
            w.finish_replica(&next, None).await,
            Err(StoreError::Superseded)
        ));
        assert!(matches!(shard.peek("j"), Lookup::Deleted(_)));
        assert_eq!(object_files(&cfg), 0);
        shard.close().await.unwrap();
    });
}

#[test]
fn replica_round_trip() {
    both(|cfg| async move {
        let peer = peer_cfg(&cfg);
        let (src, _) = open(&cfg).await;
        let (dst, _) = open(&peer).await;
        // Local objects first so the replica's local seqs differ from the source's
        // (read-through ones: not pinned, so pinned_bytes below counts only replicas).
        for i in 0..3 {
            put_with(&dst, &format!("local{i}"), b"l", fetched("l")).await;
        }
        let far = wall_ms() + 3_600_000;
        let mut replicas = Vec::new();
        for (i, n) in [1000, 2 * BLOCK_SIZE + 5].into_iter().enumerate() {
            let key = format!("k{i}");
            let body = data(n, i as u8);
            let attrs = WriteAttrs {
                content_type: Some("text/plain".into()),
                name: Some(format!("file{i}.txt")),
                user_meta: [("owner".to_string(), "me".to_string())].into(),
                level: 1,
                fetched: None,
                headers: [("cache-control".to_string(), "no-cache".to_string())].into(),
            };
            let sm = put_with(&src, &key, &body, attrs).await;
            let rm = replicate(&dst, &sm, &body, Some(far)).await.unwrap();
            assert_ne!(rm.seq, sm.seq);
            assert_eq!(
                ObjectMeta {
                    seq: sm.seq,
                    ..(*rm).clone()
                },
                *sm
            );
            assert_eq!(
                rm.inline,
                n <= crate::defaults::INLINE_OBJECT_MAX,
                "size {n}"
            );
            assert_eq!(file_of(&peer, rm.seq).exists(), !rm.inline, "size {n}");
            assert_eq!(&dst.read_all(&rm).await.unwrap()[..], &body[..]);
            match dst.lookup(&key) {
                Lookup::Hit { body: b, .. } => assert_eq!(b.is_some(), n <= 4096, "size {n}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(
                changes(&dst, rm.seq - 1).first(),
                Some(&(rm.seq, Change::Put((*rm).clone())))
            );
            replicas.push((rm, body));
        }
        // Level 1, not in the origin: pinned, with a deferred upload.
        let total = 1000 + 2 * BLOCK_SIZE + 5;
        assert_eq!(m(&dst).pinned_bytes.load(Ordering::Relaxed), total);
        assert!(dst.pending(10).is_empty());
        assert_eq!(dst.next_deferred_ms(), Some(far));

        // A replica of a fetched object is in the origin: nothing to upload, not pinned.
        let fm = put_with(&src, "f", b"fetched", fetched("etag-f")).await;
        let fr = replicate(&dst, &fm, b"fetched", None).await.unwrap();
        assert!(fr.in_origin);
        assert_eq!(fr.provenance, Provenance::Fetched);
        assert_eq!(fr.etag, "etag-f");
        assert_eq!(dst.pending_seq("f"), None);
        assert_eq!(m(&dst).pinned_bytes.load(Ordering::Relaxed), total);

        // A remote hlc ahead of the local clock is observed.
        let ahead = (wall_ms() + 60_000) << 16;
        replicate(&dst, &remote_meta("ahead", b"a", ahead, 0), b"a", None)
            .await
            .unwrap();
        assert!(dst.hlc().now() > ahead);

        dst.close().await.unwrap();
        drop(dst);
        let (dst, rep) = open(&peer).await;
        assert_eq!(rep.pending, 2);
        for (rm, body) in &replicas {
            assert_eq!(*meta_of(&dst, &rm.key), **rm);
            assert_eq!(&dst.read_all(rm).await.unwrap()[..], &body[..]);
        }
        assert!(meta_of(&dst, "f").in_origin);
        assert!(dst.pending(10).is_empty());
        assert_eq!(dst.next_deferred_ms(), Some(far));
        assert!(dst.hlc().now() > ahead);
        dst.close().await.unwrap();
        src.close().await.unwrap();
    });
}

#[test]
fn replica_body_mismatch_is_rejected() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let body = data(BLOCK_SIZE + 77, 5);
        let meta = remote_meta("k", &body, shard.hlc().now() + 1, 1);
        let mut bad = body.clone();
        bad[1234] ^= 1;
        let expect =
            |r: Result<Rc<ObjectMeta>, StoreError>, what: &str, exp: String, act: String| match r {
                Err(StoreError::Corrupt {
                    key,
                    what: w,
                    expected,
                    actual,
                }) => assert_eq!((key.as_str(), w, expected, actual), ("k", what, exp, act)),
                other => panic!("expected Corrupt {what}, got {other:?}"),
            };
        let mut w = shard.begin_replica(&meta).await.unwrap().unwrap();
        write_body(&mut w, &bad).await;
        expect(
            w.finish_replica(&meta, None).await,
            "replica body checksum",
            format!("{:08x}", meta.crc32c),
            format!("{:08x}", crc32c::crc32c(&bad)),
        );
        let mut w = shard.begin_replica(&meta).await.unwrap().unwrap();
        write_body(&mut w, &body[..body.len() - 1]).await;
        expect(
            w.finish_replica(&meta, None).await,
            "replica body size",
            meta.size.to_string(),
            (meta.size - 1).to_string(),
        );
        // Nothing stored, nothing journaled, nothing reserved.
        assert!(matches!(shard.peek("k"), Lookup::Miss));
        assert_eq!(object_files(&cfg), 0);
        assert!(changes(&shard, 0).is_empty());
        assert!(shard.pending(10).is_empty());
        assert_eq!(m(&shard).disk_bytes.load(Ordering::Relaxed), 0);
        // The right body is accepted.
        let r = replicate(&shard, &meta, &body, None).await.unwrap();
        assert_eq!(&shard.read_all(&r).await.unwrap()[..], &body[..]);
        assert_eq!(shard.pending(10).len(), 1);
        shard.close().await.unwrap();
    });
}

#[test]
fn deferred_pending_ops_wait_until_due() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let due = wall_ms() + 1500;
        let meta = remote_meta("k", b"body", shard.hlc().now() + 1, 1);
        let r = replicate(&shard, &meta, b"body", Some(due)).await.unwrap();
        let t = remote_tomb("d", shard.hlc().now() + 1, 1);
        assert!(shard.apply_tombstone(&t, Some(due + 300)).await.unwrap());
        // No origin op: a level-0 tombstone, or a level-1 one without a delay given.
        assert!(shard
            .apply_tombstone(&remote_tomb("z0", t.hlc + 1, 0), Some(0))
            .await
            .unwrap());
        assert!(shard
            .apply_tombstone(&remote_tomb("z1", t.hlc + 2, 1), None)
            .await
            .unwrap());
        assert_eq!(shard.pending_seq("z0"), None);
        assert_eq!(shard.pending_seq("z1"), None);
        // A local level-1 write is due at once.
        let now = put(&shard, "now", b"n", 1).await;
        let seqs = |s: &Shard| s.pending(10).iter().map(|p| p.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&shard), [now.seq]);
        assert_eq!(shard.next_deferred_ms(), Some(due));
        // Deferral survives a restart.
        shard.close().await.unwrap();
        drop(shard);
        let (shard, _) = open(&cfg).await;
        assert_eq!(seqs(&shard), [now.seq]);
        assert_eq!(shard.next_deferred_ms(), Some(due));
        let local_t = shard.pending_seq("d").unwrap();

        sleep_until(due).await;
        assert_eq!(seqs(&shard), [r.seq, now.seq]);
        assert!(matches!(shard.pending(10)[0].kind, PendingKind::Put { .. }));
        assert_eq!(shard.next_deferred_ms(), Some(due + 300));
        sleep_until(due + 300).await;
        assert_eq!(seqs(&shard), [r.seq, local_t, now.seq]);
        assert_eq!(shard.next_deferred_ms(), None);
        shard.close().await.unwrap();
    });
}

#[test]
fn mark_uploaded_matches_by_hlc() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let far = wall_ms() + 3_600_000;
        let meta = remote_meta("k", &data(5000, 1), shard.hlc().now() + 1, 1);
        let r = replicate(&shard, &meta, &data(5000, 1), Some(far))
            .await
            .unwrap();
        assert_eq!(m(&shard).pinned_bytes.load(Ordering::Relaxed), 5000);
        assert!(!shard.mark_uploaded("k", r.hlc + 1).await.unwrap());
        assert!(!shard.mark_uploaded("nope", r.hlc).await.unwrap());
        assert_eq!(shard.pending_seq("k"), Some(r.seq));
        assert!(shard.mark_uploaded("k", r.hlc).await.unwrap());
        assert_eq!(shard.pending_seq("k"), None);
        assert_eq!(shard.next_deferred_ms(), None);
        assert!(meta_of(&shard, "k").in_origin);
        assert_eq!(m(&shard).pinned_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(m(&shard).pending_uploads.load(Ordering::Relaxed), 0);
        assert!(!shard.mark_uploaded("k", r.hlc).await.unwrap());
        assert_eq!(
            changes(&shard, r.seq),
            vec![(
                r.seq + 1,
                Change::Uploaded {
                    key: "k".into(),
                    hlc: r.hlc
                }
            )]
        );

        // A pending origin delete, matched by the tombstone's hlc.
        let t = remote_tomb("d", shard.hlc().now() + 1, 1);
        assert!(shard.apply_tombstone(&t, Some(far)).await.unwrap());
        assert!(shard.pending_seq("d").is_some());
        assert!(shard.mark_uploaded("d", t.hlc).await.unwrap());
        assert_eq!(shard.pending_seq("d"), None);

        // The local path journals the hlc too.
        let v = put(&shard, "v", b"v", 1).await;
        shard.complete_pending("v", v.seq).await.unwrap();
        assert_eq!(
            changes(&shard, v.seq),
            vec![(
                v.seq + 1,
                Change::Uploaded {
                    key: "v".into(),
                    hlc: v.hlc
                }
            )]
        );

        shard.close().await.unwrap();
        drop(shard);
        let (shard, rep) = open(&cfg).await;
        assert_eq!(rep.pending, 0);
        assert!(meta_of(&shard, "k").in_origin);
        assert_eq!(m(&shard).pinned_bytes.load(Ordering::Relaxed), 0);
        shard.close().await.unwrap();
    });
}

#[test]
fn upgrade_version_matches_by_hlc() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let u = put(&shard, "u", b"u", 0).await;
        assert!(!shard.upgrade_version("u", u.hlc + 1, 1).await.unwrap());
        assert!(!shard.upgrade_version("nope", u.hlc, 1).await.unwrap());
        assert_eq!(meta_of(&shard, "u").level, 0);
        assert!(shard.upgrade_version("u", u.hlc, 1).await.unwrap());
        assert_eq!(meta_of(&shard, "u").level, 1);
        assert_eq!(shard.pending_seq("u"), Some(u.seq));
        assert!(!shard.upgrade_version("u", u.hlc, 1).await.unwrap());
        assert_eq!(
            changes(&shard, u.seq),
            vec![(
                u.seq + 1,
                Change::Upgrade {
                    key: "u".into(),
                    hlc: u.hlc,
                    level: 1
                }
            )]
        );
        shard.close().await.unwrap();
    });
}

#[test]
fn sweep_tombstones_where_respects_predicate() {
    both(|cfg| async move {
        // TTL one hour: remote tombstones deleted two hours ago have expired, a fresh
        // local one has not.
        let (shard, _) = open(&cfg).await;
        let old = wall_ms() - 2 * 3_600_000;
        let mut hlc = shard.hlc().now();
        for (key, level) in [("a", 0), ("b", 0), ("c", 0), ("p", 1)] {
            hlc += 2;
            let t = Tombstone {
                deleted_at_ms: old,
                ..remote_tomb(key, hlc, level)
            };
            // An expired tombstone is not stored over nothing...
            assert!(!shard.apply_tombstone(&t, Some(0)).await.unwrap());
            assert!(matches!(shard.peek(key), Lookup::Miss));
            // ...but still deletes an older copy.
            replicate(
                &shard,
                &remote_meta(key, b"x", hlc - 1, level),
                b"x",
                Some(0),
            )
            .await
            .unwrap();
            assert!(shard.apply_tombstone(&t, Some(0)).await.unwrap());
        }
        shard.delete("fresh", 0).await.unwrap();
        assert_eq!(m(&shard).tombstones.load(Ordering::Relaxed), 5);
        assert_eq!(shard.sweep_tombstones_where(|_| false).await.unwrap(), 0);
        assert_eq!(
            shard
                .sweep_tombstones_where(|t| t.key != "b")
                .await
                .unwrap(),
            2
        );
        for (key, kept) in [
            ("a", false),
            ("b", true),
            ("c", false),
            ("p", true),
            ("fresh", true),
        ] {
            assert_eq!(matches!(shard.peek(key), Lookup::Deleted(_)), kept, "{key}");
        }
        // p has a pending origin delete: kept whatever the predicate says.
        assert_eq!(shard.sweep_tombstones_where(|_| true).await.unwrap(), 1);
        assert!(matches!(shard.peek("b"), Lookup::Miss));
        assert!(matches!(shard.peek("p"), Lookup::Deleted(_)));
        assert_eq!(m(&shard).tombstones.load(Ordering::Relaxed), 2);
        shard.close().await.unwrap();
    });
}

#[test]
fn journal_values_from_before_the_cluster_fields_decode() {
    let p: PendingRec = decode(b"\x01{\"seq\":5,\"kind\":\"Put\"}").unwrap();
    assert_eq!(
        p,
        PendingRec {
            seq: 5,
            kind: PendingRecKind::Put,
            not_before_ms: 0,
            hlc: 0,
        }
    );
    for old in [
        &b"\x01{\"seq\":7,\"hlc\":9,\"kind\":{\"Uploaded\":{\"key\":\"k\",\"seq\":5}}}"[..],
        &b"\x01{\"seq\":8,\"hlc\":9,\"kind\":{\"Upgrade\":{\"key\":\"k\",\"level\":2}}}"[..],
    ] {
        let r: Record = decode(old).unwrap();
        match &r.kind {
            RecordKind::Uploaded { hlc, .. } | RecordKind::Upgrade { hlc, .. } => {
                assert_eq!(*hlc, 0)
            }
            other => panic!("{other:?}"),
        }
        // Without the version's hlc a peer could not match it: not exported.
        assert_eq!(r.kind.export(), None);
    }
}

#[test]
fn index_pages_cover_objects_and_tombstones_in_key_order() {
    both(|cfg| async move {
        let (shard, _) = open(&cfg).await;
        let empty = shard.index_page(None, 10).unwrap();
        assert!(empty.entries.is_empty() && empty.next_key.is_none());
        let mut metas = Vec::new();
        for k in ["k3", "k1", "k5", "k2", "k4"] {
            metas.push(put(&shard, k, k.as_bytes(), 0).await);
        }
        let t = shard.delete("k2", 0).await.unwrap();
        let through = shard.last_seq();

        let p1 = shard.index_page(None, 2).unwrap();
        assert_eq!(p1.through, through);
        assert_eq!(p1.next_key.as_deref(), Some("k2"));
        let p2 = shard.index_page(p1.next_key.as_deref(), 2).unwrap();
        assert_eq!(p2.next_key.as_deref(), Some("k4"));
        let p3 = shard.index_page(p2.next_key.as_deref(), 2).unwrap();
        assert_eq!(p3.next_key, None, "the last page says so");
        let all: Vec<Change> = [p1.entries, p2.entries, p3.entries].concat();
        let meta = |k: &str| (*metas.iter().find(|m| m.key == k).unwrap().clone()).clone();
        assert_eq!(
            all,
            vec![
                Change::Put(meta("k1")),
                Change::Delete(t.clone()),
                Change::Put(meta("k3")),
                Change::Put(meta("k4")),
                Change::Put(meta("k5")),
            ]
        );
        // An exact fit: the page that ends on the last key says there is no more.
        assert_eq!(shard.index_page(None, 5).unwrap().next_key, None);
    });
}
