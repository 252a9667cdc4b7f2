//! The files of `projected` and `downwardAPI` volumes. Every pod on a real cluster has one:
//! the ServiceAccount admission plugin adds `kube-api-access-*` (a projected volume of the
//! service-account token, the `kube-root-ca.crt` ConfigMap's `ca.crt` and the namespace),
//! which client-go's in-cluster config reads at `/var/run/secrets/kubernetes.io/serviceaccount`.

use serde_json::{Value, json};

use super::atomic_writer::{File, Payload};
use super::{VolumeError, checked_path, select_items};
use crate::env::{NodeFacts, Objects, Source, field_value};
use crate::pod::{DownwardApiFile, Pod, ProjectedVolume, TokenProjection};
use crate::resources::resource_field_value;

/// The API server's default and the kubelet's: one hour (the admission plugin asks 3607 s).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
/// Kubernetes' default file mode for volumes (0644).
const DEFAULT_MODE: u32 = 0o644;

/// The files of a projected volume.
pub(super) async fn projected_payload(
    pod: &Pod,
    volume: &str,
    projected: &ProjectedVolume,
    node: &NodeFacts,
    objects: &mut Objects<'_>,
) -> Result<Payload, VolumeError> {
    let mode = projected.default_mode.unwrap_or(DEFAULT_MODE);
    let mut payload = Payload::new();
    for source in &projected.sources {
        if let Some(token) = &source.service_account_token {
            let bytes = service_account_token(pod, volume, token, objects).await?;
            let path = checked_path(volume, &token.path)?;
            payload.insert(path, File { bytes, mode });
        } else if let Some(cm) = &source.config_map {
            object_files(&mut payload, objects, volume, Source::ConfigMap, cm, mode).await?;
        } else if let Some(sec) = &source.secret {
            object_files(&mut payload, objects, volume, Source::Secret, sec, mode).await?;
        } else if let Some(d) = &source.downward_api {
            downward_files(&mut payload, pod, volume, &d.items, node, mode)?;
        }
    }
    Ok(payload)
}

/// The files of a plain `downwardAPI` volume.
pub(super) fn downward_payload(
    pod: &Pod,
    volume: &str,
    items: &[DownwardApiFile],
    default_mode: Option<u32>,
    node: &NodeFacts,
) -> Result<Payload, VolumeError> {
    let mut payload = Payload::new();
    downward_files(
        &mut payload,
        pod,
        volume,
        items,
        node,
        default_mode.unwrap_or(DEFAULT_MODE),
    )?;
    Ok(payload)
}

async fn service_account_token(
    pod: &Pod,
    volume: &str,
    token: &TokenProjection,
    objects: &mut Objects<'_>,
) -> Result<Vec<u8>, VolumeError> {
    let account = if pod.spec.service_account_name.is_empty() {
        "default"
    } else {
        &pod.spec.service_account_name
    };
    // The kubelet's request: no audience means the API server's default ones.
    let audiences = if token.audience.is_empty() {
        Value::Null
    } else {
        json!([token.audience])
    };
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audiences,
            "expirationSeconds": token.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                               "name": pod.metadata.name, "uid": pod.metadata.uid},
        },
    });
    let answer = objects
        .service_account_token(account, request)
        .await
        .map_err(|e| VolumeError::Token {
            volume: volume.to_owned(),
            account: account.to_owned(),
            reason: e.to_string(),
        })?;
    match answer.pointer("/status/token").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Ok(t.as_bytes().to_vec()),
        _ => Err(VolumeError::Token {
            volume: volume.to_owned(),
            account: account.to_owned(),
            reason: "the answer carries no status.token".to_owned(),
        }),
    }
}

async fn object_files(
    payload: &mut Payload,
    objects: &mut Objects<'_>,
    volume: &str,
    source: Source,
    projection: &crate::pod::ObjectProjection,
    mode: u32,
) -> Result<(), VolumeError> {
    let kind = source.kind();
    let Some(data) = objects.get(source, &projection.name).await? else {
        if projection.optional == Some(true) {
            return Ok(());
        }
        return Err(VolumeError::Missing {
            kind,
            name: projection.name.clone(),
            volume: volume.to_owned(),
        });
    };
    for (path, bytes, file_mode) in select_items(
        volume,
        kind,
        &projection.name,
        &data,
        &projection.items,
        mode,
    )? {
        payload.insert(
            path,
            File {
                bytes,
                mode: file_mode,
            },
        );
    }
    Ok(())
}

fn downward_files(
    payload: &mut Payload,
    pod: &Pod,
    volume: &str,
    items: &[DownwardApiFile],
    node: &NodeFacts,
    mode: u32,
) -> Result<(), VolumeError> {
    for item in items {
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(field), _) => field_value(pod, node, &field.field_path),
            (None, Some(r)) => resource_field_value(pod, None, r, node).map_err(|why| {
                VolumeError::ResourceField {
                    volume: volume.to_owned(),
                    path: item.path.clone(),
                    why,
                }
            })?,
            (None, None) => String::new(),
        };
        let path = checked_path(volume, &item.path)?;
        payload.insert(
            path,
            File {
                bytes: value.into_bytes(),
                mode: item.mode.unwrap_or(mode),
            },
        );
    }
    Ok(())
}
