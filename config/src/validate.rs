//! `EdgeCoreConfig::validate`: every unusable value at once, each with its key path, the value
//! and what it should be. Like KubeEdge, a disabled module's section is not checked.

use std::net::{IpAddr, Ipv6Addr};

use crate::edgehub::{EdgeHub, Failover};
use crate::error::{ValidationError, ValidationErrors};
use crate::types::{API_VERSION, EdgeCoreConfig, KIND};

/// CloudHub drops a node after 30 s without a keepalive, so the heartbeat must stay below it.
const MAX_HEARTBEAT_SECS: u32 = 29;
/// Shortest ping interval and connect timeout we accept, in milliseconds.
const MIN_LINK_MS: u64 = 100;
/// Longest DNS-1123 subdomain.
const MAX_SUBDOMAIN_LEN: usize = 253;

/// Collects problems in document order.
#[derive(Default)]
struct Problems(Vec<ValidationError>);

impl Problems {
    fn push(&mut self, key_path: impl Into<String>, value: impl Into<String>, expected: &str) {
        self.0.push(ValidationError {
            key_path: key_path.into(),
            value: value.into(),
            expected: expected.to_owned(),
        });
    }
}

/// A string value as YAML would show it.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

impl EdgeCoreConfig {
    /// Checks every value the runtime relies on and reports all problems together.
    ///
    /// The files KubeEdge's own `edgecore --defaultconfig` and `--minconfig` print pass.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        if self.api_version != API_VERSION {
            p.push("apiVersion", quoted(&self.api_version), API_VERSION);
        }
        if self.kind != KIND {
            p.push("kind", quoted(&self.kind), KIND);
        }
        if self.database.data_source.as_os_str().is_empty() {
            p.push(
                "database.dataSource",
                "\"\"",
                "the path of the SQLite file, e.g. /var/lib/kubeedge/edgecore.db",
            );
        }
        let m = &self.modules;
        if m.edge_hub.enable {
            edge_hub(&m.edge_hub, &mut p);
        }
        if m.meta_manager.enable && m.meta_manager.remote_query_timeout < 1 {
            p.push(
                "modules.metaManager.remoteQueryTimeout",
                m.meta_manager.remote_query_timeout.to_string(),
                "at least 1 (seconds)",
            );
        }
        if m.edged.enable {
            edged(self, &mut p);
        }
        if m.event_bus.enable && m.event_bus.mqtt_mode > 2 {
            p.push(
                "modules.eventBus.mqttMode",
                m.event_bus.mqtt_mode.to_string(),
                "0 (internal broker), 1 (both) or 2 (external broker)",
            );
        }
        if m.health.enable && m.health.socket_addr().is_none() {
            p.push(
                "modules.health.address",
                quoted(&m.health.address),
                "ip:port to serve health and metrics on, e.g. 127.0.0.1:10370",
            );
        }
        match ValidationErrors::from_vec(p.0) {
            Some(errors) => Err(errors),
            None => Ok(()),
        }
    }
}

fn edge_hub(h: &EdgeHub, p: &mut Problems) {
    match (h.websocket.enable, h.quic.enable) {
        (true, false) => {}
        (true, true) => p.push(
            "modules.edgeHub.quic.enable",
            "true",
            "false: websocket and quic cannot both be enabled, and QUIC is not supported (use websocket)",
        ),
        (false, true) => p.push(
            "modules.edgeHub.quic.enable",
            "true",
            "false: QUIC is not supported, set quic.enable to false and websocket.enable to true",
        ),
        (false, false) => p.push(
            "modules.edgeHub.websocket.enable",
            "false",
            "true: exactly one transport must be enabled, and websocket is the supported one",
        ),
    }
    if !(1..=MAX_HEARTBEAT_SECS).contains(&h.heartbeat) {
        p.push(
            "modules.edgeHub.heartbeat",
            h.heartbeat.to_string(),
            "an integer from 1 to 29 (seconds; CloudHub drops a node after 30 s without a keepalive)",
        );
    }
    if h.message_qps < 0 {
        p.push(
            "modules.edgeHub.messageQPS",
            h.message_qps.to_string(),
            "a number >= 0",
        );
    }
    if h.message_burst < 0 {
        p.push(
            "modules.edgeHub.messageBurst",
            h.message_burst.to_string(),
            "a number >= 0",
        );
    }
    if h.websocket.enable && !is_host_port(&h.websocket.server) {
        p.push(
            "modules.edgeHub.websocket.server",
            quoted(&h.websocket.server),
            "host:port of CloudHub, e.g. 192.0.2.2:10000 (no scheme, no path)",
        );
    }
    if !is_https_url(&h.http_server) {
        p.push(
            "modules.edgeHub.httpServer",
            quoted(&h.http_server),
            "an https URL of CloudHub's certificate service, e.g. https://192.0.2.2:10002",
        );
    }
    if !h.tls_server_name.is_empty()
        && h.tls_server_name.parse::<IpAddr>().is_err()
        && !is_dns_name(&h.tls_server_name)
    {
        p.push(
            "modules.edgeHub.tlsServerName",
            quoted(&h.tls_server_name),
            "empty (verify the dialed host) or a DNS name or IP address in CloudCore's certificate",
        );
    }
    failover(&h.failover, p);
}

fn failover(f: &Failover, p: &mut Problems) {
    for (i, server) in f.servers.iter().enumerate() {
        if !is_host_port(server) {
            p.push(
                format!("modules.edgeHub.failover.servers[{i}]"),
                quoted(server),
                "host:port of a CloudHub, e.g. 192.0.2.3:10000",
            );
        }
    }
    if f.ping_interval_ms < MIN_LINK_MS {
        p.push(
            "modules.edgeHub.failover.pingIntervalMs",
            f.ping_interval_ms.to_string(),
            "at least 100 (milliseconds)",
        );
    }
    if f.ping_timeout_ms <= f.ping_interval_ms {
        p.push(
            "modules.edgeHub.failover.pingTimeoutMs",
            f.ping_timeout_ms.to_string(),
            &format!(
                "more than pingIntervalMs ({}), or every session times out",
                f.ping_interval_ms
            ),
        );
    }
    if f.connect_timeout_ms < MIN_LINK_MS {
        p.push(
            "modules.edgeHub.failover.connectTimeoutMs",
            f.connect_timeout_ms.to_string(),
            "at least 100 (milliseconds)",
        );
    }
    if f.backoff_initial_ms < 1 {
        p.push(
            "modules.edgeHub.failover.backoffInitialMs",
            "0",
            "at least 1 (milliseconds)",
        );
    }
    if f.backoff_initial_ms > f.backoff_max_ms {
        p.push(
            "modules.edgeHub.failover.backoffInitialMs",
            f.backoff_initial_ms.to_string(),
            &format!("at most backoffMaxMs ({})", f.backoff_max_ms),
        );
    }
    if f.probe_preferred_ms < MIN_LINK_MS {
        p.push(
            "modules.edgeHub.failover.probePreferredMs",
            f.probe_preferred_ms.to_string(),
            "at least 100 (milliseconds)",
        );
    }
}

fn edged(c: &EdgeCoreConfig, p: &mut Problems) {
    let e = &c.modules.edged;
    if !is_dns1123_subdomain(&e.hostname_override) {
        p.push(
            "modules.edged.hostnameOverride",
            quoted(&e.hostname_override),
            "the node name: a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit, at most 253 characters)",
        );
    }
    let k = &e.tailored_kubelet_config;
    if !is_cri_endpoint(&k.container_runtime_endpoint) {
        p.push(
            "modules.edged.tailoredKubeletConfig.containerRuntimeEndpoint",
            quoted(&k.container_runtime_endpoint),
            "a CRI endpoint on a unix socket such as unix:///run/containerd/containerd.sock \
             (tcp:// is not supported)",
        );
    }
    if !k.image_service_endpoint.is_empty() && !is_cri_endpoint(&k.image_service_endpoint) {
        p.push(
            "modules.edged.tailoredKubeletConfig.imageServiceEndpoint",
            quoted(&k.image_service_endpoint),
            "empty (use containerRuntimeEndpoint) or a CRI endpoint on a unix socket such as \
             unix:///run/containerd/containerd.sock (tcp:// is not supported)",
        );
    }
    if k.node_lease_duration_seconds <= 0 {
        p.push(
            "modules.edged.tailoredKubeletConfig.nodeLeaseDurationSeconds",
            k.node_lease_duration_seconds.to_string(),
            "a positive number of seconds (KubeEdge's default is 40)",
        );
    }
    for (i, server) in k.cluster_dns.iter().enumerate() {
        if server.parse::<IpAddr>().is_err() {
            p.push(
                format!("modules.edged.tailoredKubeletConfig.clusterDNS[{i}]"),
                quoted(server),
                "the IP address of a cluster DNS server, such as 10.96.0.10",
            );
        }
    }
    if k.cgroup_driver != "cgroupfs" && k.cgroup_driver != "systemd" {
        p.push(
            "modules.edged.tailoredKubeletConfig.cgroupDriver",
            quoted(&k.cgroup_driver),
            "cgroupfs or systemd",
        );
    }
    let root = &k.cgroup_root;
    let systemd = k.cgroup_driver == "systemd";
    let root_ok = root.is_empty()
        || root.starts_with('/')
            && !root.split('/').any(|p| p == ".." || p == ".")
            && (!systemd
                || root
                    .rsplit('/')
                    .find(|p| !p.is_empty())
                    .is_none_or(|last| last.ends_with(".slice")));
    if !root_ok {
        p.push(
            "modules.edged.tailoredKubeletConfig.cgroupRoot",
            quoted(root),
            if systemd {
                "an absolute cgroup path ending in a slice, such as /edge.slice (or / for the top)"
            } else {
                "an absolute cgroup path without . or .., such as /edge (or / for the top)"
            },
        );
    }
}

/// `host:port` with a non-zero port; the host is an IPv4 address, a bracketed IPv6 address or a
/// DNS name.
pub(crate) fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    is_port(port) && is_host(host)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok_and(|p| p > 0)
}

fn is_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(host)
}

/// `https://host[:port][/path]`, without user info.
fn is_https_url(s: &str) -> bool {
    let Some(scheme_end) = s.find("://") else {
        return false;
    };
    let (scheme, rest) = s.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let rest = rest.get(3..).unwrap_or("");
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    is_host(authority) || is_host_port(authority)
}

/// A DNS name in the RFC 1123 sense: dot-separated labels of letters, digits and '-', each 1–63
/// characters, not starting or ending with '-'; at most 253 characters; not all-numeric.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= MAX_SUBDOMAIN_LEN
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Kubernetes' DNS-1123 subdomain, which node names must be.
fn is_dns1123_subdomain(s: &str) -> bool {
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            }
            _ => false,
        }
    };
    !s.is_empty() && s.len() <= MAX_SUBDOMAIN_LEN && s.split('.').all(label_ok)
}

/// A CRI endpoint edged can dial: `unix://` and an absolute socket path (the kubelet's
/// `tcp://` is refused: a CRI socket on the network would give anyone there the node).
fn is_cri_endpoint(s: &str) -> bool {
    s.strip_prefix("unix://")
        .is_some_and(|path| path.len() > 1 && path.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults::default_config;

    #[test]
    fn host_port_forms() {
        for ok in [
            "192.0.2.2:10000",
            "cloudcore.example.com:10000",
            "[2001:db8::1]:10000",
            "localhost:1",
            "vip:65535",
        ] {
            assert!(is_host_port(ok), "{ok} should be accepted");
        }
        for bad in [
            "",
            "192.0.2.2",
            "192.0.2.2:0",
            "192.0.2.2:65536",
            "wss://192.0.2.2:10000",
            "192.0.2.2:10000/e632",
            ":10000",
            "2001:db8::1:10000",
            "host:+1",
            "-bad-:10",
            "999.0.0.1:10",
        ] {
            assert!(!is_host_port(bad), "{bad} should be rejected");
        }
    }

    #[test]
    fn https_url_forms() {
        for ok in [
            "https://192.0.2.2:10002",
            "HTTPS://cloud.example.com:10002/",
            "https://[2001:db8::1]:10002",
            "https://cloud.example.com",
        ] {
            assert!(is_https_url(ok), "{ok} should be accepted");
        }
        for bad in [
            "http://192.0.2.2:10002",
            "192.0.2.2:10002",
            "https://",
            "https://user@host:1",
            "https://host:0",
        ] {
            assert!(!is_https_url(bad), "{bad} should be rejected");
        }
    }

    #[test]
    fn node_names_are_dns1123_subdomains() {
        for ok in ["edge-node-1", "a", "edge.example.com", "0node"] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        let too_long = "a".repeat(254);
        for bad in [
            "",
            "Edge",
            "edge_node",
            "-edge",
            "edge-",
            "a..b",
            ".a",
            too_long.as_str(),
        ] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn cri_endpoints() {
        assert!(is_cri_endpoint("unix:///run/containerd/containerd.sock"));
        // edged only dials unix sockets: a tcp:// endpoint is a configuration error (exit 64),
        // not a failure after start-up.
        assert!(!is_cri_endpoint("tcp://127.0.0.1:1234"));
        assert!(!is_cri_endpoint("/run/containerd/containerd.sock"));
        assert!(!is_cri_endpoint("unix://"));
        assert!(!is_cri_endpoint("unix://relative.sock"));
        assert!(!is_cri_endpoint(""));
    }

    #[test]
    fn defaults_validate() {
        assert_eq!(default_config("edge-node-1").validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut c = default_config("edge-node-1");
        c.api_version = "v1".to_owned();
        c.modules.edge_hub.heartbeat = 30;
        c.modules.edge_hub.message_qps = -1;
        c.modules.edge_hub.websocket.server = "wss://cloud:10000".to_owned();
        c.modules.edge_hub.http_server = "http://cloud:10002".to_owned();
        c.modules.edge_hub.failover.servers = vec!["ok:1".to_owned(), "bad".to_owned()];
        c.modules.edge_hub.failover.ping_interval_ms = 50;
        c.modules.edge_hub.failover.ping_timeout_ms = 50;
        c.modules.edge_hub.failover.backoff_initial_ms = 5_000;
        c.modules.edge_hub.failover.connect_timeout_ms = 10;
        c.modules.edged.hostname_override = "Edge_1".to_owned();
        c.modules.health.address = "localhost:10370".to_owned();
        c.modules.meta_manager.remote_query_timeout = 0;
        c.database.data_source = "".into();
        let errors = c.validate().unwrap_err();
        let paths: Vec<&str> = errors
            .errors()
            .iter()
            .map(|e| e.key_path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "apiVersion",
                "database.dataSource",
                "modules.edgeHub.heartbeat",
                "modules.edgeHub.messageQPS",
                "modules.edgeHub.websocket.server",
                "modules.edgeHub.httpServer",
                "modules.edgeHub.failover.servers[1]",
                "modules.edgeHub.failover.pingIntervalMs",
                "modules.edgeHub.failover.pingTimeoutMs",
                "modules.edgeHub.failover.connectTimeoutMs",
                "modules.edgeHub.failover.backoffInitialMs",
                "modules.metaManager.remoteQueryTimeout",
                "modules.edged.hostnameOverride",
                "modules.health.address",
            ]
        );
        let heartbeat = errors.at("modules.edgeHub.heartbeat").unwrap();
        assert_eq!(heartbeat.value, "30");
        assert!(heartbeat.expected.contains("from 1 to 29"));
        assert_eq!(
            errors.at("modules.edged.hostnameOverride").unwrap().value,
            "\"Edge_1\""
        );
        let text = errors.to_string();
        assert!(
            text.starts_with("invalid configuration, 14 problems:"),
            "{text}"
        );
        assert!(text.contains(
            "modules.edgeHub.failover.servers[1]: invalid value \"bad\": expected host:port"
        ));
    }

    #[test]
    fn transport_choice() {
        let mut c = default_config("n");
        c.modules.edge_hub.quic.enable = true;
        c.modules.edge_hub.websocket.enable = false;
        let e = c.validate().unwrap_err();
        let quic = e.at("modules.edgeHub.quic.enable").unwrap();
        assert!(quic.expected.contains("QUIC is not supported"), "{quic}");

        c.modules.edge_hub.websocket.enable = true;
        let e = c.validate().unwrap_err();
        assert!(
            e.at("modules.edgeHub.quic.enable")
                .unwrap()
                .expected
                .contains("both")
        );

        c.modules.edge_hub.quic.enable = false;
        c.modules.edge_hub.websocket.enable = false;
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.at("modules.edgeHub.websocket.enable").unwrap().value,
            "false"
        );
    }

    #[test]
    fn heartbeat_bounds() {
        for (hb, ok) in [(0, false), (1, true), (15, true), (29, true), (30, false)] {
            let mut c = default_config("n");
            c.modules.edge_hub.heartbeat = hb;
            assert_eq!(c.validate().is_ok(), ok, "heartbeat {hb}");
        }
    }

    #[test]
    fn disabled_modules_are_not_checked() {
        let mut c = default_config("n");
        c.modules.edge_hub.enable = false;
        c.modules.edge_hub.heartbeat = 0;
        c.modules.health.enable = false;
        c.modules.health.address = "nonsense".to_owned();
        c.modules.edged.enable = false;
        c.modules.edged.hostname_override = String::new();
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn other_checks() {
        let mut c = default_config("n");
        c.kind = "Edge".to_owned();
        c.modules.edge_hub.message_burst = -5;
        c.modules.edge_hub.tls_server_name = "not a name".to_owned();
        c.modules.edge_hub.failover.backoff_initial_ms = 0;
        c.modules.edge_hub.failover.probe_preferred_ms = 0;
        c.modules
            .edged
            .tailored_kubelet_config
            .container_runtime_endpoint = "/run/containerd/containerd.sock".to_owned();
        c.modules
            .edged
            .tailored_kubelet_config
            .image_service_endpoint = "x".to_owned();
        c.modules.edged.tailored_kubelet_config.cgroup_driver = "cgroup".to_owned();
        c.modules.edged.tailored_kubelet_config.cgroup_root = "edge/../x".to_owned();
        c.modules.edged.tailored_kubelet_config.cluster_dns =
            vec!["10.96.0.10".to_owned(), "kube-dns".to_owned()];
        c.modules
            .edged
            .tailored_kubelet_config
            .node_lease_duration_seconds = 0;
        c.modules.event_bus.mqtt_mode = 3;
        let e = c.validate().unwrap_err();
        for path in [
            "kind",
            "modules.edgeHub.messageBurst",
            "modules.edgeHub.tlsServerName",
            "modules.edgeHub.failover.backoffInitialMs",
            "modules.edgeHub.failover.probePreferredMs",
            "modules.edged.tailoredKubeletConfig.containerRuntimeEndpoint",
            "modules.edged.tailoredKubeletConfig.imageServiceEndpoint",
            "modules.edged.tailoredKubeletConfig.cgroupDriver",
            "modules.edged.tailoredKubeletConfig.cgroupRoot",
            "modules.edged.tailoredKubeletConfig.clusterDNS[1]",
            "modules.edged.tailoredKubeletConfig.nodeLeaseDurationSeconds",
            "modules.eventBus.mqttMode",
        ] {
            assert!(e.at(path).is_some(), "{path} not reported in {e}");
        }
        assert_eq!(e.errors().len(), 12, "{e}");

        let mut c = default_config("n");
        c.modules.edge_hub.tls_server_name = "cloudcore.example.com".to_owned();
        assert_eq!(c.validate(), Ok(()));
        c.modules.edge_hub.tls_server_name = "192.0.2.9".to_owned();
        assert_eq!(c.validate(), Ok(()));
    }
}
