//! Switchyard's worker: pulls tasks for its capabilities from JetStream (never more than it
//! has free slots), calls LLM providers (and, in the tool loop, the built-in tools the task
//! may use), stores one result per task and delivers it, then acks. Stateless: start as
//! many as the load needs. Draining on shutdown stops pulling, finishes in-flight tasks
//! within a grace period, then returns.

mod action;
mod answer;
mod assemble;
mod backoff;
mod call_limit;
mod cancel;
mod deps;
mod failover;
mod health;
mod orchestrate;
mod performance;
mod plan;
mod probe;
mod process;
mod progress;
pub mod provider;
mod pull;
mod queue_load;
mod refuse;
mod relay;
mod step_inputs;
mod threads;
mod tool_loop;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_nats::jetstream;
use shared::Capability;
use shared::config::Config;
use shared::names::{TASKS_STREAM, queue_consumers};
use shared::provision::{ProvisionError, provision};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cancel::Cancellations;
use crate::deps::{Deps, Routing};
use crate::health::Health;
use crate::pull::{Fetcher, Queue, Queues};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("opening consumer {name}: {source}")]
    Consumer {
        name: String,
        source: async_nats::Error,
    },
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("a fetch loop stopped unexpectedly")]
    FetcherDied,
    #[error("loading the MCP tools catalogue: {0}")]
    McpTools(String),
    #[error("listening for probes on {addr}: {source}")]
    Probe {
        addr: String,
        source: std::io::Error,
    },
}

/// A fresh worker id: short, unique, and safe in logs and results.
pub fn new_worker_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("worker-{}", &id[id.len() - 12..])
}

/// The consumers of `capability`'s queue, highest priority first.
async fn open_queue(
    tasks: &jetstream::stream::Stream,
    capability: &Capability,
) -> Result<Queues, WorkerError> {
    let mut consumers = Vec::new();
    for queue in queue_consumers(capability) {
        // Right after provisioning on a cluster, the consumer may still be electing a leader.
        let consumer =
            shared::provision::patiently(&queue.name, || tasks.get_consumer(&queue.name))
                .await
                .map_err(|source| WorkerError::Consumer {
                    name: queue.name.clone(),
                    source,
                })?;
        let priorities = match queue.priorities.as_slice() {
            [one] => one.as_str(),
            _ => "any",
        };
        consumers.push(Queue {
            priorities,
            consumer,
        });
    }
    Ok(Queues {
        consumers,
        drains: AtomicU64::new(0),
    })
}

/// What a fetcher needs besides its queues.
#[derive(Debug, Clone)]
struct FetcherTemplate {
    deps: Arc<Deps>,
    handlers: TaskTracker,
    concurrency: usize,
}

impl FetcherTemplate {
    fn fetcher(&self, queues: Queues) -> Fetcher {
        Fetcher {
            queues: Arc::new(queues),
            slots: Arc::new(Semaphore::new(self.concurrency)),
            deps: self.deps.clone(),
            handlers: self.handlers.clone(),
            idle_wait: pull::long_poll_for(self.concurrency),
        }
    }
}

/// How often a worker checks that every agent's queue is on `TASKS` and served.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// The fetchers of agents added at runtime.
struct RuntimeAgents {
    js: jetstream::Context,
    config: Arc<Config>,
    tasks: jetstream::stream::Stream,
    template: FetcherTemplate,
    /// Queues served from the start (the configuration's).
    fixed: BTreeSet<Capability>,
    fetchers: TaskTracker,
}

/// Starts fetchers for each agent added at runtime, and stops them when it is removed,
/// until `shutdown`. Every `RECONCILE_EVERY` it also puts back any agent's queue subjects
/// that a concurrent update of `TASKS` dropped, and retries queues it could not open.
async fn serve_runtime_agents(
    agents: RuntimeAgents,
    mut catalog: tokio::sync::watch::Receiver<Arc<shared::agents::Catalog>>,
    shutdown: CancellationToken,
) {
    let mut running: HashMap<Capability, CancellationToken> = HashMap::new();
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let current = catalog.borrow_and_update().clone();
        match shared::provision::agents_missing_queues(&agents.js, current.agents.values()).await {
            Ok(missing) => {
                for agent in missing {
                    warn!(agent = %agent.name, "an agent's queue was missing from the task stream; adding it back");
                    if let Err(e) =
                        shared::provision::agent_queue(&agents.js, &agents.config, agent).await
                    {
                        warn!(agent = %agent.name, error = %e, "could not add an agent's queue back");
                    }
                }
            }
            Err(e) => debug!(error = %e, "could not check the agents' queues"),
        }
        let wanted: BTreeSet<Capability> = current
            .agents
            .values()
            .filter_map(|a| a.queue().ok())
            .filter(|q| !agents.fixed.contains(q))
            .collect();
        running.retain(|queue, stop| {
            let keep = wanted.contains(queue);
            if !keep {
                info!(queue = %queue, "agent removed; its fetchers stop");
                stop.cancel();
            }
            keep
        });
        for queue in wanted {
            if running.contains_key(&queue) {
                continue;
            }
            match open_queue(&agents.tasks, &queue).await {
                Ok(queues) => {
                    info!(queue = %queue, "agent added; serving its queue");
                    let stop = shutdown.child_token();
                    let fetcher = agents.template.fetcher(queues);
                    for own in 0..fetcher.queues.consumers.len() {
                        agents
                            .fetchers
                            .spawn(fetcher.clone().run(own, stop.clone()));
                    }
                    running.insert(queue, stop);
                }
                // Tried again on the next change; the agent's steps wait in its queue.
                Err(e) => warn!(queue = %queue, error = %e, "cannot serve an added agent yet"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = catalog.changed() => if changed.is_err() { return },
            _ = reconcile.tick() => {}
        }
    }
}

/// Runs a worker until `shutdown` is cancelled, then drains.
pub async fn run(
    config: Arc<Config>,
    client: async_nats::Client,
    worker_id: String,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    // The probes first: liveness holds while provisioning waits for a forming cluster.
    let probe = probe::Probe::new(client.clone());
    let probes = TaskTracker::new();
    let probes_stop = CancellationToken::new();
    if let Some(addr) = &config.worker.health_listen {
        let listener = tokio::net::TcpListener::bind(addr.as_str())
            .await
            .map_err(|source| WorkerError::Probe {
                addr: addr.clone(),
                source,
            })?;
        probes.spawn(probe::serve(listener, probe.clone(), probes_stop.clone()));
    }
    // Stopped on every way out, an early error included.
    let _stop_probes = probes_stop.clone().drop_guard();
    let js = jetstream::new(client.clone());
    let provisioned = provision(&js, &config).await?;
    let http = provider::http_client()?;
    let background = TaskTracker::new();
    let health_stop = CancellationToken::new();
    let health = Health::start(
        provisioned.providers.clone(),
        config.health.clone(),
        &background,
        // Stopped after the drain, so the last successes are shared too.
        health_stop.clone(),
    );
    let mut queues = Vec::new();
    for capability in config.worker_capabilities() {
        let consumers = open_queue(&provisioned.tasks, &capability).await?;
        queues.push((capability, consumers));
    }
    // The server's max_deliver is the one that counts (another process may have provisioned).
    let max_deliver = queues
        .iter()
        .flat_map(|(_, q)| &q.consumers)
        .map(|q| q.consumer.cached_info().config.max_deliver)
        .filter(|m| *m > 0)
        .min()
        .unwrap_or(config.queue.max_deliver);
    // Loaded before any task is pulled, so a task naming an MCP tool finds it at once.
    let mcp_tools = shared::mcp::LiveMcpTools::load(&provisioned.mcp_tools)
        .await
        .map_err(|e| WorkerError::McpTools(e.to_string()))?;
    let deps = Arc::new(Deps {
        client: client.clone(),
        js: js.clone(),
        results: provisioned.results,
        attempts: provisioned.attempts,
        health,
        routing: Routing::new(&config, &http),
        worker_id: worker_id.clone(),
        ack_wait: config.queue.ack_wait(),
        max_deliver,
        reply_prefixes: config.queue.reply_prefixes.clone(),
        blocking: background.clone(),
        workflows: provisioned.workflows,
        context: shared::context::Context::new(js.clone(), provisioned.context),
        artifacts: provisioned.artifacts,
        tool_quotas: provisioned.tool_quotas,
        agents: provisioned.agents.clone(),
        mcp_tools,
        config: config.clone(),
        queue_load: queue_load::QueueLoad::default(),
        performance: performance::Records::start(
            provisioned.performance.clone(),
            &background,
            health_stop.clone(),
        ),
        // A notice matters while its task can still run: until the longest deadline.
        cancellations: Cancellations::new(Duration::from_millis(config.gateway.max_timeout_ms)),
    });
    background.spawn({
        let (deps, client, stop) = (deps.clone(), client.clone(), health_stop.clone());
        async move { deps.cancellations.listen(client, stop).await }
    });
    // Stopped after the drain, like health: the records go when the last call is over.
    background.spawn(call_limit::share(
        deps.routing.limits(),
        provisioned.providers.clone(),
        worker_id.clone(),
        health_stop.clone(),
    ));
    let handlers = TaskTracker::new();
    let mut fetchers = JoinSet::new();
    let capabilities: Vec<_> = queues.iter().map(|(c, _)| c.clone()).collect();
    let template = FetcherTemplate {
        deps: deps.clone(),
        handlers: handlers.clone(),
        concurrency: config.worker.concurrency,
    };
    for (_, queues) in queues {
        let fetcher = template.fetcher(queues);
        for own in 0..fetcher.queues.consumers.len() {
            fetchers.spawn(fetcher.clone().run(own, shutdown.clone()));
        }
    }
    background.spawn(
        provisioned
            .agents
            .clone()
            .follow(provisioned.agents_bucket.clone(), health_stop.clone()),
    );
    background.spawn(
        deps.mcp_tools
            .clone()
            .follow(provisioned.mcp_tools.clone(), health_stop.clone()),
    );
    // Agents added at runtime get fetchers of their own, on a worker that serves every
    // capability (one with a list serves what it lists).
    let runtime_fetchers = TaskTracker::new();
    if config.worker.capabilities.is_empty() {
        background.spawn(serve_runtime_agents(
            RuntimeAgents {
                js: js.clone(),
                config: config.clone(),
                tasks: provisioned.tasks.clone(),
                template: template.clone(),
                fixed: capabilities.iter().cloned().collect(),
                fetchers: runtime_fetchers.clone(),
            },
            provisioned.agents.subscribe(),
            shutdown.clone(),
        ));
    }
    probe.set_fetching(true);
    let names: Vec<&str> = capabilities.iter().map(|c| c.as_str()).collect();
    info!(
        worker_id,
        stream = TASKS_STREAM,
        capabilities = ?names,
        concurrency = config.worker.concurrency,
        "worker started"
    );

    // Fetch loops end on their own when shutdown comes (even one that came during
    // startup): only one that ends before it has died.
    let died = tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        Some(_) = fetchers.join_next() => !shutdown.is_cancelled(),
    };
    if died {
        warn!("a fetch loop stopped; shutting the worker down");
        shutdown.cancel();
    }
    probe.set_fetching(false);
    info!(
        in_flight = handlers.len(),
        "draining: no new pulls; finishing in-flight tasks"
    );
    while fetchers.join_next().await.is_some() {}
    runtime_fetchers.close();
    runtime_fetchers.wait().await;
    handlers.close();
    let grace = Duration::from_millis(config.worker.drain_timeout_ms);
    if tokio::time::timeout(grace, handlers.wait()).await.is_err() {
        warn!(
            unfinished = handlers.len(),
            "drain grace period over; unfinished tasks will be redelivered"
        );
    }
    health_stop.cancel();
    background.close();
    if tokio::time::timeout(grace, background.wait())
        .await
        .is_err()
    {
        warn!("provider health did not finish its last flush");
    }
    if let Err(e) = client.flush().await {
        warn!(error = %e, "could not flush the NATS connection");
    }
    probes_stop.cancel();
    probes.close();
    probes.wait().await;
    info!("worker stopped");
    if died {
        Err(WorkerError::FetcherDied)
    } else {
        Ok(())
    }
}
