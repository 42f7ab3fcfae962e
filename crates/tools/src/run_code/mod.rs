//! The `run_code` tool: runs a short Python or shell program in a bubblewrap sandbox — new
//! user, pid, network, ipc, uts and cgroup namespaces, no environment, the system's programs
//! read-only and nothing else of the host, a private tmpfs as the working directory — under
//! CPU, memory, process, file-size, wall-time and output limits, and reports its exit code,
//! stdout and stderr. It never runs code outside the sandbox: when bubblewrap is missing or
//! cannot create its namespaces, a call is `unavailable` and says what is missing.
//! `docs/tools.md` has the threat model.

mod command;
mod process;

use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value, json};
use shared::config::RunCodeConfig;
use shared::tools::{MAX_RESULT_BYTES, ToolError, ToolErrorClass};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub use command::Language;
use command::{HostUser, Plan, SystemDir};
use process::{Ending, Outcome};

/// How long a run's processes may take to disappear after it ended before its uid is used
/// again (a killed pid namespace is torn down asynchronously).
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// `SIGXCPU`: the CPU limit's signal. bwrap reports a program killed by signal N as exit
/// code 128 + N.
const SIGXCPU: i32 = 24;
/// What a program's stderr says when the memory limit refused an allocation.
const OUT_OF_MEMORY: &[&str] = &["MemoryError", "Cannot allocate memory", "out of memory"];

/// The sandbox runner: one per tools process.
#[derive(Debug)]
pub struct RunCode {
    config: RunCodeConfig,
    system: Vec<SystemDir>,
    /// Whether the tools process is root (then each sandbox runs as a uid of its own).
    root: bool,
    slots: Semaphore,
    /// The dedicated uids not in use (root only).
    free_uids: Mutex<Vec<u32>>,
    /// Set once a probe run has shown the sandbox starts; until then every call probes.
    ready: tokio::sync::Mutex<bool>,
}

/// A call's arguments.
#[derive(Debug)]
struct Arguments {
    language: Language,
    code: String,
    stdin: String,
}

impl RunCode {
    pub fn new(config: RunCodeConfig) -> Self {
        let root = effective_uid() == Some(0);
        let free_uids = (0..config.max_concurrent)
            .filter_map(|i| u32::try_from(i).ok())
            .map(|i| config.uid_base.saturating_add(i))
            .rev()
            .collect();
        Self {
            system: command::system_dirs(),
            root,
            slots: Semaphore::new(config.max_concurrent),
            free_uids: Mutex::new(free_uids),
            ready: tokio::sync::Mutex::new(false),
            config,
        }
    }

    /// The tool: `{"language", "code", "stdin"?}` in; `{"language", "exit_code", "stdout",
    /// "stderr", "duration_ms", "truncated", "killed"?}` out.
    pub async fn call(&self, arguments: &Value) -> Result<Value, ToolError> {
        let arguments = parse(arguments)?;
        self.ensure_ready().await?;
        let outcome = self
            .run(arguments.language, &arguments.code, &arguments.stdin)
            .await?;
        Ok(fit(report(arguments.language, &outcome), MAX_RESULT_BYTES))
    }

    /// Runs `code` in a sandbox, waiting for a free slot at most the wall time.
    async fn run(&self, language: Language, code: &str, stdin: &str) -> Result<Outcome, ToolError> {
        let busy = || {
            ToolError::new(
                ToolErrorClass::Unavailable,
                format!(
                    "all {} sandboxes are busy (tools.run_code.max_concurrent); try again",
                    self.config.max_concurrent
                ),
            )
        };
        let _permit = tokio::time::timeout(self.config.wall_time(), self.slots.acquire())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        let uid = if self.root {
            let taken = self.free_uids.lock().map(|mut u| u.pop()).ok().flatten();
            Some(taken.ok_or_else(busy)?)
        } else {
            None
        };
        let user = match uid {
            Some(uid) => HostUser::Dedicated(uid),
            None => HostUser::Own {
                existing: effective_uid().map_or(0, tasks_of_uid),
            },
        };
        let argv = command::argv(&Plan {
            config: &self.config,
            system: &self.system,
            user,
            language,
            code,
        });
        let outcome = process::run(
            &argv,
            stdin.as_bytes(),
            self.config.max_output_bytes,
            self.config.wall_time(),
        )
        .await;
        if let Some(uid) = uid {
            drain(uid).await;
            if let Ok(mut free) = self.free_uids.lock() {
                free.push(uid);
            }
        }
        outcome.map_err(|e| {
            warn!(error = %e, "the sandbox did not start");
            ToolError::new(
                ToolErrorClass::Unavailable,
                format!("the sandbox did not start: {e}"),
            )
        })
    }

    /// Checks, until it has once succeeded, that the sandbox's programs exist and that a
    /// sandbox starts (bubblewrap can create its namespaces) with both interpreters in it.
    async fn ensure_ready(&self) -> Result<(), ToolError> {
        let mut ready = self.ready.lock().await;
        if *ready {
            return Ok(());
        }
        let c = &self.config;
        let mut programs = vec![
            (
                "bwrap",
                &c.bwrap,
                " (install bubblewrap: apt-get install bubblewrap)",
            ),
            ("prlimit", &c.prlimit, " (util-linux)"),
            ("python", &c.python, ""),
            ("shell", &c.shell, ""),
        ];
        if self.root {
            programs.push(("setpriv", &c.setpriv, " (util-linux)"));
        }
        for (name, path, hint) in programs {
            if !is_executable(path) {
                return Err(unavailable(format!(
                    "{name} not found at {} (tools.run_code.{name}){hint}; run_code never runs code outside its sandbox",
                    path.display()
                )));
            }
        }
        for (language, code) in [(Language::Shell, "exit 0"), (Language::Python, "pass")] {
            let outcome = self.run(language, code, "").await?;
            let exited = outcome.status.and_then(|s| s.code());
            if outcome.ending != Ending::Exited || exited != Some(0) {
                let said = String::from_utf8_lossy(&outcome.stderr);
                let said = said.lines().next().unwrap_or("no message").trim();
                debug!(language = language.as_str(), said, "sandbox probe failed");
                return Err(unavailable(format!(
                    "the sandbox does not start ({} exited {exited:?}: {said}); bubblewrap needs unprivileged user namespaces",
                    language.as_str()
                )));
            }
        }
        *ready = true;
        Ok(())
    }
}

fn unavailable(message: String) -> ToolError {
    ToolError::new(ToolErrorClass::Unavailable, message)
}

fn parse(arguments: &Value) -> Result<Arguments, ToolError> {
    let invalid = |m: String| ToolError::new(ToolErrorClass::InvalidArguments, m);
    let Some(fields) = arguments.as_object() else {
        return Err(invalid(
            "arguments must be a JSON object with `language` and `code`".into(),
        ));
    };
    if let Some(other) = fields
        .keys()
        .find(|k| !["language", "code", "stdin"].contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "unknown field `{other}`: run_code takes `language`, `code` and `stdin`"
        )));
    }
    let text = |name: &str, required: bool| match fields.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(format!("`{name}` must be a string"))),
        None if required => Err(invalid(format!("missing field `{name}`"))),
        None => Ok(String::new()),
    };
    let language = text("language", true)?;
    let language = Language::parse(&language).ok_or_else(|| {
        invalid(format!(
            "unknown language `{language}`: run_code runs `python` or `shell`"
        ))
    })?;
    let code = text("code", true)?;
    if code.trim().is_empty() {
        return Err(invalid("`code` is empty".into()));
    }
    if code.contains('\0') {
        return Err(invalid("`code` contains a NUL character".into()));
    }
    Ok(Arguments {
        language,
        code,
        stdin: text("stdin", false)?,
    })
}

/// The result the model reads.
fn report(language: Language, outcome: &Outcome) -> Value {
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    let exit_code = outcome.status.and_then(|s| s.code());
    let killed = match outcome.ending {
        Ending::WallTime => Some("timeout"),
        Ending::Output => Some("output"),
        Ending::Exited if exit_code == Some(128 + SIGXCPU) => Some("cpu"),
        Ending::Exited
            if exit_code != Some(0) && OUT_OF_MEMORY.iter().any(|m| stderr.contains(m)) =>
        {
            Some("memory")
        }
        Ending::Exited => None,
    };
    let mut out = Map::new();
    out.insert("language".into(), json!(language.as_str()));
    out.insert("exit_code".into(), json!(exit_code));
    out.insert("stdout".into(), json!(stdout));
    out.insert("stderr".into(), json!(stderr));
    out.insert(
        "duration_ms".into(),
        json!(u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX)),
    );
    out.insert("truncated".into(), json!(outcome.truncated));
    if let Some(killed) = killed {
        out.insert("killed".into(), json!(killed));
    }
    Value::Object(out)
}

/// `result` cut until its JSON is at most `max` bytes: output full of control characters
/// grows sixfold when escaped, so the caps alone do not bound it.
fn fit(mut result: Value, max: usize) -> Value {
    while serde_json::to_vec(&result).map_or(usize::MAX, |b| b.len()) > max {
        let mut cut = false;
        for stream in ["stdout", "stderr"] {
            if let Some(text) = result[stream].as_str().filter(|t| !t.is_empty()) {
                let half: String = text.chars().take(text.chars().count() / 2).collect();
                result[stream] = json!(half);
                cut = true;
            }
        }
        result["truncated"] = json!(true);
        if !cut {
            break;
        }
    }
    result
}

/// Waits (a little) until no process of `uid` is left, so the next run as it starts with
/// its whole process budget.
async fn drain(uid: u32) {
    let started = std::time::Instant::now();
    while tasks_of_uid(uid) > 0 {
        if started.elapsed() > DRAIN_WAIT {
            warn!(uid, "a sandbox's processes outlived it");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The uid this process runs as (the owner of its `/proc/self`).
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Processes and threads whose real uid is `uid` (what RLIMIT_NPROC counts).
pub fn tasks_of_uid(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| {
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            (field("Uid:")? == u64::from(uid)).then(|| field("Threads:").unwrap_or(1))
        })
        .sum()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        let ok = parse(&json!({"language": "python", "code": "print(1)"})).unwrap();
        assert_eq!(ok.language, Language::Python);
        assert_eq!(ok.stdin, "");
        for (bad, says) in [
            (json!([]), "JSON object"),
            (json!({"language": "python"}), "missing field `code`"),
            (json!({"code": "x"}), "missing field `language`"),
            (
                json!({"language": "ruby", "code": "x"}),
                "unknown language `ruby`",
            ),
            (json!({"language": "shell", "code": "  "}), "empty"),
            (json!({"language": "shell", "code": 1}), "must be a string"),
            (
                json!({"language": "shell", "code": "x", "env": {}}),
                "unknown field `env`",
            ),
            (json!({"language": "shell", "code": "a\u{0}b"}), "NUL"),
        ] {
            let e = parse(&bad).unwrap_err();
            assert_eq!(e.class, ToolErrorClass::InvalidArguments);
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn the_report_says_what_ended_the_run() {
        use std::os::unix::process::ExitStatusExt;
        let outcome = |code: i32, stderr: &str, ending: Ending| Outcome {
            status: Some(std::process::ExitStatus::from_raw(code << 8)),
            stdout: b"out".to_vec(),
            stderr: stderr.as_bytes().to_vec(),
            truncated: false,
            ending,
            duration: std::time::Duration::from_millis(12),
        };
        let ok = report(Language::Python, &outcome(0, "", Ending::Exited));
        assert_eq!(
            ok,
            json!({"language": "python", "exit_code": 0, "stdout": "out", "stderr": "",
                "duration_ms": 12, "truncated": false})
        );
        for (code, stderr, ending, killed) in [
            (1, "", Ending::WallTime, "timeout"),
            (1, "", Ending::Output, "output"),
            (152, "", Ending::Exited, "cpu"),
            (1, "Traceback…\nMemoryError\n", Ending::Exited, "memory"),
        ] {
            let r = report(Language::Shell, &outcome(code, stderr, ending));
            assert_eq!(r["killed"], killed, "{r}");
        }
        let r = report(Language::Shell, &outcome(0, "MemoryError", Ending::Exited));
        assert!(r.get("killed").is_none());
    }

    #[test]
    fn a_report_too_large_once_escaped_is_cut_to_fit() {
        let controls = "\u{1}".repeat(16 * 1024);
        let big = json!({"stdout": controls, "stderr": controls, "truncated": false});
        let fitted = fit(big, MAX_RESULT_BYTES);
        assert!(serde_json::to_vec(&fitted).unwrap().len() <= MAX_RESULT_BYTES);
        assert_eq!(fitted["truncated"], true);
        let small = json!({"stdout": "a", "stderr": "", "truncated": false});
        assert_eq!(fit(small.clone(), MAX_RESULT_BYTES), small);
    }

    #[test]
    fn tasks_of_our_own_uid_include_this_test() {
        assert!(tasks_of_uid(effective_uid().unwrap()) >= 1);
        assert_eq!(tasks_of_uid(u32::MAX - 7), 0);
    }
}
