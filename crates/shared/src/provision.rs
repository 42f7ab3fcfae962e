//! Idempotent create-or-update of every JetStream resource Switchyard uses: the `TASKS`
//! stream with one durable pull consumer per (capability, priority), the `EVENTS` stream and
//! the `results` bucket. Running it again with the same configuration changes nothing.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use crate::config::Config;
use crate::names::{
    ATTEMPTS_BUCKET, DLQ_STREAM, EVENTS_STREAM, EVENTS_SUBJECTS, PROVIDERS_BUCKET, RESULTS_BUCKET,
    TASKS_STREAM, TASKS_SUBJECTS, consumer_name, task_subject,
};
use tracing::warn;

use crate::{Capability, Priority};

/// How long JetStream remembers a `Nats-Msg-Id`: a client retrying a publish within this
/// window does not enqueue the task twice.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Rounds of provisioning before giving up, and the pause after the first failed one
/// (growing linearly).
const PROVISION_ROUNDS: u32 = 5;
const PROVISION_PAUSE: Duration = Duration::from_millis(200);
/// Pull requests a consumer keeps waiting at once; every worker holds one per priority.
const MAX_WAITING_PULLS: i64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("creating or updating stream {name}: {source}")]
    Stream {
        name: &'static str,
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("looking up stream {name}: {source}")]
    Lookup {
        name: &'static str,
        source: async_nats::jetstream::context::GetStreamError,
    },
    #[error("creating or updating consumer {name}: {source}")]
    Consumer {
        name: String,
        source: async_nats::jetstream::stream::ConsumerError,
    },
    #[error("creating or updating bucket {name}: {source}")]
    Bucket {
        name: &'static str,
        source: async_nats::jetstream::context::CreateKeyValueError,
    },
}

/// Handles to what was provisioned.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub tasks: stream::Stream,
    pub results: kv::Store,
    pub providers: kv::Store,
    pub attempts: kv::Store,
}

/// Creates or updates every stream, consumer and bucket `config` calls for.
///
/// Processes that start together (a gateway and workers) provision at the same moment, and
/// one's create can fail because another's just succeeded ("already in use"). Every step is
/// idempotent, so a failed round is simply run again a few times.
pub async fn provision(
    js: &jetstream::Context,
    config: &Config,
) -> Result<Provisioned, ProvisionError> {
    let mut round = 1;
    loop {
        match provision_once(js, config).await {
            Ok(done) => return Ok(done),
            Err(e) if round < PROVISION_ROUNDS => {
                warn!(error = %e, round, "provisioning round failed; trying again");
                tokio::time::sleep(PROVISION_PAUSE * round).await;
                round += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn provision_once(
    js: &jetstream::Context,
    config: &Config,
) -> Result<Provisioned, ProvisionError> {
    let replicas = config.nats.replicas;
    js.create_or_update_stream(tasks_stream_config(config))
        .await
        .map_err(|source| ProvisionError::Stream {
            name: TASKS_STREAM,
            source,
        })?;
    let tasks = js
        .get_stream(TASKS_STREAM)
        .await
        .map_err(|source| ProvisionError::Lookup {
            name: TASKS_STREAM,
            source,
        })?;
    for capability in config.capability_names() {
        for priority in Priority::ALL {
            let cfg = task_consumer_config(config, &capability, priority);
            let name = cfg.durable_name.clone().unwrap_or_default();
            tasks
                .create_consumer(cfg)
                .await
                .map_err(|source| ProvisionError::Consumer { name, source })?;
        }
    }
    js.create_or_update_stream(stream::Config {
        name: EVENTS_STREAM.to_owned(),
        description: Some("Switchyard lifecycle events".to_owned()),
        subjects: vec![EVENTS_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(config.events.max_age_secs),
        max_bytes: config.events.max_bytes,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|source| ProvisionError::Stream {
        name: EVENTS_STREAM,
        source,
    })?;
    let results = bucket(
        js,
        RESULTS_BUCKET,
        "Switchyard task results, one per task id",
        Duration::from_secs(config.results.ttl_secs),
        replicas,
    )
    .await?;
    js.create_or_update_stream(crate::dlq::stream_config(
        Duration::from_secs(config.dlq.max_age_secs),
        replicas,
    ))
    .await
    .map_err(|source| ProvisionError::Stream {
        name: DLQ_STREAM,
        source,
    })?;
    let providers = bucket(
        js,
        PROVIDERS_BUCKET,
        "Switchyard provider health shared by all workers",
        // A record nobody refreshed for a day is stale: forgetting it re-admits the key
        // or target, which is the safe way to be wrong.
        Duration::from_millis(crate::health::RECORD_TTL_MS),
        replicas,
    )
    .await?;
    let attempts = bucket(
        js,
        ATTEMPTS_BUCKET,
        "Switchyard attempts of tasks waiting for another delivery",
        Duration::from_secs(config.results.ttl_secs),
        replicas,
    )
    .await?;
    Ok(Provisioned {
        tasks,
        results,
        providers,
        attempts,
    })
}

async fn bucket(
    js: &jetstream::Context,
    name: &'static str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ProvisionError> {
    js.create_or_update_key_value(kv::Config {
        bucket: name.to_owned(),
        description: description.to_owned(),
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|source| ProvisionError::Bucket { name, source })
}

fn tasks_stream_config(config: &Config) -> stream::Config {
    stream::Config {
        name: TASKS_STREAM.to_owned(),
        description: Some("Switchyard task queues: tasks.<capability>.<priority>".to_owned()),
        subjects: vec![TASKS_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_messages: config.queue.max_msgs,
        max_bytes: config.queue.max_bytes,
        max_age: Duration::from_secs(config.queue.max_age_secs),
        storage: stream::StorageType::File,
        num_replicas: config.nats.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The durable pull consumer for one (capability, priority) queue.
pub fn task_consumer_config(
    config: &Config,
    capability: &Capability,
    priority: Priority,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(consumer_name(capability, priority)),
        description: Some(format!("workers for {capability} at {priority} priority")),
        filter_subject: task_subject(capability, priority),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.queue.ack_wait(),
        max_deliver: config.queue.max_deliver,
        max_ack_pending: config.capability(capability).max_in_flight,
        max_waiting: MAX_WAITING_PULLS,
        ..Default::default()
    }
}
