//! The connection loop: rounds of attempts over the endpoints, sessions, probes of preferred
//! endpoints, backoff, and the link state and counters that tell the rest of edgecore about it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::ReconnectBackoff;
use crate::dial::{CloudStream, MAX_MESSAGE_BYTES, Target};
use crate::endpoints::{Endpoints, Round};
use crate::error::DialErrorKind;
use crate::link_state::{DisconnectReason, HubStats, LinkState};
use crate::message::Message;
use crate::session::{self, Links, SessionEnd, SessionSettings};
use probes::{first_accepting, probe_first, rebuild_targets};

/// The hub task's state. Owned by the one task that runs [`Link::run`].
pub(crate) struct Link {
    pub(crate) session: SessionSettings,
    /// Same order as `endpoints`.
    pub(crate) targets: Vec<Target>,
    pub(crate) endpoints: Endpoints,
    pub(crate) backoff: ReconnectBackoff,
    pub(crate) stable_after: Duration,
    pub(crate) probe_every: Duration,
    pub(crate) inbound: mpsc::Sender<Message>,
    pub(crate) outbound: mpsc::Receiver<Message>,
    pub(crate) link: watch::Sender<LinkState>,
    pub(crate) stats: watch::Sender<HubStats>,
    pub(crate) cancel: CancellationToken,
    pub(crate) sessions: u64,
    /// Bumped by the handle when the certificate files were renewed.
    pub(crate) reload: watch::Receiver<u64>,
    /// For rebuilding the TLS configs after a rotation.
    pub(crate) hub: config::EdgeHub,
    pub(crate) node_name: String,
}

/// What a round of attempts ended with.
enum RoundEnd {
    /// Every endpoint failed; `fatal` when one failure needs an operator (wait the cap).
    Failed {
        fatal: bool,
    },
    /// A session ran and ended.
    Session {
        index: usize,
        end: SessionEnd,
        up_for: Duration,
        /// A preferred endpoint that answered a probe.
        preferred: Option<usize>,
        /// Targets rebuilt from renewed certificate files.
        fresh: Option<Vec<Target>>,
    },
    Shutdown,
}

/// How the reconnect cycle pauses before its next round of attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// The backoff delay.
    Backoff,
    /// At least the backoff cap: the last round failed in a way retrying soon will not fix.
    Long,
    /// None: moving to a preferred endpoint, or re-dialing with renewed certificates.
    Immediate,
}

/// The reconnect cycle between two rounds of attempts: its one piece of state.
struct Cycle {
    /// The endpoints to try next, in order.
    round: Round,
    pause: Pause,
    /// Attempts since the last session (the `Connecting` state counts them).
    attempt: u32,
    /// When the last session was lost (for the failover time).
    lost_at: Option<Instant>,
    /// The endpoint the last round started with (its change is logged).
    first: Option<usize>,
}

impl Link {
    /// Connects, keeps the session up, reconnects, until cancelled.
    pub(crate) async fn run(mut self) {
        let mut cycle = Cycle {
            round: self.endpoints.round(),
            pause: Pause::Backoff,
            attempt: 0,
            lost_at: None,
            first: None,
        };
        loop {
            if cycle.pause != Pause::Immediate {
                let mut delay = self.backoff.next_delay();
                if cycle.pause == Pause::Long {
                    delay = delay.max(self.backoff.cap());
                }
                let delay_ms = millis(delay);
                self.stats.send_modify(|s| s.current_backoff_ms = delay_ms);
                if !delay.is_zero() {
                    info!(delay_ms, "backing off");
                    // An endpoint that refused TCP and now accepts it ends the wait: the target
                    // is a session within a second of the VIP answering again, whatever the cap.
                    let dead: Vec<usize> = cycle
                        .round
                        .clone()
                        .filter(|i| self.endpoints.is_unreachable(*i))
                        .collect();
                    tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                        back = first_accepting(&self.targets, dead) => {
                            if let Some(ep) = self.targets.get(back) {
                                info!(endpoint = %ep.endpoint(), "endpoint accepts connections again, backoff cut short");
                            }
                        }
                    }
                }
            }
            // Renewed certificates (possibly while backing off) are loaded before dialing, so
            // the next session starts with them instead of being ended for them.
            if self.reload.has_changed().unwrap_or(false) {
                self.reload.borrow_and_update();
                self.reload_tls();
            }
            if let Some(first) = cycle.round.clone().next()
                && cycle.first != Some(first)
            {
                if let Some(ep) = self.endpoints.get(first) {
                    let since_failure_ms = self
                        .endpoints
                        .since_failure(first, Instant::now())
                        .map(millis);
                    info!(
                        endpoint = %ep,
                        failures = self.endpoints.failures(first),
                        since_failure_ms,
                        "endpoint chosen"
                    );
                }
                cycle.first = Some(first);
            }
            let round = std::mem::replace(&mut cycle.round, self.endpoints.round());
            let outcome = self
                .attempt_round(round, &mut cycle.attempt, &mut cycle.lost_at)
                .await;
            // By default the next round is ordered by what this one just learned.
            cycle.round = self.endpoints.round();
            cycle.pause = Pause::Backoff;
            match outcome {
                RoundEnd::Shutdown => break,
                RoundEnd::Failed { fatal } => {
                    if fatal {
                        cycle.pause = Pause::Long;
                    }
                }
                RoundEnd::Session {
                    index,
                    end,
                    up_for,
                    preferred,
                    fresh,
                } => {
                    cycle.attempt = 0;
                    cycle.lost_at = Some(Instant::now());
                    self.lost(&end, up_for);
                    if up_for >= self.stable_after {
                        self.backoff.reset();
                    }
                    match end.reason {
                        DisconnectReason::Shutdown => break,
                        DisconnectReason::Preferred => {
                            cycle.pause = Pause::Immediate;
                            if let Some(to) = preferred {
                                cycle.round = self.endpoints.round_from(to);
                            }
                        }
                        DisconnectReason::Silent | DisconnectReason::WriteFailed => {
                            self.endpoints.record_failure(index, Instant::now(), false);
                            cycle.round = self.endpoints.round();
                        }
                        DisconnectReason::CertRotated => {
                            if let Some(targets) = fresh {
                                self.targets = targets;
                            }
                            cycle.pause = Pause::Immediate;
                        }
                        DisconnectReason::Closed | DisconnectReason::DialFailed => {}
                    }
                }
            }
        }
        self.set(LinkState::Disconnected {
            reason: DisconnectReason::Shutdown,
        });
        info!("cloud link stopped");
    }

    /// Tries the endpoints of `round` in order until one gives a session.
    async fn attempt_round(
        &mut self,
        round: Round,
        attempt: &mut u32,
        lost_at: &mut Option<Instant>,
    ) -> RoundEnd {
        let mut fatal = false;
        for index in round {
            let Some(target) = self.targets.get(index) else {
                continue;
            };
            *attempt = attempt.saturating_add(1);
            let endpoint = target.endpoint().to_string();
            info!(endpoint = %endpoint, attempt = *attempt, "connecting");
            self.set(LinkState::Connecting {
                endpoint: endpoint.clone(),
                attempt: *attempt,
            });
            let started = Instant::now();
            let dialed = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return RoundEnd::Shutdown,
                dialed = target.dial() => dialed,
            };
            match dialed {
                Ok(ws) => {
                    self.endpoints.record_success(index);
                    self.sessions = self.sessions.saturating_add(1);
                    let session = self.sessions;
                    let failover_ms = lost_at.take().map(|at| millis(at.elapsed()));
                    self.stats.send_modify(|s| {
                        s.sessions = session;
                        if failover_ms.is_some() {
                            s.last_failover_ms = failover_ms;
                        }
                    });
                    info!(
                        endpoint = %endpoint,
                        session,
                        took_ms = millis(started.elapsed()),
                        failover_ms,
                        "connected"
                    );
                    self.set(LinkState::Connected { session, endpoint });
                    let up = Instant::now();
                    let (end, preferred, fresh) = self.connected(index, ws).await;
                    return RoundEnd::Session {
                        index,
                        end,
                        up_for: up.elapsed(),
                        preferred,
                        fresh,
                    };
                }
                Err(e) => {
                    let kind = e.kind();
                    if kind == DialErrorKind::Fatal {
                        error!(endpoint = %endpoint, attempt = *attempt, kind = kind.as_str(), error = %e, "connection attempt failed");
                    } else {
                        warn!(endpoint = %endpoint, attempt = *attempt, kind = kind.as_str(), error = %e, "connection attempt failed");
                    }
                    self.stats
                        .send_modify(|s| s.by_reason.count(DisconnectReason::DialFailed));
                    self.set(LinkState::Disconnected {
                        reason: DisconnectReason::DialFailed,
                    });
                    // Every failure moves on to the next endpoint of the round; the kind
                    // decides whether this one loses its place and how long the backoff is.
                    match kind {
                        DialErrorKind::Retry => {}
                        DialErrorKind::NextEndpoint => {
                            self.endpoints.record_failure(
                                index,
                                Instant::now(),
                                e.is_unreachable(),
                            );
                        }
                        DialErrorKind::Fatal => {
                            fatal = true;
                            self.endpoints.record_failure(
                                index,
                                Instant::now(),
                                e.is_unreachable(),
                            );
                        }
                    }
                }
            }
        }
        RoundEnd::Failed { fatal }
    }

    /// Runs the session on `ws`; meanwhile probes the endpoints preferred over `index` and, when
    /// one answers, ends the session to move there.
    /// When the handle reports renewed certificates and they load, the session ends too and the
    /// rebuilt targets come back.
    async fn connected(
        &mut self,
        index: usize,
        ws: CloudStream,
    ) -> (SessionEnd, Option<usize>, Option<Vec<Target>>) {
        let (mut sink, stream) = ws.split();
        // A cloud message over the size limit ends the session (the WebSocket cannot skip it);
        // say so plainly, the session's own line only carries tungstenite's wording.
        let mut stream = stream.inspect(|frame| {
            if let Err(tokio_tungstenite::tungstenite::Error::Capacity(e)) = frame {
                warn!(error = %e, limit_bytes = MAX_MESSAGE_BYTES, "cloud message over the size limit refused; the session ends and it is not stored");
            }
        });
        let preempt = CancellationToken::new();
        let preferred: Vec<usize> = self.endpoints.preferred_over(index).collect();
        let session = session::run(
            &mut sink,
            &mut stream,
            self.session,
            Links {
                inbound: &self.inbound,
                outbound: &mut self.outbound,
                cancel: &self.cancel,
                preempt: &preempt,
            },
        );
        tokio::pin!(session);
        let targets = &self.targets;
        let mut probe_tick =
            tokio::time::interval_at(Instant::now() + self.probe_every, self.probe_every);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probing: Option<Pin<Box<dyn Future<Output = Option<usize>> + Send + '_>>> = None;
        let mut found = None;
        let mut fresh: Option<Vec<Target>> = None;
        let (hub, endpoints, node) = (&self.hub, &self.endpoints, self.node_name.as_str());
        let reload = &mut self.reload;
        // False once every handle is gone: `changed` would then return at once, forever.
        let mut reload_open = reload.has_changed().is_ok();
        loop {
            tokio::select! {
                biased;
                // The session watches the cancel token itself, so that it can send a Close frame.
                end = &mut session => {
                    let mut end = end;
                    if fresh.is_some() && end.reason == DisconnectReason::Preferred {
                        end.reason = DisconnectReason::CertRotated;
                    }
                    return (end, found, fresh);
                }
                changed = reload.changed(), if reload_open && fresh.is_none() && found.is_none() => {
                    if changed.is_err() {
                        reload_open = false;
                    } else if let Some(targets) = rebuild_targets(hub, endpoints, node) {
                        fresh = Some(targets);
                        preempt.cancel();
                    }
                }
                hit = async { match probing.as_mut() { Some(p) => p.await, None => None } },
                    if probing.is_some() =>
                {
                    probing = None;
                    if let Some(to) = hit {
                        if let Some(ep) = targets.get(to) {
                            info!(endpoint = %ep.endpoint(), "preferred endpoint answers, moving back");
                        }
                        found = Some(to);
                        preempt.cancel();
                    }
                }
                _ = probe_tick.tick(), if !preferred.is_empty() && found.is_none() && probing.is_none() => {
                    probing = Some(Box::pin(probe_first(targets, preferred.clone())));
                }
            }
        }
    }

    /// Re-reads the TLS files; keeps the old configs when the new ones do not load.
    fn reload_tls(&mut self) {
        if let Some(targets) = rebuild_targets(&self.hub, &self.endpoints, &self.node_name) {
            self.targets = targets;
        }
    }

    fn lost(&self, end: &SessionEnd, up_for: Duration) {
        let reason = end.reason;
        let after_ms = millis(up_for);
        let cause = end.cause.as_deref().unwrap_or_default();
        self.stats.send_modify(|s| s.by_reason.count(reason));
        match reason {
            DisconnectReason::Shutdown
            | DisconnectReason::Preferred
            | DisconnectReason::CertRotated => {
                info!(reason = reason.as_str(), after_ms, "session ended");
            }
            _ => warn!(reason = reason.as_str(), after_ms, cause, "session lost"),
        }
        self.set(LinkState::Disconnected { reason });
    }

    fn set(&self, state: LinkState) {
        self.link.send_replace(state);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

mod probes;
#[cfg(test)]
mod tests;
