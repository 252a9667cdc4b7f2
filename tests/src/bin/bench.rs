//! Benchmark of the real `edgecore` against the simulator: failover times, memory, startup and
//! binary size. Prints numbers; asserts nothing about them.
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
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloudsim::edge::{EdgeCore, EdgeOptions, diff, edgecore_binary, read_meta};
use cloudsim::feed::{self, FeedKind};
use cloudsim::{CloudSim, Cluster, Event, EventStream, Mode, Pki, PkiOptions, SimConfig, VipProxy};

const NODE: &str = "bench-node";
/// Objects in the cluster during the failover runs (each session resyncs them).
const FAILOVER_OBJECTS: usize = 30;
/// Objects synced for the second memory reading.
const MEMORY_OBJECTS: usize = 10_000;
/// How long the idle reading samples, after the session is up.
const IDLE_WINDOW: Duration = Duration::from_secs(6);
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
}

#[tokio::main]
async fn main() -> Result<()> {
    let (what, runs) = parse_args(std::env::args().skip(1))?;
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
    size(&bin).await;
    if matches!(what, What::All | What::Startup) {
        startup(runs).await?;
    }
    if matches!(what, What::All | What::Memory) {
        memory().await?;
    }
    if matches!(what, What::All | What::Failover) {
        failover(runs).await?;
    }
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(What, usize)> {
    let mut what = What::All;
    let mut runs = 20usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "all" => what = What::All,
            "failover" => what = What::Failover,
            "memory" => what = What::Memory,
            "startup" => what = What::Startup,
            "--runs" => {
                let n = args.next().context("--runs needs a number")?;
                runs = n
                    .parse()
                    .with_context(|| format!("--runs {n:?} is not a number"))?;
                if runs == 0 {
                    bail!("--runs must be at least 1");
                }
            }
            other => bail!(
                "unknown argument {other:?}; usage: bench [all|failover|memory|startup] [--runs N]"
            ),
        }
    }
    Ok((what, runs))
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
        let mut opts =
            EdgeOptions::new(NODE, &server.to_string(), paths, &self.dir.path().join(sub));
        opts.heartbeat = 15;
        opts.ping_interval_ms = 2_000;
        opts.ping_timeout_ms = 5_000;
        opts.backoff_max_ms = 3_000;
        Ok(opts)
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
    let mut idle = read_mem(pid)?;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        idle = read_mem(pid)?;
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
        peak = peak.max(read_mem(pid)?);
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
    let after = read_mem(pid)?;
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

#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss_kib: u64,
    anon_kib: u64,
    hwm_kib: u64,
}

impl Mem {
    fn max(self, o: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib.max(o.rss_kib),
            anon_kib: self.anon_kib.max(o.anon_kib),
            hwm_kib: self.hwm_kib.max(o.hwm_kib),
        }
    }
}

impl std::fmt::Display for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {}, RssAnon {}, VmHWM {}",
            kib(self.rss_kib),
            kib(self.anon_kib),
            kib(self.hwm_kib)
        )
    }
}

fn kib(k: u64) -> String {
    format!("{k} kB ({:.2} MiB)", k as f64 / 1024.0)
}

fn read_mem(pid: u32) -> Result<Mem> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Mem {
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
        hwm_kib: field("VmHWM:")?,
    })
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
            let mark = log_len(&edge);
            let moved = Instant::now();
            vip.move_to(next.addr(), mode);
            let lost = wait_log(&edge, mark, "session lost").await?;
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

fn log_len(edge: &EdgeCore) -> u64 {
    std::fs::metadata(edge.options().dir.join("edgecore.log")).map_or(0, |m| m.len())
}

/// When the edgecore log, past byte `from`, first contains `needle` (polled every 10 ms).
async fn wait_log(edge: &EdgeCore, from: u64, needle: &str) -> Result<Instant> {
    let path = edge.options().dir.join("edgecore.log");
    let deadline = Instant::now() + FAILOVER_WITHIN;
    while Instant::now() < deadline {
        let bytes = std::fs::read(&path).unwrap_or_default();
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
        if String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).contains(needle) {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("edgecore did not log {needle:?} within {FAILOVER_WITHIN:?}")
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
