//! Which built-in tools a task may use, and the request the model is sent: deny by default.
//! A workflow step may use the tools its agent's profile lists (read from the live catalog
//! when the step runs, so a tool taken away from an agent is refused at once); its request
//! already offers their schemas (`agents::prompt`), and it always runs in the loop. A direct chat request names built-in
//! tools as `{"type": "builtin", "name": …}` entries of `tools`, each allowed only when
//! `[tools] chat_allowed` lists it; each becomes the tool's function schema. Client-defined
//! function tools pass through untouched. Pure: the catalog and configuration are passed in.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use shared::agents::{Catalog, QUEUE_PREFIX};
use shared::config::ToolsConfig;
use shared::tools::{BUILTIN_TOOL_TYPE, builtin};
use shared::{FailureClass, Task};

use crate::provider::ProviderError;

/// The tools in play for one task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Offer {
    /// Built-in tools the task may call; each call to another (not client-defined) tool is
    /// refused as `denied`.
    pub allowed: BTreeSet<String>,
    /// Names of the client's own function tools: an answer calling one goes back to the
    /// client, as it would without Switchyard.
    pub client: BTreeSet<String>,
    /// The request to send, built-in entries replaced by their schemas.
    pub request: Map<String, Value>,
}

/// The offer for `task`, or `None` for a chat request that names no built-in tool (then it
/// runs exactly as without tools). A chat request naming a tool it may not use is refused (`bad_request`).
pub(crate) fn offer(
    task: &Task,
    catalog: &Catalog,
    config: &ToolsConfig,
) -> Result<Option<Offer>, ProviderError> {
    // An agent's work (a step, or a question another agent put to it): agent queues are
    // Switchyard's own (configuration refuses `agent-` capabilities), so only steps and
    // asks arrive there.
    if task.step.is_some() || task.capability.as_str().starts_with(QUEUE_PREFIX) {
        return Ok(step_offer(task, catalog));
    }
    chat_offer(task, config)
}

/// A step always runs in the loop: its request is Switchyard's own, so any tool call in its
/// answer is served here, or refused as `denied` when its agent may not use that tool (a
/// step without tools that calls one anyway gets that refusal, not an empty answer).
fn step_offer(task: &Task, catalog: &Catalog) -> Option<Offer> {
    let agent = task
        .capability
        .as_str()
        .strip_prefix(QUEUE_PREFIX)
        .and_then(|name| catalog.agents.get(name));
    let allowed = agent
        .map(|a| {
            a.tools
                .iter()
                .filter(|t| builtin(t).is_some())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Some(Offer {
        allowed,
        client: BTreeSet::new(),
        request: task.request.clone(),
    })
}

fn chat_offer(task: &Task, config: &ToolsConfig) -> Result<Option<Offer>, ProviderError> {
    let Some(Value::Array(tools)) = task.request.get("tools") else {
        return Ok(None);
    };
    if !tools.iter().any(is_builtin_entry) {
        return Ok(None);
    }
    let refuse = |message: String| ProviderError::new(FailureClass::BadRequest, message);
    let mut allowed = BTreeSet::new();
    let mut client = BTreeSet::new();
    let mut expanded = Vec::with_capacity(tools.len());
    for (i, entry) in tools.iter().enumerate() {
        if !is_builtin_entry(entry) {
            if let Some(name) = entry["function"]["name"].as_str() {
                client.insert(name.to_owned());
            }
            expanded.push(entry.clone());
            continue;
        }
        let Some(name) = entry["name"].as_str() else {
            return Err(refuse(format!(
                "`tools[{i}].name`: a built-in tool entry names its tool"
            )));
        };
        let Some(spec) = builtin(name) else {
            return Err(refuse(format!(
                "`tools[{i}].name`: `{name}` is not a built-in tool ({})",
                shared::config::known_tools()
            )));
        };
        if !config.chat_may_use(name) {
            return Err(refuse(format!(
                "`tools[{i}].name`: built-in tool `{name}` is not allowed for chat requests here ([tools] chat_allowed)"
            )));
        }
        allowed.insert(name.to_owned());
        expanded.push(spec.function());
    }
    if let Some(both) = allowed.intersection(&client).next() {
        return Err(refuse(format!(
            "`tools`: `{both}` is both a built-in tool and one of the request's own functions"
        )));
    }
    let mut request = task.request.clone();
    request.insert("tools".into(), Value::Array(expanded));
    Ok(Some(Offer {
        allowed,
        client,
        request,
    }))
}

/// Whether a `tools` entry names a built-in tool.
pub(crate) fn is_builtin_entry(entry: &Value) -> bool {
    entry["type"] == BUILTIN_TOOL_TYPE
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared::agents::AgentProfile;
    use shared::{StepRef, TaskId};

    fn task(capability: &str, request: Value, step: bool) -> Task {
        let id = TaskId::new();
        Task {
            id,
            capability: capability.parse().unwrap(),
            priority: shared::Priority::Normal,
            route: "r".into(),
            request: request.as_object().cloned().unwrap(),
            deadline_ms: u64::MAX,
            reply_to: None,
            created_ms: 0,
            replay_of: None,
            step: step.then(|| StepRef {
                workflow: id,
                step: "s".into(),
            }),
            asked_by: Vec::new(),
        }
    }

    fn catalog(tools: &[&str]) -> Catalog {
        let mut catalog = Catalog::default();
        catalog.agents.insert(
            "analyst".into(),
            AgentProfile {
                name: "analyst".into(),
                role: "Analyst".into(),
                capabilities: vec!["analysis".into()],
                route: "r".into(),
                system_prompt: "p".into(),
                tools: tools.iter().map(|t| (*t).to_owned()).collect(),
                max_concurrency: 1,
                description: String::new(),
            },
        );
        catalog
    }

    fn calc() -> Value {
        builtin("calculator").unwrap().function()
    }

    #[test]
    fn a_step_may_use_what_its_agent_lists_now() {
        let request = json!({"messages": [], "tools": [calc()]});
        let step = task("agent-analyst", request.clone(), true);
        let config = ToolsConfig::default();
        let offer = offer(&step, &catalog(&["calculator"]), &config)
            .unwrap()
            .unwrap();
        assert_eq!(offer.allowed, BTreeSet::from(["calculator".to_owned()]));
        assert!(offer.client.is_empty());
        // Taken away since dispatch: still in the request, but refused when called.
        let offer = offer_of(&step, &catalog(&[]));
        assert!(offer.allowed.is_empty());
        // A step offered no tools still runs in the loop: a call it makes anyway is refused.
        let plain = task("agent-analyst", json!({"messages": []}), true);
        assert!(offer_of(&plain, &catalog(&[])).allowed.is_empty());
    }

    fn offer_of(task: &Task, catalog: &Catalog) -> Offer {
        offer(task, catalog, &ToolsConfig::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn chat_requests_name_builtins_only_where_allowed() {
        let client_tool =
            json!({"type": "function", "function": {"name": "lookup", "parameters": {}}});
        let request = json!({"messages": [], "tools": [client_tool, {"type": "builtin", "name": "calculator"}]});
        let chat = task("chat", request, false);
        let denied = offer(&chat, &Catalog::default(), &ToolsConfig::default()).unwrap_err();
        assert_eq!(denied.class, FailureClass::BadRequest);
        assert!(
            denied.message.contains("`tools[1].name`"),
            "{}",
            denied.message
        );
        let config = ToolsConfig {
            chat_allowed: vec!["calculator".into()],
            ..ToolsConfig::default()
        };
        let offer = offer(&chat, &Catalog::default(), &config).unwrap().unwrap();
        assert_eq!(offer.allowed, BTreeSet::from(["calculator".to_owned()]));
        assert_eq!(offer.client, BTreeSet::from(["lookup".to_owned()]));
        assert_eq!(offer.request["tools"][0], client_tool);
        assert_eq!(offer.request["tools"][1], calc());
    }

    #[test]
    fn chat_without_builtins_is_untouched_and_bad_entries_are_named() {
        let config = ToolsConfig {
            chat_allowed: vec!["calculator".into()],
            ..ToolsConfig::default()
        };
        let plain = task(
            "chat",
            json!({"messages": [], "tools": [{"type": "function", "function": {"name": "calculator"}}]}),
            false,
        );
        assert_eq!(offer(&plain, &Catalog::default(), &config).unwrap(), None);
        for (tools, field) in [
            (json!([{"type": "builtin"}]), "tools[0].name"),
            (
                json!([{"type": "builtin", "name": "shell"}]),
                "tools[0].name",
            ),
            (
                json!([{"type": "function", "function": {"name": "calculator"}}, {"type": "builtin", "name": "calculator"}]),
                "tools",
            ),
        ] {
            let t = task("chat", json!({"messages": [], "tools": tools}), false);
            let e = offer(&t, &Catalog::default(), &config).unwrap_err();
            assert!(
                e.message.starts_with(&format!("`{field}`")),
                "{}",
                e.message
            );
        }
        let streamed = task(
            "chat",
            json!({"messages": [], "stream": true, "tools": [{"type": "builtin", "name": "calculator"}]}),
            false,
        );
        let streamed = offer(&streamed, &Catalog::default(), &config)
            .unwrap()
            .unwrap();
        assert!(streamed.allowed.contains("calculator"));
    }
}
