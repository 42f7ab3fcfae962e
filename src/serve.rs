//! Running Switchyard's processes: connect, bind, serve until a shutdown signal, drain.

use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use async_nats::ConnectErrorKind;
use shared::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    info!("shutdown signal received");
}

/// Cancels `token` on the first shutdown signal.
#[expect(
    clippy::disallowed_methods,
    reason = "the signal watcher lives as long as the process; it only cancels a token, so nothing waits for it"
)]
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
}

/// Connects to NATS once: for short-lived commands, which should fail at once.
pub async fn connect(config: &Config, role: &str) -> anyhow::Result<async_nats::Client> {
    shared::nats::connect(&config.nats.url, role)
        .await
        .with_context(|| {
            format!(
                "connecting to NATS at {}",
                shared::nats::redacted(&config.nats.url)
            )
        })
}

/// First wait when NATS is not up yet; doubles each attempt.
const WAIT_BASE: Duration = Duration::from_millis(100);
/// Longest wait between attempts: a server that comes up is found within 2 s.
const WAIT_CAP: Duration = Duration::from_secs(2);

/// Connects to NATS, waiting for it with backoff while it is not reachable yet (processes
/// started together by compose or systemd race the server). Errors that waiting cannot
/// fix (bad credentials, TLS, a malformed URL) fail at once. `None` when `shutdown` came
/// first.
pub async fn wait_for_nats(
    config: &Config,
    role: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<async_nats::Client>> {
    let url = shared::nats::redacted(&config.nats.url);
    let mut attempt = 0u32;
    loop {
        let error = match shared::nats::connect(&config.nats.url, role).await {
            Ok(client) => return Ok(Some(client)),
            Err(e) => e,
        };
        let transient = match error.kind() {
            ConnectErrorKind::Io
            | ConnectErrorKind::TimedOut
            | ConnectErrorKind::Dns
            | ConnectErrorKind::MaxReconnects => true,
            ConnectErrorKind::ServerParse
            | ConnectErrorKind::Authentication
            | ConnectErrorKind::AuthorizationViolation
            | ConnectErrorKind::Tls => false,
        };
        if !transient {
            return Err(error).with_context(|| format!("connecting to NATS at {url}"));
        }
        // Never zero: a server that refuses at once must not turn this into a busy loop.
        let delay = shared::backoff::full_jitter(WAIT_BASE, WAIT_CAP, attempt).max(WAIT_BASE);
        warn!(%url, %error, attempt = attempt + 1, retry_in_ms = delay.as_millis(), "NATS is not reachable yet; waiting for it");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
        attempt = attempt.saturating_add(1);
    }
}

pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(&config.gateway.listen)
        .await
        .with_context(|| format!("binding {}", config.gateway.listen))
}

/// Runs a gateway, a worker, the built-in tools and the memory index (its file at
/// `memory_file`) in this process until `shutdown`. The worker (and the tools and memory its
/// steps call) keep working while the gateway drains, so requests in flight get their
/// answers; they stop after the gateway has. If the worker, the tools or the memory fail
/// first, the gateway is stopped too. `on_ready` is called once the gateway serves requests.
#[expect(
    clippy::disallowed_methods,
    reason = "the gateway and worker tasks are both awaited below, whichever ends first"
)]
pub async fn gateway_and_worker(
    config: Arc<Config>,
    client: async_nats::Client,
    listener: TcpListener,
    memory_file: PathBuf,
    shutdown: CancellationToken,
    on_ready: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let worker_stop = CancellationToken::new();
    let tools_stop = CancellationToken::new();
    // The tools and the memory: services the worker's steps call, stopped together.
    let mut tools = tokio::spawn({
        let (client, config, stop) = (client.clone(), config.clone(), tools_stop.clone());
        async move {
            let tools = tools::serve(client.clone(), config.clone(), stop.clone());
            let memory = memory::serve(client, config, memory_file, stop);
            tokio::try_join!(async { tools.await.context("tools") }, async {
                memory.await.context("memory")
            })
            .map(|_| ())
        }
    });
    let mut worker = tokio::spawn(worker::run(
        config.clone(),
        client.clone(),
        worker::new_worker_id(),
        worker_stop.clone(),
    ));
    let mut gateway = tokio::spawn(gateway::run(
        config,
        client,
        listener,
        shutdown.clone(),
        on_ready,
    ));
    let outcome = tokio::select! {
        served = &mut gateway => {
            worker_stop.cancel();
            let worked = worker.await;
            tools_stop.cancel();
            let tooled = (&mut tools).await;
            served.context("gateway task")?.context("gateway")
                .and(worked.context("worker task")?.context("worker"))
                .and(tooled.context("tools task")?.context("tools"))
        }
        worked = &mut worker => {
            shutdown.cancel();
            let served = gateway.await;
            tools_stop.cancel();
            let tooled = (&mut tools).await;
            worked.context("worker task")?.context("worker stopped early")
                .and(served.context("gateway task")?.context("gateway"))
                .and(tooled.context("tools task")?.context("tools"))
        }
        tooled = &mut tools => {
            shutdown.cancel();
            let served = gateway.await;
            worker_stop.cancel();
            let worked = worker.await;
            tooled.context("tools task")?.context("tools stopped early")
                .and(served.context("gateway task")?.context("gateway"))
                .and(worked.context("worker task")?.context("worker"))
        }
    };
    outcome
}
