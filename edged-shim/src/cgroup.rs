//! Pod-level cgroups as the kubelet lays them out (`pkg/kubelet/cm`): with `cgroupsPerQOS` every
//! pod gets `<cgroupRoot>/kubepods/<qos>/pod<uid>` (guaranteed pods sit right under `kubepods`),
//! named per `cgroupDriver` (`/kubepods/burstable/pod<uid>` for cgroupfs,
//! `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice` for systemd, with
//! the UID's dashes as underscores). The sandbox is created with that cgroup as its parent, so
//! every container of the pod runs inside it.
//!
//! With the cgroupfs driver edged-shim makes the cgroup before the sandbox and writes the pod's
//! limits into it (cgroup v1 `cpu.shares`, `cpu.cfs_quota_us`, `memory.limit_in_bytes`; v2
//! `cpu.weight`, `cpu.max`, `memory.max`), and the best-effort QoS cgroup gets the minimum CPU
//! shares. With the systemd driver the slices are systemd's to make (the runtime asks systemd
//! when it creates the sandbox); once the sandbox is there the pod's limits are written into the
//! slice's cgroup files, as runc's systemd driver also writes its own (systemd is not told of
//! them: the kubelet would set them as unit properties over D-Bus). The runtime removes only
//! container cgroups, so the pod's is removed here once its sandbox is gone.

use std::io;
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::resources::{PodResources, QosClass};

/// Where cgroup hierarchies are mounted.
pub(crate) const MOUNT: &str = "/sys/fs/cgroup";

/// `cgroupDriver`: who names and makes cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    /// Paths in the cgroup filesystem, made by the kubelet (here: edged-shim) and the runtime.
    Cgroupfs,
    /// systemd slices.
    Systemd,
}

/// Where pods' cgroups go: `cgroupDriver`, `cgroupsPerQOS` and `cgroupRoot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// `cgroupDriver`.
    pub driver: CgroupDriver,
    /// `cgroupsPerQOS`: a cgroup per QoS class and per pod. Off, pods go straight under the
    /// root (the runtime's default place when the root is empty).
    pub per_qos: bool,
    /// `cgroupRoot`: the cgroup the `kubepods` tree goes under; empty or `/` for the top. A
    /// path for cgroupfs (`/edge`), a slice for systemd (`/edge.slice`).
    pub root: String,
    /// Where the cgroup hierarchies are mounted (`/sys/fs/cgroup`; tests use a directory of their
    /// own).
    pub mount: PathBuf,
}

/// A failed cgroup write, with the file it was for.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub(crate) struct CgroupError {
    path: PathBuf,
    source: io::Error,
}

impl CgroupLayout {
    /// The root's name components (`/a/b` → `[a, b]`; `/a.slice/a-b.slice` → `[a, b]`).
    fn root_parts(&self) -> Vec<String> {
        match self.driver {
            CgroupDriver::Cgroupfs => self
                .root
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            CgroupDriver::Systemd => {
                let last = self.root.rsplit('/').find(|p| !p.is_empty()).unwrap_or("");
                let stem = last.strip_suffix(".slice").unwrap_or(last);
                if stem.is_empty() || stem == "-" {
                    return Vec::new();
                }
                stem.split('-').map(|p| p.replace('_', "-")).collect()
            }
        }
    }

    /// The QoS class's cgroup as name components; guaranteed pods use `kubepods` itself.
    fn qos_name(&self, qos: QosClass) -> Vec<String> {
        let mut name = self.root_parts();
        name.push("kubepods".to_owned());
        match qos {
            QosClass::Guaranteed => {}
            QosClass::Burstable => name.push("burstable".to_owned()),
            QosClass::BestEffort => name.push("besteffort".to_owned()),
        }
        name
    }

    fn pod_name(&self, qos: QosClass, uid: &str) -> Vec<String> {
        let mut name = self.qos_name(qos);
        name.push(format!("pod{uid}"));
        name
    }

    /// A name as the driver writes it: `/a/b/c`, or `/a.slice/a-b.slice/a-b-c.slice`.
    fn render(&self, name: &[String]) -> String {
        match self.driver {
            CgroupDriver::Cgroupfs => format!("/{}", name.join("/")),
            CgroupDriver::Systemd => {
                let mut out = String::new();
                let mut unit = String::new();
                for part in name {
                    if !unit.is_empty() {
                        unit.push('-');
                    }
                    unit.push_str(&part.replace('-', "_"));
                    out.push('/');
                    out.push_str(&unit);
                    out.push_str(".slice");
                }
                if out.is_empty() { "/".to_owned() } else { out }
            }
        }
    }

    /// The sandbox's cgroup parent as the runtime gets it; `None` leaves it to the runtime.
    pub(crate) fn sandbox_parent(&self, qos: QosClass, uid: &str) -> Option<String> {
        if self.per_qos {
            return Some(self.render(&self.pod_name(qos, uid)));
        }
        let root = self.root_parts();
        (!root.is_empty()).then(|| self.render(&root))
    }

    /// Before the pod's sandbox: with cgroupfs, makes the pod's cgroup and writes its limits.
    /// A hierarchy that is not mounted, or a knob the kernel lacks, is skipped.
    pub(crate) fn before_sandbox(
        &self,
        qos: QosClass,
        uid: &str,
        limits: &PodResources,
    ) -> Result<(), CgroupError> {
        self.apply(CgroupDriver::Cgroupfs, qos, uid, limits)
    }

    /// After the pod's sandbox: with systemd, whose slices the runtime had systemd make,
    /// writes the pod's limits into the slice's cgroup files (as runc's systemd driver also
    /// writes them there).
    pub(crate) fn after_sandbox(
        &self,
        qos: QosClass,
        uid: &str,
        limits: &PodResources,
    ) -> Result<(), CgroupError> {
        self.apply(CgroupDriver::Systemd, qos, uid, limits)
    }

    fn apply(
        &self,
        when: CgroupDriver,
        qos: QosClass,
        uid: &str,
        limits: &PodResources,
    ) -> Result<(), CgroupError> {
        if !self.per_qos || self.driver != when || !safe_uid(uid) {
            return Ok(());
        }
        let make = self.driver == CgroupDriver::Cgroupfs;
        let mount = &self.mount;
        let qos_dir = rel(&self.render(&self.qos_name(qos)));
        let pod_dir = rel(&self.render(&self.pod_name(qos, uid)));
        if mount.join("cgroup.controllers").is_file() {
            ensure_v2(mount, &qos_dir, &pod_dir, qos, limits, make)
        } else {
            ensure_v1(mount, &qos_dir, &pod_dir, qos, limits, make)
        }
    }

    /// The pod's cgroup directories that exist, in every hierarchy and under whichever QoS
    /// class it was made.
    pub(crate) fn pod_dirs(&self, uid: &str) -> Vec<PathBuf> {
        if !self.per_qos || !safe_uid(uid) {
            return Vec::new();
        }
        [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ]
        .into_iter()
        .flat_map(|qos| hierarchy_dirs(&self.mount, &rel(&self.render(&self.pod_name(qos, uid)))))
        .collect()
    }

    /// Removes the pod's (now empty) cgroups; best effort.
    pub(crate) fn remove_pod(&self, uid: &str) {
        for dir in self.pod_dirs(uid) {
            remove_tree(&dir);
        }
    }
}

/// A UID that names one path component.
fn safe_uid(uid: &str) -> bool {
    !uid.is_empty() && !uid.contains('/') && !uid.contains("..")
}

fn rel(rendered: &str) -> PathBuf {
    PathBuf::from(rendered.trim_start_matches('/'))
}

/// Every place `relative` can be: the v2 root, or each v1 controller's hierarchy.
fn hierarchy_dirs(mount: &Path, relative: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![mount.join(relative)];
    if let Ok(entries) = std::fs::read_dir(mount) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path().join(relative));
            }
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    match std::fs::write(&path, value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            debug!(path = %path.display(), "cgroup knob missing; skipped");
            Ok(())
        }
        Err(source) => Err(CgroupError { path, source }),
    }
}

fn make(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError {
        path: dir.to_owned(),
        source,
    })
}

/// Writes the limits in each v1 hierarchy; `make` creates the directories, else a hierarchy
/// without the pod's directory is left alone.
fn ensure_v1(
    mount: &Path,
    qos_dir: &Path,
    pod_dir: &Path,
    qos: QosClass,
    limits: &PodResources,
    make_dirs: bool,
) -> Result<(), CgroupError> {
    let ready = |dir: &Path| -> Result<bool, CgroupError> {
        if make_dirs {
            make(dir)?;
            Ok(true)
        } else {
            Ok(dir.is_dir())
        }
    };
    let cpu = mount.join("cpu");
    let dir = cpu.join(pod_dir);
    if cpu.is_dir() && ready(&dir)? {
        if qos == QosClass::BestEffort {
            write(&cpu.join(qos_dir), "cpu.shares", "2")?;
        }
        write(&dir, "cpu.shares", &limits.cpu_shares.to_string())?;
        if let Some(quota) = limits.cpu_quota {
            write(
                &dir,
                "cpu.cfs_period_us",
                &PodResources::CPU_PERIOD_US.to_string(),
            )?;
            write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
        }
    }
    let memory = mount.join("memory");
    let dir = memory.join(pod_dir);
    if memory.is_dir()
        && ready(&dir)?
        && let Some(bytes) = limits.memory_limit_bytes
    {
        write(&dir, "memory.limit_in_bytes", &bytes.to_string())?;
    }
    Ok(())
}

/// runc's conversion of CPU shares (2..262144) to a v2 weight (1..10000).
fn weight(shares: i64) -> i64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9_999 / 262_142
}

fn ensure_v2(
    mount: &Path,
    qos_dir: &Path,
    pod_dir: &Path,
    qos: QosClass,
    limits: &PodResources,
    make_dirs: bool,
) -> Result<(), CgroupError> {
    let dir = mount.join(pod_dir);
    if make_dirs {
        make(&dir)?;
        // Each parent hands the cpu and memory controllers down (one at a time: a controller
        // the kernel lacks must not keep the other off).
        let mut parent = mount.to_owned();
        for part in pod_dir.components() {
            for controller in ["+cpu", "+memory"] {
                if let Err(error) = write(&parent, "cgroup.subtree_control", controller) {
                    debug!(%error, "controller not enabled");
                }
            }
            parent.push(part);
        }
    } else if !dir.is_dir() {
        return Ok(());
    }
    if qos == QosClass::BestEffort {
        write(&mount.join(qos_dir), "cpu.weight", "1")?;
    }
    write(&dir, "cpu.weight", &weight(limits.cpu_shares).to_string())?;
    if let Some(quota) = limits.cpu_quota {
        write(
            &dir,
            "cpu.max",
            &format!("{quota} {}", PodResources::CPU_PERIOD_US),
        )?;
    }
    if let Some(bytes) = limits.memory_limit_bytes {
        write(&dir, "memory.max", &bytes.to_string())?;
    }
    Ok(())
}

/// Removes an empty cgroup tree, deepest first.
fn remove_tree(dir: &Path) {
    let mut subdirs: Vec<PathBuf> = Vec::new();
    collect_dirs(dir, &mut subdirs, 0);
    subdirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in subdirs
        .iter()
        .map(PathBuf::as_path)
        .chain(std::iter::once(dir))
    {
        if let Err(error) = std::fs::remove_dir(d) {
            debug!(path = %d.display(), %error, "pod cgroup not removed");
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    if depth > 8 {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                collect_dirs(&e.path(), out, depth + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(driver: CgroupDriver, root: &str) -> CgroupLayout {
        CgroupLayout {
            driver,
            per_qos: true,
            root: root.to_owned(),
            mount: PathBuf::from("/nonexistent"),
        }
    }

    fn at(mount: &Path, l: CgroupLayout) -> CgroupLayout {
        CgroupLayout {
            mount: mount.to_owned(),
            ..l
        }
    }

    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

    #[test]
    fn names_follow_the_kubelet_per_driver() {
        let fs = layout(CgroupDriver::Cgroupfs, "");
        assert_eq!(
            fs.sandbox_parent(QosClass::Burstable, UID).as_deref(),
            Some(format!("/kubepods/burstable/pod{UID}").as_str())
        );
        assert_eq!(
            fs.sandbox_parent(QosClass::Guaranteed, "u1").as_deref(),
            Some("/kubepods/podu1")
        );
        assert_eq!(
            layout(CgroupDriver::Cgroupfs, "/edge/")
                .sandbox_parent(QosClass::BestEffort, "u1")
                .as_deref(),
            Some("/edge/kubepods/besteffort/podu1")
        );
        let sd = layout(CgroupDriver::Systemd, "/");
        assert_eq!(
            sd.sandbox_parent(QosClass::Burstable, UID).as_deref(),
            Some(
                "/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice"
            )
        );
        assert_eq!(
            layout(CgroupDriver::Systemd, "/edge.slice/edge-site_a.slice")
                .sandbox_parent(QosClass::Guaranteed, "u1")
                .as_deref(),
            Some(
                "/edge.slice/edge-site_a.slice/edge-site_a-kubepods.slice/\
                 edge-site_a-kubepods-podu1.slice"
            )
        );
        // Without cgroupsPerQOS: the root, or the runtime's default.
        let flat = CgroupLayout {
            per_qos: false,
            ..layout(CgroupDriver::Cgroupfs, "/edge")
        };
        assert_eq!(
            flat.sandbox_parent(QosClass::Burstable, "u1").as_deref(),
            Some("/edge")
        );
        let none = CgroupLayout {
            per_qos: false,
            ..layout(CgroupDriver::Cgroupfs, "/")
        };
        assert_eq!(none.sandbox_parent(QosClass::Burstable, "u1"), None);
    }

    fn limits() -> PodResources {
        PodResources {
            cpu_shares: 102,
            cpu_quota: Some(50_000),
            memory_limit_bytes: Some(64 << 20),
        }
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn v1_gets_the_pods_limits_in_each_controller_and_loses_them_on_removal() {
        let mount = tempfile::tempdir().unwrap();
        for ctl in ["cpu", "memory", "pids"] {
            std::fs::create_dir(mount.path().join(ctl)).unwrap();
        }
        let l = at(mount.path(), layout(CgroupDriver::Cgroupfs, "/edge"));
        l.before_sandbox(QosClass::Burstable, "u1", &limits())
            .unwrap();
        let cpu = mount.path().join("cpu/edge/kubepods/burstable/podu1");
        assert_eq!(read(cpu.join("cpu.shares")), "102");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
        let mem = mount.path().join("memory/edge/kubepods/burstable/podu1");
        assert_eq!(read(mem.join("memory.limit_in_bytes")), "67108864");

        l.before_sandbox(
            QosClass::BestEffort,
            "u2",
            &PodResources {
                cpu_shares: 2,
                cpu_quota: None,
                memory_limit_bytes: None,
            },
        )
        .unwrap();
        let be = mount.path().join("cpu/edge/kubepods/besteffort");
        assert_eq!(read(be.join("cpu.shares")), "2");
        assert!(!be.join("podu2/cpu.cfs_quota_us").exists());

        // Files are not cgroups' own here; a real cgroup directory holds only knobs.
        for f in ["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"] {
            std::fs::remove_file(cpu.join(f)).unwrap();
        }
        std::fs::remove_file(mem.join("memory.limit_in_bytes")).unwrap();
        std::fs::create_dir_all(mount.path().join("pids/edge/kubepods/burstable/podu1/c1"))
            .unwrap();
        l.remove_pod("u1");
        assert!(!cpu.exists() && !mem.exists());
        assert!(
            !mount
                .path()
                .join("pids/edge/kubepods/burstable/podu1")
                .exists()
        );
        assert!(be.join("podu2").exists(), "another pod's stays");
    }

    #[test]
    fn v2_hands_the_controllers_down_and_writes_its_own_knobs() {
        let mount = tempfile::tempdir().unwrap();
        std::fs::write(mount.path().join("cgroup.controllers"), "cpu memory").unwrap();
        let l = at(mount.path(), layout(CgroupDriver::Cgroupfs, ""));
        l.before_sandbox(QosClass::Guaranteed, "u1", &limits())
            .unwrap();
        let pod = mount.path().join("kubepods/podu1");
        assert_eq!(read(pod.join("cpu.weight")), "4");
        assert_eq!(read(pod.join("cpu.max")), "50000 100000");
        assert_eq!(read(pod.join("memory.max")), "67108864");
        // The last controller written is what a plain file keeps; a cgroup keeps both.
        assert_eq!(
            read(mount.path().join("kubepods/cgroup.subtree_control")),
            "+memory"
        );
    }

    #[test]
    fn systemd_slices_get_the_limits_once_they_exist_and_are_never_made() {
        let mount = tempfile::tempdir().unwrap();
        std::fs::create_dir(mount.path().join("cpu")).unwrap();
        std::fs::create_dir(mount.path().join("memory")).unwrap();
        let sd = at(mount.path(), layout(CgroupDriver::Systemd, ""));
        sd.before_sandbox(QosClass::Burstable, "u-1", &limits())
            .unwrap();
        sd.after_sandbox(QosClass::Burstable, "u-1", &limits())
            .unwrap();
        assert_eq!(
            std::fs::read_dir(mount.path().join("cpu")).unwrap().count(),
            0
        );
        // The runtime had systemd make the slice.
        let slice = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podu_1.slice";
        for ctl in ["cpu", "memory"] {
            std::fs::create_dir_all(mount.path().join(ctl).join(slice)).unwrap();
        }
        sd.after_sandbox(QosClass::Burstable, "u-1", &limits())
            .unwrap();
        assert_eq!(
            read(
                mount
                    .path()
                    .join("cpu")
                    .join(slice)
                    .join("cpu.cfs_quota_us")
            ),
            "50000"
        );
        assert_eq!(
            read(
                mount
                    .path()
                    .join("memory")
                    .join(slice)
                    .join("memory.limit_in_bytes")
            ),
            "67108864"
        );
        assert_eq!(sd.pod_dirs("u-1").len(), 2);
        // cgroupfs writes before, never after; without cgroupsPerQOS nothing is written.
        let fs = at(mount.path(), layout(CgroupDriver::Cgroupfs, ""));
        fs.after_sandbox(QosClass::Burstable, "u2", &limits())
            .unwrap();
        assert!(!mount.path().join("cpu/kubepods/burstable/podu2").exists());
        let flat = CgroupLayout {
            per_qos: false,
            ..layout(CgroupDriver::Cgroupfs, "")
        };
        at(mount.path(), flat)
            .before_sandbox(QosClass::Burstable, "u3", &limits())
            .unwrap();
        assert!(!mount.path().join("cpu/kubepods").exists());
    }

    #[test]
    fn a_uid_that_is_not_one_path_component_is_refused() {
        let mount = tempfile::tempdir().unwrap();
        std::fs::create_dir(mount.path().join("cpu")).unwrap();
        let l = at(mount.path(), layout(CgroupDriver::Cgroupfs, ""));
        l.before_sandbox(QosClass::Burstable, "../x", &limits())
            .unwrap();
        assert_eq!(
            std::fs::read_dir(mount.path().join("cpu")).unwrap().count(),
            0
        );
    }
}
