use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Lru, NoSpace, Policy, S3Fifo};

/// Runs make_room + insert like the shard does; returns whether the key was admitted.
fn admit<P: Policy<u64> + ?Sized>(p: &mut P, key: u64, weight: u64) -> bool {
    match p.make_room(weight) {
        Ok(_) => {
            p.insert(key, weight, false);
            true
        }
        Err(_) => false,
    }
}

#[test]
fn capacity_never_exceeded_after_make_room_and_insert() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut s3 = S3Fifo::new(10_000);
    let mut lru = Lru::new(10_000);
    for _ in 0..20_000 {
        let key = rng.gen_range(0..2_000u64);
        let weight = rng.gen_range(1..500);
        for p in [&mut s3 as &mut dyn Policy<u64>, &mut lru] {
            if p.contains(&key) {
                p.access(&key);
            } else {
                assert!(admit(p, key, weight));
                assert!(p.used() <= 10_000, "used {} over capacity", p.used());
            }
        }
    }
    s3.check_invariants();
    lru.check_invariants();
}

#[test]
fn make_room_returns_victims_already_removed() {
    let mut s3 = S3Fifo::new(100);
    for k in 0..10u64 {
        s3.insert(k, 10, false);
    }
    let victims = s3.make_room(25).unwrap();
    assert_eq!(victims.len(), 3);
    for v in &victims {
        assert!(!s3.contains(v));
    }
    assert_eq!(s3.used(), 70);
    assert_eq!(s3.make_room(30), Ok(vec![]));
}

#[test]
fn pinned_never_evicted() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut s3 = S3Fifo::new(5_000);
    let mut lru = Lru::new(5_000);
    // Every 7th key is pinned, and some pinned keys are hot so they travel to main.
    for i in 0..30_000u64 {
        let key = rng.gen_range(0..1_000u64);
        let pinned = key % 7 == 0;
        if s3.contains(&key) {
            s3.access(&key);
        } else if let Ok(victims) = s3.make_room(10) {
            assert!(
                victims.iter().all(|v| v % 7 != 0),
                "pinned key evicted at step {i}"
            );
            s3.insert(key, 10, pinned);
        }
        if lru.contains(&key) {
            lru.access(&key);
        } else if let Ok(victims) = lru.make_room(10) {
            assert!(
                victims.iter().all(|v| v % 7 != 0),
                "pinned key evicted at step {i}"
            );
            lru.insert(key, 10, pinned);
        }
    }
    s3.check_invariants();
    lru.check_invariants();
}

#[test]
fn no_space_when_only_pinned_left_and_nothing_evicted() {
    fn check<P: Policy<u64>>(mut p: P, pinned_bytes: impl Fn(&P) -> u64) {
        for k in 0..8u64 {
            p.insert(k, 10, true);
        }
        p.insert(100, 5, false);
        p.insert(101, 5, false);
        assert_eq!(pinned_bytes(&p), 80);
        // 90 used, capacity 100: 40 more needs 30 freed, only 10 unpinned.
        assert_eq!(
            p.make_room(40),
            Err(NoSpace {
                needed: 30,
                evictable: 10
            })
        );
        assert_eq!(p.len(), 10, "NoSpace must evict nothing");
        assert_eq!(p.used(), 90);
        // Bigger than the whole cache.
        assert_eq!(
            p.make_room(1_000),
            Err(NoSpace {
                needed: 990,
                evictable: 10
            })
        );
        // 20 needs 10 freed: exactly the unpinned ones go.
        let mut victims = p.make_room(20).unwrap();
        victims.sort_unstable();
        assert_eq!(victims, vec![100, 101]);
        assert_eq!(p.used(), 80);
        assert_eq!(
            p.make_room(21),
            Err(NoSpace {
                needed: 1,
                evictable: 0
            })
        );
        assert_eq!(p.len(), 8);
    }
    check(S3Fifo::new(100), S3Fifo::pinned_bytes);
    check(Lru::new(100), Lru::pinned_bytes);
}

#[test]
fn pinned_in_main_with_unpinned_only_in_small_terminates() {
    // Main full of pinned entries, small holding one small unpinned entry below its
    // share: make_room must take it from small rather than lap main forever.
    let mut s3 = S3Fifo::new(1_000);
    for k in 0..9u64 {
        s3.insert(k, 100, true);
        s3.access(&k);
        s3.access(&k);
    }
    s3.insert(50, 50, false); // 950 used
    s3.make_room(100).unwrap(); // pushes the hot pinned keys to main, evicts 50
    assert!(!s3.contains(&50));
    s3.insert(60, 10, false);
    assert_eq!(s3.make_room(100).unwrap(), vec![60]);
    s3.check_invariants();
}

#[test]
fn unpinning_makes_evictable() {
    let mut s3 = S3Fifo::new(100);
    for k in 0..10u64 {
        s3.insert(k, 10, true);
    }
    assert!(s3.make_room(10).is_err());
    s3.set_pinned(&3, false);
    assert_eq!(s3.pinned_bytes(), 90);
    assert_eq!(s3.make_room(10).unwrap(), vec![3]);
    s3.check_invariants();
}

/// Hot keys, then a long scan of keys seen once. S3-FIFO keeps the hot set (the scan
/// churns through the small queue only); LRU loses it.
#[test]
fn one_hit_wonder_scan_does_not_flush_hot_keys() {
    fn run<P: Policy<u64>>(mut p: P) -> u64 {
        let hot = 0..500u64;
        for _round in 0..4 {
            for k in hot.clone() {
                if p.contains(&k) {
                    p.access(&k);
                } else {
                    admit(&mut p, k, 1);
                }
            }
        }
        // A scan twice the cache size, every key new.
        for k in 1_000_000..1_002_000u64 {
            admit(&mut p, k, 1);
        }
        hot.filter(|k| p.contains(k)).count() as u64
    }
    let s3 = run(S3Fifo::new(1_000));
    let lru = run(Lru::new(1_000));
    assert!(s3 >= 450, "S3-FIFO kept only {s3} of 500 hot keys");
    assert_eq!(lru, 0, "LRU is expected to be flushed by the scan");
    assert!(s3 > lru);
}

#[test]
fn ghost_readmission_goes_to_main() {
    let mut s3 = S3Fifo::new(100);
    // Key 0 enters small and is never hit: evicted to the ghost.
    admit(&mut s3, 0, 1);
    for k in 1..=110u64 {
        admit(&mut s3, k, 1);
    }
    assert!(!s3.contains(&0));
    admit(&mut s3, 0, 1);
    assert!(s3.in_main(&0), "a ghost hit must be admitted to main");
    // A never-seen key goes to small.
    admit(&mut s3, 9_999, 1);
    assert!(!s3.in_main(&9_999));
}

#[test]
fn accounting_of_remove_set_pinned_and_replace() {
    fn check<P: Policy<u64>>(
        mut p: P,
        set_pinned: impl Fn(&mut P, u64, bool),
        pinned_bytes: impl Fn(&P) -> u64,
    ) {
        p.insert(1, 100, false);
        p.insert(2, 50, true);
        assert_eq!((p.used(), pinned_bytes(&p), p.len()), (150, 50, 2));
        // Replace: new weight and pin, still one entry.
        p.insert(1, 30, true);
        assert_eq!((p.used(), pinned_bytes(&p), p.len()), (80, 80, 2));
        p.insert(2, 70, false);
        assert_eq!((p.used(), pinned_bytes(&p)), (100, 30));
        set_pinned(&mut p, 2, true);
        set_pinned(&mut p, 2, true); // idempotent
        assert_eq!(pinned_bytes(&p), 100);
        set_pinned(&mut p, 1, false);
        assert_eq!(pinned_bytes(&p), 70);
        set_pinned(&mut p, 42, true); // absent: no-op
        assert_eq!(pinned_bytes(&p), 70);
        assert!(p.remove(&2));
        assert!(!p.remove(&2));
        assert_eq!((p.used(), pinned_bytes(&p), p.len()), (30, 0, 1));
        assert!(p.remove(&1));
        assert_eq!((p.used(), pinned_bytes(&p), p.len()), (0, 0, 0));
        assert!(p.is_empty());
    }
    check(
        S3Fifo::new(1_000),
        |p, k, b| p.set_pinned(&k, b),
        S3Fifo::pinned_bytes,
    );
    check(
        Lru::new(1_000),
        |p, k, b| p.set_pinned(&k, b),
        Lru::pinned_bytes,
    );
}

/// Random operations against a reference map of key -> (weight, pinned).
#[test]
fn randomized_model() {
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let capacity = rng.gen_range(50..5_000);
        let mut s3 = S3Fifo::new(capacity);
        let mut lru = Lru::new(capacity);
        let mut model_s3: HashMap<u64, (u64, bool)> = HashMap::new();
        let mut model_lru: HashMap<u64, (u64, bool)> = HashMap::new();
        for _ in 0..5_000 {
            let key = rng.gen_range(0..300u64);
            let op = rng.gen_range(0..100);
            let weight = rng.gen_range(0..200);
            let pinned = rng.gen_bool(0.1);
            macro_rules! step {
                ($p:ident, $model:ident) => {
                    match op {
                        0..=39 => $p.access(&key),
                        40..=69 => match $p.make_room(weight) {
                            Ok(victims) => {
                                for v in victims {
                                    let (_, was_pinned) =
                                        $model.remove(&v).expect("victim was present");
                                    assert!(!was_pinned, "pinned victim");
                                }
                                assert!($p.used() + weight <= capacity);
                                $p.insert(key, weight, pinned);
                                $model.insert(key, (weight, pinned));
                            }
                            Err(e) => {
                                let used: u64 = $model.values().map(|v| v.0).sum();
                                let pin: u64 = $model.values().filter(|v| v.1).map(|v| v.0).sum();
                                assert_eq!(e.needed, (used + weight).saturating_sub(capacity));
                                assert_eq!(e.evictable, used - pin);
                                assert!(e.needed > e.evictable);
                            }
                        },
                        70..=79 => {
                            // insert without make_room: may go over capacity
                            $p.insert(key, weight, pinned);
                            $model.insert(key, (weight, pinned));
                        }
                        80..=89 => {
                            assert_eq!($p.remove(&key), $model.remove(&key).is_some());
                        }
                        _ => {
                            $p.set_pinned(&key, pinned);
                            if let Some(e) = $model.get_mut(&key) {
                                e.1 = pinned;
                            }
                        }
                    }
                    let used: u64 = $model.values().map(|v| v.0).sum();
                    let pin: u64 = $model.values().filter(|v| v.1).map(|v| v.0).sum();
                    assert_eq!($p.used(), used);
                    assert_eq!($p.pinned_bytes(), pin);
                    assert_eq!($p.len(), $model.len());
                    assert_eq!($p.contains(&key), $model.contains_key(&key));
                };
            }
            step!(s3, model_s3);
            step!(lru, model_lru);
        }
        s3.check_invariants();
        lru.check_invariants();
        for k in model_s3.keys() {
            assert!(s3.contains(k));
        }
        for k in model_lru.keys() {
            assert!(lru.contains(k));
        }
    }
}

/// Values ride with their keys: replaced by an insert of the same key, handed back by
/// `take` and by eviction, looked up by a borrowed key; and the table finds every key
/// after many inserts, removals and evictions (its entries are only slab indices).
#[test]
fn values_follow_their_keys() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut s3: S3Fifo<String, u64> = S3Fifo::with_capacity(50_000, 16);
    let mut model: HashMap<String, u64> = HashMap::new();
    for round in 0..20_000u64 {
        let key = format!("key-{}", rng.gen_range(0..3_000u32));
        match rng.gen_range(0..10) {
            0 => assert_eq!(s3.take(key.as_str()), model.remove(&key)),
            1..=3 if model.contains_key(&key) => {
                s3.insert_value(key.clone(), round, 10, false);
                model.insert(key, round);
            }
            _ => {
                if !model.contains_key(&key) {
                    for (k, v) in s3.make_room_entries(100).unwrap() {
                        assert_eq!(model.remove(&k), Some(v), "evicted {k} with its value");
                    }
                    s3.insert_value(key.clone(), round, 100, false);
                    model.insert(key, round);
                } else {
                    s3.access(key.as_str());
                }
            }
        }
        assert!(s3.used() <= 50_000 + 100);
    }
    assert_eq!(s3.len(), model.len());
    for (k, v) in &model {
        assert_eq!(s3.get(k.as_str()), Some(v));
        assert_eq!(s3.get_key_value(k.as_str()).map(|(k, _)| k), Some(k));
    }
    assert_eq!(s3.iter().count(), model.len());
    s3.shrink_to_fit();
    for (k, v) in &model {
        assert_eq!(s3.get_mut(k.as_str()).copied(), Some(*v));
    }
    s3.check_invariants();
}
