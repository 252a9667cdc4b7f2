//! One node session on a replica (spec §1.8, §4.3, §4.5): keepalive timeout, strictly one
//! ack-required message in flight with resends of the same msg_id, the per-UID queue, the 5 s
//! resync, and the answers CloudHub gives to upstream requests.

use std::collections::HashMap;
use std::sync::Arc;

use edgehub::{Message, op};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, ResyncItem};
use crate::events::{Counters, DisconnectReason, Event};
use crate::messages::{self, answer, object_resp};
use crate::queue::{AckQueue, Outgoing};
use crate::sim::Shared;

pub(crate) type Ws = WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>;

/// A raw WebSocket message to write to the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// A text message (what Go's `WriteJSON` sends).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

/// What the replica tells a connection through its watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Run,
    /// Reset the connection (SO_LINGER 0).
    Kill,
    /// The node connected again; this session ends.
    Replaced,
}

/// Work for a session from outside.
#[derive(Debug)]
pub(crate) enum SessionCmd {
    /// An ack-required message for the queue.
    Enqueue(Box<Outgoing>),
    /// A frame to write as is.
    Raw(WsFrame),
}

#[derive(Debug)]
struct InFlight {
    out: Outgoing,
    failures: u32,
    sends: u32,
    next_resend: Instant,
}

struct Session {
    node: String,
    shared: Arc<Shared>,
    queue: AckQueue,
    inflight: Option<InFlight>,
    /// The node's ObjectSyncs (uid → acked RV), refreshed by every resync.
    synced: HashMap<String, u64>,
    keepalive_deadline: Instant,
}

type Flow = Result<(), DisconnectReason>;

/// Holds a connection that CloudHub never reads until it is killed or the replica stops.
pub(crate) async fn park(ws: Ws, mut ctl: watch::Receiver<Control>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = ctl.changed() => {
                if r.is_err() {
                    return;
                }
                if *ctl.borrow() == Control::Kill {
                    reset(&ws);
                    return;
                }
            }
        }
    }
}

fn reset(ws: &Ws) {
    let (tcp, _) = ws.get_ref().get_ref();
    if let Err(e) = tcp.set_zero_linger() {
        warn!(error = %e, "cannot set SO_LINGER 0");
    }
}

pub(crate) async fn run(
    mut ws: Ws,
    node: String,
    conn: u64,
    shared: Arc<Shared>,
    mut ctl: watch::Receiver<Control>,
    mut cmds: mpsc::Receiver<SessionCmd>,
    cancel: CancellationToken,
) {
    let replica = shared.cfg.name.clone();
    Counters::bump(&shared.counters.connections);
    shared.emit(Event::Connected {
        node: node.clone(),
        replica: replica.clone(),
    });
    info!(%node, %replica, conn, "session started");
    let mut s = Session {
        node: node.clone(),
        keepalive_deadline: Instant::now() + shared.cfg.keepalive_timeout,
        shared: shared.clone(),
        queue: AckQueue::default(),
        inflight: None,
        synced: HashMap::new(),
    };
    // synccontroller is a periodic loop, not a reaction to the connect.
    let mut resync = tokio::time::interval_at(
        Instant::now() + shared.cfg.resync_interval,
        shared.cfg.resync_interval,
    );
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cmds_open = true;
    let far = || Instant::now() + std::time::Duration::from_secs(86_400);
    let reason = loop {
        if s.inflight.is_none()
            && let Err(r) = s.start_next(&mut ws).await
        {
            break r;
        }
        let resend_at = s.inflight.as_ref().map(|f| f.next_resend);
        let ready_at = if s.inflight.is_none() {
            s.queue.next_ready_at()
        } else {
            None
        };
        let keepalive_at = s.keepalive_deadline;
        let step = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(DisconnectReason::Stopped),
            r = ctl.changed() => match r.map(|()| *ctl.borrow()) {
                Err(_) => Err(DisconnectReason::Stopped),
                Ok(Control::Kill) => {
                    reset(&ws);
                    Err(DisconnectReason::Killed)
                }
                Ok(Control::Replaced) => Err(DisconnectReason::Replaced),
                Ok(Control::Run) => Ok(()),
            },
            () = sleep_until(keepalive_at) => Err(DisconnectReason::KeepaliveTimeout),
            frame = ws.next() => match frame {
                None => Err(DisconnectReason::Closed),
                Some(Err(e)) => {
                    debug!(error = %e, "read failed");
                    Err(DisconnectReason::Closed)
                }
                Some(Ok(frame)) => s.on_frame(&mut ws, frame).await,
            },
            () = sleep_until(resend_at.unwrap_or_else(far)), if resend_at.is_some() => s.on_resend_timer(&mut ws).await,
            () = sleep_until(ready_at.unwrap_or_else(far)), if ready_at.is_some() => Ok(()),
            cmd = cmds.recv(), if cmds_open => match cmd {
                Some(SessionCmd::Enqueue(out)) => {
                    s.queue.enqueue(*out);
                    Ok(())
                }
                Some(SessionCmd::Raw(frame)) => s.write(&mut ws, frame).await,
                None => {
                    cmds_open = false;
                    Ok(())
                }
            },
            _ = resync.tick() => {
                s.resync().await;
                Ok(())
            }
        };
        if let Err(r) = step {
            break r;
        }
    };
    Counters::bump(&shared.counters.disconnections);
    info!(%node, %replica, conn, reason = reason.as_str(), queued = s.queue.len(), "session ended");
    shared.emit(Event::Disconnected {
        node,
        replica,
        reason,
    });
}

impl Session {
    async fn write(&self, ws: &mut Ws, frame: WsFrame) -> Flow {
        let m = match frame {
            WsFrame::Text(t) => WsMessage::Text(t.into()),
            WsFrame::Binary(b) => WsMessage::Binary(b.into()),
        };
        match tokio::time::timeout(self.shared.cfg.write_timeout, ws.send(m)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                debug!(error = %e, "write failed");
                Err(DisconnectReason::WriteFailed)
            }
            Err(_) => {
                debug!("write timed out");
                Err(DisconnectReason::WriteFailed)
            }
        }
    }

    async fn write_msg(&self, ws: &mut Ws, msg: &Message) -> Flow {
        self.write(ws, WsFrame::Text(msg.to_wire())).await
    }

    /// Sends the next ready message, skipping what the node already acked.
    async fn start_next(&mut self, ws: &mut Ws) -> Flow {
        while let Some((out, failures)) = self.queue.pop_ready(Instant::now()) {
            let synced = out.uid.as_ref().and_then(|u| self.synced.get(u)).copied();
            let is_response = out.msg.route.operation == op::RESPONSE;
            if !is_response && !out.is_delete && synced.is_some_and(|rv| rv >= out.rv) {
                continue;
            }
            if out.is_delete && out.rv == 0 && synced.is_none() {
                // A resync delete whose ObjectSync is already gone.
                continue;
            }
            let duplicate = match &out.uid {
                Some(uid) if !is_response => {
                    let (cluster, node, uid2, rv, del) = (
                        self.shared.cluster.clone(),
                        self.node.clone(),
                        uid.clone(),
                        out.rv,
                        out.is_delete,
                    );
                    let sent = tokio::task::spawn_blocking(move || {
                        cluster.record_delivery(&node, &uid2, rv, del)
                    })
                    .await;
                    match sent {
                        Ok(Ok(n)) => {
                            if !out.is_delete {
                                // The RV 0 ObjectSync record_delivery created, if there was none:
                                // the cache follows the file, never leads it.
                                self.synced.entry(uid.clone()).or_insert(0);
                            }
                            n > 1
                        }
                        other => {
                            warn!(?other, "recording a delivery failed");
                            false
                        }
                    }
                }
                _ => false,
            };
            self.write_msg(ws, &out.msg).await?;
            let c = &self.shared.counters;
            Counters::bump(&c.sent);
            if duplicate {
                Counters::bump(&c.duplicates);
            }
            debug!(msg_id = %out.msg.header.msg_id, resource = %out.msg.route.resource,
                   operation = %out.msg.route.operation, rv = out.rv, "sent");
            self.shared.emit(Event::Sent {
                node: self.node.clone(),
                msg: out.msg.clone(),
                attempt: 1,
                duplicate,
            });
            self.inflight = Some(InFlight {
                out,
                failures,
                sends: 1,
                next_resend: Instant::now() + self.shared.cfg.resend_interval,
            });
            return Ok(());
        }
        Ok(())
    }

    async fn on_resend_timer(&mut self, ws: &mut Ws) -> Flow {
        let Some(f) = self.inflight.as_mut() else {
            return Ok(());
        };
        if f.sends >= self.shared.cfg.max_sends {
            if let Some(f) = self.inflight.take() {
                Counters::bump(&self.shared.counters.gave_up);
                warn!(node = %self.node, msg_id = %f.out.msg.header.msg_id, sends = f.sends,
                      "no ack; message goes back to the queue");
                self.queue.requeue_later(f.out, f.failures, Instant::now());
            }
            return Ok(());
        }
        f.sends += 1;
        f.next_resend = Instant::now() + self.shared.cfg.resend_interval;
        let (msg, attempt) = (f.out.msg.clone(), f.sends);
        self.write_msg(ws, &msg).await?;
        let c = &self.shared.counters;
        Counters::bump(&c.sent);
        Counters::bump(&c.resent);
        self.shared.emit(Event::Sent {
            node: self.node.clone(),
            msg,
            attempt,
            duplicate: false,
        });
        Ok(())
    }

    async fn on_frame(&mut self, ws: &mut Ws, frame: WsMessage) -> Flow {
        let bytes: Vec<u8> = match frame {
            WsMessage::Text(t) => t.as_bytes().to_vec(),
            WsMessage::Binary(b) => b.to_vec(),
            WsMessage::Close(_) => return Err(DisconnectReason::Closed),
            _ => return Ok(()),
        };
        match Message::from_wire(&bytes) {
            Ok(m) => self.on_upstream(ws, m).await,
            Err(e) => {
                Counters::bump(&self.shared.counters.bad_frames);
                warn!(node = %self.node, error = %e, len = bytes.len(), "upstream frame skipped");
                self.shared.emit(Event::BadFrame {
                    node: self.node.clone(),
                    error: e.to_string(),
                });
                Ok(())
            }
        }
    }

    async fn on_upstream(&mut self, ws: &mut Ws, m: Message) -> Flow {
        Counters::bump(&self.shared.counters.upstream);
        self.shared.emit(Event::Upstream {
            node: self.node.clone(),
            msg: m.clone(),
        });
        let operation = m.route.operation.as_str();
        if m.is_reserved_operation() {
            return self.write_msg(ws, &Message::control_answer(&m)).await;
        }
        match operation {
            op::KEEPALIVE => {
                self.keepalive_deadline = Instant::now() + self.shared.cfg.keepalive_timeout;
                Ok(())
            }
            op::RESPONSE => {
                self.on_response(&m).await;
                Ok(())
            }
            op::ERROR => {
                debug!(node = %self.node, parent = %m.header.parent_msg_id, "edge reported an error (not an ack)");
                Ok(())
            }
            _ => self.on_request(ws, &m).await,
        }
    }

    async fn on_response(&mut self, m: &Message) {
        let matches = self.inflight.as_ref().is_some_and(|f| {
            !m.header.parent_msg_id.is_empty() && f.out.msg.header.msg_id == m.header.parent_msg_id
        });
        if !matches {
            Counters::bump(&self.shared.counters.stale_acks);
            debug!(node = %self.node, parent = %m.header.parent_msg_id, "response for nothing in flight");
            return;
        }
        let Some(f) = self.inflight.take() else {
            return;
        };
        let out = f.out;
        if let Some(uid) = out.uid.clone() {
            let (cluster, node, rv, del) = (
                self.shared.cluster.clone(),
                self.node.clone(),
                out.rv,
                out.is_delete,
            );
            let uid2 = uid.clone();
            match tokio::task::spawn_blocking(move || cluster.record_ack(&node, &uid2, rv, del))
                .await
            {
                Ok(Ok(())) => {}
                other => warn!(?other, "recording an ack failed"),
            }
            if out.is_delete {
                self.synced.remove(&uid);
            } else {
                let e = self.synced.entry(uid).or_insert(0);
                *e = (*e).max(out.rv);
            }
        }
        Counters::bump(&self.shared.counters.acked);
        self.shared.emit(Event::Acked {
            node: self.node.clone(),
            uid: out.uid.unwrap_or_default(),
            rv: out.rv,
            msg_id: out.msg.header.msg_id,
        });
    }

    /// edgecontroller's side of an edge request.
    async fn on_request(&mut self, ws: &mut Ws, m: &Message) -> Flow {
        let Some(res) = m.resource() else {
            debug!(node = %self.node, resource = %m.route.resource, "upstream message recorded");
            return Ok(());
        };
        let (ns, kind, name) = (
            res.namespace.to_owned(),
            res.kind.to_owned(),
            res.name.map(str::to_owned),
        );
        match (m.route.operation.as_str(), kind.as_str()) {
            (op::QUERY, "configmap" | "secret") => {
                let Some(name) = name else {
                    return Ok(());
                };
                let (cluster, k, n, nm) = (
                    self.shared.cluster.clone(),
                    kind.clone(),
                    ns.clone(),
                    name.clone(),
                );
                let found =
                    match tokio::task::spawn_blocking(move || cluster.object(&k, &n, &nm)).await {
                        Ok(Ok(o)) => o,
                        other => {
                            warn!(?other, "query lookup failed");
                            None
                        }
                    };
                match found {
                    Some(obj) => {
                        self.queue.enqueue(messages::query_response(m, &obj));
                        Ok(())
                    }
                    None => {
                        self.write_msg(ws, &answer(m, messages::not_found(&kind, &name)))
                            .await
                    }
                }
            }
            (op::PATCH, "nodepatch" | "podpatch") => {
                let name = name.unwrap_or_default();
                let object = if kind == "podpatch" {
                    let (cluster, n, nm) = (self.shared.cluster.clone(), ns.clone(), name.clone());
                    tokio::task::spawn_blocking(move || cluster.object("pod", &n, &nm))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                        .map(|o| o.body)
                } else {
                    None
                };
                let object = object.unwrap_or_else(|| {
                    json!({"metadata": {"name": name, "namespace": if kind == "podpatch" { ns.as_str() } else { "" }},
                           "spec": {}, "status": {}})
                });
                self.write_msg(ws, &answer(m, object_resp(object))).await
            }
            (op::QUERY, "serviceaccounttoken") => {
                // edgecontroller runs a TokenRequest for the service account and answers the
                // TokenRequest itself (no ObjectResp, no resourceversion).
                let mut tr = m.content.clone();
                let seconds = tr
                    .pointer("/spec/expirationSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(3600);
                if tr.pointer("/spec/audiences").is_none_or(Value::is_null) {
                    tr["spec"]["audiences"] =
                        json!(["https://kubernetes.default.svc.cluster.local"]);
                }
                tr["status"] = json!({
                    "token": format!("sim-token-{}", uuid::Uuid::new_v4()),
                    "expirationTimestamp": crate::cluster::rfc3339_at(
                        std::time::SystemTime::now() + std::time::Duration::from_secs(seconds)
                    ),
                });
                self.write_msg(ws, &answer(m, tr)).await
            }
            (op::INSERT | op::UPDATE | op::QUERY, "lease" | "node") => {
                let name = name.unwrap_or_default();
                let (cluster, req) = (self.shared.cluster.clone(), m.clone());
                let reply = tokio::task::spawn_blocking(move || {
                    object_call(&cluster, &req, &kind, &ns, &name)
                })
                .await;
                match reply {
                    Ok(Ok(content)) => self.write_msg(ws, &answer(m, content)).await,
                    other => {
                        warn!(?other, resource = %m.route.resource, "node or lease call failed");
                        Ok(())
                    }
                }
            }
            (op::DELETE, "pod") => {
                // edgecontroller's deletePod: DeleteOptions (or, from old edges, the bare uid)
                // with a uid precondition; gone or replaced counts as done.
                let uid = match &m.content {
                    Value::String(uid) => Some(uid.clone()),
                    c => c
                        .pointer("/preconditions/uid")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                };
                let (cluster, name) = (self.shared.cluster.clone(), name.unwrap_or_default());
                let deleted = tokio::task::spawn_blocking(move || match uid {
                    Some(uid) => cluster.delete_if_uid("pod", &ns, &name, &uid),
                    None => cluster.delete("pod", &ns, &name),
                })
                .await;
                match deleted {
                    Ok(Ok(_)) => {
                        self.write_msg(ws, &answer(m, Value::String("OK".into())))
                            .await
                    }
                    // CloudCore answers nothing when the API server fails.
                    other => {
                        warn!(?other, resource = %m.route.resource, "deleting a pod failed");
                        Ok(())
                    }
                }
            }
            _ => {
                debug!(node = %self.node, operation = %m.route.operation, resource = %m.route.resource,
                       "upstream message recorded");
                Ok(())
            }
        }
    }

    /// synccontroller: `update` for what the node lacks, `delete` for what is gone.
    async fn resync(&mut self) {
        let (cluster, node) = (self.shared.cluster.clone(), self.node.clone());
        let got = tokio::task::spawn_blocking(move || {
            let syncs = cluster.object_syncs(&node)?;
            let plan = cluster.resync_plan(&node)?;
            anyhow::Ok((syncs, plan))
        })
        .await;
        let (syncs, plan) = match got {
            Ok(Ok(v)) => v,
            other => {
                warn!(?other, "resync failed");
                return;
            }
        };
        // Acks are recorded before the cache changes, so the file is never behind the cache.
        self.synced = syncs.into_iter().collect();
        let mut queued = 0usize;
        for item in plan {
            let out = match item {
                ResyncItem::Update(obj) if !self.shared.cfg.pushes(&obj.kind) => continue,
                ResyncItem::Update(obj) => messages::object_message(op::UPDATE, &obj),
                ResyncItem::Delete {
                    resource,
                    uid,
                    namespace,
                    name,
                } => messages::orphan_delete(&resource, &namespace, &name, &uid),
            };
            if self.queue.enqueue(out) {
                queued += 1;
            }
        }
        if queued > 0 {
            debug!(node = %self.node, queued, "resync queued messages");
        }
    }
}

/// edgecontroller's node and lease calls against the API server: `query` answers the object or
/// NotFound, `insert` creates it (AlreadyExists if it is there), `update` replaces it; a Lease
/// only when the caller holds its current resourceVersion (Conflict otherwise). Every answer is
/// an `ObjectResp`.
fn object_call(
    cluster: &Cluster,
    m: &Message,
    kind: &str,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Value> {
    let (group, plural) = match kind {
        "lease" => ("coordination.k8s.io", "leases.coordination.k8s.io"),
        _ => ("", "nodes"),
    };
    let with_type = |mut body: Value| {
        if !group.is_empty() {
            body["apiVersion"] = json!(format!("{group}/v1"));
        }
        body
    };
    let failure = |reason: &str, code: u16, message: String| {
        json!({"Object": {"metadata": {"creationTimestamp": null}, "spec": {}},
               "Err": {"ErrStatus": {"metadata": {}, "status": "Failure", "message": message,
                                     "reason": reason, "code": code}}})
    };
    let current = cluster.object(kind, namespace, name)?;
    let what = format!("{plural} \"{name}\"");
    Ok(match (m.route.operation.as_str(), current) {
        (op::QUERY, Some(obj)) => object_resp(with_type(obj.body)),
        (op::QUERY | op::UPDATE, None) => failure("NotFound", 404, format!("{what} not found")),
        (op::INSERT, Some(_)) => failure("AlreadyExists", 409, format!("{what} already exists")),
        (op::UPDATE, Some(obj))
            if kind == "lease"
                && m.content
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    != Some(obj.rv.to_string().as_str()) =>
        {
            failure(
                "Conflict",
                409,
                format!("Operation cannot be fulfilled on {what}: the object has been modified"),
            )
        }
        _ => {
            cluster.upsert(kind, namespace, name, m.content.clone())?;
            let stored = cluster
                .object(kind, namespace, name)?
                .ok_or_else(|| anyhow::anyhow!("{kind} vanished after its write"))?;
            object_resp(with_type(stored.body))
        }
    })
}
