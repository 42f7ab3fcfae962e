//! What a worker's task handlers share: the NATS handles, the results and attempts buckets,
//! provider health, and [`Routing`] (each configured provider's adapter with its timeouts
//! and limit of calls in flight, and the routes). Built once in `lib.rs`; the modules that
//! handle a task read it from here and none owns it, so they need not import each other to
//! reach it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use shared::config::{Config, ProviderConfig, RouteConfig};

use crate::call_limit::CallLimit;
use crate::cancel::Cancellations;
use crate::health::Health;
use crate::provider::Provider;

/// One configured provider's adapter, timeouts and this worker's limit of calls to it.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub provider: Provider,
    pub timeout: Duration,
    pub first_token_timeout: Duration,
    pub idle_timeout: Duration,
    pub calls: Arc<CallLimit>,
}

/// Where a task's route leads: the routes, the providers they name, and how to call each.
/// All the failover loop reads besides health.
#[derive(Debug)]
pub(crate) struct Routing {
    pub runtimes: HashMap<String, Runtime>,
    pub provider_configs: BTreeMap<String, ProviderConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    /// Where the next key rotation starts, so load spreads over a pool.
    pub rotation: AtomicUsize,
}

impl Routing {
    /// Adapters for every provider of `config`, sharing the pooled `http` client.
    pub(crate) fn new(config: &Config, http: &reqwest::Client) -> Self {
        let runtimes = config
            .providers
            .iter()
            .map(|(name, p)| {
                let runtime = Runtime {
                    provider: Provider::new(http, p),
                    timeout: p.timeout(),
                    first_token_timeout: p.first_token_timeout(),
                    idle_timeout: p.idle_timeout(),
                    calls: Arc::new(CallLimit::new(name, &p.concurrency)),
                };
                (name.clone(), runtime)
            })
            .collect();
        Self {
            runtimes,
            provider_configs: config.providers.clone(),
            routes: config.routes.clone(),
            rotation: AtomicUsize::new(0),
        }
    }

    /// Every provider's limit of calls in flight.
    pub(crate) fn limits(&self) -> Vec<Arc<CallLimit>> {
        self.runtimes.values().map(|r| r.calls.clone()).collect()
    }
}

/// What handling a task needs; shared by every in-flight task of a worker.
#[derive(Debug)]
pub(crate) struct Deps {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub results: kv::Store,
    pub attempts: kv::Store,
    pub health: Arc<Health>,
    pub routing: Routing,
    pub worker_id: String,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    /// Tasks whose caller went away.
    pub cancellations: Cancellations,
    /// Workflow states, advanced when a step's result is stored.
    pub workflows: kv::Store,
    /// Shared context: steps write their answers to their workflow's scope.
    pub context: shared::context::Context,
    /// The agents as they are now (configuration and the `agents` bucket).
    pub agents: shared::agents::LiveCatalog,
    /// The MCP tools being served (the `mcp_tools` bucket), for the tool loop's offers.
    pub mcp_tools: shared::mcp::LiveMcpTools,
    /// Prices (for steps' costs), routing weights and the rest of the configuration.
    pub config: Arc<Config>,
    /// Agents' records, for routing and to update as steps finish.
    pub performance: Arc<crate::performance::Records>,
    /// Agents' queues as last sampled, for routing steps.
    pub queue_load: crate::queue_load::QueueLoad,
    /// Tool calls counted per quota window (`[tools.quotas]`).
    pub tool_quotas: kv::Store,
    /// Large step outputs, stored by reference (`[artifacts]`).
    pub artifacts: shared::artifacts::Artifacts,
    /// `queue.reply_prefixes`: where a task's result may be sent.
    pub reply_prefixes: Vec<String>,
    /// Runs CPU-bound work (counting a step prompt's tokens) off the async threads.
    pub blocking: tokio_util::task::TaskTracker,
}
