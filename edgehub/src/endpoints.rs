//! The CloudHub endpoints in order of preference, each with its health.
//!
//! `websocket.server` comes first, then `failover.servers`. A round of attempts tries the healthy
//! endpoints in preference order, then the failing ones; the reconnect loop backs off only after a
//! whole round failed.

use std::fmt;

use tokio::time::Instant;

use crate::error::HubError;

/// A CloudHub `host:port`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// As configured, e.g. `10.0.0.10:10000` or `[fd00::1]:10000`.
    raw: String,
    /// Host without IPv6 brackets.
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `host:port`; `key` names the config key in the error.
    pub(crate) fn try_new(key: &'static str, value: &str) -> Result<Self, HubError> {
        let bad = |reason| HubError::BadEndpoint {
            key,
            value: value.to_owned(),
            reason,
        };
        let raw = value.trim();
        let (host, port) = raw.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').ok_or_else(|| bad("unclosed ["))?,
            None if host.contains(':') => return Err(bad("an IPv6 host needs [brackets]")),
            None => host,
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host.contains(['/', ' ', '@', '?', '#']) {
            return Err(bad("host holds a character not allowed in a host name"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("port is not a number from 1 to 65535"))?;
        Ok(Self {
            raw: raw.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    /// Host name or IP, without brackets.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// TCP port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[derive(Debug, Clone, Default)]
struct Health {
    consecutive_failures: u32,
    last_failure: Option<Instant>,
    /// The last failure was at TCP level: nothing accepted the connection.
    unreachable: bool,
}

/// The ordered endpoint list with health. Never empty.
#[derive(Debug)]
pub(crate) struct Endpoints {
    list: Vec<(Endpoint, Health)>,
}

impl Endpoints {
    /// `websocket.server` then `failover.servers`, duplicates removed.
    pub(crate) fn from_config(hub: &config::EdgeHub) -> Result<Self, HubError> {
        let mut list: Vec<(Endpoint, Health)> = Vec::new();
        let first = Endpoint::try_new("modules.edgeHub.websocket.server", &hub.websocket.server)?;
        list.push((first, Health::default()));
        for server in &hub.failover.servers {
            let ep = Endpoint::try_new("modules.edgeHub.failover.servers", server)?;
            if list.iter().all(|(known, _)| known.raw != ep.raw) {
                list.push((ep, Health::default()));
            }
        }
        Ok(Self { list })
    }

    #[cfg(test)]
    fn of(names: &[&str]) -> Self {
        Self {
            list: names
                .iter()
                .map(|n| (Endpoint::try_new("test", n).unwrap(), Health::default()))
                .collect(),
        }
    }

    /// All endpoints, most preferred first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.list.iter().map(|(ep, _)| ep)
    }

    /// The endpoint at `index` (indices come from this list's rounds).
    pub(crate) fn get(&self, index: usize) -> Option<&Endpoint> {
        self.list.get(index).map(|(ep, _)| ep)
    }

    /// True while the endpoint has not failed since it last worked.
    pub(crate) fn is_healthy(&self, index: usize) -> bool {
        self.list
            .get(index)
            .is_some_and(|(_, h)| h.consecutive_failures == 0)
    }

    /// Consecutive failures of the endpoint at `index`.
    pub(crate) fn failures(&self, index: usize) -> u32 {
        self.list
            .get(index)
            .map_or(0, |(_, h)| h.consecutive_failures)
    }

    /// Time since the endpoint last failed, if it has failed since it last worked.
    pub(crate) fn since_failure(&self, index: usize, now: Instant) -> Option<std::time::Duration> {
        self.list
            .get(index)
            .and_then(|(_, h)| h.last_failure)
            .map(|at| now.saturating_duration_since(at))
    }

    /// True when the last failure was that nothing accepted TCP.
    pub(crate) fn is_unreachable(&self, index: usize) -> bool {
        self.list.get(index).is_some_and(|(_, h)| h.unreachable)
    }

    /// Records a failed attempt or a session that died; `unreachable` when TCP was not accepted.
    pub(crate) fn record_failure(&mut self, index: usize, now: Instant, unreachable: bool) {
        if let Some((_, h)) = self.list.get_mut(index) {
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            h.last_failure = Some(now);
            h.unreachable = unreachable;
        }
    }

    /// Records a session that came up (or a probe that answered).
    pub(crate) fn record_success(&mut self, index: usize) {
        if let Some((_, h)) = self.list.get_mut(index) {
            *h = Health::default();
        }
    }

    /// The order of the next round: healthy endpoints by preference, then failing ones by
    /// preference.
    pub(crate) fn round(&self) -> Round {
        let healthy = (0..self.list.len()).filter(|i| self.is_healthy(*i));
        let failing = (0..self.list.len()).filter(|i| !self.is_healthy(*i));
        Round {
            order: healthy.chain(failing).collect(),
            pos: 0,
        }
    }

    /// A round that starts at `first` (a preferred endpoint that answered a probe).
    pub(crate) fn round_from(&self, first: usize) -> Round {
        let rest = self.round().order.into_iter().filter(|i| *i != first);
        Round {
            order: std::iter::once(first).chain(rest).collect(),
            pos: 0,
        }
    }

    /// The endpoints more preferred than `index`, most preferred first.
    pub(crate) fn preferred_over(&self, index: usize) -> impl Iterator<Item = usize> + use<> {
        0..index.min(self.list.len())
    }
}

/// One pass over the endpoints.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    order: Vec<usize>,
    pos: usize,
}

impl Iterator for Round {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let next = self.order.get(self.pos).copied();
        self.pos = self.pos.saturating_add(1);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_reject_with_the_config_key() {
        let ep = Endpoint::try_new("k", "10.0.0.10:10000").unwrap();
        assert_eq!((ep.host(), ep.port()), ("10.0.0.10", 10000));
        let ep = Endpoint::try_new("k", "[fd00::1]:10000").unwrap();
        assert_eq!(ep.host(), "fd00::1");
        assert_eq!(ep.to_string(), "[fd00::1]:10000");
        for bad in [
            "10.0.0.10",
            ":10000",
            "host:0",
            "host:x",
            "fd00::1:10000",
            "a/b:1",
        ] {
            let err = Endpoint::try_new("modules.edgeHub.websocket.server", bad).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("modules.edgeHub.websocket.server"), "{text}");
            assert!(text.contains(bad), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = Endpoint::try_new("k", &s);
        }

        #[test]
        fn host_and_port_round_trip(host in "[a-z0-9][a-z0-9.-]{0,20}", port in 1u16..) {
            let ep = Endpoint::try_new("k", &format!("{host}:{port}")).unwrap();
            proptest::prop_assert_eq!((ep.host(), ep.port()), (host.as_str(), port));
        }
    }

    #[test]
    fn config_order_is_preference_order_without_duplicates() {
        let mut hub = config::EdgeHub::default();
        hub.websocket.server = "a:1".into();
        hub.failover.servers = vec!["b:1".into(), "a:1".into(), "c:1".into()];
        let eps = Endpoints::from_config(&hub).unwrap();
        let names: Vec<String> = eps.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["a:1", "b:1", "c:1"]);
    }

    #[test]
    fn a_round_prefers_the_first_healthy_endpoint_and_tries_failing_ones_last() {
        let mut eps = Endpoints::of(&["a:1", "b:1", "c:1"]);
        assert_eq!(eps.round().collect::<Vec<_>>(), [0, 1, 2]);
        let now = Instant::now();
        eps.record_failure(0, now, true);
        assert!(eps.is_unreachable(0));
        assert_eq!(eps.round().collect::<Vec<_>>(), [1, 2, 0]);
        eps.record_failure(1, now, false);
        eps.record_failure(0, now, false);
        assert!(!eps.is_unreachable(0));
        assert_eq!(eps.since_failure(0, now), Some(std::time::Duration::ZERO));
        assert_eq!(eps.failures(0), 2);
        assert_eq!(eps.round().collect::<Vec<_>>(), [2, 0, 1]);
        eps.record_success(0);
        assert_eq!(eps.round().collect::<Vec<_>>(), [0, 2, 1]);
        assert!(eps.is_healthy(0));
    }

    #[test]
    fn a_round_can_start_at_a_preferred_endpoint_that_answered() {
        let mut eps = Endpoints::of(&["a:1", "b:1", "c:1"]);
        eps.record_failure(0, Instant::now(), true);
        assert_eq!(eps.round_from(0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(eps.preferred_over(2).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(eps.preferred_over(0).count(), 0);
        assert_eq!(eps.preferred_over(9).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
