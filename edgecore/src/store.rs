//! The SQLite store: KubeEdge's `meta` table plus our `edgecore_outbox` (spec §5).
//!
//! One thread owns the connection (see `writer`). Callers hold a cloneable [`Store`] and send it
//! batches of operations over a bounded channel; each batch is answered on a oneshot only after
//! its transaction has committed, so a caller that acks after `await` acks durable state.

mod meta_v2;
pub(crate) use meta_v2::key as meta_v2_key;
mod resource_version;
mod writer;

use std::path::Path;

use edgehub::Resource;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use edgehub::sorted_json;
pub use resource_version::ResourceVersion;

/// Capacity of the queue of batches waiting for the writer thread.
const STORE_QUEUE_CAPACITY: usize = 256;

/// A `meta` row key: the trimmed resource string `<namespace>/<type>/<name>` and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaKey {
    key: String,
    namespace_len: usize,
    kind: String,
}

impl MetaKey {
    /// The key of one object; a resource without a name is not an object.
    pub(crate) fn object(resource: &str) -> Result<Self, StoreError> {
        let key = resource.trim();
        let bad = || StoreError::BadKey {
            resource: resource.to_owned(),
        };
        let parsed = Resource::parse(key).ok_or_else(bad)?;
        if parsed.name.is_none() {
            return Err(bad());
        }
        Ok(Self {
            key: key.to_owned(),
            namespace_len: parsed.namespace.len(),
            kind: parsed.kind.to_owned(),
        })
    }

    /// A key that is not a resource string (KubeEdge's service-account token keys), with its
    /// type. Such a key has no namespace or name of its own.
    pub(crate) fn opaque(key: String, kind: &str) -> Self {
        Self {
            key,
            namespace_len: 0,
            kind: kind.to_owned(),
        }
    }

    /// The `key` column.
    pub(crate) fn as_str(&self) -> &str {
        &self.key
    }

    /// The `type` column: the second segment.
    pub(crate) fn kind(&self) -> &str {
        &self.kind
    }

    /// The key of the same namespace and name under another type (`pod` → `podpatch`).
    pub(crate) fn with_kind(&self, kind: &str) -> Self {
        let namespace = self.key.get(..self.namespace_len).unwrap_or_default();
        let name_start = self.namespace_len + 1 + self.kind.len() + 1;
        let name = self.key.get(name_start..).unwrap_or_default();
        Self {
            key: format!("{namespace}/{kind}/{name}"),
            namespace_len: self.namespace_len,
            kind: kind.to_owned(),
        }
    }
}

/// Result of writing an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The row was written.
    Applied,
    /// The stored object has a newer resourceVersion; nothing was written.
    Stale {
        /// resourceVersion of the stored object.
        stored: ResourceVersion,
        /// resourceVersion of the rejected write.
        incoming: ResourceVersion,
    },
}

/// A status message waiting in `edgecore_outbox` for the cloud's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboxEntry {
    /// The coalescing key: the message's resource.
    pub(crate) key: String,
    /// The msg_id the cloud's answer will carry as parent_msg_id.
    pub(crate) msg_id: String,
    /// The whole beehive message as JSON.
    pub(crate) message: String,
    /// Unix milliseconds of the first enqueue of this key.
    pub(crate) enqueued_at: i64,
}

/// One operation of a batch.
#[derive(Debug)]
pub(crate) enum Op {
    /// Insert or replace an object (value = key-sorted JSON), unless `rv` is older than the stored one.
    PutObject {
        key: MetaKey,
        json: String,
        rv: Option<ResourceVersion>,
    },
    /// Insert or replace a raw value (a patch string).
    PutRaw { key: MetaKey, value: String },
    /// Delete by key; with a uid, only the row whose value contains it, and then its podpatch row.
    Delete { key: MetaKey, uid: Option<String> },
    /// Read one value.
    Get { key: String },
    /// Read every value of one type (namespace ignored, as KubeEdge does).
    ListType { kind: String },
    /// Read one `meta_v2` value by its key.
    GetV2 { key: String },
    /// Read the `meta_v2` values of one GVR (Go's string form), in one namespace or all.
    ListV2 {
        gvr: String,
        namespace: Option<String>,
    },
    /// Insert an outbox entry, replacing the one with the same key.
    OutboxPut(OutboxEntry),
    /// Remove the outbox entry with this msg_id.
    OutboxRemove { msg_id: String },
    /// All outbox entries, oldest first.
    OutboxList,
    /// Number of outbox entries (for the depth gauge).
    OutboxCount,
}

/// The result of one [`Op`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Put(PutOutcome),
    Deleted(usize),
    Value(Option<String>),
    Values(Vec<String>),
    Removed(bool),
    Outbox(Vec<OutboxEntry>),
    Count(u64),
    Done,
}

type BatchReply = Result<Vec<Result<Outcome, StoreError>>, StoreError>;

enum Command {
    Batch {
        ops: Vec<Op>,
        reply: oneshot::Sender<BatchReply>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// Handle to the store's writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Batch { ops, .. } => write!(f, "Batch({} ops)", ops.len()),
            Self::Shutdown { .. } => f.write_str("Shutdown"),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` (`database.dataSource`) and starts the
    /// writer thread. An existing KubeEdge `edgecore.db` keeps its tables and rows.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let (conn, v2) = writer::open(path)?;
        let (tx, rx) = mpsc::channel(STORE_QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("edgecore-store".to_owned())
            .spawn(move || writer::run(conn, v2, rx))
            .map_err(|e| StoreError::Thread {
                source: StoreError::cause(e),
            })?;
        Ok(Self { tx })
    }

    /// Runs `ops` in one transaction. Resolves after the commit; each op has its own result.
    pub(crate) async fn batch(&self, ops: Vec<Op>) -> BatchReply {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Batch { ops, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn one(&self, op: Op) -> Result<Outcome, StoreError> {
        self.batch(vec![op])
            .await?
            .into_iter()
            .next()
            .unwrap_or(Err(StoreError::Closed))
    }

    /// The stored `value` of `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self
            .one(Op::Get {
                key: key.trim().to_owned(),
            })
            .await?
        {
            Outcome::Value(v) => Ok(v),
            _ => Ok(None),
        }
    }

    /// Every stored value of one type, ordered by key.
    pub async fn list_type(&self, kind: &str) -> Result<Vec<String>, StoreError> {
        match self
            .one(Op::ListType {
                kind: kind.to_owned(),
            })
            .await?
        {
            Outcome::Values(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// The `meta_v2` value under `key` (`/<group>/<version>/<resource>/<namespace>/<name>`).
    pub(crate) async fn get_v2(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self
            .one(Op::GetV2 {
                key: key.to_owned(),
            })
            .await?
        {
            Outcome::Value(v) => Ok(v),
            _ => Ok(None),
        }
    }

    /// The `meta_v2` values of `group`/`version`/`resource`, in `namespace` or all, by key.
    pub(crate) async fn list_v2(
        &self,
        group: &str,
        version: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        match self
            .one(Op::ListV2 {
                gvr: meta_v2::gvr(group, version, resource),
                namespace: namespace.map(str::to_owned),
            })
            .await?
        {
            Outcome::Values(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// Writes `object` under `resource` as key-sorted JSON, guarded by `rv`.
    pub async fn put_object(
        &self,
        resource: &str,
        object: &Value,
        rv: Option<&str>,
    ) -> Result<PutOutcome, StoreError> {
        let op = Op::PutObject {
            key: MetaKey::object(resource)?,
            json: sorted_json(object),
            rv: rv.and_then(ResourceVersion::parse),
        };
        match self.one(op).await? {
            Outcome::Put(p) => Ok(p),
            _ => Ok(PutOutcome::Applied),
        }
    }

    /// Deletes `resource`; with `uid`, only if the stored value contains it (pods).
    /// Returns the number of rows removed, podpatch row included.
    pub async fn delete(&self, resource: &str, uid: Option<&str>) -> Result<usize, StoreError> {
        let op = Op::Delete {
            key: MetaKey::object(resource)?,
            uid: uid.map(str::to_owned),
        };
        match self.one(op).await? {
            Outcome::Deleted(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// All outbox entries, oldest first.
    pub(crate) async fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        match self.one(Op::OutboxList).await? {
            Outcome::Outbox(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// Commits everything queued before this call, then stops the writer thread. Later calls
    /// on any clone fail with [`StoreError::Closed`].
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { done }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests;
