//! Gives back the start-up code's pages once start-up is over.
//!
//! edgecore's resident set is mostly file-backed: the pages of the executable and of the shared
//! libraries that were ever run. Code run once at start-up (the command line, the YAML parser,
//! certificate parsing, the first TLS handshake) stays mapped, and the kernel maps up to 64 KiB
//! around each fault, so its neighbours stay too. Once start-up is over, [`release_startup_pages`]
//! drops the page-table entries of every read-only, file-backed mapping that holds no private
//! copy of a page (`Anonymous: 0 kB` in `/proc/self/smaps`). Nothing is lost: those pages are
//! exactly the file's, so the next touch maps them again from the page cache (a minor fault).
//! What stays resident afterwards is what the steady state runs.
//!
//! Writable mappings and read-only ones with private copies (the relocated `.data.rel.ro`,
//! breakpoints a debugger wrote) are never touched: `MADV_DONTNEED` would throw those copies
//! away.

use std::io;
use std::time::Duration;

use edgehub::LinkState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long after the first session came up (or, offline, after start) start-up counts as over:
/// the first sync and the node's registration run in this time.
pub(crate) const SETTLE: Duration = Duration::from_secs(3);

/// Waits until start-up is over, then releases its pages once: [`SETTLE`] after the first
/// session is up, or after start when there is no link (`None`, edgeHub disabled).
pub(crate) async fn after_startup(
    link: Option<watch::Receiver<LinkState>>,
    cancel: CancellationToken,
) {
    let settled = async {
        if let Some(mut link) = link {
            let up = link
                .wait_for(|s| matches!(s, LinkState::Connected { .. }))
                .await;
            if up.is_err() {
                // The hub stopped before a session came up: shutting down.
                return false;
            }
        }
        tokio::time::sleep(SETTLE).await;
        true
    };
    let settled = tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        settled = settled => settled,
    };
    if !settled {
        return;
    }
    match release_startup_pages() {
        Ok(t) => tracing::info!(
            mappings = t.mappings,
            resident_kib = t.resident_kib,
            "start-up over: released the pages of read-only file mappings (they map again when used)"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not release start-up pages; edgecore runs on, only its resident memory stays higher")
        }
    }
}

/// What one trim did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trimmed {
    /// Mappings advised.
    pub(crate) mappings: usize,
    /// Their resident size before, in KiB.
    pub(crate) resident_kib: u64,
}

/// One mapping of `/proc/self/smaps` that may be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// Drops the page-table entries of the clean, read-only, file-backed mappings of this process.
#[cfg(target_os = "linux")]
pub(crate) fn release_startup_pages() -> io::Result<Trimmed> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut done = Trimmed::default();
    for c in candidates(&smaps) {
        // A mapping the kernel refuses (say, on hugetlbfs) stays as it is; the others go on.
        match advise_dontneed(c.start, c.end - c.start) {
            Ok(()) => {
                done.mappings += 1;
                done.resident_kib += c.rss_kib;
            }
            Err(e) => tracing::debug!(start = c.start, error = %e, "mapping not released"),
        }
    }
    Ok(done)
}

/// Elsewhere there is nothing to do.
#[cfg(not(target_os = "linux"))]
pub(crate) fn release_startup_pages() -> io::Result<Trimmed> {
    Ok(Trimmed::default())
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_dontneed(start: usize, len: usize) -> io::Result<()> {
    // SAFETY: `start..start + len` is a whole mapping of this process, read from
    // /proc/self/smaps an instant ago: page-aligned, and mapped read-only from a file with no
    // private (anonymous) page in it. MADV_DONTNEED on such a mapping only drops page-table
    // entries; the next access maps the same bytes again from the file, so no memory that Rust
    // code refers to changes or goes away. edgecore never unmaps or remaps these ranges (they
    // are the executable's and the shared libraries' segments) while this runs.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The mappings of `smaps` that are file-backed, not writable, and hold no anonymous page.
fn candidates(smaps: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    // The mapping being read: its range if it qualifies so far, and its Rss.
    let mut current: Option<Candidate> = None;
    let mut anonymous_zero = false;
    let finish = |c: Option<Candidate>, anon_zero: bool, out: &mut Vec<Candidate>| {
        if let Some(c) = c.filter(|_| anon_zero) {
            out.push(c);
        }
    };
    for line in smaps.lines() {
        if let Some((range, rest)) = header(line) {
            finish(current.take(), anonymous_zero, &mut out);
            anonymous_zero = false;
            current = qualifies(range, rest);
            continue;
        }
        let Some(c) = current.as_mut() else { continue };
        if let Some(v) = field_kib(line, "Rss:") {
            c.rss_kib = v;
        } else if let Some(v) = field_kib(line, "Anonymous:") {
            anonymous_zero = v == 0;
        }
    }
    finish(current, anonymous_zero, &mut out);
    out
}

/// A mapping's header line: `start-end perms offset dev inode [path]`, split after the range.
fn header(line: &str) -> Option<(&str, &str)> {
    let (range, rest) = line.split_once(' ')?;
    let (a, b) = range.split_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit());
    (hex(a) && hex(b)).then_some((range, rest))
}

/// The range of a header if its mapping is read-only, private and backed by a file.
fn qualifies(range: &str, rest: &str) -> Option<Candidate> {
    let mut fields = rest.split_whitespace();
    let perms = fields.next()?.as_bytes();
    // perms is "rwxp": readable, not writable, private.
    if perms.len() != 4 || perms[0] != b'r' || perms[1] != b'-' || perms[3] != b'p' {
        return None;
    }
    let inode = fields.nth(2)?;
    let path = fields.next()?;
    if inode == "0" || !path.starts_with('/') {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    let start = usize::from_str_radix(a, 16).ok()?;
    let end = usize::from_str_radix(b, 16).ok()?;
    (end > start).then_some(Candidate {
        start,
        end,
        rss_kib: 0,
    })
}

/// `value` of a `Name:   value kB` line.
fn field_kib(line: &str, name: &str) -> Option<u64> {
    let v = line.strip_prefix(name)?.trim().strip_suffix("kB")?;
    v.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5611a000-5611c000 r--p 00000000 08:01 1234 /usr/bin/edgecore
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
5611c000-5612c000 r-xp 00002000 08:01 1234 /usr/bin/edgecore
Size:                 64 kB
Rss:                 60 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
5612c000-5612e000 r--p 00012000 08:01 1234 /usr/bin/edgecore
Size:                  8 kB
Rss:                   8 kB
Anonymous:             8 kB
5612e000-56130000 rw-p 00014000 08:01 1234 /usr/bin/edgecore
Size:                  8 kB
Rss:                   8 kB
Anonymous:             4 kB
56130000-56140000 rw-p 00000000 00:00 0 [heap]
Rss:                  64 kB
Anonymous:            64 kB
7f0000000000-7f0000001000 r--p 00000000 00:00 0
Rss:                   4 kB
Anonymous:             0 kB
7f0000002000-7f0000003000 r--s 00000000 08:01 99 /dev/shm/shared
Rss:                   4 kB
Anonymous:             0 kB
7ffd0000-7ffd2000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
7f0000004000-7f0000008000 r-xp 00000000 08:01 77 /usr/lib/libc.so.6
Rss:                  16 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_private_file_mappings_are_chosen() {
        let got = candidates(SMAPS);
        assert_eq!(
            got,
            vec![
                Candidate {
                    start: 0x5611a000,
                    end: 0x5611c000,
                    rss_kib: 8
                },
                Candidate {
                    start: 0x5611c000,
                    end: 0x5612c000,
                    rss_kib: 60
                },
                // The relocated read-only segment (anonymous pages), the writable one, the heap,
                // an anonymous mapping, a shared one and the vdso are left alone.
                Candidate {
                    start: 0x7f0000004000,
                    end: 0x7f0000008000,
                    rss_kib: 16
                },
            ]
        );
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_left_alone() {
        let smaps = "1000-2000 r-xp 00000000 08:01 5 /bin/x\nRss: 4 kB\n";
        assert!(candidates(smaps).is_empty());
    }

    #[test]
    fn paths_with_spaces_and_deleted_files_still_parse() {
        let smaps = "1000-3000 r-xp 00000000 08:01 5 /opt/my dir/edgecore (deleted)\nRss: 8 kB\nAnonymous: 0 kB\n";
        assert_eq!(
            candidates(smaps),
            vec![Candidate {
                start: 0x1000,
                end: 0x3000,
                rss_kib: 8
            }]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn trimming_this_process_keeps_it_running() {
        let first = release_startup_pages().expect("trim");
        assert!(first.mappings > 0, "{first:?}");
        // Code and read-only data still work after their entries were dropped.
        let text = format!("{:?}", std::hint::black_box(vec![1u8, 2, 3]));
        assert_eq!(text, "[1, 2, 3]");
        let again = release_startup_pages().expect("second trim");
        assert!(again.mappings > 0);
    }
}
