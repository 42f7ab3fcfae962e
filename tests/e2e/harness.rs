//! Real parts for end-to-end tests: a `nats-server -js` per test (random port, temporary
//! store, killed on drop), fake providers that are real HTTP servers on loopback (the
//! `fake-provider` crate), and a stack that runs the gateway and workers in-process or as
//! processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shared::config::{Config, Source};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use fake_provider::{FakeProvider, Fault, Format};

/// The API key the fake provider expects; tests check it never leaks.
pub const FAKE_KEY: &str = "sk-test-fake-0123456789abcdef";

/// The `nats-server` every test runs: found (or fetched into the cache) once per test
/// binary by the same locator `switchyard up` uses.
#[expect(clippy::print_stderr, reason = "why the first test waits: a download")]
pub fn nats_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        switchyard::nats_server::locate(|note| eprintln!("{note}"))
            .map_err(|e| e.to_string())
            .unwrap()
    })
}

/// A test server's configuration: listening on `listen`, storing in `store`. Its storage
/// limit is explicit: by default nats-server offers 75% of the free disk, and streams
/// reserve their whole `max_bytes` (2.3 GiB with the defaults), so on a nearly full disk
/// every test would fail at provisioning while writing only kilobytes.
pub fn nats_conf(listen: &str, store: &str) -> String {
    format!(
        "listen: {listen:?}\nmax_payload: 8MB\njetstream {{\n  store_dir: {store:?}\n  max_file_store: 16GB\n}}\n"
    )
}

/// A `nats-server -js` on a random port with a temporary store.
pub struct Nats {
    child: Child,
    pub url: String,
    conf_path: PathBuf,
    dir: TempDir,
}

impl Nats {
    pub fn start() -> Self {
        Self::start_with(|store| nats_conf("127.0.0.1:-1", store))
    }

    /// Starts a server whose configuration `conf` writes, given the store directory. It must
    /// listen on `127.0.0.1:-1` (a random port).
    pub fn start_with(conf: impl FnOnce(&str) -> String) -> Self {
        let dir = TempDir::new().unwrap();
        let conf_path = dir.path().join("nats.conf");
        let store = dir.path().join("js").display().to_string();
        std::fs::write(&conf_path, conf(&store)).unwrap();
        let (child, url) = Self::spawn(&conf_path, dir.path());
        // Restarts must come back on the same port: pin it in the configuration.
        let port = url.rsplit(':').next().unwrap();
        let text = std::fs::read_to_string(&conf_path).unwrap();
        std::fs::write(
            &conf_path,
            text.replace("127.0.0.1:-1", &format!("127.0.0.1:{port}")),
        )
        .unwrap();
        Self {
            child,
            url,
            conf_path,
            dir,
        }
    }

    fn spawn(conf_path: &Path, dir: &Path) -> (Child, String) {
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(conf_path)
            .arg("--ports_file_dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ports_file = dir.join(format!("nats-server_{}.ports", child.id()));
        let started = Instant::now();
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = ports["nats"][0].as_str()
            {
                break url.to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (child, url)
    }

    /// Stops the server (SIGTERM, so JetStream flushes its store) and waits for it to exit.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().try_into().unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    /// Starts the stopped server again, on the same port with the same store.
    pub fn start_again(&mut self) {
        let (child, url) = Self::spawn(&self.conf_path, self.dir.path());
        assert_eq!(url, self.url, "the restarted server must keep its port");
        self.child = child;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Configuration for a test stack, as TOML plus `SWITCHYARD__…` overrides.
pub fn config_toml(nats_url: &str, provider_url: &str) -> String {
    format!(
        r#"
[nats]
url = "{nats_url}"

[queue]
ack_wait_ms = 1000
max_deliver = 4

[gateway]
listen = "127.0.0.1:0"
default_timeout_ms = 30000

[worker]
concurrency = 4
drain_timeout_ms = 20000

[providers.fake]
kind = "openai"
base_url = "{provider_url}"
api_key_env = "FAKE_PROVIDER_KEY"
timeout_ms = 20000
direct_models = ["org/some-model"]

[providers.simulated]
kind = "simulated"

[providers.slowsim]
kind = "simulated"
chunk_delay_ms = 100

[routes.fake]
provider = "fake"
model = "fake-model"

[routes.simulated]
provider = "simulated"
model = "simulated-1"

[routes.slow-stream]
provider = "slowsim"
model = "simulated-slow"
"#
    )
}

/// The environment a stack's processes get: the provider key plus `overrides`.
pub fn stack_env(overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = overrides
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.insert("FAKE_PROVIDER_KEY".into(), FAKE_KEY.into());
    env
}

/// NATS (one server, or a [`crate::nats_cluster::NatsCluster`]), a fake provider, an
/// in-process gateway and any number of workers.
pub struct Stack<N = Nats> {
    pub nats: N,
    pub provider: FakeProvider,
    pub config: Arc<Config>,
    pub toml: String,
    pub env: HashMap<String, String>,
    pub base: String,
    pub http: reqwest::Client,
    pub client: async_nats::Client,
    gateway_shutdown: CancellationToken,
    gateway: Option<JoinHandle<()>>,
    workers: Vec<(String, CancellationToken, JoinHandle<()>)>,
    tools: Option<(CancellationToken, JoinHandle<()>)>,
    memory: Option<(CancellationToken, JoinHandle<()>)>,
    _dir: TempDir,
}

impl Stack {
    /// A stack with `workers` in-process workers and configuration `overrides`.
    pub async fn start(workers: usize, overrides: &[(&str, &str)]) -> Self {
        Self::start_with(workers, overrides, "").await
    }

    /// A stack whose configuration also has `extra` (more providers and routes, in TOML).
    pub async fn start_with(workers: usize, overrides: &[(&str, &str)], extra: &str) -> Self {
        let nats = Nats::start();
        let url = nats.url.clone();
        Self::start_on(nats, &url, workers, overrides, extra).await
    }
}

impl<N> Stack<N> {
    /// A stack on `nats`, whose clients connect to `url`.
    pub async fn start_on(
        nats: N,
        url: &str,
        workers: usize,
        overrides: &[(&str, &str)],
        extra: &str,
    ) -> Self {
        let provider = FakeProvider::start(Format::OpenAi).await.unwrap();
        let toml = config_toml(url, &provider.base_url()) + extra;
        let env = stack_env(overrides);
        let config = Arc::new(Config::load(Source::Toml(&toml), &env).unwrap());
        let client = shared::nats::connect(url, "test").await.unwrap();
        let (base, gateway_shutdown, gateway) = start_gateway(config.clone(), client.clone()).await;
        let mut stack = Self {
            nats,
            provider,
            config,
            toml,
            env,
            base,
            http: reqwest::Client::new(),
            client,
            gateway_shutdown,
            gateway: Some(gateway),
            workers: Vec::new(),
            tools: None,
            memory: None,
            _dir: TempDir::new().unwrap(),
        };
        for _ in 0..workers {
            stack.start_worker().await;
        }
        stack.wait_ready().await;
        stack
    }

    /// Serves the built-in tools in-process (as `switchyard tools` does), once they answer.
    pub async fn start_tools(&mut self) {
        let token = CancellationToken::new();
        let handle = tokio::spawn({
            let (client, config, token) = (self.client.clone(), self.config.clone(), token.clone());
            async move { tools::serve(client, config, token).await.unwrap() }
        });
        self.tools = Some((token, handle));
        wait_for_tools(&self.client).await;
    }

    /// The SQLite file of the stack's memory index (`start_memory`).
    pub fn memory_file(&self) -> PathBuf {
        self._dir.path().join("memory.db")
    }

    /// Runs the memory index in-process (as `switchyard memory` does) on
    /// [`Stack::memory_file`], once it answers searches.
    pub async fn start_memory(&mut self) {
        let token = CancellationToken::new();
        let handle = tokio::spawn({
            let (client, config, token) = (self.client.clone(), self.config.clone(), token.clone());
            let path = self.memory_file();
            async move { memory::serve(client, config, path, token).await.unwrap() }
        });
        self.memory = Some((token, handle));
        eventually(Duration::from_secs(20), || async {
            let probe = shared::memory::Query::text("probe");
            shared::memory::search(&self.client, &probe, Duration::from_millis(500))
                .await
                .ok()
        })
        .await;
    }

    /// Stops the in-process memory index and waits for it to end.
    pub async fn stop_memory(&mut self) {
        if let Some((token, handle)) = self.memory.take() {
            token.cancel();
            handle.await.unwrap();
        }
    }

    /// Starts one more in-process worker; returns its id.
    pub async fn start_worker(&mut self) -> String {
        let id = worker::new_worker_id();
        let token = CancellationToken::new();
        let handle = tokio::spawn({
            let (config, client, id, token) = (
                self.config.clone(),
                self.client.clone(),
                id.clone(),
                token.clone(),
            );
            async move { worker::run(config, client, id, token).await.unwrap() }
        });
        self.workers.push((id.clone(), token, handle));
        id
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "gateway never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes the stack's configuration to a file, for worker processes.
    pub fn config_file(&self) -> PathBuf {
        let path = self._dir.path().join("switchyard.toml");
        std::fs::write(&path, &self.toml).unwrap();
        path
    }

    /// Starts `switchyard worker` as a separate process.
    pub fn spawn_worker_process(&self, log: &Path) -> Child {
        self.process("worker", log).spawn().unwrap()
    }

    /// `switchyard <role>` on this stack's configuration and environment, logging to `log`.
    fn process(&self, role: &str, log: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("--config")
            .arg(self.config_file())
            .arg(role)
            .env_remove("NATS_URL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Stops the in-process gateway (gracefully, as a deploy would) and starts a new one
    /// with its own NATS connection and a new address, which `base` then names. Workers and
    /// NATS carry on untouched.
    pub async fn restart_gateway(&mut self) {
        self.gateway_shutdown.cancel();
        if let Some(gateway) = self.gateway.take() {
            gateway.await.unwrap();
        }
        let client = shared::nats::connect(&self.config.nats.url, "gateway")
            .await
            .unwrap();
        let (base, shutdown, gateway) = start_gateway(self.config.clone(), client).await;
        (self.base, self.gateway_shutdown, self.gateway) = (base, shutdown, Some(gateway));
        self.wait_ready().await;
    }

    /// Starts `switchyard gateway` as a separate process on a free port; returns it once
    /// it serves requests, with its base URL (read from its "gateway listening" log line).
    pub async fn spawn_gateway_process(&self, log: &Path) -> (Child, String) {
        let mut cmd = self.process("gateway", log);
        let mut child = cmd.spawn().unwrap();
        let started = Instant::now();
        let base = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let addr = text
                .lines()
                .find(|l| l.contains("gateway listening"))
                .and_then(|l| l.split("addr=").nth(1)?.split_whitespace().next());
            if let Some(addr) = addr {
                break format!("http://{addr}");
            }
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none(),
                "the gateway exited with {exited:?}:\n{text}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the gateway never listened:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        eventually(Duration::from_secs(20), || async {
            let ready = self.http.get(format!("{base}/readyz")).send().await;
            ready.is_ok_and(|r| r.status() == 200).then_some(())
        })
        .await;
        (child, base)
    }

    /// A chat request to the `fake` route with `text`, sent beside the test body.
    pub fn send(&self, text: &str) -> JoinHandle<reqwest::Response> {
        let request = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&chat_body("fake", text));
        tokio::spawn(async move { request.send().await.unwrap() })
    }

    pub async fn chat(&self, body: serde_json::Value) -> reqwest::Response {
        self.chat_with(body, &[]).await
    }

    pub async fn chat_with(
        &self,
        body: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// The stored result of a task, as JSON.
    pub async fn task(&self, id: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/tasks/{id}", self.base))
            .send()
            .await
            .unwrap()
    }

    pub async fn results_bucket(&self) -> async_nats::jetstream::kv::Store {
        async_nats::jetstream::new(self.client.clone())
            .get_key_value("results")
            .await
            .unwrap()
    }

    /// `GET path` on the gateway, as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /v1/providers`, and the entry of the first target of `provider`.
    pub async fn target_health(&self, provider: &str) -> (serde_json::Value, serde_json::Value) {
        let report = self.get_json("/v1/providers").await;
        let target = report["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["provider"] == provider)
            .unwrap()
            .clone();
        (report, target)
    }

    /// The stored result of a task once there is one.
    pub async fn wait_result(&self, id: &str) -> serde_json::Value {
        eventually(Duration::from_secs(10), || async {
            let r = self.task(id).await;
            if r.status() != 200 {
                return None;
            }
            r.json().await.ok()
        })
        .await
    }

    /// The stored result of task `id` (read from the bucket) once there is one.
    pub async fn stored(&self, id: impl ToString) -> serde_json::Value {
        let (results, key) = (self.results_bucket().await, id.to_string());
        eventually(Duration::from_secs(20), || async {
            let bytes = results.get(&key).await.unwrap()?;
            Some(serde_json::from_slice(&bytes).unwrap())
        })
        .await
    }

    /// Waits until the `TASKS` stream is empty: every queued task was settled (acked or
    /// terminated), so whatever the workers published for them was sent before.
    pub async fn queue_drains(&self) {
        let js = async_nats::jetstream::new(self.client.clone());
        eventually(Duration::from_secs(20), || async {
            let mut tasks = js.get_stream(shared::names::TASKS_STREAM).await.unwrap();
            (tasks.info().await.unwrap().state.messages == 0).then_some(())
        })
        .await;
    }

    /// How many lifecycle events each task id has in the `EVENTS` stream.
    pub async fn task_events(&self) -> HashMap<String, usize> {
        let js = async_nats::jetstream::new(self.client.clone());
        let mut stream = js.get_stream("EVENTS").await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut counts = HashMap::new();
        if state.messages == 0 {
            return counts;
        }
        for seq in state.first_sequence..=state.last_sequence {
            // Task lifecycle events only (`events.task.*`), not workflow progress.
            if let Ok(message) = stream.get_raw_message(seq).await
                && message.subject.starts_with("events.task.")
            {
                let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                let id = event["task_id"].as_str().unwrap().to_owned();
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    }

    /// Starts the gateway's graceful shutdown without waiting for it.
    pub fn begin_gateway_shutdown(&self) {
        self.gateway_shutdown.cancel();
    }

    /// Stops the gateway and every worker, waiting for them to drain.
    pub async fn stop(mut self) {
        for (_, token, handle) in self.workers.drain(..) {
            token.cancel();
            handle.await.unwrap();
        }
        self.gateway_shutdown.cancel();
        if let Some(gateway) = self.gateway.take() {
            gateway.await.unwrap();
        }
        if let Some((token, handle)) = self.tools.take() {
            token.cancel();
            handle.await.unwrap();
        }
        self.stop_memory().await;
    }
}

/// Waits until the tools service lists every built-in tool in `$SRV.INFO`. (It answers
/// `$SRV.PING` before its endpoints subscribe; an endpoint it lists has subscribed, since the
/// answer leaves on the same connection after the subscription.)
pub async fn wait_for_tools(client: &async_nats::Client) {
    let subject = format!("$SRV.INFO.{}", shared::tools::SERVICE_NAME);
    eventually(Duration::from_secs(20), || async {
        let request = async_nats::Request::new().timeout(Some(Duration::from_millis(500)));
        let answer = client.send_request(subject.clone(), request).await.ok()?;
        let info: serde_json::Value = serde_json::from_slice(&answer.payload).ok()?;
        let listed: Vec<&str> = info["endpoints"]
            .as_array()?
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        shared::tools::BUILTIN
            .iter()
            .all(|t| listed.contains(&t.name))
            .then_some(())
    })
    .await;
}

/// Runs a gateway in-process on a free loopback port: its base URL, its shutdown token and
/// its task.
async fn start_gateway(
    config: Arc<Config>,
    client: async_nats::Client,
) -> (String, CancellationToken, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn({
        let token = shutdown.clone();
        async move {
            gateway::run(config, client, listener, token, || ())
                .await
                .unwrap()
        }
    });
    (base, shutdown, gateway)
}

/// The `x-switchyard-task-id` of a response.
/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn task_id(response: &reqwest::Response) -> String {
    response.headers()["x-switchyard-task-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The text of a `chat.completion`'s first choice.
pub fn content(completion: &serde_json::Value) -> &str {
    completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
}

/// A chat request for `route` with one user message.
pub fn chat_body(route: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"model": route, "messages": [{"role": "user", "content": text}]})
}

/// Polls `check` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Checks that `result` is task `id` refused as `bad_request`, naming `field`.
pub fn assert_refused(result: &serde_json::Value, id: shared::TaskId, field: &str) {
    // The error only: a result echoing a 5,000-character route is unreadable in a log.
    let error = &result["error"];
    assert_eq!(result["id"], id.to_string(), "{error}");
    assert_eq!(result["status"], "failed", "{error}");
    assert_eq!(error["class"], "bad_request", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(&format!("`{field}`")), "{message}");
}

/// Every request the stack's fake provider received whose body contains `text`, as sent.
pub fn requests_with(stack: &Stack, text: &str) -> Vec<serde_json::Value> {
    stack
        .provider
        .bodies()
        .into_iter()
        .filter(|b| b.to_string().contains(text))
        .collect()
}

/// The tool messages of a request the fake provider received, parsed.
pub fn tool_messages(request: &serde_json::Value) -> Vec<serde_json::Value> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| serde_json::from_str(m["content"].as_str().unwrap()).unwrap())
        .collect()
}

/// The chunks of SSE `data:` payloads that end with `[DONE]` (asserted), parsed.
pub fn chunks_before_done(data: &[String]) -> Vec<serde_json::Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The chunks of an SSE body that ended with `[DONE]`.
pub fn done_chunks(body: &str) -> Vec<serde_json::Value> {
    chunks_before_done(&sse_data(body))
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_owned())
        .collect()
}
