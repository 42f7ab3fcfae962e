//! Whether JetStream can take tasks now, for `/readyz`. A background probe asks for the
//! `TASKS` stream's info every `PROBE_EVERY`: on a cluster the answer names the stream's
//! leader, and without one (an election after a node was lost, too few nodes for a quorum)
//! no task can be stored. `/readyz` reads the last verdict, so readiness costs a request
//! nothing and nats-server one stream-info request per second per gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use shared::names::TASKS_STREAM;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the probe asks: often enough that a load balancer sees an election within a
/// second or two of it starting.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe waits for the answer: a stream with a leader answers in milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The last verdict of the probe; ready until it says otherwise (the gateway has just
/// provisioned the stream when it starts).
#[derive(Debug, Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Readiness {
    /// Whether the last probe found a `TASKS` stream that can store a task.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Probes `TASKS` until `stop`.
    pub async fn probe(self, js: jetstream::Context, stop: CancellationToken) {
        let mut js = js;
        js.set_timeout(PROBE_TIMEOUT);
        let mut ticker = tokio::time::interval(PROBE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let verdict = match js.get_stream(TASKS_STREAM).await {
                // A single server has no cluster info; a cluster's names the leader, if any.
                Ok(stream) => match &stream.cached_info().cluster {
                    Some(cluster) if cluster.leader.is_none() => {
                        Err(format!("{TASKS_STREAM} has no leader"))
                    }
                    _ => Ok(()),
                },
                Err(e) => Err(e.to_string()),
            };
            let was = self.ready.swap(verdict.is_ok(), Ordering::Relaxed);
            match verdict {
                Err(why) if was => warn!(reason = %why, "JetStream cannot take tasks; not ready"),
                Ok(()) if !was => info!("JetStream takes tasks again; ready"),
                _ => {}
            }
        }
    }
}
