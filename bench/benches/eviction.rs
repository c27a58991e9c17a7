//! Per-operation cost of S3-FIFO vs LRU at 100k entries: `access` (a hit), `insert`
//! (a new key into a cache with room) and `make_room` (evicting one entry).
//!
//! Every entry weighs 1 and the cache holds 100k of them. Hits follow a Zipf(1.0)
//! stream from a seeded RNG, which also warms S3-FIFO's counters so that `make_room`
//! meets the mix of promotions and reinsertions it sees in steady state. `insert`
//! and `make_room` are timed apart (criterion's `iter_custom`): the other half of
//! each pair runs untimed in batches, keeping the cache at 100k entries.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nearcache_bench::ZipfKeys;
use nearcache_shards::eviction::{Lru, Policy, S3Fifo};
use rand::rngs::StdRng;
use rand::SeedableRng;

const ENTRIES: u64 = 100_000;
/// Untimed work between timed batches is done this many operations at a time.
const BATCH: u64 = 1_000;

/// A full cache of `ENTRIES` unit entries, warmed with Zipf hits; returns the next
/// unused key.
fn warmed<P: Policy<u64>>(mut p: P) -> (P, u64) {
    for k in 0..ENTRIES {
        p.insert(k, 1, false);
    }
    let mut rng = StdRng::seed_from_u64(7);
    let zipf = ZipfKeys::new(ENTRIES, 1.0);
    for _ in 0..ENTRIES {
        p.access(&zipf.sample(&mut rng));
    }
    (p, ENTRIES)
}

fn hits(count: usize) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(11);
    let zipf = ZipfKeys::new(ENTRIES, 1.0);
    (0..count).map(|_| zipf.sample(&mut rng)).collect()
}

fn bench_policy<P: Policy<u64>>(c: &mut Criterion, name: &str, new: impl Fn() -> P) {
    let mut group = c.benchmark_group("eviction");
    group.throughput(Throughput::Elements(1));

    let stream = hits(1 << 20);
    let (mut p, _) = warmed(new());
    let mut i = 0;
    group.bench_function(BenchmarkId::new("access", name), |b| {
        b.iter(|| {
            p.access(black_box(&stream[i & (stream.len() - 1)]));
            i += 1;
        })
    });

    // insert: make room for a batch untimed, then time the batch's inserts.
    let (mut p, mut next) = warmed(new());
    group.bench_function(BenchmarkId::new("insert", name), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH);
                black_box(p.make_room(n).expect("nothing pinned"));
                let start = Instant::now();
                for _ in 0..n {
                    p.insert(black_box(next), 1, false);
                    next += 1;
                }
                elapsed += start.elapsed();
                left -= n;
            }
            elapsed
        })
    });

    // make_room: insert a batch over capacity untimed, then time evicting it one
    // entry per call (the shard's pattern: one make_room per incoming object).
    let (mut p, mut next) = warmed(new());
    group.bench_function(BenchmarkId::new("make_room", name), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH);
                for _ in 0..n {
                    p.insert(next, 1, false);
                    next += 1;
                }
                // used = capacity + n; each make_room(0) evicts one entry.
                let start = Instant::now();
                for _ in 0..n {
                    black_box(p.make_room(black_box(0)).expect("nothing pinned"));
                }
                elapsed += start.elapsed();
                left -= n;
            }
            elapsed
        })
    });
    group.finish();
}

fn eviction(c: &mut Criterion) {
    bench_policy(c, "s3fifo", || S3Fifo::new(ENTRIES));
    bench_policy(c, "lru", || Lru::new(ENTRIES));
}

criterion_group!(benches, eviction);
criterion_main!(benches);
