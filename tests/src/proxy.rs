//! A loopback stand-in for a virtual IP: one listening address that forwards TCP to whichever
//! replica is active, and moves the way a VIP does: existing connections reset, or left
//! half-open (black-holed) while new ones reach the new holder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span};

/// Time allowed to connect to a backend.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Copy buffer per direction.
const BUF: usize = 16 * 1024;

/// What happens to connections made before a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reset them (SO_LINGER 0 on the client side): the edge sees a RST.
    Rst,
    /// Black-hole them: the client socket stays open, nothing is forwarded or closed, in
    /// either direction: a half-open link.
    Silent,
}

#[derive(Debug, Clone, Copy)]
struct Route {
    /// Where new connections go; `None` while down.
    backend: Option<SocketAddr>,
    /// The last backend, for `up()`.
    last: SocketAddr,
    /// Bumped on every move; a connection of an older generation gets `mode`.
    generation: u64,
    mode: Mode,
    /// While down: reset new connections instead of black-holing them.
    refuse_new: bool,
}

/// The proxy.
#[derive(Debug)]
pub struct VipProxy {
    addr: SocketAddr,
    route: Arc<watch::Sender<Route>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl VipProxy {
    /// Listens on `listen` (port 0 picks one) and forwards to `backend`.
    pub async fn start(listen: SocketAddr, backend: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind {listen}"))?;
        let addr = listener.local_addr()?;
        let (tx, _) = watch::channel(Route {
            backend: Some(backend),
            last: backend,
            generation: 0,
            mode: Mode::Rst,
            refuse_new: false,
        });
        let route = Arc::new(tx);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(
            accept_loop(listener, route.clone(), cancel.clone(), tracker.clone())
                .instrument(info_span!("vip", %addr)),
        );
        info!(%addr, %backend, "vip proxy listening");
        Ok(Self {
            addr,
            route,
            cancel,
            tracker,
        })
    }

    /// The VIP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go now (`None` while down).
    pub fn active(&self) -> Option<SocketAddr> {
        self.route.borrow().backend
    }

    fn bump(&self, f: impl FnOnce(&mut Route)) {
        self.route.send_modify(|r| {
            f(r);
            r.generation += 1;
        });
    }

    /// New connections go to `backend`; existing ones are reset or black-holed.
    pub fn move_to(&self, backend: SocketAddr, mode: Mode) {
        info!(%backend, ?mode, "vip moves");
        self.bump(|r| {
            r.backend = Some(backend);
            r.last = backend;
            r.mode = mode;
            r.refuse_new = false;
        });
    }

    /// The whole cloud is unreachable: existing and new connections are black-holed.
    pub fn down(&self) {
        info!("vip down (black hole)");
        self.bump(|r| {
            r.backend = None;
            r.mode = Mode::Silent;
            r.refuse_new = false;
        });
    }

    /// The whole cloud refuses: existing connections are reset, new ones too.
    pub fn refuse(&self) {
        info!("vip down (refusing)");
        self.bump(|r| {
            r.backend = None;
            r.mode = Mode::Rst;
            r.refuse_new = true;
        });
    }

    /// Back to the last backend after `down()`/`refuse()`. Connections black-holed meanwhile stay so.
    pub fn up(&self) {
        info!("vip up");
        self.route.send_modify(|r| {
            r.backend = Some(r.last);
            r.refuse_new = false;
        });
    }

    /// Closes everything.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

impl Drop for VipProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    route: Arc<watch::Sender<Route>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (client, peer) = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let mut rx = route.subscribe();
        let now = *rx.borrow_and_update();
        tracker.spawn(
            connection(client, now, rx, cancel.clone()).instrument(info_span!("vipconn", %peer)),
        );
    }
}

fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

async fn connection(
    client: TcpStream,
    route: Route,
    ctl: watch::Receiver<Route>,
    cancel: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let Some(backend_addr) = route.backend else {
        if route.refuse_new {
            reset(&client);
        } else {
            // Black hole: hold the socket, read nothing.
            cancel.cancelled().await;
        }
        return;
    };
    let backend =
        match tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend_addr)).await
        {
            Ok(Ok(b)) => b,
            _ => {
                debug!(%backend_addr, "backend unreachable; resetting the client");
                reset(&client);
                return;
            }
        };
    let _ = backend.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (br, bw) = backend.into_split();
    pump(cr, cw, br, bw, route.generation, ctl, cancel).await;
}

enum End {
    /// Both sides finished.
    Done,
    /// Reset the client.
    Reset,
    /// Hold everything open, forward nothing.
    Hold,
}

async fn pump(
    mut cr: OwnedReadHalf,
    mut cw: OwnedWriteHalf,
    mut br: OwnedReadHalf,
    mut bw: OwnedWriteHalf,
    generation: u64,
    mut ctl: watch::Receiver<Route>,
    cancel: CancellationToken,
) {
    let mut a = vec![0u8; BUF];
    let mut b = vec![0u8; BUF];
    let (mut c_eof, mut b_eof) = (false, false);
    let end = loop {
        if c_eof && b_eof {
            break End::Done;
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => break End::Done,
            r = ctl.changed() => {
                if r.is_err() {
                    break End::Done;
                }
                let now = *ctl.borrow_and_update();
                if now.generation != generation {
                    break match now.mode {
                        Mode::Rst => End::Reset,
                        Mode::Silent => End::Hold,
                    };
                }
            }
            n = cr.read(&mut a), if !c_eof => match n {
                Ok(0) => {
                    c_eof = true;
                    let _ = bw.shutdown().await;
                }
                Ok(n) => {
                    if bw.write_all(a.get(..n).unwrap_or_default()).await.is_err() {
                        break End::Reset;
                    }
                }
                Err(_) => {
                    // The client reset: pass it on.
                    reset(bw.as_ref());
                    break End::Done;
                }
            },
            n = br.read(&mut b), if !b_eof => match n {
                Ok(0) => {
                    b_eof = true;
                    let _ = cw.shutdown().await;
                }
                Ok(n) => {
                    if cw.write_all(b.get(..n).unwrap_or_default()).await.is_err() {
                        reset(bw.as_ref());
                        break End::Done;
                    }
                }
                Err(_) => break End::Reset,
            },
        }
    };
    match end {
        End::Done => {}
        End::Reset => reset(cw.as_ref()),
        End::Hold => {
            cancel.cancelled().await;
            drop((cr, cw, br, bw));
        }
    }
}
