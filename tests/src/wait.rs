//! The one bounded polling helper the tests may use.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Period between two checks.
const POLL: Duration = Duration::from_millis(50);

/// Runs `check` every 50 ms until it returns `Ok`, and fails after `within` with `what` and the
/// last error.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {within:?} awaiting {what}; last check: {last:#}");
        }
        tokio::time::sleep(POLL).await;
    }
}
