//! A local `nats-server -js` for `switchyard up`, started only when the configured NATS is
//! not reachable. Its store lives under the data directory, so tasks survive a restart.
//! It dies with `up` (a parent-death signal), and a server an earlier `up` left behind is
//! recognised by its pid file and stopped before anything else happens.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::nats_server::{self, LocateError};

/// Largest message the local server accepts: room for a maximal request body as a task.
const MAX_PAYLOAD: &str = "8MB";
/// How long the local server gets to start accepting connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long it gets to stop cleanly before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    #[error(transparent)]
    NotInstalled(#[from] LocateError),
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

/// The loopback port of a `nats://127.0.0.1:PORT` (or `localhost`) URL.
pub fn local_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    let (host, port) = rest.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost").then_some(())?;
    port.trim_end_matches('/').parse().ok()
}

/// Where a local server keeps its files under the data directory.
struct Files {
    dir: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    pid: PathBuf,
    store: PathBuf,
}

impl Files {
    fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("nats");
        Self {
            conf: dir.join("nats.conf"),
            log: dir.join("nats-server.log"),
            pid: dir.join("nats-server.pid"),
            store: dir.join("jetstream"),
            dir,
        }
    }
}

/// Whether `pid` is a running process (not gone, not a zombie waiting to be reaped).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // `pid (comm) state …`: the state follows the last ')'.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Spawns the server so that it gets SIGTERM when this process dies, however it dies:
/// `setpriv --pdeathsig` sets the parent-death signal and execs the server (no unsafe code
/// here). Without `setpriv`, a server left behind is cleaned up by the next `up` instead.
fn spawn_tied(binary: &Path, files: &Files) -> std::io::Result<Child> {
    let mut command = match nats_server::on_path("setpriv") {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "TERM", "--"]).arg(binary);
            c
        }
        None => {
            warn!(
                "setpriv not found: the local nats-server will outlive a killed `up` until the next `up` stops it"
            );
            Command::new(binary)
        }
    };
    if let Some(threads) = go_threads() {
        command.env("GOMAXPROCS", threads.to_string());
    }
    command
        .arg("-c")
        .arg(&files.conf)
        .arg("-l")
        .arg(&files.log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        // Its own process group: Ctrl-C reaches Switchyard, which drains, then stops it.
        .process_group(0)
        .spawn()
}

/// How many threads the local nats-server's Go runtime may run at once, unless the
/// environment already says (`GOMAXPROCS`): half the machine's cores, at least one. It
/// shares the machine with Switchyard's gateway and worker, and with all cores to itself
/// its idle threads spin looking for work on cores the others need. On the 2-core benchmark
/// machine one thread cut nats-server's CPU per request by a fifth at concurrency 64, and
/// the p50 at 1,000 req/s from 1.8 to 1.0-1.2 ms (bench/notes.md).
#[expect(
    clippy::disallowed_methods,
    reason = "GOMAXPROCS is the child's setting, not Switchyard's configuration: a value the user chose is left alone"
)]
fn go_threads() -> Option<usize> {
    if std::env::var_os("GOMAXPROCS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    Some((cores / 2).max(1))
}

/// Stops a `nats-server` that an earlier `up` with this data directory left running (its
/// pid file names a live process started with this directory's configuration), so it is
/// neither adopted as "the configured NATS" nor left running for ever. Returns its pid.
pub async fn stop_stale(data_dir: &Path) -> Option<i32> {
    let files = Files::new(data_dir);
    let pid: i32 = std::fs::read_to_string(&files.pid)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let conf = files.conf.as_os_str().as_encoded_bytes();
    let ours = cmdline.windows(conf.len().max(1)).any(|w| w == conf);
    if !ours {
        // A pid file from a server that is gone (or a recycled pid): nothing to stop.
        let _ = std::fs::remove_file(&files.pid);
        return None;
    }
    warn!(
        pid,
        "stopping a nats-server that an earlier `switchyard up` left running"
    );
    let pid_ = Pid::from_raw(pid);
    let _ = kill(pid_, Signal::SIGTERM);
    let started = tokio::time::Instant::now();
    while alive(pid) {
        if started.elapsed() > STOP_TIMEOUT {
            let _ = kill(pid_, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(pid)
}

impl LocalNats {
    /// Starts `nats-server -js` on the port of `url`, with its store under `data_dir`.
    pub async fn start(url: &str, data_dir: &Path) -> Result<Self, LocalNatsError> {
        let port =
            local_port(url).ok_or_else(|| LocalNatsError::BadUrl(shared::nats::redacted(url)))?;
        let binary = nats_server::locate_logged().await?;
        let files = Files::new(data_dir);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LocalNatsError::Io { path, source }
        };
        std::fs::create_dir_all(&files.dir).map_err(io(&files.dir))?;
        let text = format!(
            "listen: \"127.0.0.1:{port}\"\nmax_payload: {MAX_PAYLOAD}\npid_file: {:?}\njetstream {{\n  store_dir: {:?}\n}}\n",
            files.pid.display().to_string(),
            files.store.display().to_string()
        );
        std::fs::write(&files.conf, text).map_err(io(&files.conf))?;
        let child = spawn_tied(&binary, &files).map_err(io(&files.conf))?;
        let mut local = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = local.child.try_wait() {
                return Err(LocalNatsError::Exited(status, files.log));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                info!(url = %local.url, store = %files.store.display(), "started a local nats-server");
                return Ok(local);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(LocalNatsError::Slow(START_TIMEOUT, files.log));
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
