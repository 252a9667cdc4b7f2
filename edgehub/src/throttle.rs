//! `messageQPS` / `messageBurst`: the token bucket KubeEdge puts in front of edge → cloud
//! messages. It delays, never drops; keepalives and answers to cloud messages (acks, control
//! answers, error replies) bypass it.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket that starts full.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Tokens per second; `None` = unlimited.
    rate: Option<f64>,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `qps` ≤ 0 means unlimited; `burst` is at least 1.
    pub(crate) fn new(qps: i32, burst: i32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: (qps > 0).then(|| f64::from(qps)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token for a message just sent; returns how long to wait before the next one
    /// may go, or `None` when it may go at once.
    pub(crate) fn take(&mut self, now: Instant) -> Option<Duration> {
        let rate = self.rate?;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(self.burst) - 1.0;
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, t0);
        assert_eq!(bucket.take(t0), None);
        assert_eq!(bucket.take(t0), None);
        let wait = bucket.take(t0).expect("burst spent");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        let t1 = t0 + wait;
        let wait = bucket.take(t1).expect("still pacing");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // A quiet second refills up to the burst, no further.
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(bucket.take(t2), None);
        assert_eq!(bucket.take(t2), None);
        assert!(bucket.take(t2).is_some());
    }

    #[test]
    fn zero_or_negative_qps_is_unlimited() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0, 0, t0);
        for _ in 0..1000 {
            assert_eq!(bucket.take(t0), None);
        }
    }
}
