//! The worker's HTTP probes for an orchestrator, on `worker.health_listen`: `GET /healthz`
//! answers 200 while the process serves (liveness: it is up from the start, also while
//! provisioning waits for a forming cluster), and `GET /readyz` says whether it takes tasks:
//! 200 once its fetch loops run and while NATS is connected, else 503 (readiness). Both
//! answer JSON; neither touches NATS, so a probe costs the cluster nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What the probes report.
#[derive(Debug)]
pub(crate) struct Probe {
    client: async_nats::Client,
    fetching: AtomicBool,
}

impl Probe {
    pub(crate) fn new(client: async_nats::Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            fetching: AtomicBool::new(false),
        })
    }

    /// Whether the fetch loops run (set once they are started, cleared when draining).
    pub(crate) fn set_fetching(&self, on: bool) {
        self.fetching.store(on, Ordering::Relaxed);
    }
}

/// Serves the probes on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, probe: Arc<Probe>, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "worker probes listening (/healthz, /readyz)");
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probe);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(error = %e, "the worker's probe listener stopped");
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(probe): State<Arc<Probe>>) -> impl IntoResponse {
    let fetching = probe.fetching.load(Ordering::Relaxed);
    let (ready, body) = shared::nats::readiness(&probe.client, "fetching", fetching);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
