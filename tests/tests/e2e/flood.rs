//! The reduced flood (issue #8 item 4) for CI: the same code as `bench flood`, 50,000 unpaced
//! downstream messages instead of 100,000. Buffering them would take well over 50 MiB of heap;
//! the bounded queues keep edgecore's anonymous memory at a few MiB (peak RssAnon 5.84 MiB for
//! a debug build, see docs/benchmarks.md), so the assertion's 24 MiB is loose but not blind.

use std::time::Duration;

use anyhow::Result;
use cloudsim::flood;

use super::common::{SERIAL, init_tracing};

const MESSAGES: u64 = 50_000;
const RSS_ANON_BOUND_KIB: u64 = 24 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_downstream_messages_is_acked_stored_and_memory_stays_bounded() -> Result<()> {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let r = flood::run(MESSAGES, Duration::from_secs(300), &|line| {
        eprintln!("{line}")
    })
    .await?;
    eprintln!(
        "flood {MESSAGES}: acked in {:.1} s; idle {}; peak {}",
        r.acked_in.as_secs_f64(),
        r.idle,
        r.peak
    );
    assert!(r.acks >= MESSAGES, "{} acks", r.acks);
    assert_eq!(r.stored, MESSAGES);
    assert_eq!(r.sessions, 1, "the flood broke the session");
    assert!(
        r.peak.anon_kib < RSS_ANON_BOUND_KIB,
        "peak RssAnon {} ≥ {}",
        flood::kib(r.peak.anon_kib),
        flood::kib(RSS_ANON_BOUND_KIB)
    );
    Ok(())
}
