//! The invariants: SQLite's own integrity check, and "every version the cloud saw acked is in
//! the edge's store".

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use crate::cluster::{AckedState, Cluster};
use crate::edge::read_meta;

/// `PRAGMA integrity_check` of the edge database: `Ok(None)` for "ok", else the findings.
/// A missing file is "ok" (the edge was killed before it created it).
pub fn integrity(db: &Path) -> Result<Option<String>> {
    if !db.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mut st = conn.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((rows != ["ok"]).then(|| rows.join("; ")))
}

/// Acked versions that the edge's store does not hold; empty = the invariant holds.
///
/// * An object whose version `rv` was acked: the edge holds its key with the same uid at
///   `rv` or later, unless the object was deleted in the cluster meanwhile (the edge may have
///   applied the delete and been stopped before its ack).
/// * A delete that was acked: the edge does not hold that uid any more.
///
/// The cluster is read before and after the edge's store, so a live edge that moves on between
/// the reads (applies a delete) is not blamed.
pub fn acked_stored(cluster: &Cluster, node: &str, db: &Path) -> Result<Vec<String>> {
    let before = cluster.acked(node)?;
    let meta = if db.exists() {
        read_meta(db)?
    } else {
        Default::default()
    };
    let after = cluster.acked(node)?;
    let gone_now: BTreeSet<&str> = gone(&after);
    let mut out = Vec::new();
    for a in &before.objects {
        let row = meta.get(&a.resource).and_then(|r| uid_rv(&r.value));
        match row {
            Some((uid, rv)) if uid == a.uid => {
                if rv.is_none_or(|rv| rv < a.rv) {
                    out.push(format!(
                        "{}: acked rv {}, stored rv {rv:?} (uid {uid})",
                        a.resource, a.rv
                    ));
                }
            }
            _ if a.deleted || gone_now.contains(a.uid.as_str()) => {}
            Some((uid, _)) => out.push(format!(
                "{}: acked uid {} rv {}, stored another uid {uid}",
                a.resource, a.uid, a.rv
            )),
            None => out.push(format!(
                "{}: acked rv {} (uid {}), not stored",
                a.resource, a.rv, a.uid
            )),
        }
    }
    for d in &before.deletes {
        if let Some((uid, rv)) = meta.get(&d.resource).and_then(|r| uid_rv(&r.value))
            && uid == d.uid
        {
            out.push(format!(
                "{}: delete of uid {} acked, still stored at rv {rv:?}",
                d.resource, d.uid
            ));
        }
    }
    Ok(out)
}

/// Uids that are deleted in the cluster, or whose ObjectSync is gone with an acked delete.
fn gone(state: &AckedState) -> BTreeSet<&str> {
    state
        .objects
        .iter()
        .filter(|o| o.deleted)
        .chain(&state.deletes)
        .map(|o| o.uid.as_str())
        .collect()
}

/// metadata.uid and metadata.resourceVersion of a stored object.
fn uid_rv(value: &str) -> Option<(String, Option<u64>)> {
    let v: Value = serde_json::from_str(value).ok()?;
    let uid = v.pointer("/metadata/uid")?.as_str()?.to_owned();
    let rv = v
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    Some((uid, rv))
}
