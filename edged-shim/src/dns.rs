//! A pod's resolver configuration, formed as the kubelet forms it (`pkg/kubelet/network/dns`):
//! the node's `resolvConf` as the base, the pod's `dnsPolicy` picking cluster, host or no DNS,
//! the pod's `dnsConfig` merged on top, then the resolver's limits. The runtime writes the
//! result as the pod's `/etc/resolv.conf` (CRI `DNSConfig`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::runtime::DnsConfig;

/// At most this many nameservers (glibc's `MAXNS`; Kubernetes validation's limit).
const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (Kubernetes' expanded DNS config, GA since 1.28).
const MAX_SEARCHES: usize = 32;
/// At most this many characters on the search line.
const MAX_SEARCH_CHARS: usize = 2048;
/// A longer search domain makes some resolvers abort; the kubelet drops it.
const MAX_SEARCH_LEN: usize = 253;
/// The kubelet reads at most this much of `resolvConf`.
const MAX_RESOLV_CONF: u64 = 10 << 20;
/// Options of a cluster-DNS pod.
const CLUSTER_OPTIONS: &[&str] = &["ndots:5"];

/// The node's DNS settings (`tailoredKubeletConfig.clusterDNS`, `clusterDomain`, `resolvConf`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// Cluster DNS servers; empty: pods asking for cluster DNS get the node's.
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain for the search list (`cluster.local`); empty: none added.
    pub cluster_domain: String,
    /// The node's resolver file (`/etc/resolv.conf`); `None`: no host DNS (localhost).
    pub resolv_conf: Option<PathBuf>,
}

/// `spec.dnsConfig` of a pod.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct PodDnsConfig {
    pub(crate) nameservers: Vec<String>,
    pub(crate) searches: Vec<String>,
    pub(crate) options: Vec<PodDnsOption>,
}

/// One `spec.dnsConfig.options` entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct PodDnsOption {
    pub(crate) name: String,
    pub(crate) value: Option<String>,
}

/// What a pod's DNS is based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    /// The cluster's DNS servers and search domains.
    Cluster,
    /// The node's resolver configuration.
    Host,
    /// Nothing: only the pod's `dnsConfig`.
    None,
}

/// The kubelet's choice from `dnsPolicy` (default `ClusterFirst`); an unknown policy (the
/// API server rejects them) is treated as `ClusterFirst`, as the kubelet does.
fn base(policy: Option<&str>, host_network: bool) -> Base {
    match policy {
        Some("None") => Base::None,
        Some("ClusterFirstWithHostNet") => Base::Cluster,
        Some("Default") => Base::Host,
        Some("ClusterFirst") | None if host_network => Base::Host,
        _ => Base::Cluster,
    }
}

/// A pod's resolver configuration and what had to be changed to form it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Formed {
    pub(crate) config: DnsConfig,
    /// One line per adjustment an operator should know of (a fallback, a limit applied).
    pub(crate) warnings: Vec<String>,
}

/// Why a pod's DNS could not be formed.
#[derive(Debug, thiserror::Error)]
#[error("reading the node's resolver file {path} (tailoredKubeletConfig.resolvConf): {source}")]
pub(crate) struct DnsError {
    path: String,
    source: std::io::Error,
}

/// Reads the node's `resolvConf` and forms the pod's DNS.
pub(crate) async fn pod_dns(
    settings: &DnsSettings,
    node_ip: Option<IpAddr>,
    namespace: &str,
    policy: Option<&str>,
    host_network: bool,
    pod: Option<&PodDnsConfig>,
) -> Result<Formed, DnsError> {
    let host = match &settings.resolv_conf {
        Some(path) => Some(read_resolv_conf(path).await?),
        None => None,
    };
    Ok(form(
        settings,
        host,
        node_ip,
        namespace,
        base(policy, host_network),
        pod,
    ))
}

async fn read_resolv_conf(path: &Path) -> Result<DnsConfig, DnsError> {
    use tokio::io::AsyncReadExt;
    let err = |source| DnsError {
        path: path.display().to_string(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(err)?;
    let mut text = String::new();
    file.take(MAX_RESOLV_CONF)
        .read_to_string(&mut text)
        .await
        .map_err(err)?;
    Ok(parse_resolv_conf(&text))
}

/// `nameserver` lines accumulate; the last `search` and the last `options` line win; a line
/// starting with `#` is a comment.
fn parse_resolv_conf(text: &str) -> DnsConfig {
    let mut out = DnsConfig::default();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => out.servers.extend(fields.next().map(str::to_owned)),
            Some("search") => {
                out.searches = fields.map(|s| s.trim_end_matches('.').to_owned()).collect();
            }
            Some("options") => out.options = fields.map(str::to_owned).collect(),
            _ => {}
        }
    }
    out
}

fn form(
    settings: &DnsSettings,
    host: Option<DnsConfig>,
    node_ip: Option<IpAddr>,
    namespace: &str,
    base: Base,
    pod: Option<&PodDnsConfig>,
) -> Formed {
    let mut warnings = Vec::new();
    let host_based = || match host.clone() {
        Some(host) => host,
        None => {
            // No resolver file: the resolver library's "no nameserver" default, localhost.
            let local = match node_ip {
                Some(IpAddr::V6(_)) => "::1",
                _ => "127.0.0.1",
            };
            DnsConfig {
                servers: vec![local.to_owned()],
                searches: vec![".".to_owned()],
                options: Vec::new(),
            }
        }
    };
    let mut config = match base {
        Base::None => DnsConfig::default(),
        Base::Cluster if !settings.cluster_dns.is_empty() => {
            let host_searches = host.clone().map(|h| h.searches).unwrap_or_default();
            DnsConfig {
                servers: settings.cluster_dns.iter().map(IpAddr::to_string).collect(),
                searches: cluster_searches(&settings.cluster_domain, namespace, host_searches),
                options: CLUSTER_OPTIONS.iter().map(|&o| o.to_owned()).collect(),
            }
        }
        Base::Cluster => {
            warnings.push(
                "no clusterDNS is configured (tailoredKubeletConfig.clusterDNS): a ClusterFirst \
                 pod gets the node's DNS, as with dnsPolicy Default"
                    .to_owned(),
            );
            host_based()
        }
        Base::Host => host_based(),
    };
    if let Some(pod) = pod {
        config.servers.extend(pod.nameservers.iter().cloned());
        config.servers = unique(std::mem::take(&mut config.servers));
        config.searches.extend(pod.searches.iter().cloned());
        config.searches = unique(std::mem::take(&mut config.searches));
        merge_options(&mut config.options, &pod.options);
    }
    fit_limits(&mut config, &mut warnings);
    Formed { config, warnings }
}

/// `<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`, then the node's search domains.
fn cluster_searches(domain: &str, namespace: &str, host: Vec<String>) -> Vec<String> {
    if domain.is_empty() {
        return host;
    }
    let mut searches = vec![
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_owned(),
    ];
    searches.extend(host);
    unique(searches)
}

fn unique(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

/// The pod's options replace the base's of the same name; new ones are appended.
fn merge_options(options: &mut Vec<String>, pod: &[PodDnsOption]) {
    for o in pod {
        let formatted = match &o.value {
            Some(v) if !v.is_empty() => format!("{}:{v}", o.name),
            _ => o.name.clone(),
        };
        let name_of = |s: &str| s.split(':').next().unwrap_or_default().to_owned();
        match options.iter_mut().find(|e| name_of(e) == o.name) {
            Some(existing) => *existing = formatted,
            None => options.push(formatted),
        }
    }
}

fn fit_limits(config: &mut DnsConfig, warnings: &mut Vec<String>) {
    if config.servers.len() > MAX_NAMESERVERS {
        config.servers.truncate(MAX_NAMESERVERS);
        warnings.push(format!(
            "more than {MAX_NAMESERVERS} nameservers; applied: {}",
            config.servers.join(" ")
        ));
    }
    let before = config.searches.len();
    config.searches.truncate(MAX_SEARCHES);
    config.searches.retain(|s| s.len() <= MAX_SEARCH_LEN);
    while config.searches.join(" ").len() > MAX_SEARCH_CHARS {
        config.searches.pop();
    }
    if config.searches.len() != before {
        warnings.push(format!(
            "search line limits exceeded ({MAX_SEARCHES} domains, {MAX_SEARCH_LEN} characters \
             each, {MAX_SEARCH_CHARS} in all); applied: {}",
            config.searches.join(" ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> DnsConfig {
        parse_resolv_conf(
            "# by dhcp\nnameserver 192.168.1.1\nsearch old.example\nnameserver 192.168.1.2\n\
             search lan. corp.example\noptions rotate\noptions timeout:2 attempts:3\n",
        )
    }

    fn settings(cluster_dns: &[&str]) -> DnsSettings {
        DnsSettings {
            cluster_dns: cluster_dns.iter().filter_map(|s| s.parse().ok()).collect(),
            cluster_domain: "cluster.local".to_owned(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|&s| s.to_owned()).collect()
    }

    #[test]
    fn resolv_conf_as_the_kubelet_reads_it() {
        let h = host();
        assert_eq!(h.servers, strings(&["192.168.1.1", "192.168.1.2"]));
        assert_eq!(h.searches, strings(&["lan", "corp.example"]));
        assert_eq!(h.options, strings(&["timeout:2", "attempts:3"]));
        assert_eq!(parse_resolv_conf("nameserver\n"), DnsConfig::default());
    }

    #[test]
    fn policy_picks_the_base() {
        assert_eq!(base(None, false), Base::Cluster);
        assert_eq!(base(Some("ClusterFirst"), false), Base::Cluster);
        assert_eq!(base(Some("ClusterFirst"), true), Base::Host);
        assert_eq!(base(None, true), Base::Host);
        assert_eq!(base(Some("ClusterFirstWithHostNet"), true), Base::Cluster);
        assert_eq!(base(Some("Default"), false), Base::Host);
        assert_eq!(base(Some("None"), false), Base::None);
        assert_eq!(base(Some("Bogus"), true), Base::Cluster);
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_domain() {
        let f = form(
            &settings(&["10.96.0.10"]),
            Some(host()),
            None,
            "shop",
            Base::Cluster,
            None,
        );
        assert_eq!(f.config.servers, strings(&["10.96.0.10"]));
        assert_eq!(
            f.config.searches,
            strings(&[
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "lan",
                "corp.example"
            ])
        );
        assert_eq!(f.config.options, strings(&["ndots:5"]));
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);

        let mut no_domain = settings(&["10.96.0.10"]);
        no_domain.cluster_domain.clear();
        let f = form(&no_domain, Some(host()), None, "shop", Base::Cluster, None);
        assert_eq!(f.config.searches, strings(&["lan", "corp.example"]));
    }

    #[test]
    fn cluster_first_without_cluster_dns_falls_back_to_the_node_with_a_warning() {
        let f = form(
            &settings(&[]),
            Some(host()),
            None,
            "shop",
            Base::Cluster,
            None,
        );
        assert_eq!(f.config, host());
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert!(f.warnings[0].contains("clusterDNS"), "{:?}", f.warnings);
    }

    #[test]
    fn no_resolver_file_means_localhost() {
        let f = form(&settings(&[]), None, None, "ns", Base::Host, None);
        assert_eq!(f.config.servers, strings(&["127.0.0.1"]));
        assert_eq!(f.config.searches, strings(&["."]));
        let v6 = "fd00::5".parse().ok();
        let f = form(&settings(&[]), None, v6, "ns", Base::Host, None);
        assert_eq!(f.config.servers, strings(&["::1"]));
    }

    #[test]
    fn pod_dns_config_is_merged_and_none_starts_empty() {
        let pod = PodDnsConfig {
            nameservers: strings(&["192.168.1.2", "1.1.1.1"]),
            searches: strings(&["corp.example", "extra.example"]),
            options: vec![
                PodDnsOption {
                    name: "timeout".to_owned(),
                    value: Some("5".to_owned()),
                },
                PodDnsOption {
                    name: "edns0".to_owned(),
                    value: None,
                },
            ],
        };
        let f = form(
            &settings(&[]),
            Some(host()),
            None,
            "ns",
            Base::Host,
            Some(&pod),
        );
        assert_eq!(
            f.config.servers,
            strings(&["192.168.1.1", "192.168.1.2", "1.1.1.1"])
        );
        assert_eq!(
            f.config.searches,
            strings(&["lan", "corp.example", "extra.example"])
        );
        assert_eq!(
            f.config.options,
            strings(&["timeout:5", "attempts:3", "edns0"])
        );

        let f = form(
            &settings(&[]),
            Some(host()),
            None,
            "ns",
            Base::None,
            Some(&pod),
        );
        assert_eq!(f.config.servers, strings(&["192.168.1.2", "1.1.1.1"]));
        assert_eq!(
            f.config.searches,
            strings(&["corp.example", "extra.example"])
        );
        assert_eq!(f.config.options, strings(&["timeout:5", "edns0"]));
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    }

    #[test]
    fn limits_are_applied_with_a_warning() {
        let pod = PodDnsConfig {
            nameservers: strings(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]),
            searches: (0..40)
                .map(|i| format!("d{i}.example"))
                .chain([format!("{}.example", "x".repeat(250))])
                .collect(),
            options: Vec::new(),
        };
        let f = form(&settings(&[]), None, None, "ns", Base::None, Some(&pod));
        assert_eq!(
            f.config.servers,
            strings(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        );
        assert_eq!(f.config.searches.len(), MAX_SEARCHES);
        assert_eq!(f.config.searches[0], "d0.example");
        assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);

        let long: Vec<String> = (0..30)
            .map(|i| format!("{i:02}{}", "y".repeat(100)))
            .collect();
        let pod = PodDnsConfig {
            searches: long,
            ..PodDnsConfig::default()
        };
        let f = form(&settings(&[]), None, None, "ns", Base::None, Some(&pod));
        assert!(f.config.searches.join(" ").len() <= MAX_SEARCH_CHARS);
        assert_eq!(f.config.searches.len(), 19, "{:?}", f.config.searches);
    }

    #[tokio::test]
    async fn a_missing_resolver_file_is_an_error_naming_it() {
        let mut s = settings(&[]);
        s.resolv_conf = Some(PathBuf::from("/nonexistent/resolv.conf"));
        let err = pod_dns(&s, None, "ns", None, false, None)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/resolv.conf"), "{err}");
        assert!(err.contains("resolvConf"), "{err}");
    }
}
