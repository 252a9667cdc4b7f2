//! Capped exponential backoff for retries against metamanager and the runtime, on backon (the
//! same schedule builder edgehub's reconnects use).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays from `initial`, doubling up to `max`; [`Backoff::reset`] after a success.
#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    max: Duration,
    running: ExponentialBackoff,
}

impl Backoff {
    /// Jittered (each delay up to twice the doubling value, never above `max`), so that many
    /// edges retrying the same cloud or runtime do not do it in step.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self::with(
            ExponentialBuilder::new().with_jitter(),
            initial,
            max.max(initial),
        )
    }

    /// Exactly `initial`, `2·initial`, … up to `max`: the kubelet's crash-loop back-off, which
    /// `kubectl describe pod` users expect to see as it is.
    pub(crate) fn exact(initial: Duration, max: Duration) -> Self {
        Self::with(ExponentialBuilder::new(), initial, max.max(initial))
    }

    fn with(builder: ExponentialBuilder, initial: Duration, max: Duration) -> Self {
        let builder = builder
            .with_factor(2.0)
            .with_min_delay(initial)
            .with_max_delay(max)
            .without_max_times();
        Self {
            running: builder.build(),
            builder,
            max,
        }
    }

    /// The delay to wait now.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // backon's jitter adds up to 100 % on top of the capped delay; keep the cap a cap.
        self.running.next().unwrap_or(self.max).min(self.max)
    }

    /// Starts over at the initial delay.
    pub(crate) fn reset(&mut self) {
        self.running = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::exact(Duration::from_secs(1), Duration::from_secs(5));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn jittered_delays_stay_between_the_doubling_value_and_the_cap() {
        for _ in 0..20 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            let mut floor = Duration::from_secs(1);
            for _ in 0..8 {
                let d = b.next_delay();
                assert!(
                    d >= floor.min(Duration::from_secs(30)),
                    "{d:?} below {floor:?}"
                );
                assert!(d <= Duration::from_secs(30), "{d:?} above the cap");
                floor *= 2;
            }
            b.reset();
            assert!(b.next_delay() < Duration::from_secs(2), "reset starts over");
        }
        // Two edges (two schedules) do not retry in step.
        let firsts: std::collections::BTreeSet<u128> = (0..20)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
                    .next_delay()
                    .as_millis()
            })
            .collect();
        assert!(firsts.len() > 1, "no jitter: {firsts:?}");
    }
}
