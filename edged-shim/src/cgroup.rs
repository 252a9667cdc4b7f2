//! Pod-level cgroups: the runtime removes only container cgroups, so the pod's parent
//! (`<cgroupParent>/pod<uid>`) is removed here once the sandbox is gone.

use std::path::{Path, PathBuf};

use tracing::debug;

/// Every place the pod's cgroup can be: each v1 controller hierarchy, or the v2 root.
pub(crate) fn pod_cgroup_dirs(cgroup_root: &Path, parent: &str, uid: &str) -> Vec<PathBuf> {
    let rel = Path::new(parent.trim_start_matches('/')).join(format!("pod{uid}"));
    let mut dirs = vec![cgroup_root.join(&rel)];
    if let Ok(entries) = std::fs::read_dir(cgroup_root) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path().join(&rel));
            }
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Removes the pod's (now empty) cgroup directories, deepest first; best effort.
pub(crate) fn remove_pod_cgroups(cgroup_root: &Path, parent: &str, uid: &str) {
    if uid.is_empty() || uid.contains('/') || parent.contains("..") {
        return;
    }
    for dir in pod_cgroup_dirs(cgroup_root, parent, uid) {
        let mut subdirs: Vec<PathBuf> = Vec::new();
        collect_dirs(&dir, &mut subdirs, 0);
        subdirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in subdirs.iter().chain(std::iter::once(&dir)) {
            if let Err(error) = std::fs::remove_dir(d) {
                debug!(path = %d.display(), %error, "pod cgroup not removed");
            }
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

    #[test]
    fn removes_the_pod_directory_in_every_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        for ctl in ["cpu", "memory"] {
            std::fs::create_dir_all(root.path().join(ctl).join("kubepods/podu1/c1")).unwrap();
        }
        std::fs::create_dir_all(root.path().join("cpu/kubepods/podu2")).unwrap();
        assert_eq!(pod_cgroup_dirs(root.path(), "/kubepods", "u1").len(), 2);
        remove_pod_cgroups(root.path(), "/kubepods", "u1");
        assert!(!root.path().join("cpu/kubepods/podu1").exists());
        assert!(!root.path().join("memory/kubepods/podu1").exists());
        assert!(root.path().join("cpu/kubepods/podu2").exists());
    }
}
