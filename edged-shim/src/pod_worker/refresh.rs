//! Keeping the files of configmap and secret volumes current in running pods: at once when the
//! cloud changes the object, and on every `syncFrequency` pass as a fallback (the kubelet's
//! configmap and secret managers do the same from their caches).

use super::*;

impl Shared {
    /// Rewrites the pod's configmap and secret volume files from the stored objects. A volume
    /// whose object is gone keeps its files, as with the kubelet; the failure is logged.
    pub(super) async fn refresh_volumes(&self, rec: &PodRecord) {
        let key = rec.pod.key();
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
}
