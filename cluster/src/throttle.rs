//! Log lines a stranger can trigger (a refused secret, a refused admin
//! key), at most one per interval: a client sending thousands of bad calls
//! a second must not write thousands of lines a second. The line that is
//! written says how many were left out before it.

use std::sync::atomic::{AtomicU64, Ordering};

/// One throttled log site; keep it in a `static`.
#[derive(Debug)]
pub struct Throttle {
    every_ms: u64,
    /// Unix ms of the last line written (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new(every_ms: u64) -> Self {
        Throttle { every_ms, last: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(lines left out since the last one)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(crate::clock::now_ms())
    }

    fn allow_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.every_ms
            || self.last.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_count_of_the_rest() {
        let t = Throttle::new(1_000);
        assert_eq!(t.allow_at(10_000), Some(0));
        for i in 0..5_000 {
            assert_eq!(t.allow_at(10_000 + i % 999), None);
        }
        assert_eq!(t.allow_at(11_000), Some(5_000));
        assert_eq!(t.allow_at(11_001), None);
        assert_eq!(t.allow_at(12_500), Some(1));
    }
}
