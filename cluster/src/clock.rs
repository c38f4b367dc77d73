//! The log clock: the wall-clock milliseconds a node stamps on what it
//! proposes (`proposed_at`) and verifies expiry against. Apply never reads
//! a clock; it uses the stamp.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now: the `proposed_at` stamp and the verification clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
