//! Errors of the store, metamanager and the command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A shareable underlying cause (one commit failure is reported to every write of the batch).
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Errors of the SQLite store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The directory of `database.dataSource` could not be created.
    #[error(
        "cannot create database directory {path}: check permissions or set database.dataSource"
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Cause,
    },
    /// The database file could not be opened or configured.
    #[error("cannot open database {path}: check the file and database.dataSource")]
    Open {
        /// `database.dataSource`.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: Cause,
    },
    /// The tables could not be created or checked.
    #[error("cannot prepare the schema of {path}: the file may not be an edgecore database")]
    Schema {
        /// `database.dataSource`.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: Cause,
    },
    /// The file is not a database SQLite can use, or its integrity check finds damage. It is
    /// left exactly as it is.
    #[error(
        "database {path} is damaged ({report}); edgecore leaves it untouched: stop edgecore, move \
         the file aside (or restore a backup) and start again: the cloud sends every object anew \
         and the pods start from them"
    )]
    Damaged {
        /// `database.dataSource`.
        path: PathBuf,
        /// What SQLite said: the error, or the first lines of `PRAGMA quick_check`.
        report: String,
    },
    /// The database (or its directory, for the write-ahead log) cannot be written.
    #[error(
        "database {path} cannot be written: is the file or its file system read-only? edgecore \
         writes every object it acks there; make it writable and start again"
    )]
    ReadOnly {
        /// `database.dataSource`.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: Cause,
    },
    /// One statement failed; the rest of its batch was still committed.
    #[error("store {what} failed: {}", failure.hint())]
    Statement {
        /// The operation, e.g. `put meta`.
        what: &'static str,
        /// What kind of failure it is.
        failure: StoreFailure,
        /// The SQLite error.
        #[source]
        source: Cause,
    },
    /// The transaction did not commit; none of its writes happened.
    #[error("store commit failed: {}", failure.hint())]
    Commit {
        /// What kind of failure it is.
        failure: StoreFailure,
        /// The SQLite error.
        #[source]
        source: Cause,
    },
    /// The writer thread could not be started.
    #[error("cannot start the store thread")]
    Thread {
        /// The I/O error.
        #[source]
        source: Cause,
    },
    /// The writer thread has stopped (shutdown).
    #[error("the store has shut down")]
    Closed,
    /// A resource string that cannot be a `meta` key.
    #[error("resource {resource:?} is not <namespace>/<type>/<name>")]
    BadKey {
        /// The resource as received.
        resource: String,
    },
}

/// Errors returned to metamanager's local callers (edged-shim).
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    /// metamanager has stopped (shutdown).
    #[error("metamanager has shut down")]
    Stopped,
    /// The store failed.
    #[error("metamanager store access failed")]
    Store(#[from] StoreError),
    /// The message cannot be handled.
    #[error("cannot handle {resource:?}: {reason}")]
    BadRequest {
        /// The resource of the request.
        resource: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The cloud did not answer a remote query in time.
    #[error("no answer from the cloud for {resource:?} within {after:?}")]
    RemoteTimeout {
        /// The queried resource.
        resource: String,
        /// `modules.metaManager.remoteQueryTimeout`.
        after: Duration,
    },
    /// The cloud answered with an error.
    #[error("the cloud answered {resource:?} with an error: {reason}")]
    Remote {
        /// The queried resource.
        resource: String,
        /// What kind of failure the cloud reported.
        status: RemoteStatus,
        /// The cloud's error text.
        reason: String,
    },
    /// A request that needs the cloud was made while no session is up (spec §5.6).
    #[error("cannot send {resource:?}: not connected to the cloud")]
    NotConnected {
        /// The resource of the request.
        resource: String,
    },
    /// The session ended while a request that must not be sent twice (a write) waited for its
    /// answer: the cloud may or may not have carried it out.
    #[error(
        "the session to the cloud ended before it answered {resource:?}; it may have been carried out"
    )]
    SessionLost {
        /// The resource of the request.
        resource: String,
    },
    /// Too many remote queries are waiting for an answer.
    #[error("too many remote queries in flight ({limit}); retry later")]
    Busy {
        /// The limit.
        limit: usize,
    },
}

/// The kind of an error answer from the cloud (the Kubernetes status reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteStatus {
    /// The object does not exist.
    NotFound,
    /// The object exists already (e.g. the Node on a second registration).
    AlreadyExists,
    /// Any other failure.
    Other,
}

impl StoreError {
    pub(crate) fn cause(e: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Arc::new(e)
    }

    /// What kind of failure a write met, when it is one (for the log line and the metric).
    pub fn failure(&self) -> Option<StoreFailure> {
        match self {
            Self::Statement { failure, .. } | Self::Commit { failure, .. } => Some(*failure),
            Self::Damaged { .. } => Some(StoreFailure::Damaged),
            Self::ReadOnly { .. } => Some(StoreFailure::ReadOnly),
            _ => None,
        }
    }
}

/// Why a write to the store failed, as far as the operator is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreFailure {
    /// The disk (or SQLite's size limit) is full.
    DiskFull,
    /// The database file or its directory cannot be written.
    ReadOnly,
    /// The file is damaged.
    Damaged,
    /// Anything else (I/O errors, a lock held too long, ...).
    Other,
}

impl StoreFailure {
    /// Every kind, in a fixed order (for metrics).
    pub const ALL: [Self; 4] = [Self::DiskFull, Self::ReadOnly, Self::Damaged, Self::Other];

    /// Static label, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DiskFull => "disk_full",
            Self::ReadOnly => "read_only",
            Self::Damaged => "damaged",
            Self::Other => "other",
        }
    }

    /// The kind of a SQLite error.
    pub(crate) fn of(e: &rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Self::DiskFull,
            Some(ErrorCode::ReadOnly)
            | Some(ErrorCode::CannotOpen)
            | Some(ErrorCode::PermissionDenied) => Self::ReadOnly,
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => Self::Damaged,
            _ => Self::Other,
        }
    }

    /// What the operator should know, in a few words.
    fn hint(self) -> &'static str {
        match self {
            Self::DiskFull => {
                "the disk is full; free space where database.dataSource lives (nothing was acked: \
                 the cloud sends it again)"
            }
            Self::ReadOnly => {
                "the database cannot be written (read-only file or file system?); nothing was acked"
            }
            Self::Damaged => "the database file is damaged; see the error at start-up",
            Self::Other => "see the cause; nothing was acked",
        }
    }
}
