//! The session driven over channels with a paused clock.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::{CancellationToken, PollSender};

use super::*;
use crate::message::{Route, op};

const SETTINGS: SessionSettings = SessionSettings {
    heartbeat: Duration::from_secs(15),
    ping_interval: Duration::from_secs(2),
    ping_timeout: Duration::from_secs(5),
    write_deadline: Duration::from_secs(15),
    message_qps: 1_000,
    message_burst: 1_000,
};

/// The cloud's end of a session under test.
struct Peer {
    to_session: mpsc::Sender<Result<WsMessage, std::io::Error>>,
    from_session: mpsc::Receiver<WsMessage>,
    inbound: mpsc::Receiver<Message>,
    outbound: mpsc::Sender<Message>,
    cancel: CancellationToken,
    preempt: CancellationToken,
    session: JoinHandle<SessionEnd>,
    started: Instant,
}

fn start(inbound_capacity: usize) -> Peer {
    start_with(SETTINGS, inbound_capacity)
}

fn start_with(settings: SessionSettings, inbound_capacity: usize) -> Peer {
    let (to_session, mut frames) = mpsc::channel::<Result<WsMessage, std::io::Error>>(64);
    let (sink_tx, from_session) = mpsc::channel(64);
    let (inbound_tx, inbound) = mpsc::channel(inbound_capacity);
    let (outbound, mut outbound_rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let preempt = CancellationToken::new();
    let (c, p) = (cancel.clone(), preempt.clone());
    let session = tokio::spawn(async move {
        let mut sink = PollSender::new(sink_tx);
        let mut stream = futures_util::stream::poll_fn(move |cx| frames.poll_recv(cx));
        let links = Links {
            inbound: &inbound_tx,
            outbound: &mut outbound_rx,
            cancel: &c,
            preempt: &p,
        };
        run(&mut sink, &mut stream, settings, links).await
    });
    Peer {
        to_session,
        from_session,
        inbound,
        outbound,
        cancel,
        preempt,
        session,
        started: Instant::now(),
    }
}

impl Peer {
    async fn frame(&mut self, what: &str) -> WsMessage {
        timeout(Duration::from_secs(60), self.from_session.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("session sink closed while waiting for {what}"))
    }

    /// The next text frame that is not a keepalive, decoded.
    async fn message(&mut self, what: &str) -> Message {
        loop {
            if let WsMessage::Text(t) = self.frame(what).await {
                let m = Message::from_wire(t.as_bytes()).unwrap();
                if m.route.operation != op::KEEPALIVE {
                    return m;
                }
            }
        }
    }

    async fn send(&self, frame: WsMessage) {
        self.to_session.send(Ok(frame)).await.unwrap();
    }

    async fn end(self, what: &str) -> (SessionEnd, Duration) {
        let end = timeout(Duration::from_secs(120), self.session)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
        (end, self.started.elapsed())
    }
}

fn cloud_message(operation: &str) -> Message {
    Message::new(
        Route::new("edgecontroller", "resource", operation, "default/pod/nginx"),
        Value::String("x".into()),
    )
}

fn text(m: &Message) -> WsMessage {
    WsMessage::Text(m.to_wire().into())
}

#[tokio::test(start_paused = true)]
async fn keepalive_every_heartbeat_and_ping_every_interval() {
    let mut peer = start(8);
    let mut keepalives = Vec::new();
    let mut pings = Vec::new();
    while peer.started.elapsed() <= Duration::from_secs(31) {
        match peer.frame("keepalive or ping").await {
            WsMessage::Ping(_) => {
                pings.push(peer.started.elapsed().as_secs());
                peer.send(WsMessage::Pong(Default::default())).await;
            }
            WsMessage::Text(t) => {
                let m = Message::from_wire(t.as_bytes()).unwrap();
                assert_eq!(m.route.operation, op::KEEPALIVE);
                assert_eq!(m.route.source, "websocket");
                assert_eq!(m.content, Value::String("ping".into()));
                keepalives.push(peer.started.elapsed().as_secs());
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(keepalives, [0, 15, 30]);
    assert_eq!(pings, (1..=16).map(|n| n * 2).collect::<Vec<u64>>());
    assert!(!peer.session.is_finished(), "pongs keep the session up");
}

#[tokio::test(start_paused = true)]
async fn silence_ends_the_session_after_ping_timeout() {
    let peer = start(8);
    let (end, after) = peer.end("silent end").await;
    assert_eq!(end.reason, DisconnectReason::Silent);
    assert_eq!(after, SETTINGS.ping_timeout);
}

#[tokio::test(start_paused = true)]
async fn any_frame_resets_the_silence_timer() {
    let peer = start(8);
    tokio::time::sleep(Duration::from_secs(4)).await;
    peer.send(WsMessage::Binary(b"not a message".to_vec().into()))
        .await;
    let (end, after) = peer.end("silent end").await;
    assert_eq!(end.reason, DisconnectReason::Silent);
    assert_eq!(after, Duration::from_secs(4) + SETTINGS.ping_timeout);
}

#[tokio::test(start_paused = true)]
async fn reserved_operations_are_answered_and_not_forwarded() {
    let mut peer = start(8);
    for operation in op::RESERVED {
        let req = cloud_message(operation);
        peer.send(text(&req)).await;
        let answer = peer.message("control answer").await;
        assert_eq!(answer.header.parent_msg_id, req.header.msg_id);
        assert_eq!(answer.route.operation, op::RESPONSE);
        assert_eq!(answer.content, Value::String("ack".into()));
    }
    let normal = cloud_message(op::INSERT);
    peer.send(text(&normal)).await;
    let got = timeout(Duration::from_secs(1), peer.inbound.recv())
        .await
        .expect("the insert reaches inbound")
        .unwrap();
    assert_eq!(got, normal, "only the insert is forwarded");
}

#[tokio::test(start_paused = true)]
async fn a_frame_that_does_not_decode_is_skipped() {
    let mut peer = start(8);
    peer.send(WsMessage::Text("not json".into())).await;
    peer.send(WsMessage::Binary(b"{\"header\":".to_vec().into()))
        .await;
    let good = cloud_message(op::UPDATE);
    // Binary frames are accepted like gorilla's ReadJSON does.
    peer.send(WsMessage::Binary(good.to_wire().into_bytes().into()))
        .await;
    let got = timeout(Duration::from_secs(1), peer.inbound.recv())
        .await
        .expect("the good message after the bad ones")
        .unwrap();
    assert_eq!(got, good);
    assert!(!peer.session.is_finished());
}

#[tokio::test(start_paused = true)]
async fn outbound_messages_go_out_as_text() {
    let mut peer = start(8);
    let up = Message::new(
        Route::new("edged", "meta", op::UPDATE, "default/podpatch/a<b>"),
        Value::Null,
    );
    peer.outbound.send(up.clone()).await.unwrap();
    loop {
        if let WsMessage::Text(t) = peer.frame("the outbound message").await
            && t.as_str() == up.to_wire()
        {
            break;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_inbound_queue_pauses_reading_but_not_keepalives() {
    let mut peer = start(1);
    let sent: Vec<Message> = (0..3).map(|_| cloud_message(op::INSERT)).collect();
    for m in &sent {
        peer.send(text(m)).await;
    }
    let mut keepalives = 0;
    while peer.started.elapsed() < Duration::from_secs(31) {
        if let WsMessage::Text(_) = peer.frame("keepalive").await {
            keepalives += 1;
        }
    }
    assert_eq!(keepalives, 3, "keepalives at 0, 15 and 30 s");
    assert!(
        !peer.session.is_finished(),
        "no silence verdict while we are the slow side"
    );
    for m in sent {
        assert_eq!(peer.inbound.recv().await.unwrap(), m);
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_sends_a_close_frame_and_ends_with_shutdown() {
    let mut peer = start(8);
    peer.cancel.cancel();
    loop {
        if let WsMessage::Close(_) = peer.frame("close frame").await {
            break;
        }
    }
    assert_eq!(
        peer.end("shutdown").await.0.reason,
        DisconnectReason::Shutdown
    );
}

/// Acks metamanager queued just before shutdown reach the cloud before the close frame, so the
/// cloud does not resend what the edge already committed.
#[tokio::test(start_paused = true)]
async fn queued_messages_go_out_before_the_close_frame_on_shutdown() {
    let mut peer = start(8);
    // The session is busy elsewhere (no reads) while the acks are queued and cancel fires:
    // everything lands before the session looks again.
    let acks: Vec<Message> = (0..3)
        .map(|i| {
            let mut m = Message::new(
                Route::new(
                    "edged",
                    "resource",
                    op::RESPONSE,
                    &format!("default/pod/p{i}"),
                ),
                Value::String("OK".into()),
            );
            m.header.parent_msg_id = format!("cloud-{i}");
            m
        })
        .collect();
    for m in &acks {
        peer.outbound.send(m.clone()).await.unwrap();
    }
    peer.cancel.cancel();
    let mut seen = Vec::new();
    loop {
        match peer.frame("acks then the close frame").await {
            WsMessage::Close(_) => break,
            WsMessage::Text(t) => {
                let m = Message::from_wire(t.as_bytes()).unwrap();
                if !m.header.parent_msg_id.is_empty() {
                    seen.push(m.header.parent_msg_id);
                }
            }
            _ => {}
        }
    }
    assert_eq!(seen, ["cloud-0", "cloud-1", "cloud-2"]);
    assert_eq!(
        peer.end("shutdown").await.0.reason,
        DisconnectReason::Shutdown
    );
}

#[tokio::test(start_paused = true)]
async fn preempt_ends_with_preferred() {
    let peer = start(8);
    peer.preempt.cancel();
    assert_eq!(
        peer.end("preferred").await.0.reason,
        DisconnectReason::Preferred
    );
}

#[tokio::test(start_paused = true)]
async fn end_of_stream_reset_and_close_frame_end_with_closed() {
    let mut peer = start(8);
    // Dropping the only sender ends the stream, as EOF does.
    peer.to_session = mpsc::channel(1).0;
    let end = peer.end("end of stream").await.0;
    assert_eq!(end.reason, DisconnectReason::Closed);

    let peer = start(8);
    peer.to_session
        .send(Err(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
        .await
        .unwrap();
    assert_eq!(peer.end("reset").await.0.reason, DisconnectReason::Closed);

    let peer = start(8);
    peer.send(WsMessage::Close(None)).await;
    assert_eq!(
        peer.end("close frame").await.0.reason,
        DisconnectReason::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_ends_with_write_failed() {
    let mut peer = start(8);
    peer.from_session.close();
    let (end, _) = peer.end("write failure").await;
    assert_eq!(end.reason, DisconnectReason::WriteFailed);
}

#[tokio::test(start_paused = true)]
async fn outbound_messages_are_paced_by_message_qps_and_burst_but_keepalives_are_not() {
    let settings = SessionSettings {
        message_qps: 2,
        message_burst: 2,
        ..SETTINGS
    };
    let mut peer = start_with(settings, 8);
    for _ in 0..4 {
        let m = Message::new(
            Route::new("edged", "meta", op::UPDATE, "default/podpatch/a"),
            Value::Null,
        );
        peer.outbound.send(m).await.unwrap();
    }
    let mut sent_at = Vec::new();
    let mut keepalive_at = None;
    while sent_at.len() < 4 {
        match peer.frame("paced messages").await {
            WsMessage::Ping(_) => peer.send(WsMessage::Pong(Default::default())).await,
            WsMessage::Text(t) => {
                let m = Message::from_wire(t.as_bytes()).unwrap();
                let at = peer.started.elapsed();
                if m.route.operation == op::KEEPALIVE {
                    keepalive_at = Some(at);
                } else {
                    sent_at.push(at.as_millis());
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(sent_at, [0, 0, 500, 1000]);
    assert_eq!(keepalive_at, Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn acks_are_not_paced_by_message_qps() {
    let settings = SessionSettings {
        message_qps: 2,
        message_burst: 2,
        ..SETTINGS
    };
    let mut peer = start_with(settings, 16);
    for _ in 0..6 {
        let cloud = Message::new(
            Route::new(
                "edgecontroller",
                "resource",
                op::UPDATE,
                "default/configmap/a",
            ),
            Value::Null,
        );
        peer.outbound.send(Message::ack_of(&cloud)).await.unwrap();
    }
    let mut sent_at = Vec::new();
    while sent_at.len() < 6 {
        match peer.frame("acks").await {
            WsMessage::Ping(_) => peer.send(WsMessage::Pong(Default::default())).await,
            WsMessage::Text(t) => {
                let m = Message::from_wire(t.as_bytes()).unwrap();
                if m.route.operation == op::RESPONSE {
                    sent_at.push(peer.started.elapsed().as_millis());
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(sent_at, [0; 6], "acks waited for the token bucket");
}
