use super::*;
use std::net::Ipv4Addr;

fn facts() -> HostFacts {
    HostFacts {
        cpus: 4,
        memory_bytes: 8_049_484 * 1024,
        arch: "amd64".to_owned(),
        kernel_version: "6.1.0".to_owned(),
        os_image: "Debian GNU/Linux 12 (bookworm)".to_owned(),
        machine_id: String::new(),
        system_uuid: String::new(),
        boot_id: String::new(),
        internal_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9))),
    }
}

fn settings() -> EdgedSettings {
    let mut s = EdgedSettings::from_config(&config::Edged::default());
    s.node_name = "edge-node-1".to_owned();
    s.node_ip = Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 50)));
    s
}

fn vector(name: &str) -> Value {
    let path = format!(
        "{}/../tests/fixtures/vectors/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn node_object_matches_the_register_vector() {
    let node = node_object(&settings(), &facts(), "containerd://1.7.20");
    let expected = vector("node-register")["content"].clone();
    assert_eq!(node, expected);
}

#[test]
fn extra_labels_do_not_override_the_edge_role() {
    let mut s = settings();
    s.node_labels
        .insert("node-role.kubernetes.io/edge".to_owned(), "no".to_owned());
    s.node_labels.insert("zone".to_owned(), "a".to_owned());
    let node = node_object(&s, &facts(), "");
    assert_eq!(
        node["metadata"]["labels"]["node-role.kubernetes.io/edge"],
        ""
    );
    assert_eq!(node["metadata"]["labels"]["zone"], "a");
}

#[test]
fn hostname_only_without_an_address() {
    let mut s = settings();
    s.node_ip = None;
    let mut f = facts();
    f.internal_ip = None;
    let node = node_object(&s, &f, "");
    assert_eq!(
        node["status"]["addresses"],
        json!([{"type": "Hostname", "address": "edge-node-1"}])
    );
}

fn sample() -> HostSample {
    HostSample {
        memory_available_bytes: 4 << 30,
        disk: Some((50, 100)),
        processes: 300,
        pid_max: 32_768,
    }
}

fn statuses(c: &[Condition; 4]) -> Vec<(&'static str, bool)> {
    c.iter().map(|c| (c.kind.as_str(), c.status)).collect()
}

#[test]
fn healthy_host_is_ready_without_pressure() {
    let c = conditions(&sample(), &PressureThresholds::default(), Ok(()));
    assert_eq!(
        statuses(&c),
        [
            ("MemoryPressure", false),
            ("DiskPressure", false),
            ("PIDPressure", false),
            ("Ready", true)
        ]
    );
    assert_eq!(c[0].reason, "KubeletHasSufficientMemory");
    assert_eq!(c[3].reason, "EdgeReady", "KubeEdge's kubelet wording");
}

#[test]
fn pressure_thresholds_are_strict_lower_bounds() {
    let th = PressureThresholds::default();
    let mut s = sample();
    s.memory_available_bytes = th.memory_available_bytes;
    s.disk = Some((10, 100));
    s.processes = 32_768 - 3277; // 3277 free of 32768 = 10.0006 %
    let c = conditions(&s, &th, Ok(()));
    assert_eq!(
        statuses(&c)[..3],
        [
            ("MemoryPressure", false),
            ("DiskPressure", false),
            ("PIDPressure", false)
        ]
    );

    s.memory_available_bytes -= 1;
    s.disk = Some((9, 100));
    s.processes += 1;
    let c = conditions(&s, &th, Ok(()));
    assert_eq!(
        statuses(&c)[..3],
        [
            ("MemoryPressure", true),
            ("DiskPressure", true),
            ("PIDPressure", true)
        ]
    );
    assert_eq!(c[0].reason, "KubeletHasInsufficientMemory");
    assert_eq!(c[1].reason, "KubeletHasDiskPressure");
    assert_eq!(c[2].reason, "KubeletHasInsufficientPID");
}

#[test]
fn unknown_disk_is_no_pressure() {
    let mut s = sample();
    s.disk = None;
    let c = conditions(&s, &PressureThresholds::default(), Ok(()));
    assert!(!c[1].status);
}

#[test]
fn runtime_down_is_not_ready_with_the_reason() {
    let c = conditions(
        &sample(),
        &PressureThresholds::default(),
        Err("socket missing"),
    );
    assert!(!c[3].status);
    assert_eq!(c[3].reason, "KubeletNotReady");
    assert!(c[3].message.contains("socket missing"));
}

#[test]
fn status_patch_has_the_vector_shape() {
    let timed: Vec<TimedCondition> = conditions(&sample(), &PressureThresholds::default(), Ok(()))
        .into_iter()
        .map(|condition| TimedCondition {
            condition,
            last_transition: "2025-06-01T08:00:00Z".to_owned(),
        })
        .collect();
    let patch = status_patch(
        &settings(),
        &facts(),
        "containerd://1.7.20",
        &timed,
        "2025-06-01T08:00:10Z",
    );
    let ours: Value = serde_json::from_str(&patch).unwrap();
    let content = vector("node-status-update")["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs: Value = serde_json::from_str(&content).unwrap();
    assert_eq!(
        ours["status"]["$setElementOrder/conditions"],
        theirs["status"]["$setElementOrder/conditions"]
    );
    let ours_c = ours["status"]["conditions"].as_array().unwrap();
    let theirs_c = theirs["status"]["conditions"].as_array().unwrap();
    assert_eq!(ours_c.len(), theirs_c.len());
    for (o, t) in ours_c.iter().zip(theirs_c) {
        assert_eq!(o["type"], t["type"]);
        assert_eq!(o["lastHeartbeatTime"], t["lastHeartbeatTime"]);
    }
    assert_eq!(ours_c[3]["status"], "True");
    assert_eq!(ours_c[3]["lastTransitionTime"], "2025-06-01T08:00:00Z");
    assert_eq!(ours["status"]["capacity"]["pods"], "110");
    assert_eq!(ours["status"]["allocatable"]["memory"], "7947084Ki");
}
