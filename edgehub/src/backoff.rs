//! The reconnect schedule: the first attempt at once, then jittered exponential delays up to a
//! cap. It starts over only after a session stayed up long enough to count as stable.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays between rounds of connection attempts.
#[derive(Debug)]
pub(crate) struct ReconnectBackoff {
    builder: ExponentialBuilder,
    max: Duration,
    /// `None` until the first delay after a reset was handed out.
    running: Option<ExponentialBackoff>,
}

impl ReconnectBackoff {
    /// `initial` after the immediate first attempt, doubling, jittered, never above `max`.
    pub(crate) fn new(failover: &config::Failover) -> Self {
        let initial = Duration::from_millis(failover.backoff_initial_ms.max(1));
        let max = Duration::from_millis(failover.backoff_max_ms).max(initial);
        Self::with_builder(
            ExponentialBuilder::new()
                .with_jitter()
                .with_factor(2.0)
                .with_min_delay(initial)
                .with_max_delay(max)
                .without_max_times(),
            max,
        )
    }

    fn with_builder(builder: ExponentialBuilder, max: Duration) -> Self {
        Self {
            builder,
            max,
            running: None,
        }
    }

    /// The wait before the next round: zero right after a reset.
    pub(crate) fn next_delay(&mut self) -> Duration {
        match &mut self.running {
            None => {
                self.running = Some(self.builder.build());
                Duration::ZERO
            }
            // backon adds up to 100 % jitter on top of the capped delay; keep the cap a cap.
            Some(running) => running.next().unwrap_or(self.max).min(self.max),
        }
    }

    /// The longest delay.
    pub(crate) fn cap(&self) -> Duration {
        self.max
    }

    /// Starts over: the next round begins at once.
    pub(crate) fn reset(&mut self) {
        self.running = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover(initial: u64, max: u64) -> config::Failover {
        config::Failover {
            backoff_initial_ms: initial,
            backoff_max_ms: max,
            ..config::Failover::default()
        }
    }

    #[test]
    fn first_attempt_at_once_then_growing_jittered_delays_up_to_the_cap() {
        let mut b = ReconnectBackoff::new(&failover(100, 3_000));
        assert_eq!(b.next_delay(), Duration::ZERO);
        let mut base = Duration::from_millis(100);
        let max = Duration::from_millis(3_000);
        for _ in 0..12 {
            let d = b.next_delay();
            // Jitter adds between 0 and 100 % of the un-jittered delay, then the cap applies.
            assert!(d >= base.min(max), "{d:?} below {base:?}");
            assert!(d <= (base * 2).min(max), "{d:?} above {:?}", base * 2);
            base = (base * 2).min(max);
        }
        assert!(b.next_delay() <= max);
    }

    #[test]
    fn reset_makes_the_next_attempt_immediate_again() {
        let mut b = ReconnectBackoff::new(&failover(100, 3_000));
        b.next_delay();
        b.next_delay();
        assert!(b.next_delay() >= Duration::from_millis(200));
        b.reset();
        assert_eq!(b.next_delay(), Duration::ZERO);
        let d = b.next_delay();
        assert!(
            d >= Duration::from_millis(100) && d <= Duration::from_millis(200),
            "{d:?}"
        );
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(Duration::from_millis(1_000))
            .with_max_delay(Duration::from_millis(1_000))
            .without_max_times();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..8 {
            let mut b = ReconnectBackoff::with_builder(
                builder.with_jitter_seed(seed),
                Duration::from_secs(5),
            );
            b.next_delay();
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 1, "jitter produced one value: {seen:?}");
    }

    /// Every process draws its own jitter: a fleet cut off by the same VIP move does not come
    /// back in step. (Without backon's `std` feature the seed was a constant, and every
    /// edgecore waited exactly as long as every other.)
    #[test]
    fn two_edges_do_not_back_off_in_step() {
        let delays: std::collections::BTreeSet<Duration> = (0..16)
            .map(|_| {
                let mut b = ReconnectBackoff::new(&failover(100, 3_000));
                b.next_delay();
                b.next_delay()
            })
            .collect();
        assert!(delays.len() > 1, "every schedule drew {delays:?}");
    }

    #[test]
    fn a_cap_below_the_initial_delay_is_raised_to_it() {
        let mut b = ReconnectBackoff::new(&failover(500, 100));
        b.next_delay();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
