//! Seeded random numbers and a Zipf key distribution, shared by the store's
//! eviction figures and the `rcache bench` load generator. Deterministic for
//! a seed, so a trace can be replayed.

/// xorshift64*: small, fast, and good enough for load generation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // A zero state would stay zero.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Zipf over `0..n`: rank `k` is drawn with probability proportional to
/// `1 / (k + 1)^alpha`. Sampling inverts a precomputed CDF.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64, alpha: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 0..n {
            total += 1.0 / ((k + 1) as f64).powf(alpha);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        self.cdf
            .partition_point(|&p| p < u)
            .min(self.cdf.len().saturating_sub(1)) as u64
    }
}

/// A seed for a randomised unit test: `RCACHE_SEED` when set, else
/// `default`; printed so a failure can be replayed.
#[cfg(test)]
pub(crate) fn test_seed(what: &str, default: u64) -> u64 {
    let seed = std::env::var("RCACHE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("{what} seed {seed} (RCACHE_SEED={seed} replays it)");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_deterministic() {
        let z = Zipf::new(1000, 1.0);
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        let mut first = 0;
        for _ in 0..10_000 {
            let x = z.sample(&mut a);
            assert_eq!(x, z.sample(&mut b));
            assert!(x < 1000);
            if x == 0 {
                first += 1;
            }
        }
        // P(rank 0) = 1 / H(1000) ≈ 0.134.
        assert!((1_100..1_600).contains(&first), "{first}");
    }
}
