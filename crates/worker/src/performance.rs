//! Agents' records (steps that succeeded and failed, model time, review score) in the
//! `performance` bucket: updated by compare-and-set by whichever worker advances a workflow
//! with a step's result, read by routing from a local copy kept by a watch (no round trip
//! per decision), and by the gateway for `GET /v1/agents`.
//!
//! A step counts once: only when its result changed the workflow (a redelivered result
//! changes nothing). A crash between the two writes loses that one observation, which a
//! running record can afford; counting it twice would be the worse error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use agents::routing::Performance;
use async_nats::jetstream::kv;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Compare-and-set attempts per update: two steps of one agent finishing at once settle.
const CAS_TRIES: u32 = 8;

#[derive(Debug)]
pub(crate) struct Records {
    store: kv::Store,
    /// Each agent's record with the revision it came from.
    cache: Mutex<HashMap<String, (u64, Performance)>>,
}

impl Records {
    /// The records, kept current until `shutdown` by a task on `tracker`.
    pub fn start(
        store: kv::Store,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let records = Arc::new(Self {
            store,
            cache: Mutex::default(),
        });
        tracker.spawn({
            let records = records.clone();
            async move {
                let store = records.store.clone();
                shared::nats::follow_bucket(&store, "performance", &shutdown, |entry| {
                    records.take_in(&entry);
                })
                .await;
            }
        });
        records
    }

    /// `agent`'s record as last seen (a newcomer's when it has none).
    pub fn get(&self, agent: &str) -> Performance {
        self.lock().get(agent).map(|(_, p)| *p).unwrap_or_default()
    }

    /// Applies `change` to `agent`'s stored record. The first try writes over the local
    /// copy's revision without reading the bucket (the copy is usually current: this worker
    /// or the watch wrote it); a conflict reads the bucket and tries again. Best effort: a
    /// record that could not be written is logged, never a reason to fail the step.
    pub async fn update(&self, agent: &str, change: impl Fn(&mut Performance)) {
        let mut known = self.lock().get(agent).copied();
        for _ in 0..CAS_TRIES {
            let (revision, mut record) = match known.take() {
                Some((revision, record)) => (Some(revision), record),
                None => match self.store.entry(agent).await {
                    Ok(entry) => {
                        let entry = entry.filter(|e| e.operation == kv::Operation::Put);
                        let record = entry
                            .as_ref()
                            .and_then(|e| serde_json::from_slice(&e.value).ok())
                            .unwrap_or_default();
                        (entry.map(|e| e.revision), record)
                    }
                    Err(e) => {
                        debug!(error = %e, agent, "could not read an agent's record");
                        return;
                    }
                },
            };
            change(&mut record);
            let Ok(bytes) = serde_json::to_vec(&record) else {
                return;
            };
            let written = match revision {
                Some(revision) => self
                    .store
                    .update(agent, bytes.into(), revision)
                    .await
                    .map_err(|e| e.to_string()),
                None => self
                    .store
                    .create(agent, bytes.into())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(revision) => {
                    self.remember(agent, revision, record);
                    return;
                }
                Err(e) => debug!(error = %e, agent, "an agent's record changed meanwhile; again"),
            }
        }
        debug!(agent, "gave up updating an agent's record");
    }

    /// Keeps `record` at `revision` as `agent`'s, unless a newer one is in.
    fn remember(&self, agent: &str, revision: u64, record: Performance) {
        let mut cache = self.lock();
        if cache.get(agent).is_none_or(|(seen, _)| *seen < revision) {
            cache.insert(agent.to_owned(), (revision, record));
        }
    }

    fn take_in(&self, entry: &kv::Entry) {
        let mut cache = self.lock();
        if cache
            .get(&entry.key)
            .is_some_and(|(revision, _)| *revision >= entry.revision)
        {
            return;
        }
        match entry.operation {
            kv::Operation::Put => {
                if let Ok(record) = serde_json::from_slice(&entry.value) {
                    cache.insert(entry.key.clone(), (entry.revision, record));
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                cache.remove(&entry.key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Performance)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
