//! Container logs as the kubelet serves them (`/containerLogs/{ns}/{pod}/{container}`), read from
//! the CRI log files the runtime writes: `<podLogsDir>/<ns>_<pod>_<uid>/<container>/<attempt>.log`,
//! one line per record, `<RFC3339Nano time> <stdout|stderr> <P|F> <text>` (`P`: the text goes
//! on in the next record).
//!
//! The options are the kubelet's (`PodLogOptions`): `follow`, `tailLines`, `sinceSeconds`,
//! `sinceTime`, `timestamps`, `previous`, `limitBytes`.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a followed log is read again for new records.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// What a logs request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogOptions {
    /// Keep streaming what the container writes.
    pub(crate) follow: bool,
    /// Only the last N lines.
    pub(crate) tail_lines: Option<usize>,
    /// Only records at or after this time (RFC 3339, compared as text after normalising).
    pub(crate) since: Option<String>,
    /// Prefix each line with its time.
    pub(crate) timestamps: bool,
    /// The previous attempt's log (the container before its last restart).
    pub(crate) previous: bool,
    /// Stop after this many bytes.
    pub(crate) limit_bytes: Option<usize>,
}

impl LogOptions {
    /// The options of a query string; `now` turns `sinceSeconds` into a time. `Err` names the
    /// parameter that cannot be read.
    pub(crate) fn from_query(query: &str, now: std::time::SystemTime) -> Result<Self, String> {
        let mut o = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let flag = |v: &str| matches!(v, "" | "1" | "t" | "T" | "true" | "TRUE" | "True");
            let number = |v: &str| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("{k}={v:?} is not a non-negative number"))
            };
            match k {
                "follow" => o.follow = flag(v),
                "timestamps" => o.timestamps = flag(v),
                "previous" => o.previous = flag(v),
                "tailLines" => {
                    o.tail_lines = Some(usize::try_from(number(v)?).unwrap_or(usize::MAX))
                }
                "limitBytes" => {
                    o.limit_bytes = Some(usize::try_from(number(v)?).unwrap_or(usize::MAX))
                }
                "sinceSeconds" => {
                    let secs = u64::try_from(number(v)?).unwrap_or_default();
                    let at = now
                        .checked_sub(Duration::from_secs(secs))
                        .unwrap_or(std::time::UNIX_EPOCH);
                    o.since = Some(crate::time::rfc3339(at));
                }
                "sinceTime" => {
                    let t = percent_decode(v);
                    if !looks_like_rfc3339(&t) {
                        return Err(format!("sinceTime={t:?} is not an RFC 3339 time"));
                    }
                    o.since = Some(t);
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// One record of a CRI log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record<'a> {
    time: &'a str,
    partial: bool,
    text: &'a str,
}

fn parse(line: &str) -> Option<Record<'_>> {
    let (time, rest) = line.split_once(' ')?;
    let (_stream, rest) = rest.split_once(' ')?;
    let (tag, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Record {
        time,
        partial: tag.split(':').next() == Some("P"),
        text,
    })
}

/// The log file a request reads: the newest attempt of `container` of the newest incarnation
/// of `namespace/pod` under `logs_dir`, or the attempt before it for `previous`.
pub(crate) fn log_file(
    logs_dir: &Path,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Option<PathBuf> {
    let prefix = format!("{namespace}_{pod}_");
    let pod_dir = std::fs::read_dir(logs_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())?
        .path();
    let mut attempts: Vec<(u64, PathBuf)> = std::fs::read_dir(pod_dir.join(container))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    attempts.sort();
    let index = attempts.len().checked_sub(if previous { 2 } else { 1 })?;
    attempts.into_iter().nth(index).map(|(_, p)| p)
}

/// The text a non-following request answers with, from the whole file's `content`.
pub(crate) fn render(content: &str, o: &LogOptions) -> Vec<u8> {
    // Whole lines: partial records joined to the record that ends them.
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut pending: Option<(String, String)> = None;
    for rec in content.lines().filter_map(parse) {
        if o.since
            .as_deref()
            .is_some_and(|since| !at_or_after(rec.time, since))
        {
            continue;
        }
        let entry = pending.get_or_insert_with(|| (rec.time.to_owned(), String::new()));
        entry.1.push_str(rec.text);
        if !rec.partial
            && let Some(done) = pending.take()
        {
            lines.push(done);
        }
    }
    if let Some(rest) = pending {
        lines.push(rest);
    }
    let skip = o.tail_lines.map_or(0, |n| lines.len().saturating_sub(n));
    let mut out = Vec::new();
    for (time, text) in lines.into_iter().skip(skip) {
        if o.timestamps {
            out.extend_from_slice(time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    }
    if let Some(limit) = o.limit_bytes {
        out.truncate(limit);
    }
    out
}

/// Streams `path` as [`render`] would, then, with `follow`, what is appended, until `send` fails
/// (the client went away), `limit_bytes` is reached, or a newer attempt's file appears (the
/// container was restarted: the kubelet ends a follow then too).
pub(crate) async fn stream<F, Fut>(path: &Path, o: &LogOptions, mut send: F) -> std::io::Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let content = tokio::fs::read(path).await?;
    // Only whole records are rendered; the rest waits for its newline.
    let whole = content
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let first = render(&String::from_utf8_lossy(&content[..whole]), o);
    let mut sent = first.len();
    if !first.is_empty() && !send(first).await {
        return Ok(());
    }
    if !o.follow || o.limit_bytes.is_some_and(|l| sent >= l) {
        return Ok(());
    }
    let mut offset = whole;
    let mut partial = String::new();
    let mut partial_time = String::new();
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let content = tokio::fs::read(path).await?;
        if content.len() < offset {
            offset = 0; // truncated or replaced: start over
        }
        let new = &content[offset..];
        let whole = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole > 0 {
            offset += whole;
            let mut text = Vec::new();
            for rec in String::from_utf8_lossy(&new[..whole])
                .lines()
                .filter_map(parse)
            {
                if partial.is_empty() {
                    rec.time.clone_into(&mut partial_time);
                }
                partial.push_str(rec.text);
                if !rec.partial {
                    if o.timestamps {
                        text.extend_from_slice(partial_time.as_bytes());
                        text.push(b' ');
                    }
                    text.extend_from_slice(partial.as_bytes());
                    text.push(b'\n');
                    partial.clear();
                }
            }
            if let Some(limit) = o.limit_bytes {
                text.truncate(limit.saturating_sub(sent));
            }
            sent += text.len();
            if !text.is_empty() && !send(text).await {
                return Ok(());
            }
            if o.limit_bytes.is_some_and(|l| sent >= l) {
                return Ok(());
            }
        } else if restarted(path) {
            return Ok(());
        }
    }
}

/// Whether a newer attempt's file sits beside `path`.
fn restarted(path: &Path) -> bool {
    let attempt =
        |p: &Path| -> Option<u64> { p.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok() };
    let (Some(mine), Some(dir)) = (attempt(path), path.parent()) else {
        return false;
    };
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| attempt(&e.path()).is_some_and(|n| n > mine))
    })
}

/// Whether CRI time `t` is at or after `since` (both RFC 3339 in UTC with `Z`; the CRI writes
/// nanoseconds, a query may have none: compared on the seconds, then the fraction).
fn at_or_after(t: &str, since: &str) -> bool {
    let split = |s: &str| -> (String, String) {
        let s = s.trim_end_matches('Z');
        match s.split_once('.') {
            Some((secs, frac)) => (secs.to_owned(), frac.to_owned()),
            None => (s.to_owned(), String::new()),
        }
    };
    let (ts, tf) = split(t);
    let (ss, sf) = split(since);
    match ts.cmp(&ss) {
        std::cmp::Ordering::Equal => {
            let width = tf.len().max(sf.len());
            format!("{tf:0<width$}") >= format!("{sf:0<width$}")
        }
        other => other.is_gt(),
    }
}

fn looks_like_rfc3339(t: &str) -> bool {
    t.len() >= 20 && t.as_bytes().get(10) == Some(&b'T') && t.ends_with('Z')
}

fn percent_decode(v: &str) -> String {
    v.replace("%3A", ":").replace("%3a", ":").replace('+', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-12-05T10:00:00.000000001Z stdout F one
2026-12-05T10:00:01.5Z stderr F two
2026-12-05T10:00:02.000000000Z stdout P thr
2026-12-05T10:00:02.100000000Z stdout F ee
2026-12-05T10:00:03.000000000Z stdout F four
";

    fn text(o: &LogOptions) -> String {
        String::from_utf8(render(LOG, o)).unwrap()
    }

    #[test]
    fn records_become_lines_with_the_kubelets_options() {
        assert_eq!(text(&LogOptions::default()), "one\ntwo\nthree\nfour\n");
        let tail = LogOptions {
            tail_lines: Some(2),
            ..LogOptions::default()
        };
        assert_eq!(text(&tail), "three\nfour\n");
        let stamped = LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..LogOptions::default()
        };
        assert_eq!(text(&stamped), "2026-12-05T10:00:03.000000000Z four\n");
        let since = LogOptions {
            since: Some("2026-12-05T10:00:01Z".into()),
            ..LogOptions::default()
        };
        assert_eq!(text(&since), "two\nthree\nfour\n");
        let limited = LogOptions {
            limit_bytes: Some(6),
            ..LogOptions::default()
        };
        assert_eq!(text(&limited), "one\ntw");
    }

    #[test]
    fn query_options_are_read_or_named() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_764_928_800); // 2025-12-05T10:00:00Z
        let o = LogOptions::from_query(
            "follow=true&tailLines=10&timestamps=1&previous=false&limitBytes=100&sinceSeconds=60",
            now,
        )
        .unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(10), Some(100)));
        assert_eq!(o.since.as_deref(), Some("2025-12-05T09:59:00Z"));
        let t = LogOptions::from_query("sinceTime=2025-12-05T09%3A00%3A00Z", now).unwrap();
        assert_eq!(t.since.as_deref(), Some("2025-12-05T09:00:00Z"));
        assert!(
            LogOptions::from_query("tailLines=-1", now)
                .unwrap_err()
                .contains("tailLines")
        );
        assert!(LogOptions::from_query("sinceTime=yesterday", now).is_err());
    }

    #[test]
    fn the_newest_attempt_or_the_one_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        for (uid, attempts, age) in [("old-uid", vec![0], 3600), ("new-uid", vec![0, 1, 2], 60)] {
            let pod_dir = dir.path().join(format!("shop_web_{uid}"));
            let c = pod_dir.join("app");
            std::fs::create_dir_all(&c).unwrap();
            for a in attempts {
                std::fs::write(c.join(format!("{a}.log")), LOG).unwrap();
            }
            // The newer incarnation was written last.
            let when = std::time::SystemTime::now() - Duration::from_secs(age);
            std::fs::File::open(&pod_dir)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        let current = log_file(dir.path(), "shop", "web", "app", false).unwrap();
        assert!(
            current.ends_with("shop_web_new-uid/app/2.log"),
            "{current:?}"
        );
        let previous = log_file(dir.path(), "shop", "web", "app", true).unwrap();
        assert!(
            previous.ends_with("shop_web_new-uid/app/1.log"),
            "{previous:?}"
        );
        assert_eq!(log_file(dir.path(), "shop", "web", "db", false), None);
        assert_eq!(log_file(dir.path(), "shop", "api", "app", false), None);
        assert!(restarted(&previous) && !restarted(&current));
    }

    #[tokio::test]
    async fn a_followed_log_streams_what_is_appended_until_the_container_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "2026-12-05T10:00:00Z stdout F first\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let o = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        let follow = {
            let path = path.clone();
            tokio::spawn(async move {
                stream(&path, &o, |chunk| {
                    let tx = tx.clone();
                    async move { tx.send(chunk).await.is_ok() }
                })
                .await
            })
        };
        assert_eq!(rx.recv().await.unwrap(), b"first\n");
        // A record written in two pieces comes out once whole.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"2026-12-05T10:00:01Z stdout P sec").unwrap();
        std::io::Write::write_all(&mut f, b"\n2026-12-05T10:00:01Z stdout F ond\n").unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"second\n");
        // The container restarts: the follow ends.
        std::fs::write(dir.path().join("1.log"), "").unwrap();
        follow.await.unwrap().unwrap();
    }
}
