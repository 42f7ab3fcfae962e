//! `switchyard run "goal"`, `switchyard tasks show|cancel|list` and `switchyard agents …`:
//! agent work from the terminal, through the gateway's task API. `run` submits the goal,
//! shows the steps as they go (a tree redrawn in place on a terminal, one line per change
//! otherwise) and prints the deliverable.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// How often `run` asks for the task's state.
const POLL_EVERY: Duration = Duration::from_millis(300);

/// Statuses after which a task changes no more.
const ENDED: [&str; 3] = ["completed", "failed", "cancelled"];

/// The gateway's task API at `base` (`http://host:port`).
#[derive(Debug)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching the gateway at {}", self.base))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .context("reading the gateway's answer")?;
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            bail!("the gateway answered {status}: {message}");
        }
        Ok(body)
    }

    pub async fn show(&self, id: &str) -> anyhow::Result<Value> {
        self.call(self.http.get(format!("{}/v1/tasks/{id}", self.base)))
            .await
    }

    /// The task's deliverable: its `output`, or the whole of it from the artifacts store
    /// when `output` is only the preview (`output_artifact`).
    pub async fn deliverable(&self, task: &Value) -> anyhow::Result<String> {
        let Some(id) = task["output_artifact"]["id"].as_str() else {
            return Ok(task["output"].as_str().unwrap_or_default().to_owned());
        };
        let response = self
            .http
            .get(format!("{}/v1/artifacts/{id}", self.base))
            .send()
            .await
            .with_context(|| format!("reaching the gateway at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            bail!("the gateway answered {status} for artifact {id}");
        }
        let bytes = response.bytes().await.context("reading the artifact")?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn agents(&self) -> anyhow::Result<Value> {
        self.call(self.http.get(format!("{}/v1/agents", self.base)))
            .await
    }

    /// `/v1/agents/{name}`, the name one path segment whatever it holds (`?`, `/`, …).
    fn agent_url(&self, name: &str) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/agents", self.base))
            .with_context(|| format!("{} is not a URL", self.base))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} cannot take a path", self.base))?
            .push(name);
        Ok(url)
    }

    pub async fn agent(&self, name: &str) -> anyhow::Result<Value> {
        self.call(self.http.get(self.agent_url(name)?)).await
    }

    pub async fn put_agent(&self, name: &str, profile: &Value) -> anyhow::Result<Value> {
        self.call(self.http.put(self.agent_url(name)?).json(profile))
            .await
    }

    pub async fn delete_agent(&self, name: &str) -> anyhow::Result<Value> {
        self.call(self.http.delete(self.agent_url(name)?)).await
    }

    /// The newest tasks (`GET /v1/tasks`), those with `status` only when given.
    pub async fn list(&self, status: Option<&str>, limit: usize) -> anyhow::Result<Value> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(status) = status {
            query.push(("status", status.to_owned()));
        }
        self.call(
            self.http
                .get(format!("{}/v1/tasks", self.base))
                .query(&query),
        )
        .await
    }

    pub async fn cancel(&self, id: &str) -> anyhow::Result<Value> {
        self.call(self.http.delete(format!("{}/v1/tasks/{id}", self.base)))
            .await
    }

    /// Submits `goal` (for `team`, if given), follows it to its end while `show` draws
    /// progress, and returns the final state.
    pub async fn run(
        &self,
        goal: &str,
        team: Option<&str>,
        out: &mut Progress,
    ) -> anyhow::Result<Value> {
        let mut body = json!({"goal": goal});
        if let Some(team) = team {
            body["team"] = json!(team);
        }
        let accepted = self
            .call(
                self.http
                    .post(format!("{}/v1/tasks", self.base))
                    .json(&body),
            )
            .await?;
        let id = accepted["id"]
            .as_str()
            .context("the gateway gave no task id")?
            .to_owned();
        out.line(&format!("task {id}"));
        loop {
            let task = self.show(&id).await?;
            out.draw(&task);
            if ENDED.contains(&task["status"].as_str().unwrap_or_default()) {
                return Ok(task);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// Draws a task's steps: redrawn in place on a terminal, a line per change otherwise.
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    /// Lines of the last drawing (terminal) or last state per step (plain).
    drawn: usize,
    seen: HashMap<String, String>,
    started: HashMap<String, Instant>,
    elapsed: HashMap<String, Duration>,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            terminal: std::io::stdout().is_terminal(),
            drawn: 0,
            seen: HashMap::new(),
            started: HashMap::new(),
            elapsed: HashMap::new(),
        }
    }

    fn line(&self, text: &str) {
        write_out(&format!("{text}\n"));
    }

    fn draw(&mut self, task: &Value) {
        let steps = task["steps"].as_array().cloned().unwrap_or_default();
        let mut lines = vec![format!(
            "{} — {}",
            task["status"].as_str().unwrap_or("?"),
            task["goal"].as_str().unwrap_or("")
        )];
        let mut changes = Vec::new();
        for step in &steps {
            let id = step["id"].as_str().unwrap_or("?").to_owned();
            let status = step["status"].as_str().unwrap_or("?").to_owned();
            if status == "dispatched" {
                self.started.entry(id.clone()).or_insert_with(Instant::now);
            } else if let Some(start) = self.started.get(&id) {
                self.elapsed
                    .entry(id.clone())
                    .or_insert_with(|| start.elapsed());
            }
            let time = self
                .elapsed
                .get(&id)
                .copied()
                .or_else(|| self.started.get(&id).map(Instant::elapsed))
                .map_or_else(String::new, |d| format!("{:.1}s", d.as_secs_f64()));
            let mark = match status.as_str() {
                "completed" => "✓",
                "failed" => "✗",
                "cancelled" => "–",
                "dispatched" => "…",
                _ => " ",
            };
            let deps = step["depends_on"]
                .as_array()
                .filter(|d| !d.is_empty())
                .map_or_else(String::new, |d| {
                    let names: Vec<&str> = d.iter().filter_map(Value::as_str).collect();
                    format!(" ← {}", names.join(", "))
                });
            let line = format!(
                "  {mark} {id:<14} {:<12} {status:<10} {time:>6}{deps}",
                step["agent"].as_str().unwrap_or("-")
            );
            if self.seen.get(&id) != Some(&status) {
                changes.push(line.clone());
                self.seen.insert(id, status);
            }
            lines.push(line);
        }
        if self.terminal {
            let mut text = String::new();
            if self.drawn > 0 {
                // Up to the first line of the last drawing, and clear below.
                text.push_str(&format!("\x1b[{}A\x1b[J", self.drawn));
            }
            for line in &lines {
                text.push_str(line);
                text.push('\n');
            }
            self.drawn = lines.len();
            write_out(&text);
        } else {
            for line in changes {
                self.line(line.trim_start());
            }
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET /v1/agents` as a table: one agent a line.
pub fn agent_table(list: &Value) -> String {
    let mut lines = vec![format!(
        "{:<16} {:<13} {:<12} {:<10} {:>9} {:>6}  {}",
        "NAME", "SOURCE", "ROLE", "ROUTE", "IN FLIGHT", "QUEUED", "CAPABILITIES"
    )];
    for agent in list["data"].as_array().into_iter().flatten() {
        let text = |key: &str| agent[key].as_str().unwrap_or("-").to_owned();
        let load = &agent["load"];
        let in_flight = match (load["in_flight"].as_u64(), load["capacity"].as_u64()) {
            (Some(n), Some(cap)) => format!("{n}/{cap}"),
            _ => "-".to_owned(),
        };
        let queued = load["queued"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |n| n.to_string());
        let capabilities: Vec<&str> = agent["capabilities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        lines.push(format!(
            "{:<16} {:<13} {:<12} {:<10} {:>9} {:>6}  {}",
            text("name"),
            text("source"),
            text("role"),
            text("route"),
            in_flight,
            queued,
            capabilities.join(", ")
        ));
    }
    lines.join("\n")
}

/// Writes to stdout in one piece.
fn write_out(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`switchyard run … | head`) is not worth dying for.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
