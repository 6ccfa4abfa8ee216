//! A tiny, seedable pseudo-random generator (SplitMix64) for randomised tests.
//!
//! Randomised tests take their seed from `NEXUS_TEST_SEED` when set and from
//! the clock otherwise, and print it, so that a failing run can be replayed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// SplitMix64: small, fast, and good enough to pick sleep times and sizes.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator seeded from `NEXUS_TEST_SEED` or the clock; prints the seed
    /// with the test's name.
    pub fn from_env(test: &str) -> Rng {
        let seed = match std::env::var("NEXUS_TEST_SEED") {
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("NEXUS_TEST_SEED={s:?} is not a u64")),
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        };
        eprintln!("{test}: random seed {seed} (set NEXUS_TEST_SEED={seed} to replay)");
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "Rng::between({lo}, {hi})");
        lo + self.below(hi - lo + 1)
    }

    /// A duration uniform in `lo..=hi`, at microsecond resolution.
    pub fn duration_between(&mut self, lo: Duration, hi: Duration) -> Duration {
        Duration::from_micros(self.between(lo.as_micros() as u64, hi.as_micros() as u64))
    }
}
