//! Which OOM events from the guest reach containerd. The container id in
//! an event is guest data: only ids of this shim's own tasks pass, each at
//! a bounded rate; the rest is dropped, and the drops are logged at a
//! bounded rate too (a guest cannot flood containerd nor the shim's log).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::rate_limit::{Rate, TokenBucket};

/// OOM events forwarded per container: 3 at once, then 1 a second.
pub const PER_CONTAINER: Rate = Rate {
    burst: 3,
    every: Duration::from_secs(1),
};

/// Log lines about dropped events: 1 a second, with the count since.
const DROP_LOG: Rate = Rate {
    burst: 1,
    every: Duration::from_secs(1),
};

/// Longest guest-supplied id quoted in a log line.
const MAX_LOGGED_ID: usize = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not the id of a task of this shim.
    UnknownContainer,
    /// Over [`PER_CONTAINER`].
    RateLimited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// `log`: `Some(n)` when this drop should be logged, `n` being the
    /// drops since the last logged one, this one included.
    Drop {
        reason: DropReason,
        log: Option<u64>,
    },
}

/// The filter of one shim's OOM events.
#[derive(Debug)]
pub struct OomGate {
    buckets: HashMap<String, TokenBucket>,
    drop_log: Option<TokenBucket>,
    unlogged: u64,
}

impl Default for OomGate {
    fn default() -> Self {
        Self::new()
    }
}

impl OomGate {
    pub fn new() -> OomGate {
        OomGate {
            buckets: HashMap::new(),
            drop_log: None,
            unlogged: 0,
        }
    }

    /// Decides on an event for container `id`; `ours` tells whether `id`
    /// is a task this shim created (and has not deleted).
    pub fn admit(&mut self, id: &str, ours: bool, now: Instant) -> Verdict {
        let reason = if !ours {
            DropReason::UnknownContainer
        } else {
            let bucket = self
                .buckets
                .entry(id.to_string())
                .or_insert_with(|| TokenBucket::full(PER_CONTAINER, now));
            if bucket.try_take(PER_CONTAINER, now) {
                return Verdict::Forward;
            }
            DropReason::RateLimited
        };
        self.unlogged += 1;
        let log_bucket = self
            .drop_log
            .get_or_insert_with(|| TokenBucket::full(DROP_LOG, now));
        let log = log_bucket
            .try_take(DROP_LOG, now)
            .then(|| std::mem::take(&mut self.unlogged));
        Verdict::Drop { reason, log }
    }

    /// Forgets a deleted container (its id is no longer ours).
    pub fn forget(&mut self, id: &str) {
        self.buckets.remove(id);
    }
}

/// A guest-supplied id for a log line: escaped, at most [`MAX_LOGGED_ID`]
/// characters.
pub fn printable(id: &str) -> String {
    let short: String = id.chars().take(MAX_LOGGED_ID).collect();
    let mut s = format!("{short:?}");
    if short.len() < id.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(g: &mut OomGate, id: &str, ours: bool, at: Instant, n: usize) -> usize {
        (0..n)
            .filter(|_| g.admit(id, ours, at) == Verdict::Forward)
            .count()
    }

    #[test]
    fn ids_the_shim_did_not_create_are_dropped() {
        let mut g = OomGate::new();
        let t0 = Instant::now();
        assert_eq!(
            g.admit("someone-else", false, t0),
            Verdict::Drop {
                reason: DropReason::UnknownContainer,
                log: Some(1)
            }
        );
        assert_eq!(forwarded(&mut g, "someone-else", false, t0, 10), 0);
        assert!(g.buckets.is_empty(), "no state kept for foreign ids");
    }

    #[test]
    fn each_container_is_limited_on_its_own() {
        let mut g = OomGate::new();
        let t0 = Instant::now();
        assert_eq!(forwarded(&mut g, "a", true, t0, 100), 3);
        assert_eq!(forwarded(&mut g, "b", true, t0, 100), 3);
        assert_eq!(
            forwarded(&mut g, "a", true, t0 + Duration::from_millis(999), 100),
            0
        );
        assert_eq!(
            forwarded(&mut g, "a", true, t0 + Duration::from_secs(1), 100),
            1
        );
        assert_eq!(
            forwarded(&mut g, "a", true, t0 + Duration::from_secs(60), 100),
            3
        );
    }

    #[test]
    fn drops_are_logged_once_a_second_with_their_count() {
        let mut g = OomGate::new();
        let t0 = Instant::now();
        assert_eq!(forwarded(&mut g, "a", true, t0, 3), 3);
        // First drop logged at once, then counted until a second passed.
        assert_eq!(
            g.admit("a", true, t0),
            Verdict::Drop {
                reason: DropReason::RateLimited,
                log: Some(1)
            }
        );
        for _ in 0..9 {
            assert!(matches!(
                g.admit("x", false, t0),
                Verdict::Drop { log: None, .. }
            ));
        }
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            g.admit("y", false, later),
            Verdict::Drop {
                reason: DropReason::UnknownContainer,
                log: Some(10)
            }
        );
    }

    #[test]
    fn a_forgotten_container_starts_afresh() {
        let mut g = OomGate::new();
        let t0 = Instant::now();
        assert_eq!(forwarded(&mut g, "a", true, t0, 10), 3);
        g.forget("a");
        assert_eq!(forwarded(&mut g, "a", true, t0, 10), 3);
    }

    #[test]
    fn guest_ids_in_logs_are_escaped_and_short() {
        assert_eq!(printable("web"), "\"web\"");
        assert_eq!(printable("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(1000);
        let p = printable(&long);
        assert!(p.len() < 100 && p.ends_with('…'), "{p}");
    }
}
