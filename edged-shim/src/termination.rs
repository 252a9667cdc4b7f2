//! Termination messages, kept as the kubelet keeps them: a host file per container attempt,
//! mounted at `terminationMessagePath` (default `/dev/termination-log`), read when the container
//! exits (at most 4 KiB); with `terminationMessagePolicy: FallbackToLogsOnError`, a failed
//! container that wrote nothing there gets the tail of its log instead (80 lines, 2 KiB).

use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;

use crate::runtime::Mount;
use crate::volumes::pod_dir;

/// Where the container writes its message when the pod names no path.
const DEFAULT_PATH: &str = "/dev/termination-log";
/// The kubelet's limits.
const MAX_MESSAGE: u64 = 4 * 1024;
const MAX_LOG_LINES: usize = 80;
const MAX_LOG_BYTES: usize = 2 * 1024;

/// The host file of one attempt of container `name` of pod `uid`.
pub(crate) fn host_file(root: &Path, uid: &str, name: &str, attempt: u32) -> PathBuf {
    pod_dir(root, uid)
        .join("containers")
        .join(name)
        .join(attempt.to_string())
}

/// Creates the empty, world-writable host file (the container may run as any user) and returns
/// its mount at `path` (`None`: the default).
pub(crate) async fn prepare(file: &Path, path: Option<&str>) -> std::io::Result<Mount> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::write(file, b"").await?;
    tokio::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666)).await?;
    Ok(Mount {
        container_path: path
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_PATH)
            .to_owned(),
        host_path: file.to_owned(),
        read_only: false,
    })
}

/// The message of an exited container: its termination file, else (with the fallback policy
/// and a non-zero exit) the tail of its CRI log file. Empty when there is none.
pub(crate) async fn message(
    file: &Path,
    fallback_to_logs: bool,
    exit_code: i32,
    log: &Path,
) -> String {
    let mut text = String::new();
    if let Ok(f) = tokio::fs::File::open(file).await {
        let mut bytes = Vec::new();
        if f.take(MAX_MESSAGE).read_to_end(&mut bytes).await.is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    if text.is_empty() && fallback_to_logs && exit_code != 0 {
        text = log_tail(log).await;
    }
    text
}

/// The last lines of a CRI log file (`<time> <stream> <P|F> <text>`), their text only.
async fn log_tail(log: &Path) -> String {
    let Ok(raw) = tokio::fs::read(log).await else {
        return String::new();
    };
    let raw = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = raw.lines().collect();
    let mut out = String::new();
    for line in &lines[lines.len().saturating_sub(MAX_LOG_LINES)..] {
        let mut parts = line.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag), text) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        out.push_str(text.unwrap_or_default());
        // A partial line ("P") continues in the next entry.
        if tag != "P" {
            out.push('\n');
        }
    }
    if out.len() > MAX_LOG_BYTES {
        let mut cut = MAX_LOG_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_wins_and_the_log_is_the_fallback_of_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let file = host_file(dir.path(), "uid-1", "app", 2);
        assert!(file.ends_with("pods/uid-1/containers/app/2"));
        let mount = prepare(&file, None).await.unwrap();
        assert_eq!(mount.container_path, DEFAULT_PATH);
        assert!(!mount.read_only);
        let mode = std::fs::metadata(&file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o666
        );
        let log = dir.path().join("0.log");
        std::fs::write(
            &log,
            "2026-12-04T21:00:00.1Z stdout F starting\n\
             2026-12-04T21:00:00.2Z stderr P config \n\
             2026-12-04T21:00:00.3Z stderr F missing\n",
        )
        .unwrap();

        assert_eq!(
            message(&file, true, 0, &log).await,
            "",
            "no fallback after success"
        );
        assert_eq!(
            message(&file, false, 1, &log).await,
            "",
            "no fallback without the policy"
        );
        assert_eq!(
            message(&file, true, 1, &log).await,
            "starting\nconfig missing\n"
        );
        std::fs::write(&file, "bad config: key x\n").unwrap();
        assert_eq!(message(&file, true, 1, &log).await, "bad config: key x\n");
        std::fs::write(&file, "y".repeat(10_000)).unwrap();
        assert_eq!(message(&file, false, 1, &log).await.len(), 4096);

        let custom = prepare(&host_file(dir.path(), "uid-1", "app", 3), Some("/tmp/msg"))
            .await
            .unwrap();
        assert_eq!(custom.container_path, "/tmp/msg");
    }

    #[tokio::test]
    async fn the_log_tail_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let lines: String = (0..200)
            .map(|i| {
                format!(
                    "2026-12-04T21:00:00Z stdout F line {i:03} {}\n",
                    "x".repeat(10)
                )
            })
            .collect();
        std::fs::write(&log, lines).unwrap();
        let tail = log_tail(&log).await;
        assert!(tail.len() <= MAX_LOG_BYTES);
        assert!(tail.starts_with("line 120 "), "{tail}");
        assert_eq!(log_tail(&dir.path().join("missing.log")).await, "");
    }
}
