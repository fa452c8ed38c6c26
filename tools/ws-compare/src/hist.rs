//! A log-linear latency histogram (about 1.6 % resolution) that child processes send
//! to the parent and the parent merges.

use std::collections::BTreeMap;

/// Values below this are exact (microseconds).
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above `LINEAR`.
const SUB_BITS: u32 = 6;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// Bucket index → count (sparse).
    buckets: BTreeMap<u32, u64>,
    count: u64,
    max: u64,
}

fn index(v: u64) -> u32 {
    if v < LINEAR {
        return v as u32;
    }
    let exp = 63 - v.leading_zeros(); // >= 7
    let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    LINEAR as u32 + (exp - 7) * (1 << SUB_BITS) + sub as u32
}

/// The lowest value of bucket `i`.
fn value(i: u32) -> u64 {
    if u64::from(i) < LINEAR {
        return u64::from(i);
    }
    let rel = i - LINEAR as u32;
    let exp = rel / (1 << SUB_BITS) + 7;
    let sub = u64::from(rel % (1 << SUB_BITS));
    (1u64 << exp) | (sub << (exp - SUB_BITS))
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        *self.buckets.entry(index(micros)).or_default() += 1;
        self.count += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (i, c) in &other.buckets {
            *self.buckets.entry(*i).or_default() += c;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1) in microseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, c) in &self.buckets {
            seen += c;
            if seen >= rank {
                return value(*i).min(self.max);
            }
        }
        self.max
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_resolution() {
        for v in [0u64, 1, 127, 128, 129, 1000, 12_345, 1_000_000, 987_654_321] {
            let lo = value(index(v));
            assert!(lo <= v, "{v}: {lo}");
            assert!((v - lo) as f64 <= v as f64 / 60.0 + 1.0, "{v}: {lo}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.max(), 100);
        let mut m = Histogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count(), 200);
        assert_eq!(m.quantile(0.5), 50);
    }
}
