//! metamanager: the one task between the cloud link, the store and edged-shim.
//!
//! * Cloud messages (group `resource`) are committed to the store, *then* acked (spec §4.2).
//!   Messages queued together are committed in one transaction (group commit).
//! * Answers to our own requests (`parent_msg_id`) wake the waiting query, are stored, close the
//!   matching outbox entry, and are acked when they carry a resourceversion.
//! * Status messages from edged-shim go to the durable outbox first and are (re)sent on every
//!   new session until the cloud answers them.
//! * Queries are served from the store, or from the cloud for the types KubeEdge asks it for
//!   while connected (§5.5).

mod plan;
mod pods;
pub(crate) mod token_key;

use std::collections::HashMap;
use std::time::Duration;

use edged_shim::PodEvent;
use edgehub::{LinkState, Message, Resource, Route, now_millis, op};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::{MetaError, StoreError, StoreFailure};
use crate::link::CloudLink;
use crate::metaserver::{ChangeKind, Changes};
use crate::metrics::{HubMetrics, MetaMetrics, Metrics, StoreMetrics};
use crate::store::{MetaKey, Op, OutboxEntry, Outcome, PutOutcome, Store};
use plan::{After, Plan, plan};
use pods::{PodQueue, pod_event};

/// Capacity of the queue of requests from local callers (edged-shim).
const COMMAND_CAPACITY: usize = 128;
/// Most cloud messages taken at once and committed in one transaction.
const INBOUND_BATCH: usize = 64;
/// Most remote queries waiting for the cloud at once.
const MAX_PENDING_QUERIES: usize = 256;

/// Resource types queried from the cloud while connected (spec §5.5, v1.21 list).
const REMOTE_KINDS: [&str; 9] = [
    "configmap",
    "secret",
    "persistentvolume",
    "persistentvolumeclaim",
    "volumeattachment",
    "node",
    "serviceaccounttoken",
    "lease",
    "certificatesigningrequest",
];

/// metamanager's settings, taken from `modules.metaManager`.
#[derive(Debug, Clone)]
pub struct MetaSettings {
    /// How long a remote query waits for the cloud (`remoteQueryTimeout`, default 60 s).
    pub remote_query_timeout: Duration,
    /// Where committed pod changes go (edged-shim); `None` when edged is disabled.
    pub pod_feed: Option<mpsc::Sender<PodEvent>>,
    /// Where every committed cloud write goes (MetaServer's watches); `None` without it.
    pub changes: Option<Changes>,
}

impl MetaSettings {
    /// From the validated config section.
    pub fn from_config(section: &config::MetaManager) -> Self {
        Self {
            remote_query_timeout: Duration::from_secs(u64::from(section.remote_query_timeout)),
            pod_feed: None,
            changes: None,
        }
    }

    /// Feeds pods to `tx`: every stored pod at start, then each committed cloud pod change.
    pub fn with_pod_feed(mut self, tx: mpsc::Sender<PodEvent>) -> Self {
        self.pod_feed = Some(tx);
        self
    }

    /// Publishes every committed cloud insert, update and delete to `changes`.
    pub fn with_changes(mut self, changes: Changes) -> Self {
        self.changes = Some(changes);
        self
    }
}

impl Default for MetaSettings {
    fn default() -> Self {
        Self {
            remote_query_timeout: Duration::from_secs(60),
            pod_feed: None,
            changes: None,
        }
    }
}

type QueryResult = Result<Vec<Value>, MetaError>;

enum Command {
    Submit {
        msg: Box<Message>,
        reply: oneshot::Sender<Result<(), MetaError>>,
    },
    Query {
        resource: String,
        reply: oneshot::Sender<QueryResult>,
    },
    Request {
        msg: Box<Message>,
        reply: oneshot::Sender<QueryResult>,
        /// Re-sent on the next session when the current one ends before the answer.
        resend: bool,
    },
}

/// Handle for local callers (edged-shim). Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetaHandle {
    tx: mpsc::Sender<Command>,
    remote_query_timeout: Duration,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Submit { msg, .. } => write!(f, "Submit({})", msg.route.resource),
            Self::Query { resource, .. } => write!(f, "Query({resource})"),
            Self::Request { msg, .. } => write!(f, "Request({})", msg.route.resource),
        }
    }
}

impl MetaHandle {
    /// Queues a status message (pod or node status patch) for the cloud. Resolves once it is
    /// durable in the outbox; it is then sent when connected and re-sent on every new session
    /// until the cloud answers it. A newer message for the same resource replaces an unsent one.
    pub async fn submit_status(&self, msg: Message) -> Result<(), MetaError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit {
                msg: Box::new(msg),
                reply,
            })
            .await
            .map_err(|_| MetaError::Stopped)?;
        rx.await.map_err(|_| MetaError::Stopped)?
    }

    /// Sends `msg` (an edged `insert` or `delete`) to the cloud and waits for its answer, at most
    /// `remoteQueryTimeout`. Fails at once with [`MetaError::NotConnected`] while no session is
    /// up (spec §5.6); a request in flight when the session drops is re-sent on the next one.
    pub async fn request(&self, msg: Message) -> QueryResult {
        self.request_within(msg, self.remote_query_timeout).await
    }

    /// [`Self::request`] with its own time limit (MetaServer's applications wait 10 s, as
    /// KubeEdge's do).
    pub(crate) async fn request_within(&self, msg: Message, within: Duration) -> QueryResult {
        self.send_request(msg, within, true).await
    }

    /// [`Self::request_within`] for a request that must not be carried out twice (a write):
    /// it is never re-sent, and fails with [`MetaError::SessionLost`] if the session ends
    /// before the answer.
    pub(crate) async fn request_once(&self, msg: Message, within: Duration) -> QueryResult {
        self.send_request(msg, within, false).await
    }

    async fn send_request(&self, msg: Message, within: Duration, resend: bool) -> QueryResult {
        let resource = msg.route.resource.clone();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Request {
                msg: Box::new(msg),
                reply,
                resend,
            })
            .await
            .map_err(|_| MetaError::Stopped)?;
        match tokio::time::timeout(within, rx).await {
            Ok(answer) => answer.map_err(|_| MetaError::Stopped)?,
            Err(_) => Err(MetaError::RemoteTimeout {
                resource,
                after: within,
            }),
        }
    }

    /// Resolves when the metamanager task has ended (shutdown, or its store or link is gone).
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// The objects stored under `resource` (`<ns>/<type>/<name>`, or `<ns>/<type>` for every
    /// object of that type). Configmaps, secrets and the other remote types are asked from the
    /// cloud while connected. Empty when nothing is known.
    pub async fn query(&self, resource: &str) -> QueryResult {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Query {
                resource: resource.to_owned(),
                reply,
            })
            .await
            .map_err(|_| MetaError::Stopped)?;
        match tokio::time::timeout(self.remote_query_timeout, rx).await {
            Ok(answer) => answer.map_err(|_| MetaError::Stopped)?,
            Err(_) => Err(MetaError::RemoteTimeout {
                resource: resource.to_owned(),
                after: self.remote_query_timeout,
            }),
        }
    }
}

/// Starts metamanager. It reads cloud messages from `inbound` (the hub's inbound channel) and
/// stops when `cancel` fires or `inbound` closes. It counts received messages and keeps the
/// outbox depth in `metrics`.
pub fn spawn_metamanager<L: CloudLink>(
    settings: MetaSettings,
    store: Store,
    link: L,
    metrics: &Metrics,
    inbound: mpsc::Receiver<Message>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> MetaHandle {
    let (tx, commands) = mpsc::channel(COMMAND_CAPACITY);
    let task = MetaManager {
        pods: settings.pod_feed.clone().map(PodQueue::new),
        changes: settings.changes.clone(),
        store,
        link_rx: link.link(),
        link,
        session: None,
        pending: HashMap::new(),
        hub_metrics: metrics.hub(),
        meta_metrics: metrics.meta(),
        store_metrics: metrics.store(),
    };
    tracker.spawn(
        task.run(inbound, commands, cancel)
            .instrument(tracing::info_span!("metamanager")),
    );
    MetaHandle {
        tx,
        remote_query_timeout: settings.remote_query_timeout,
    }
}

/// The link or the store has shut down; the loop ends.
struct Stop;

struct Pending {
    msg: Message,
    reply: oneshot::Sender<QueryResult>,
    /// The session the query was last sent on.
    session: u64,
    /// Re-sent on a new session; otherwise failed when its session ends.
    resend: bool,
}

struct MetaManager<L> {
    store: Store,
    link: L,
    link_rx: watch::Receiver<LinkState>,
    /// The session we have drained the outbox for; `None` while the link is down.
    session: Option<u64>,
    /// Remote queries by the msg_id sent to the cloud.
    pending: HashMap<String, Pending>,
    hub_metrics: HubMetrics,
    meta_metrics: MetaMetrics,
    store_metrics: StoreMetrics,
    /// The feed to edged-shim and the pod events waiting for room in it; `None` without edged.
    pods: Option<PodQueue>,
    /// MetaServer's feed; `None` without MetaServer.
    changes: Option<Changes>,
}

impl<L: CloudLink> MetaManager<L> {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Message>,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) {
        tracing::info!("metamanager started");
        // A clone of the feed's sender, so that a reserved slot does not borrow `self`.
        let pod_tx = self.pods.as_ref().map(PodQueue::sender);
        if self.pods.is_some() && self.load_stored_pods().await.is_err() {
            tracing::info!("store shut down before metamanager started");
            return;
        }
        if let Ok(results) = self.store.batch(vec![Op::OutboxCount]).await {
            self.note_outbox_depth(&results);
        }
        let mut link_open = true;
        let mut commands_open = true;
        let mut batch = Vec::with_capacity(INBOUND_BATCH);
        self.link_rx.mark_changed();
        loop {
            let step = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                changed = self.link_rx.changed(), if link_open => {
                    if changed.is_err() {
                        link_open = false;
                        tracing::warn!("link state is no longer published");
                    }
                    self.on_link().await
                }
                permit = pods::reserve(pod_tx.as_ref()), if self.pods.as_ref().is_some_and(|q| !q.is_empty()) => {
                    match (permit, self.pods.as_mut().and_then(PodQueue::pop)) {
                        (Some(permit), Some(event)) => permit.send(event),
                        (Some(_), None) => {}
                        (None, _) => {
                            // edged-shim's pod task is gone: keep serving the cloud without it.
                            tracing::warn!("pod feed closed; pod changes are no longer forwarded");
                            self.pods = None;
                        }
                    }
                    Ok(())
                }
                n = inbound.recv_many(&mut batch, INBOUND_BATCH) => {
                    if n == 0 {
                        tracing::info!("cloud inbound closed");
                        break;
                    }
                    self.on_cloud(std::mem::take(&mut batch)).await
                }
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => {
                        commands_open = false;
                        Ok(())
                    }
                },
            };
            if step.is_err() {
                tracing::info!("cloud link or store shut down");
                break;
            }
        }
        tracing::info!("metamanager stopped");
    }

    /// Sets the outbox gauge from the `OutboxCount` result among `results`, if any.
    fn note_outbox_depth(&self, results: &[Result<Outcome, StoreError>]) {
        if let Some(depth) = results.iter().rev().find_map(|r| match r {
            Ok(Outcome::Count(n)) => Some(*n),
            _ => None,
        }) {
            self.meta_metrics.set_outbox_depth(depth);
        }
    }

    /// Queues every stored pod for edged-shim (offline autonomy: the pods come back from the
    /// store after a restart, before any cloud message).
    async fn load_stored_pods(&mut self) -> Result<(), Stop> {
        match self.store.list_type("pod").await {
            Ok(rows) => {
                tracing::info!(pods = rows.len(), "stored pods fed to edged");
                for row in rows {
                    match serde_json::from_str::<Value>(&row) {
                        Ok(pod) => {
                            if let Some(q) = self.pods.as_mut() {
                                q.upsert(pod);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "stored pod is not JSON; skipped"),
                    }
                }
                Ok(())
            }
            Err(StoreError::Closed) => Err(Stop),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the stored pods; edged starts without them");
                Ok(())
            }
        }
    }

    async fn send(&self, msg: Message) -> Result<(), Stop> {
        self.link.send(msg).await.map_err(|_| Stop)
    }

    async fn on_link(&mut self) -> Result<(), Stop> {
        let state = self.link_rx.borrow_and_update().clone();
        match state {
            LinkState::Connected { session, .. } if self.session != Some(session) => {
                self.session = Some(session);
                self.on_connected(session).await
            }
            LinkState::Connected { .. } => Ok(()),
            LinkState::Connecting { .. } | LinkState::Disconnected { .. } => {
                self.session = None;
                // What must not be sent twice cannot wait for the next session.
                let once: Vec<String> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| !p.resend)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in once {
                    if let Some(p) = self.pending.remove(&id) {
                        let _ = p.reply.send(Err(MetaError::SessionLost {
                            resource: p.msg.route.resource,
                        }));
                    }
                }
                Ok(())
            }
        }
    }

    /// New session: re-send the queries that were in flight, then drain the outbox.
    async fn on_connected(&mut self, session: u64) -> Result<(), Stop> {
        self.pending.retain(|_, p| !p.reply.is_closed());
        let resend: Vec<Message> = self
            .pending
            .values_mut()
            .filter(|p| p.session != session)
            .map(|p| {
                p.session = session;
                p.msg.clone()
            })
            .collect();
        for msg in resend {
            tracing::debug!(resource = %msg.route.resource, "re-sending remote query");
            self.send(msg).await?;
        }
        let entries = match self.store.outbox().await {
            Ok(entries) => entries,
            Err(StoreError::Closed) => return Err(Stop),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox; it is retried on the next session");
                return Ok(());
            }
        };
        self.meta_metrics
            .set_outbox_depth(u64::try_from(entries.len()).unwrap_or(u64::MAX));
        tracing::info!(
            session,
            queued = entries.len(),
            "connected; draining outbox"
        );
        for entry in entries {
            match serde_json::from_str::<Message>(&entry.message) {
                Ok(msg) => self.send(msg).await?,
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "dropping unreadable outbox entry");
                    let _ = self
                        .store
                        .batch(vec![Op::OutboxRemove {
                            msg_id: entry.msg_id,
                        }])
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Commits the writes of a batch of cloud messages in one transaction, then replies to
    /// each in order.
    async fn on_cloud(&mut self, batch: Vec<Message>) -> Result<(), Stop> {
        let mut ops = Vec::new();
        let mut todo = Vec::with_capacity(batch.len());
        let mut answers = false;
        for msg in batch {
            self.hub_metrics.message_received();
            match plan(&msg) {
                Plan::Skip => {
                    tracing::debug!(group = %msg.route.group, resource = %msg.route.resource, "not for metamanager; dropped");
                }
                Plan::Reject(reason) => {
                    tracing::warn!(msg_id = %msg.header.msg_id, operation = %msg.route.operation, resource = %msg.route.resource, reason, "cannot process cloud message");
                    self.send(Message::error_to(&msg, reason)).await?;
                }
                Plan::Write { ops: mine, then } => {
                    answers |= matches!(then, After::Answer { .. });
                    // For MetaServer's watches: the object an upsert replaces, read in the same
                    // transaction just before it.
                    let previous = match (&self.changes, &then, mine.first()) {
                        (Some(_), After::Ack, Some(Op::PutObject { key, .. })) => {
                            ops.push(Op::Get {
                                key: key.as_str().to_owned(),
                            });
                            Some(ops.len() - 1)
                        }
                        _ => None,
                    };
                    todo.push((msg, ops.len()..ops.len() + mine.len(), then, previous));
                    ops.extend(mine);
                }
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        if answers {
            // An answer closes its outbox entry; counted after the removal, in the same commit.
            ops.push(Op::OutboxCount);
        }
        let results = match self.store.batch(ops).await {
            Ok(results) => {
                self.note_outbox_depth(&results);
                results
            }
            Err(StoreError::Closed) => return Err(Stop),
            Err(e) => {
                let failure = e.failure().unwrap_or(StoreFailure::Other);
                for _ in &todo {
                    self.store_metrics.write_failed(failure);
                }
                tracing::error!(error = %e, failure = failure.as_str(), messages = todo.len(), "store commit failed; not acking");
                for (msg, _, _, _) in &todo {
                    self.send(Message::error_to(msg, "edge store commit failed"))
                        .await?;
                }
                return Ok(());
            }
        };
        for (msg, range, then, previous) in todo {
            let expected = range.len();
            let outcome = results.get(range).unwrap_or_default();
            let failed = outcome.iter().find_map(|r| r.as_ref().err());
            if failed.is_some() || outcome.len() != expected {
                let failure = failed
                    .and_then(StoreError::failure)
                    .unwrap_or(StoreFailure::Other);
                self.store_metrics.write_failed(failure);
                let error = failed.map(ToString::to_string).unwrap_or_default();
                tracing::error!(msg_id = %msg.header.msg_id, resource = %msg.route.resource, error, failure = failure.as_str(), "store write failed; not acking");
                self.send(Message::error_to(&msg, "edge store write failed"))
                    .await?;
                continue;
            }
            for r in outcome.iter().flatten() {
                if let Outcome::Put(PutOutcome::Stale { stored, incoming }) = r {
                    tracing::debug!(resource = %msg.route.resource, %stored, %incoming, "older resourceVersion not applied");
                }
            }
            tracing::debug!(msg_id = %msg.header.msg_id, operation = %msg.route.operation, resource = %msg.route.resource, "committed");
            match then {
                After::Ack => {
                    if let Some(changes) = &self.changes {
                        let previous =
                            previous.and_then(|i| results.get(i)).and_then(|r| match r {
                                Ok(Outcome::Value(Some(text))) => serde_json::from_str(text).ok(),
                                _ => None,
                            });
                        publish_change(changes, &msg, outcome, previous.as_ref());
                    }
                    self.send(Message::ack_of(&msg)).await?;
                    if let Some(q) = self.pods.as_mut()
                        && let Some((key, event)) = pod_event(&msg, outcome)
                    {
                        q.push(key, event);
                    }
                }
                After::Answer {
                    parent,
                    ack,
                    answer,
                } => {
                    if let Some(p) = self.pending.remove(&parent) {
                        let answer = answer.map(values_of).map_err(|f| MetaError::Remote {
                            resource: p.msg.route.resource.clone(),
                            status: f.status,
                            reason: f.reason,
                        });
                        // The caller may have timed out; the object is stored either way.
                        let _ = p.reply.send(answer);
                    }
                    if ack {
                        self.send(Message::ack_of(&msg)).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_command(&mut self, cmd: Command) -> Result<(), Stop> {
        match cmd {
            Command::Submit { msg, reply } => self.submit(*msg, reply).await,
            Command::Query { resource, reply } => self.query(resource, reply).await,
            Command::Request { msg, reply, resend } => self.request(*msg, reply, resend).await,
        }
    }

    async fn submit(
        &mut self,
        mut msg: Message,
        reply: oneshot::Sender<Result<(), MetaError>>,
    ) -> Result<(), Stop> {
        let key = msg.route.resource.trim().to_owned();
        if key.is_empty() {
            let _ = reply.send(Err(MetaError::BadRequest {
                resource: key,
                reason: "a status message needs a resource",
            }));
            return Ok(());
        }
        if msg.header.msg_id.is_empty() {
            msg.header.msg_id = Message::new(Route::default(), Value::Null).header.msg_id;
        }
        let mut ops = vec![Op::OutboxPut(OutboxEntry {
            key,
            msg_id: msg.header.msg_id.clone(),
            message: serde_json::to_string(&msg).unwrap_or_default(),
            enqueued_at: now_millis(),
        })];
        // KubeEdge also keeps the latest patch locally (spec §5.6).
        if msg.route.operation == op::PATCH
            && let (Value::String(patch), Ok(key)) =
                (&msg.content, MetaKey::object(&msg.route.resource))
        {
            ops.push(Op::PutRaw {
                key,
                value: patch.clone(),
            });
        }
        ops.push(Op::OutboxCount);
        let result = match self.store.batch(ops).await {
            Err(StoreError::Closed) => {
                let _ = reply.send(Err(MetaError::Stopped));
                return Err(Stop);
            }
            Err(e) => Err(MetaError::Store(e)),
            Ok(results) => {
                self.note_outbox_depth(&results);
                match results.into_iter().find_map(Result::err) {
                    Some(e) => Err(MetaError::Store(e)),
                    None => Ok(()),
                }
            }
        };
        let durable = result.is_ok();
        let _ = reply.send(result);
        if durable && self.session.is_some() {
            self.send(msg).await?;
        }
        Ok(())
    }

    async fn request(
        &mut self,
        mut msg: Message,
        reply: oneshot::Sender<QueryResult>,
        resend: bool,
    ) -> Result<(), Stop> {
        let Some(session) = self.session else {
            let _ = reply.send(Err(MetaError::NotConnected {
                resource: msg.route.resource,
            }));
            return Ok(());
        };
        if msg.header.msg_id.is_empty() {
            msg.header.msg_id = Message::new(Route::default(), Value::Null).header.msg_id;
        }
        self.await_answer(msg, reply, session, resend).await
    }

    /// Sends `msg` to the cloud and parks `reply` until the answer (`parent_msg_id`) arrives.
    async fn await_answer(
        &mut self,
        msg: Message,
        reply: oneshot::Sender<QueryResult>,
        session: u64,
        resend: bool,
    ) -> Result<(), Stop> {
        self.pending.retain(|_, p| !p.reply.is_closed());
        if self.pending.len() >= MAX_PENDING_QUERIES {
            let _ = reply.send(Err(MetaError::Busy {
                limit: MAX_PENDING_QUERIES,
            }));
            return Ok(());
        }
        tracing::debug!(operation = %msg.route.operation, resource = %msg.route.resource, msg_id = %msg.header.msg_id, "request to the cloud");
        self.pending.insert(
            msg.header.msg_id.clone(),
            Pending {
                msg: msg.clone(),
                reply,
                session,
                resend,
            },
        );
        self.send(msg).await
    }

    async fn query(
        &mut self,
        resource: String,
        reply: oneshot::Sender<QueryResult>,
    ) -> Result<(), Stop> {
        let Some(parsed) = Resource::parse(resource.trim()) else {
            let _ = reply.send(Err(MetaError::BadRequest {
                resource,
                reason: "resource is not <namespace>/<type>[/<name>]",
            }));
            return Ok(());
        };
        if let (Some(session), Some(_)) = (self.session, parsed.name)
            && REMOTE_KINDS.contains(&parsed.kind)
        {
            let msg = Message::new(
                Route::new("edged", "meta", op::QUERY, resource.trim()),
                Value::Null,
            );
            return self.await_answer(msg, reply, session, true).await;
        }
        let read = match parsed.name {
            Some(_) => self
                .store
                .get(resource.trim())
                .await
                .map(|v| v.into_iter().collect::<Vec<_>>()),
            None => self.store.list_type(parsed.kind).await,
        };
        let answer = read
            .map(|values| values.iter().map(|s| parse_stored(s)).collect())
            .map_err(MetaError::Store);
        let _ = reply.send(answer);
        Ok(())
    }
}

/// A cloud answer as a list of objects: an array is its items, null is nothing.
/// Hands a committed cloud write to MetaServer's watches: an applied insert or update, or a
/// delete that removed the row.
fn publish_change(
    changes: &Changes,
    msg: &Message,
    outcome: &[Result<Outcome, StoreError>],
    previous: Option<&Value>,
) {
    let Ok(key) = MetaKey::object(&msg.route.resource) else {
        return;
    };
    let kind = match (msg.route.operation.as_str(), outcome.first()) {
        // An insert over a stored object changes it, as an update does.
        (op::INSERT | op::UPDATE, Some(Ok(Outcome::Put(PutOutcome::Applied))))
            if previous.is_some() =>
        {
            ChangeKind::Modified
        }
        (op::INSERT, Some(Ok(Outcome::Put(PutOutcome::Applied)))) => ChangeKind::Added,
        (op::UPDATE, Some(Ok(Outcome::Put(PutOutcome::Applied)))) => ChangeKind::Modified,
        (op::DELETE, Some(Ok(Outcome::Deleted(n)))) if *n > 0 => ChangeKind::Deleted,
        _ => return,
    };
    let object = match &msg.content {
        Value::Object(_) => msg.content.clone(),
        // A delete may come without the object: its name and namespace are in the resource.
        _ => {
            let Some(r) = Resource::parse(msg.route.resource.trim()) else {
                return;
            };
            serde_json::json!({"metadata": {"name": r.name, "namespace": r.namespace}})
        }
    };
    changes.publish(kind, key.kind(), object, previous);
}

fn values_of(v: Value) -> Vec<Value> {
    match v {
        Value::Null => Vec::new(),
        Value::Array(items) => items,
        other => vec![other],
    }
}

/// A stored value: JSON when it parses, else the raw string (a patch).
fn parse_stored(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

#[cfg(test)]
mod tests;
