//! Latency histograms that merge across processes, and medians of repeated runs.
//!
//! Values are microseconds in log-linear buckets (64 per power of two, so a reported
//! percentile is within about 1.6% of the true value); a histogram is a few hundred
//! numbers however many samples it holds, so children ship theirs to the parent as JSON.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

/// A mergeable histogram of microsecond values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Histogram {
    counts: Vec<u64>,
    max: u64,
    total: u64,
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() - SUB_BITS;
    let mantissa = (v >> exp) - SUB;
    ((exp as u64 + 1) * SUB + mantissa) as usize
}

/// The highest value that falls in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let exp = b / SUB - 1;
    let mantissa = b % SUB + SUB;
    ((mantissa + 1) << exp) - 1
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, micros: u64) {
        let b = bucket_of(micros);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Largest sample.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), rounded up to its bucket's upper bound.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(b).min(self.max);
            }
        }
        self.max
    }
}

/// Median of a set of figures (the middle one; mean of the two middles when even).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median [min..max]` of a set of figures, formatted with `decimals`.
pub fn spread(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.len() < 2 {
        return format!("{:.*}", decimals, median(values));
    }
    format!(
        "{:.*} [{:.*}..{:.*}]",
        decimals,
        median(values),
        decimals,
        min,
        decimals,
        max
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut last = 0;
        for v in [0, 1, 63, 64, 65, 127, 128, 1000, 1_000_000, u32::MAX as u64] {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            assert!(bucket_high(b) >= v, "{v}");
            // Within 1/64 of the value.
            assert!(bucket_high(b) - v <= v / 64 + 1, "{v}");
            last = b;
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::default();
        for v in 1..=1000 {
            a.record(v);
        }
        let mut b = Histogram::default();
        b.record(5000);
        a.merge(&b);
        assert_eq!(a.total, 1001);
        assert_eq!(a.max(), 5000);
        let p50 = a.quantile(0.5);
        assert!((495..=510).contains(&p50), "{p50}");
        assert_eq!(a.quantile(1.0), 5000);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread(&[1.0, 5.0, 2.0], 1), "2.0 [1.0..5.0]");
    }
}
