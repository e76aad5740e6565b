//! A token bucket with an explicit clock: decisions are a function of the
//! bucket and the instant passed in, so tests need no sleeping.

use std::time::{Duration, Instant};

/// One token every `every`, at most `burst` kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub every: Duration,
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: u32,
    /// When the tokens were last counted.
    since: Instant,
}

impl TokenBucket {
    /// A bucket holding `rate.burst` tokens at `now`.
    pub fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst,
            since: now,
        }
    }

    /// Takes a token if one is there at `now`. An instant earlier than the
    /// last one seen counts as no time passed.
    pub fn try_take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let every = rate.every.as_nanos().max(1);
        let earned = now.saturating_duration_since(self.since).as_nanos() / every;
        if earned == 0 {
            return;
        }
        let room = u128::from(rate.burst.saturating_sub(self.tokens));
        if earned >= room {
            self.tokens = rate.burst;
            self.since = now;
        } else {
            // earned < room <= u32::MAX: both conversions are exact.
            let earned = earned as u32;
            self.tokens += earned;
            self.since += rate.every * earned;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 3,
        every: Duration::from_millis(500),
    };

    fn takes(b: &mut TokenBucket, at: Instant, n: usize) -> usize {
        (0..n).filter(|_| b.try_take(RATE, at)).count()
    }

    #[test]
    fn a_burst_then_one_token_per_interval() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(RATE, t0);
        assert_eq!(takes(&mut b, t0, 10), 3, "the burst");
        assert_eq!(takes(&mut b, t0 + Duration::from_millis(499), 10), 0);
        assert_eq!(takes(&mut b, t0 + Duration::from_millis(500), 10), 1);
        assert_eq!(takes(&mut b, t0 + Duration::from_millis(1500), 10), 2);
    }

    #[test]
    fn partial_intervals_are_not_lost() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(RATE, t0);
        assert_eq!(takes(&mut b, t0, 3), 3);
        // 750 ms: one token, 250 ms carried over; at 1000 ms the second.
        assert_eq!(takes(&mut b, t0 + Duration::from_millis(750), 5), 1);
        assert_eq!(takes(&mut b, t0 + Duration::from_millis(1000), 5), 1);
    }

    #[test]
    fn a_long_quiet_time_refills_only_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(RATE, t0);
        assert_eq!(takes(&mut b, t0, 3), 3);
        assert_eq!(takes(&mut b, t0 + Duration::from_secs(3600), 100), 3);
    }

    #[test]
    fn a_clock_going_backwards_earns_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::full(RATE, t0);
        assert_eq!(takes(&mut b, t0, 3), 3);
        assert_eq!(takes(&mut b, t0 - Duration::from_secs(5), 3), 0);
    }

    #[test]
    fn a_zero_interval_does_not_divide_by_zero() {
        let rate = Rate {
            burst: 1,
            every: Duration::ZERO,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert!(b.try_take(rate, t0));
        assert!(b.try_take(rate, t0 + Duration::from_nanos(1)));
    }
}
