//! A volume's files, written so that a running container sees an update all at once, in the
//! kubelet's layout (its AtomicWriter): the files live in a timestamped `..<time>` directory,
//! `..data` is a symlink to it, and every visible top-level name is a symlink through `..data`.
//! An update writes a new directory and swaps `..data` with one `rename`; the volume directory
//! itself (what the container has bind-mounted) never changes, so the container sees the new
//! files at once, and never a half-written set.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The link to the current files.
const DATA: &str = "..data";
/// The link being prepared before it replaces [`DATA`].
const DATA_TMP: &str = "..data_tmp";

/// One file of a volume: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct File {
    pub(crate) bytes: Vec<u8>,
    pub(crate) mode: u32,
}

/// Files by their path relative to the volume (already checked to stay inside it).
pub(crate) type Payload = BTreeMap<String, File>;

/// Makes `dir` hold exactly `payload`. Returns whether anything changed (an identical payload
/// is left alone, so an unchanged ConfigMap costs a read, not a write).
pub(crate) fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let current = current_target(dir);
    if let Some(target) = &current
        && read_payload(&dir.join(target))? == *payload
    {
        return Ok(false);
    }
    let generation = new_generation_dir(dir)?;
    for (rel, file) in payload {
        let path = generation.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &file.bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode & 0o777))?;
    }
    let generation_name = generation
        .file_name()
        .map(PathBuf::from)
        .ok_or_else(|| io::Error::other("generation directory without a name"))?;
    let tmp = dir.join(DATA_TMP);
    remove_any(&tmp)?;
    symlink(&generation_name, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;

    let visible: BTreeSet<String> = payload
        .keys()
        .filter_map(|rel| rel.split('/').next().map(str::to_owned))
        .collect();
    for name in &visible {
        let link = dir.join(name);
        let wanted = Path::new(DATA).join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(wanted.as_path()) {
            // A plain file or directory from an older layout, or a wrong link.
            remove_any(&link)?;
            symlink(&wanted, &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_link = !name.starts_with("..") && !visible.contains(&name);
        let old_generation = name.starts_with("..")
            && name != DATA
            && Some(PathBuf::from(&name)) != Some(generation_name.clone());
        if stale_link || old_generation {
            remove_any(&entry.path())?;
        }
    }
    Ok(true)
}

/// The generation directory `..data` points to, if it is one of ours.
fn current_target(dir: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(dir.join(DATA)).ok()?;
    let plain = target.components().count() == 1 && target.to_string_lossy().starts_with("..");
    (plain && dir.join(&target).is_dir()).then_some(target)
}

/// A new, empty `..<seconds>_<nanos>` directory in `dir`.
fn new_generation_dir(dir: &Path) -> io::Result<PathBuf> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    for attempt in 0u32..100 {
        let path = dir.join(format!(
            "..{}_{:09}_{attempt}",
            now.as_secs(),
            now.subsec_nanos()
        ));
        match std::fs::create_dir(&path) {
            Ok(()) => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free generation directory name"))
}

/// Every file under `root` with its bytes and mode.
fn read_payload(root: &Path) -> io::Result<Payload> {
    let mut out = Payload::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .map_err(io::Error::other)?
                    .to_string_lossy()
                    .into_owned();
                let mode = entry.metadata()?.permissions().mode() & 0o777;
                out.insert(
                    rel,
                    File {
                        bytes: std::fs::read(&path)?,
                        mode,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// Removes a file, symlink or directory tree; absent is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(entries: &[(&str, &str, u32)]) -> Payload {
        entries
            .iter()
            .map(|(p, b, m)| {
                (
                    (*p).to_owned(),
                    File {
                        bytes: b.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    fn read(dir: &Path, rel: &str) -> String {
        std::fs::read_to_string(dir.join(rel)).unwrap()
    }

    #[test]
    fn writes_the_kubelet_layout_and_swaps_it_on_update() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        assert!(
            write(
                &dir,
                &payload(&[("greeting", "hello", 0o644), ("sub/x", "1", 0o600)])
            )
            .unwrap()
        );
        assert_eq!(read(&dir, "greeting"), "hello");
        assert_eq!(read(&dir, "sub/x"), "1");
        assert_eq!(
            std::fs::read_link(dir.join("greeting")).unwrap(),
            Path::new("..data/greeting")
        );
        let first = std::fs::read_link(dir.join(DATA)).unwrap();
        assert!(first.to_string_lossy().starts_with(".."), "{first:?}");
        let mode = std::fs::metadata(dir.join("sub/x"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        // Unchanged: nothing is written.
        assert!(
            !write(
                &dir,
                &payload(&[("greeting", "hello", 0o644), ("sub/x", "1", 0o600)])
            )
            .unwrap()
        );
        assert_eq!(std::fs::read_link(dir.join(DATA)).unwrap(), first);

        // A file held open across the update (as by a container) keeps its old content; a
        // new open through the same path sees the new one. A removed key disappears.
        let held = std::fs::File::open(dir.join("greeting")).unwrap();
        assert!(write(&dir, &payload(&[("greeting", "bonjour", 0o644)])).unwrap());
        assert_eq!(read(&dir, "greeting"), "bonjour");
        assert!(!dir.join("sub").exists());
        let second = std::fs::read_link(dir.join(DATA)).unwrap();
        assert_ne!(first, second);
        assert!(!dir.join(&first).exists(), "the old generation is removed");
        drop(held);
        let names: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                DATA.to_owned(),
                second.to_string_lossy().into_owned(),
                "greeting".to_owned()
            ]
            .into_iter()
            .collect()
        );
    }

    #[test]
    fn plain_files_of_an_older_layout_are_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        std::fs::create_dir_all(dir.join("old-dir")).unwrap();
        std::fs::write(dir.join("greeting"), "stale").unwrap();
        std::fs::write(dir.join("gone"), "x").unwrap();
        assert!(write(&dir, &payload(&[("greeting", "fresh", 0o644)])).unwrap());
        assert_eq!(read(&dir, "greeting"), "fresh");
        assert!(!dir.join("gone").exists() && !dir.join("old-dir").exists());
        assert!(
            std::fs::symlink_metadata(dir.join("greeting"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
