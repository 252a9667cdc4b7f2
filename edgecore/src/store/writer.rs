//! The thread that owns the SQLite connection: schema, pragmas, group commit.
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL`, so every commit fsyncs the WAL before
//! the batch is answered and the ack can leave. `synchronous=NORMAL` would fsync only at
//! checkpoints: a power cut could then lose commits that were already acked, and the cloud would
//! not resend them (its ObjectSync already holds the acked resourceVersion), so the edge would
//! silently miss an object until the next change of it.
//!
//! Measured on this machine (ext4 on a virtio disk, 3 KB rows, one row per commit): FULL
//! ≈ 5.5 ms per commit, NORMAL ≈ 0.2 ms. A group of 32 rows per FULL commit costs ≈ 8 ms,
//! i.e. ≈ 0.25 ms per row. The cloud sends one ack-required message at a time per node and
//! resends after 5 s (§4.3), so 5 ms before an ack is harmless; bursts (pod lists after a
//! reconnect, many no-ack messages) are absorbed by group commit, which merges every batch
//! queued behind the running one into one transaction. NORMAL is therefore not needed: FULL.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::meta_v2::{self, MetaV2};
use super::{BatchReply, Command, MetaKey, Op, OutboxEntry, Outcome, PutOutcome, ResourceVersion};
use crate::error::{StoreError, StoreFailure};

/// How long a statement waits for a lock held by another process (e.g. a KubeEdge tool).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `PRAGMA cache_size` of the connection: negative means KiB, here at most 64 pages of 4 KiB.
///
/// SQLite's default (−2000, about 2 MiB) is kept for the connection's whole life and, in an
/// edgecore that otherwise needs about 1 MiB of heap, was most of the memory growth after a sync:
/// 10,000 objects (a 4 MB database) took RssAnon from 1.2 to 3.4 MiB (glibc release build); with
/// 256 KiB it ends at 1.5 MiB, and 1,000 acked writes take as long. Lookups are by primary key,
/// so the B-tree interior pages, which fit, are the only pages reused; a miss is a read from the
/// OS page cache, small next to the fsync of every commit.
const CACHE_SIZE_KIB: i64 = -256;

/// Most batches merged into one transaction.
const MAX_GROUP: usize = 64;

/// KubeEdge's `meta` table (beego DDL, spec §5.2) and our own tables.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key varchar(256) PRIMARY KEY,
    type varchar(32) NOT NULL DEFAULT '',
    value text
);
CREATE TABLE IF NOT EXISTS edgecore_outbox (
    key TEXT PRIMARY KEY,
    msg_id TEXT NOT NULL,
    message JSON NOT NULL,
    enqueued_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS edgecore_outbox_msg_id ON edgecore_outbox(msg_id);
";

/// Opens the file, applies the pragmas and creates missing tables; learns `meta_v2`'s columns.
pub(super) fn open(path: &Path) -> Result<(Connection, MetaV2), StoreError> {
    create_parent(path)?;
    let open_err = |e: rusqlite::Error| StoreError::Open {
        path: path.to_owned(),
        source: StoreError::cause(e),
    };
    let damaged = |e: rusqlite::Error| refused(path, e).unwrap_or_else(open_err);
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(damaged)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "database does not support WAL; using its journal mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(damaged)?;
    conn.pragma_update(None, "cache_size", CACHE_SIZE_KIB)
        .map_err(open_err)?;
    check_integrity(&conn, path)?;
    conn.execute_batch(SCHEMA).map_err(|e| {
        refused(path, e).unwrap_or_else(|e| StoreError::Schema {
            path: path.to_owned(),
            source: StoreError::cause(e),
        })
    })?;
    let v2 = MetaV2::prepare(&conn).map_err(|e| {
        refused(path, e).unwrap_or_else(|e| StoreError::Schema {
            path: path.to_owned(),
            source: StoreError::cause(e),
        })
    })?;
    tracing::info!(path = %path.display(), "store opened");
    Ok((conn, v2))
}

fn create_parent(path: &Path) -> Result<(), StoreError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| StoreError::CreateDir {
        path: dir.to_owned(),
        source: StoreError::cause(e),
    })
}

/// The error for a file SQLite refuses as damaged or cannot write; any other error back.
fn refused(path: &Path, e: rusqlite::Error) -> Result<StoreError, rusqlite::Error> {
    match StoreFailure::of(&e) {
        StoreFailure::Damaged => Ok(StoreError::Damaged {
            path: path.to_owned(),
            report: e.to_string(),
        }),
        StoreFailure::ReadOnly => Ok(StoreError::ReadOnly {
            path: path.to_owned(),
            source: StoreError::cause(e),
        }),
        _ => Err(e),
    }
}

/// SQLite's `quick_check` (the integrity check without the slow index cross-check): anything
/// but `ok` refuses the file, which is left as it is.
fn check_integrity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let damaged = |report: String| StoreError::Damaged {
        path: path.to_owned(),
        report,
    };
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| damaged(e.to_string()))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| damaged(e.to_string()))?;
    match lines.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        _ => Err(damaged(format!("integrity check: {}", lines.join("; ")))),
    }
}

/// The writer loop: take a batch, merge whatever else is queued, commit once, answer each.
pub(super) fn run(mut conn: Connection, v2: MetaV2, mut rx: mpsc::Receiver<Command>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = Vec::new();
        let mut stop = None;
        match first {
            Command::Batch { ops, reply } => group.push((ops, reply)),
            Command::Shutdown { done } => stop = Some(done),
        }
        while stop.is_none() && group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Command::Batch { ops, reply }) => group.push((ops, reply)),
                Ok(Command::Shutdown { done }) => stop = Some(done),
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            commit_group(&mut conn, &v2, group);
        }
        if let Some(done) = stop {
            rx.close();
            // Fail whatever raced in after the shutdown request instead of leaving it waiting.
            while let Ok(cmd) = rx.try_recv() {
                if let Command::Batch { reply, .. } = cmd {
                    let _ = reply.send(Err(StoreError::Closed));
                }
            }
            if let Err((_, e)) = conn.close() {
                tracing::warn!(error = %e, "store close failed; sqlite will recover the WAL on next open");
            }
            tracing::info!("store closed");
            let _ = done.send(());
            return;
        }
    }
}

type Group = Vec<(Vec<Op>, tokio::sync::oneshot::Sender<BatchReply>)>;

fn commit_group(conn: &mut Connection, v2: &MetaV2, group: Group) {
    let started = Instant::now();
    let writes = group.iter().flat_map(|(ops, _)| ops).any(|op| {
        !matches!(
            op,
            Op::Get { .. }
                | Op::ListType { .. }
                | Op::GetV2 { .. }
                | Op::ListV2 { .. }
                | Op::OutboxList
                | Op::OutboxCount
        )
    });
    let behavior = if writes {
        TransactionBehavior::Immediate
    } else {
        TransactionBehavior::Deferred
    };
    let tx = match conn.transaction_with_behavior(behavior) {
        Ok(tx) => tx,
        Err(e) => return fail_all(group, e),
    };
    let mut answers = Vec::with_capacity(group.len());
    for (ops, reply) in group {
        let results = ops.iter().map(|op| apply(&tx, v2, op)).collect::<Vec<_>>();
        answers.push((results, reply));
    }
    if let Err(e) = tx.commit() {
        let failure = StoreFailure::of(&e);
        tracing::error!(error = %e, failure = failure.as_str(), "store commit failed; writes of this batch were not applied");
        let source = StoreError::cause(e);
        for (_, reply) in answers {
            let _ = reply.send(Err(StoreError::Commit {
                failure,
                source: source.clone(),
            }));
        }
        return;
    }
    tracing::debug!(batches = answers.len(), elapsed = ?started.elapsed(), "store committed");
    for (results, reply) in answers {
        // A caller that gave up waiting still had its writes committed; nothing to undo.
        let _ = reply.send(Ok(results));
    }
}

fn fail_all(group: Group, e: rusqlite::Error) {
    let failure = StoreFailure::of(&e);
    tracing::error!(error = %e, failure = failure.as_str(), "store transaction could not start");
    let source = StoreError::cause(e);
    for (_, reply) in group {
        let _ = reply.send(Err(StoreError::Commit {
            failure,
            source: source.clone(),
        }));
    }
}

fn apply(tx: &Transaction<'_>, v2: &MetaV2, op: &Op) -> Result<Outcome, StoreError> {
    let what = op_name(op);
    let sql = |e: rusqlite::Error| StoreError::Statement {
        failure: StoreFailure::of(&e),
        what,
        source: StoreError::cause(e),
    };
    match op {
        Op::PutObject { key, json, rv } => {
            if let Some(incoming) = *rv
                && let Some(stored) = stored_rv(tx, key).map_err(sql)?
                && incoming < stored
            {
                return Ok(Outcome::Put(PutOutcome::Stale { stored, incoming }));
            }
            put(tx, key, json).map_err(sql)?;
            // MetaServer's copy in KubeEdge's table, in the same transaction.
            if let Some(row) = meta_v2::row_of(key.kind(), json) {
                v2.upsert(tx, &row).map_err(sql)?;
            }
            Ok(Outcome::Put(PutOutcome::Applied))
        }
        Op::PutRaw { key, value } => {
            put(tx, key, value).map_err(sql)?;
            Ok(Outcome::Put(PutOutcome::Applied))
        }
        Op::Delete { key, uid } => {
            let before = get(tx, key.as_str()).map_err(sql)?;
            let outcome = delete(tx, key, uid.as_deref()).map_err(sql)?;
            if matches!(outcome, Outcome::Deleted(n) if n > 0)
                && let Some(row) = before.and_then(|v| meta_v2::row_of(key.kind(), &v))
            {
                MetaV2::delete(tx, &row.key).map_err(sql)?;
            }
            Ok(outcome)
        }
        Op::GetV2 { key } => MetaV2::get(tx, key).map(Outcome::Value).map_err(sql),
        Op::ListV2 { gvr, namespace } => v2
            .list(tx, gvr, namespace.as_deref())
            .map(Outcome::Values)
            .map_err(sql),
        Op::Get { key } => get(tx, key).map(Outcome::Value).map_err(sql),
        Op::ListType { kind } => {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT value FROM meta WHERE type = ?1 AND value IS NOT NULL ORDER BY key",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map([kind], |r| r.get::<_, String>(0))
                .map_err(sql)?;
            rows.collect::<Result<Vec<_>, _>>()
                .map(Outcome::Values)
                .map_err(sql)
        }
        Op::OutboxPut(e) => tx
            .execute(
                "INSERT INTO edgecore_outbox (key, msg_id, message, enqueued_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(key) DO UPDATE SET msg_id = excluded.msg_id, message = excluded.message",
                params![e.key, e.msg_id, e.message, e.enqueued_at],
            )
            .map(|_| Outcome::Done)
            .map_err(sql),
        Op::OutboxRemove { msg_id } => tx
            .execute("DELETE FROM edgecore_outbox WHERE msg_id = ?1", [msg_id])
            .map(|n| Outcome::Removed(n > 0))
            .map_err(sql),
        Op::OutboxCount => tx
            .query_row("SELECT COUNT(*) FROM edgecore_outbox", [], |r| r.get::<_, i64>(0))
            .map(|n| Outcome::Count(u64::try_from(n).unwrap_or_default()))
            .map_err(sql),
        Op::OutboxList => {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT key, msg_id, message, enqueued_at FROM edgecore_outbox
                     ORDER BY enqueued_at, rowid",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(OutboxEntry {
                        key: r.get(0)?,
                        msg_id: r.get(1)?,
                        message: r.get(2)?,
                        enqueued_at: r.get(3)?,
                    })
                })
                .map_err(sql)?;
            rows.collect::<Result<Vec<_>, _>>()
                .map(Outcome::Outbox)
                .map_err(sql)
        }
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::PutObject { .. } | Op::PutRaw { .. } => "put meta",
        Op::Delete { .. } => "delete meta",
        Op::Get { .. } => "get meta",
        Op::GetV2 { .. } => "get meta_v2",
        Op::ListV2 { .. } => "list meta_v2",
        Op::ListType { .. } => "list meta",
        Op::OutboxPut(_) => "put outbox",
        Op::OutboxRemove { .. } => "remove outbox",
        Op::OutboxList => "list outbox",
        Op::OutboxCount => "count outbox",
    }
}

fn get(tx: &Transaction<'_>, key: &str) -> rusqlite::Result<Option<String>> {
    tx.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get::<_, Option<String>>(0))
        .optional()
        .map(Option::flatten)
}

fn put(tx: &Transaction<'_>, key: &MetaKey, value: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, type, value) VALUES (?1, ?2, ?3)")?
        .execute(params![key.as_str(), key.kind(), value])
        .map(|_| ())
}

/// `metadata.resourceVersion` of the stored object, when it is a number.
fn stored_rv(tx: &Transaction<'_>, key: &MetaKey) -> rusqlite::Result<Option<ResourceVersion>> {
    let rv: Option<rusqlite::types::Value> = tx
        .prepare_cached(
            "SELECT CASE WHEN json_valid(value)
                    THEN json_extract(value, '$.metadata.resourceVersion') END
             FROM meta WHERE key = ?1",
        )?
        .query_row([key.as_str()], |r| r.get(0))
        .optional()?;
    Ok(match rv {
        Some(rusqlite::types::Value::Text(t)) => ResourceVersion::parse(&t),
        Some(rusqlite::types::Value::Integer(i)) => {
            u64::try_from(i).ok().map(ResourceVersion::from)
        }
        _ => None,
    })
}

/// A delete with a uid removes only the row holding that uid (KubeEdge does this for pods only;
/// we do it for every kind, see `plan`), and for a pod then its podpatch row. Without a uid: by key.
fn delete(tx: &Transaction<'_>, key: &MetaKey, uid: Option<&str>) -> rusqlite::Result<Outcome> {
    let Some(uid) = uid else {
        let n = tx.execute("DELETE FROM meta WHERE key = ?1", [key.as_str()])?;
        return Ok(Outcome::Deleted(n));
    };
    let pattern = format!("%{}%", escape_like(uid));
    let mut n = tx.execute(
        "DELETE FROM meta WHERE key = ?1 AND value LIKE ?2 ESCAPE '\\'",
        params![key.as_str(), pattern],
    )?;
    if n > 0 && key.kind() == "pod" {
        n += tx.execute(
            "DELETE FROM meta WHERE key = ?1",
            [key.with_kind("podpatch").as_str()],
        )?;
        // The pod's service-account tokens go with it, as KubeEdge's edged removes them
        // (client/serviceaccount.go `DeleteServiceAccountToken`).
        n += tx.execute(
            "DELETE FROM meta WHERE type = 'serviceaccounttoken' AND json_valid(value)
               AND json_extract(value, '$.spec.boundObjectRef.uid') = ?1",
            [uid],
        )?;
    }
    Ok(Outcome::Deleted(n))
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
