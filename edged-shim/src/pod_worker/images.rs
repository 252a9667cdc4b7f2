//! Image pulls with the pod's registry credentials.

use super::*;
use crate::env::Source;
use crate::keyring::Keyring;
use crate::runtime::RegistryAuth;

impl PodWorker {
    /// Credentials for `image` from the pod's `imagePullSecrets`, the best match first. A
    /// secret that is missing, unreadable or not a docker config is logged and skipped: the
    /// pull may still work without it (the kubelet does the same).
    pub(super) async fn pull_credentials(&self, pod: &Pod, image: &str) -> Vec<RegistryAuth> {
        if pod.spec.image_pull_secrets.is_empty() {
            return Vec::new();
        }
        let key = pod.key();
        let mut objects = Objects::new(self.meta.as_ref(), &pod.metadata.namespace);
        let mut keyring = Keyring::default();
        for secret in &pod.spec.image_pull_secrets {
            match objects.get(Source::Secret, &secret.name).await {
                Ok(Some(data)) => {
                    if let Err(why) = keyring.add_secret(&data) {
                        warn!(pod = %key, secret = %secret.name, "image pull secret skipped: {why}");
                    }
                }
                Ok(None) => {
                    warn!(pod = %key, secret = %secret.name, "image pull secret not found; the pull may fail");
                }
                Err(error) => {
                    warn!(pod = %key, secret = %secret.name, %error, "image pull secret not readable; the pull may fail");
                }
            }
        }
        keyring.lookup(image)
    }

    /// Pulls with each credential in turn until one works (anonymously when there are none);
    /// the last failure otherwise.
    pub(super) async fn pull(
        &self,
        image: &str,
        credentials: &[RegistryAuth],
    ) -> Result<String, RuntimeError> {
        let mut last = None;
        for auth in credentials {
            match self
                .call("PullImage", self.runtime.pull_image(image, Some(auth)))
                .await
            {
                Ok(reference) => return Ok(reference),
                Err(error) => last = Some(error),
            }
        }
        match last {
            Some(error) => Err(error),
            None => {
                self.call("PullImage", self.runtime.pull_image(image, None))
                    .await
            }
        }
    }
}
