//! Replication lag: how long after its origin wrote an entry this site applied it
//! (local wall clock minus the entry's HLC wall time; millisecond resolution, and
//! clock skew between sites shows up in it).

use std::sync::atomic::{AtomicU64, Ordering};

/// One bucket per millisecond up to this, then the coarse buckets.
const FINE_MS_MAX: u64 = 100;
const COARSE_MS: [u64; 6] = [200, 500, 1_000, 2_000, 5_000, 10_000];

/// A fixed-bucket histogram of lags in milliseconds, lock-free.
#[derive(Debug)]
pub struct LagHistogram {
    fine: [AtomicU64; FINE_MS_MAX as usize + 1],
    coarse: [AtomicU64; COARSE_MS.len() + 1],
    max_ms: AtomicU64,
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            fine: std::array::from_fn(|_| AtomicU64::new(0)),
            coarse: std::array::from_fn(|_| AtomicU64::new(0)),
            max_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
            sum_ms: AtomicU64::new(0),
        }
    }
}

impl LagHistogram {
    pub fn record(&self, lag_ms: u64) {
        if lag_ms <= FINE_MS_MAX {
            self.fine[lag_ms as usize].fetch_add(1, Ordering::Relaxed);
        } else {
            let i = COARSE_MS.iter().position(|&b| lag_ms <= b).unwrap_or(COARSE_MS.len());
            self.coarse[i].fetch_add(1, Ordering::Relaxed);
        }
        self.max_ms.fetch_max(lag_ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(lag_ms, Ordering::Relaxed);
    }

    /// Forget every sample (e.g. after a warm-up).
    pub fn reset(&self) {
        for c in self.fine.iter().chain(self.coarse.iter()) {
            c.store(0, Ordering::Relaxed);
        }
        for a in [&self.max_ms, &self.count, &self.sum_ms] {
            a.store(0, Ordering::Relaxed);
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_ms(&self) -> u64 {
        self.sum_ms.load(Ordering::Relaxed)
    }

    pub fn max_ms(&self) -> u64 {
        self.max_ms.load(Ordering::Relaxed)
    }

    /// `(upper bound in ms, cumulative count)` per bucket; the last bound is `u64::MAX`.
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut acc = 0;
        let mut out = Vec::with_capacity(self.fine.len() + self.coarse.len());
        for (ms, c) in self.fine.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            out.push((ms as u64, acc));
        }
        for (i, c) in self.coarse.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            out.push((COARSE_MS.get(i).copied().unwrap_or(u64::MAX), acc));
        }
        out
    }

    /// The smallest bucket bound at or below which `q` (0..=1) of the samples fall.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let target = ((q * count as f64).ceil() as u64).clamp(1, count);
        let bound = self.cumulative().into_iter().find(|&(_, c)| c >= target).map(|(b, _)| b)?;
        Some(bound.min(self.max_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let h = LagHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for lag in 1..=100 {
            h.record(lag);
        }
        h.record(700);
        assert_eq!(h.count(), 101);
        assert_eq!(h.quantile_ms(0.5), Some(51));
        assert_eq!(h.quantile_ms(0.99), Some(100));
        assert_eq!(h.quantile_ms(1.0), Some(700));
        assert_eq!(h.max_ms(), 700);
    }
}
