//! # nearcache-bench: benchmarks of the shard engine
//!
//! Goals:
//! - micro-benchmarks of the shard engine's building blocks, starting with eviction:
//!   criterion benches (`benches/`) for per-operation cost, and simulation binaries
//!   (`src/bin/`) for quality numbers such as hit ratios;
//! - reproducible: every random input comes from a seeded RNG, so a result file in
//!   `results/` can be regenerated bit for bit with the command in its header;
//! - cheap enough for a 2-core machine: the defaults finish in well under a minute.
//!
//! Non-goals (for now):
//! - an engine bench binary driving whole shards with byte-size arguments, and a
//!   script comparing runs side by side; both come later, on top of this crate;
//! - load tests of the server over HTTP (those live in `loadtest/`);
//! - absolute numbers across machines: compare policies or commits on one machine.
//!
//! The library part holds what the binaries and benches share: workload generators.
#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    reason = "a tool: no shard threads here, blocking file calls are fine"
)]

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, LogNormal, Zipf};

/// A Zipf-distributed stream of key ids in `0..keys`; id 0 is the most popular.
pub struct ZipfKeys {
    dist: Zipf<f64>,
}

impl ZipfKeys {
    /// `s` is the skew exponent (0.8 = mild, 1.2 = steep).
    pub fn new(keys: u64, s: f64) -> Self {
        Self {
            dist: Zipf::new(keys, s).expect("keys >= 1 and s >= 0"),
        }
    }

    pub fn sample(&self, rng: &mut StdRng) -> u64 {
        // `Zipf` yields ranks 1..=n as floats.
        self.dist.sample(rng) as u64 - 1
    }
}

/// Object sizes for the sized workloads: log-normal around a median, clamped, as
/// object stores usually look (many small objects, a long tail of large ones).
pub fn lognormal_sizes(
    rng: &mut StdRng,
    count: u64,
    median: u64,
    sigma: f64,
    min: u64,
    max: u64,
) -> Vec<u64> {
    let dist = LogNormal::new((median as f64).ln(), sigma).expect("sigma is finite and >= 0");
    (0..count)
        .map(|_| (dist.sample(rng) as u64).clamp(min, max))
        .collect()
}

/// Uniform pick in `0..n`, for benches that want no skew.
pub fn uniform_keys(rng: &mut StdRng, n: u64, count: usize) -> Vec<u64> {
    (0..count).map(|_| rng.gen_range(0..n)).collect()
}

/// Today's date (UTC) as `YYYY-MM-DD`, for result headers.
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date(secs / 86_400)
}

/// Days since 1970-01-01 to `YYYY-MM-DD` (Howard Hinnant's days-to-civil algorithm),
/// so result headers need no date crate.
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_780), "2026-11-23");
    }

    #[test]
    fn zipf_is_in_range_and_skewed() {
        let mut rng = StdRng::seed_from_u64(1);
        let zipf = ZipfKeys::new(1_000, 1.0);
        let samples: Vec<u64> = (0..10_000).map(|_| zipf.sample(&mut rng)).collect();
        assert!(samples.iter().all(|&k| k < 1_000));
        let top = samples.iter().filter(|&&k| k == 0).count();
        let mid = samples.iter().filter(|&&k| k == 500).count();
        assert!(top > 10 * mid.max(1), "rank 0: {top}, rank 500: {mid}");
    }
}
