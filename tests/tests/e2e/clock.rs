//! The wall clock jumping back a day under a running `edgecore` (issue #16, item 4): an NTP step
//! or an RTC reset on a device that booted with a wrong clock. Through libfaketime, which shifts
//! only the process's wall clock (`CLOCK_REALTIME`), as such a step does, and leaves the monotonic
//! clock alone.
//!
//! The `faketime_` test needs libfaketime (`apt-get install faketime`; `tests/run.sh` installs
//! it) and is ignored by default: `cargo test -p edgecore-tests -- --ignored faketime_`.

use std::path::Path;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cloudsim::Event;
use cloudsim::edge::EdgeCore;
use serde_json::json;

use super::common::{Lab, Renewals, SERIAL, connected, with_log};
use super::cri::{edge_options, pods_only_replica};

/// Debian's libfaketime; `EDGECORE_FAKETIME_LIB` overrides it.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// The jump: one day back.
const BACK: i64 = 86_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs libfaketime: apt-get install faketime (tests/run.sh installs it)"]
async fn faketime_edgecore_rides_out_the_wall_clock_jumping_back_a_day() -> Result<()> {
    let lib = std::env::var("EDGECORE_FAKETIME_LIB").unwrap_or_else(|_| FAKETIME_LIB.into());
    ensure!(
        Path::new(&lib).exists(),
        "{lib} is missing: apt-get install faketime (tests/run.sh installs it)"
    );
    let _serial = SERIAL.lock().await;
    let lab = Lab::new()?;
    let sim = pods_only_replica(&lab, "127.0.0.1:0".parse()?).await?;
    let addr = sim.addr();
    let mut events = sim.events();
    // Edged without a runtime: the node registers and its Lease is renewed every second.
    let socket = lab.dir.path().join("no-runtime/containerd.sock");
    let mut opts = edge_options(&lab, addr, &format!("unix://{}", socket.display()));
    let offset = lab.dir.path().join("faketime");
    std::fs::write(&offset, "+0\n")?;
    opts.env = vec![
        ("LD_PRELOAD".into(), lib.clone()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset.display().to_string(),
        ),
        // Re-read the file at most once a second; the monotonic clock stays real.
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    let mut edge = EdgeCore::spawn(opts).await?;
    connected(&mut events, Duration::from_secs(30)).await?;
    let renewals = Renewals::default();
    let before = renewals.await_more(&lab, &edge, 2).await?;

    // The jump. The next renewTime shows it reached the process: about a day earlier.
    std::fs::write(&offset, format!("-{BACK}s\n"))?;
    let last_before = *before.last().context("no renewal before the jump")?;
    let jump_seen = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = renewals.await_more(&lab, &edge, 1).await?;
    while seen.last().is_some_and(|&at| at > last_before - BACK / 2) {
        ensure!(
            std::time::Instant::now() < jump_seen,
            "the jump never reached edgecore (is {lib} libfaketime?): renewals {seen:?}"
        );
        seen = renewals.await_more(&lab, &edge, 1).await?;
    }
    let jumped = seen.len() - 1;
    let step = last_before - seen[jumped];
    assert!(
        (BACK - 60..=BACK + 60).contains(&step),
        "renewTime went back {step} s, not a day: {seen:?}"
    );

    // Leases: still renewed every second (a timer on the wall clock would wait a day), and
    // forward from the new time.
    let after = renewals.await_more(&lab, &edge, 3).await?;
    let tail = &after[jumped..];
    assert!(tail.windows(2).all(|w| w[0] <= w[1]), "{after:?}");
    // The session: keepalives and pings run on the monotonic clock; the session never dropped.
    let c = sim.counters();
    assert_eq!(c.connections, 1, "one session across the jump: {c:?}");
    // Messages: a pod pushed after the jump is stored and acked.
    let (uid, rv) = lab
        .with_cluster(|c| {
            c.upsert(
                "pod",
                "default",
                "after-the-jump",
                json!({"spec": {"containers": [{"name": "c", "image": "localhost/app:local"}]}}),
            )
        })
        .await?;
    let acked = events
        .wait_for(
            Duration::from_secs(30),
            "the ack of a pod pushed after the jump",
            |e| matches!(e, Event::Acked { uid: u, rv: r, .. } if *u == uid && *r == rv),
        )
        .await
        .map(drop);
    with_log(acked, &edge)?;

    // Backoff: the cloud goes away and comes back at the same address; the edge is back within
    // its backoff cap (1 s here), not a day. Its certificate, issued "tomorrow" by the edge's
    // clock now, is still offered: the cloud judges it by its own clock.
    sim.stop().await;
    let sim = pods_only_replica(&lab, addr).await?;
    let mut events = sim.events();
    with_log(
        connected(&mut events, Duration::from_secs(30))
            .await
            .map(drop),
        &edge,
    )?;
    renewals.await_more(&lab, &edge, 2).await?;

    // No rotation was started or failed on the way, and no panic: the process still runs.
    let log = edge.log_tail(10_000);
    for bad in ["panicked", "rotation stopped", "edge certificate rotated"] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
    edge.check_running()?;
    let exit = edge.terminate(Duration::from_secs(15)).await?;
    assert!(exit.is_some_and(|s| s.success()), "edgecore exit: {exit:?}");
    sim.stop().await;
    Ok(())
}
