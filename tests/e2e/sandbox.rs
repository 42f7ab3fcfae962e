//! `run_code` end to end: a real `switchyard tools` process (with secrets in its
//! environment, as a deployment has) called over NATS, running real programs in the real
//! bubblewrap sandbox. What must hold: a program computes and reports; it cannot read the
//! host's files or the tools process's environment, cannot reach the network, cannot take
//! the machine down with a fork bomb, an endless loop, endless output or a memory hog; and
//! without bubblewrap nothing runs at all.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::harness::{Nats, eventually, wait_for_tools};

/// A `switchyard tools` process on its own NATS, with a secret in its environment (as a
/// deployment's provider keys are) and `settings` (`[tools.run_code]` fields, and
/// `call_timeout_ms`) as environment overrides.
struct Tools {
    child: Child,
    client: async_nats::Client,
    uid_base: u32,
    /// The secret in its environment, its own (tests run at once).
    secret: String,
    _nats: Nats,
}

impl Tools {
    /// `uid_base` apart per test: tests run at once, and a fork bomb in one must not use up
    /// another's process budget.
    async fn start(uid_base: u32, settings: &[(&str, &str)]) -> Self {
        let nats = Nats::start();
        let secret = format!("sk-run-code-must-never-see-this-{uid_base}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("tools")
            .env_remove("SWITCHYARD_CONFIG")
            .env("SWITCHYARD__NATS__URL", &nats.url)
            .env(
                "SWITCHYARD__TOOLS__RUN_CODE__UID_BASE",
                uid_base.to_string(),
            )
            .env("FAKE_PROVIDER_KEY", &secret)
            .env("OPENAI_API_KEY", &secret)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in settings {
            let section = if *key == "call_timeout_ms" {
                "TOOLS"
            } else {
                "TOOLS__RUN_CODE"
            };
            cmd.env(
                format!("SWITCHYARD__{section}__{}", key.to_uppercase()),
                value,
            );
        }
        let child = cmd.spawn().unwrap();
        let client = shared::nats::connect(&nats.url, "test").await.unwrap();
        wait_for_tools(&client).await;
        Self {
            child,
            client,
            uid_base,
            secret,
            _nats: nats,
        }
    }

    /// Calls `run_code`: the result, or the error's class and message.
    async fn call(&self, arguments: Value) -> Result<Value, (String, String)> {
        let request = async_nats::Request::new()
            .payload(arguments.to_string().into())
            .timeout(Some(Duration::from_secs(60)));
        let answer = self
            .client
            .send_request("tools.run_code", request)
            .await
            .unwrap();
        if let Some(headers) = &answer.headers
            && let Some(class) = headers.get("Switchyard-Tool-Error")
        {
            let message = headers.get("Nats-Service-Error").unwrap().to_string();
            return Err((class.to_string(), message));
        }
        Ok(serde_json::from_slice(&answer.payload).unwrap())
    }

    async fn python(&self, code: &str) -> Value {
        self.call(json!({"language": "python", "code": code}))
            .await
            .unwrap()
    }

    /// Processes (and threads) running as this tools process's sandbox uids.
    fn sandbox_tasks(&self) -> u64 {
        (self.uid_base..self.uid_base + 2)
            .map(tools::run_code::tasks_of_uid)
            .sum()
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn stdout(result: &Value) -> &str {
    result["stdout"].as_str().unwrap()
}

#[tokio::test]
async fn run_code_runs_python_and_shell_and_reports_what_happened() {
    let tools = Tools::start(991_000, &[]).await;
    let ran = tools
        .python(
            "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nassert fib(10) == 55\nprint('fib(90) =', fib(90))\n",
        )
        .await;
    assert_eq!(ran["exit_code"], 0, "{ran:#}");
    assert_eq!(stdout(&ran), "fib(90) = 2880067194370816120\n");
    assert_eq!(ran["stderr"], "");
    assert_eq!(ran["truncated"], false);
    assert!(ran.get("killed").is_none(), "{ran:#}");
    assert!(ran["duration_ms"].as_u64().is_some());

    // A failing program: its exit code and its traceback.
    let failed = tools
        .python("import sys\nprint('before')\nassert 1 + 1 == 3, 'arithmetic'\n")
        .await;
    assert_eq!(failed["exit_code"], 1);
    assert_eq!(stdout(&failed), "before\n");
    assert!(
        failed["stderr"]
            .as_str()
            .unwrap()
            .contains("AssertionError: arithmetic"),
        "{failed:#}"
    );
    let exited = tools.python("import sys; sys.exit(3)").await;
    assert_eq!(exited["exit_code"], 3);

    // Shell, with stdin; the working directory is a private, writable tmpfs.
    let shell = tools
        .call(json!({"language": "shell", "stdin": "Ada\n",
            "code": "read name; echo \"hello $name\" > greeting; cat greeting; pwd; id -u; echo oops >&2; exit 4"}))
        .await
        .unwrap();
    assert_eq!(stdout(&shell), "hello Ada\n/tmp\n1000\n", "{shell:#}");
    assert_eq!(shell["stderr"], "oops\n");
    assert_eq!(shell["exit_code"], 4);
    assert_eq!(shell["language"], "shell");
    // Nothing is left from one run to the next.
    let next = tools
        .call(json!({"language": "shell", "code": "ls -A /tmp; echo end"}))
        .await
        .unwrap();
    assert_eq!(stdout(&next), "end\n", "{next:#}");

    // Bad arguments are the caller's error, and nothing runs.
    let (class, message) = tools
        .call(json!({"language": "ruby", "code": "puts 1"}))
        .await
        .unwrap_err();
    assert_eq!(class, "invalid_arguments");
    assert!(message.contains("ruby"), "{message}");
}

#[tokio::test]
async fn run_code_cannot_read_or_change_the_hosts_files() {
    let tools = Tools::start(991_010, &[]).await;
    let repo_file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    assert!(std::path::Path::new(repo_file).exists());
    let tools_cwd = std::env::current_dir().unwrap();
    let code = format!(
        r#"
import json, os
seen = {{}}
for path in [{repo:?}, "/root", "/home", "/work", "/etc/shadow", "/etc/passwd", "/etc/hostname", {cwd:?}, "/var", "/proc/1/root/root"]:
    try:
        if os.path.isdir(path):
            seen[path] = "listed: " + ",".join(os.listdir(path))
        else:
            with open(path) as f:
                seen[path] = "read: " + f.read(40)
    except OSError as e:
        seen[path] = type(e).__name__
for path in ["/usr/evil", "/evil", "/etc/evil"]:
    try:
        open(path, "w").write("x")
        seen[path] = "written"
    except OSError as e:
        seen[path] = type(e).__name__
print(json.dumps(seen))
print(sorted(os.listdir("/")))
"#,
        repo = repo_file,
        cwd = tools_cwd.display().to_string(),
    );
    let ran = tools.python(&code).await;
    assert_eq!(ran["exit_code"], 0, "{ran:#}");
    let mut lines = stdout(&ran).lines();
    let seen: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    for (path, what) in seen.as_object().unwrap() {
        let what = what.as_str().unwrap();
        assert!(what.ends_with("Error"), "the sandbox got at {path}: {what}");
    }
    // Only the system's programs, a few /etc files, and its own /tmp, /proc and /dev.
    let root = lines.next().unwrap();
    for host in [
        "'root'", "'home'", "'work'", "'var'", "'srv'", "'opt'", "'boot'",
    ] {
        assert!(!root.contains(host), "{root}");
    }
    assert!(root.contains("'usr'") && root.contains("'tmp'"), "{root}");
    // The host's files are untouched.
    assert!(!std::path::Path::new("/usr/evil").exists());
    // Nor can it make namespaces of its own (the kernel surface escapes start from).
    let nested = tools
        .call(json!({"language": "shell",
            "code": "unshare --user true; echo user $?; unshare --net true; echo net $?"}))
        .await
        .unwrap();
    assert_eq!(stdout(&nested), "user 1\nnet 1\n", "{nested:#}");
}

#[tokio::test]
async fn run_code_cannot_read_the_tools_process_environment() {
    let tools = Tools::start(991_020, &[]).await;
    // Its own environment, and every other process's it can see.
    let ran = tools
        .python(
            r#"
import os
print(dict(os.environ))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for name in ("environ", "cmdline"):
            try:
                print(pid, name, open(f"/proc/{pid}/{name}", "rb").read())
            except OSError as e:
                print(pid, name, type(e).__name__)
"#,
        )
        .await;
    assert_eq!(ran["exit_code"], 0, "{ran:#}");
    let secret = tools.secret.as_str();
    let out = stdout(&ran);
    assert!(!out.contains(secret), "{out}");
    assert!(
        !out.contains("OPENAI_API_KEY") && !out.contains("SWITCHYARD"),
        "{out}"
    );
    // Only what the sandbox sets.
    let environ = out.lines().next().unwrap();
    assert!(environ.contains("'HOME': '/tmp'"), "{environ}");
    let shell = tools
        .call(json!({"language": "shell", "code": "env; cat /proc/*/environ 2>/dev/null"}))
        .await
        .unwrap();
    assert!(!stdout(&shell).contains(secret), "{shell:#}");
    // Nor do the sandbox's launchers: while a sandbox runs, no process on this host has it
    // but the tools process itself.
    let (slept, (running, holders)) = tokio::join!(
        tools.call(json!({"language": "shell", "code": "sleep 2; echo done"})),
        async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            (tools.sandbox_tasks(), processes_with(secret))
        }
    );
    assert_eq!(stdout(&slept.unwrap()), "done\n");
    assert!(running > 0, "no sandbox was running");
    assert_eq!(holders, [tools.child.id().to_string()]);
}

/// The pids whose environment holds `secret`.
fn processes_with(secret: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|e| e.windows(secret.len()).any(|w| w == secret.as_bytes()))
        })
        .collect()
}

#[tokio::test]
async fn run_code_has_no_network() {
    let tools = Tools::start(991_030, &[]).await;
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // The host's own address on its way out (no packet is sent to find it).
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let host_ip = probe
        .connect("10.255.255.1:9")
        .ok()
        .and_then(|()| probe.local_addr().ok())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let ran = tools
        .python(&format!(
            r#"
import socket
for host in ["127.0.0.1", "{host_ip}", "1.1.1.1"]:
    try:
        socket.create_connection((host, {port}), timeout=2).close()
        print(host, "connected")
    except OSError as e:
        print(host, type(e).__name__)
try:
    print("dns", socket.getaddrinfo("example.com", 80)[0])
except OSError as e:
    print("dns", type(e).__name__)
"#
        ))
        .await;
    assert_eq!(ran["exit_code"], 0, "{ran:#}");
    let out = stdout(&ran);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        !out.contains("connected") && !out.contains("dns ("),
        "{out}"
    );
    // Nobody knocked.
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

#[tokio::test]
async fn a_fork_bomb_is_contained_and_leaves_nothing_behind() {
    let tools = Tools::start(991_040, &[("wall_time_ms", "3000")]).await;
    let before = process_count();
    let started = Instant::now();
    let bomb = tools
        .python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
        .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    // It ran into the process limit and was killed at the wall time, reported as such.
    assert_eq!(bomb["killed"], "timeout", "{bomb:#}");
    // The machine is back to where it was: no process of the sandbox's uid is left.
    eventually(Duration::from_secs(10), || async {
        (tools.sandbox_tasks() == 0).then_some(())
    })
    .await;
    let after = process_count();
    assert!(
        after < before + 20,
        "{before} processes before, {after} after"
    );
    // The shell version, and the service still answers.
    let bomb = tools
        .call(json!({"language": "shell", "code": "f() { f | f & }; f; sleep 1; echo survived"}))
        .await
        .unwrap();
    assert!(
        bomb["stderr"].as_str().unwrap().contains("fork"),
        "{bomb:#}"
    );
    eventually(Duration::from_secs(10), || async {
        (tools.sandbox_tasks() == 0).then_some(())
    })
    .await;
    assert_eq!(stdout(&tools.python("print(6 * 7)").await), "42\n");
}

/// Processes on this machine.
fn process_count() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count()
}

#[tokio::test]
async fn endless_loops_are_killed_at_the_wall_time_or_the_cpu_limit() {
    let tools = Tools::start(991_050, &[("wall_time_ms", "2000"), ("cpu_seconds", "30")]).await;
    let looped = tools
        .python("print('start', flush=True)\nwhile True:\n    pass\n")
        .await;
    assert_eq!(looped["killed"], "timeout", "{looped:#}");
    assert!(
        looped["duration_ms"].as_u64().unwrap() >= 2000,
        "{looped:#}"
    );
    // What it printed before is kept.
    assert_eq!(stdout(&looped), "start\n");
    // A sleeper takes no CPU: the wall time stops it too.
    let slept = tools
        .call(json!({"language": "shell", "code": "sleep 60"}))
        .await
        .unwrap();
    assert_eq!(slept["killed"], "timeout", "{slept:#}");

    // A wall time far above the CPU limit, so a busy machine cannot turn it into a timeout.
    let tools = Tools::start(
        991_060,
        &[
            ("call_timeout_ms", "50000"),
            ("wall_time_ms", "40000"),
            ("cpu_seconds", "1"),
        ],
    )
    .await;
    let spun = tools.python("while True:\n    pass\n").await;
    assert_eq!(spun["killed"], "cpu", "{spun:#}");
    assert_eq!(spun["exit_code"], 128 + 24);
}

#[tokio::test]
async fn huge_output_is_capped_and_the_run_stopped() {
    let tools = Tools::start(
        991_070,
        &[("max_output_bytes", "4096"), ("wall_time_ms", "8000")],
    )
    .await;
    let started = Instant::now();
    let flood = tools.python("while True:\n    print('x' * 1000)\n").await;
    assert_eq!(flood["truncated"], true, "{flood:#}");
    assert_eq!(flood["killed"], "output", "{flood:#}");
    assert_eq!(stdout(&flood).len(), 4096);
    // Stopped at the cap, not at the wall time.
    assert!(started.elapsed() < Duration::from_secs(8));
    let flood = tools
        .call(json!({"language": "shell", "code": "yes error >&2"}))
        .await
        .unwrap();
    assert_eq!(flood["killed"], "output", "{flood:#}");
    assert_eq!(flood["stderr"].as_str().unwrap().len(), 4096);
    eventually(Duration::from_secs(10), || async {
        (tools.sandbox_tasks() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_memory_hog_is_refused_its_memory() {
    let tools = Tools::start(991_080, &[("memory_mb", "128")]).await;
    let hog = tools
        .python("x = bytearray(1 << 30)\nprint('got it')\n")
        .await;
    assert_eq!(hog["killed"], "memory", "{hog:#}");
    assert_eq!(hog["exit_code"], 1);
    assert_eq!(stdout(&hog), "");
    assert!(hog["stderr"].as_str().unwrap().contains("MemoryError"));
    // Growing a little at a time ends the same way.
    let hog = tools
        .python("chunks = []\nwhile True:\n    chunks.append(b' ' * (1 << 20))\n")
        .await;
    assert_eq!(hog["killed"], "memory", "{hog:#}");
    // The private /tmp is bounded too.
    let filled = tools
        .python("open('big', 'wb').write(b'x' * (64 << 20))")
        .await;
    assert_ne!(filled["exit_code"], 0, "{filled:#}");
    assert!(
        filled["stderr"]
            .as_str()
            .unwrap()
            .contains("File too large"),
        "{filled:#}"
    );
}

#[tokio::test]
async fn without_a_working_sandbox_run_code_is_unavailable_and_runs_nothing() {
    let dir = tempfile::TempDir::new().unwrap();
    let marker = dir.path().join("ran");
    let code = json!({"language": "shell", "code": format!("touch {}", marker.display())});
    // No bubblewrap at all.
    let tools = Tools::start(991_090, &[("bwrap", "/nonexistent/bwrap")]).await;
    let (class, message) = tools.call(code.clone()).await.unwrap_err();
    assert_eq!(class, "unavailable");
    assert!(
        message.contains("bwrap not found at /nonexistent/bwrap"),
        "{message}"
    );
    assert!(message.contains("bubblewrap"), "{message}");
    // A "bubblewrap" that cannot build a sandbox (here: one that always fails, as bwrap
    // does without user namespaces).
    let tools = Tools::start(991_100, &[("bwrap", "/bin/false")]).await;
    let (class, message) = tools.call(code.clone()).await.unwrap_err();
    assert_eq!(class, "unavailable");
    assert!(message.contains("the sandbox does not start"), "{message}");
    // No Python where configured.
    let tools = Tools::start(991_110, &[("python", "/nonexistent/python3")]).await;
    let (class, message) = tools.call(code).await.unwrap_err();
    assert_eq!(class, "unavailable");
    assert!(message.contains("python not found"), "{message}");
    assert!(!marker.exists());
}
