//! Switchyard's HTTP gateway: authenticates nothing yet, validates requests, turns each into
//! a task on `tasks.<capability>.<priority>`, and waits for its result on
//! `results.<task id>`, where the server republishes it once stored (or relays its stream).
//! Holds no state of its own: run as many replicas as needed.

mod abandon;
mod admission;
mod answer;
mod artifacts;
mod body;
mod builtin_tools;
mod chat;
mod context;
mod cors;
mod error;
mod headers;
mod info;
mod mcp;
mod memory;
mod operate;
mod path;
mod readiness;
mod roster;
mod routes;
mod serve;
mod session;
mod state;
mod stream;
mod submit;
mod task_list;
mod tasks;
mod threads;
mod window;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use shared::Capability;
use shared::config::Config;
use shared::provision::{ProvisionError, provision};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use routes::app;
use state::{AppState, Shared};

use crate::admission::Admission;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

/// Provisions JetStream resources and builds the shared state.
async fn state(
    config: Arc<Config>,
    client: async_nats::Client,
    shutdown: CancellationToken,
    background: &TaskTracker,
) -> Result<AppState, GatewayError> {
    let js = jetstream::new(client.clone());
    let provisioned = provision(&js, &config).await?;
    let route_capabilities: HashMap<String, Capability> = config
        .routes
        .iter()
        .filter_map(|(name, r)| Some((name.clone(), r.capability.parse().ok()?)))
        .collect();
    // Chat requests may go to any capability but an agent's queue, which is for its steps.
    let capabilities: BTreeSet<Capability> = config
        .capability_names()
        .into_iter()
        .filter(|c| !c.as_str().starts_with(shared::agents::QUEUE_PREFIX))
        .collect();
    background.spawn(
        provisioned
            .agents
            .clone()
            .follow(provisioned.agents_bucket.clone(), shutdown.clone()),
    );
    let admission = Admission::default();
    background.spawn(admission.clone().sample(
        js.clone(),
        capabilities.iter().cloned().collect(),
        shutdown.clone(),
    ));
    let readiness = readiness::Readiness::default();
    background.spawn(readiness.clone().probe(js.clone(), shutdown.clone()));
    let context = shared::context::Context::new(js.clone(), provisioned.context);
    Ok(Arc::new(Shared {
        config,
        client,
        js,
        results: provisioned.results,
        context,
        artifacts: provisioned.artifacts,
        agents: provisioned.agents,
        agents_bucket: provisioned.agents_bucket,
        agent_writes: tokio::sync::Mutex::default(),
        performance: provisioned.performance,
        workflows: provisioned.workflows,
        providers: provisioned.providers,
        default_capability: Capability::default(),
        route_capabilities,
        capabilities,
        admission,
        readiness,
        background: background.clone(),
        shutdown,
    }))
}

/// Serves the gateway on `listener` until `shutdown`, then lets in-flight requests finish.
/// `on_ready` is called once requests are being served (JetStream provisioned), so a caller can announce the gateway only when that is true.
pub async fn run(
    config: Arc<Config>,
    client: async_nats::Client,
    listener: TcpListener,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(),
) -> Result<(), GatewayError> {
    let grace = Duration::from_millis(config.gateway.drain_timeout_ms);
    let background = TaskTracker::new();
    let state = state(config, client, shutdown.clone(), &background).await?;
    let header_read_timeout = Duration::from_millis(state.config.gateway.header_read_timeout_ms);
    info!(addr = %listener.local_addr()?, "gateway listening");
    let server = serve::serve(listener, app(state), header_read_timeout, shutdown.clone());
    on_ready();
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = server => {}
        () = grace_over => {
            warn!(?grace, "drain grace period over; closing the remaining connections");
        }
    }
    background.close();
    background.wait().await;
    info!("gateway stopped");
    Ok(())
}
