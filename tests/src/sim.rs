//! One CloudHub replica: the mutual-TLS WebSocket listener, the node registry (last connection
//! wins), and the change-log tailer that fans edgecontroller messages out to node sessions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::cluster::Cluster;
use crate::events::{CounterSnapshot, Counters, EVENT_CAPACITY, Event, EventStream};
use crate::messages;
use crate::pki::Pki;
use crate::session::{self, Control, SessionCmd, WsFrame};

/// Capacity of one session's command queue.
pub(crate) const SESSION_CMD_CAPACITY: usize = 4096;
/// Change-log entries read per poll.
const TAIL_BATCH: usize = 1000;
/// Time allowed for the TLS and WebSocket handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a replica behaves. Defaults are CloudHub's.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Replica name, reported in events and logs.
    pub name: String,
    /// Where to listen; port 0 picks one.
    pub listen: SocketAddr,
    /// The shared state file.
    pub state: PathBuf,
    /// CA, server certificate and key (the other fields are unused).
    pub pki: Pki,
    /// `cloudHub.keepaliveInterval`: a session without `keepalive` for this long is closed.
    pub keepalive_timeout: Duration,
    /// Resend period of the in-flight message (`sendRetryInterval`).
    pub resend_interval: Duration,
    /// Sends of one message before it goes back to the queue.
    pub max_sends: u32,
    /// synccontroller period.
    pub resync_interval: Duration,
    /// Change-log poll period.
    pub poll_interval: Duration,
    /// Time allowed for one WebSocket write.
    pub write_timeout: Duration,
    /// Resource types edgecontroller pushes to nodes (change log and resync); `None` pushes
    /// every type. Objects of other types reach a node only as answers to its queries, the way
    /// a configmap can be fetched by an edge that was never sent it.
    pub pushed_kinds: Option<Vec<String>>,
}

impl SimConfig {
    /// CloudHub defaults: 30 s keepalive, 5 s resend, 5 sends, 5 s resync; 25 ms log polling.
    pub fn new(name: &str, listen: SocketAddr, state: PathBuf, pki: Pki) -> Self {
        Self {
            name: name.to_owned(),
            listen,
            state,
            pki,
            keepalive_timeout: Duration::from_secs(30),
            resend_interval: Duration::from_secs(5),
            max_sends: 5,
            resync_interval: Duration::from_secs(5),
            poll_interval: Duration::from_millis(25),
            write_timeout: Duration::from_secs(10),
            pushed_kinds: None,
        }
    }

    /// Whether objects of `kind` are pushed to nodes. Leases and Nodes never are here: they
    /// exist for the node's own calls (CloudCore pushes a Node's changes to that node only,
    /// which the simulator leaves out).
    pub(crate) fn pushes(&self, kind: &str) -> bool {
        !matches!(kind, "lease" | "node")
            && self
                .pushed_kinds
                .as_ref()
                .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
    }
}

/// A registered connection of a node.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub(crate) conn: u64,
    pub(crate) ctl: watch::Sender<Control>,
    pub(crate) cmds: mpsc::Sender<SessionCmd>,
}

/// State shared by the replica's tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) counters: Counters,
    pub(crate) sessions: Mutex<HashMap<String, SessionEntry>>,
    /// Connections that were accepted but are never read (no `ConnectionUse: msg`).
    pub(crate) parked: Mutex<HashMap<u64, watch::Sender<Control>>>,
    next_conn: AtomicU64,
    /// The last change-log entry the tail has fanned out.
    pub(crate) log_position: AtomicU64,
}

impl Shared {
    pub(crate) fn emit(&self, ev: Event) {
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }

    fn senders(&self) -> Vec<(String, mpsc::Sender<SessionCmd>)> {
        match self.sessions.lock() {
            Ok(map) => map
                .iter()
                .map(|(n, e)| (n.clone(), e.cmds.clone()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// A running replica.
#[derive(Debug)]
pub struct CloudSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl CloudSim {
    /// Binds, opens the state and starts serving.
    pub async fn start(cfg: SimConfig) -> Result<Self> {
        let acceptor = tls_acceptor(&cfg.pki)?;
        let state = cfg.state.clone();
        // The tail starts at the log's end as of now: what came before reaches nodes by resync.
        let (cluster, cursor) = tokio::task::spawn_blocking(move || {
            let c = Cluster::open(&state)?;
            let seq = c.last_seq()?;
            anyhow::Ok((c, seq))
        })
        .await
        .context("open state task")??;
        let cluster = Arc::new(cluster);
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("bind {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let name = cfg.name.clone();
        let shared = Arc::new(Shared {
            cfg,
            cluster,
            events,
            counters: Counters::default(),
            sessions: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            log_position: AtomicU64::new(cursor),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(
            accept_loop(
                listener,
                acceptor,
                shared.clone(),
                cancel.clone(),
                tracker.clone(),
            )
            .instrument(info_span!("accept", replica = %name)),
        );
        tracker.spawn(
            tail_loop(shared.clone(), cancel.clone())
                .instrument(info_span!("tail", replica = %name)),
        );
        info!(replica = %name, %addr, "cloudhub listening");
        Ok(Self {
            shared,
            addr,
            cancel,
            tracker,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replica name.
    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// The shared cluster state.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.shared.cluster
    }

    /// Subscribes to events from now on.
    pub fn events(&self) -> EventStream {
        EventStream {
            rx: self.shared.events.subscribe(),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    /// Nodes with a session on this replica.
    pub fn connected_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.senders().into_iter().map(|(n, _)| n).collect();
        v.sort();
        v
    }

    /// The last change-log entry this replica has queued for its sessions.
    pub fn log_position(&self) -> u64 {
        self.shared.log_position.load(Ordering::Relaxed)
    }

    /// Resets every connection (SO_LINGER 0, then close): the edge sees a RST.
    pub fn kill_connections(&self) {
        if let Ok(map) = self.shared.sessions.lock() {
            for e in map.values() {
                let _ = e.ctl.send(Control::Kill);
            }
        }
        if let Ok(map) = self.shared.parked.lock() {
            for ctl in map.values() {
                let _ = ctl.send(Control::Kill);
            }
        }
    }

    /// Writes a raw frame to `node`'s session (malformed-input tests). False if not connected.
    pub fn inject_frame(&self, node: &str, frame: WsFrame) -> bool {
        self.send_cmd(node, SessionCmd::Raw(frame))
    }

    /// Writes `msg` to `node` as a fire-and-forget message. False if not connected.
    pub fn inject_message(&self, node: &str, msg: edgehub::Message) -> bool {
        self.send_cmd(node, SessionCmd::Raw(WsFrame::Text(msg.to_wire())))
    }

    fn send_cmd(&self, node: &str, cmd: SessionCmd) -> bool {
        let tx = match self.shared.sessions.lock() {
            Ok(map) => map.get(node).map(|e| e.cmds.clone()),
            Err(_) => None,
        };
        tx.is_some_and(|tx| tx.try_send(cmd).is_ok())
    }

    /// Stops listening, closes every session (FIN) and waits for the tasks.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .is_err()
        {
            warn!(replica = %self.shared.cfg.name, "replica tasks did not stop within 10 s");
        }
        info!(replica = %self.shared.cfg.name, "cloudhub stopped");
    }
}

impl Drop for CloudSim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn tls_acceptor(pki: &Pki) -> Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_crt.as_bytes()) {
        roots.add(ca.context("ca certificate pem")?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("client verifier")?;
    let chain = CertificateDer::pem_slice_iter(pki.server_crt.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("server certificate pem")?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).context("server key pem")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("server certificate")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                continue;
            }
        };
        let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        tracker.spawn(
            serve_connection(
                tcp,
                acceptor.clone(),
                shared.clone(),
                cancel.child_token(),
                conn,
            )
            .instrument(info_span!("conn", conn, %peer)),
        );
    }
}

/// The handshake headers CloudHub reads.
#[derive(Debug, Default)]
struct Upgrade {
    node_id: Option<String>,
    connection_use: Option<String>,
}

async fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    conn: u64,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(error = %e, "tls handshake failed");
            return;
        }
        Err(_) => {
            info!("tls handshake timed out");
            return;
        }
    };
    let mut upgrade = Upgrade::default();
    // The signature is tungstenite's `Callback`; the large error type is theirs.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        upgrade.node_id = header("node_id");
        upgrade.connection_use = header("connectionuse");
        Ok(resp)
    };
    let ws = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async(tls, callback),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            info!(error = %e, "websocket upgrade failed");
            return;
        }
        Err(_) => {
            info!("websocket upgrade timed out");
            return;
        }
    };
    let Some(node) = upgrade.node_id.filter(|n| !n.is_empty()) else {
        info!("connection without node_id header closed");
        return;
    };
    let (ctl_tx, ctl_rx) = watch::channel(Control::Run);
    if upgrade.connection_use.as_deref() != Some("msg") {
        // viaduct's ServeConn starts no read loop for any other value.
        info!(%node, connection_use = ?upgrade.connection_use, "connection without ConnectionUse: msg is never read");
        shared.emit(Event::Ignored {
            node: node.clone(),
            replica: shared.cfg.name.clone(),
        });
        if let Ok(mut map) = shared.parked.lock() {
            map.insert(conn, ctl_tx);
        }
        session::park(ws, ctl_rx, cancel).await;
        if let Ok(mut map) = shared.parked.lock() {
            map.remove(&conn);
        }
        return;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(SESSION_CMD_CAPACITY);
    let old = match shared.sessions.lock() {
        Ok(mut map) => map.insert(
            node.clone(),
            SessionEntry {
                conn,
                ctl: ctl_tx,
                cmds: cmd_tx,
            },
        ),
        Err(_) => return,
    };
    if let Some(old) = old {
        let _ = old.ctl.send(Control::Replaced);
    }
    session::run(
        ws,
        node.clone(),
        conn,
        shared.clone(),
        ctl_rx,
        cmd_rx,
        cancel,
    )
    .await;
    if let Ok(mut map) = shared.sessions.lock()
        && map.get(&node).is_some_and(|e| e.conn == conn)
    {
        map.remove(&node);
    }
}

/// Tails the change log and queues edgecontroller's message for each change to every node
/// connected here.
async fn tail_loop(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut cursor = shared.log_position.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(shared.cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cluster = shared.cluster.clone();
        let after = cursor;
        let changes =
            match tokio::task::spawn_blocking(move || cluster.changes_after(after, TAIL_BATCH))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    warn!(error = %e, "reading the change log failed");
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "change log task failed");
                    continue;
                }
            };
        if changes.is_empty() {
            continue;
        }
        let senders = shared.senders();
        let last = changes.last().map_or(cursor, |c| c.seq);
        for change in changes {
            cursor = cursor.max(change.seq);
            if !shared.cfg.pushes(&change.object.kind) {
                continue;
            }
            let Some(out) = messages::for_change(change.op, &change.object) else {
                continue;
            };
            for (node, tx) in &senders {
                // Every node gets its own message (edgecontroller builds one per node).
                let mut mine = out.clone();
                mine.msg.header.msg_id = uuid::Uuid::new_v4().to_string();
                match tx.try_send(SessionCmd::Enqueue(Box::new(mine))) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        Counters::bump(&shared.counters.dropped_enqueues);
                        debug!(%node, "session busy; resync will carry the change");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        shared.log_position.store(last, Ordering::Relaxed);
    }
}
