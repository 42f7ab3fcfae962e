//! `ask_agent`: during its work an agent asks another agent (by name, or by a capability)
//! a question. The question becomes a task on the asked agent's queue — the durable path,
//! with failover, health, the DLQ and the agent's own tools — and the call waits for its
//! result in the `results` bucket. Its id is derived from the asking task, the call's id,
//! the agent and the question, so the same call made again asks the same task (and finds
//! its stored answer), while another question never gets a stored answer meant for one.
//! Bounded: at most `[tools] ask_max_depth` asks deep, within `[tools] ask_timeout_ms` and
//! the asking task's deadline; an ask that would close a cycle (A asks B, B asks A) is
//! refused, naming the chain.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::agents::{AgentProfile, Catalog, LiveCatalog, QUEUE_PREFIX};
use shared::config::Config;
use shared::names::{AGENTS_BUCKET, HEADER_MSG_ID, RESULTS_BUCKET, task_subject};
use shared::task::{TaskResult, TaskStatus, now_ms};
use shared::tools::{ToolError, ToolErrorClass, caller};
use shared::{Capability, Priority, Task, TaskId};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// `ask_agent`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arguments {
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    capability: Option<String>,
    question: String,
}

/// Who asks, read from the call's headers (`shared::tools::caller`).
#[derive(Debug, Default)]
struct Caller {
    task: Option<TaskId>,
    call_id: Option<String>,
    /// The agents that asked so far, the calling agent last.
    chain: Vec<String>,
    deadline_ms: Option<u64>,
    priority: Priority,
}

impl Caller {
    fn read(headers: Option<&HeaderMap>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        Self {
            task: get(caller::TASK_ID).and_then(|t| t.parse().ok()),
            call_id: get(caller::CALL_ID).filter(|c| !c.is_empty()),
            chain: get(caller::ASKED_BY)
                .map(|c| {
                    c.split(',')
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            deadline_ms: get(caller::DEADLINE_MS).and_then(|d| d.parse().ok()),
            priority: get(caller::PRIORITY)
                .and_then(|p| p.parse().ok())
                .unwrap_or_default(),
        }
    }
}

/// What asking needs once NATS is there: the agents as they are now and the results.
#[derive(Debug)]
struct Ready {
    agents: LiveCatalog,
    results: kv::Store,
}

/// Puts questions to agents over the task path.
#[derive(Debug)]
pub struct Asker {
    js: jetstream::Context,
    config: Arc<Config>,
    shutdown: CancellationToken,
    ready: OnceCell<Ready>,
}

impl Asker {
    pub fn new(
        client: async_nats::Client,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            js: jetstream::new(client),
            config,
            shutdown,
            ready: OnceCell::new(),
        }
    }

    /// The buckets, opened at the first ask (the gateway and workers create them), and the
    /// agents, kept current with a watch from then on.
    #[expect(
        clippy::disallowed_methods,
        reason = "the watch lives as long as the process serves, ended by its shutdown token"
    )]
    async fn ready(&self) -> Result<&Ready, ToolError> {
        self.ready
            .get_or_try_init(|| async {
                let unavailable = |what: &str| {
                    ToolError::new(
                        ToolErrorClass::Unavailable,
                        format!("cannot ask agents yet: {what} (is a gateway or worker running?)"),
                    )
                };
                let bucket = self
                    .js
                    .get_key_value(AGENTS_BUCKET)
                    .await
                    .map_err(|_| unavailable("no agents bucket"))?;
                let results = self
                    .js
                    .get_key_value(RESULTS_BUCKET)
                    .await
                    .map_err(|_| unavailable("no results bucket"))?;
                let agents = LiveCatalog::load(
                    &bucket,
                    self.config.catalog.clone(),
                    self.config.routes.keys().cloned().collect(),
                    self.config.mcp.keys().cloned().collect(),
                )
                .await
                .map_err(|_| unavailable("the agents bucket could not be read"))?;
                tokio::spawn(agents.clone().follow(bucket, self.shutdown.clone()));
                Ok(Ready { agents, results })
            })
            .await
    }

    /// Asks the question in `arguments` on behalf of the caller in `headers`; the answer is
    /// `{"agent", "answer", "task_id", "usage"}`.
    pub async fn call(
        &self,
        arguments: &Value,
        headers: Option<&HeaderMap>,
    ) -> Result<Value, ToolError> {
        let args: Arguments = serde_json::from_value(arguments.clone())
            .map_err(|e| ToolError::new(ToolErrorClass::InvalidArguments, e.to_string()))?;
        let caller = Caller::read(headers);
        let limits = &self.config.tools;
        too_deep(&caller.chain, limits.ask_max_depth)?;
        let ready = self.ready().await?;
        let catalog = ready.agents.current();
        let agent = target(&catalog, &args, &caller.chain)?;
        let now = now_ms();
        let timeout_ms = limits.ask_timeout_ms;
        let deadline_ms = caller
            .deadline_ms
            .unwrap_or(u64::MAX)
            .min(now.saturating_add(timeout_ms));
        let capability: Capability = format!("{QUEUE_PREFIX}{}", agent.name)
            .parse()
            .map_err(|_| ToolError::new(ToolErrorClass::Internal, "the agent's queue name"))?;
        // The same call (id, agent and question) of the same task asks the same task again;
        // a model that reuses a call id for another question asks a new one.
        let id = match (&caller.task, &caller.call_id) {
            (Some(task), Some(call)) => {
                task.child(&format!("ask:{call}:{}:{}", agent.name, args.question))
            }
            _ => TaskId::new(),
        };
        let mut chain = caller.chain.clone();
        let asker = chain.last().cloned();
        let task = Task {
            id,
            capability,
            priority: caller.priority,
            route: agent.route.clone(),
            request: agents::prompt::question(agent, asker.as_deref(), &args.question),
            deadline_ms,
            reply_to: None,
            created_ms: now,
            replay_of: None,
            step: None,
            asked_by: std::mem::take(&mut chain),
            session: None,
        };
        let result = self.run(ready, &task).await?;
        answer(&agent.name, &task, &result)
    }

    /// Publishes the task (unless its result is already stored) and waits for its result.
    async fn run(&self, ready: &Ready, task: &Task) -> Result<TaskResult, ToolError> {
        let key = task.id.to_string();
        let unavailable = |what: String| ToolError::new(ToolErrorClass::Unavailable, what);
        // Watching first, so a result stored between the publish and the wait is seen.
        let mut watch = ready
            .results
            .watch_with_history(&key)
            .await
            .map_err(|e| unavailable(format!("cannot watch for the answer: {e}")))?;
        // Asked before (the asking step runs again after its worker died): the answer is
        // stored, and publishing again past JetStream's duplicate window would run it again.
        if let Ok(Some(stored)) = ready.results.get(&key).await
            && let Ok(result) = serde_json::from_slice::<TaskResult>(&stored)
        {
            return Ok(result);
        }
        let payload = serde_json::to_vec(task)
            .map_err(|e| ToolError::new(ToolErrorClass::Internal, e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, key.as_str());
        let subject = task_subject(&task.capability, task.priority);
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| unavailable(format!("cannot queue the question: {e}")))?;
        ack.await
            .map_err(|e| unavailable(format!("the question was not queued: {e}")))?;
        debug!(task = %task.id, agent = %task.capability, "asked");
        let wait = task.remaining();
        let stored = tokio::time::timeout(wait, async {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                if entry.operation == kv::Operation::Put
                    && let Ok(result) = serde_json::from_slice::<TaskResult>(&entry.value)
                {
                    return Some(result);
                }
            }
            None
        })
        .await;
        match stored {
            Ok(Some(result)) => Ok(result),
            Ok(None) => Err(unavailable("the watch for the answer ended".to_owned())),
            Err(_) => Err(ToolError::new(
                ToolErrorClass::Timeout,
                format!(
                    "no answer within {} ms; the question stays queued as task {}",
                    wait.as_millis(),
                    task.id
                ),
            )),
        }
    }
}

/// Refuses an ask that would nest deeper than `max`. The chain ends with the asking agent,
/// so its length is the ask's depth: an agent working on a step asks at depth 1 (as does a
/// direct chat request, with no chain), the agent it asks at depth 2, and so on.
fn too_deep(chain: &[String], max: usize) -> Result<(), ToolError> {
    if chain.len().max(1) <= max {
        return Ok(());
    }
    Err(ToolError::new(
        ToolErrorClass::Denied,
        format!(
            "asks nest at most {max} deep ([tools] ask_max_depth); this one would follow {}",
            chain.join(" → ")
        ),
    ))
}

/// The agent to ask: the one named, or the first by name with the capability that is not
/// already in the chain. Asking an agent in the chain would close a cycle.
fn target<'a>(
    catalog: &'a Catalog,
    args: &Arguments,
    chain: &[String],
) -> Result<&'a AgentProfile, ToolError> {
    let invalid = |m: String| ToolError::new(ToolErrorClass::InvalidArguments, m);
    let agent = match (&args.agent, &args.capability) {
        (Some(name), None) => catalog
            .agents
            .get(name)
            .ok_or_else(|| invalid(format!("no agent `{name}` (known: {})", names(catalog))))?,
        (None, Some(capability)) => {
            let mut having = catalog
                .agents
                .values()
                .filter(|a| a.capabilities.contains(capability));
            let first = having
                .clone()
                .next()
                .ok_or_else(|| invalid(format!("no agent has the capability `{capability}`")))?;
            having.find(|a| !chain.contains(&a.name)).unwrap_or(first)
        }
        _ => {
            return Err(invalid(
                "give exactly one of `agent` and `capability`".to_owned(),
            ));
        }
    };
    if chain.contains(&agent.name) {
        let cycle: Vec<&str> = chain
            .iter()
            .map(String::as_str)
            .chain([agent.name.as_str()])
            .collect();
        return Err(ToolError::new(
            ToolErrorClass::Denied,
            format!(
                "asking `{}` would close a cycle of asks: {}",
                agent.name,
                cycle.join(" → ")
            ),
        ));
    }
    Ok(agent)
}

fn names(catalog: &Catalog) -> String {
    catalog
        .agents
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tool's answer from the asked task's result.
fn answer(agent: &str, task: &Task, result: &TaskResult) -> Result<Value, ToolError> {
    match (&result.status, &result.response, &result.error) {
        (TaskStatus::Completed, Some(response), _) => Ok(json!({
            "agent": agent,
            "answer": response["choices"][0]["message"]["content"],
            "task_id": task.id.to_string(),
            "usage": response["usage"],
        })),
        (_, _, Some(error)) => Err(ToolError::new(
            ToolErrorClass::Upstream,
            format!(
                "agent `{agent}` could not answer (task {}): {}: {}",
                task.id,
                error.class.as_str(),
                error.message
            ),
        )),
        _ => Err(ToolError::new(
            ToolErrorClass::Upstream,
            format!("agent `{agent}` gave no answer (task {})", task.id),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let mut catalog = Catalog::default();
        for (name, caps) in [("alpha", ["research"]), ("beta", ["research"])] {
            catalog.agents.insert(
                name.to_owned(),
                AgentProfile {
                    name: name.into(),
                    role: name.into(),
                    capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
                    route: "r".into(),
                    system_prompt: "p".into(),
                    tools: vec![],
                    max_concurrency: 1,
                    description: String::new(),
                },
            );
        }
        catalog
    }

    fn args(agent: Option<&str>, capability: Option<&str>) -> Arguments {
        Arguments {
            agent: agent.map(str::to_owned),
            capability: capability.map(str::to_owned),
            question: "q".into(),
        }
    }

    #[test]
    fn the_caller_is_read_from_headers_and_asks_nest_only_so_deep() {
        let mut headers = HeaderMap::new();
        headers.insert(caller::ASKED_BY, "planner,,researcher");
        headers.insert(caller::PRIORITY, "high");
        headers.insert(caller::DEADLINE_MS, "nonsense");
        let caller = Caller::read(Some(&headers));
        assert_eq!(caller.chain, ["planner", "researcher"]);
        assert_eq!(caller.priority, Priority::High);
        assert_eq!(caller.deadline_ms, None);
        assert!(caller.task.is_none() && caller.call_id.is_none());
        // The researcher, asked by the planner, asks at depth 2.
        assert!(too_deep(&caller.chain, 2).is_ok());
        assert!(too_deep(&["planner".to_owned()], 1).is_ok());
        assert!(too_deep(&[], 1).is_ok());
        let e = too_deep(&caller.chain, 1).unwrap_err();
        assert_eq!(e.class, ToolErrorClass::Denied);
        assert!(e.message.contains("planner → researcher"), "{}", e.message);
        // A direct chat request asks with no chain at all.
        assert!(Caller::read(None).chain.is_empty());
    }

    #[test]
    fn the_target_is_named_or_found_by_capability_outside_the_chain() {
        let catalog = catalog();
        let chain = vec!["alpha".to_owned()];
        assert_eq!(
            target(&catalog, &args(Some("beta"), None), &[])
                .unwrap()
                .name,
            "beta"
        );
        // By capability: alpha first by name, but alpha is asking.
        assert_eq!(
            target(&catalog, &args(None, Some("research")), &chain)
                .unwrap()
                .name,
            "beta"
        );
        let e = target(
            &catalog,
            &args(Some("alpha"), None),
            &["beta".into(), "alpha".into()],
        )
        .unwrap_err();
        assert_eq!(e.class, ToolErrorClass::Denied);
        assert!(e.message.contains("beta → alpha → alpha"), "{}", e.message);
        for bad in [
            args(None, None),
            args(Some("a"), Some("b")),
            args(Some("nobody"), None),
        ] {
            let e = target(&catalog, &bad, &[]).unwrap_err();
            assert_eq!(e.class, ToolErrorClass::InvalidArguments);
        }
    }
}
