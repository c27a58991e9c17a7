//! Criterion micro-benchmarks of the shard engine: key hashing (owner-shard choice),
//! index lookup of a memory-tier hit, and store put/get of 4 KiB objects on the
//! plain-syscall device (deterministic keys; no RNG involved).

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use nearcache_shards::{DeviceKind, Lookup, Shard, ShardConfig, WriteAttrs};

fn key(i: u64) -> String {
    // ULID-shaped keys, as the native API uses.
    format!("01HF7YAT00{:016X}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn config(dir: &std::path::Path, memory_capacity: u64) -> ShardConfig {
    ShardConfig {
        shard_id: 0,
        dir: dir.to_path_buf(),
        memory_capacity,
        memory_object_max: 1 << 20,
        disk_capacity: 4 << 30,
        tombstone_ttl: Duration::from_secs(3600),
        device: DeviceKind::Syscall,
        lmdb_map_size: 1 << 30,
        journal_retain: 1_000_000,
        inline_object_max: nearcache_shards::defaults::INLINE_OBJECT_MAX,
        meta_cache_objects: nearcache_shards::defaults::META_CACHE_OBJECTS,
    }
}

fn hashing(c: &mut Criterion) {
    let keys: Vec<String> = (0..1024).map(key).collect();
    let mut i = 0;
    c.bench_function("owner_shard_xxh3_26B_key", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            xxhash_rust::xxh3::xxh3_64(keys[i].as_bytes()) % 2
        })
    });
}

/// A shard holding `n` 4 KiB objects (memory tier of the given size).
fn filled_shard(rt: &mut Rt, dir: &std::path::Path, memory_capacity: u64, n: u64) -> Rc<Shard> {
    let shard = Rc::new(
        rt.block_on(Shard::open(config(dir, memory_capacity)))
            .unwrap()
            .0,
    );
    let body = Bytes::from(vec![7u8; 4096]);
    rt.block_on(async {
        for i in 0..n {
            let mut w = shard.begin_write(&key(i), Some(4096)).await.unwrap();
            w.write(body.clone()).await.unwrap();
            w.finish(WriteAttrs::default()).await.unwrap();
        }
    });
    shard
}

type Rt = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

fn store(c: &mut Criterion) {
    let mut rt: Rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    let n = 2_000u64;
    let body = Bytes::from(vec![7u8; 4096]);
    let mem_dir = tempfile::tempdir().unwrap();
    let shard = filled_shard(&mut rt, mem_dir.path(), 256 << 20, n);
    let mut i = 0;
    c.bench_function("index_lookup_memory_hit_4KiB", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            match shard.lookup(&key(i)) {
                Lookup::Hit { body: Some(b), .. } => b.len(),
                other => panic!("expected a memory hit, got {other:?}"),
            }
        })
    });
    rt.block_on(shard.close()).unwrap();
    // No memory tier: every read goes to disk and checks its block checksum.
    let disk_dir = tempfile::tempdir().unwrap();
    let shard = filled_shard(&mut rt, disk_dir.path(), 0, n);
    let mut j = n;
    let mut group = c.benchmark_group("store");
    group.sample_size(20);
    group.bench_function("put_4KiB_durable", |b| {
        b.iter_batched(
            || {
                j += 1;
                key(j)
            },
            |k| {
                rt.block_on(async {
                    let mut w = shard.begin_write(&k, Some(4096)).await.unwrap();
                    w.write(body.clone()).await.unwrap();
                    w.finish(WriteAttrs::default()).await.unwrap();
                })
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("get_4KiB_from_disk_verified", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            let Lookup::Hit { meta, .. } = shard.peek(&key(i)) else {
                panic!("missing")
            };
            rt.block_on(async {
                let mut r = shard.open_reader(&meta, 0..meta.size).await.unwrap();
                let mut got = 0;
                while let Some(c) = r.next_chunk().await {
                    got += c.unwrap().len();
                }
                got
            })
        })
    });
    group.finish();
    rt.block_on(shard.close()).unwrap();
}

criterion_group!(benches, hashing, store);
criterion_main!(benches);
