//! One pod's task: it owns the pod's record, and syncs it whenever its mailbox is written (a
//! cloud event, a probe verdict, a finished pull, the periodic pass) until the pod is gone.
//! Writes that arrive while a sync runs are folded into one: the next sync sees the newest.

use super::*;

/// What the dispatcher wants of a pod: the cloud's newest copy and whether it should run.
/// Every write wakes the task, also one that changes nothing (a request to sync now).
pub(super) struct Mailbox {
    pub(super) pod: Pod,
    /// Counts the copies of the pod put here; the task takes a copy when it moved.
    pub(super) pod_gen: u64,
    pub(super) desired: Desired,
    /// Counts the requests to rewrite the pod's configmap and secret volume files.
    pub(super) volumes_gen: u64,
}

pub(super) struct PodTask {
    shared: Arc<Shared>,
    rec: PodRecord,
    mailbox: watch::Receiver<Mailbox>,
    pod_gen: u64,
    volumes_gen: u64,
}

impl PodTask {
    /// The task of a new pod and the sending side of its mailbox.
    pub(super) fn new(
        shared: Arc<Shared>,
        pod: Pod,
        desired: Desired,
    ) -> (watch::Sender<Mailbox>, Self) {
        let mut rec = PodRecord::new(pod.clone());
        rec.desired = desired;
        let (tx, mailbox) = watch::channel(Mailbox {
            pod,
            pod_gen: 0,
            desired,
            volumes_gen: 0,
        });
        let task = Self {
            shared,
            rec,
            mailbox,
            pod_gen: 0,
            volumes_gen: 0,
        };
        (tx, task)
    }

    /// Syncs the pod at once and then on every write to the mailbox; returns once the pod is
    /// torn down for good (or the dispatcher is gone).
    pub(super) async fn run(mut self) {
        loop {
            let refresh = self.take_mail();
            if refresh && self.rec.desired == Desired::Running && !self.rec.volumes.is_empty() {
                self.shared.refresh_volumes(&self.rec).await;
            }
            if self.shared.sync_pod(&mut self.rec).await {
                return;
            }
            if self.mailbox.changed().await.is_err() {
                return;
            }
        }
    }

    /// Applies the mailbox to the record; true when the volume files are to be rewritten.
    fn take_mail(&mut self) -> bool {
        let mail = self.mailbox.borrow_and_update();
        if mail.pod_gen != self.pod_gen {
            self.pod_gen = mail.pod_gen;
            self.rec.update(mail.pod.clone());
        }
        // A pod, once asked to go, never comes back (only who tells the cloud may change).
        if mail.desired != Desired::Running {
            self.rec.desired = mail.desired;
        }
        let refresh = mail.volumes_gen != self.volumes_gen;
        self.volumes_gen = mail.volumes_gen;
        refresh
    }
}
