//! The real `edgecore` binary as a child process, and the comparison of its SQLite `meta` table
//! with the cluster state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use crate::cluster::{Cluster, Object};
use crate::pki::PkiPaths;
use crate::wait::eventually;

/// Resource types the simulator pushes; other `meta` rows (node, patches, leases) are ignored.
pub const PUSHED_TYPES: [&str; 3] = ["configmap", "pod", "secret"];

/// What goes into the generated edgecore.yaml.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// `modules.edged.hostnameOverride`.
    pub node: String,
    /// `modules.edgeHub.websocket.server`, `host:port`.
    pub server: String,
    /// Certificates.
    pub pki: PkiPaths,
    /// Directory for the config, the database and the log.
    pub dir: PathBuf,
    /// `modules.edgeHub.heartbeat` in seconds.
    pub heartbeat: u32,
    /// `modules.edgeHub.failover.pingIntervalMs`.
    pub ping_interval_ms: u64,
    /// `modules.edgeHub.failover.pingTimeoutMs`.
    pub ping_timeout_ms: u64,
    /// `modules.edgeHub.failover.connectTimeoutMs`.
    pub connect_timeout_ms: u64,
    /// `modules.edgeHub.failover.backoffMaxMs`.
    pub backoff_max_ms: u64,
    /// `modules.edgeHub.messageQPS` (KubeEdge default 30, acks included; ≤ 0 = unlimited).
    pub message_qps: i32,
    /// `modules.edged`: disabled when `None`.
    pub edged: Option<EdgedOptions>,
    /// `database.dataSource` somewhere else than `dir` (a small or read-only disk in a test).
    pub data_source: Option<PathBuf>,
    /// Extra environment for the process (e.g. `LD_PRELOAD` of libfaketime).
    pub env: Vec<(String, String)>,
    /// `modules.metaManager.metaServer.server` with MetaServer enabled; off when `None`.
    pub meta_server: Option<String>,
}

/// `modules.edged` when enabled: where the runtime is and where pods leave files.
#[derive(Debug, Clone)]
pub struct EdgedOptions {
    /// `tailoredKubeletConfig.containerRuntimeEndpoint`, e.g. `unix:///run/containerd.sock`.
    pub runtime_endpoint: String,
    /// `rootDirectory`: pod volumes.
    pub root_directory: PathBuf,
    /// `tailoredKubeletConfig.podLogsDir`: container logs.
    pub pod_logs_dir: PathBuf,
    /// `tailoredKubeletConfig.runtimeRequestTimeout` in seconds.
    pub runtime_request_timeout_secs: u32,
    /// `tailoredKubeletConfig.nodeStatusUpdateFrequency` in seconds.
    pub node_status_update_secs: u32,
    /// `tailoredKubeletConfig.nodeLeaseDurationSeconds` (renewed every quarter of it).
    pub node_lease_duration_secs: u32,
    /// `tailoredKubeletConfig.cgroupRoot`: where the pods' cgroups go (empty: the top).
    pub cgroup_root: String,
}

impl EdgedOptions {
    /// A runtime at `endpoint`; volumes and logs under `dir`.
    pub fn new(endpoint: &str, dir: &Path) -> Self {
        Self {
            runtime_endpoint: endpoint.to_owned(),
            root_directory: dir.join("edged"),
            pod_logs_dir: dir.join("pods"),
            runtime_request_timeout_secs: 30,
            node_status_update_secs: 2,
            node_lease_duration_secs: 4,
            cgroup_root: String::new(),
        }
    }
}

impl EdgeOptions {
    /// Defaults tuned for tests: 2 s heartbeat, 500 ms pings with a 2 s timeout.
    pub fn new(node: &str, server: &str, pki: PkiPaths, dir: &Path) -> Self {
        Self {
            node: node.to_owned(),
            server: server.to_owned(),
            pki,
            dir: dir.to_owned(),
            heartbeat: 2,
            ping_interval_ms: 500,
            ping_timeout_ms: 2_000,
            connect_timeout_ms: 2_000,
            backoff_max_ms: 1_000,
            message_qps: 30,
            edged: None,
            data_source: None,
            env: Vec::new(),
            meta_server: None,
        }
    }

    /// The product's link defaults (edgecore.yaml's heartbeat, ping interval and timeout, and
    /// backoff cap) in place of the fast ones of [`EdgeOptions::new`].
    pub fn with_product_link_defaults(mut self) -> Self {
        let hub = config::EdgeCoreConfig::default().modules.edge_hub;
        self.heartbeat = hub.heartbeat;
        self.ping_interval_ms = hub.failover.ping_interval_ms;
        self.ping_timeout_ms = hub.failover.ping_timeout_ms;
        self.backoff_max_ms = hub.failover.backoff_max_ms;
        self
    }

    /// The SQLite file: `data_source`, else `edgecore.db` in `dir`.
    pub fn db_path(&self) -> PathBuf {
        self.data_source
            .clone()
            .unwrap_or_else(|| self.dir.join("edgecore.db"))
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("edgecore.yaml")
    }

    /// edgecore.yaml text.
    pub fn config_yaml(&self) -> String {
        let q = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap_or_default();
        let edged = match &self.edged {
            None => format!(
                "  edged:
    enable: false
    hostnameOverride: {node}
",
                node = self.node
            ),
            Some(e) => format!(
                "  edged:
    enable: true
    hostnameOverride: {node}
    rootDirectory: {root}
    tailoredKubeletConfig:
      containerRuntimeEndpoint: {endpoint}
      podLogsDir: {logs}
      runtimeRequestTimeout: {timeout}s
      nodeStatusUpdateFrequency: {status}s
      nodeLeaseDurationSeconds: {lease}
      cgroupRoot: {cgroup_root}
",
                node = self.node,
                root = q(&e.root_directory),
                endpoint = serde_json::to_string(&e.runtime_endpoint).unwrap_or_default(),
                logs = q(&e.pod_logs_dir),
                timeout = e.runtime_request_timeout_secs,
                status = e.node_status_update_secs,
                lease = e.node_lease_duration_secs,
                cgroup_root = serde_json::to_string(&e.cgroup_root).unwrap_or_default(),
            ),
        };
        format!(
            "apiVersion: edgecore.config.kubeedge.io/v1alpha2
kind: EdgeCore
database:
  dataSource: {db}
modules:
  edgeHub:
    enable: true
    heartbeat: {heartbeat}
    messageQPS: {qps}
    tlsCaFile: {ca}
    tlsCertFile: {cert}
    tlsPrivateKeyFile: {key}
    websocket:
      enable: true
      server: {server}
    failover:
      pingIntervalMs: {pi}
      pingTimeoutMs: {pt}
      connectTimeoutMs: {ct}
      backoffInitialMs: 50
      backoffMaxMs: {bm}
  metaManager:
    enable: true
{meta_server}  health:
    enable: true
    address: 127.0.0.1:0
{edged}",
            meta_server = self
                .meta_server
                .as_ref()
                .map_or(String::new(), |addr| format!(
                    "    metaServer:\n      enable: true\n      server: {}\n",
                    serde_json::to_string(addr).unwrap_or_default()
                )),
            db = q(&self.db_path()),
            heartbeat = self.heartbeat,
            qps = self.message_qps,
            ca = q(&self.pki.ca_crt),
            cert = q(&self.pki.edge_crt),
            key = q(&self.pki.edge_key),
            server = self.server,
            pi = self.ping_interval_ms,
            pt = self.ping_timeout_ms,
            ct = self.connect_timeout_ms,
            bm = self.backoff_max_ms,
        )
    }
}

/// Path of the `edgecore` binary: `$EDGECORE_BIN`, else built once with
/// `cargo build --workspace --bin edgecore` (honouring `CARGO_TARGET_DIR`; cargo's progress
/// shows on stderr).
pub fn edgecore_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("EDGECORE_BIN") {
        return Ok(PathBuf::from(p));
    }
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_edgecore().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_edgecore() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_owned();
    let mut cmd = std::process::Command::new(cargo);
    // `cargo test` runs this with the variables it sets for the test (CARGO_MANIFEST_DIR,
    // CARGO_PKG_NAME, ...). Build scripts that rerun when those change (ring's) would then be
    // rebuilt here, and again by the next `cargo test`: keep them out of the child's way.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    // `--workspace` builds with the features the whole workspace unifies to, which are the ones
    // `cargo test` and `cargo run -p edgecore-tests` built the dependencies with: nothing is
    // compiled twice (`-p edgecore` alone rebuilt dozens of crates, minutes on a fresh clone).
    eprintln!("building edgecore: cargo build --workspace --bin edgecore");
    let out = cmd
        .args([
            "build",
            "--workspace",
            "--bin",
            "edgecore",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .context("run cargo build -p edgecore")?;
    if !out.status.success() {
        bail!("cargo build -p edgecore failed: {}", out.status);
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "edgecore"
            && let Some(exe) = v["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo build -p edgecore reported no edgecore executable")
}

/// A running edgecore; killed on drop.
#[derive(Debug)]
pub struct EdgeCore {
    child: tokio::process::Child,
    opts: EdgeOptions,
}

impl EdgeCore {
    /// Writes the config and starts `edgecore --config <file>`; output goes to `edgecore.log`.
    pub async fn spawn(opts: EdgeOptions) -> Result<Self> {
        let bin = tokio::task::spawn_blocking(edgecore_binary).await??;
        std::fs::create_dir_all(&opts.dir)?;
        std::fs::write(opts.config_path(), opts.config_yaml())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.dir.join("edgecore.log"))?;
        let child = tokio::process::Command::new(&bin)
            .arg("--config")
            .arg(opts.config_path())
            .env(
                "RUST_LOG",
                std::env::var("EDGECORE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Self { child, opts })
    }

    /// The options it runs with.
    pub fn options(&self) -> &EdgeOptions {
        &self.opts
    }

    /// Its SQLite file.
    pub fn db_path(&self) -> PathBuf {
        self.opts.db_path()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "edgecore exited with {status}; log tail:\n{}",
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// The address of its health endpoint (`modules.health`, port 0 in the generated config),
    /// from the last "health endpoint listening" line of its log; `None` before that line.
    pub fn health_addr(&self) -> Option<std::net::SocketAddr> {
        let text = std::fs::read_to_string(self.opts.dir.join("edgecore.log")).ok()?;
        text.lines()
            .rev()
            .find(|l| l.contains("health endpoint listening"))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))?
            .parse()
            .ok()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `kill -9`: no shutdown path runs. Waits for the exit and returns the options, so the
    /// same edge can be started again on the same data.
    pub async fn kill(mut self) -> Result<EdgeOptions> {
        self.child
            .start_kill()
            .context("send SIGKILL to edgecore")?;
        self.child
            .wait()
            .await
            .context("wait for the killed edgecore")?;
        Ok(self.opts.clone())
    }

    /// Length of its log so far: a mark for [`EdgeCore::wait_log`].
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(self.opts.dir.join("edgecore.log")).map_or(0, |m| m.len())
    }

    /// When its log, past byte `from`, first contains `needle` (polled every 10 ms, so the
    /// instant is that precise); fails after `within`.
    pub async fn wait_log(
        &self,
        from: u64,
        needle: &str,
        within: Duration,
    ) -> Result<std::time::Instant> {
        let path = self.opts.dir.join("edgecore.log");
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            let mut bytes = Vec::new();
            if let Ok(mut f) = std::fs::File::open(&path) {
                use std::io::{Read, Seek, SeekFrom};
                if f.seek(SeekFrom::Start(from)).is_ok() {
                    let _ = f.read_to_end(&mut bytes);
                }
            }
            if String::from_utf8_lossy(&bytes).contains(needle) {
                return Ok(std::time::Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("edgecore did not log {needle:?} within {within:?}")
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.opts.dir.join("edgecore.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then waits up to `grace` for the exit; SIGKILL after that.
    pub async fn terminate(mut self, grace: Duration) -> Result<Option<std::process::ExitStatus>> {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => {
                self.child.kill().await?;
                Ok(None)
            }
        }
    }
}

/// One row of the edge's `meta` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRow {
    /// `type` column.
    pub kind: String,
    /// `value` column.
    pub value: String,
}

/// The `meta` table of an edge database, key → row. A missing table reads as empty.
pub fn read_meta(db: &Path) -> Result<BTreeMap<String, MetaRow>> {
    let Some(conn) = open_table(db, "meta")? else {
        return Ok(BTreeMap::new());
    };
    let mut st = conn.prepare("SELECT key, type, COALESCE(value, '') FROM meta")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            MetaRow {
                kind: r.get(1)?,
                value: r.get(2)?,
            },
        ))
    })?;
    rows.map(|r| r.map_err(Into::into)).collect()
}

/// The edge's durable outbox (`edgecore_outbox`): key → the queued message's JSON, for status
/// it could not send yet. A missing table reads as empty.
pub fn read_outbox(db: &Path) -> Result<BTreeMap<String, Value>> {
    let Some(conn) = open_table(db, "edgecore_outbox")? else {
        return Ok(BTreeMap::new());
    };
    let mut st = conn.prepare("SELECT key, message FROM edgecore_outbox")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (key, message) = row?;
        let message = serde_json::from_str(&message)
            .with_context(|| format!("outbox row {key} is not JSON"))?;
        out.insert(key, message);
    }
    Ok(out)
}

/// Waits until the edge's store equals the cluster's live objects and every current version
/// sent to `node` was acked; the error carries the tail of edgecore's log.
pub async fn converged(
    cluster: &Arc<Cluster>,
    node: &str,
    edge: &mut EdgeCore,
    within: Duration,
) -> Result<()> {
    let db = edge.db_path();
    let res = eventually(
        "edge store equal to the cluster, all current versions acked",
        within,
        || {
            let running = edge.check_running();
            let (db, cluster, node) = (db.clone(), Arc::clone(cluster), node.to_owned());
            async move {
                running?;
                // SQLite reads block: off the runtime's workers.
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let objects = cluster.objects()?;
                    let meta = if db.exists() {
                        read_meta(&db)?
                    } else {
                        BTreeMap::new()
                    };
                    let diffs = diff(&objects, &meta);
                    anyhow::ensure!(
                        diffs.is_empty(),
                        "{} differences, first: {:?}",
                        diffs.len(),
                        &diffs[..diffs.len().min(3)]
                    );
                    let unacked = cluster.unacked_current(&node)?;
                    anyhow::ensure!(
                        unacked.is_empty(),
                        "{} current versions not acked, first: {:?}",
                        unacked.len(),
                        unacked.first()
                    );
                    Ok(())
                })
                .await?
            }
        },
    )
    .await;
    res.map_err(|e| anyhow::anyhow!("{e:#}\nedgecore log tail:\n{}", edge.log_tail(30)))
}

/// Opens an edge database for reading beside a running edgecore (read-write open, so the WAL
/// is shared, but `query_only`); `None` when `table` does not exist yet.
fn open_table(db: &Path, table: &str) -> Result<Option<Connection>> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "query_only", true)?;
    let exists: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type='table' AND name=?1",
        [table],
        |r| r.get(0),
    )?;
    Ok(exists.then_some(conn))
}

/// Differences between the live objects and the edge's rows of [`PUSHED_TYPES`]; empty = equal.
/// Checks the key set, and per key the uid and resourceVersion in the stored JSON.
pub fn diff(objects: &[Object], meta: &BTreeMap<String, MetaRow>) -> Vec<String> {
    let mut out = Vec::new();
    let mut expected: BTreeMap<String, &Object> = BTreeMap::new();
    for o in objects {
        if PUSHED_TYPES.contains(&o.kind.as_str()) {
            expected.insert(o.resource(), o);
        }
    }
    for (key, o) in &expected {
        let Some(row) = meta.get(key) else {
            out.push(format!("missing {key} (rv {})", o.rv));
            continue;
        };
        let v: Value = match serde_json::from_str(&row.value) {
            Ok(v) => v,
            Err(e) => {
                out.push(format!("{key}: value is not JSON: {e}"));
                continue;
            }
        };
        let rv = v
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if rv != Some(o.rv.to_string().as_str()) {
            out.push(format!("{key}: edge rv {rv:?}, cloud rv {}", o.rv));
        }
        let uid = v.pointer("/metadata/uid").and_then(Value::as_str);
        if uid != Some(o.uid.as_str()) {
            out.push(format!("{key}: edge uid {uid:?}, cloud uid {}", o.uid));
        }
    }
    for (key, row) in meta {
        if PUSHED_TYPES.contains(&row.kind.as_str()) && !expected.contains_key(key) {
            out.push(format!("extra {key}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_reports_missing_extra_and_stale() {
        let obj = |name: &str, rv: u64| Object {
            uid: format!("u-{name}"),
            namespace: "default".into(),
            kind: "configmap".into(),
            name: name.into(),
            rv,
            body: Value::Null,
            deleted: false,
        };
        let row = |name: &str, rv: &str| {
            (
                format!("default/configmap/{name}"),
                MetaRow {
                    kind: "configmap".into(),
                    value: json!({"metadata": {"uid": format!("u-{name}"), "resourceVersion": rv}})
                        .to_string(),
                },
            )
        };
        let mut meta: BTreeMap<_, _> = [row("a", "1"), row("b", "1"), row("c", "3")].into();
        meta.insert(
            "default/nodepatch/n".into(),
            MetaRow {
                kind: "nodepatch".into(),
                value: "{}".into(),
            },
        );
        let d = diff(&[obj("a", 1), obj("b", 2), obj("d", 4)], &meta);
        assert_eq!(
            d,
            [
                "default/configmap/b: edge rv Some(\"1\"), cloud rv 2",
                "missing default/configmap/d (rv 4)",
                "extra default/configmap/c",
            ]
        );
        assert!(diff(&[obj("a", 1)], &[row("a", "1")].into()).is_empty());
    }
}
