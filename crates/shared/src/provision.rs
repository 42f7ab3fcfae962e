//! Idempotent create-or-update of every JetStream resource Switchyard uses: the `TASKS`
//! stream with one durable pull consumer per (capability, priority), the `EVENTS` and
//! `THREADS` streams, the buckets and the `artifacts` object store. Running it again with the
//! same configuration changes nothing.
//!
//! The `TASKS` stream captures only `tasks.<capability>.<priority>` of configured
//! capabilities, so a publish to a queue nobody serves fails at once ("no responders")
//! instead of being stored and left to expire. Provisioning adds the subjects its
//! configuration names to those already there and never removes one: processes whose
//! configurations differ (a rolling change) do not take each other's queues away.

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::TryStreamExt;

use crate::agents::{AgentProfile, LiveCatalog};
use crate::config::Config;
use crate::names::{
    AGENTS_BUCKET, ARTIFACTS_STORE, ATTEMPTS_BUCKET, CONTEXT_BUCKET, DLQ_STREAM, EVENTS_STREAM,
    EVENTS_SUBJECTS, PERFORMANCE_BUCKET, PROVIDERS_BUCKET, RESULTS_BUCKET, TASKS_STREAM,
    THREADS_STREAM, TOOL_QUOTAS_BUCKET, WORKFLOWS_BUCKET, task_subject,
};
use tracing::warn;

use crate::{Capability, Priority};

/// How long JetStream remembers a `Nats-Msg-Id`: a client retrying a publish within this
/// window does not enqueue the task twice.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Rounds of provisioning before giving up on an error JetStream gives for good (a
/// conflicting configuration, a race between processes that one more round settles).
const PROVISION_ROUNDS: u32 = 5;
/// How long provisioning keeps trying while JetStream cannot take it yet: a cluster still
/// electing its meta leader after a start (JetStream "temporarily unavailable"), too few of
/// its nodes up for `nats.replicas` yet ("insufficient resources"), requests timing out
/// meanwhile. Three nodes started together form within seconds; an orchestrator restarting
/// them one by one may take tens of seconds.
pub const PROVISION_DEADLINE: Duration = Duration::from_secs(60);
/// Pause after the first failed round; the pauses double up to `PROVISION_PAUSE_CAP`.
const PROVISION_PAUSE: Duration = Duration::from_millis(200);
const PROVISION_PAUSE_CAP: Duration = Duration::from_secs(2);
/// How long the probe for a JetStream that answers at all waits for each answer: one that
/// answers does so in milliseconds.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The stream behind the `artifacts` object store (the object store's naming).
const ARTIFACTS_STREAM: &str = "OBJ_artifacts";
/// Pull requests a consumer keeps waiting at once; every worker holds one per priority.
const MAX_WAITING_PULLS: i64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("creating or updating stream {name}: {source}")]
    Stream {
        name: &'static str,
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error(
        "creating or updating stream {name}: it reserves {setting} = {max_bytes} bytes, more \
         than JetStream has left to reserve (nats-server's max_file_store, by default 75% of the \
         free disk, minus what other streams reserve): free disk space, raise max_file_store, \
         or lower {setting}"
    )]
    Storage {
        name: &'static str,
        setting: &'static str,
        max_bytes: i64,
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
    #[error(
        "stream {TASKS_STREAM} lacks subjects {missing:?} after updating it (another process \
         updated it at the same time)"
    )]
    SubjectsOverwritten { missing: Vec<String> },
    #[error("loading the agents: {0}")]
    Agents(String),
    #[error("removing an earlier version's consumers: {0}")]
    Stale(String),
    #[error("opening the artifacts store: {0}")]
    ObjectStore(String),
    #[error("creating or updating bucket {name}: {source}")]
    Bucket {
        name: &'static str,
        source: async_nats::jetstream::context::CreateKeyValueError,
    },
    #[error(
        "JetStream could not take the streams and buckets within {waited:?} (is every node of \
         the cluster up, and are there at least nats.replicas = {replicas} of them?): {last}"
    )]
    NotReady {
        waited: Duration,
        replicas: usize,
        /// The last error, as text (a refused round or an unanswered probe).
        last: String,
    },
}

impl ProvisionError {
    /// Whether JetStream could not do it *yet*: it timed out or said it is unavailable for
    /// now (HTTP-like code 503: no meta leader, too few nodes for the replicas).
    fn is_transient(&self) -> bool {
        let source: &(dyn std::error::Error + 'static) = match self {
            Self::Stream { source, .. } => source,
            Self::Lookup { source, .. } => source,
            Self::Consumer { source, .. } => source,
            Self::Bucket { source, .. } => source,
            Self::Storage { .. }
            | Self::SubjectsOverwritten { .. }
            | Self::Agents(_)
            | Self::Stale(_)
            | Self::ObjectStore(_)
            | Self::NotReady { .. } => return false,
        };
        std::iter::successors(Some(source), |e| e.source()).any(jetstream_not_yet)
    }
}

/// `request`'s answer, asked again while JetStream cannot answer it *yet* (it timed out or
/// said it is unavailable for now) for up to [`PROVISION_DEADLINE`]: what a process needs at
/// start-up while a cluster forms or elects leaders. Any other error is returned at once.
pub async fn patiently<T, F>(
    what: &str,
    mut request: impl FnMut() -> F,
) -> Result<T, async_nats::Error>
where
    F: Future<Output = Result<T, async_nats::Error>>,
{
    let started = tokio::time::Instant::now();
    let mut round = 0u32;
    loop {
        let e = match request().await {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        let pause = crate::backoff::full_jitter(PROVISION_PAUSE, PROVISION_PAUSE_CAP, round);
        let first: &(dyn std::error::Error + 'static) = &*e;
        let not_yet = std::iter::successors(Some(first), |e| e.source()).any(jetstream_not_yet);
        if !not_yet || started.elapsed() + pause >= PROVISION_DEADLINE {
            return Err(e);
        }
        warn!(error = %e, what, round, "JetStream cannot answer yet; asking again");
        tokio::time::sleep(pause).await;
        round = round.saturating_add(1);
    }
}

/// Whether `e` is a JetStream request that timed out or was answered "unavailable for now".
fn jetstream_not_yet(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::context::{
        AccountError, AccountErrorKind, ConsumerInfoError, ConsumerInfoErrorKind,
        CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
        GetStreamError, GetStreamErrorKind,
    };
    use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
    const UNAVAILABLE: usize = 503;
    if let Some(e) = e.downcast_ref::<jetstream::Error>() {
        return e.code() == UNAVAILABLE;
    }
    if let Some(e) = e.downcast_ref::<CreateStreamError>() {
        return match e.kind() {
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => true,
            CreateStreamErrorKind::JetStream(j) => j.code() == UNAVAILABLE,
            _ => false,
        };
    }
    // Creating a bucket asks for the account first.
    if let Some(e) = e.downcast_ref::<AccountError>() {
        return match e.kind() {
            AccountErrorKind::TimedOut => true,
            AccountErrorKind::JetStream(j) => j.code() == UNAVAILABLE,
            AccountErrorKind::JetStreamUnavailable | AccountErrorKind::Other => false,
        };
    }
    if let Some(e) = e.downcast_ref::<CreateKeyValueError>() {
        return e.kind() == CreateKeyValueErrorKind::TimedOut;
    }
    if let Some(e) = e.downcast_ref::<ConsumerError>() {
        return match e.kind() {
            ConsumerErrorKind::TimedOut => true,
            ConsumerErrorKind::JetStream(j) => j.code() == UNAVAILABLE,
            _ => false,
        };
    }
    // Looking a consumer up (a worker opening its queues): no leader yet, or none elected.
    if let Some(e) = e.downcast_ref::<ConsumerInfoError>() {
        return match e.kind() {
            ConsumerInfoErrorKind::TimedOut
            | ConsumerInfoErrorKind::NoResponders
            | ConsumerInfoErrorKind::Offline => true,
            ConsumerInfoErrorKind::JetStream(j) => j.code() == UNAVAILABLE,
            _ => false,
        };
    }
    if let Some(e) = e.downcast_ref::<GetStreamError>() {
        return match e.kind() {
            GetStreamErrorKind::Request => true,
            GetStreamErrorKind::JetStream(j) => j.code() == UNAVAILABLE,
            _ => false,
        };
    }
    false
}

/// Handles to what was provisioned.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub tasks: stream::Stream,
    /// The agents as configured, with the `agents` bucket's profiles laid over them; the
    /// caller keeps it current with [`LiveCatalog::follow`].
    pub agents: LiveCatalog,
    pub agents_bucket: kv::Store,
    /// Each agent's record, by name (JSON), updated by compare-and-set.
    pub performance: kv::Store,
    pub results: kv::Store,
    pub providers: kv::Store,
    pub attempts: kv::Store,
    pub workflows: kv::Store,
    /// Tool calls counted per quota window, by `<tool>.<scope>.<window>`.
    pub tool_quotas: kv::Store,
    /// The MCP tools being served (`crate::mcp`), written by the tools processes.
    pub mcp_tools: kv::Store,
    /// Shared context by `<scope>.<key>` (`crate::context`), with a bounded history.
    pub context: kv::Store,
    /// Large inputs and outputs, by id (`crate::artifacts`).
    pub artifacts: crate::artifacts::Artifacts,
}

/// Creates or updates every stream, consumer and bucket `config` calls for.
///
/// Processes that start together (a gateway and workers) provision at the same moment, and
/// one's create can fail because another's just succeeded ("already in use"). Every step is
/// idempotent, so a failed round is simply run again: a few times for such races, and for
/// up to [`PROVISION_DEADLINE`] while JetStream cannot take it yet (a cluster forming).
pub async fn provision(
    js: &jetstream::Context,
    config: &Config,
) -> Result<Provisioned, ProvisionError> {
    let started = tokio::time::Instant::now();
    jetstream_answers(js, config, started).await?;
    let mut round = 1u32;
    let mut refusals = 1u32;
    loop {
        let e = match provision_once(js, config).await {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        let pause = crate::backoff::full_jitter(PROVISION_PAUSE, PROVISION_PAUSE_CAP, round);
        if e.is_transient() {
            if started.elapsed() + pause >= PROVISION_DEADLINE {
                return Err(ProvisionError::NotReady {
                    waited: started.elapsed(),
                    replicas: config.nats.replicas,
                    last: e.to_string(),
                });
            }
        } else if refusals < PROVISION_ROUNDS {
            refusals += 1;
        } else {
            return Err(e);
        }
        warn!(error = %e, round, "provisioning round failed; trying again");
        tokio::time::sleep(pause).await;
        round = round.saturating_add(1);
    }
}

/// Waits (until [`PROVISION_DEADLINE`] from `started`) for JetStream to answer an account
/// query, which it does once a cluster has elected its meta leader. Until then every request
/// of a round would wait out the client's whole time-out (5 s) unanswered; a probe with a
/// short time-out notices the cluster forming within a second. Any other answer, an error
/// included, is left to the rounds to deal with.
async fn jetstream_answers(
    js: &jetstream::Context,
    config: &Config,
    started: tokio::time::Instant,
) -> Result<(), ProvisionError> {
    use async_nats::jetstream::context::AccountErrorKind;
    let mut probe = js.clone();
    probe.set_timeout(READY_PROBE_TIMEOUT);
    let mut attempt = 0u32;
    loop {
        let e = match probe.query_account().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let not_yet = match e.kind() {
            AccountErrorKind::TimedOut => true,
            AccountErrorKind::JetStream(j) => {
                j.error_code() == jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE
            }
            AccountErrorKind::JetStreamUnavailable | AccountErrorKind::Other => false,
        };
        if !not_yet {
            return Ok(());
        }
        let pause = crate::backoff::full_jitter(PROVISION_PAUSE, PROVISION_PAUSE_CAP, attempt);
        if started.elapsed() + pause >= PROVISION_DEADLINE {
            return Err(ProvisionError::NotReady {
                waited: started.elapsed(),
                replicas: config.nats.replicas,
                last: format!("asking JetStream for the account: {e}"),
            });
        }
        if attempt == 0 {
            warn!(error = %e, "JetStream does not answer yet (a cluster forming?); waiting for it");
        }
        tokio::time::sleep(pause).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Creates the stream `config` describes, or updates it if it exists with another
/// configuration. Create comes first: on a cluster, an update sent while another process's
/// create of the same stream is in flight goes unanswered, and so does that create (both
/// wait out the 5 s time-out; measured with two processes starting together), while two
/// creates of one stream both succeed.
async fn create_or_update_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Info, jetstream::context::CreateStreamError> {
    match js.create_stream(config.clone()).await {
        Ok(created) => Ok(created.cached_info().clone()),
        Err(e) if name_in_use(&e) => js.update_stream(config).await,
        Err(e) => Err(e),
    }
}

/// The bucket `config` describes, created or (existing with another configuration) updated;
/// create first, as [`create_or_update_stream`] says why.
async fn create_or_update_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, jetstream::context::CreateKeyValueError> {
    match js.create_key_value(config.clone()).await {
        Ok(store) => Ok(store),
        Err(e) if name_in_use(&e) => js.create_or_update_key_value(config).await,
        Err(e) => Err(e),
    }
}

/// Whether `e` says the stream exists with another configuration.
fn name_in_use(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<CreateStreamError>().is_some_and(|e| {
            matches!(e.kind(), CreateStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST)
        }) || e
            .downcast_ref::<jetstream::Error>()
            .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST)
    })
}

async fn provision_once(
    js: &jetstream::Context,
    config: &Config,
) -> Result<Provisioned, ProvisionError> {
    let replicas = config.nats.replicas;
    let agents_bucket = bucket(
        js,
        AGENTS_BUCKET,
        "Switchyard agent profiles added or replaced at runtime",
        // Kept until deleted.
        Duration::ZERO,
        replicas,
    )
    .await?;
    let agents = LiveCatalog::load(
        &agents_bucket,
        config.catalog.clone(),
        config.routes.keys().cloned().collect(),
        config.mcp.keys().cloned().collect(),
    )
    .await
    .map_err(|e| ProvisionError::Agents(e.to_string()))?;
    let catalog = agents.current();
    let queues: BTreeMap<Capability, i64> = config
        .capability_names()
        .into_iter()
        .filter(|c| !c.is_agent_queue())
        .map(|c| {
            let max_in_flight = config.capability(&c).max_in_flight;
            (c, max_in_flight)
        })
        .chain(
            catalog
                .agents
                .values()
                .filter_map(|a| Some((a.queue().ok()?, i64::from(a.max_concurrency)))),
        )
        .collect();
    let tasks = tasks_stream(js, config, queue_subjects(queues.keys())).await?;
    remove_per_priority_agent_consumers(&tasks).await?;
    for (capability, max_in_flight) in &queues {
        queue_consumers(&tasks, config, capability, *max_in_flight).await?;
    }
    create_or_update_stream(
        js,
        stream::Config {
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
        },
    )
    .await
    .map_err(|source| {
        stream_error(
            EVENTS_STREAM,
            "events.max_bytes",
            config.events.max_bytes,
            source,
        )
    })?;
    create_or_update_stream(js, crate::threads::stream_config(&config.threads, replicas))
        .await
        .map_err(|source| {
            stream_error(
                THREADS_STREAM,
                "threads.max_bytes",
                config.threads.max_bytes,
                source,
            )
        })?;
    let results =
        results_bucket(js, Duration::from_secs(config.results.ttl_secs), replicas).await?;
    let bounds = crate::dlq::Bounds {
        max_age: Duration::from_secs(config.dlq.max_age_secs),
        max_msgs: config.dlq.max_msgs,
        max_bytes: config.dlq.max_bytes,
    };
    create_or_update_stream(js, crate::dlq::stream_config(bounds, replicas))
        .await
        .map_err(|source| {
            stream_error(DLQ_STREAM, "dlq.max_bytes", config.dlq.max_bytes, source)
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
    let workflows = bucket(
        js,
        WORKFLOWS_BUCKET,
        "Switchyard workflow states, changed by compare-and-set",
        // Finished workflows go with their results.
        Duration::from_secs(config.results.ttl_secs),
        replicas,
    )
    .await?;
    let performance = bucket(
        js,
        PERFORMANCE_BUCKET,
        "Switchyard agents' records: steps, success, latency, review score",
        Duration::ZERO,
        replicas,
    )
    .await?;
    let tool_quotas = bucket(
        js,
        TOOL_QUOTAS_BUCKET,
        "Switchyard tool calls per quota window, shared by every worker",
        // A count outlives its window; a later window has keys of its own.
        Duration::from_secs(crate::config::MAX_QUOTA_WINDOW_SECS),
        replicas,
    )
    .await?;
    let mcp_tools = mcp_tools_bucket(js, replicas).await?;
    let context = context_bucket(js, replicas).await?;
    let artifacts = artifacts_store(js, config).await?;
    Ok(Provisioned {
        artifacts,
        context,
        tasks,
        tool_quotas,
        mcp_tools,
        performance,
        agents,
        agents_bucket,
        results,
        providers,
        attempts,
        workflows,
    })
}

/// The catalogue of MCP tools being served (`crate::mcp::MCP_TOOLS_BUCKET`). Entries
/// outlive their last refresh a little, so a reader sees them go stale
/// (`McpTool::is_fresh`) before they vanish.
pub async fn mcp_tools_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, ProvisionError> {
    bucket(
        js,
        crate::mcp::MCP_TOOLS_BUCKET,
        "Switchyard MCP tools being served: name, description, input schema",
        crate::mcp::STALE_AFTER * 2,
        replicas,
    )
    .await
}

/// The shared context bucket (`crate::context`): entries are kept until deleted, with
/// [`crate::context::HISTORY`] revisions per key so their writers can be shown.
pub async fn context_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, ProvisionError> {
    create_or_update_bucket(
        js,
        kv::Config {
            bucket: CONTEXT_BUCKET.to_owned(),
            description: "Switchyard shared context by <scope>.<key>, changed by compare-and-set"
                .to_owned(),
            history: crate::context::HISTORY,
            max_age: Duration::ZERO,
            // A value is at most `MAX_VALUE_BYTES` of JSON; the envelope adds little.
            max_value_size: i32::try_from(crate::context::MAX_VALUE_BYTES * 2).unwrap_or(i32::MAX),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .map_err(|source| ProvisionError::Bucket {
        name: CONTEXT_BUCKET,
        source,
    })
}

/// The `artifacts` object store (`crate::artifacts`). Its stream is created or updated
/// directly, with the settings `create_object_store` gives one, so a changed size or age
/// updates the store instead of failing as a different configuration.
pub async fn artifacts_store(
    js: &jetstream::Context,
    config: &Config,
) -> Result<crate::artifacts::Artifacts, ProvisionError> {
    let settings = &config.artifacts;
    create_or_update_stream(
        js,
        stream::Config {
            name: ARTIFACTS_STREAM.to_owned(),
            description: Some("Switchyard artifacts: large inputs and outputs, by id".to_owned()),
            subjects: vec![
                format!("$O.{ARTIFACTS_STORE}.C.>"),
                format!("$O.{ARTIFACTS_STORE}.M.>"),
            ],
            max_age: Duration::from_secs(settings.max_age_secs),
            max_bytes: settings.store_max_bytes,
            storage: stream::StorageType::File,
            num_replicas: config.nats.replicas,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            ..Default::default()
        },
    )
    .await
    .map_err(|source| {
        stream_error(
            ARTIFACTS_STREAM,
            "artifacts.store_max_bytes",
            settings.store_max_bytes,
            source,
        )
    })?;
    let store = js
        .get_object_store(ARTIFACTS_STORE)
        .await
        .map_err(|e| ProvisionError::ObjectStore(e.to_string()))?;
    Ok(crate::artifacts::Artifacts::new(store, settings.max_bytes))
}

async fn bucket(
    js: &jetstream::Context,
    name: &'static str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ProvisionError> {
    create_or_update_bucket(js, bucket_config(name, description, max_age, replicas))
        .await
        .map_err(|source| ProvisionError::Bucket { name, source })
}

fn bucket_config(
    name: &'static str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> kv::Config {
    kv::Config {
        bucket: name.to_owned(),
        description: description.to_owned(),
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The `results` bucket, one result per task id. The server republishes each stored
/// result on `results.<task id>` ([`crate::names::result_subject`]): the answer a gateway
/// waits for comes from the store itself, only once it is durable, with no second publish
/// by the worker.
async fn results_bucket(
    js: &jetstream::Context,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ProvisionError> {
    let config = kv::Config {
        republish: Some(stream::Republish {
            source: format!("$KV.{RESULTS_BUCKET}.>"),
            destination: crate::names::RESULTS_REPUBLISH.to_owned(),
            headers_only: false,
        }),
        ..bucket_config(
            RESULTS_BUCKET,
            "Switchyard task results, one per task id",
            max_age,
            replicas,
        )
    };
    create_or_update_bucket(js, config)
        .await
        .map_err(|source| ProvisionError::Bucket {
            name: RESULTS_BUCKET,
            source,
        })
}

/// Creates or updates `TASKS` with `wanted` added to the subjects it has; returns it.
///
/// Processes with the same configuration write the same list, so any number of them may
/// do this at once. Two with different configurations that read before either writes can
/// overwrite each other's addition; the check after writing turns that into a failed round,
/// which `provision` runs again (and the next read has the other's subjects).
async fn tasks_stream(
    js: &jetstream::Context,
    config: &Config,
    wanted: BTreeSet<String>,
) -> Result<stream::Stream, ProvisionError> {
    let existing = match js.get_stream(TASKS_STREAM).await {
        Ok(stream) => stream.cached_info().config.subjects.clone(),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Vec::new()
        }
        Err(source) => {
            return Err(ProvisionError::Lookup {
                name: TASKS_STREAM,
                source,
            });
        }
    };
    let subjects = merge_subjects(&existing, &wanted);
    let info = create_or_update_stream(js, tasks_stream_config(config, subjects))
        .await
        .map_err(|source| {
            stream_error(
                TASKS_STREAM,
                "queue.max_bytes",
                config.queue.max_bytes,
                source,
            )
        })?;
    let missing: Vec<String> = wanted
        .into_iter()
        .filter(|s| !info.config.subjects.contains(s))
        .collect();
    if !missing.is_empty() {
        return Err(ProvisionError::SubjectsOverwritten { missing });
    }
    js.get_stream(TASKS_STREAM)
        .await
        .map_err(|source| ProvisionError::Lookup {
            name: TASKS_STREAM,
            source,
        })
}

/// `tasks.<capability>.<priority>` for every one of `capabilities` and priority.
fn queue_subjects<'a>(capabilities: impl IntoIterator<Item = &'a Capability>) -> BTreeSet<String> {
    capabilities
        .into_iter()
        .flat_map(|c| Priority::ALL.map(|p| task_subject(c, p)))
        .collect()
}

/// The agents among `agents` whose queue subjects `TASKS` lacks (one stream-info call).
/// `TASKS` is updated by reading its subjects and writing the list back, so two processes
/// adding subjects at the same moment can drop each other's; whoever checks this repairs it.
pub async fn agents_missing_queues<'a>(
    js: &jetstream::Context,
    agents: impl IntoIterator<Item = &'a AgentProfile>,
) -> Result<Vec<&'a AgentProfile>, ProvisionError> {
    let tasks = js
        .get_stream(TASKS_STREAM)
        .await
        .map_err(|source| ProvisionError::Lookup {
            name: TASKS_STREAM,
            source,
        })?;
    let subjects: BTreeSet<String> = tasks
        .cached_info()
        .config
        .subjects
        .iter()
        .cloned()
        .collect();
    Ok(agents
        .into_iter()
        .filter(|a| {
            a.queue()
                .is_ok_and(|q| !queue_subjects([&q]).is_subset(&subjects))
        })
        .collect())
}

/// Adds an agent's queue (its subjects on `TASKS`, and its consumer capped at its
/// `max_concurrency`), or updates its cap: for an agent added or changed at runtime.
pub async fn agent_queue(
    js: &jetstream::Context,
    config: &Config,
    agent: &AgentProfile,
) -> Result<(), ProvisionError> {
    let capability = agent
        .queue()
        .map_err(|e| ProvisionError::Agents(e.to_string()))?;
    let tasks = tasks_stream(js, config, queue_subjects([&capability])).await?;
    queue_consumers(
        &tasks,
        config,
        &capability,
        i64::from(agent.max_concurrency),
    )
    .await
}

/// The subjects `TASKS` should capture: `wanted` plus every queue subject it already has,
/// sorted (so the same inputs give the same configuration). Anything else it has, such as
/// the `tasks.>` of earlier versions, goes: it would overlap the queue subjects and
/// accept tasks for capabilities nobody serves.
fn merge_subjects(existing: &[String], wanted: &BTreeSet<String>) -> Vec<String> {
    existing
        .iter()
        .filter(|s| is_queue_subject(s))
        .chain(wanted)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Whether `s` is `tasks.<capability>.<priority>` with valid tokens.
fn is_queue_subject(s: &str) -> bool {
    let mut tokens = s.split('.');
    tokens.next() == Some("tasks")
        && tokens
            .next()
            .is_some_and(|c| c.parse::<Capability>().is_ok())
        && tokens.next().is_some_and(|p| p.parse::<Priority>().is_ok())
        && tokens.next().is_none()
}

/// A stream that could not be created or updated; when JetStream refused it for want of
/// storage to reserve (10047), the error says which setting asked for how much.
fn stream_error(
    name: &'static str,
    setting: &'static str,
    max_bytes: i64,
    source: jetstream::context::CreateStreamError,
) -> ProvisionError {
    match source.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED =>
        {
            ProvisionError::Storage {
                name,
                setting,
                max_bytes,
            }
        }
        _ => ProvisionError::Stream { name, source },
    }
}

fn tasks_stream_config(config: &Config, subjects: Vec<String>) -> stream::Config {
    stream::Config {
        name: TASKS_STREAM.to_owned(),
        description: Some("Switchyard task queues: tasks.<capability>.<priority>".to_owned()),
        subjects,
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

/// Creates or updates the consumers of `capability`'s queue (see [`queue_consumers`]
/// for their shape), each taking at most `max_in_flight` unacked messages.
pub async fn queue_consumers(
    tasks: &stream::Stream,
    config: &Config,
    capability: &Capability,
    max_in_flight: i64,
) -> Result<(), ProvisionError> {
    for cfg in task_consumer_configs(config, capability, max_in_flight) {
        let name = cfg.durable_name.clone().unwrap_or_default();
        tasks
            .create_consumer(cfg)
            .await
            .map_err(|source| ProvisionError::Consumer { name, source })?;
    }
    Ok(())
}

/// The durable pull consumers of `capability`'s queue.
pub fn task_consumer_configs(
    config: &Config,
    capability: &Capability,
    max_in_flight: i64,
) -> Vec<consumer::pull::Config> {
    crate::names::queue_consumers(capability)
        .into_iter()
        .map(|queue| {
            let subjects: Vec<String> = queue
                .priorities
                .iter()
                .map(|p| task_subject(capability, *p))
                .collect();
            let (filter_subject, filter_subjects) = match subjects.as_slice() {
                [one] => (one.clone(), Vec::new()),
                _ => (String::new(), subjects),
            };
            let description = match queue.priorities.as_slice() {
                [p] => format!("workers for {capability} at {p} priority"),
                _ => format!("workers for {capability}, every priority"),
            };
            consumer::pull::Config {
                durable_name: Some(queue.name),
                description: Some(description),
                filter_subject,
                filter_subjects,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: config.queue.ack_wait(),
                max_deliver: config.queue.max_deliver,
                max_ack_pending: max_in_flight,
                max_waiting: MAX_WAITING_PULLS,
                ..Default::default()
            }
        })
        .collect()
}

/// Deletes the per-priority consumers of agents' queues that earlier versions made: they
/// would overlap the one consumer over all priorities, which a work queue refuses.
async fn remove_per_priority_agent_consumers(tasks: &stream::Stream) -> Result<(), ProvisionError> {
    let lookup = |e: async_nats::Error| ProvisionError::Stale(e.to_string());
    let consumers: Vec<consumer::Info> = tasks
        .consumers()
        .try_collect()
        .await
        .map_err(|e| lookup(e.into()))?;
    for info in consumers {
        // One priority of an agent's queue: `tasks.agent-<name>.<priority>`.
        let mut tokens = info.config.filter_subject.split('.');
        let stale = tokens.next() == Some("tasks")
            && tokens
                .next()
                .and_then(|c| c.parse::<Capability>().ok())
                .is_some_and(|c| c.is_agent_queue())
            && tokens.next().is_some_and(|p| p.parse::<Priority>().is_ok());
        if stale {
            warn!(consumer = %info.name, "removing an agent queue's per-priority consumer of an earlier version");
            match tasks.delete_consumer(&info.name).await {
                Ok(_) => {}
                // Another process starting at the same time removed it first.
                Err(e)
                    if matches!(e.kind(), stream::ConsumerErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {}
                Err(e) => return Err(lookup(e.into())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(subjects: &[&str]) -> BTreeSet<String> {
        subjects.iter().map(|s| (*s).to_owned()).collect()
    }

    fn api(code: usize, err_code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({"code": code, "err_code": err_code})).unwrap()
    }

    /// Which failed rounds wait for a forming cluster (until the deadline) and which count
    /// as refusals, in the shapes async-nats reports them.
    #[test]
    fn unavailable_and_timed_out_rounds_are_transient() {
        use async_nats::jetstream::context::{
            AccountError, AccountErrorKind, CreateKeyValueError, CreateKeyValueErrorKind,
            CreateStreamError, CreateStreamErrorKind,
        };
        let bucket = |source| ProvisionError::Bucket {
            name: "agents",
            source,
        };
        // A bucket's create asks for the account first: "temporarily unavailable" there.
        let account = AccountError::new(AccountErrorKind::JetStream(api(503, 10008)));
        let e = bucket(CreateKeyValueError::with_source(
            CreateKeyValueErrorKind::JetStream,
            account,
        ));
        assert!(e.is_transient());
        let timed_out = CreateKeyValueError::new(CreateKeyValueErrorKind::TimedOut);
        assert!(bucket(timed_out).is_transient());
        // Too few nodes for the replicas yet.
        let stream = |j| ProvisionError::Stream {
            name: "TASKS",
            source: CreateStreamError::new(CreateStreamErrorKind::JetStream(j)),
        };
        assert!(stream(api(503, 10023)).is_transient());
        assert!(!stream(api(400, 10058)).is_transient());
        let storage = ProvisionError::Storage {
            name: "TASKS",
            setting: "queue.max_bytes",
            max_bytes: 1,
        };
        assert!(!storage.is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_lookup_is_asked_again_while_jetstream_cannot_answer_yet() {
        use async_nats::jetstream::context::{ConsumerInfoError, ConsumerInfoErrorKind};
        let asked = std::cell::Cell::new(0u32);
        let answer = patiently("tasks-chat-normal", || {
            asked.set(asked.get() + 1);
            let n = asked.get();
            async move {
                match n {
                    1 => Err(ConsumerInfoError::new(ConsumerInfoErrorKind::TimedOut).into()),
                    2 => Err(ConsumerInfoError::new(ConsumerInfoErrorKind::Offline).into()),
                    _ => Ok::<_, async_nats::Error>(n),
                }
            }
        })
        .await;
        assert_eq!(answer.unwrap(), 3);
        // A definite answer is not asked again.
        asked.set(0);
        let refused = patiently("tasks-chat-normal", || {
            asked.set(asked.get() + 1);
            async {
                Err::<(), async_nats::Error>(
                    ConsumerInfoError::new(ConsumerInfoErrorKind::NotFound).into(),
                )
            }
        })
        .await;
        assert!(refused.is_err());
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn subjects_are_added_never_removed_and_sorted() {
        let existing = ["tasks.coder.low".to_owned(), "tasks.chat.high".to_owned()];
        let merged = merge_subjects(&existing, &set(&["tasks.chat.high", "tasks.chat.normal"]));
        assert_eq!(
            merged,
            ["tasks.chat.high", "tasks.chat.normal", "tasks.coder.low"]
        );
        assert_eq!(merge_subjects(&merged, &set(&[])), merged);
    }

    #[test]
    fn a_catch_all_subject_is_replaced() {
        let existing = [
            "tasks.>".to_owned(),
            "tasks.*.high".to_owned(),
            "tasks.chat.urgent".to_owned(),
            "tasks.chat.high.x".to_owned(),
        ];
        assert_eq!(
            merge_subjects(&existing, &set(&["tasks.chat.high"])),
            ["tasks.chat.high"]
        );
    }
}
