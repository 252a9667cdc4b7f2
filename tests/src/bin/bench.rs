//! Benchmark of the real `edgecore` against the simulator: failover times, memory, startup and
//! binary size (prints numbers, asserts nothing about them); chaos and flood runs (which do).
//!
//! `EDGECORE_BIN=target/release/edgecore cargo run --release -p edgecore-tests --bin bench -- <all|failover|memory|startup> [--runs N]`
//!
//! * failover: an HA pair behind a VIP; each run moves the VIP to a fresh replica, with a reset
//!   (time to the new replica's `Connected` event) or silently (time to edgecore's
//!   `session lost` log line, then to `Connected`). Product link defaults: heartbeat 15 s,
//!   pings every 2 s, 5 s silence limit, 3 s backoff cap. Each session is held 11 s before the
//!   next move, past `stableAfterMs` (10 s), as between real failovers.
//! * memory: VmRSS / RssAnon / VmHWM from `/proc/<pid>/status`, idle and connected with no
//!   objects, then after 10,000 mixed objects are synced (the edge store equals the cluster).
//! * startup: process spawn to the simulator's `Connected` event.
//! * size: the binary that ran, on disk and stripped.
//! * chaos-vip [--moves N] [--seed S], chaos-kill [--kills N] [--seed S]: issue #8's chaos runs
//!   ([`cloudsim::chaos`]); print PASS/FAIL and exit non-zero on a violated invariant.
//! * flood [--messages N]: [`cloudsim::flood`]; peak and final memory, every message acked and
//!   stored.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloudsim::chaos::{self, ChaosOptions, ChaosReport, Rng};
use cloudsim::edge::{EdgeCore, EdgeOptions, diff, edgecore_binary, read_meta};
use cloudsim::feed::{self, FeedKind};
use cloudsim::flood::{Mem, kib};
use cloudsim::{CloudSim, Cluster, Event, EventStream, Mode, Pki, PkiOptions, SimConfig, VipProxy};

const NODE: &str = "bench-node";
/// Objects in the cluster during the failover runs (each session resyncs them).
const FAILOVER_OBJECTS: usize = 30;
/// Objects synced for the second memory reading.
const MEMORY_OBJECTS: usize = 10_000;
/// How long the idle reading samples, after the session is up.
const IDLE_WINDOW: Duration = Duration::from_secs(20);
/// Bound on one connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(60);
/// Bound on one failover step (detection, reconnect).
const FAILOVER_WITHIN: Duration = Duration::from_secs(30);
/// How long each new session is kept before the next move: longer than the product's
/// `failover.stableAfterMs` (10 s), after which the reconnect backoff starts again from its
/// initial 50 ms. Moving sooner measures a flapping VIP: the backoff climbs to its 3 s cap.
const HOLD: Duration = Duration::from_secs(11);
/// Bound on syncing the memory objects.
const SYNC_WITHIN: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    All,
    Failover,
    Memory,
    Startup,
    ChaosVip,
    ChaosKill,
    Flood,
}

/// Default VIP moves of `chaos-vip` and kills of `chaos-kill` (issue #8's full counts).
const CHAOS_MOVES: usize = 100;
const CHAOS_KILLS: usize = 200;
/// Default messages of `flood`.
const FLOOD_MESSAGES: u64 = 100_000;
/// Bound on the last flood ack after the last send.
const FLOOD_ACKED_WITHIN: Duration = Duration::from_secs(900);

const USAGE: &str = "usage: bench [all|failover|memory|startup] [--runs N] | chaos-vip [--moves N] [--seed S] | chaos-kill [--kills N] [--seed S] | flood [--messages N]";

#[derive(Debug)]
struct Args {
    what: What,
    runs: usize,
    /// Moves or kills; `None` = the default of the run.
    steps: Option<usize>,
    seed: Option<u64>,
    messages: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let what = args.what;
    let bin = tokio::task::spawn_blocking(edgecore_binary)
        .await
        .context("resolve the edgecore binary")??;
    println!("edgecore bench: {}", bin.display());
    println!(
        "  build: {}; machine: {} cores, load average {}",
        profile_of(&bin),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    match what {
        What::ChaosVip | What::ChaosKill => return chaos_run(&args).await,
        What::Flood => return flood(args.messages).await,
        _ => {}
    }
    size(&bin).await;
    if matches!(what, What::All | What::Startup) {
        startup(args.runs).await?;
    }
    if matches!(what, What::All | What::Memory) {
        memory().await?;
    }
    if matches!(what, What::All | What::Failover) {
        failover(args.runs).await?;
    }
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

fn number<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T> {
    let v = v.with_context(|| format!("{flag} needs a number"))?;
    v.parse()
        .map_err(|_| anyhow::anyhow!("{flag} {v:?} is not a number"))
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut a = Args {
        what: What::All,
        runs: 20,
        steps: None,
        seed: None,
        messages: FLOOD_MESSAGES,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "all" => a.what = What::All,
            "failover" => a.what = What::Failover,
            "memory" => a.what = What::Memory,
            "startup" => a.what = What::Startup,
            "chaos-vip" => a.what = What::ChaosVip,
            "chaos-kill" => a.what = What::ChaosKill,
            "flood" => a.what = What::Flood,
            "--runs" => {
                a.runs = number("--runs", args.next())?;
                if a.runs == 0 {
                    bail!("--runs must be at least 1");
                }
            }
            "--moves" | "--kills" => a.steps = Some(number(&arg, args.next())?),
            "--seed" => a.seed = Some(number("--seed", args.next())?),
            "--messages" => a.messages = number("--messages", args.next())?,
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------- chaos

async fn chaos_run(args: &Args) -> Result<()> {
    let vip = args.what == What::ChaosVip;
    let steps = args
        .steps
        .unwrap_or(if vip { CHAOS_MOVES } else { CHAOS_KILLS });
    let seed = args.seed.unwrap_or_else(Rng::clock_seed);
    let opts = ChaosOptions::new(steps, seed);
    let name = if vip { "chaos-vip" } else { "chaos-kill" };
    println!(
        "\n{name}: {steps} {} during a write storm (one write every {} ms over {} names: inserts, updates, 15 % deletes), seed {seed}",
        if vip {
            "VIP moves (reset or silent at random)"
        } else {
            "kill -9 of edgecore, each followed by a restart"
        },
        opts.write_period.as_millis(),
        opts.pool
    );
    println!(
        "  pauses {}–{} ms before each step; resync every {} s; edge: pings 500 ms, 2 s silence limit, backoff cap 1 s, messageQPS {}",
        opts.pause_ms.0,
        opts.pause_ms.1,
        opts.resync_interval.as_secs(),
        opts.message_qps
    );
    println!(
        "  repeat with: bench {name} --{} {steps} --seed {seed}",
        if vip { "moves" } else { "kills" }
    );
    let progress = |line: &str| println!("  {line}");
    let report = if vip {
        chaos::vip(&opts, &progress).await?
    } else {
        chaos::kill(&opts, &progress).await?
    };
    print_chaos(name, &report);
    if !report.passed() {
        bail!("{name} FAILED with seed {seed}");
    }
    Ok(())
}

fn print_chaos(name: &str, r: &ChaosReport) {
    println!();
    if !r.moves.is_empty() {
        for (mode, label) in [(Mode::Rst, "reset"), (Mode::Silent, "silent")] {
            let mut detected: Vec<Duration> = r
                .moves
                .iter()
                .filter(|m| m.mode == mode)
                .map(|m| m.detected)
                .collect();
            let mut connected: Vec<Duration> = r
                .moves
                .iter()
                .filter(|m| m.mode == mode)
                .map(|m| m.connected)
                .collect();
            summary(&format!("{label} move → \"session lost\""), &mut detected);
            summary(&format!("{label} move → connected"), &mut connected);
        }
    }
    println!(
        "  storm: {} writes ({} inserts, {} updates, {} deletes); {} objects live at the end",
        r.storm.total(),
        r.storm.inserts,
        r.storm.updates,
        r.storm.deletes,
        r.objects
    );
    println!(
        "  sessions {}, checks (integrity_check + acked versions) {}, deliveries {} (duplicates {}, acks {}, never acked {})",
        r.sessions,
        r.checks,
        r.deliveries.delivered,
        r.deliveries.duplicates,
        r.deliveries.acks,
        r.deliveries.unacked
    );
    println!(
        "  converged {:.1} s after the storm stopped; {:.1} s in all",
        r.converged_after.as_secs_f64(),
        r.duration.as_secs_f64()
    );
    if r.passed() {
        println!("{name}: PASS ({} steps, seed {})", r.steps, r.seed);
    } else {
        println!(
            "{name}: FAIL ({} problems, seed {}):",
            r.problems.len(),
            r.seed
        );
        for p in r.problems.iter().take(50) {
            println!("  - {p}");
        }
    }
}

// ---------------------------------------------------------------- flood

async fn flood(messages: u64) -> Result<()> {
    println!(
        "\nflood: {messages} configmap updates written straight into the session (no one-in-flight pacing), 200-byte payloads, distinct names; memory from /proc/<pid>/status every 100 ms"
    );
    let progress = |line: &str| println!("{line}");
    let r = cloudsim::flood::run(messages, FLOOD_ACKED_WITHIN, &progress).await?;
    println!("  idle, connected: {}", r.idle);
    println!(
        "  peak during the flood ({} samples): {}",
        r.samples, r.peak
    );
    println!("  after the last ack: {}", r.after);
    println!(
        "  sent in {:.1} s, all acked in {:.1} s ({:.0} messages/s); acks {}, stored at their rv {}, sessions {}",
        r.sent_in.as_secs_f64(),
        r.acked_in.as_secs_f64(),
        r.messages as f64 / r.acked_in.as_secs_f64().max(1e-9),
        r.acks,
        r.stored,
        r.sessions
    );
    let ok = r.acks >= messages && r.stored == messages && r.sessions == 1;
    println!("flood: {}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        bail!("flood: not every message was acked and stored on one session");
    }
    Ok(())
}

/// A temp dir with certificates and a cluster state file.
struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    state: PathBuf,
}

impl Setup {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let pki = Pki::generate(&PkiOptions::new(NODE))?;
        let state = dir.path().join("cluster.db");
        Ok(Self { dir, pki, state })
    }

    async fn replica(&self, name: &str) -> Result<CloudSim> {
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        CloudSim::start(SimConfig::new(
            name,
            any,
            self.state.clone(),
            self.pki.clone(),
        ))
        .await
    }

    /// Options with the product's link defaults, in a fresh sub-directory `sub`.
    fn edge_options(&self, server: SocketAddr, sub: &str) -> Result<EdgeOptions> {
        let paths = self.pki.write(&self.dir.path().join("pki"))?;
        Ok(
            EdgeOptions::new(NODE, &server.to_string(), paths, &self.dir.path().join(sub))
                .with_product_link_defaults(),
        )
    }
}

async fn connected(events: &mut EventStream, what: &str) -> Result<()> {
    events
        .wait_for(CONNECT_WITHIN, what, |e| {
            matches!(e, Event::Connected { .. })
        })
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------- startup

async fn startup(runs: usize) -> Result<()> {
    println!("\nstartup: process spawn to the simulator's Connected event, {runs} runs");
    let setup = Setup::new()?;
    let sim = setup.replica("cloud-a").await?;
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        let opts = setup.edge_options(sim.addr(), &format!("edge-{run}"))?;
        let mut events = sim.events();
        let t0 = Instant::now();
        let edge = EdgeCore::spawn(opts).await?;
        connected(&mut events, "edgecore connects").await?;
        let took = t0.elapsed();
        println!("  run {:>2}: {:>6.1} ms", run + 1, ms(took));
        times.push(took);
        // Wait for the exit, so the next run's session does not overlap this one.
        let _ = edge.terminate(Duration::from_secs(10)).await;
    }
    summary("start → connected", &mut times);
    sim.stop().await;
    Ok(())
}

// ---------------------------------------------------------------- memory

async fn memory() -> Result<()> {
    println!(
        "\nmemory: /proc/<pid>/status of edgecore (messageQPS 0 = unpaced, so the sync is not 5 min at 30/s)"
    );
    let setup = Setup::new()?;
    let sim = setup.replica("cloud-a").await?;
    let mut opts = setup.edge_options(sim.addr(), "edge")?;
    opts.message_qps = 0;
    let config = opts.config_path();
    let db = opts.db_path();
    let mut events = sim.events();
    let mut edge = EdgeCore::spawn(opts).await?;
    connected(&mut events, "edgecore connects").await?;
    let pid = find_pid(&config).await?;

    // Idle: sample across a few pings after the session is up, report the last and the peak.
    let mut peak = Mem::default();
    let until = Instant::now() + IDLE_WINDOW;
    let mut idle = Mem::read(pid)?;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        idle = Mem::read(pid)?;
        peak = peak.max(idle);
    }
    println!("  idle, connected, no objects (after {IDLE_WINDOW:?}): {idle}");

    let cluster: Arc<Cluster> = Arc::clone(sim.cluster());
    let t0 = Instant::now();
    let writer = {
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || -> Result<()> {
            for i in 0..MEMORY_OBJECTS {
                feed::write(&cluster, FeedKind::Mixed.kind_of(i), i, 0)?;
            }
            Ok(())
        })
    };
    // Sample while the objects are written and synced.
    let deadline = Instant::now() + SYNC_WITHIN;
    let mut writer = Some(writer);
    let mut last_check = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        edge.check_running()?;
        peak = peak.max(Mem::read(pid)?);
        if let Some(w) = writer.take_if(|w| w.is_finished()) {
            w.await.context("feed task")??;
            println!(
                "  {MEMORY_OBJECTS} mixed objects written to the cluster in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
        }
        // The full comparison reads both databases: do it once a second, after the writes.
        if writer.is_none() && last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            if synced(&cluster, &db).await? {
                break;
            }
        }
        if Instant::now() >= deadline {
            bail!("edge store did not equal the cluster within {SYNC_WITHIN:?}");
        }
    }
    let synced_after = t0.elapsed();
    let after = Mem::read(pid)?;
    println!(
        "  synced: edge store equals the cluster's {MEMORY_OBJECTS} objects {:.1} s after the first write",
        synced_after.as_secs_f64()
    );
    println!("  after {MEMORY_OBJECTS} objects synced: {after}");
    println!(
        "  peak during the run: VmRSS {}, VmHWM {}",
        kib(peak.rss_kib),
        kib(after.hwm_kib)
    );
    println!(
        "  targets: ≤ 8 MB idle, ≤ 10 MB after {MEMORY_OBJECTS} objects (Go edgecore: 70 MB / 77 MB)"
    );
    let _ = edge.terminate(Duration::from_secs(10)).await;
    sim.stop().await;
    Ok(())
}

async fn synced(cluster: &Arc<Cluster>, db: &Path) -> Result<bool> {
    let cluster = Arc::clone(cluster);
    let db = db.to_owned();
    tokio::task::spawn_blocking(move || -> Result<bool> {
        let objects = cluster.objects()?;
        // The edge may be mid-write; an unreadable store counts as not synced yet.
        Ok(read_meta(&db).is_ok_and(|meta| diff(&objects, &meta).is_empty()))
    })
    .await
    .context("compare task")?
}

/// The pid of the edgecore running with `config` (the harness does not expose its child's pid).
async fn find_pid(config: &Path) -> Result<u32> {
    let needle = config.as_os_str().as_encoded_bytes().to_vec();
    cloudsim::eventually(
        "the edgecore process in /proc",
        Duration::from_secs(10),
        || {
            let needle = needle.clone();
            async move {
                for entry in std::fs::read_dir("/proc")?.flatten() {
                    let Some(pid) = entry
                        .file_name()
                        .to_str()
                        .and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    if cmdline
                        .split(|b| *b == 0)
                        .any(|arg| arg == needle.as_slice())
                    {
                        return Ok(pid);
                    }
                }
                bail!(
                    "no process has {} on its command line",
                    String::from_utf8_lossy(&needle)
                )
            }
        },
    )
    .await
}

// ---------------------------------------------------------------- failover

async fn failover(runs: usize) -> Result<()> {
    println!(
        "\nfailover: VIP moves to a fresh replica, {runs} runs per mode, each new session held {} s (past stableAfterMs 10 s); link defaults: heartbeat 15 s, ping 2000 ms, timeout 5000 ms, backoff cap 3000 ms",
        HOLD.as_secs()
    );
    let setup = Setup::new()?;
    let mut current = setup.replica("cloud-0").await?;
    for i in 0..FAILOVER_OBJECTS {
        feed::write(current.cluster(), FeedKind::Mixed.kind_of(i), i, 0)?;
    }
    let vip = VipProxy::start("127.0.0.1:0".parse()?, current.addr()).await?;
    let opts = setup.edge_options(vip.addr(), "edge")?;
    let mut events = current.events();
    let mut edge = EdgeCore::spawn(opts).await?;
    connected(&mut events, "edgecore connects to cloud-0").await?;
    tokio::time::sleep(HOLD).await;

    let mut rst_reconnect = Vec::with_capacity(runs);
    let mut silent_detect = Vec::with_capacity(runs);
    let mut silent_reconnect = Vec::with_capacity(runs);
    let mut n = 0usize;
    for (mode, label) in [(Mode::Rst, "reset"), (Mode::Silent, "silent")] {
        for run in 0..runs {
            n += 1;
            let next = setup.replica(&format!("cloud-{n}")).await?;
            let mut events = next.events();
            let mark = edge.log_len();
            let moved = Instant::now();
            vip.move_to(next.addr(), mode);
            let lost = edge.wait_log(mark, "session lost", FAILOVER_WITHIN).await?;
            events
                .wait_for(
                    FAILOVER_WITHIN,
                    "edgecore connects to the new replica",
                    |e| matches!(e, Event::Connected { .. }),
                )
                .await?;
            let up = moved.elapsed();
            let detect = lost.duration_since(moved);
            println!(
                "  {label} {:>2}: detected {:>7.1} ms, connected to the new replica {:>7.1} ms",
                run + 1,
                ms(detect),
                ms(up)
            );
            match mode {
                Mode::Rst => rst_reconnect.push(up),
                Mode::Silent => {
                    silent_detect.push(detect);
                    silent_reconnect.push(up);
                }
            }
            edge.check_running()?;
            let old = std::mem::replace(&mut current, next);
            old.stop().await;
            // Not a synchronisation: the session must outlive stableAfterMs (see HOLD).
            tokio::time::sleep(HOLD).await;
        }
    }
    println!();
    summary("reset move → connected (target ≤ 1 s)", &mut rst_reconnect);
    summary(
        "silent move → \"session lost\" (target ≤ 10 s)",
        &mut silent_detect,
    );
    summary("silent move → connected", &mut silent_reconnect);
    let _ = edge.terminate(Duration::from_secs(10)).await;
    current.stop().await;
    vip.stop().await;
    Ok(())
}

// ---------------------------------------------------------------- size and helpers

async fn size(bin: &Path) {
    println!("\nbinary: {}", bin.display());
    match std::fs::metadata(bin) {
        Ok(m) => println!(
            "  on disk: {} B ({:.2} MiB)",
            m.len(),
            m.len() as f64 / 1048576.0
        ),
        Err(e) => println!("  on disk: unreadable ({e})"),
    }
    let Ok(tmp) = tempfile::tempdir() else {
        println!("  stripped: not measured (no temporary directory)");
        return;
    };
    let out = tmp.path().join("edgecore.stripped");
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(bin)
            .status(),
    )
    .await;
    match (status, std::fs::metadata(&out)) {
        (Ok(Ok(s)), Ok(m)) if s.success() => println!(
            "  stripped (strip -o): {} B ({:.2} MiB)",
            m.len(),
            m.len() as f64 / 1048576.0
        ),
        _ => println!("  stripped: not measured (`strip` failed or is missing)"),
    }
}

/// "release" or "debug", from the cargo output directory the binary sits in.
fn profile_of(bin: &Path) -> &'static str {
    let parts: Vec<_> = bin.components().map(|c| c.as_os_str()).collect();
    if parts.iter().any(|c| *c == "release") {
        "release (cargo release profile)"
    } else if parts.iter().any(|c| *c == "debug") {
        "DEBUG (unoptimised edgecore: numbers are not the product's)"
    } else {
        "unknown profile (EDGECORE_BIN outside a cargo target dir)"
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let v: Vec<&str> = s.split_whitespace().take(3).collect();
            (v.len() == 3).then(|| v.join(" "))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(what: &str, times: &mut [Duration]) {
    times.sort();
    let (Some(min), Some(max)) = (times.first(), times.last()) else {
        println!("  {what}: no runs");
        return;
    };
    let mid = times.len() / 2;
    let median = if times.len() % 2 == 1 {
        times.get(mid).copied().unwrap_or_default()
    } else {
        (times.get(mid - 1).copied().unwrap_or_default()
            + times.get(mid).copied().unwrap_or_default())
            / 2
    };
    println!(
        "  {what}: min {:.1} ms, median {:.1} ms, max {:.1} ms ({} runs)",
        ms(*min),
        ms(median),
        ms(*max),
        times.len()
    );
}
