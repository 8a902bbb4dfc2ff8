//! Per-source limits: a request rate per client address (token bucket) and a number of open
//! connections per source address. The bucket arithmetic is a pure function of the time given;
//! the tables around it are sharded maps swept of idle entries in the background.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::client::canonical;

const SHARDS: usize = 16;

/// One source's token bucket: `tokens` left at `updated`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub updated: Instant,
}

impl Bucket {
    /// A full bucket: a new source may send `burst` requests at once.
    pub fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            updated: now,
        }
    }

    /// Refills at `rate` per second up to `burst`, then takes one token if there is one.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now.max(self.updated);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full again at `now` (it can be forgotten: a new full bucket
    /// means the same).
    pub fn is_refilled(&self, now: Instant, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * rate >= burst
    }
}

/// The configured limits; zero turns a limit off.
#[derive(Debug, Clone, Copy)]
pub struct LimitPolicy {
    pub rate_per_second: u32,
    pub burst: u32,
    pub connections_per_source: usize,
}

/// The gateway's per-source tables.
#[derive(Debug)]
pub struct SourceLimits {
    policy: LimitPolicy,
    hasher: std::collections::hash_map::RandomState,
    buckets: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
    connections: Vec<Mutex<HashMap<IpAddr, usize>>>,
}

/// The source already holds `connections_per_source` connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAtLimit;

/// An open connection counted against its source; the count drops with it.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<SourceLimits>,
    source: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut table = self.limits.shard(&self.limits.connections, self.source);
        if let Some(count) = table.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                table.remove(&self.source);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a table lock leaves plain counters behind: keep using them.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SourceLimits {
    pub fn new(policy: LimitPolicy) -> Self {
        SourceLimits {
            policy,
            hasher: std::collections::hash_map::RandomState::new(),
            buckets: (0..SHARDS).map(|_| Mutex::default()).collect(),
            connections: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard<'a, V>(
        &self,
        shards: &'a [Mutex<HashMap<IpAddr, V>>],
        ip: IpAddr,
    ) -> MutexGuard<'a, HashMap<IpAddr, V>> {
        lock(&shards[self.hasher.hash_one(ip) as usize % shards.len()])
    }

    /// Whether one more request from `client` fits its rate at `now`.
    pub fn admit_request(&self, client: IpAddr, now: Instant) -> bool {
        let LimitPolicy {
            rate_per_second,
            burst,
            ..
        } = self.policy;
        if rate_per_second == 0 {
            return true;
        }
        let (rate, burst) = (f64::from(rate_per_second), f64::from(burst));
        let client = canonical(client);
        let mut table = self.shard(&self.buckets, client);
        table
            .entry(client)
            .or_insert_with(|| Bucket::full(burst, now))
            .take(now, rate, burst)
    }

    /// Counts a connection from `source` (no slot when the limit is off); refused when the
    /// source already holds its share.
    pub fn open_connection(
        self: &Arc<Self>,
        source: IpAddr,
    ) -> Result<Option<ConnectionSlot>, SourceAtLimit> {
        let limit = self.policy.connections_per_source;
        if limit == 0 {
            return Ok(None);
        }
        let source = canonical(source);
        let mut table = self.shard(&self.connections, source);
        let count = table.entry(source).or_insert(0);
        if *count >= limit {
            return Err(SourceAtLimit);
        }
        *count += 1;
        drop(table);
        Ok(Some(ConnectionSlot {
            limits: self.clone(),
            source,
        }))
    }

    /// Sources with open connections counted (for tests).
    pub fn sources_connected(&self) -> usize {
        self.connections.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Forgets the buckets that are full again, so the table holds only recent senders.
    pub fn sweep(&self, now: Instant) {
        let (rate, burst) = (
            f64::from(self.policy.rate_per_second),
            f64::from(self.policy.burst),
        );
        for shard in &self.buckets {
            lock(shard).retain(|_, bucket| !bucket.is_refilled(now, rate, burst));
        }
    }

    /// Sources with a bucket (for tests and the sweep's effect).
    pub fn tracked_sources(&self) -> usize {
        self.buckets.iter().map(|shard| lock(shard).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::full(3.0, start);
        assert!(bucket.take(start, 2.0, 3.0));
        assert!(bucket.take(start, 2.0, 3.0));
        assert!(bucket.take(start, 2.0, 3.0));
        assert!(!bucket.take(start, 2.0, 3.0), "burst spent");
        // Half a second at 2/s refills one token.
        let later = start + Duration::from_millis(500);
        assert!(bucket.take(later, 2.0, 3.0));
        assert!(!bucket.take(later, 2.0, 3.0));
        // A long pause refills to the burst, never above it.
        let much_later = later + Duration::from_secs(60);
        assert!(bucket.is_refilled(much_later, 2.0, 3.0));
        for _ in 0..3 {
            assert!(bucket.take(much_later, 2.0, 3.0));
        }
        assert!(!bucket.take(much_later, 2.0, 3.0));
        // Time going backwards (another thread's earlier `now`) refills nothing.
        assert!(!bucket.take(start, 2.0, 3.0));
    }

    #[test]
    fn rate_is_per_source_and_v4_mapped_is_the_same_source() {
        let limits = SourceLimits::new(LimitPolicy {
            rate_per_second: 1,
            burst: 2,
            connections_per_source: 0,
        });
        let now = Instant::now();
        let a: IpAddr = "40.92.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:40.92.0.1".parse().unwrap();
        let b: IpAddr = "40.92.0.2".parse().unwrap();
        assert!(limits.admit_request(a, now));
        assert!(limits.admit_request(mapped, now));
        assert!(!limits.admit_request(a, now), "a's burst is spent");
        assert!(limits.admit_request(b, now), "b has its own bucket");
        assert_eq!(limits.tracked_sources(), 2);
        limits.sweep(now + Duration::from_secs(5));
        assert_eq!(
            limits.tracked_sources(),
            0,
            "refilled buckets are forgotten"
        );
    }

    #[test]
    fn zero_turns_limits_off() {
        let limits = Arc::new(SourceLimits::new(LimitPolicy {
            rate_per_second: 0,
            burst: 0,
            connections_per_source: 0,
        }));
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let now = Instant::now();
        assert!((0..10_000).all(|_| limits.admit_request(ip, now)));
        assert!((0..10_000).all(|_| matches!(limits.open_connection(ip), Ok(None))));
        assert_eq!(limits.tracked_sources(), 0);
    }

    #[test]
    fn connections_are_counted_until_dropped() {
        let limits = Arc::new(SourceLimits::new(LimitPolicy {
            rate_per_second: 0,
            burst: 0,
            connections_per_source: 2,
        }));
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.9".parse().unwrap();
        let first = limits.open_connection(ip).unwrap();
        let second = limits.open_connection(ip).unwrap();
        assert!(first.is_some() && second.is_some());
        assert_eq!(limits.open_connection(ip).unwrap_err(), SourceAtLimit);
        let elsewhere = limits.open_connection(other).unwrap();
        assert!(elsewhere.is_some(), "per source");
        drop(first);
        let third = limits.open_connection(ip).unwrap();
        assert!(third.is_some(), "a closed connection frees its slot");
        drop((second, third, elsewhere));
        assert_eq!(limits.sources_connected(), 0, "no count left behind");
    }
}
