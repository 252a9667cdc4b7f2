//! Whole-file behaviour: KubeEdge's own files, warnings, errors, printing.

use std::path::PathBuf;

use proptest::prelude::*;
use serde_yaml_ng::Value;

use crate::{
    ConfigError, EdgeCoreConfig, GoDuration, default_config, from_yaml, load, minimal_config,
    minimal_yaml, to_yaml,
};

/// What KubeEdge's `edgecore --defaultconfig` prints (node edge-node-1).
const KUBEEDGE_DEFAULT: &str = include_str!("../../tests/fixtures/config-examples/default.yaml");
/// What KubeEdge's `edgecore --minconfig` prints (node edge-node-1).
const KUBEEDGE_MINIMAL: &str = include_str!("../../tests/fixtures/config-examples/minimal.yaml");

const HEAD: &str = "apiVersion: edgecore.config.kubeedge.io/v1alpha2\nkind: EdgeCore\n";

fn yaml(s: &str) -> Value {
    serde_yaml_ng::from_str(s).unwrap()
}

/// `v` with our extra keys added as `default_config` has them.
fn with_our_keys(mut v: Value) -> Value {
    let ours = yaml("enable: true\naddress: 127.0.0.1:10370\n");
    let failover = serde_yaml_ng::to_value(crate::Failover::default()).unwrap();
    let modules = v.get_mut("modules").unwrap().as_mapping_mut().unwrap();
    modules.insert("health".into(), ours);
    let hub = modules
        .get_mut("edgeHub")
        .unwrap()
        .as_mapping_mut()
        .unwrap();
    hub.insert("tlsServerName".into(), "".into());
    hub.insert("failover".into(), failover);
    v
}

#[test]
fn kubeedge_default_file_loads_clean_with_its_values() {
    let loaded = from_yaml(KUBEEDGE_DEFAULT).unwrap();
    assert_eq!(loaded.warnings, []);
    let c = &loaded.config;
    assert_eq!(c.validate(), Ok(()));
    let hub = &c.modules.edge_hub;
    assert!(hub.enable);
    assert_eq!(hub.heartbeat, 15);
    assert_eq!(hub.project_id, "e632aba927ea4ac2b575ec1603d56f10");
    assert_eq!(hub.websocket.server, "192.0.2.2:10000");
    assert_eq!(hub.http_server, "https://192.0.2.2:10002");
    assert_eq!(
        hub.tls_ca_file,
        PathBuf::from("/etc/kubeedge/ca/rootCA.crt")
    );
    assert_eq!(hub.message_qps, 30);
    assert_eq!(hub.message_burst, 60);
    assert!(!hub.quic.enable);
    assert_eq!(c.modules.edged.hostname_override, "edge-node-1");
    assert_eq!(c.modules.edged.register_node_namespace, "default");
    let kubelet = &c.modules.edged.tailored_kubelet_config;
    assert_eq!(
        kubelet.container_runtime_endpoint,
        "unix:///run/containerd/containerd.sock"
    );
    assert_eq!(kubelet.max_pods, 110);
    assert_eq!(
        kubelet.node_status_update_frequency,
        GoDuration::from_secs(10)
    );
    assert_eq!(c.modules.meta_manager.remote_query_timeout, 60);
    assert_eq!(c.modules.meta_manager.context_send_module, "websocket");
    assert_eq!(
        c.database.data_source,
        PathBuf::from("/var/lib/kubeedge/edgecore.db")
    );
    assert_eq!(c, &default_config("edge-node-1"));
}

#[test]
fn kubeedge_minimal_file_loads_clean_with_its_values() {
    let loaded = from_yaml(KUBEEDGE_MINIMAL).unwrap();
    assert_eq!(loaded.warnings, []);
    let c = &loaded.config;
    assert_eq!(c.validate(), Ok(()));
    // KubeEdge's minimal file really says `enable: false` for edgeHub.
    assert!(!c.modules.edge_hub.enable);
    assert_eq!(c.modules.edge_hub.heartbeat, 15);
    assert_eq!(c.modules.edge_hub.websocket.server, "192.0.2.2:10000");
    // Left out of the file: KubeEdge's defaults.
    assert_eq!(
        c.modules.edge_hub.project_id,
        "e632aba927ea4ac2b575ec1603d56f10"
    );
    assert!(c.modules.meta_manager.enable);
    assert_eq!(c.modules.meta_manager.remote_query_timeout, 60);
    assert_eq!(c.database.driver_name, "sqlite3");
    assert_eq!(c.modules.edged.hostname_override, "edge-node-1");
    assert_eq!(c, &minimal_config("edge-node-1"));
}

#[test]
fn printed_default_is_kubeedges_file_plus_our_keys() {
    let printed = to_yaml(&default_config("edge-node-1")).unwrap();
    assert_eq!(yaml(&printed), with_our_keys(yaml(KUBEEDGE_DEFAULT)));
    // Sorted like KubeEdge's output.
    assert!(printed.starts_with("apiVersion: edgecore.config.kubeedge.io/v1alpha2\ndatabase:\n"));
}

#[test]
fn printed_minimal_is_kubeedges_file_plus_our_keys() {
    let printed = minimal_yaml("edge-node-1").unwrap();
    assert_eq!(yaml(&printed), with_our_keys(yaml(KUBEEDGE_MINIMAL)));
}

#[test]
fn default_and_minimal_round_trip_without_warnings() {
    for (c, text) in [
        (
            default_config("edge-node-1"),
            to_yaml(&default_config("edge-node-1")).unwrap(),
        ),
        (
            minimal_config("edge-node-1"),
            to_yaml(&minimal_config("edge-node-1")).unwrap(),
        ),
        (
            minimal_config("edge-node-1"),
            minimal_yaml("edge-node-1").unwrap(),
        ),
    ] {
        let back = from_yaml(&text).unwrap();
        assert_eq!(back.warnings, []);
        assert_eq!(back.config, c);
    }
    let loaded = from_yaml(KUBEEDGE_DEFAULT).unwrap().config;
    assert_eq!(
        from_yaml(&to_yaml(&loaded).unwrap()).unwrap().config,
        loaded
    );
}

#[test]
fn unknown_keys_are_warned_with_their_full_path() {
    let text = format!(
        "{HEAD}modules:\n  edgeHub:\n    heartbaet: 10\n    websocket:\n      sever: x:1\n  \
         edged:\n    hostnameOverride: n\n    tailoredKubeletConfig:\n      someNewKubeletKey: 1\n  \
         fooModule:\n    enable: true\nextra: 1\n"
    );
    let loaded = from_yaml(&text).unwrap();
    let paths: Vec<&str> = loaded
        .warnings
        .iter()
        .map(|w| w.key_path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "modules.edgeHub.heartbaet",
            "modules.edgeHub.websocket.sever",
            "modules.fooModule",
            "extra"
        ]
    );
    let first = loaded.warnings.first().unwrap();
    assert_eq!(first.did_you_mean.as_deref(), Some("heartbeat"));
    assert_eq!(
        first.to_string(),
        "unknown key modules.edgeHub.heartbaet is ignored (did you mean heartbeat?)"
    );
    assert_eq!(
        loaded.warnings.get(1).unwrap().did_you_mean.as_deref(),
        Some("server")
    );
    assert_eq!(loaded.warnings.get(2).unwrap().did_you_mean, None);
    // The misspelt key did not change anything; the kubelet key was kept.
    assert_eq!(loaded.config.modules.edge_hub.heartbeat, 15);
    assert_eq!(
        loaded
            .config
            .modules
            .edged
            .tailored_kubelet_config
            .rest
            .get("someNewKubeletKey"),
        Some(&Value::from(1))
    );
}

#[test]
fn a_wrong_type_names_the_key_path_value_and_expectation() {
    let text = format!("{HEAD}modules:\n  edgeHub:\n    heartbeat: abc\n");
    let err = from_yaml(&text).unwrap_err();
    let ConfigError::Parse {
        path,
        key_path,
        message,
    } = &err
    else {
        panic!("expected a parse error, got {err:?}");
    };
    assert_eq!(path, &None);
    assert_eq!(key_path, "modules.edgeHub.heartbeat");
    assert!(
        message.starts_with("invalid value \"abc\": expected an integer number of seconds"),
        "{message}"
    );
    assert!(
        err.to_string()
            .starts_with("modules.edgeHub.heartbeat: invalid value \"abc\": expected an integer"),
        "{err}"
    );

    for (body, want_path, want_text) in [
        (
            "modules:\n  edgeHub:\n    failover:\n      pingIntervalMs: -5\n",
            "modules.edgeHub.failover.pingIntervalMs",
            "invalid value -5: expected an integer number of milliseconds",
        ),
        (
            "modules:\n  edgeHub:\n    websocket:\n      enable: yes please\n",
            "modules.edgeHub.websocket.enable",
            "expected a boolean",
        ),
        (
            "modules:\n  edged:\n    tailoredKubeletConfig:\n      nodeStatusUpdateFrequency: 10\n",
            "modules.edged.tailoredKubeletConfig.nodeStatusUpdateFrequency",
            "a number needs a unit",
        ),
        (
            "modules:\n  edgeHub:\n    failover:\n      servers: a:1\n",
            "modules.edgeHub.failover.servers",
            "expected a sequence",
        ),
        (
            "modules:\n  edgeHub:\n    messageQPS: 3000000000\n",
            "modules.edgeHub.messageQPS",
            "invalid value 3000000000: expected an integer (out of range)",
        ),
    ] {
        let Err(ConfigError::Parse {
            key_path, message, ..
        }) = from_yaml(&format!("{HEAD}{body}"))
        else {
            panic!("{body} should not parse");
        };
        assert_eq!(key_path, want_path, "{body}");
        assert!(message.contains(want_text), "{body}: {message}");
    }
}

#[test]
fn yaml_syntax_errors_and_odd_documents_are_errors() {
    for text in [
        "",
        "# only a comment\n",
        "a: [1\n",
        "just a string",
        "- 1\n- 2\n",
        "---\na: 1\n---\nb: 2\n",
    ] {
        match from_yaml(text) {
            Err(ConfigError::Parse { message, .. }) => assert!(!message.is_empty()),
            other => panic!("{text:?} gave {other:?}"),
        }
    }
    let Err(ConfigError::Parse { message, .. }) = from_yaml("") else {
        panic!("empty document accepted");
    };
    assert!(message.contains("empty"), "{message}");
}

#[test]
fn keys_left_out_get_kubeedge_defaults() {
    let text = format!("{HEAD}modules:\n  edged:\n    hostnameOverride: n1\n");
    let loaded = from_yaml(&text).unwrap();
    assert_eq!(loaded.warnings, []);
    assert_eq!(loaded.config, default_config("n1"));
    assert_eq!(loaded.config.validate(), Ok(()));

    // An empty section (`key:` with nothing after it) means defaults too.
    let text = format!("{HEAD}modules:\n  edgeHub:\n    websocket:\n  health:\nfeatureGates:\n");
    let c = from_yaml(&text).unwrap().config;
    assert_eq!(c.modules.edge_hub.websocket, crate::WebSocket::default());
    assert_eq!(c.modules.health, crate::Health::default());

    // A partial kubelet section keeps the defaults of the kubelet keys it leaves out.
    let text = format!(
        "{HEAD}modules:\n  edged:\n    tailoredKubeletConfig:\n      containerRuntimeEndpoint: \
         unix:///run/crio/crio.sock\n"
    );
    let k = from_yaml(&text)
        .unwrap()
        .config
        .modules
        .edged
        .tailored_kubelet_config;
    assert_eq!(k.container_runtime_endpoint, "unix:///run/crio/crio.sock");
    assert_eq!(k.max_pods, 110);
    assert_eq!(k.rest.get("readOnlyPort"), Some(&Value::from(10350)));
}

#[test]
fn our_keys_load() {
    let text = format!(
        "{HEAD}modules:\n  edgeHub:\n    tlsServerName: cloudcore.example.com\n    failover:\n      \
         servers: [192.0.2.3:10000, '[2001:db8::1]:10000']\n      pingIntervalMs: 1000\n  \
         health:\n    enable: false\n    address: 0.0.0.0:9000\n"
    );
    let loaded = from_yaml(&text).unwrap();
    assert_eq!(loaded.warnings, []);
    let hub = &loaded.config.modules.edge_hub;
    assert_eq!(hub.tls_server_name, "cloudcore.example.com");
    assert_eq!(
        hub.failover.servers,
        ["192.0.2.3:10000", "[2001:db8::1]:10000"]
    );
    assert_eq!(hub.failover.ping_interval_ms, 1000);
    assert_eq!(hub.failover.ping_timeout_ms, 5000);
    let health = &loaded.config.modules.health;
    assert!(!health.enable);
    assert_eq!(health.socket_addr(), "0.0.0.0:9000".parse().ok());
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgecore.yaml");

    let Err(ConfigError::Missing { path: missing }) = load(&path) else {
        panic!("a missing file must be reported as missing");
    };
    assert_eq!(missing, path);

    std::fs::write(&path, KUBEEDGE_DEFAULT).unwrap();
    assert_eq!(load(&path).unwrap(), from_yaml(KUBEEDGE_DEFAULT).unwrap());

    std::fs::write(&path, format!("{HEAD}database:\n  dataSource: [1]\n")).unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "{}: database.dataSource: invalid type: sequence",
            path.display()
        )),
        "{err}"
    );

    std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
    assert!(matches!(load(&path), Err(ConfigError::Io { .. })));
    assert!(matches!(load(dir.path()), Err(ConfigError::Io { .. })));
}

#[test]
fn a_key_with_no_value_keeps_its_default_as_in_kubeedge() {
    let text = KUBEEDGE_DEFAULT
        .replace("clusterDomain: cluster.local", "clusterDomain:")
        .replace(
            "dataSource: /var/lib/kubeedge/edgecore.db",
            "dataSource: null",
        )
        .replace("heartbeat: 15", "heartbeat: ~");
    let loaded = from_yaml(&text).unwrap();
    assert_eq!(loaded.warnings, vec![]);
    let expected = from_yaml(KUBEEDGE_DEFAULT).unwrap().config;
    assert_eq!(loaded.config, expected);
    assert_eq!(
        loaded
            .config
            .modules
            .edged
            .tailored_kubelet_config
            .cluster_domain,
        "cluster.local"
    );

    // A wrong type is still reported with its key path and where it is in the file.
    let err = from_yaml(&KUBEEDGE_DEFAULT.replace("heartbeat: 15", "heartbeat: [1]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("modules.edgeHub.heartbeat"), "{err}");
    assert!(err.contains("line "), "{err}");
}

#[test]
fn validation_errors_convert_into_config_error() {
    fn check(c: &EdgeCoreConfig) -> Result<(), ConfigError> {
        c.validate()?;
        Ok(())
    }
    let mut c = default_config("n");
    c.modules.edge_hub.heartbeat = 0;
    let err = check(&c).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(_)));
    assert!(
        err.to_string()
            .starts_with("invalid configuration: modules.edgeHub.heartbeat: invalid value 0"),
        "{err}"
    );
}

#[test]
fn debug_output_hides_the_token() {
    let mut c = default_config("n");
    c.modules.edge_hub.token = "cafe.eyJhbGciOi-secret".to_owned();
    c.modules.event_bus.mqtt_password = "mqtt-secret".to_owned();
    let debug = format!("{c:?}");
    assert!(!debug.contains("secret"), "{debug}");
    assert!(debug.contains("<redacted>"));
}

proptest! {
    #[test]
    fn from_yaml_never_panics(s in "\\PC{0,200}") {
        let _ = from_yaml(&s);
    }

    #[test]
    fn from_yaml_never_panics_on_damaged_kubeedge_files(
        line in 0usize..200,
        junk in "[ -~]{0,30}",
        minimal in any::<bool>(),
    ) {
        let base = if minimal { KUBEEDGE_MINIMAL } else { KUBEEDGE_DEFAULT };
        let damaged: Vec<String> = base
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == line {
                    match l.split_once(':') {
                        Some((k, _)) => format!("{k}: {junk}"),
                        None => junk.clone(),
                    }
                } else {
                    l.to_owned()
                }
            })
            .collect();
        if let Ok(loaded) = from_yaml(&damaged.join("\n")) {
            let _ = loaded.config.validate();
            // Whatever loads prints back to the same configuration.
            let back = from_yaml(&to_yaml(&loaded.config).unwrap()).unwrap();
            prop_assert_eq!(back.warnings, vec![]);
            prop_assert_eq!(back.config, loaded.config);
        }
    }

    #[test]
    fn printed_configs_load_back_equal(
        heartbeat in any::<u32>(),
        qps in any::<i32>(),
        server in "\\PC{0,40}",
        token in "\\PC{0,40}",
        node in "\\PC{0,40}",
        servers in proptest::collection::vec("\\PC{0,20}", 0..3),
        gates in proptest::collection::btree_map("[A-Za-z]{1,12}", any::<bool>(), 0..3),
        ms in 0u64..=i64::MAX as u64,
    ) {
        let mut c = default_config(&node);
        c.modules.edge_hub.heartbeat = heartbeat;
        c.modules.edge_hub.message_qps = qps;
        c.modules.edge_hub.websocket.server = server;
        c.modules.edge_hub.token = token;
        c.modules.edge_hub.failover.servers = servers;
        c.modules.edge_hub.failover.backoff_max_ms = ms;
        c.modules.edged.tailored_kubelet_config.sync_frequency =
            GoDuration::new(std::time::Duration::from_nanos(ms)).unwrap();
        c.feature_gates = gates;
        let back = from_yaml(&to_yaml(&c).unwrap()).unwrap();
        prop_assert_eq!(back.warnings, vec![]);
        prop_assert_eq!(back.config, c);
    }
}

/// Found by the from_yaml fuzz target: `staticPodPath: ""` loaded as "", but printing left the
/// empty string out, so the printed file loaded back with the default path. Every key of the
/// printed default file, set to its zero value ("", false, 0, empty list or map), must print
/// back to a file that loads equal.
#[test]
fn every_key_set_to_its_zero_value_prints_back_equal() {
    fn leaves(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
        match v {
            Value::Mapping(m) => {
                for (k, child) in m {
                    path.push(k.clone());
                    leaves(child, path, out);
                    path.pop();
                }
            }
            _ => out.push(path.clone()),
        }
    }
    fn zero(v: &Value) -> Value {
        match v {
            Value::String(_) => Value::String(String::new()),
            Value::Bool(_) => Value::Bool(false),
            Value::Number(_) => Value::from(0),
            Value::Sequence(_) => Value::Sequence(Vec::new()),
            other => other.clone(),
        }
    }
    let printed: Value = yaml(&to_yaml(&default_config("edge-node-1")).unwrap());
    let mut paths = Vec::new();
    leaves(&printed, &mut Vec::new(), &mut paths);
    assert!(paths.len() > 100, "{} keys", paths.len());
    let mut broken = Vec::new();
    for path in &paths {
        let mut doc = printed.clone();
        let mut at = &mut doc;
        for k in path {
            at = at.get_mut(k).unwrap();
        }
        *at = zero(at);
        let text = serde_yaml_ng::to_string(&doc).unwrap();
        // A zero that does not load (wrong type for the key) is not this test's business.
        let Ok(loaded) = from_yaml(&text) else {
            continue;
        };
        let back = from_yaml(&to_yaml(&loaded.config).unwrap()).map(|l| l.config);
        if back.as_ref().ok() != Some(&loaded.config) {
            let name: Vec<_> = path.iter().filter_map(Value::as_str).collect();
            broken.push(name.join("."));
        }
    }
    assert_eq!(
        broken,
        Vec::<String>::new(),
        "keys whose zero value is lost in printing"
    );
}
