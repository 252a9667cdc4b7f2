//! Keeping the files of configmap and secret volumes current in running pods: at once when the
//! cloud changes the object, and on every `syncFrequency` pass as a fallback (the kubelet's
//! configmap and secret managers do the same from their caches).

use super::*;

impl PodWorker {
    /// Rewrites the volumes of running pods made from `object` (every pod's when `None`). A
    /// volume whose object is gone keeps its files, as with the kubelet; the failure is logged.
    pub(super) async fn refresh_volumes(&mut self, object: Option<(VolumeSource, &str, &str)>) {
        let keys: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, rec)| rec.desired == Desired::Running && !rec.volumes.is_empty())
            .filter(|(_, rec)| {
                object.is_none_or(|(kind, namespace, name)| {
                    rec.pod.metadata.namespace == namespace
                        && volumes::uses(&rec.pod, kind == VolumeSource::Secret, name)
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            let Some(rec) = self.pods.get(&key) else {
                continue;
            };
            let mut objects = Objects::new(self.meta.as_ref(), &rec.pod.metadata.namespace);
            let refreshed = volumes::refresh(
                &self.settings.root_directory,
                &rec.pod,
                &self.node,
                &mut objects,
            )
            .await;
            match refreshed {
                Ok(changed) if changed.is_empty() => {}
                Ok(changed) => info!(pod = %key, volumes = ?changed, "volume files updated"),
                Err(error) => warn!(pod = %key, %error, "volume files not updated"),
            }
        }
        if object.is_none() {
            self.next_refresh = Instant::now() + self.settings.sync_frequency;
        }
    }
}
