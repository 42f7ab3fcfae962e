//! Running Switchyard's processes: connect, bind, serve until a shutdown signal, drain.

use std::sync::Arc;

use anyhow::Context;
use shared::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

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

pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(&config.gateway.listen)
        .await
        .with_context(|| format!("binding {}", config.gateway.listen))
}

/// Runs a gateway and a worker in this process until `shutdown`. The worker keeps working
/// while the gateway drains, so requests in flight get their answers; it stops after the
/// gateway has. If the worker fails first, the gateway is stopped too.
#[expect(
    clippy::disallowed_methods,
    reason = "the gateway and worker tasks are both awaited below, whichever ends first"
)]
pub async fn gateway_and_worker(
    config: Arc<Config>,
    client: async_nats::Client,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let worker_stop = CancellationToken::new();
    let mut worker = tokio::spawn(worker::run(
        config.clone(),
        client.clone(),
        worker::new_worker_id(),
        worker_stop.clone(),
    ));
    let mut gateway = tokio::spawn(gateway::run(config, client, listener, shutdown.clone()));
    tokio::select! {
        served = &mut gateway => {
            worker_stop.cancel();
            let worked = worker.await.context("worker task")?;
            served.context("gateway task")?.context("gateway")?;
            worked.context("worker")?;
        }
        worked = &mut worker => {
            shutdown.cancel();
            let served = gateway.await.context("gateway task")?;
            worked.context("worker task")?.context("worker stopped early")?;
            served.context("gateway")?;
        }
    }
    Ok(())
}
