//! Pod volumes on disk under the root directory: configmap and secret files, emptyDir, hostPath.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use tracing::warn;

use crate::env::{EnvError, NodeFacts, Objects, Source};
use crate::pod::{Container, KeyToPath, Pod};
use crate::runtime::Mount;

mod atomic_writer;
mod projected;

/// Why a pod's volumes could not be prepared.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VolumeError {
    #[error(transparent)]
    Object(#[from] EnvError),
    #[error("{kind} {name} for volume {volume} not found; create it or mark the volume optional")]
    Missing {
        kind: &'static str,
        name: String,
        volume: String,
    },
    #[error("volume {volume}: item path {path:?} must be relative and stay inside the volume")]
    BadPath { volume: String, path: String },
    #[error("volume {volume}: key {key:?} not found in {kind} {name}")]
    MissingKey {
        volume: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("volume {volume}: no token of service account {account}: {reason}")]
    Token {
        volume: String,
        account: String,
        reason: String,
    },
    #[error("volume {volume}: item {path:?}: resourceFieldRef {why}")]
    ResourceField {
        volume: String,
        path: String,
        why: String,
    },
    #[error("cannot write volume files under {path}; check rootDirectory permissions")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `<root>/pods/<uid>`.
pub(crate) fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// `rel` when it is a path inside the volume (relative, no `..`, not one of the writer's own
/// `..` names).
fn checked_path(volume: &str, rel: &str) -> Result<String, VolumeError> {
    if safe_relative(rel) && !rel.starts_with("..") {
        Ok(rel.to_owned())
    } else {
        Err(VolumeError::BadPath {
            volume: volume.to_owned(),
            path: rel.to_owned(),
        })
    }
}

/// The files of an object's data: every key, or only `items` (each with its path and mode).
fn select_items(
    volume: &str,
    kind: &'static str,
    name: &str,
    data: &HashMap<String, Vec<u8>>,
    items: &[KeyToPath],
    mode: u32,
) -> Result<Vec<(String, Vec<u8>, u32)>, VolumeError> {
    if items.is_empty() {
        return data
            .iter()
            .map(|(k, v)| Ok((checked_path(volume, k)?, v.clone(), mode)))
            .collect();
    }
    items
        .iter()
        .map(|item| {
            let Some(v) = data.get(&item.key) else {
                return Err(VolumeError::MissingKey {
                    volume: volume.to_owned(),
                    kind,
                    name: name.to_owned(),
                    key: item.key.clone(),
                });
            };
            Ok((
                checked_path(volume, &item.path)?,
                v.clone(),
                item.mode.unwrap_or(mode),
            ))
        })
        .collect()
}

/// Writes one configmap or secret volume (kubelet layout, atomic swap); returns whether its
/// files changed.
async fn write_files(
    dir: &Path,
    volume: &str,
    kind: &'static str,
    name: &str,
    data: &HashMap<String, Vec<u8>>,
    items: &[KeyToPath],
    mode: u32,
) -> Result<bool, VolumeError> {
    let payload = select_items(volume, kind, name, data, items, mode)?
        .into_iter()
        .map(|(path, bytes, mode)| (path, atomic_writer::File { bytes, mode }))
        .collect();
    write_payload(dir, payload).await
}

/// Writes `payload` into `dir` (kubelet layout, atomic swap); returns whether it changed.
async fn write_payload(dir: &Path, payload: atomic_writer::Payload) -> Result<bool, VolumeError> {
    let target = dir.to_owned();
    tokio::task::spawn_blocking(move || atomic_writer::write(&target, &payload))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(io(dir))
}

/// Writes the pod's volumes; returns volume name → host path. Unsupported volume types are
/// skipped with a warning (their mounts are skipped too).
pub(crate) async fn prepare(
    root: &Path,
    pod: &Pod,
    node: &NodeFacts,
    objects: &mut Objects<'_>,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    write_volumes(root, pod, node, objects, true)
        .await
        .map(|(paths, _)| paths)
}

/// Rewrites the configmap, secret, projected and downwardAPI volumes of a running pod from the
/// objects' current data (and a fresh service-account token when it is due); returns the names
/// of the volumes whose files changed. The container sees the change at once (the `..data`
/// swap), as with the kubelet.
pub(crate) async fn refresh(
    root: &Path,
    pod: &Pod,
    node: &NodeFacts,
    objects: &mut Objects<'_>,
) -> Result<Vec<String>, VolumeError> {
    write_volumes(root, pod, node, objects, false)
        .await
        .map(|(_, changed)| changed)
}

/// Whether the pod has a volume of configmap (`secret` false) or secret `name`.
pub(crate) fn uses(pod: &Pod, secret: bool, name: &str) -> bool {
    pod.spec.volumes.iter().any(|v| {
        let direct = match (secret, &v.config_map, &v.secret) {
            (false, Some(cm), _) => cm.name == name,
            (true, _, Some(sec)) => sec.secret_name == name,
            _ => false,
        };
        let projected = v.projected.as_ref().is_some_and(|p| {
            p.sources.iter().any(|src| {
                let o = if secret { &src.secret } else { &src.config_map };
                o.as_ref().is_some_and(|o| o.name == name)
            })
        });
        direct || projected
    })
}

async fn write_volumes(
    root: &Path,
    pod: &Pod,
    node: &NodeFacts,
    objects: &mut Objects<'_>,
    first: bool,
) -> Result<(HashMap<String, PathBuf>, Vec<String>), VolumeError> {
    let base = pod_dir(root, &pod.metadata.uid).join("volumes");
    let mut out = HashMap::new();
    let mut changed = Vec::new();
    for v in &pod.spec.volumes {
        if let Some(cm) = &v.config_map {
            let dir = base.join("kubernetes.io~configmap").join(&v.name);
            match objects.get(Source::ConfigMap, &cm.name).await? {
                Some(data) => {
                    let mode = cm.default_mode.unwrap_or(0o644);
                    if write_files(&dir, &v.name, "configmap", &cm.name, &data, &cm.items, mode)
                        .await?
                    {
                        changed.push(v.name.clone());
                    }
                }
                None if cm.optional == Some(true) => {
                    tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
                }
                None => {
                    return Err(VolumeError::Missing {
                        kind: "configmap",
                        name: cm.name.clone(),
                        volume: v.name.clone(),
                    });
                }
            }
            out.insert(v.name.clone(), dir);
        } else if let Some(sec) = &v.secret {
            let dir = base.join("kubernetes.io~secret").join(&v.name);
            match objects.get(Source::Secret, &sec.secret_name).await? {
                Some(data) => {
                    let mode = sec.default_mode.unwrap_or(0o644);
                    if write_files(
                        &dir,
                        &v.name,
                        "secret",
                        &sec.secret_name,
                        &data,
                        &sec.items,
                        mode,
                    )
                    .await?
                    {
                        changed.push(v.name.clone());
                    }
                }
                None if sec.optional == Some(true) => {
                    tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
                }
                None => {
                    return Err(VolumeError::Missing {
                        kind: "secret",
                        name: sec.secret_name.clone(),
                        volume: v.name.clone(),
                    });
                }
            }
            out.insert(v.name.clone(), dir);
        } else if let Some(p) = &v.projected {
            let dir = base.join("kubernetes.io~projected").join(&v.name);
            let payload = projected::projected_payload(pod, &v.name, p, node, objects).await?;
            if write_payload(&dir, payload).await? {
                changed.push(v.name.clone());
            }
            out.insert(v.name.clone(), dir);
        } else if let Some(d) = &v.downward_api {
            let dir = base.join("kubernetes.io~downward-api").join(&v.name);
            let payload =
                projected::downward_payload(pod, &v.name, &d.items, d.default_mode, node)?;
            if write_payload(&dir, payload).await? {
                changed.push(v.name.clone());
            }
            out.insert(v.name.clone(), dir);
        } else if v.empty_dir.is_some() {
            let dir = base.join("kubernetes.io~empty-dir").join(&v.name);
            tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
            out.insert(v.name.clone(), dir);
        } else if let Some(hp) = &v.host_path {
            out.insert(v.name.clone(), PathBuf::from(&hp.path));
        } else if first {
            warn!(pod = %pod.key(), volume = %v.name, "volume type not supported; skipped");
        }
    }
    Ok((out, changed))
}

/// Bind mounts for `container` from its volumeMounts.
pub(crate) fn mounts(
    pod: &Pod,
    container: &Container,
    volumes: &HashMap<String, PathBuf>,
) -> Vec<Mount> {
    container
        .volume_mounts
        .iter()
        .filter_map(|m| {
            let Some(host) = volumes.get(&m.name) else {
                warn!(pod = %pod.key(), volume = %m.name, "mount of an unprepared volume skipped");
                return None;
            };
            let host_path = if m.sub_path.is_empty() {
                host.clone()
            } else if safe_relative(&m.sub_path) {
                host.join(&m.sub_path)
            } else {
                warn!(pod = %pod.key(), volume = %m.name, "subPath leaves the volume; mount skipped");
                return None;
            };
            Some(Mount {
                container_path: m.mount_path.clone(),
                host_path,
                read_only: m.read_only,
            })
        })
        .collect()
}

/// Removes everything the pod had under the root directory.
pub(crate) async fn cleanup(root: &Path, uid: &str) {
    if uid.is_empty() || !safe_relative(uid) {
        return;
    }
    let dir = pod_dir(root, uid);
    if let Err(error) = tokio::fs::remove_dir_all(&dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %dir.display(), %error, "cannot remove pod directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::RecordingMeta;
    use serde_json::json;

    fn node() -> NodeFacts {
        NodeFacts {
            ip: "192.0.2.10".to_owned(),
            cpu_milli: 2000,
            memory_bytes: 1 << 30,
        }
    }

    #[tokio::test]
    async fn configmap_and_secret_files_with_items_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let (meta, _calls) = RecordingMeta::new();
        meta.put(
            "configmap",
            "ns",
            "cfg",
            json!({"data": {"a.conf": "A", "b": "B"}}),
        );
        meta.put("secret", "ns", "sec", json!({"data": {"pw": "czNjcmV0"}}));
        let pod = Pod::from_json(&json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {
                "volumes": [
                    {"name": "c", "configMap": {"name": "cfg"}},
                    {"name": "s", "secret": {"secretName": "sec", "defaultMode": 256,
                                              "items": [{"key": "pw", "path": "dir/password"}]}},
                    {"name": "e", "emptyDir": {}},
                    {"name": "t", "csi": {"driver": "x"}}
                ],
                "containers": [{"name": "x", "volumeMounts": [
                    {"name": "c", "mountPath": "/etc/c", "readOnly": true},
                    {"name": "s", "mountPath": "/etc/s"},
                    {"name": "t", "mountPath": "/var/run/secrets"}
                ]}]
            }
        }))
        .unwrap();
        let mut objects = Objects::new(meta.as_ref(), "ns");
        let vols = prepare(root.path(), &pod, &node(), &mut objects)
            .await
            .unwrap();
        let c = &vols["c"];
        assert_eq!(std::fs::read_to_string(c.join("a.conf")).unwrap(), "A");
        assert_eq!(std::fs::read_to_string(c.join("b")).unwrap(), "B");
        let pw = vols["s"].join("dir/password");
        assert_eq!(std::fs::read_to_string(&pw).unwrap(), "s3cret");
        assert_eq!(
            std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert!(vols["e"].is_dir());
        assert!(!vols.contains_key("t"));

        let m = mounts(&pod, &pod.spec.containers[0], &vols);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].container_path, "/etc/c");
        assert!(m[0].read_only);

        cleanup(root.path(), "u1").await;
        assert!(!pod_dir(root.path(), "u1").exists());
    }

    /// The volume the ServiceAccount admission plugin adds to every pod, as client-go's
    /// in-cluster config reads it: token, ca.crt and namespace, mode 0644.
    #[tokio::test]
    async fn the_kube_api_access_volume_holds_token_ca_and_namespace() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let (meta, mut calls) = RecordingMeta::new();
        meta.put(
            "configmap",
            "ns",
            "kube-root-ca.crt",
            json!({"data": {"ca.crt": "-----BEGIN CERTIFICATE-----"}}),
        );
        let pod = Pod::from_json(&json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u3",
                         "labels": {"app": "web", "tier": "a\"b"}},
            "spec": {
                "serviceAccountName": "builder",
                "volumes": [
                    {"name": "kube-api-access-x", "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt",
                                       "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace",
                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                    ]}},
                    {"name": "info", "downwardAPI": {"items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}, "mode": 256},
                        {"path": "mem", "resourceFieldRef": {"containerName": "app",
                            "resource": "limits.memory", "divisor": "1Mi"}},
                        {"path": "cpu", "resourceFieldRef": {"containerName": "app",
                            "resource": "limits.cpu"}}
                    ]}}
                ],
                "containers": [{"name": "app", "image": "i",
                                "resources": {"limits": {"memory": "64Mi"}}}]
            }
        }))
        .unwrap();
        let mut objects = Objects::new(meta.as_ref(), "ns");
        let vols = prepare(root.path(), &pod, &node(), &mut objects)
            .await
            .unwrap();
        let dir = &vols["kube-api-access-x"];
        assert!(dir.ends_with("volumes/kubernetes.io~projected/kube-api-access-x"));
        assert_eq!(
            std::fs::read_to_string(dir.join("token")).unwrap(),
            "token-1"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
            "-----BEGIN CERTIFICATE-----"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("namespace")).unwrap(),
            "ns"
        );
        let mode = std::fs::metadata(dir.join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        // The kubelet's TokenRequest: bound to the pod, the asked lifetime, default audiences.
        match calls.recv().await.unwrap() {
            crate::testutil::MetaCall::Token {
                namespace,
                name,
                request,
            } => {
                assert_eq!((namespace.as_str(), name.as_str()), ("ns", "builder"));
                assert_eq!(request["spec"]["expirationSeconds"], 3607);
                assert_eq!(request["spec"]["audiences"], serde_json::Value::Null);
                assert_eq!(
                    request["spec"]["boundObjectRef"],
                    json!({"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u3"})
                );
            }
            other => panic!("{other:?}"),
        }
        let info = &vols["info"];
        assert_eq!(
            std::fs::read_to_string(info.join("labels")).unwrap(),
            "app=\"web\"\ntier=\"a\\\"b\"\n"
        );
        let mode = std::fs::metadata(info.join("node"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        assert_eq!(std::fs::read_to_string(info.join("mem")).unwrap(), "64");
        // No CPU limit: the node's allocatable 2 cores.
        assert_eq!(std::fs::read_to_string(info.join("cpu")).unwrap(), "2");
    }

    #[tokio::test]
    async fn escaping_item_paths_and_missing_objects_are_errors() {
        let root = tempfile::tempdir().unwrap();
        let (meta, _calls) = RecordingMeta::new();
        meta.put("configmap", "ns", "cfg", json!({"data": {"k": "v"}}));
        let pod = |vol: serde_json::Value| {
            Pod::from_json(&json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u2"},
                "spec": {"volumes": [vol]}
            }))
            .unwrap()
        };
        let mut objects = Objects::new(meta.as_ref(), "ns");
        let bad = pod(json!({"name": "c", "configMap": {"name": "cfg",
            "items": [{"key": "k", "path": "../escape"}]}}));
        let err = prepare(root.path(), &bad, &node(), &mut objects)
            .await
            .unwrap_err();
        assert!(matches!(err, VolumeError::BadPath { .. }), "{err}");
        let missing = pod(json!({"name": "c", "configMap": {"name": "nope"}}));
        let err = prepare(root.path(), &missing, &node(), &mut objects)
            .await
            .unwrap_err();
        assert!(matches!(err, VolumeError::Missing { .. }), "{err}");
        let optional = pod(json!({"name": "c", "configMap": {"name": "nope", "optional": true}}));
        assert!(
            prepare(root.path(), &optional, &node(), &mut objects)
                .await
                .is_ok()
        );
    }
}
