//! The whole hub against the in-test TLS WebSocket server: sessions, reconnects, failover.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::{HubHandle, HubSettings, spawn};
use crate::link_state::{DisconnectReason, LinkState};
use crate::message::{Message, op};
use crate::testcloud::{Cloud, KeyFormat, Mode, Pki, Seen};

struct Edge {
    handle: HubHandle,
    link: watch::Receiver<LinkState>,
    inbound: mpsc::Receiver<Message>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

fn start_edge(hub: config::EdgeHub) -> Edge {
    let (tx, inbound) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let settings = HubSettings {
        node_name: "edge-1".into(),
        hub,
    };
    let handle = spawn(settings, tx, cancel.child_token(), &tracker).unwrap();
    Edge {
        link: handle.link(),
        handle,
        inbound,
        cancel,
        tracker,
    }
}

impl Edge {
    async fn until(&mut self, what: &str, pred: impl FnMut(&LinkState) -> bool) -> LinkState {
        let mut link = self.link.clone();
        match tokio::time::timeout(Duration::from_secs(10), link.wait_for(pred)).await {
            Ok(state) => state.unwrap().clone(),
            Err(_) => panic!(
                "timed out waiting for {what}; link is {:?}",
                *self.link.borrow()
            ),
        }
    }

    async fn session(&mut self, n: u64) -> LinkState {
        self.until(
            &format!("session {n}"),
            |s| matches!(s, LinkState::Connected { session, .. } if *session == n),
        )
        .await
    }
}

async fn cloud(pki: &Pki, modes: Vec<Mode>) -> Cloud {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Cloud::start(pki.acceptor(&["127.0.0.1"]), listener, modes).await
}

#[tokio::test]
async fn a_session_delivers_both_ways_and_answers_reserved_operations_itself() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, vec![Mode::Serve]).await;
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.websocket.server = cloud.addr.to_string();
    let mut edge = start_edge(hub);
    edge.session(1).await;

    let got = tokio::time::timeout(Duration::from_secs(10), edge.inbound.recv())
        .await
        .expect("the cloud's insert on inbound")
        .unwrap();
    assert_eq!(got, cloud.greeting[1], "the reserved ping is not forwarded");

    let up = Message::ack_of(&got);
    edge.handle.send(up.clone()).await.unwrap();
    let (mut answered, mut acked, mut keepalive) = (false, false, false);
    while !(answered && acked && keepalive) {
        if let Seen::Message(m) = cloud.next("control answer, ack and keepalive").await {
            answered |= m.header.parent_msg_id == cloud.greeting[0].header.msg_id
                && m.content == serde_json::json!("ack");
            acked |= m == up;
            keepalive |= m.route.operation == op::KEEPALIVE;
        }
    }

    edge.cancel.cancel();
    loop {
        if let Seen::Close = cloud.next("close frame on shutdown").await {
            break;
        }
    }
    edge.until("shutdown", |s| {
        *s == LinkState::Disconnected {
            reason: DisconnectReason::Shutdown,
        }
    })
    .await;
    edge.tracker.close();
    tokio::time::timeout(Duration::from_secs(10), edge.tracker.wait())
        .await
        .expect("hub task ends after cancel");
    assert!(
        edge.handle.send(up).await.is_err(),
        "send after shutdown returns the message"
    );
}

#[tokio::test]
async fn the_hub_reconnects_after_the_server_drops_the_connection() {
    let pki = Pki::new();
    let cloud = cloud(&pki, vec![Mode::Drop, Mode::Serve]).await;
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.websocket.server = cloud.addr.to_string();
    let mut edge = start_edge(hub);
    edge.session(2).await;
    let stats = edge.handle.stats();
    assert_eq!(stats.reconnects(DisconnectReason::Closed), 1);
    assert_eq!(stats.sessions, 2);
    assert!(stats.last_failover_ms.is_some());
}

#[tokio::test]
async fn the_hub_reconnects_after_the_server_goes_silent() {
    let pki = Pki::new();
    let cloud = cloud(&pki, vec![Mode::Silent, Mode::Serve]).await;
    let mut hub = pki.edge_config(KeyFormat::Pkcs8);
    hub.websocket.server = cloud.addr.to_string();
    let mut edge = start_edge(hub);
    edge.session(2).await;
    assert_eq!(edge.handle.stats().reconnects(DisconnectReason::Silent), 1);
}

#[tokio::test]
async fn the_hub_fails_over_and_moves_back_to_the_preferred_endpoint() {
    let pki = Pki::new();
    let preferred_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let preferred = format!("127.0.0.1:{preferred_port}");
    let backup = cloud(&pki, vec![Mode::Serve]).await;
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.websocket.server = preferred.clone();
    hub.failover.servers = vec![backup.addr.to_string()];
    let mut edge = start_edge(hub);

    let on_backup = edge.session(1).await;
    assert_eq!(
        on_backup,
        LinkState::Connected {
            session: 1,
            endpoint: backup.addr.to_string()
        },
        "refused preferred endpoint skipped"
    );
    assert!(edge.handle.stats().reconnects(DisconnectReason::DialFailed) >= 1);

    let listener = TcpListener::bind(("127.0.0.1", preferred_port))
        .await
        .unwrap();
    let _preferred = Cloud::start(pki.acceptor(&["127.0.0.1"]), listener, vec![Mode::Serve]).await;
    let back = edge
        .until(
            "session on the preferred endpoint",
            |s| matches!(s, LinkState::Connected { endpoint, .. } if *endpoint == preferred),
        )
        .await;
    assert_eq!(
        back,
        LinkState::Connected {
            session: 2,
            endpoint: preferred
        }
    );
    assert_eq!(
        edge.handle.stats().reconnects(DisconnectReason::Preferred),
        1
    );
}

#[tokio::test]
async fn spawn_refuses_unusable_tls_files_before_running() {
    let pki = Pki::new();
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.tls_cert_file = pki.dir.path().join("missing.crt");
    let (tx, _rx) = mpsc::channel(1);
    let err = spawn(
        HubSettings {
            node_name: "edge-1".into(),
            hub,
        },
        tx,
        CancellationToken::new(),
        &TaskTracker::new(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("tlsCertFile") && text.contains("missing.crt"),
        "{text}"
    );
}

#[tokio::test]
async fn an_endpoint_that_accepts_tcp_again_cuts_a_long_backoff_short() {
    let pki = Pki::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.websocket.server = format!("127.0.0.1:{port}");
    // Without the early wake-up the second attempt would come a minute later, after the test's
    // ten-second wait has given up.
    hub.failover.backoff_initial_ms = 60_000;
    hub.failover.backoff_max_ms = 60_000;
    let mut edge = start_edge(hub);
    edge.until("a refused attempt", |s| {
        *s == LinkState::Disconnected {
            reason: DisconnectReason::DialFailed,
        }
    })
    .await;
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let _cloud = Cloud::start(pki.acceptor(&["127.0.0.1"]), listener, vec![Mode::Serve]).await;
    edge.session(1).await;
    assert_eq!(
        edge.handle.stats().current_backoff_ms,
        60_000,
        "the session came during the long backoff"
    );
}

#[tokio::test]
async fn a_certificate_rotation_reloads_the_files_and_redials() {
    let pki = Pki::new();
    let cloud = cloud(&pki, vec![Mode::Serve, Mode::Serve]).await;
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.websocket.server = cloud.addr.to_string();
    let mut edge = start_edge(hub.clone());
    edge.session(1).await;

    // A renewed pair from the same CA replaces the files, as the rotation task does.
    let renewed = pki.edge_config(KeyFormat::Pkcs8);
    assert_eq!(renewed.tls_cert_file, hub.tls_cert_file);
    edge.handle.certificates_rotated();
    edge.session(2).await;
    assert_eq!(
        edge.handle
            .stats()
            .reconnects(DisconnectReason::CertRotated),
        1
    );
}

/// A renewed certificate landing while the hub is between attempts (KubeEdge's edgehub
/// deadlocks there, kubeedge#7144): the handle returns at once, the next attempt dials with the
/// new pair, and later rotations still work.
#[tokio::test]
async fn a_rotation_while_reconnecting_neither_blocks_nor_breaks_the_link() {
    let pki = Pki::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.websocket.server = format!("127.0.0.1:{port}");
    let mut edge = start_edge(hub);
    edge.until("a refused attempt", |s| {
        *s == LinkState::Disconnected {
            reason: DisconnectReason::DialFailed,
        }
    })
    .await;
    let _renewed = pki.edge_config(KeyFormat::Pkcs8);
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_millis(100), async {
            edge.handle.certificates_rotated()
        })
        .await
        .expect("certificates_rotated never waits for the link");
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let _cloud = Cloud::start(
        pki.acceptor(&["127.0.0.1"]),
        listener,
        vec![Mode::Serve, Mode::Serve],
    )
    .await;
    edge.session(1).await;
    edge.handle.certificates_rotated();
    edge.session(2).await;
    assert_eq!(
        edge.handle
            .stats()
            .reconnects(DisconnectReason::CertRotated),
        1,
        "the rotations during the outage were taken before the first session, not after it"
    );
}

#[tokio::test]
async fn a_rotation_to_unusable_files_keeps_the_session_and_the_old_pair() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, vec![Mode::Serve, Mode::Serve]).await;
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.websocket.server = cloud.addr.to_string();
    hub.heartbeat = 1;
    let mut edge = start_edge(hub.clone());
    edge.session(1).await;
    let mut keepalives = 0;
    assert!(matches!(cloud.next("upgrade").await, Seen::Upgrade { .. }));
    let next_keepalive = async |cloud: &mut Cloud| loop {
        match cloud.next("keepalive").await {
            Seen::Message(m) if m.route.operation == op::KEEPALIVE => return,
            Seen::Upgrade { .. } => panic!("the session was re-dialed"),
            _ => {}
        }
    };
    next_keepalive(&mut cloud).await;

    std::fs::write(&hub.tls_private_key_file, "garbage").unwrap();
    edge.handle.certificates_rotated();
    // Two more heartbeats on the same connection: the failed reload did not end the session.
    while keepalives < 2 {
        next_keepalive(&mut cloud).await;
        keepalives += 1;
    }
    assert!(matches!(
        *edge.link.borrow(),
        LinkState::Connected { session: 1, .. }
    ));
    assert_eq!(
        edge.handle
            .stats()
            .reconnects(DisconnectReason::CertRotated),
        0
    );
}

#[tokio::test]
async fn a_round_moves_past_an_endpoint_that_accepts_tcp_but_fails_the_handshake() {
    let pki = Pki::new();
    let haproxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_backend = haproxy.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = haproxy.accept().await {
            drop(tcp);
        }
    });
    let good = cloud(&pki, vec![Mode::Serve]).await;
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.websocket.server = dead_backend;
    hub.failover.servers = vec![good.addr.to_string()];
    hub.failover.backoff_initial_ms = 60_000;
    hub.failover.backoff_max_ms = 60_000;
    let mut edge = start_edge(hub);
    // Within the first round: no minute-long backoff between the two endpoints.
    let state = edge.session(1).await;
    assert_eq!(
        state,
        LinkState::Connected {
            session: 1,
            endpoint: good.addr.to_string()
        }
    );
    assert_eq!(
        edge.handle.stats().reconnects(DisconnectReason::DialFailed),
        1
    );
}
