//! Container resources as the kubelet gives them to the runtime
//! (`pkg/kubelet/kuberuntime/kuberuntime_container_linux.go`, `pkg/kubelet/qos`): the pod's QoS
//! class from its requests and limits, and per container the CPU shares, the CFS quota and
//! period, the memory limit and the OOM score adjustment.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::env::NodeFacts;
use crate::pod::Pod;
use crate::runtime::LinuxResources;

/// The kubelet's CFS period (`cpuCFSQuotaPeriod`, 100 ms), in microseconds.
const CPU_PERIOD_US: i64 = 100_000;
/// Smallest quota the kernel takes (1 ms).
const MIN_QUOTA_US: i64 = 1_000;
const MIN_SHARES: i64 = 2;
const MAX_SHARES: i64 = 262_144;
/// OOM score adjustments by class.
const GUARANTEED_OOM_ADJ: i64 = -997;
const BEST_EFFORT_OOM_ADJ: i64 = 1000;

/// `resources` of a container: quantities by resource name, as the API writes them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct ResourceRequirements {
    pub(crate) requests: BTreeMap<String, Value>,
    pub(crate) limits: BTreeMap<String, Value>,
}

/// A pod's quality-of-service class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// `GetPodQOS`: best effort without any cpu or memory request or limit; guaranteed when every
/// container limits both and the pod's requests equal its limits; burstable otherwise.
pub(crate) fn qos_class<'a>(
    containers: impl IntoIterator<Item = &'a ResourceRequirements>,
) -> QosClass {
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    for r in containers {
        for name in ["cpu", "memory"] {
            if let Some(q) = milli(r.requests.get(name)).filter(|q| *q > 0) {
                let sum = requests.entry(name).or_default();
                *sum = sum.saturating_add(q);
            }
        }
        let mut limited = 0;
        for name in ["cpu", "memory"] {
            if let Some(q) = milli(r.limits.get(name)).filter(|q| *q > 0) {
                let sum = limits.entry(name).or_default();
                *sum = sum.saturating_add(q);
                limited += 1;
            }
        }
        if limited < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(name, q)| limits.get(name) == Some(q))
    {
        return QosClass::Guaranteed;
    }
    QosClass::Burstable
}

/// What the runtime applies to one container of a pod of class `qos` on a node with
/// `memory_capacity` bytes; `node_critical` for `priorityClassName: system-node-critical`.
pub(crate) fn linux_resources(
    r: &ResourceRequirements,
    qos: QosClass,
    node_critical: bool,
    memory_capacity: u64,
) -> LinuxResources {
    let cpu_request = milli(r.requests.get("cpu")).unwrap_or(0);
    let cpu_limit = milli(r.limits.get("cpu")).unwrap_or(0);
    // A limit without a request: the request defaults to the limit (the API server does this
    // for new pods; the kubelet repeats it).
    let shares_from = if cpu_request == 0 && cpu_limit != 0 {
        cpu_limit
    } else {
        cpu_request
    };
    LinuxResources {
        cpu_shares: shares(shares_from),
        cpu_period: CPU_PERIOD_US,
        cpu_quota: quota(cpu_limit),
        memory_limit_bytes: units(r.limits.get("memory"))
            .map_or(0, |b| i64::try_from(b.max(0)).unwrap_or(i64::MAX)),
        oom_score_adj: oom_score_adj(r, qos, node_critical, memory_capacity),
    }
}

/// The limits of a pod's own cgroup (the kubelet's `ResourceConfigForPod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PodResources {
    /// `cpu.shares` from the pod's CPU request (2 for a best-effort pod).
    pub(crate) cpu_shares: i64,
    /// The CFS quota per [`CPU_PERIOD_US`], when every app container limits its CPU.
    pub(crate) cpu_quota: Option<i64>,
    /// The memory limit in bytes, when every app container limits its memory.
    pub(crate) memory_limit_bytes: Option<i64>,
}

impl PodResources {
    /// The CFS period the quota is per, in microseconds.
    pub(crate) const CPU_PERIOD_US: i64 = CPU_PERIOD_US;
}

/// The pod cgroup's limits. A resource of the pod is the sum over its app containers, or the
/// largest init container's when that is more (init containers run alone); a limit is set only
/// when every app container declares it (always so for a guaranteed pod).
pub(crate) fn pod_resources(pod: &Pod) -> PodResources {
    if pod.qos_class() == QosClass::BestEffort {
        return PodResources {
            cpu_shares: MIN_SHARES,
            cpu_quota: None,
            memory_limit_bytes: None,
        };
    }
    let of = |get: &dyn Fn(&ResourceRequirements) -> Option<i128>| {
        let apps = pod
            .spec
            .containers
            .iter()
            .filter_map(|c| get(&c.resources))
            .fold(0i128, i128::saturating_add);
        let init = pod
            .spec
            .init_containers
            .iter()
            .filter_map(|c| get(&c.resources))
            .max()
            .unwrap_or(0);
        apps.max(init)
    };
    let declared = |name: &str| {
        pod.spec
            .containers
            .iter()
            .all(|c| milli(c.resources.limits.get(name)).is_some_and(|q| q > 0))
    };
    let cpu_limit = of(&|r| milli(r.limits.get("cpu")));
    let memory_limit = of(&|r| units(r.limits.get("memory")));
    PodResources {
        cpu_shares: shares(of(&|r| milli(r.requests.get("cpu")))),
        cpu_quota: declared("cpu").then(|| quota(cpu_limit)),
        memory_limit_bytes: declared("memory")
            .then(|| i64::try_from(memory_limit.max(0)).unwrap_or(i64::MAX)),
    }
}

fn shares(milli_cpu: i128) -> i64 {
    if milli_cpu <= 0 {
        return MIN_SHARES;
    }
    i64::try_from(milli_cpu.saturating_mul(1024) / 1000)
        .unwrap_or(MAX_SHARES)
        .clamp(MIN_SHARES, MAX_SHARES)
}

fn quota(milli_cpu: i128) -> i64 {
    if milli_cpu <= 0 {
        return 0;
    }
    i64::try_from(milli_cpu.saturating_mul(i128::from(CPU_PERIOD_US)) / 1000)
        .unwrap_or(i64::MAX)
        .max(MIN_QUOTA_US)
}

/// `GetContainerOOMScoreAdjust`.
fn oom_score_adj(r: &ResourceRequirements, qos: QosClass, critical: bool, capacity: u64) -> i64 {
    if critical {
        return GUARANTEED_OOM_ADJ;
    }
    match qos {
        QosClass::Guaranteed => GUARANTEED_OOM_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_ADJ,
        QosClass::Burstable => {
            let request = units(r.requests.get("memory")).unwrap_or(0).max(0);
            let capacity = i128::from(capacity.max(1));
            let adj =
                i64::try_from(1000 - request.saturating_mul(1000) / capacity).unwrap_or(i64::MIN);
            if adj < 1000 + GUARANTEED_OOM_ADJ {
                1000 + GUARANTEED_OOM_ADJ
            } else if adj == BEST_EFFORT_OOM_ADJ {
                adj - 1
            } else {
                adj
            }
        }
    }
}

/// A `resourceFieldRef` (env vars and downwardAPI files).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ResourceFieldRef {
    /// Required in volumes; an env var's default is its own container.
    pub(crate) container_name: String,
    pub(crate) resource: String,
    pub(crate) divisor: Option<Value>,
}

/// The downward API's value of `r`: the container's request or limit divided by the divisor
/// (default 1), rounded up; a limit the container does not set is the node's allocatable
/// CPU or memory, as with the kubelet. The error says what is wrong with the reference.
pub(crate) fn resource_field_value(
    pod: &Pod,
    own_container: Option<&str>,
    r: &ResourceFieldRef,
    node: &NodeFacts,
) -> Result<String, String> {
    let name = Some(r.container_name.as_str())
        .filter(|n| !n.is_empty())
        .or(own_container)
        .ok_or_else(|| format!("{:?} names no containerName", r.resource))?;
    let container = pod
        .all_containers()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("{:?}: no container {name:?} in the pod", r.resource))?;
    let res = &container.resources;
    let (value, one) = match r.resource.as_str() {
        "limits.cpu" => (milli(res.limits.get("cpu")).unwrap_or(node.cpu_milli), 1000),
        "requests.cpu" => (milli(res.requests.get("cpu")).unwrap_or(0), 1000),
        "limits.memory" => (
            units(res.limits.get("memory")).unwrap_or(node.memory_bytes),
            1,
        ),
        "requests.memory" => (units(res.requests.get("memory")).unwrap_or(0), 1),
        other => match other.split_once('.') {
            Some(("limits", rest)) => (units(res.limits.get(rest)).unwrap_or(0), 1),
            Some(("requests", rest)) => (units(res.requests.get(rest)).unwrap_or(0), 1),
            _ => {
                return Err(format!(
                    "{other:?} is not limits.<resource> or requests.<resource>"
                ));
            }
        },
    };
    // CPU values and divisors are compared in millicores, the rest in units.
    let divisor = match &r.divisor {
        None => one,
        Some(d) if one == 1000 => milli(Some(d)).unwrap_or(0),
        Some(d) => units(Some(d)).unwrap_or(0),
    };
    if divisor <= 0 {
        return Err(format!(
            "{:?}: divisor must be a positive quantity",
            r.resource
        ));
    }
    Ok(ceil_div(value, divisor).to_string())
}

/// A quantity in thousandths, rounded up (`100m` → 100, `1` → 1000); `None` when absent or
/// not a quantity (the API server validates them; a bad one counts as not set).
fn milli(v: Option<&Value>) -> Option<i128> {
    scaled(v?, 3)
}

/// A quantity in whole units, rounded up (`64Mi` → 67108864).
fn units(v: Option<&Value>) -> Option<i128> {
    scaled(v?, 0)
}

fn scaled(v: &Value, decimals: u32) -> Option<i128> {
    match v {
        Value::String(s) => Quantity::parse(s)?.scaled(decimals),
        Value::Number(n) => Quantity::parse(&n.to_string())?.scaled(decimals),
        _ => None,
    }
}

/// `n / d` rounded up, for a positive `d`.
fn ceil_div(n: i128, d: i128) -> i128 {
    n.div_euclid(d)
        .saturating_add(i128::from(n.rem_euclid(d) != 0))
}

/// A Kubernetes resource quantity: `digits / 10^fraction × base^exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quantity {
    digits: i128,
    fraction: u32,
    base: i128,
    exp: i32,
}

impl Quantity {
    /// `<number><suffix>`: a decimal number with an optional sign and fraction, then a binary
    /// (`Ki`…`Ei`), decimal (`n`, `u`, `m`, ``, `k`, `M`…`E`) or exponent (`e3`, `E-2`) suffix.
    fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(end);
        let (negative, number) = match number.as_bytes().first() {
            Some(b'-') => (true, &number[1..]),
            Some(b'+') => (false, &number[1..]),
            _ => (false, number),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty()
            || !whole
                .bytes()
                .chain(frac.bytes())
                .all(|b| b.is_ascii_digit())
            || frac.len() > 18
        {
            return None;
        }
        let mut digits: i128 = 0;
        for b in whole.bytes().chain(frac.bytes()) {
            digits = digits.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
        }
        if negative {
            digits = -digits;
        }
        let (base, exp) = match suffix {
            "" => (10, 0),
            "n" => (10, -9),
            "u" => (10, -6),
            "m" => (10, -3),
            "k" => (10, 3),
            "M" => (10, 6),
            "G" => (10, 9),
            "T" => (10, 12),
            "P" => (10, 15),
            "E" => (10, 18),
            "Ki" => (1024, 1),
            "Mi" => (1024, 2),
            "Gi" => (1024, 3),
            "Ti" => (1024, 4),
            "Pi" => (1024, 5),
            "Ei" => (1024, 6),
            e => {
                let rest = e.strip_prefix(['e', 'E'])?;
                (10, rest.parse::<i32>().ok().filter(|x| x.abs() <= 30)?)
            }
        };
        Some(Self {
            digits,
            fraction: u32::try_from(frac.len()).ok()?,
            base,
            exp,
        })
    }

    /// The value × 10^decimals, rounded up.
    fn scaled(self, decimals: u32) -> Option<i128> {
        let mut num = self.digits;
        let mut den: i128 = 10i128.checked_pow(self.fraction)?;
        num = num.checked_mul(10i128.checked_pow(decimals)?)?;
        let pow = self.base.checked_pow(self.exp.unsigned_abs())?;
        if self.exp >= 0 {
            num = num.checked_mul(pow)?;
        } else {
            den = den.checked_mul(pow)?;
        }
        // Ceiling division for either sign.
        Some(ceil_div(num, den))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn req(v: Value) -> ResourceRequirements {
        serde_json::from_value(v).unwrap()
    }

    fn pod_of(init: Value, apps: Value) -> Pod {
        Pod::from_json(&json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"initContainers": init, "containers": apps}
        }))
        .unwrap()
    }

    fn c(resources: Value) -> Value {
        json!({"name": "c", "image": "i", "resources": resources})
    }

    #[test]
    fn the_pod_cgroup_gets_the_kubelets_limits() {
        let limited = json!({"requests": {"cpu": "100m", "memory": "32Mi"},
                             "limits": {"cpu": "500m", "memory": "64Mi"}});
        // Burstable, every app container limited: shares from requests, quota and memory
        // summed; an init container without limits does not lift them.
        let p = pod_of(
            json!([c(json!({}))]),
            json!([c(limited.clone()), c(limited.clone())]),
        );
        assert_eq!(
            pod_resources(&p),
            PodResources {
                cpu_shares: 204,
                cpu_quota: Some(100_000),
                memory_limit_bytes: Some(128 << 20),
            }
        );
        // One app container without limits: shares only.
        let p = pod_of(
            json!([]),
            json!([c(limited.clone()), c(json!({"requests": {"cpu": "1"}}))]),
        );
        assert_eq!(
            pod_resources(&p),
            PodResources {
                cpu_shares: 1126,
                cpu_quota: None,
                memory_limit_bytes: None,
            }
        );
        // A larger init container sets the pod's figures.
        let big = json!({"requests": {"cpu": "2", "memory": "1Gi"},
                         "limits": {"cpu": "2", "memory": "1Gi"}});
        let p = pod_of(json!([c(big)]), json!([c(limited)]));
        assert_eq!(
            pod_resources(&p),
            PodResources {
                cpu_shares: 2048,
                cpu_quota: Some(200_000),
                memory_limit_bytes: Some(1 << 30),
            }
        );
        // Best effort: the minimum shares.
        let p = pod_of(json!([]), json!([c(json!({}))]));
        assert_eq!(
            pod_resources(&p),
            PodResources {
                cpu_shares: 2,
                cpu_quota: None,
                memory_limit_bytes: None,
            }
        );
    }

    #[test]
    fn quantities_parse_like_the_api() {
        let m = |s: &str| milli(Some(&json!(s)));
        let u = |s: &str| units(Some(&json!(s)));
        assert_eq!(m("100m"), Some(100));
        assert_eq!(m("0.5"), Some(500));
        assert_eq!(m("2"), Some(2000));
        assert_eq!(m("1.0005"), Some(1001), "rounded up");
        assert_eq!(m("1e3"), Some(1_000_000));
        assert_eq!(u("64Mi"), Some(64 << 20));
        assert_eq!(u("1G"), Some(1_000_000_000));
        assert_eq!(u("1.5Gi"), Some(3 << 29));
        assert_eq!(u("128974848"), Some(128_974_848));
        assert_eq!(u("129e6"), Some(129_000_000));
        assert_eq!(u("1k"), Some(1000));
        assert_eq!(u("500m"), Some(1), "a fraction of a byte rounds up");
        assert_eq!(milli(Some(&json!(2))), Some(2000));
        // The largest quantities saturate instead of overflowing.
        let huge = req(
            json!({"requests": {"cpu": "170141183460469231731687303715884105727m",
                                           "memory": "9Ei"},
                              "limits": {"cpu": "99999999999999999999999999999999999", "memory": "9Ei"}}),
        );
        let l = linux_resources(&huge, qos_class([&huge, &huge]), false, 1);
        assert_eq!((l.cpu_shares, l.oom_score_adj), (MAX_SHARES, 3));
        assert_eq!(l.memory_limit_bytes, i64::MAX);
        for bad in ["", "abc", "1x", "1.2.3", "--1", "1e999", "Mi"] {
            assert_eq!(u(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn qos_classes() {
        let guaranteed = req(json!({"requests": {"cpu": "500m", "memory": "64Mi"},
                                    "limits": {"cpu": "0.5", "memory": "64Mi"}}));
        let burstable = req(json!({"requests": {"memory": "32Mi"}, "limits": {"memory": "64Mi"}}));
        let empty = ResourceRequirements::default();
        assert_eq!(qos_class([&guaranteed]), QosClass::Guaranteed);
        assert_eq!(qos_class([&guaranteed, &guaranteed]), QosClass::Guaranteed);
        assert_eq!(qos_class([&guaranteed, &empty]), QosClass::Burstable);
        assert_eq!(qos_class([&burstable]), QosClass::Burstable);
        assert_eq!(qos_class([&empty, &empty]), QosClass::BestEffort);
        // Limits only (no API-server defaulting here): requests and limits differ in count.
        let limits_only = req(json!({"limits": {"cpu": "1", "memory": "1Gi"}}));
        assert_eq!(qos_class([&limits_only]), QosClass::Burstable);
        // Other resources do not count.
        let gpu = req(json!({"limits": {"nvidia.com/gpu": "1"}}));
        assert_eq!(qos_class([&gpu]), QosClass::BestEffort);
    }

    #[test]
    fn linux_resources_as_the_kubelet_computes_them() {
        const GIB: u64 = 1 << 30;
        let r = req(json!({"requests": {"cpu": "250m", "memory": "256Mi"},
                           "limits": {"cpu": "500m", "memory": "512Mi"}}));
        let l = linux_resources(&r, QosClass::Burstable, false, 4 * GIB);
        assert_eq!(l.cpu_shares, 256);
        assert_eq!(l.cpu_quota, 50_000);
        assert_eq!(l.cpu_period, 100_000);
        assert_eq!(l.memory_limit_bytes, 512 << 20);
        assert_eq!(l.oom_score_adj, 1000 - 1000 * 256 / 4096);

        let none = linux_resources(
            &ResourceRequirements::default(),
            QosClass::BestEffort,
            false,
            GIB,
        );
        assert_eq!(
            (
                none.cpu_shares,
                none.cpu_quota,
                none.memory_limit_bytes,
                none.oom_score_adj
            ),
            (2, 0, 0, 1000)
        );
        // A limit alone sets the shares; a tiny limit still gets the smallest quota.
        let tiny = req(json!({"limits": {"cpu": "5m"}}));
        let l = linux_resources(&tiny, QosClass::Burstable, false, GIB);
        assert_eq!(
            (l.cpu_shares, l.cpu_quota, l.oom_score_adj),
            (5, MIN_QUOTA_US, 999)
        );
        let g = linux_resources(&r, QosClass::Guaranteed, false, GIB);
        assert_eq!(g.oom_score_adj, -997);
        let critical = linux_resources(&r, QosClass::BestEffort, true, GIB);
        assert_eq!(critical.oom_score_adj, -997);
        // A request above the node's memory: the floor of 3.
        let huge = req(json!({"requests": {"memory": "8Gi"}}));
        assert_eq!(
            linux_resources(&huge, QosClass::Burstable, false, GIB).oom_score_adj,
            3
        );
    }

    #[test]
    fn resource_fields_as_the_downward_api_gives_them() {
        let pod = Pod::from_json(&json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [
                {"name": "app", "image": "i", "resources": {
                    "requests": {"cpu": "250m"},
                    "limits": {"cpu": "500m", "memory": "64Mi", "ephemeral-storage": "1Gi"}}},
                {"name": "other", "image": "i"}
            ]}
        }))
        .unwrap();
        let node = NodeFacts {
            ip: String::new(),
            cpu_milli: 4000,
            memory_bytes: 3 << 30,
        };
        let value = |container: &str, resource: &str, divisor: Option<&str>| {
            let r = ResourceFieldRef {
                container_name: container.to_owned(),
                resource: resource.to_owned(),
                divisor: divisor.map(|d| json!(d)),
            };
            resource_field_value(&pod, None, &r, &node)
        };
        assert_eq!(
            value("app", "limits.cpu", None).unwrap(),
            "1",
            "0.5 core rounds up"
        );
        assert_eq!(value("app", "limits.cpu", Some("1m")).unwrap(), "500");
        assert_eq!(value("app", "requests.cpu", Some("1m")).unwrap(), "250");
        assert_eq!(value("app", "limits.memory", None).unwrap(), "67108864");
        assert_eq!(value("app", "limits.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(value("app", "requests.memory", None).unwrap(), "0");
        assert_eq!(
            value("app", "limits.ephemeral-storage", Some("1Gi")).unwrap(),
            "1"
        );
        assert_eq!(
            value("other", "limits.cpu", None).unwrap(),
            "4",
            "the node's"
        );
        assert_eq!(value("other", "limits.memory", Some("1Gi")).unwrap(), "3");
        for (container, resource, divisor, why) in [
            ("app", "cpu", None, "not limits"),
            ("nope", "limits.cpu", None, "no container"),
            ("", "limits.cpu", None, "no containerName"),
            ("app", "limits.cpu", Some("0"), "divisor"),
        ] {
            let err = value(container, resource, divisor).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        // An env var's own container is the default.
        let own = ResourceFieldRef {
            resource: "limits.memory".to_owned(),
            divisor: Some(json!("1Mi")),
            ..ResourceFieldRef::default()
        };
        assert_eq!(
            resource_field_value(&pod, Some("app"), &own, &node).unwrap(),
            "64"
        );
    }
}
