//! Hit ratios of S3-FIFO vs LRU on synthetic workloads, as a markdown table.
//!
//! ```text
//! cargo run --release -p nearcache-bench --bin eviction-hit-ratio -- \
//!     [--requests N] [--keys N] [--seed N] [--out PATH]
//! ```
//!
//! Each workload's request trace is generated once from the seed and replayed
//! against both policies at each cache size, so the comparison is paired and the
//! output is identical on every run with the same flags. The cache is driven the
//! way the shard drives it: a hit calls `access`; a miss calls `make_room` then
//! `insert`. Cold-start misses are counted (they are the same for both policies).
#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    reason = "a tool: no shard threads here, blocking file calls are fine"
)]

use std::fmt::Write as _;
use std::process::ExitCode;

use nearcache_bench::{lognormal_sizes, today_utc, ZipfKeys};
use nearcache_shards::eviction::{Lru, Policy, S3Fifo};
use rand::rngs::StdRng;
use rand::SeedableRng;

const USAGE: &str = "usage: eviction-hit-ratio [--requests N] [--keys N] [--seed N] [--out PATH]";

/// Cache sizes, in percent of the working set's bytes.
const CACHE_PERCENTS: [u64; 4] = [1, 5, 10, 20];

struct Args {
    requests: u64,
    keys: u64,
    seed: u64,
    out: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        requests: 2_000_000,
        keys: 100_000,
        seed: 42,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("parsing {flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--requests" => args.requests = number()?,
            "--keys" => args.keys = number()?,
            "--seed" => args.seed = number()?,
            "--out" => args.out = Some(value),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if args.keys == 0 || args.requests == 0 {
        return Err("--keys and --requests must be positive".to_owned());
    }
    Ok(args)
}

/// One synthetic workload: a key stream plus the weight of every key.
struct Workload {
    name: String,
    /// Key ids in request order. Ids `>= keys` are scan keys, each requested once.
    trace: Vec<u64>,
    /// Weight of key id `k < keys`; scan keys weigh `scan_weight`.
    weights: Vec<u64>,
    scan_weight: u64,
    /// Total weight of the `keys` Zipf keys: what cache sizes are a percentage of.
    working_set: u64,
}

impl Workload {
    fn weight(&self, key: u64) -> u64 {
        self.weights
            .get(key as usize)
            .copied()
            .unwrap_or(self.scan_weight)
    }
}

#[derive(Clone, Copy)]
enum Sizes {
    /// Every object weighs 1: object and byte hit ratio coincide.
    Equal,
    /// Log-normal, median 64 KiB, sigma 1.5, clamped to 512 B ..= 64 MiB.
    LogNormal,
}

/// `scan`: after every `2 * keys` Zipf requests, `keys / 5` requests for fresh keys
/// that are never requested again (a backup job or a listing crawler passing by).
fn build(args: &Args, s: f64, sizes: Sizes, scan: bool) -> Workload {
    // One RNG stream per workload, derived from the seed and the workload's shape,
    // so adding a workload does not change the others' traces.
    let salt = (s * 1000.0) as u64
        ^ (matches!(sizes, Sizes::LogNormal) as u64) << 20
        ^ (scan as u64) << 21;
    let mut rng = StdRng::seed_from_u64(args.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let weights = match sizes {
        Sizes::Equal => vec![1; args.keys as usize],
        Sizes::LogNormal => lognormal_sizes(&mut rng, args.keys, 64 << 10, 1.5, 512, 64 << 20),
    };
    let zipf = ZipfKeys::new(args.keys, s);
    let scan_every = 2 * args.keys;
    let scan_len = (args.keys / 5).max(1);
    let mut trace = Vec::with_capacity(args.requests as usize);
    let mut next_scan_key = args.keys;
    let mut since_scan = 0;
    while (trace.len() as u64) < args.requests {
        if scan && since_scan == scan_every {
            for _ in 0..scan_len.min(args.requests - trace.len() as u64) {
                trace.push(next_scan_key);
                next_scan_key += 1;
            }
            since_scan = 0;
        } else {
            trace.push(zipf.sample(&mut rng));
            since_scan += 1;
        }
    }
    let working_set = weights.iter().sum();
    let scan_weight = working_set / args.keys; // the mean, so scans weigh as much as they would
    let name = format!(
        "zipf {s:.1}{}{}",
        match sizes {
            Sizes::Equal => "",
            Sizes::LogNormal => ", sized",
        },
        if scan { " + scan" } else { "" }
    );
    Workload {
        name,
        trace,
        weights,
        scan_weight,
        working_set,
    }
}

#[derive(Default, Clone, Copy)]
struct Ratios {
    objects: f64,
    bytes: f64,
}

fn replay<P: Policy<u64>>(mut cache: P, w: &Workload) -> Ratios {
    let (mut hits, mut hit_bytes, mut total_bytes) = (0u64, 0u64, 0u64);
    for &key in &w.trace {
        let weight = w.weight(key);
        total_bytes += weight;
        if cache.contains(&key) {
            cache.access(&key);
            hits += 1;
            hit_bytes += weight;
        } else if cache.make_room(weight).is_ok() {
            // Err only for an object bigger than the whole cache: not admitted.
            cache.insert(key, weight, false);
        }
    }
    Ratios {
        objects: hits as f64 / w.trace.len() as f64,
        bytes: hit_bytes as f64 / total_bytes as f64,
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let shapes = [
        (0.8, Sizes::Equal, false),
        (1.0, Sizes::Equal, false),
        (1.2, Sizes::Equal, false),
        (1.0, Sizes::LogNormal, false),
        (0.8, Sizes::Equal, true),
        (1.0, Sizes::Equal, true),
        (1.0, Sizes::LogNormal, true),
    ];

    let mut table = String::new();
    let mut cmd = "cargo run --release -p nearcache-bench --bin eviction-hit-ratio --".to_owned();
    write!(
        cmd,
        " --requests {} --keys {} --seed {}",
        args.requests, args.keys, args.seed
    )
    .unwrap();
    if let Some(out) = &args.out {
        write!(cmd, " --out {out}").unwrap();
    }
    writeln!(
        table,
        "<!-- Generated {} by `{cmd}`. Deterministic: all inputs come from the seeded RNG, \
         so the same flags give the same table. -->\n",
        today_utc()
    )
    .unwrap();
    writeln!(table, "# Eviction hit ratios: S3-FIFO vs LRU\n").unwrap();
    writeln!(
        table,
        "{} requests over {} keys, seed {}. Cache size is a percentage of the working set's \
         bytes (the Zipf keys; scan keys excluded). \"sized\": log-normal object sizes \
         (median 64 KiB, sigma 1.5, 512 B..64 MiB), otherwise all objects weigh the same. \
         \"+ scan\": after every {} Zipf requests, {} requests for fresh keys never seen \
         again. Cold-start misses included.\n",
        args.requests,
        args.keys,
        args.seed,
        2 * args.keys,
        (args.keys / 5).max(1)
    )
    .unwrap();
    writeln!(
        table,
        "| workload | cache | S3-FIFO obj | LRU obj | Δ obj | S3-FIFO byte | LRU byte | Δ byte |"
    )
    .unwrap();
    writeln!(table, "|---|---:|---:|---:|---:|---:|---:|---:|").unwrap();

    for (s, sizes, scan) in shapes {
        let w = build(&args, s, sizes, scan);
        for pct in CACHE_PERCENTS {
            let capacity = (w.working_set * pct / 100).max(1);
            let s3 = replay(S3Fifo::new(capacity), &w);
            let lru = replay(Lru::new(capacity), &w);
            let row = format!(
                "| {} | {pct}% | {:.4} | {:.4} | {:+.4} | {:.4} | {:.4} | {:+.4} |",
                w.name,
                s3.objects,
                lru.objects,
                s3.objects - lru.objects,
                s3.bytes,
                lru.bytes,
                s3.bytes - lru.bytes
            );
            eprintln!("{row}");
            writeln!(table, "{row}").unwrap();
        }
    }

    print!("{table}");
    if let Some(out) = &args.out {
        if let Err(e) = std::fs::write(out, &table) {
            eprintln!("writing {out}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
