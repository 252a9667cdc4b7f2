//! Cluster state in one SQLite file, shared by every simulator replica the way CloudCore replicas
//! share the API server.
//!
//! * `objects`: one row per object UID, with a global integer resourceVersion and a deleted flag
//!   (the body of a deleted object stays, it is the content of the `delete` message).
//! * `changes`: the change log; its `seq` *is* the resourceVersion of the change, so RVs grow
//!   monotonically across all kinds and all writer processes. Replicas tail it.
//! * `object_syncs`: CloudCore's ObjectSync CRD: (node, uid) → acked RV.
//! * `deliveries`: (node, uid, rv) → sends and acks, so tests can count duplicates.
//!
//! WAL and a busy timeout let several processes write. The API is synchronous; async callers
//! use `spawn_blocking`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::{Map, Value, json};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    uid TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    rv INTEGER NOT NULL,
    body TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS objects_by_name ON objects(kind, namespace, name, deleted);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL,
    op TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS object_syncs (
    node TEXT NOT NULL,
    uid TEXT NOT NULL,
    rv INTEGER NOT NULL,
    PRIMARY KEY (node, uid)
);
CREATE TABLE IF NOT EXISTS deliveries (
    node TEXT NOT NULL,
    uid TEXT NOT NULL,
    rv INTEGER NOT NULL,
    sends INTEGER NOT NULL DEFAULT 0,
    acks INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, uid, rv)
);
";

/// What happened to an object in a change-log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// First version of the object.
    Added,
    /// A later version.
    Modified,
    /// The object is gone.
    Deleted,
}

impl ChangeOp {
    fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Modified => "modified",
            Self::Deleted => "deleted",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "added" => Some(Self::Added),
            "modified" => Some(Self::Modified),
            "deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// One object as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// metadata.uid
    pub uid: String,
    /// metadata.namespace
    pub namespace: String,
    /// Resource type as in resource strings: `pod`, `configmap`, `secret`.
    pub kind: String,
    /// metadata.name
    pub name: String,
    /// resourceVersion
    pub rv: u64,
    /// The full object (kind, apiVersion, metadata, ...).
    pub body: Value,
    /// The object was deleted; `body` is its last state.
    pub deleted: bool,
}

impl Object {
    /// `<namespace>/<type>/<name>`: the trimmed resource string and the edge's `meta` key.
    pub fn resource(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// A change-log entry with the object as it is now.
#[derive(Debug, Clone)]
pub struct Change {
    /// Position in the log; also the RV of this change.
    pub seq: u64,
    /// What happened.
    pub op: ChangeOp,
    /// The object (for `Deleted`, its last state).
    pub object: Object,
}

/// What a resync must send to a node.
#[derive(Debug, Clone)]
pub enum ResyncItem {
    /// The object's RV is newer than what the node acked: send `update` with the full object.
    Update(Object),
    /// The node holds an object that is gone: send `delete` with metadata only.
    Delete {
        /// The resource string to delete.
        resource: String,
        /// metadata name/namespace/uid.
        uid: String,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// Delivery bookkeeping for one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Distinct (uid, rv) sent at least once.
    pub delivered: u64,
    /// Sends of a (uid, rv) beyond the first session that sent it (re-deliveries).
    pub duplicates: u64,
    /// Acks received in total (including re-acks of duplicates).
    pub acks: u64,
    /// Distinct (uid, rv) sent but never acked.
    pub unacked: u64,
}

/// What the cloud has recorded as acked by one node: the bar the edge's store must meet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedState {
    /// ObjectSyncs: objects whose (non-delete) version `rv` the node acked (the RV 0 ones that a
    /// send creates before any ack are left out). `deleted` tells
    /// whether the object is gone from the cluster by now (its delete may not be acked yet).
    pub objects: Vec<AckedObject>,
    /// Deleted objects whose delete the node acked (the ObjectSync is gone with it).
    pub deletes: Vec<AckedObject>,
}

/// One acked object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedObject {
    /// metadata.uid
    pub uid: String,
    /// `<namespace>/<type>/<name>`: the edge's `meta` key.
    pub resource: String,
    /// The acked resourceVersion (for `deletes`, the deletion's).
    pub rv: u64,
    /// The object is deleted in the cluster.
    pub deleted: bool,
}

/// Handle on the shared state file.
#[derive(Debug)]
pub struct Cluster {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Cluster {
    /// Opens (and creates) the state file.
    pub fn open(path: &Path) -> Result<Self> {
        let conn =
            Connection::open(path).with_context(|| format!("open state {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA).context("create schema")?;
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| anyhow!("cluster connection lock poisoned"))?;
        f(&mut conn)
    }

    /// Creates or updates `<ns>/<kind>/<name>`. `data` holds the top-level fields besides
    /// kind/apiVersion/metadata (`data`, `spec`, ...). Returns (uid, new rv).
    pub fn upsert(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        data: Value,
    ) -> Result<(String, u64)> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT uid, body FROM objects WHERE kind=?1 AND namespace=?2 AND name=?3 AND deleted=0",
                    params![kind, namespace, name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (uid, op, created) = match &existing {
                Some((uid, body)) => {
                    let created = serde_json::from_str::<Value>(body)
                        .ok()
                        .and_then(|b| b.pointer("/metadata/creationTimestamp").cloned())
                        .unwrap_or(Value::Null);
                    (uid.clone(), ChangeOp::Modified, created)
                }
                None => (
                    uuid::Uuid::new_v4().to_string(),
                    ChangeOp::Added,
                    Value::String(rfc3339_now()),
                ),
            };
            let rv = log_change(&tx, &uid, op)?;
            let body = build_body(kind, namespace, name, &uid, rv, created, data);
            tx.execute(
                "INSERT INTO objects(uid, namespace, kind, name, rv, body, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)
                 ON CONFLICT(uid) DO UPDATE SET rv=excluded.rv, body=excluded.body",
                params![uid, namespace, kind, name, rv as i64, body.to_string()],
            )?;
            tx.commit()?;
            Ok((uid, rv))
        })
    }

    /// Deletes `<ns>/<kind>/<name>`; returns (uid, rv of the deletion), or None if absent.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<(String, u64)>> {
        self.delete_matching(kind, namespace, name, None)
    }

    fn delete_matching(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        want_uid: Option<&str>,
    ) -> Result<Option<(String, u64)>> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let uid: Option<String> = tx
                .query_row(
                    "SELECT uid FROM objects WHERE kind=?1 AND namespace=?2 AND name=?3 AND deleted=0",
                    params![kind, namespace, name],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(uid) = uid.filter(|u| want_uid.is_none_or(|w| w == u)) else {
                return Ok(None);
            };
            let rv = log_change(&tx, &uid, ChangeOp::Deleted)?;
            tx.execute(
                "UPDATE objects SET deleted=1, rv=?2 WHERE uid=?1",
                params![uid, rv as i64],
            )?;
            tx.commit()?;
            Ok(Some((uid, rv)))
        })
    }

    /// The API server's answer to a DELETE with a grace period (`kubectl delete pod`): the object
    /// stays, marked with `metadata.deletionTimestamp` (now + `grace`) and
    /// `deletionGracePeriodSeconds`, as a new version (an `update` to the node). The node's
    /// agent then stops the pod and asks for the final delete ([`Cluster::delete_if_uid`]).
    /// Returns (uid, rv of the marked version), the current one if it was marked already, or
    /// None if absent.
    pub fn delete_gracefully(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        grace: Duration,
    ) -> Result<Option<(String, u64)>> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let live: Option<(String, i64, String)> = tx
                .query_row(
                    "SELECT uid, rv, body FROM objects WHERE kind=?1 AND namespace=?2 AND name=?3 AND deleted=0",
                    params![kind, namespace, name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((uid, rv, body)) = live else {
                return Ok(None);
            };
            let mut body: Value = serde_json::from_str(&body).context("stored body")?;
            let meta = body
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .context("stored body without metadata")?;
            if meta.contains_key("deletionTimestamp") {
                return Ok(Some((uid, u64::try_from(rv).context("negative rv")?)));
            }
            let rv = log_change(&tx, &uid, ChangeOp::Modified)?;
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
            meta.insert(
                "deletionTimestamp".into(),
                Value::String(rfc3339_at(SystemTime::now() + grace)),
            );
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace.as_secs()));
            tx.execute(
                "UPDATE objects SET rv=?2, body=?3 WHERE uid=?1",
                params![uid, rv as i64, body.to_string()],
            )?;
            tx.commit()?;
            Ok(Some((uid, rv)))
        })
    }

    /// A DELETE with a UID precondition, as edgecontroller makes for the node's final pod
    /// delete: removes `<ns>/<kind>/<name>` only if its uid is `uid`. Returns (uid, rv of the
    /// deletion), or None if absent or another object by now (both count as done for the
    /// caller, as they do for CloudCore).
    pub fn delete_if_uid(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Option<(String, u64)>> {
        self.delete_matching(kind, namespace, name, Some(uid))
    }

    /// Every live object, ordered by resource string.
    pub fn objects(&self) -> Result<Vec<Object>> {
        self.with(|conn| {
            let mut st = conn.prepare(
                "SELECT uid, namespace, kind, name, rv, body, deleted FROM objects
                 WHERE deleted=0 ORDER BY namespace, kind, name",
            )?;
            let rows = st.query_map([], row_to_object)?;
            rows.map(|r| r.map_err(Into::into).and_then(|o| o))
                .collect()
        })
    }

    /// The live object `<ns>/<kind>/<name>`.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Object>> {
        self.with(|conn| {
            conn.query_row(
                "SELECT uid, namespace, kind, name, rv, body, deleted FROM objects
                 WHERE kind=?1 AND namespace=?2 AND name=?3 AND deleted=0",
                params![kind, namespace, name],
                row_to_object,
            )
            .optional()?
            .transpose()
        })
    }

    /// The highest change-log position (0 when empty).
    pub fn last_seq(&self) -> Result<u64> {
        self.with(|conn| {
            let seq: Option<i64> =
                conn.query_row("SELECT MAX(seq) FROM changes", [], |r| r.get(0))?;
            Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
        })
    }

    /// Up to `limit` change-log entries after `seq`, oldest first.
    pub fn changes_after(&self, seq: u64, limit: usize) -> Result<Vec<Change>> {
        self.with(|conn| {
            let mut st = conn.prepare(
                "SELECT c.seq, c.op, o.uid, o.namespace, o.kind, o.name, o.rv, o.body, o.deleted
                 FROM changes c JOIN objects o ON o.uid = c.uid
                 WHERE c.seq > ?1 ORDER BY c.seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![seq as i64, limit as i64], |r| {
                let seq: i64 = r.get(0)?;
                let op: String = r.get(1)?;
                let body: String = r.get(7)?;
                Ok((
                    seq,
                    op,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                    body,
                    r.get::<_, i64>(8)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, op, uid, namespace, kind, name, rv, body, deleted) = row?;
                let seq = u64::try_from(seq).context("negative seq")?;
                let op = ChangeOp::parse(&op).ok_or_else(|| anyhow!("bad change op {op}"))?;
                let body: Value = serde_json::from_str(&body).context("object body")?;
                // The object as it is now: a later change of the same object is then a no-op.
                let rv = u64::try_from(rv).unwrap_or(0);
                out.push(Change {
                    seq,
                    op,
                    object: Object {
                        uid,
                        namespace,
                        kind,
                        name,
                        rv,
                        body,
                        deleted: deleted != 0,
                    },
                });
            }
            Ok(out)
        })
    }

    /// ObjectSyncs of `node`: uid → acked RV.
    pub fn object_syncs(&self, node: &str) -> Result<BTreeMap<String, u64>> {
        self.with(|conn| {
            let mut st = conn.prepare("SELECT uid, rv FROM object_syncs WHERE node=?1")?;
            let rows = st.query_map(params![node], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (uid, rv) = row?;
                out.insert(uid, u64::try_from(rv).unwrap_or(0));
            }
            Ok(out)
        })
    }

    /// Everything `node` has acked, per [`AckedState`].
    pub fn acked(&self, node: &str) -> Result<AckedState> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let read = |sql: &str| -> Result<Vec<AckedObject>> {
                let mut st = tx.prepare(sql)?;
                let rows = st.query_map(params![node], |r| {
                    Ok(AckedObject {
                        uid: r.get(0)?,
                        resource: r.get(1)?,
                        rv: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        deleted: r.get::<_, i64>(3)? != 0,
                    })
                })?;
                rows.map(|r| r.map_err(Into::into)).collect()
            };
            let objects = read(
                "SELECT s.uid, o.namespace || '/' || o.kind || '/' || o.name, s.rv, o.deleted
                 FROM object_syncs s JOIN objects o ON o.uid = s.uid WHERE s.node=?1 AND s.rv > 0",
            )?;
            // A delete goes out at the deletion's RV, or at 0 from synccontroller (orphan).
            let deletes = read(
                "SELECT DISTINCT o.uid, o.namespace || '/' || o.kind || '/' || o.name, o.rv, 1
                 FROM objects o JOIN deliveries d ON d.uid = o.uid AND d.node=?1
                 WHERE o.deleted=1 AND d.acks>0 AND (d.rv = o.rv OR d.rv = 0)",
            )?;
            Ok(AckedState { objects, deletes })
        })
    }

    /// Records an ack: a non-delete sets the ObjectSync RV (never lowers it), a delete removes
    /// the ObjectSync. Counts the ack in `deliveries`.
    pub fn record_ack(&self, node: &str, uid: &str, rv: u64, delete: bool) -> Result<()> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if delete {
                tx.execute(
                    "DELETE FROM object_syncs WHERE node=?1 AND uid=?2",
                    params![node, uid],
                )?;
            } else {
                tx.execute(
                    "INSERT INTO object_syncs(node, uid, rv) VALUES (?1, ?2, ?3)
                     ON CONFLICT(node, uid) DO UPDATE SET rv=MAX(rv, excluded.rv)",
                    params![node, uid, rv as i64],
                )?;
            }
            tx.execute(
                "INSERT INTO deliveries(node, uid, rv, sends, acks) VALUES (?1, ?2, ?3, 0, 1)
                 ON CONFLICT(node, uid, rv) DO UPDATE SET acks=acks+1",
                params![node, uid, rv as i64],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Records the first send of (uid, rv) by one session; returns how many sessions have sent
    /// it so far (more than 1 = a duplicate delivery).
    ///
    /// As CloudCore's dispatcher does for an object message (not a delete) when the node has
    /// no ObjectSync for it yet (`enqueueNamespacedResource`), this creates one at RV 0. So if
    /// the edge stores the object but its ack is lost with the link, and the object is deleted
    /// before it is sent again, synccontroller still finds the ObjectSync and sends the delete.
    pub fn record_delivery(&self, node: &str, uid: &str, rv: u64, is_delete: bool) -> Result<u64> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !is_delete {
                tx.execute(
                    "INSERT OR IGNORE INTO object_syncs(node, uid, rv) VALUES (?1, ?2, 0)",
                    params![node, uid],
                )?;
            }
            let sends: i64 = tx.query_row(
                "INSERT INTO deliveries(node, uid, rv, sends, acks) VALUES (?1, ?2, ?3, 1, 0)
                 ON CONFLICT(node, uid, rv) DO UPDATE SET sends=sends+1 RETURNING sends",
                params![node, uid, rv as i64],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(u64::try_from(sends).unwrap_or(0))
        })
    }

    /// Delivery bookkeeping of `node`.
    pub fn delivery_stats(&self, node: &str) -> Result<DeliveryStats> {
        self.with(|conn| {
            let row = conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(MAX(sends-1,0)),0), COALESCE(SUM(acks),0),
                        COALESCE(SUM(CASE WHEN acks=0 THEN 1 ELSE 0 END),0)
                 FROM deliveries WHERE node=?1 AND sends>0",
                params![node],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )?;
            let c = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok(DeliveryStats {
                delivered: c(row.0),
                duplicates: c(row.1),
                acks: c(row.2),
                unacked: c(row.3),
            })
        })
    }

    /// Live objects whose current RV was sent to `node` but not acked (should be empty once
    /// everything converged).
    pub fn unacked_current(&self, node: &str) -> Result<Vec<String>> {
        self.with(|conn| {
            let mut st = conn.prepare(
                "SELECT o.namespace || '/' || o.kind || '/' || o.name FROM objects o
                 JOIN deliveries d ON d.uid=o.uid AND d.rv=o.rv AND d.node=?1
                 WHERE o.deleted=0 AND d.acks=0 ORDER BY 1",
            )?;
            let rows = st.query_map(params![node], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.map_err(Into::into)).collect()
        })
    }

    /// What synccontroller would send to `node` now: `update` for every live object whose RV is
    /// above the node's ObjectSync (a missing ObjectSync counts as RV 0: every object goes to
    /// every node), `delete` for ObjectSyncs whose object is gone. Deletes come first.
    pub fn resync_plan(&self, node: &str) -> Result<Vec<ResyncItem>> {
        self.with(|conn| {
            let mut out = Vec::new();
            let mut st = conn.prepare(
                "SELECT s.uid, o.namespace, o.kind, o.name FROM object_syncs s
                 LEFT JOIN objects o ON o.uid = s.uid
                 WHERE s.node=?1 AND (o.uid IS NULL OR o.deleted=1)",
            )?;
            let rows = st.query_map(params![node], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?;
            for row in rows {
                let (uid, ns, kind, name) = row?;
                // An ObjectSync whose object row vanished entirely cannot be named; skip it.
                let (Some(namespace), Some(kind), Some(name)) = (ns, kind, name) else {
                    continue;
                };
                out.push(ResyncItem::Delete {
                    resource: format!("{namespace}/{kind}/{name}"),
                    uid,
                    namespace,
                    name,
                });
            }
            let mut st = conn.prepare(
                "SELECT o.uid, o.namespace, o.kind, o.name, o.rv, o.body, o.deleted FROM objects o
                 LEFT JOIN object_syncs s ON s.uid = o.uid AND s.node=?1
                 WHERE o.deleted=0 AND o.rv > COALESCE(s.rv, 0) ORDER BY o.rv",
            )?;
            let rows = st.query_map(params![node], row_to_object)?;
            for row in rows {
                out.push(ResyncItem::Update(row??));
            }
            Ok(out)
        })
    }
}

type RowObject = Result<Object>;

fn row_to_object(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowObject> {
    let rv: i64 = r.get(4)?;
    let body: String = r.get(5)?;
    let deleted: i64 = r.get(6)?;
    let uid: String = r.get(0)?;
    let namespace: String = r.get(1)?;
    let kind: String = r.get(2)?;
    let name: String = r.get(3)?;
    Ok(serde_json::from_str(&body)
        .context("object body")
        .map(|body| Object {
            uid,
            namespace,
            kind,
            name,
            rv: u64::try_from(rv).unwrap_or(0),
            body,
            deleted: deleted != 0,
        }))
}

/// `Kind` of a resource type (`configmap` → `ConfigMap`).
pub fn kind_name(kind: &str) -> String {
    match kind {
        "pod" => "Pod".to_owned(),
        "configmap" => "ConfigMap".to_owned(),
        "secret" => "Secret".to_owned(),
        "node" => "Node".to_owned(),
        other => {
            let mut c = other.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        }
    }
}

/// Appends a change of `uid` to the log; its position is the change's resourceVersion.
fn log_change(tx: &rusqlite::Transaction<'_>, uid: &str, op: ChangeOp) -> Result<u64> {
    tx.execute(
        "INSERT INTO changes(uid, op) VALUES (?1, ?2)",
        params![uid, op.as_str()],
    )?;
    u64::try_from(tx.last_insert_rowid()).context("negative seq")
}

fn build_body(
    kind: &str,
    namespace: &str,
    name: &str,
    uid: &str,
    rv: u64,
    created: Value,
    data: Value,
) -> Value {
    let mut obj = Map::new();
    obj.insert("kind".into(), Value::String(kind_name(kind)));
    obj.insert("apiVersion".into(), Value::String("v1".into()));
    obj.insert(
        "metadata".into(),
        json!({
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": rv.to_string(),
            "creationTimestamp": created,
        }),
    );
    if let Value::Object(fields) = data {
        for (k, v) in fields {
            match (k.as_str(), v) {
                // The caller's labels, annotations or ownerReferences; identity stays ours.
                ("metadata", Value::Object(extra)) => {
                    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
                        for (mk, mv) in extra {
                            if !matches!(
                                mk.as_str(),
                                "name"
                                    | "namespace"
                                    | "uid"
                                    | "resourceVersion"
                                    | "creationTimestamp"
                            ) {
                                meta.insert(mk, mv);
                            }
                        }
                    }
                }
                ("kind" | "apiVersion" | "metadata", _) => {}
                (_, v) => {
                    obj.insert(k, v);
                }
            }
        }
    }
    Value::Object(obj)
}

fn rfc3339_now() -> String {
    rfc3339_at(SystemTime::now())
}

pub(crate) fn rfc3339_at(t: SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Cluster) {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::open(&dir.path().join("state.db")).unwrap();
        (dir, c)
    }

    #[test]
    fn rvs_grow_globally_and_uid_is_stable_across_updates() {
        let (_d, c) = open();
        let (u1, r1) = c
            .upsert("configmap", "default", "a", json!({"data": {"k": "1"}}))
            .unwrap();
        let (u2, r2) = c
            .upsert("secret", "default", "b", json!({"data": {}}))
            .unwrap();
        let (u3, r3) = c
            .upsert("configmap", "default", "a", json!({"data": {"k": "2"}}))
            .unwrap();
        assert!(r1 < r2 && r2 < r3);
        assert_eq!(u1, u3);
        assert_ne!(u1, u2);
        let a = c.object("configmap", "default", "a").unwrap().unwrap();
        assert_eq!(a.rv, r3);
        assert_eq!(a.body["metadata"]["resourceVersion"], json!(r3.to_string()));
        assert_eq!(a.body["kind"], json!("ConfigMap"));
        assert_eq!(a.body["data"]["k"], json!("2"));
        assert_eq!(a.resource(), "default/configmap/a");
    }

    #[test]
    fn change_log_carries_each_version_and_deletes() {
        let (_d, c) = open();
        c.upsert("pod", "ns", "p", json!({"spec": {}})).unwrap();
        c.upsert("pod", "ns", "p", json!({"spec": {"x": 1}}))
            .unwrap();
        let (_, drv) = c.delete("pod", "ns", "p").unwrap().unwrap();
        assert!(c.delete("pod", "ns", "p").unwrap().is_none());
        let ch = c.changes_after(0, 100).unwrap();
        let ops: Vec<_> = ch.iter().map(|c| c.op).collect();
        assert_eq!(
            ops,
            [ChangeOp::Added, ChangeOp::Modified, ChangeOp::Deleted]
        );
        assert!(
            ch[0].object.deleted,
            "changes carry the object as it is now"
        );
        assert_eq!(ch[2].seq, drv);
        assert!(c.objects().unwrap().is_empty());
        assert_eq!(c.last_seq().unwrap(), drv);
    }

    #[test]
    fn resync_plan_follows_object_syncs() {
        let (_d, c) = open();
        let (ua, ra) = c.upsert("configmap", "default", "a", json!({})).unwrap();
        let (ub, rb) = c.upsert("configmap", "default", "b", json!({})).unwrap();
        // Nothing acked: both go as updates.
        assert_eq!(c.resync_plan("n1").unwrap().len(), 2);
        c.record_ack("n1", &ua, ra, false).unwrap();
        c.record_ack("n1", &ub, rb, false).unwrap();
        assert!(c.resync_plan("n1").unwrap().is_empty());
        c.upsert("configmap", "default", "a", json!({"data": {}}))
            .unwrap();
        c.delete("configmap", "default", "b").unwrap();
        let plan = c.resync_plan("n1").unwrap();
        assert!(
            matches!(&plan[0], ResyncItem::Delete { uid, resource, .. } if *uid == ub && resource == "default/configmap/b")
        );
        assert!(matches!(&plan[1], ResyncItem::Update(o) if o.uid == ua));
        c.record_ack("n1", &ub, 0, true).unwrap();
        assert_eq!(c.object_syncs("n1").unwrap().len(), 1);
    }

    /// Found by chaos-vip: the edge stored an object, its ack was lost with the link, and the
    /// object was deleted before the next session. Without CloudCore's RV 0 ObjectSync from the
    /// send, nothing would ever tell the edge to delete it.
    #[test]
    fn a_send_without_an_ack_still_gets_its_delete_from_resync() {
        let (_d, c) = open();
        let (u, rv) = c.upsert("secret", "default", "s", json!({})).unwrap();
        c.record_delivery("n1", &u, rv, false).unwrap();
        assert!(
            c.acked("n1").unwrap().objects.is_empty(),
            "a send is no ack"
        );
        c.delete("secret", "default", "s").unwrap();
        let plan = c.resync_plan("n1").unwrap();
        assert!(
            matches!(plan.as_slice(), [ResyncItem::Delete { uid, .. }] if *uid == u),
            "{plan:?}"
        );
        // A delete's send creates nothing.
        let (u2, rv2) = c.upsert("secret", "default", "t", json!({})).unwrap();
        c.delete("secret", "default", "t").unwrap();
        c.record_delivery("n1", &u2, rv2 + 1, true).unwrap();
        assert!(!c.object_syncs("n1").unwrap().contains_key(&u2));
    }

    #[test]
    fn a_graceful_delete_marks_a_new_version_and_the_uid_precondition_guards_the_final_one() {
        let (_d, c) = open();
        let (uid, rv) = c
            .upsert("pod", "default", "p", json!({"spec": {"nodeName": "n1"}}))
            .unwrap();
        let grace = Duration::from_secs(30);
        let (u, marked) = c
            .delete_gracefully("pod", "default", "p", grace)
            .unwrap()
            .unwrap();
        assert_eq!(u, uid);
        assert!(marked > rv);
        let o = c.object("pod", "default", "p").unwrap().unwrap();
        assert_eq!(o.rv, marked);
        assert_eq!(
            o.body["metadata"]["resourceVersion"],
            json!(marked.to_string())
        );
        assert_eq!(o.body["metadata"]["deletionGracePeriodSeconds"], json!(30));
        let ts = o.body["metadata"]["deletionTimestamp"].as_str().unwrap();
        assert!(ts > rfc3339_now().as_str(), "{ts} is not in the future");
        assert_eq!(o.body["spec"]["nodeName"], json!("n1"), "the rest is kept");
        let changes = c.changes_after(rv, 10).unwrap();
        assert!(
            matches!(changes.as_slice(), [ch] if ch.op == ChangeOp::Modified && ch.seq == marked),
            "{changes:?}"
        );
        // Marking again is no new version.
        assert_eq!(
            c.delete_gracefully("pod", "default", "p", grace).unwrap(),
            Some((uid.clone(), marked))
        );
        assert_eq!(c.last_seq().unwrap(), marked);

        // The final delete names a uid: another one leaves the pod alone.
        assert_eq!(
            c.delete_if_uid("pod", "default", "p", "other").unwrap(),
            None
        );
        assert!(c.object("pod", "default", "p").unwrap().is_some());
        let (u, gone) = c
            .delete_if_uid("pod", "default", "p", &uid)
            .unwrap()
            .unwrap();
        assert_eq!(u, uid);
        assert!(gone > marked);
        assert!(c.object("pod", "default", "p").unwrap().is_none());
        assert_eq!(c.delete_if_uid("pod", "default", "p", &uid).unwrap(), None);
        assert_eq!(
            c.delete_gracefully("pod", "default", "p", grace).unwrap(),
            None
        );
    }

    #[test]
    fn deliveries_count_duplicates_and_acks() {
        let (_d, c) = open();
        assert_eq!(c.record_delivery("n", "u", 5, false).unwrap(), 1);
        assert_eq!(c.record_delivery("n", "u", 5, false).unwrap(), 2);
        c.record_ack("n", "u", 5, false).unwrap();
        let s = c.delivery_stats("n").unwrap();
        assert_eq!(
            s,
            DeliveryStats {
                delivered: 1,
                duplicates: 1,
                acks: 1,
                unacked: 0
            }
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
