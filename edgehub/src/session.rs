//! One WebSocket session with CloudHub, written over any `Sink` + `Stream` of WebSocket messages
//! so that tests drive it with channels.
//!
//! Keepalive message every `heartbeat`, WebSocket Ping every `failover.pingIntervalMs`; any frame
//! received proves the link alive; silence longer than `failover.pingTimeoutMs` ends the session.
//! Reserved operations are answered here; other messages go to `inbound`.

use std::fmt::Display;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::link_state::DisconnectReason;
use crate::message::Message;
use crate::throttle::TokenBucket;

/// The timers of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionSettings {
    /// Keepalive message period (`heartbeat`).
    pub(crate) heartbeat: Duration,
    /// WebSocket Ping period.
    pub(crate) ping_interval: Duration,
    /// Silence that ends the session.
    pub(crate) ping_timeout: Duration,
    /// Limit of one write (`websocket.writeDeadline`).
    pub(crate) write_deadline: Duration,
    /// `messageQPS` for outbound messages (not keepalives); ≤ 0 = unlimited.
    pub(crate) message_qps: i32,
    /// `messageBurst`.
    pub(crate) message_burst: i32,
}

impl SessionSettings {
    /// From the validated config; zero periods are raised to a minimum instead of spinning.
    pub(crate) fn from_config(hub: &config::EdgeHub) -> Self {
        Self {
            heartbeat: Duration::from_secs(u64::from(hub.heartbeat.max(1))),
            ping_interval: Duration::from_millis(hub.failover.ping_interval_ms.max(10)),
            ping_timeout: Duration::from_millis(hub.failover.ping_timeout_ms.max(10)),
            write_deadline: Duration::from_secs(u64::from(hub.websocket.write_deadline.max(1))),
            message_qps: hub.message_qps,
            message_burst: hub.message_burst,
        }
    }
}

/// The channels and signals a session works with.
#[derive(Debug)]
pub(crate) struct Links<'a> {
    /// Decoded cloud messages for metamanager.
    pub(crate) inbound: &'a mpsc::Sender<Message>,
    /// Messages queued for the cloud through the handle.
    pub(crate) outbound: &'a mut mpsc::Receiver<Message>,
    /// edgecore shuts down.
    pub(crate) cancel: &'a CancellationToken,
    /// A preferred endpoint answers: leave this one.
    pub(crate) preempt: &'a CancellationToken,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionEnd {
    pub(crate) reason: DisconnectReason,
    /// The error behind it, for the log line.
    pub(crate) cause: Option<String>,
}

impl SessionEnd {
    fn new(reason: DisconnectReason, cause: impl Into<Option<String>>) -> Self {
        Self {
            reason,
            cause: cause.into(),
        }
    }
}

/// Runs the session until the link dies or it is told to stop.
pub(crate) async fn run<W, R, WE, RE>(
    sink: &mut W,
    stream: &mut R,
    settings: SessionSettings,
    links: Links<'_>,
) -> SessionEnd
where
    W: Sink<WsMessage, Error = WE> + Unpin,
    WE: Display,
    R: Stream<Item = Result<WsMessage, RE>> + Unpin,
    RE: Display,
{
    let Links {
        inbound,
        outbound,
        cancel,
        preempt,
    } = links;
    let mut keepalive = tokio::time::interval(settings.heartbeat);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let silence = tokio::time::sleep(settings.ping_timeout);
    tokio::pin!(silence);
    // A cloud message waiting for room in `inbound`; reading pauses meanwhile.
    let mut pending: Option<Message> = None;
    let mut outbound_open = true;
    let mut outbound_first = false;
    let write = settings.write_deadline;
    let mut bucket = TokenBucket::new(settings.message_qps, settings.message_burst, Instant::now());
    // While set, outbound messages wait for the token bucket.
    let mut throttled: Option<Instant> = None;

    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                // What metamanager queued before it stopped (its last acks) goes out before the
                // close frame, so the cloud does not resend what the edge already committed.
                flush(sink, outbound, write).await;
                close(sink, write).await;
                return SessionEnd::new(DisconnectReason::Shutdown, None);
            }
            () = preempt.cancelled() => {
                close(sink, write).await;
                return SessionEnd::new(DisconnectReason::Preferred, None);
            }
            () = &mut silence, if pending.is_none() => {
                return SessionEnd::new(
                    DisconnectReason::Silent,
                    format!("no frame for {} ms", settings.ping_timeout.as_millis()),
                );
            }
            _ = keepalive.tick() => {
                if let Err(e) = send(sink, text(&Message::keepalive()), write).await {
                    return e;
                }
                debug!("keepalive sent");
            }
            _ = ping.tick() => {
                if let Err(e) = send(sink, WsMessage::Ping(Default::default()), write).await {
                    return e;
                }
            }
            () = tokio::time::sleep_until(throttled.unwrap_or_else(Instant::now)), if throttled.is_some() => {
                throttled = None;
            }
            permit = inbound.reserve(), if pending.is_some() => {
                let Ok(permit) = permit else {
                    close(sink, write).await;
                    return SessionEnd::new(DisconnectReason::Shutdown, "inbound receiver gone".to_owned());
                };
                if let Some(msg) = pending.take() {
                    permit.send(msg);
                }
                silence.as_mut().reset(Instant::now() + settings.ping_timeout);
            }
            io = NextIo {
                stream: &mut *stream,
                outbound: &mut *outbound,
                read: pending.is_none(),
                take: outbound_open && throttled.is_none(),
                outbound_first,
            } => match io {
                Io::Frame(None) => {
                    return SessionEnd::new(DisconnectReason::Closed, "end of stream".to_owned());
                }
                Io::Frame(Some(Err(e))) => {
                    return SessionEnd::new(DisconnectReason::Closed, e.to_string());
                }
                Io::Frame(Some(Ok(frame))) => {
                    silence.as_mut().reset(Instant::now() + settings.ping_timeout);
                    outbound_first = true;
                    let msg = match frame {
                        WsMessage::Text(t) => decode(t.as_bytes()),
                        WsMessage::Binary(b) => decode(&b),
                        WsMessage::Close(frame) => {
                            let cause = frame.map(|f| format!("close frame {}", f.code));
                            return SessionEnd::new(DisconnectReason::Closed, cause);
                        }
                        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => None,
                    };
                    let Some(msg) = msg else { continue };
                    if msg.is_reserved_operation() {
                        debug!(msg_id = %msg.header.msg_id, operation = %msg.route.operation, "reserved operation answered");
                        if let Err(e) = send(sink, text(&Message::control_answer(&msg)), write).await {
                            return e;
                        }
                        continue;
                    }
                    debug!(msg_id = %msg.header.msg_id, operation = %msg.route.operation, resource = %msg.route.resource, "from cloud");
                    match inbound.try_send(msg) {
                        Ok(()) => {}
                        Err(TrySendError::Full(msg)) => pending = Some(msg),
                        Err(TrySendError::Closed(_)) => {
                            close(sink, write).await;
                            return SessionEnd::new(DisconnectReason::Shutdown, "inbound receiver gone".to_owned());
                        }
                    }
                }
                Io::Outbound(None) => outbound_open = false,
                Io::Outbound(Some(msg)) => {
                    outbound_first = false;
                    debug!(msg_id = %msg.header.msg_id, operation = %msg.route.operation, resource = %msg.route.resource, "to cloud");
                    if let Err(e) = send(sink, text(&msg), write).await {
                        return e;
                    }
                    // Answers to the cloud (acks, error replies) are paced by the cloud itself,
                    // which keeps one ack-required message in flight per node: charging them to
                    // the bucket would cap the whole downstream at messageQPS, as in KubeEdge.
                    let answer = !msg.header.parent_msg_id.is_empty();
                    if let Some(wait) = (!answer).then(|| bucket.take(Instant::now())).flatten() {
                        if wait > Duration::from_secs(1) {
                            debug!(wait_ms = wait.as_millis(), "outbound messages throttled by messageQPS");
                        }
                        throttled = Some(Instant::now() + wait);
                    }
                }
            }
        }
    }
}

fn text(msg: &Message) -> WsMessage {
    WsMessage::Text(msg.to_wire().into())
}

fn decode(bytes: &[u8]) -> Option<Message> {
    match Message::from_wire(bytes) {
        Ok(msg) => Some(msg),
        Err(e) => {
            warn!(error = %e, len = bytes.len(), "skipping a cloud frame that does not decode");
            None
        }
    }
}

/// One write, bounded by the write deadline. A failure ends the session.
async fn send<W, WE>(sink: &mut W, frame: WsMessage, deadline: Duration) -> Result<(), SessionEnd>
where
    W: Sink<WsMessage, Error = WE> + Unpin,
    WE: Display,
{
    match tokio::time::timeout(deadline, sink.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SessionEnd::new(
            DisconnectReason::WriteFailed,
            e.to_string(),
        )),
        Err(_) => Err(SessionEnd::new(
            DisconnectReason::WriteFailed,
            format!("write took longer than {} s", deadline.as_secs()),
        )),
    }
}

/// Best effort: a Close frame within the write deadline.
/// How long a shutdown may spend writing what is still queued for the cloud.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Writes the messages already queued for the cloud, for at most [`SHUTDOWN_FLUSH`]; stops at
/// the first failed write. Anything left is either re-sent by the cloud (an ack it never got)
/// or kept in metamanager's outbox (a status).
async fn flush<W, WE>(sink: &mut W, outbound: &mut mpsc::Receiver<Message>, deadline: Duration)
where
    W: Sink<WsMessage, Error = WE> + Unpin,
    WE: Display,
{
    let until = Instant::now() + SHUTDOWN_FLUSH;
    let mut sent = 0usize;
    while let Ok(msg) = outbound.try_recv() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || send(sink, text(&msg), deadline.min(left)).await.is_err() {
            debug!(sent, "shutdown flush cut short");
            return;
        }
        sent += 1;
    }
    if sent > 0 {
        debug!(sent, "queued messages written before the close frame");
    }
}

async fn close<W, WE>(sink: &mut W, deadline: Duration)
where
    W: Sink<WsMessage, Error = WE> + Unpin,
    WE: Display,
{
    if let Err(e) = send(sink, WsMessage::Close(None), deadline).await {
        debug!(
            cause = e.cause.as_deref().unwrap_or_default(),
            "close frame not sent"
        );
    }
}

#[expect(clippy::large_enum_variant, reason = "lives for one select! arm")]
enum Io<F> {
    Frame(Option<F>),
    Outbound(Option<Message>),
}

/// Whichever of "frame from the cloud" and "message for the cloud" is ready, taking turns so that
/// a busy direction cannot starve the other. Cancel-safe: both polls are.
struct NextIo<'a, R> {
    stream: &'a mut R,
    outbound: &'a mut mpsc::Receiver<Message>,
    read: bool,
    take: bool,
    outbound_first: bool,
}

impl<R: Stream + Unpin> Future for NextIo<'_, R> {
    type Output = Io<R::Item>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        for turn in 0..2 {
            let outbound_turn = (turn == 0) == this.outbound_first;
            if outbound_turn && this.take {
                if let Poll::Ready(msg) = this.outbound.poll_recv(cx) {
                    return Poll::Ready(Io::Outbound(msg));
                }
            } else if !outbound_turn
                && this.read
                && let Poll::Ready(frame) = this.stream.poll_next_unpin(cx)
            {
                return Poll::Ready(Io::Frame(frame));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
