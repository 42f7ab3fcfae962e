//! How many tasks wait on or run from each agent's queue, for routing a workflow's steps.
//! JetStream's own books say it (one stream-info call over every queue subject), but asking
//! them for every event a worker applies cost a round trip on each step's critical path and
//! a tenth of nats-server's work (docs/benchmarks.md, scenario 6). So a sample is shared by
//! every event for `FRESH`, as the gateway's admission shares its queue samples, and what
//! this worker saw happen since corrects it: the steps it sent are added (a burst of events
//! does not pile onto an agent the sample still shows idle) and the steps it saw finish are
//! taken off (a finished step no longer counts against its agent).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use shared::agents::QUEUE_PREFIX;
use shared::names::TASKS_STREAM;
use tokio::time::Instant;
use tracing::debug;

/// How long one sample serves: routing weighs queues of a few tasks against a few more, so
/// half a second old is close enough (the gateway's admission samples as often).
const FRESH: Duration = Duration::from_millis(500);
/// How long a sample may stand in while new ones cannot be read; past it, steps are routed
/// without load, as when there never was a sample.
const STALE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(crate) struct QueueLoad {
    sample: Mutex<Sample>,
}

#[derive(Debug, Default)]
struct Sample {
    taken: Option<Instant>,
    /// Messages on each agent's queue, by agent name, when the sample was taken.
    queued: HashMap<String, u64>,
    /// Steps this worker sent to each agent since.
    sent_since: HashMap<String, u64>,
    /// Steps of each agent this worker saw finish since.
    finished_since: HashMap<String, u64>,
}

impl Sample {
    fn younger_than(&self, age: Duration, now: Instant) -> bool {
        self.taken.is_some_and(|t| now.duration_since(t) < age)
    }

    fn current(&self) -> HashMap<String, u64> {
        let mut queued = self.queued.clone();
        for (agent, sent) in &self.sent_since {
            let n = queued.entry(agent.clone()).or_default();
            *n = n.saturating_add(*sent);
        }
        for (agent, finished) in &self.finished_since {
            if let Some(n) = queued.get_mut(agent) {
                *n = n.saturating_sub(*finished);
            }
        }
        queued
    }
}

impl QueueLoad {
    /// Each agent's queued tasks: the shared sample while it is fresh, else a new one. When
    /// the stream cannot be read, the last sample stands in for up to `STALE` (the next call
    /// tries again); after that, nothing is known.
    pub(crate) async fn read(&self, js: &jetstream::Context) -> HashMap<String, u64> {
        {
            let sample = self.lock();
            if sample.younger_than(FRESH, Instant::now()) {
                return sample.current();
            }
        }
        let taken = Instant::now();
        let queued = ask(js).await;
        let mut sample = self.lock();
        match queued {
            Some(queued) if sample.taken.is_none_or(|t| t < taken) => {
                *sample = Sample {
                    taken: Some(taken),
                    queued,
                    ..Sample::default()
                };
            }
            Some(_) => {}
            None if !sample.younger_than(STALE, Instant::now()) => return HashMap::new(),
            None => {}
        }
        sample.current()
    }

    /// Counts a step this worker published to `agent`'s queue.
    pub(crate) fn sent(&self, agent: &str) {
        count(&mut self.lock().sent_since, agent);
    }

    /// Counts a step of `agent` that this worker saw finish.
    pub(crate) fn finished(&self, agent: &str) {
        count(&mut self.lock().finished_since, agent);
    }

    fn lock(&self) -> MutexGuard<'_, Sample> {
        self.sample.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn count(counts: &mut HashMap<String, u64>, agent: &str) {
    let n = counts.entry(agent.to_owned()).or_default();
    *n = n.saturating_add(1);
}

/// One stream-info call over every queue subject (a wildcard is a whole token, so
/// `tasks.agent-*.*` would match nothing), summed per agent.
async fn ask(js: &jetstream::Context) -> Option<HashMap<String, u64>> {
    let stream = js
        .get_stream_no_info(TASKS_STREAM)
        .await
        .inspect_err(|e| debug!(error = %e, "could not read agents' queues; routing without load"))
        .ok()?;
    let subjects = stream
        .info_with_subjects("tasks.*.*")
        .await
        .inspect_err(|e| debug!(error = %e, "could not read agents' queues; routing without load"))
        .ok()?;
    let mut queued = HashMap::new();
    let counts: Vec<_> = subjects.collect().await;
    for (subject, count) in counts.into_iter().flatten() {
        let agent = subject
            .split('.')
            .nth(1)
            .and_then(|q| q.strip_prefix(QUEUE_PREFIX));
        if let Some(agent) = agent {
            let n: &mut u64 = queued.entry(agent.to_owned()).or_default();
            *n = n.saturating_add(u64::try_from(count).unwrap_or(u64::MAX));
        }
    }
    Some(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_sent_and_finished_since_the_sample_correct_it() {
        let load = QueueLoad::default();
        {
            let mut sample = load.lock();
            sample.taken = Some(Instant::now());
            sample.queued.insert("a1".to_owned(), 2);
        }
        load.sent("a1");
        load.sent("a2");
        load.sent("a2");
        load.finished("a2");
        load.finished("a3");
        let now = load.lock().current();
        assert_eq!(now.get("a1"), Some(&3));
        assert_eq!(now.get("a2"), Some(&1));
        assert_eq!(now.get("a3"), None);
        for _ in 0..5 {
            load.finished("a1");
        }
        assert_eq!(load.lock().current().get("a1"), Some(&0));
        let sample = load.lock();
        assert!(sample.younger_than(FRESH, Instant::now()));
        assert!(!sample.younger_than(FRESH, Instant::now() + FRESH));
        assert!(!Sample::default().younger_than(STALE, Instant::now()));
    }
}
