//! The accept loop the local HTTP endpoints (health, MetaServer) share: at most `max`
//! connections at once, each served on a task of the tracker; accepting stops on cancel; a
//! failed accept (out of file descriptors) pauses briefly instead of spinning.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Pause after a failed accept so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts on `listener` until `cancel`; `serve` runs one connection, holding its slot.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max: usize,
    what: &'static str,
    cancel: CancellationToken,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let span = tracing::debug_span!("conn", %peer);
                tracker.spawn(serve(stream, permit).instrument(span));
            }
            Err(e) => {
                tracing::warn!(error = %e, endpoint = what, "accepting a connection failed");
                drop(permit);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    tracing::debug!(endpoint = what, "stopped accepting");
}
