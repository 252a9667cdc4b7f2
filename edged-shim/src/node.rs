//! The Node object edged-shim registers and the status patches it sends afterwards.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::host::{HostFacts, HostSample};
use crate::settings::{EdgedSettings, PressureThresholds};

/// Port KubeEdge's edged reports as the kubelet endpoint.
const KUBELET_PORT: u16 = 10350;

/// Node condition types in the order kubelet reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConditionType {
    MemoryPressure,
    DiskPressure,
    PidPressure,
    Ready,
}

impl ConditionType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ConditionType::MemoryPressure => "MemoryPressure",
            ConditionType::DiskPressure => "DiskPressure",
            ConditionType::PidPressure => "PIDPressure",
            ConditionType::Ready => "Ready",
        }
    }
}

/// The state of one condition: whether it holds, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) kind: ConditionType,
    pub(crate) status: bool,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// Conditions from a host sample and the runtime's state (`Err(reason)` when it is down).
pub(crate) fn conditions(
    sample: &HostSample,
    th: &PressureThresholds,
    runtime: Result<(), &str>,
) -> [Condition; 4] {
    let memory = sample.memory_available_bytes < th.memory_available_bytes;
    let disk = sample.disk.is_some_and(|(available, total)| {
        total > 0
            && u128::from(available) * 100
                < u128::from(total) * u128::from(th.disk_available_percent)
    });
    let pids_free = sample.pid_max.saturating_sub(sample.processes);
    let pid = sample.pid_max > 0
        && u128::from(pids_free) * 100
            < u128::from(sample.pid_max) * u128::from(th.pid_available_percent);
    let pressure = |kind, on: bool, yes: &'static str, no: &'static str, what: &str| Condition {
        kind,
        status: on,
        reason: if on { yes } else { no },
        message: if on {
            format!("kubelet has insufficient {what}")
        } else {
            format!("kubelet has sufficient {what}")
        },
    };
    // KubeEdge's kubelet words a ready edge node this way (`kubectl describe node` shows it).
    let ready = match runtime {
        Ok(()) => Condition {
            kind: ConditionType::Ready,
            status: true,
            reason: "EdgeReady",
            message: "edge is posting ready status".to_owned(),
        },
        Err(why) => Condition {
            kind: ConditionType::Ready,
            status: false,
            reason: "KubeletNotReady",
            message: format!("container runtime is down: {why}"),
        },
    };
    [
        pressure(
            ConditionType::MemoryPressure,
            memory,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            "memory available",
        ),
        pressure(
            ConditionType::DiskPressure,
            disk,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            "disk space available",
        ),
        pressure(
            ConditionType::PidPressure,
            pid,
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            "PID available",
        ),
        ready,
    ]
}

/// Kubernetes quantities for capacity and allocatable.
fn resources(facts: &HostFacts, settings: &EdgedSettings) -> (Value, Value) {
    let mem_ki = facts.memory_bytes / 1024;
    let reserved_ki = settings.thresholds.memory_available_bytes / 1024;
    let capacity = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{mem_ki}Ki"),
        "pods": settings.max_pods.to_string(),
    });
    let allocatable = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{}Ki", mem_ki.saturating_sub(reserved_ki)),
        "pods": settings.max_pods.to_string(),
    });
    (capacity, allocatable)
}

/// The address reported as `InternalIP`.
pub(crate) fn internal_ip(settings: &EdgedSettings, facts: &HostFacts) -> Option<IpAddr> {
    settings.node_ip.or(facts.internal_ip)
}

fn node_info(settings: &EdgedSettings, facts: &HostFacts, runtime_version: &str) -> Value {
    json!({
        "machineID": facts.machine_id,
        "systemUUID": facts.system_uuid,
        "bootID": facts.boot_id,
        "kernelVersion": facts.kernel_version,
        "osImage": facts.os_image,
        "containerRuntimeVersion": runtime_version,
        "kubeletVersion": settings.kubelet_version,
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": facts.arch,
    })
}

/// The Node object for `insert` on `null/node/<node>`.
pub(crate) fn node_object(
    settings: &EdgedSettings,
    facts: &HostFacts,
    runtime_version: &str,
) -> Value {
    let name = settings.node_name.as_str();
    let mut labels = Map::new();
    for (k, v) in &settings.node_labels {
        labels.insert(k.clone(), Value::String(v.clone()));
    }
    for (k, v) in [
        ("beta.kubernetes.io/arch", facts.arch.as_str()),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", facts.arch.as_str()),
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("node-role.kubernetes.io/agent", ""),
        ("node-role.kubernetes.io/edge", ""),
    ] {
        labels.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    labels.sort_keys();
    let mut addresses = Vec::new();
    if let Some(ip) = internal_ip(settings, facts) {
        addresses.push(json!({"type": "InternalIP", "address": ip.to_string()}));
    }
    addresses.push(json!({"type": "Hostname", "address": name}));
    let (capacity, allocatable) = resources(facts, settings);
    json!({
        "metadata": {
            "name": name,
            "creationTimestamp": null,
            "labels": labels,
            "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": node_info(settings, facts, runtime_version),
        },
    })
}

/// A condition together with its timestamps, as the patch carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimedCondition {
    pub(crate) condition: Condition,
    pub(crate) last_transition: String,
}

/// The `nodepatch` string: conditions with `$setElementOrder/conditions`, resources and nodeInfo.
pub(crate) fn status_patch(
    settings: &EdgedSettings,
    facts: &HostFacts,
    runtime_version: &str,
    conditions: &[TimedCondition],
    heartbeat: &str,
) -> String {
    let order: Vec<Value> = conditions
        .iter()
        .map(|c| json!({"type": c.condition.kind.as_str()}))
        .collect();
    let list: Vec<Value> = conditions
        .iter()
        .map(|c| {
            json!({
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": c.last_transition,
                "message": c.condition.message,
                "reason": c.condition.reason,
                "status": if c.condition.status { "True" } else { "False" },
                "type": c.condition.kind.as_str(),
            })
        })
        .collect();
    let (capacity, allocatable) = resources(facts, settings);
    json!({
        "status": {
            "$setElementOrder/conditions": order,
            "allocatable": allocatable,
            "capacity": capacity,
            "conditions": list,
            "nodeInfo": {"containerRuntimeVersion": runtime_version},
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests;
