//! Disk-space tests: reservations of declared sizes, and a full file system (a small
//! tmpfs, mounted only when the tests run as root; skipped otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::tests::{both, data, fetched, m, open, put, put_with, KIB};
use crate::*;

fn evictions(shard: &Shard) -> u64 {
    m(shard).evictions.load(Ordering::Relaxed)
}

fn is_hit(shard: &Shard, key: &str) -> bool {
    matches!(shard.peek(key), Lookup::Hit { .. })
}

#[test]
fn declared_size_without_body_evicts_and_holds_nothing() {
    both(|mut cfg| async move {
        cfg.disk_capacity = 1 << 20;
        let (shard, _) = open(&cfg).await;
        let sz = 300 * KIB;
        for i in 0..3 {
            put_with(&shard, &format!("f{i}"), &data(sz, i), fetched("e")).await;
        }
        // Larger than the whole shard: refused up front, nothing evicted.
        match shard.begin_write("huge", Some(5 << 30)).await {
            Err(StoreError::InsufficientStorage {
                needed,
                available,
                reason,
            }) => {
                assert_eq!(needed, 5 << 30);
                assert_eq!(available, cfg.disk_capacity);
                assert_eq!(reason, NoSpaceReason::ShardCapacity);
            }
            Ok(_) => panic!("expected InsufficientStorage"),
            Err(e) => panic!("expected InsufficientStorage, got {e}"),
        }
        // Declared sizes that fit: accepted, but nothing evicted or held until bytes come.
        let w1 = shard
            .begin_write("big1", Some(cfg.disk_capacity))
            .await
            .unwrap();
        let w2 = shard
            .begin_write("big2", Some(cfg.disk_capacity))
            .await
            .unwrap();
        assert_eq!(evictions(&shard), 0);
        for i in 0..3 {
            assert!(is_hit(&shard, &format!("f{i}")));
        }
        // Holding nothing: a third writer with a full-capacity declaration still passes
        // the up-front check, and a plain put needs no eviction beyond its own size.
        let w3 = shard
            .begin_write("big3", Some(cfg.disk_capacity))
            .await
            .unwrap();
        put_with(&shard, "small", &data(10 * KIB, 9), fetched("e")).await;
        assert_eq!(evictions(&shard), 0);
        drop((w1, w2, w3));
        assert_eq!(evictions(&shard), 0);

        // Bytes arriving reserve at most RESERVE_AHEAD beyond them: 10 KiB of a declared
        // 1 MiB evict one 300 KiB object, not all three.
        let mut w = shard
            .begin_write("big", Some(cfg.disk_capacity))
            .await
            .unwrap();
        w.write(Bytes::from(data(10 * KIB, 1))).await.unwrap();
        assert_eq!(evictions(&shard), 1);
        drop(w);
        shard.close().await.unwrap();
    });
}

#[test]
fn declared_size_reservations_keep_pinned_objects() {
    both(|mut cfg| async move {
        cfg.disk_capacity = 1 << 20;
        let (shard, _) = open(&cfg).await;
        let sz = 300 * KIB;
        put(&shard, "p0", &data(sz, 0), 0).await;
        put(&shard, "p1", &data(sz, 1), 0).await;
        put_with(&shard, "f0", &data(sz, 2), fetched("e")).await;
        // Room after evicting every unpinned object: capacity - pinned.
        let room = cfg.disk_capacity - 2 * sz;
        let err = shard
            .begin_write("x", Some(room + 1))
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(err, StoreError::InsufficientStorage { needed, available, .. }
                if needed == room + 1 && available == room),
            "{err}"
        );
        // A declared write that fits pushes out the fetched object only, as it writes.
        let body = data(room, 7);
        let mut w = shard.begin_write("x", Some(room)).await.unwrap();
        assert!(is_hit(&shard, "f0"));
        for c in body.chunks(64 * 1024) {
            w.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
        let meta = w.finish(crate::tests::attrs(0)).await.unwrap();
        assert!(!is_hit(&shard, "f0"));
        assert!(is_hit(&shard, "p0") && is_hit(&shard, "p1"));
        assert_eq!(shard.read_all(&meta).await.unwrap(), body);
        // Now everything is pinned: even a declared 1-byte write is refused up front, and
        // an undeclared one when its bytes arrive.
        assert!(shard.begin_write("y", Some(1)).await.is_err());
        let mut w = shard.begin_write("y", None).await.unwrap();
        let err = w.write(Bytes::from(data(8 * KIB, 1))).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::InsufficientStorage {
                    reason: NoSpaceReason::ShardCapacity,
                    ..
                }
            ),
            "{err}"
        );
        drop(w);
        assert!(is_hit(&shard, "p0") && is_hit(&shard, "p1") && is_hit(&shard, "x"));
        shard.close().await.unwrap();
    });
}

/// A tmpfs of `size` mounted on a fresh temporary directory, unmounted on drop (also
/// when the test panics). `None` when mounting is not permitted (not root, no tmpfs).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "nearcache-test",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Lazy unmount: never leave the mount behind, even with open files.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Fills the file system of `dir` with a file until it refuses more (ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
                break;
            }
        }
    }
    path
}

fn assert_fs_full(err: &StoreError, during: &str) {
    match err {
        StoreError::InsufficientStorage {
            reason: NoSpaceReason::FileSystemFull { during: d, .. },
            ..
        } => assert_eq!(*d, during, "{err}"),
        other => panic!("expected InsufficientStorage (file system full), got {other}"),
    }
    assert!(err.to_string().contains("file system is full"), "{err}");
}

#[test]
fn full_file_system_is_insufficient_storage_and_loses_nothing() {
    for kind in [DeviceKind::Uring, DeviceKind::Syscall] {
        let Some(fs) = Tmpfs::mount("8m") else {
            return;
        };
        let mut cfg = crate::tests::cfg(&fs.path().join("shard"), kind);
        cfg.disk_capacity = 64 << 20; // far more than the file system holds
        let root = fs.path().to_owned();
        crate::tests::run(async move {
            let (shard, _) = open(&cfg).await;
            let mut kept = Vec::new();
            for i in 0..4u8 {
                let body = data(200 * KIB + u64::from(i), i);
                put(&shard, &format!("k{i}"), &body, 0).await;
                kept.push((format!("k{i}"), body));
            }
            shard.delete("k3", 0).await.unwrap();
            kept.pop();
            let filler = fill(&root);

            // Data file writes: the block flush or the final write.
            let mut w = shard.begin_write("new", Some(600 * KIB)).await.unwrap();
            let mut err = None;
            for c in data(600 * KIB, 5).chunks(100 * 1024) {
                if let Err(e) = w.write(Bytes::copy_from_slice(c)).await {
                    err = Some(e);
                    break;
                }
            }
            let err = match err {
                Some(e) => e,
                None => w.finish(crate::tests::attrs(0)).await.unwrap_err(),
            };
            assert_fs_full(&err, "writing an object file");
            assert!(matches!(shard.peek("new"), Lookup::Miss));

            // Journal commits: tombstones of new keys grow the LMDB file until it fails.
            let mut journal_err = None;
            for i in 0..20_000 {
                if let Err(e) = shard
                    .delete(&format!("t{i:05}-{}", "x".repeat(200)), 0)
                    .await
                {
                    journal_err = Some(e);
                    break;
                }
            }
            let err = journal_err.expect("the journal never hit ENOSPC");
            assert_fs_full(&err, "committing the journal");

            // Everything stored before is intact.
            for (key, body) in &kept {
                let meta = crate::tests::meta_of(&shard, key);
                assert_eq!(
                    &shard.read_all(&meta).await.unwrap()[..],
                    &body[..],
                    "{key}"
                );
            }
            assert!(matches!(shard.peek("k3"), Lookup::Deleted(_)));

            // Space comes back: writes work again, and a restart finds every acknowledged
            // write.
            std::fs::remove_file(filler).unwrap();
            put(&shard, "after", &data(10 * KIB, 3), 0).await;
            shard.close().await.unwrap();
            drop(shard);
            let (shard, _) = open(&cfg).await;
            for (key, body) in &kept {
                let meta = crate::tests::meta_of(&shard, key);
                assert_eq!(
                    &shard.read_all(&meta).await.unwrap()[..],
                    &body[..],
                    "{key}"
                );
            }
            assert!(matches!(shard.peek("k3"), Lookup::Deleted(_)));
            assert!(matches!(shard.peek("new"), Lookup::Miss));
            assert!(is_hit(&shard, "after"));
            shard.close().await.unwrap();
        });
        drop(fs);
    }
}
