//! Image pulls with the pod's registry credentials.

use super::*;
use crate::env::Source;
use crate::keyring::Keyring;
use crate::runtime::RegistryAuth;

impl Shared {
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

    /// The image pull for `pod`: `None` while it runs (it is started here when none runs),
    /// then its result once. A pull runs as its own task, without the runtime request timeout
    /// (large images on slow links take long): a slow or hung pull holds up no other pod and
    /// no status report. When it ends, the pods that waited for it are synced.
    pub(super) async fn pull_job(
        &self,
        pod: &Pod,
        image: &str,
    ) -> Option<Result<String, RuntimeError>> {
        let key = pod.key();
        let finished = {
            let mut pulls = lock(&self.pulls);
            match pulls.get(image) {
                Some(job) if !job.handle.is_finished() => {
                    lock(&job.waiters).insert(key);
                    return None;
                }
                Some(_) => pulls.remove(image),
                None => None,
            }
        };
        // A finished pull this pod did not wait for is stale for it: pull afresh.
        if let Some(job) = finished
            && lock(&job.waiters).contains(&key)
        {
            return Some(job.handle.await.unwrap_or_else(|e| {
                Err(RuntimeError::Call {
                    call: "PullImage",
                    message: format!("the pull task ended: {e}"),
                })
            }));
        }
        let credentials = self.pull_credentials(pod, image).await;
        let mut pulls = lock(&self.pulls);
        if let Some(job) = pulls.get(image)
            && !job.handle.is_finished()
        {
            // Another pod started it meanwhile.
            lock(&job.waiters).insert(key);
            return None;
        }
        info!(pod = %key, %image, credentials = credentials.len(), "pulling image");
        let waiters = Arc::new(Mutex::new(std::collections::HashSet::from([key])));
        let (runtime, wake, image_owned) =
            (self.runtime.clone(), self.wake.clone(), image.to_owned());
        let notify = waiters.clone();
        let handle = tokio::spawn(async move {
            let result = pull(runtime.as_ref(), &image_owned, &credentials).await;
            let keys: Vec<String> = lock(&notify).iter().cloned().collect();
            for key in keys {
                // A full wake channel means syncs are coming anyway.
                let _ = wake.try_send(key);
            }
            result
        });
        pulls.insert(
            image.to_owned(),
            PullJob {
                handle: tokio_util::task::AbortOnDropHandle::new(handle),
                waiters,
            },
        );
        None
    }
}

/// A running image pull; dropped (the worker stops), it is aborted.
pub(super) struct PullJob {
    handle: tokio_util::task::AbortOnDropHandle<Result<String, RuntimeError>>,
    /// Pods to sync when it ends.
    waiters: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Pulls with each credential in turn until one works (anonymously when there are none); the
/// last failure otherwise.
async fn pull(
    runtime: &dyn Runtime,
    image: &str,
    credentials: &[RegistryAuth],
) -> Result<String, RuntimeError> {
    let mut last = None;
    for auth in credentials {
        match runtime.pull_image(image, Some(auth)).await {
            Ok(reference) => return Ok(reference),
            Err(error) => last = Some(error),
        }
    }
    match last {
        Some(error) => Err(error),
        None => runtime.pull_image(image, None).await,
    }
}
