//! Key choice: uniform, or Zipf over ranks (rank 0 is the hottest key).

/// A Zipf distribution over `n` ranks with exponent `s`: P(rank k) ∝ 1 / (k + 1)^s.
/// Sampling is a binary search in the precomputed CDF (n f64s, shared read-only by threads).
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        assert!(n > 0, "Zipf over zero keys");
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 0..n {
            acc += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    /// Maps a uniform `u` in [0, 1) to a rank.
    pub fn sample(&self, u: f64) -> usize {
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// A small fast generator for choices (not for bodies): splitmix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        crate::content::splitmix64(&mut self.0)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(n: usize, s: f64, draws: usize) -> Vec<usize> {
        let z = Zipf::new(n, s);
        let mut rng = Rng::new(42);
        let mut h = vec![0; n];
        for _ in 0..draws {
            h[z.sample(rng.f64())] += 1;
        }
        h
    }

    #[test]
    fn zipf_skew_matches_theory() {
        let (n, draws) = (1000, 400_000);
        let h = histogram(n, 1.0, draws);
        let harmonic: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
        // P(rank 0) = 1/H_1000 ≈ 0.1336; P(rank 1) is half of it.
        let p0 = h[0] as f64 / draws as f64;
        let p1 = h[1] as f64 / draws as f64;
        assert!((p0 - 1.0 / harmonic).abs() < 0.005, "p0 = {p0}");
        assert!((p1 / p0 - 0.5).abs() < 0.03, "p1/p0 = {}", p1 / p0);
        // The hottest 1% of keys take ~39% of requests (H_10 / H_1000).
        let top10: usize = h[..10].iter().sum();
        let expect = (1..=10).map(|k| 1.0 / k as f64).sum::<f64>() / harmonic;
        assert!((top10 as f64 / draws as f64 - expect).abs() < 0.01);
        // Every rank stays reachable.
        assert!(h[n - 1] > 0);
    }

    #[test]
    fn zipf_exponent_controls_skew_and_zero_is_uniform() {
        let flat = histogram(100, 0.0, 100_000);
        assert!(flat.iter().all(|&c| (800..1200).contains(&c)), "{flat:?}");
        let steep = histogram(100, 1.5, 100_000);
        let mild = histogram(100, 0.5, 100_000);
        assert!(steep[0] > 3 * mild[0]);
    }

    #[test]
    fn rng_below_is_in_range() {
        let mut r = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[r.below(7)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
