//! The write storm: a seeded stream of inserts, updates and deletes of configmaps, secrets and
//! pods in the cluster state, paced by a timer, until stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use super::Rng;
use crate::cluster::Cluster;
use crate::feed::{self, FeedKind};

/// Writes done by a storm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StormStats {
    /// Objects created (a name may be created again after a delete, with a new uid).
    pub inserts: u64,
    /// Updates of a live object.
    pub updates: u64,
    /// Deletes of a live object.
    pub deletes: u64,
}

impl StormStats {
    /// All writes.
    pub fn total(&self) -> u64 {
        self.inserts + self.updates + self.deletes
    }
}

/// A running storm; [`Storm::stop`] ends it.
#[derive(Debug)]
pub struct Storm {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<StormStats>>,
}

impl Storm {
    /// Starts writing one change every `period` over `pool` names (configmap, secret, pod in
    /// turn): a name that is absent is created; a live one is updated (85 %) or deleted (15 %).
    pub fn start(cluster: Arc<Cluster>, seed: u64, period: Duration, pool: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut rng = Rng::new(seed);
            // Per name: the version last written, `None` while absent.
            let mut live: Vec<Option<usize>> = vec![None; pool.max(1)];
            let mut stats = StormStats::default();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let i = rng.below(live.len() as u64) as usize;
                let kind = FeedKind::Mixed.kind_of(i);
                let slot = live.get_mut(i).context("storm index in range")?;
                let step = match *slot {
                    None => Step::Write(0),
                    Some(_) if rng.below(100) < 15 => Step::Delete,
                    Some(v) => Step::Write(v + 1),
                };
                let c = Arc::clone(&cluster);
                tokio::task::spawn_blocking(move || -> Result<()> {
                    match step {
                        Step::Write(v) => feed::write(&c, kind, i, v).map(|_| ()),
                        Step::Delete => c
                            .delete(kind, feed::NAMESPACE, &feed::name_of(kind, i))
                            .map(|_| ()),
                    }
                })
                .await
                .context("storm write task")??;
                match step {
                    Step::Write(0) => stats.inserts += 1,
                    Step::Write(_) => stats.updates += 1,
                    Step::Delete => stats.deletes += 1,
                }
                *slot = match step {
                    Step::Write(v) => Some(v),
                    Step::Delete => None,
                };
            }
            Ok(stats)
        });
        Self { stop, task }
    }

    /// Ends the storm after the write in progress; the counts, or the first write error.
    pub async fn stop(self) -> Result<StormStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("storm task")?
    }

    /// The storm ended by itself (a write failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Write(usize),
    Delete,
}
