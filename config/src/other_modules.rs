//! KubeEdge module sections we do not run. They are typed so that their keys are known (no
//! unknown-key warnings), keep KubeEdge's defaults, and print back as they were read.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::de;

/// `modules.dbTest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DbTest {
    /// Module switch (default false).
    pub enable: bool,
}

/// `modules.deviceTwin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceTwin {
    /// Module switch.
    pub enable: bool,
    /// Directory of the device-mapper interface socket.
    pub dmi_sock_path: String,
}

/// `modules.edgeStream`: the tunnel for `kubectl logs/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EdgeStream {
    /// Module switch.
    pub enable: bool,
    /// Seconds.
    #[serde(deserialize_with = "de::seconds")]
    pub handshake_timeout: u32,
    /// Seconds.
    #[serde(deserialize_with = "de::seconds")]
    pub read_deadline: u32,
    /// Seconds.
    #[serde(deserialize_with = "de::seconds")]
    pub write_deadline: u32,
    /// Tunnel server `host:port`.
    pub server: String,
    /// CA (PEM).
    #[serde(rename = "tlsTunnelCAFile")]
    pub tls_tunnel_ca_file: String,
    /// Client certificate (PEM).
    pub tls_tunnel_cert_file: String,
    /// Client key (PEM).
    pub tls_tunnel_private_key_file: String,
}

/// `modules.eventBus`: the MQTT bridge. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EventBus {
    /// Module switch.
    pub enable: bool,
    /// 0 internal broker, 1 both, 2 external broker.
    pub mqtt_mode: u8,
    /// QoS of published messages.
    #[serde(rename = "mqttQOS")]
    pub mqtt_qos: u8,
    /// Retain flag of published messages.
    pub mqtt_retain: bool,
    /// Sessions handled.
    #[serde(deserialize_with = "de::int32")]
    pub mqtt_session_queue_size: i32,
    /// External broker URL.
    pub mqtt_server_external: String,
    /// Internal broker URL.
    pub mqtt_server_internal: String,
    /// Subscriber client ID.
    #[serde(rename = "mqttSubClientID")]
    pub mqtt_sub_client_id: String,
    /// Publisher client ID.
    #[serde(rename = "mqttPubClientID")]
    pub mqtt_pub_client_id: String,
    /// Broker user.
    pub mqtt_username: String,
    /// Broker password.
    pub mqtt_password: String,
    /// TLS towards the broker.
    #[serde(rename = "eventBusTLS", deserialize_with = "de::null_as_default")]
    pub event_bus_tls: EventBusTls,
}

/// `modules.eventBus.eventBusTLS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventBusTls {
    /// TLS switch.
    pub enable: bool,
    /// CA (PEM).
    #[serde(rename = "tlsMqttCAFile")]
    pub tls_mqtt_ca_file: String,
    /// Client certificate (PEM).
    #[serde(rename = "tlsMqttCertFile")]
    pub tls_mqtt_cert_file: String,
    /// Client key (PEM).
    #[serde(rename = "tlsMqttPrivateKeyFile")]
    pub tls_mqtt_private_key_file: String,
}

/// `modules.serviceBus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceBus {
    /// Module switch.
    pub enable: bool,
    /// Listen address.
    pub server: String,
    /// Listen port.
    #[serde(deserialize_with = "de::int32")]
    pub port: i32,
    /// Seconds.
    #[serde(deserialize_with = "de::int32")]
    pub timeout: i32,
    /// Server certificate (newer KubeEdge releases).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tls_cert_file: String,
    /// Server key (newer KubeEdge releases).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tls_private_key_file: String,
}

/// `modules.taskManager`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskManager {
    /// Module switch (default false).
    pub enable: bool,
}

impl Default for DeviceTwin {
    fn default() -> Self {
        Self {
            enable: true,
            dmi_sock_path: "/etc/kubeedge/".to_owned(),
        }
    }
}

impl Default for EdgeStream {
    fn default() -> Self {
        Self {
            enable: false,
            handshake_timeout: 30,
            read_deadline: 15,
            write_deadline: 15,
            server: "127.0.0.1:10004".to_owned(),
            tls_tunnel_ca_file: "/etc/kubeedge/ca/rootCA.crt".to_owned(),
            tls_tunnel_cert_file: "/etc/kubeedge/certs/server.crt".to_owned(),
            tls_tunnel_private_key_file: "/etc/kubeedge/certs/server.key".to_owned(),
        }
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            enable: true,
            mqtt_mode: 2,
            mqtt_qos: 0,
            mqtt_retain: false,
            mqtt_session_queue_size: 100,
            mqtt_server_external: "tcp://127.0.0.1:1883".to_owned(),
            mqtt_server_internal: "tcp://127.0.0.1:1884".to_owned(),
            mqtt_sub_client_id: String::new(),
            mqtt_pub_client_id: String::new(),
            mqtt_username: String::new(),
            mqtt_password: String::new(),
            event_bus_tls: EventBusTls::default(),
        }
    }
}

impl Default for EventBusTls {
    fn default() -> Self {
        Self {
            enable: false,
            tls_mqtt_ca_file: "/etc/kubeedge/ca/rootCA.crt".to_owned(),
            tls_mqtt_cert_file: "/etc/kubeedge/certs/server.crt".to_owned(),
            tls_mqtt_private_key_file: "/etc/kubeedge/certs/server.key".to_owned(),
        }
    }
}

impl Default for ServiceBus {
    fn default() -> Self {
        Self {
            enable: false,
            server: "127.0.0.1".to_owned(),
            port: 9060,
            timeout: 60,
            tls_cert_file: String::new(),
            tls_private_key_file: String::new(),
        }
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = if self.mqtt_password.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("EventBus")
            .field("enable", &self.enable)
            .field("mqtt_mode", &self.mqtt_mode)
            .field("mqtt_qos", &self.mqtt_qos)
            .field("mqtt_retain", &self.mqtt_retain)
            .field("mqtt_session_queue_size", &self.mqtt_session_queue_size)
            .field("mqtt_server_external", &self.mqtt_server_external)
            .field("mqtt_server_internal", &self.mqtt_server_internal)
            .field("mqtt_sub_client_id", &self.mqtt_sub_client_id)
            .field("mqtt_pub_client_id", &self.mqtt_pub_client_id)
            .field("mqtt_username", &self.mqtt_username)
            .field("mqtt_password", &password)
            .field("event_bus_tls", &self.event_bus_tls)
            .finish()
    }
}
