//! Failed admin-API authentications, counted per client address on each
//! node: past `limit` in a minute, an address gets `RESOURCE_EXHAUSTED`
//! for credentials this node does not know, and its unknown keys no longer
//! cost a round trip to the leader (the read-your-writes catch-up). A key
//! that verifies from the local view still passes: the gate stops guessing
//! and floods, not an operator behind the same NAT.
//!
//! IPv6 clients count per /64, as the rate limits do. The table is bounded:
//! at [`MAX_ADDRESSES`], expired entries go first, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::rate_limit::quota::Quota;
use gatehouse_cluster::clock::now_ms;

/// Addresses tracked at most.
pub const MAX_ADDRESSES: usize = 10_000;
const WINDOW_MS: u64 = 60_000;

/// The per-address failure counts of one node's admin listener.
#[derive(Debug)]
pub struct FailureGate {
    limit: u32,
    /// Address bucket → (failures, start of its window).
    counts: Mutex<HashMap<IpAddr, (u32, u64)>>,
}

impl FailureGate {
    pub fn new(limit: u32) -> Self {
        FailureGate { limit, counts: Mutex::new(HashMap::new()) }
    }

    fn bucket(peer: &str) -> Option<IpAddr> {
        peer.parse().ok().map(gatehouse_domain::limits::bucket_ip)
    }

    /// The refusal's quota if `peer` is over the limit now.
    pub fn full(&self, peer: &str) -> Option<Quota> {
        self.full_at(peer, now_ms())
    }

    fn full_at(&self, peer: &str, now: u64) -> Option<Quota> {
        let ip = Self::bucket(peer)?;
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let &(n, start) = counts.get(&ip)?;
        (n >= self.limit && now < start + WINDOW_MS).then(|| Quota {
            policy: "admin_auth_failures".into(),
            limit: self.limit,
            remaining: 0,
            reset_secs: (start + WINDOW_MS - now).div_ceil(1000),
        })
    }

    /// Counts a failed authentication from `peer`.
    pub fn failed(&self, peer: &str) {
        self.failed_at(peer, now_ms());
    }

    fn failed_at(&self, peer: &str, now: u64) {
        let Some(ip) = Self::bucket(peer) else { return };
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= MAX_ADDRESSES && !counts.contains_key(&ip) {
            counts.retain(|_, (_, start)| now < *start + WINDOW_MS);
            if counts.len() >= MAX_ADDRESSES {
                if let Some(oldest) = counts.iter().min_by_key(|(_, (_, start))| *start).map(|(k, _)| *k) {
                    counts.remove(&oldest);
                }
            }
        }
        let entry = counts.entry(ip).or_insert((0, now));
        if now >= entry.1 + WINDOW_MS {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.counts.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_for_a_minute() {
        let g = FailureGate::new(3);
        for _ in 0..3 {
            assert!(g.full_at("192.0.2.1", 1_000).is_none());
            g.failed_at("192.0.2.1", 1_000);
        }
        let q = g.full_at("192.0.2.1", 1_500).unwrap();
        assert_eq!((q.remaining, q.reset_secs), (0, 60));
        assert!(g.full_at("192.0.2.2", 1_500).is_none(), "another address");
        assert!(g.full_at("192.0.2.1", 61_000).is_none(), "the window ended");
        // An IPv6 client is one address per /64.
        for i in 0..3 {
            g.failed_at(&format!("2001:db8::{i}"), 1_000);
        }
        assert!(g.full_at("2001:db8::ffff", 1_000).is_some());
        assert!(g.full_at("not an address", 1_000).is_none());
    }

    #[test]
    fn the_table_stays_bounded() {
        let g = FailureGate::new(3);
        for i in 0..(MAX_ADDRESSES as u32 + 500) {
            g.failed_at(&std::net::Ipv4Addr::from(i).to_string(), 1_000 + u64::from(i));
        }
        assert_eq!(g.len(), MAX_ADDRESSES);
    }
}
