//! The reduced chaos runs (issue #8 item 2) for CI: the same code as `bench chaos-vip` and
//! `bench chaos-kill`, with fewer steps. `CHAOS_MOVES` and `CHAOS_KILLS` set the counts
//! (default 10), `CHAOS_SEED` the seed (default: from the clock, printed).

use anyhow::Result;
use cloudsim::chaos::{self, ChaosOptions, ChaosReport, Rng};
use std::time::Duration;

use super::common::{SERIAL, init_tracing};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// CI settings: a 1 s resync, shorter pauses, 150 names.
fn options(steps_var: &str) -> ChaosOptions {
    let seed = env_u64("CHAOS_SEED").unwrap_or_else(Rng::clock_seed);
    let steps = env_u64(steps_var).unwrap_or(10) as usize;
    let mut o = ChaosOptions::new(steps, seed);
    o.resync_interval = Duration::from_secs(1);
    o.pause_ms = (50, 800);
    o.pool = 150;
    o.converge_within = Duration::from_secs(120);
    o
}

fn verdict(what: &str, r: &ChaosReport) {
    eprintln!(
        "{what}: seed {}, {} steps, {} writes, {} sessions, {} checks, converged {:.1} s after the storm, {:.1} s in all",
        r.seed,
        r.steps,
        r.storm.total(),
        r.sessions,
        r.checks,
        r.converged_after.as_secs_f64(),
        r.duration.as_secs_f64()
    );
    assert!(
        r.passed(),
        "{what} (seed {}) found {} problems:\n{}",
        r.seed,
        r.problems.len(),
        r.problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_vip_moves_under_a_write_storm() -> Result<()> {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let opts = options("CHAOS_MOVES");
    eprintln!("chaos-vip seed {}", opts.seed);
    let r = chaos::vip(&opts, &|line| eprintln!("{line}")).await?;
    verdict("chaos-vip", &r);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_9_during_a_write_storm() -> Result<()> {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let opts = options("CHAOS_KILLS");
    eprintln!("chaos-kill seed {}", opts.seed);
    let r = chaos::kill(&opts, &|line| eprintln!("{line}")).await?;
    verdict("chaos-kill", &r);
    Ok(())
}
