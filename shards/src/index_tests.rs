//! The index keeps metas in memory for the recently used objects only: the others are
//! read back from the journal, and a meta whose journal batch has not committed is never
//! dropped (LMDB would still answer with the version before it).

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use crate::tests::{both, data, m, meta_of, open, put};
use crate::Lookup;

#[test]
fn cold_metas_come_back_from_the_journal() {
    both(|mut cfg| async move {
        cfg.meta_cache_objects = 3;
        let (shard, _) = open(&cfg).await;
        let mut metas = Vec::new();
        for i in 0..40u64 {
            metas.push(put(&shard, &format!("k{i}"), &data(100 + i, i as u8), 0).await);
        }
        assert!(m(&shard).resident_metas.load(Relaxed) <= 3);
        let reads = m(&shard).meta_reads.load(Relaxed);
        for (i, want) in metas.iter().enumerate() {
            let got = meta_of(&shard, &format!("k{i}"));
            assert_eq!(
                (got.seq, &got.etag, got.size),
                (want.seq, &want.etag, want.size)
            );
            let body = shard.read_all(&got).await.unwrap();
            assert_eq!(&body[..], &data(100 + i as u64, i as u8)[..]);
        }
        assert!(m(&shard).meta_reads.load(Relaxed) >= reads + 37);

        // A level change and a freshness renewal of cold entries persist.
        let up = shard.upgrade("k0", 1).await.unwrap();
        assert_eq!(up.level, 1);
        let (hlc, renewed) = (metas[1].hlc, metas[1].validated_ms + 1000);
        assert!(shard.renew("k1", hlc, renewed).await.unwrap());
        for i in 2..10 {
            meta_of(&shard, &format!("k{i}"));
        }
        assert_eq!(meta_of(&shard, "k0").level, 1);
        assert_eq!(meta_of(&shard, "k1").validated_ms, renewed);
        shard.close().await.unwrap();
        drop(shard);

        // After a restart nothing is resident until used.
        let (shard, report) = open(&cfg).await;
        assert_eq!(report.objects, 40);
        assert_eq!(m(&shard).resident_metas.load(Relaxed), 0);
        assert_eq!(meta_of(&shard, "k0").level, 1);
        assert_eq!(meta_of(&shard, "k1").validated_ms, renewed);
        assert_eq!(meta_of(&shard, "k39").etag, metas[39].etag);
        // Last-writer-wins reads a cold version's hlc and etag.
        assert!(!shard.is_newer("k39", metas[39].hlc, &metas[39].etag));
        assert!(shard.is_newer("k39", metas[39].hlc + 1, &metas[39].etag));
    });
}

/// Writes to other keys push a key's new meta past the bound while its batch may not
/// have committed yet: lookups during the writes must see the old or the new version,
/// never nothing.
#[test]
fn uncommitted_metas_stay_resident() {
    both(|mut cfg| async move {
        cfg.meta_cache_objects = 1;
        let (shard, _) = open(&cfg).await;
        let keys: Vec<String> = (0..24).map(|i| format!("key-{i}")).collect();
        let mut old = Vec::new();
        for k in &keys {
            old.push(put(&shard, k, b"first", 0).await.seq);
        }
        for round in 0..5u8 {
            let writes: Vec<_> = keys
                .iter()
                .map(|k| {
                    let (shard, k) = (shard.clone(), k.clone());
                    monoio::spawn(async move { put(&shard, &k, &data(64, round), 0).await })
                })
                .collect();
            let watch = {
                let (shard, keys) = (shard.clone(), keys.clone());
                monoio::spawn(async move {
                    let mut looks = 0;
                    for _ in 0..50 {
                        for k in &keys {
                            assert!(
                                matches!(shard.peek(k), Lookup::Hit { .. }),
                                "{k} vanished while it was rewritten"
                            );
                            looks += 1;
                        }
                        monoio::time::sleep(std::time::Duration::from_micros(50)).await;
                    }
                    looks
                })
            };
            let mut new = Vec::new();
            for w in writes {
                new.push(w.await.seq);
            }
            assert!(watch.await > 0);
            for (k, seq) in keys.iter().zip(&new) {
                assert_eq!(meta_of(&shard, k).seq, *seq);
            }
            old = new;
        }
        assert_eq!(old.len(), keys.len());
        let _ = Rc::strong_count(&shard);
    });
}
