//! What every handler shares.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use shared::Capability;
use shared::agents::LiveCatalog;
use shared::config::Config;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;

/// Shared by every handler; cloned per request, so it is one `Arc`.
pub type AppState = Arc<Shared>;

#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Config>,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub results: kv::Store,
    /// Shared context (`/v1/context`).
    pub context: shared::context::Context,
    /// Large inputs and outputs (`/v1/artifacts`).
    pub artifacts: shared::artifacts::Artifacts,
    /// The agents as they are now (configuration and the `agents` bucket).
    pub agents: LiveCatalog,
    /// Where runtime agent profiles are stored.
    pub agents_bucket: kv::Store,
    /// Held while this replica changes an agent, so its own updates of `TASKS` (read the
    /// subjects, write them back) do not drop each other's.
    pub agent_writes: tokio::sync::Mutex<()>,
    /// Agents' records (success, latency, review score), written by workers.
    pub performance: kv::Store,
    /// Workflow states, for the task API.
    pub workflows: kv::Store,
    /// Shared provider health, for `GET /v1/providers`.
    pub providers: kv::Store,
    /// Capability of each route, parsed once.
    pub route_capabilities: HashMap<String, Capability>,
    /// Capability of `provider/model` requests.
    pub default_capability: Capability,
    /// The capabilities chat requests may use: every configured one but the agents' queues.
    pub capabilities: BTreeSet<Capability>,
    /// Refuses early what its queue cannot answer within the deadline.
    pub admission: Admission,
    /// Whether JetStream can take tasks, as last probed (`/readyz`).
    pub readiness: crate::readiness::Readiness,
    /// Work that shutdown waits for (queue sampling, cancel notices).
    pub background: TaskTracker,
    /// Cancelled when the gateway shuts down: endless answers (a followed thread) end then,
    /// and their clients resume on another replica.
    pub shutdown: tokio_util::sync::CancellationToken,
}
