//! The metric families of edgecore and small handles to update them.
//!
//! One [`Metrics`] value owns the registry; each subsystem registers its families in its own
//! sub-registry (`edgecore_edgehub_*`, `edgecore_metamanager_*`, `edgecore_store_*`,
//! `edgecore_cert_*`) and gets a cloneable handle whose methods speak the subsystem's terms
//! (a [`LinkState`], a depth, a file size), so callers never see prometheus types. Labels come
//! from closed sets only: the link state, the hub's static reason labels, and the configured
//! CloudHub endpoints.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgehub::{DisconnectReason, HubStats, LinkState, Message, op};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::StoreFailure;
use crate::link::CloudLink;

/// Content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus scrapes).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// At most this many distinct endpoint labels. Endpoints come from the configuration, so the
/// cap is only a guard against a set that is not closed after all.
const MAX_ENDPOINT_LABELS: usize = 32;

/// A label set of one label whose value is one of a closed set of static strings.
type StaticLabel = [(&'static str, &'static str); 1];
/// The `endpoint` label: a configured CloudHub `host:port`.
type EndpointLabel = [(&'static str, String); 1];
/// A gauge holding a float (seconds).
type FloatGauge = Gauge<f64, AtomicU64>;

/// The state of the cloud session, as the `state` label of `edgecore_edgehub_session_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Dialling an endpoint.
    Connecting,
    /// A session is up.
    Connected,
    /// No session and no attempt under way.
    Disconnected,
}

impl SessionState {
    /// Every state, in a fixed order.
    pub const ALL: [Self; 3] = [Self::Connecting, Self::Connected, Self::Disconnected];

    /// Static label, as exported.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        }
    }

    /// The state of `link`.
    pub fn of(link: &LinkState) -> Self {
        match link {
            LinkState::Connecting { .. } => Self::Connecting,
            LinkState::Connected { .. } => Self::Connected,
            LinkState::Disconnected { .. } => Self::Disconnected,
        }
    }
}

/// The metrics of edgecore: the registry and one handle per subsystem. Cheap to clone; every
/// clone updates and encodes the same values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    hub: HubMetrics,
    meta: MetaMetrics,
    store: StoreMetrics,
    cert: CertMetrics,
    edged: EdgedMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family, all at their zero values.
    pub fn new() -> Self {
        let mut root = Registry::with_prefix("edgecore");
        let hub = HubMetrics::register(root.sub_registry_with_prefix("edgehub"));
        let meta = MetaMetrics::register(root.sub_registry_with_prefix("metamanager"));
        let store = StoreMetrics::register(root.sub_registry_with_prefix("store"));
        let cert = CertMetrics::register(root.sub_registry_with_prefix("cert"));
        let edged = EdgedMetrics::register(root.sub_registry_with_prefix("edged"));
        Self {
            registry: Arc::new(root),
            hub,
            meta,
            store,
            cert,
            edged,
        }
    }

    /// The cloud link's metrics (`edgecore_edgehub_*`).
    pub fn hub(&self) -> HubMetrics {
        self.hub.clone()
    }

    /// metamanager's metrics (`edgecore_metamanager_*`).
    pub fn meta(&self) -> MetaMetrics {
        self.meta.clone()
    }

    /// The store's metrics (`edgecore_store_*`).
    pub fn store(&self) -> StoreMetrics {
        self.store.clone()
    }

    /// The certificate metrics (`edgecore_cert_*`).
    pub fn cert(&self) -> CertMetrics {
        self.cert.clone()
    }

    /// edged's metrics (`edgecore_edged_*`).
    pub fn edged(&self) -> EdgedMetrics {
        self.edged.clone()
    }

    /// Every family in the OpenMetrics text format (`application/openmetrics-text`).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Metrics of the cloud link, fed by the wiring from the hub's link watch and stats snapshot.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    session_state: Family<StaticLabel, Gauge>,
    endpoint: Family<EndpointLabel, Gauge>,
    /// The endpoint labels created so far (a family cannot be iterated).
    endpoints: Arc<Mutex<Vec<String>>>,
    reconnects: Family<StaticLabel, Counter>,
    sessions: Counter,
    last_failover: FloatGauge,
    backoff: FloatGauge,
    received: Counter,
    sent: Counter,
}

impl HubMetrics {
    fn register(reg: &mut Registry) -> Self {
        let m = Self {
            session_state: Family::default(),
            endpoint: Family::default(),
            endpoints: Arc::default(),
            reconnects: Family::default(),
            sessions: Counter::default(),
            last_failover: FloatGauge::default(),
            backoff: FloatGauge::default(),
            received: Counter::default(),
            sent: Counter::default(),
        };
        // Every series of a closed set exists from the start, so rates and absent() behave.
        for state in SessionState::ALL {
            let _ = m.session_state.get_or_create(&[("state", state.as_str())]);
        }
        m.session_state
            .get_or_create(&[("state", SessionState::Disconnected.as_str())])
            .set(1);
        for reason in DisconnectReason::ALL {
            let _ = m.reconnects.get_or_create(&[("reason", reason.as_str())]);
        }
        reg.register(
            "session_state",
            "1 for the current state of the cloud session, 0 for the others",
            m.session_state.clone(),
        );
        reg.register(
            "endpoint_info",
            "1 for the CloudHub endpoint of the current session or attempt, 0 for the others used before",
            m.endpoint.clone(),
        );
        reg.register(
            "reconnects",
            "Times the cloud link went down, by reason (each failed attempt counts as dial_failed)",
            m.reconnects.clone(),
        );
        reg.register(
            "sessions",
            "Cloud sessions established since start",
            m.sessions.clone(),
        );
        reg.register_with_unit(
            "last_failover_duration",
            "Time from the last session loss to the next session",
            Unit::Seconds,
            m.last_failover.clone(),
        );
        reg.register_with_unit(
            "backoff",
            "Delay before the current or last round of connection attempts",
            Unit::Seconds,
            m.backoff.clone(),
        );
        reg.register(
            "messages_received",
            "Messages received from the cloud and handed to metamanager",
            m.received.clone(),
        );
        reg.register(
            "messages_sent",
            "Messages queued for the cloud",
            m.sent.clone(),
        );
        m
    }

    /// Records a link transition: the state gauge and the endpoint in use.
    pub fn observe_link(&self, link: &LinkState) {
        let current = SessionState::of(link);
        for state in SessionState::ALL {
            self.session_state
                .get_or_create(&[("state", state.as_str())])
                .set(i64::from(state == current));
        }
        let endpoint = match link {
            LinkState::Connecting { endpoint, .. } | LinkState::Connected { endpoint, .. } => {
                endpoint
            }
            // Keep showing the last endpoint while disconnected.
            LinkState::Disconnected { .. } => return,
        };
        if !self.mark_endpoint(endpoint) {
            tracing::debug!(%endpoint, "too many endpoint labels; not exported");
        }
    }

    /// Copies the hub's counters: reconnects by reason, sessions, last failover duration and the
    /// current backoff. The snapshot is cumulative; counters move by the difference.
    pub fn observe_stats(&self, stats: &HubStats) {
        self.observe_reconnects(stats.reconnects_by_reason());
        catch_up(&self.sessions, stats.sessions);
        if let Some(ms) = stats.last_failover_ms {
            self.last_failover.set(millis_to_secs(ms));
        }
        self.backoff.set(millis_to_secs(stats.current_backoff_ms));
    }

    /// Copies cumulative reconnect counts by reason (part of [`Self::observe_stats`]).
    pub fn observe_reconnects(&self, totals: impl IntoIterator<Item = (DisconnectReason, u64)>) {
        for (reason, total) in totals {
            let counter = self
                .reconnects
                .get_or_create_owned(&[("reason", reason.as_str())]);
            catch_up(&counter, total);
        }
    }

    /// One message from the cloud went to metamanager.
    pub fn message_received(&self) {
        self.received.inc();
    }

    /// One message was queued for the cloud.
    pub fn message_sent(&self) {
        self.sent.inc();
    }

    /// Sets `endpoint` to 1 and every other known one to 0. False when the endpoint is new and
    /// the label cap is reached.
    fn mark_endpoint(&self, endpoint: &str) -> bool {
        // A poisoned lock only means another update panicked half-way; the list is still valid.
        let mut known = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !known.iter().any(|k| k == endpoint) {
            if known.len() >= MAX_ENDPOINT_LABELS {
                return false;
            }
            known.push(endpoint.to_owned());
        }
        for k in known.iter() {
            self.endpoint
                .get_or_create(&[("endpoint", k.clone())])
                .set(i64::from(k == endpoint));
        }
        true
    }
}

/// metamanager's metrics.
#[derive(Debug, Clone)]
pub struct MetaMetrics {
    outbox_depth: Gauge,
    acks_sent: Counter,
}

impl MetaMetrics {
    fn register(reg: &mut Registry) -> Self {
        let m = Self {
            outbox_depth: Gauge::default(),
            acks_sent: Counter::default(),
        };
        reg.register(
            "outbox_depth",
            "Messages in the durable outbox waiting for the cloud",
            m.outbox_depth.clone(),
        );
        reg.register(
            "acks_sent",
            "Acks of cloud messages handed to the cloud link",
            m.acks_sent.clone(),
        );
        m
    }

    /// The outbox now holds `depth` messages.
    pub fn set_outbox_depth(&self, depth: u64) {
        self.outbox_depth.set(saturating_i64(depth));
    }

    /// One ack went to the cloud link.
    pub fn ack_sent(&self) {
        self.acks_sent.inc();
    }
}

/// The store's metrics.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    size: Gauge,
    write_failures: Family<StaticLabel, Counter>,
}

impl StoreMetrics {
    fn register(reg: &mut Registry) -> Self {
        let m = Self {
            size: Gauge::default(),
            write_failures: Family::default(),
        };
        for failure in StoreFailure::ALL {
            let _ = m
                .write_failures
                .get_or_create(&[("failure", failure.as_str())]);
        }
        reg.register_with_unit(
            "size",
            "Size of the database file and its write-ahead log",
            Unit::Bytes,
            m.size.clone(),
        );
        reg.register(
            "write_failures",
            "Cloud messages not acked because writing them to the store failed, by failure",
            m.write_failures.clone(),
        );
        m
    }

    /// A write of a cloud message failed with `failure` (it was not acked).
    pub fn write_failed(&self, failure: StoreFailure) {
        self.write_failures
            .get_or_create(&[("failure", failure.as_str())])
            .inc();
    }

    /// The database (file plus WAL) now takes `bytes`.
    pub fn set_size_bytes(&self, bytes: u64) {
        self.size.set(saturating_i64(bytes));
    }
}

/// Certificate metrics.
#[derive(Debug, Clone)]
pub struct CertMetrics {
    expiry: Gauge,
}

impl CertMetrics {
    fn register(reg: &mut Registry) -> Self {
        let m = Self {
            expiry: Gauge::default(),
        };
        reg.register_with_unit(
            "expiry_timestamp",
            "Expiry (notAfter) of the edge's client certificate, Unix time; 0 until known",
            Unit::Seconds,
            m.expiry.clone(),
        );
        m
    }

    /// The client certificate in use expires at `not_after`.
    pub fn set_expiry(&self, not_after: SystemTime) {
        let secs = match not_after.duration_since(UNIX_EPOCH) {
            Ok(d) => saturating_i64(d.as_secs()),
            // Before 1970: nonsense, but report it as such rather than as "unknown".
            Err(e) => -saturating_i64(e.duration().as_secs()),
        };
        self.expiry.set(secs);
    }
}

/// Metrics of edged: whether the container runtime answers.
#[derive(Debug, Clone)]
pub struct EdgedMetrics {
    runtime_up: Gauge,
}

impl EdgedMetrics {
    fn register(reg: &mut Registry) -> Self {
        let m = Self {
            runtime_up: Gauge::default(),
        };
        reg.register(
            "runtime_up",
            "1 while the container runtime answers, 0 while it is down or not probed yet",
            m.runtime_up.clone(),
        );
        m
    }

    /// The container runtime answers (`true`) or not.
    pub fn set_runtime_up(&self, up: bool) {
        self.runtime_up.set(i64::from(up));
    }
}

/// A [`CloudLink`] that counts what it queues for the cloud: every message in
/// `edgecore_edgehub_messages_sent`, acks also in `edgecore_metamanager_acks_sent`. Hand it to
/// metamanager in place of the hub's handle.
#[derive(Debug, Clone)]
pub struct MeteredLink<L> {
    inner: L,
    hub: HubMetrics,
    meta: MetaMetrics,
}

impl<L: CloudLink> MeteredLink<L> {
    /// Wraps `inner`.
    pub fn new(inner: L, metrics: &Metrics) -> Self {
        Self {
            inner,
            hub: metrics.hub(),
            meta: metrics.meta(),
        }
    }
}

impl<L: CloudLink> CloudLink for MeteredLink<L> {
    async fn send(&self, msg: Message) -> Result<(), Message> {
        let ack = is_ack(&msg);
        self.inner.send(msg).await?;
        self.hub.message_sent();
        if ack {
            self.meta.ack_sent();
        }
        Ok(())
    }

    fn link(&self) -> watch::Receiver<LinkState> {
        self.inner.link()
    }
}

/// An ack as metamanager sends one (`Message::ack_of`): a `response` whose content is `"OK"`.
fn is_ack(msg: &Message) -> bool {
    msg.route.operation == op::RESPONSE && msg.content.as_str() == Some("OK")
}

/// Keeps `edgecore_store_size_bytes` at the size of the database `db` plus its `-wal` file,
/// sampled every `every`, until `cancel`.
pub async fn sample_store_size(
    db: PathBuf,
    metrics: StoreMetrics,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = tick.tick() => metrics.set_size_bytes(store_files_size(&db).await),
        }
    }
}

/// Size of `db` and `db-wal`; a file that does not exist (yet) counts 0.
async fn store_files_size(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let mut total = 0u64;
    for path in [db.to_path_buf(), PathBuf::from(wal)] {
        match tokio::fs::metadata(&path).await {
            Ok(meta) => total = total.saturating_add(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "cannot stat store file"),
        }
    }
    total
}

/// Moves a counter up to a cumulative `total` from a snapshot; never down.
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

fn millis_to_secs(ms: u64) -> f64 {
    // u64 → f64 is exact for any duration edgecore can see (< 2^53 ms).
    ms as f64 / 1000.0
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The value of the one sample line `series` (name plus labels, as encoded).
    pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    fn link_connected(endpoint: &str) -> LinkState {
        LinkState::Connected {
            session: 1,
            endpoint: endpoint.to_owned(),
        }
    }

    #[test]
    fn every_family_has_its_house_name_at_zero() {
        let text = Metrics::new().encode().unwrap();
        for series in [
            "edgecore_edgehub_session_state{state=\"disconnected\"}",
            "edgecore_edgehub_session_state{state=\"connected\"}",
            "edgecore_edgehub_reconnects_total{reason=\"silent\"}",
            "edgecore_edgehub_reconnects_total{reason=\"shutdown\"}",
            "edgecore_edgehub_sessions_total",
            "edgecore_edgehub_last_failover_duration_seconds",
            "edgecore_edgehub_backoff_seconds",
            "edgecore_edgehub_messages_received_total",
            "edgecore_edgehub_messages_sent_total",
            "edgecore_metamanager_outbox_depth",
            "edgecore_metamanager_acks_sent_total",
            "edgecore_store_size_bytes",
            "edgecore_cert_expiry_timestamp_seconds",
        ] {
            assert!(
                sample(&text, series).is_some(),
                "{series} missing in\n{text}"
            );
        }
        assert_eq!(
            sample(
                &text,
                "edgecore_edgehub_session_state{state=\"disconnected\"}"
            ),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn session_state_and_endpoint_follow_the_link() {
        let m = Metrics::new();
        let hub = m.hub();
        hub.observe_link(&LinkState::Connecting {
            endpoint: "a:10000".into(),
            attempt: 1,
        });
        hub.observe_link(&link_connected("b:10000"));
        let text = m.encode().unwrap();
        let state = |s: &str| {
            sample(
                &text,
                &format!("edgecore_edgehub_session_state{{state=\"{s}\"}}"),
            )
        };
        assert_eq!(
            (
                state("connecting"),
                state("connected"),
                state("disconnected")
            ),
            (Some(0.0), Some(1.0), Some(0.0))
        );
        let ep = |e: &str| {
            sample(
                &text,
                &format!("edgecore_edgehub_endpoint_info{{endpoint=\"{e}\"}}"),
            )
        };
        assert_eq!((ep("a:10000"), ep("b:10000")), (Some(0.0), Some(1.0)));

        hub.observe_link(&LinkState::Disconnected {
            reason: DisconnectReason::Silent,
        });
        let text = m.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                "edgecore_edgehub_session_state{state=\"disconnected\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "edgecore_edgehub_endpoint_info{endpoint=\"b:10000\"}"
            ),
            Some(1.0),
            "the last endpoint stays visible while disconnected"
        );
    }

    #[test]
    fn stats_snapshots_move_counters_by_the_difference_and_never_back() {
        let m = Metrics::new();
        let hub = m.hub();
        hub.observe_reconnects([
            (DisconnectReason::Silent, 2),
            (DisconnectReason::DialFailed, 5),
        ]);
        hub.observe_reconnects([
            (DisconnectReason::Silent, 3),
            (DisconnectReason::DialFailed, 1),
        ]);
        let stats = HubStats {
            sessions: 4,
            last_failover_ms: Some(1_250),
            current_backoff_ms: 400,
            ..HubStats::default()
        };
        hub.observe_stats(&stats);
        hub.observe_stats(&stats);
        let text = m.encode().unwrap();
        let reason = |r: &str| {
            sample(
                &text,
                &format!("edgecore_edgehub_reconnects_total{{reason=\"{r}\"}}"),
            )
        };
        assert_eq!(
            (reason("silent"), reason("dial_failed"), reason("closed")),
            (Some(3.0), Some(5.0), Some(0.0))
        );
        assert_eq!(sample(&text, "edgecore_edgehub_sessions_total"), Some(4.0));
        assert_eq!(
            sample(&text, "edgecore_edgehub_last_failover_duration_seconds"),
            Some(1.25)
        );
        assert_eq!(sample(&text, "edgecore_edgehub_backoff_seconds"), Some(0.4));
    }

    #[derive(Clone)]
    struct Recorder {
        sent: Arc<Mutex<Vec<Message>>>,
        link: Arc<watch::Sender<LinkState>>,
        closed: bool,
    }

    impl CloudLink for Recorder {
        async fn send(&self, msg: Message) -> Result<(), Message> {
            if self.closed {
                return Err(msg);
            }
            self.sent.lock().unwrap().push(msg);
            Ok(())
        }

        fn link(&self) -> watch::Receiver<LinkState> {
            self.link.subscribe()
        }
    }

    fn recorder(closed: bool) -> Recorder {
        let (tx, _) = watch::channel(link_connected("a:1"));
        Recorder {
            sent: Arc::default(),
            link: Arc::new(tx),
            closed,
        }
    }

    #[tokio::test]
    async fn metered_link_counts_messages_and_acks_it_handed_on() {
        let m = Metrics::new();
        let inner = recorder(false);
        let link = MeteredLink::new(inner.clone(), &m);
        let req = Message::new(
            edgehub::Route::new("edgecontroller", "resource", "insert", "default/pod/p"),
            serde_json::json!({}),
        );
        link.send(Message::ack_of(&req)).await.unwrap();
        link.send(Message::response_to(&req, serde_json::json!({"k": "v"})))
            .await
            .unwrap();
        link.send(Message::error_to(&req, "boom")).await.unwrap();
        assert_eq!(inner.sent.lock().unwrap().len(), 3);
        assert!(link.link().borrow().is_connected());

        let refused = MeteredLink::new(recorder(true), &m);
        assert!(refused.send(Message::ack_of(&req)).await.is_err());

        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, "edgecore_edgehub_messages_sent_total"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "edgecore_metamanager_acks_sent_total"),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn store_size_counts_the_database_and_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("edgecore.db");
        assert_eq!(store_files_size(&db).await, 0);
        std::fs::write(&db, vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("edgecore.db-wal"), vec![0u8; 100]).unwrap();
        assert_eq!(store_files_size(&db).await, 4196);

        let m = Metrics::new();
        let cancel = CancellationToken::new();
        cancel.cancel();
        // Cancelled before the first tick: returns without sampling.
        sample_store_size(db, m.store(), Duration::from_secs(30), cancel).await;
        assert_eq!(
            sample(&m.encode().unwrap(), "edgecore_store_size_bytes"),
            Some(0.0)
        );
    }

    #[test]
    fn endpoint_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..(MAX_ENDPOINT_LABELS + 5) {
            m.hub().observe_link(&link_connected(&format!("h{i}:1")));
        }
        let text = m.encode().unwrap();
        let n = text
            .lines()
            .filter(|l| l.starts_with("edgecore_edgehub_endpoint_info{"))
            .count();
        assert_eq!(n, MAX_ENDPOINT_LABELS);
    }

    #[test]
    fn gauges_and_counters_move() {
        let m = Metrics::new();
        m.meta().set_outbox_depth(7);
        m.meta().ack_sent();
        m.meta().ack_sent();
        m.store().set_size_bytes(123_456);
        m.cert()
            .set_expiry(UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000));
        m.hub().message_received();
        m.hub().message_sent();
        m.hub().message_sent();
        m.hub().message_sent();
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, "edgecore_metamanager_outbox_depth"),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, "edgecore_metamanager_acks_sent_total"),
            Some(2.0)
        );
        assert_eq!(sample(&text, "edgecore_store_size_bytes"), Some(123_456.0));
        assert_eq!(
            sample(&text, "edgecore_cert_expiry_timestamp_seconds"),
            Some(1_900_000_000.0)
        );
        assert_eq!(
            sample(&text, "edgecore_edgehub_messages_received_total"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "edgecore_edgehub_messages_sent_total"),
            Some(3.0)
        );
    }
}
