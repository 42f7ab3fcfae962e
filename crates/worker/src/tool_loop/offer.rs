//! Which built-in and MCP tools a task may use, and the request the model is sent: deny by
//! default. A workflow step may use the tools its agent's profile lists (read from the live
//! catalog when the step runs, so a tool taken away from an agent is refused at once); its
//! request already offers the built-in ones' schemas (`agents::prompt`), and the MCP ones
//! being served now (`shared::mcp`, the `mcp_tools` bucket) are added here; it always runs
//! in the loop. A direct chat request names built-in and MCP tools as `{"type": "builtin",
//! "name": …}` entries of `tools`, each allowed only when `[tools] chat_allowed` lists it;
//! each becomes the tool's function schema (an MCP tool's function is `mcp__<server>__<tool>`,
//! as model APIs allow no dots). Client-defined function tools pass through untouched. Pure:
//! the catalogs, configuration and clock are passed in.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use shared::agents::{Catalog, QUEUE_PREFIX};
use shared::config::ToolsConfig;
use shared::mcp::{McpCatalog, McpTool, is_mcp_name};
use shared::tools::{BUILTIN_TOOL_TYPE, builtin};
use shared::{FailureClass, Task};

use crate::provider::ProviderError;

/// The tools in play for one task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Offer {
    /// Tools the task may call, by the function name the model calls (the tool's own name
    /// for built-in ones, `mcp__<server>__<tool>` for MCP ones) to the Switchyard name called
    /// (`tools.<name>`); each call to another (not client-defined) tool is refused as `denied`.
    pub allowed: BTreeMap<String, String>,
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
    mcp: &Mcp<'_>,
) -> Result<Option<Offer>, ProviderError> {
    // An agent's work (a step, or a question another agent put to it): agent queues are
    // Switchyard's own (configuration refuses `agent-` capabilities), so only steps and
    // asks arrive there.
    if task.step.is_some() || task.capability.as_str().starts_with(QUEUE_PREFIX) {
        return Ok(step_offer(task, catalog, mcp));
    }
    chat_offer(task, config, mcp)
}

/// The MCP tools being served, as of `now_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mcp<'a> {
    pub catalog: &'a McpCatalog,
    pub now_ms: u64,
}

impl Mcp<'_> {
    /// The tool `name` (`mcp.<server>.<tool>`) if it is being served now.
    fn served(&self, name: &str) -> Option<&McpTool> {
        self.catalog.get(name).filter(|t| t.is_fresh(self.now_ms))
    }
}

/// A step always runs in the loop: its request is Switchyard's own, so any tool call in its
/// answer is served here, or refused as `denied` when its agent may not use that tool (a
/// step without tools that calls one anyway gets that refusal, not an empty answer).
fn step_offer(task: &Task, catalog: &Catalog, mcp: &Mcp<'_>) -> Option<Offer> {
    let agent = task
        .capability
        .as_str()
        .strip_prefix(QUEUE_PREFIX)
        .and_then(|name| catalog.agents.get(name));
    let mut allowed = BTreeMap::new();
    let mut request = task.request.clone();
    let mut added = Vec::new();
    for name in agent.map(|a| a.tools.as_slice()).unwrap_or_default() {
        if builtin(name).is_some() {
            allowed.insert(name.clone(), name.clone());
        } else if let Some(tool) = mcp.served(name) {
            allowed.insert(tool.function.clone(), name.clone());
            added.push(tool.function());
        }
    }
    if !added.is_empty() {
        let mut tools = match request.remove("tools") {
            Some(Value::Array(tools)) => tools,
            _ => Vec::new(),
        };
        for function in added {
            if !tools
                .iter()
                .any(|t| t["function"]["name"] == function["function"]["name"])
            {
                tools.push(function);
            }
        }
        request.insert("tools".into(), Value::Array(tools));
    }
    Some(Offer {
        allowed,
        client: BTreeSet::new(),
        request,
    })
}

fn chat_offer(
    task: &Task,
    config: &ToolsConfig,
    mcp: &Mcp<'_>,
) -> Result<Option<Offer>, ProviderError> {
    let Some(Value::Array(tools)) = task.request.get("tools") else {
        return Ok(None);
    };
    if !tools.iter().any(is_builtin_entry) {
        return Ok(None);
    }
    let refuse = |message: String| ProviderError::new(FailureClass::BadRequest, message);
    if task
        .request
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(refuse(
            "`n`: built-in tools answer with one choice; send the request without `n` (or with 1)"
                .to_owned(),
        ));
    }
    let mut allowed = BTreeMap::new();
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
        if !is_mcp_name(name) && builtin(name).is_none() {
            return Err(refuse(format!(
                "`tools[{i}].name`: `{name}` is not a built-in tool ({})",
                shared::config::known_tools()
            )));
        }
        if !config.chat_may_use(name) {
            return Err(refuse(format!(
                "`tools[{i}].name`: tool `{name}` is not allowed for chat requests here ([tools] chat_allowed)"
            )));
        }
        if let Some(spec) = builtin(name) {
            allowed.insert(name.to_owned(), name.to_owned());
            expanded.push(spec.function());
        } else if let Some(tool) = mcp.served(name) {
            allowed.insert(tool.function.clone(), name.to_owned());
            expanded.push(tool.function());
        } else {
            return Err(refuse(format!(
                "`tools[{i}].name`: MCP tool `{name}` is not being served now (its server is not connected, or does not have it)"
            )));
        }
    }
    if let Some(both) = allowed.keys().find(|f| client.contains(*f)) {
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
                attempt: 0,
                write: None,
                prompt: None,
            }),
            asked_by: Vec::new(),
            session: None,
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

    static EMPTY: McpCatalog = BTreeMap::new();

    fn none() -> Mcp<'static> {
        Mcp {
            catalog: &EMPTY,
            now_ms: 0,
        }
    }

    fn calc_allowed() -> BTreeMap<String, String> {
        BTreeMap::from([("calculator".to_owned(), "calculator".to_owned())])
    }

    fn echo(refreshed_ms: u64) -> McpCatalog {
        let tool = McpTool {
            name: "mcp.fake.echo".into(),
            function: "mcp__fake__echo".into(),
            server: "fake".into(),
            mcp_name: "echo".into(),
            description: "Echoes".into(),
            input_schema: json!({"type": "object"}),
            refreshed_ms,
        };
        BTreeMap::from([(tool.name.clone(), tool)])
    }

    #[test]
    fn mcp_tools_are_offered_when_listed_and_served() {
        let now = 10_000_000;
        let served = echo(now - 1_000);
        let mcp = Mcp {
            catalog: &served,
            now_ms: now,
        };
        let request = json!({"messages": [], "tools": [calc()]});
        let step = task("agent-analyst", request, true);
        let agents = catalog(&["calculator", "mcp.fake.echo", "mcp.fake.gone"]);
        let stepped = offer(&step, &agents, &ToolsConfig::default(), &mcp)
            .unwrap()
            .unwrap();
        assert_eq!(stepped.allowed["mcp__fake__echo"], "mcp.fake.echo");
        assert_eq!(stepped.allowed.len(), 2, "{:?}", stepped.allowed);
        let offered: Vec<&str> = stepped.request["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(offered, ["calculator", "mcp__fake__echo"]);
        // Not listed: not offered. Stale (nothing served it lately): not offered.
        let offer2 = offer_with(&step, &catalog(&["calculator"]), &mcp);
        assert!(!offer2.allowed.contains_key("mcp__fake__echo"));
        let stale = echo(now - 3_600_000);
        let offer3 = offer_with(
            &step,
            &agents,
            &Mcp {
                catalog: &stale,
                now_ms: now,
            },
        );
        assert!(!offer3.allowed.contains_key("mcp__fake__echo"));

        let chat = task(
            "chat",
            json!({"messages": [], "tools": [{"type": "builtin", "name": "mcp.fake.echo"}]}),
            false,
        );
        let e = offer(&chat, &Catalog::default(), &ToolsConfig::default(), &mcp).unwrap_err();
        assert!(e.message.contains("chat_allowed"), "{}", e.message);
        let config = ToolsConfig {
            chat_allowed: vec!["mcp.fake.echo".into()],
            ..ToolsConfig::default()
        };
        let ok = offer(&chat, &Catalog::default(), &config, &mcp)
            .unwrap()
            .unwrap();
        assert_eq!(
            ok.request["tools"][0]["function"]["name"],
            "mcp__fake__echo"
        );
        assert_eq!(ok.allowed["mcp__fake__echo"], "mcp.fake.echo");
        let e = offer(
            &chat,
            &Catalog::default(),
            &config,
            &Mcp {
                catalog: &stale,
                now_ms: now,
            },
        )
        .unwrap_err();
        assert!(e.message.contains("not being served"), "{}", e.message);
    }

    fn offer_with(task: &Task, catalog: &Catalog, mcp: &Mcp<'_>) -> Offer {
        offer(task, catalog, &ToolsConfig::default(), mcp)
            .unwrap()
            .unwrap()
    }

    fn calc() -> Value {
        builtin("calculator").unwrap().function()
    }

    #[test]
    fn a_step_may_use_what_its_agent_lists_now() {
        let request = json!({"messages": [], "tools": [calc()]});
        let step = task("agent-analyst", request.clone(), true);
        let config = ToolsConfig::default();
        let offer = offer(&step, &catalog(&["calculator"]), &config, &none())
            .unwrap()
            .unwrap();
        assert_eq!(offer.allowed, calc_allowed());
        assert!(offer.client.is_empty());
        // Taken away since dispatch: still in the request, but refused when called.
        let offer = offer_of(&step, &catalog(&[]));
        assert!(offer.allowed.is_empty());
        // A step offered no tools still runs in the loop: a call it makes anyway is refused.
        let plain = task("agent-analyst", json!({"messages": []}), true);
        assert!(offer_of(&plain, &catalog(&[])).allowed.is_empty());
    }

    fn offer_of(task: &Task, catalog: &Catalog) -> Offer {
        offer(task, catalog, &ToolsConfig::default(), &none())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn chat_requests_name_builtins_only_where_allowed() {
        let client_tool =
            json!({"type": "function", "function": {"name": "lookup", "parameters": {}}});
        let request = json!({"messages": [], "tools": [client_tool, {"type": "builtin", "name": "calculator"}]});
        let chat = task("chat", request, false);
        let denied =
            offer(&chat, &Catalog::default(), &ToolsConfig::default(), &none()).unwrap_err();
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
        let offer = offer(&chat, &Catalog::default(), &config, &none())
            .unwrap()
            .unwrap();
        assert_eq!(offer.allowed, calc_allowed());
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
        assert_eq!(
            offer(&plain, &Catalog::default(), &config, &none()).unwrap(),
            None
        );
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
            let e = offer(&t, &Catalog::default(), &config, &none()).unwrap_err();
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
        let streamed = offer(&streamed, &Catalog::default(), &config, &none())
            .unwrap()
            .unwrap();
        assert!(streamed.allowed.contains_key("calculator"));
        // One choice only: the loop follows the first.
        let several = task(
            "chat",
            json!({"messages": [], "n": 2, "tools": [{"type": "builtin", "name": "calculator"}]}),
            false,
        );
        let e = offer(&several, &Catalog::default(), &config, &none()).unwrap_err();
        assert!(e.message.starts_with("`n`"), "{}", e.message);
    }
}
