//! The latency histogram of statistics: log-spaced buckets, four per doubling (each
//! about 19 % wide), from 10 µs to about 3 minutes. A percentile is read as the upper
//! bound of the bucket that holds it, so it is never under the true value and at most
//! 19 % over it — the precision the dashboard shows (two significant digits).
//!
//! Buckets are stored sparse (index → count) in spool files and in the database.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Buckets per doubling.
const PER_DOUBLING: f64 = 4.0;
/// Upper bound of bucket 0, µs: everything up to 10 µs.
const FIRST_US: f64 = 10.0;
/// Number of buckets; the last holds everything slower than the one before it.
pub const BUCKETS: u16 = 96;

/// The bucket of a duration in µs.
pub fn bucket(us: u64) -> u16 {
    if (us as f64) <= FIRST_US {
        return 0;
    }
    let i = ((us as f64 / FIRST_US).log2() * PER_DOUBLING).ceil();
    (i as u16).min(BUCKETS - 1)
}

/// Upper bound of bucket `i`, µs.
pub fn upper_us(i: u16) -> f64 {
    FIRST_US * 2f64.powf(i as f64 / PER_DOUBLING)
}

/// A sparse histogram: bucket index → count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hist(pub BTreeMap<u16, u64>);

impl Hist {
    /// Adds `n` observations of `us` microseconds.
    pub fn add(&mut self, us: u64, n: u64) {
        *self.0.entry(bucket(us)).or_insert(0) += n;
    }

    /// Adds another histogram.
    pub fn merge(&mut self, o: &Hist) {
        for (i, n) in &o.0 {
            *self.0.entry(*i).or_insert(0) += n;
        }
    }

    /// Observations.
    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The `q`-quantile (0 < q <= 1) in ms: the upper bound of the bucket holding the
    /// observation of rank ⌈q·n⌉. 0 with no observation.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in &self.0 {
            seen += c;
            if seen >= rank {
                return upper_us(*i) / 1000.0;
            }
        }
        self.0
            .keys()
            .last()
            .map(|i| upper_us(*i) / 1000.0)
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_bound_their_values() {
        for us in [1u64, 10, 11, 99, 100, 1_000, 12_345, 1_000_000, 60_000_000] {
            let b = bucket(us);
            assert!(upper_us(b) >= us as f64, "{us} µs over its bucket's bound");
            if b > 0 {
                assert!(upper_us(b - 1) < us as f64, "{us} µs belongs lower");
            }
            assert!(
                upper_us(b) <= us as f64 * 1.19 + 10.0,
                "{us}: bucket too wide"
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_read_the_bucket_of_the_rank() {
        let mut h = Hist::default();
        h.add(10_000, 99); // 10 ms
        h.add(100_000, 1); // 100 ms
        let p99 = h.quantile_ms(0.99);
        assert!((10.0..=11.9).contains(&p99), "{p99}");
        let max = h.quantile_ms(1.0);
        assert!((100.0..=119.0).contains(&max), "{max}");
        assert_eq!(Hist::default().quantile_ms(0.99), 0.0);
    }
}
