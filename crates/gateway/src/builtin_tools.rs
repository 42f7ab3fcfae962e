//! Checking a chat request's built-in tools before it is queued: each `{"type": "builtin",
//! "name": …}` entry of `tools` must name a built-in tool, or an MCP tool of a configured
//! server (`mcp.<server>.<tool>`), that `[tools] chat_allowed` lets chat requests use (403
//! otherwise: deny by default), not beside a function of the same name. The worker checks
//! again when it runs the task (and that the MCP tool is being served), so a task published
//! around the gateway gets no more.

use serde_json::Value;
use shared::config::{ToolsConfig, known_tools};
use shared::tools::{BUILTIN_TOOL_TYPE, builtin};

use crate::body::ChatBody;
use crate::error::ApiError;

/// `mcp_servers` says whether an MCP server is configured.
pub fn check(
    body: &ChatBody,
    config: &ToolsConfig,
    mcp_servers: &dyn Fn(&str) -> bool,
) -> Result<(), ApiError> {
    let Some(Value::Array(tools)) = body.body.get("tools") else {
        return Ok(());
    };
    let mut named = Vec::new();
    for (i, entry) in tools.iter().enumerate() {
        if entry["type"] != BUILTIN_TOOL_TYPE {
            continue;
        }
        let field = format!("tools[{i}].name");
        let Some(name) = entry["name"].as_str() else {
            return Err(ApiError::invalid(
                field,
                format!("`tools[{i}]` is a built-in tool entry: it needs `name`"),
            ));
        };
        if shared::mcp::is_mcp_name(name) {
            if let Some(problem) = shared::mcp::name_problem(name, mcp_servers) {
                return Err(ApiError::invalid(field, problem));
            }
        } else if builtin(name).is_none() {
            return Err(ApiError::invalid(
                field,
                format!("`{name}` is not a built-in tool ({})", known_tools()),
            ));
        }
        if !config.chat_may_use(name) {
            return Err(ApiError::ToolNotAllowed {
                param: field,
                message: format!(
                    "tool `{name}` is not allowed for chat requests on this gateway ([tools] chat_allowed)"
                ),
            });
        }
        // What the model is offered: an MCP tool as its function `mcp__<server>__<tool>`.
        match shared::mcp::split_name(name) {
            Some((server, tool)) => named.push(shared::mcp::function_name(server, tool)),
            None => named.push(name.to_owned()),
        }
    }
    if named.is_empty() {
        return Ok(());
    }
    if body
        .body
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(ApiError::invalid(
            "n",
            "built-in tools answer with one choice: send the request without `n` (or with 1)",
        ));
    }
    let functions = tools.iter().filter_map(|t| t["function"]["name"].as_str());
    for function in functions {
        if named.iter().any(|n| n == function) {
            return Err(ApiError::invalid(
                "tools",
                format!(
                    "`{function}` is both a built-in tool and one of the request's own functions"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> ChatBody {
        crate::body::parse(value.to_string().as_bytes()).unwrap()
    }

    fn allowed() -> ToolsConfig {
        ToolsConfig {
            chat_allowed: vec!["calculator".into()],
            ..ToolsConfig::default()
        }
    }

    fn refused(value: Value, config: &ToolsConfig) -> ApiError {
        check(&body(value), config, &|s| s == "fake").unwrap_err()
    }

    #[test]
    fn mcp_tools_of_configured_servers_are_checked_like_builtins() {
        let messages = json!([{"role": "user", "content": "hi"}]);
        let named = |name: &str| json!({"model": "m", "messages": messages, "tools": [{"type": "builtin", "name": name}]});
        match refused(named("mcp.fake.echo"), &ToolsConfig::default()) {
            ApiError::ToolNotAllowed { param, .. } => assert_eq!(param, "tools[0].name"),
            other => panic!("{other:?}"),
        }
        let config = ToolsConfig {
            chat_allowed: vec!["mcp.fake.echo".into()],
            ..ToolsConfig::default()
        };
        assert!(check(&body(named("mcp.fake.echo")), &config, &|s| s == "fake").is_ok());
        let clash = json!({"model": "m", "messages": messages, "tools": [
            {"type": "builtin", "name": "mcp.fake.echo"},
            {"type": "function", "function": {"name": "mcp__fake__echo"}}]});
        match refused(clash, &config) {
            ApiError::InvalidRequest { param, .. } => assert_eq!(param, "tools"),
            other => panic!("{other:?}"),
        }
        for bad in ["mcp.other.echo", "mcp.fake"] {
            match refused(named(bad), &config) {
                ApiError::InvalidRequest { param, .. } => assert_eq!(param, "tools[0].name"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn builtins_are_denied_by_default_and_checked_by_name() {
        let messages = json!([{"role": "user", "content": "hi"}]);
        let calc = json!({"model": "m", "messages": messages,
            "tools": [{"type": "function", "function": {"name": "lookup"}}, {"type": "builtin", "name": "calculator"}]});
        match refused(calc.clone(), &ToolsConfig::default()) {
            ApiError::ToolNotAllowed { param, .. } => assert_eq!(param, "tools[1].name"),
            other => panic!("{other:?}"),
        }
        assert!(check(&body(calc.clone()), &allowed(), &|_| false).is_ok());
        // Client functions alone are none of our business.
        let plain = json!({"model": "m", "messages": messages,
            "tools": [{"type": "function", "function": {"name": "calculator"}}]});
        assert!(check(&body(plain), &ToolsConfig::default(), &|_| false).is_ok());
        // Streamed answers may use built-in tools too.
        let streamed = json!({"model": "m", "messages": messages, "stream": true,
            "tools": [{"type": "builtin", "name": "calculator"}]});
        assert!(check(&body(streamed), &allowed(), &|_| false).is_ok());
        let several = json!({"model": "m", "messages": messages, "n": 3,
            "tools": [{"type": "builtin", "name": "calculator"}]});
        match refused(several, &allowed()) {
            ApiError::InvalidRequest { param, .. } => assert_eq!(param, "n"),
            other => panic!("{other:?}"),
        }
        for (tools, param) in [
            (json!([{"type": "builtin"}]), "tools[0].name"),
            (
                json!([{"type": "builtin", "name": "shell"}]),
                "tools[0].name",
            ),
            (
                json!([{"type": "builtin", "name": "calculator"}, {"type": "function", "function": {"name": "calculator"}}]),
                "tools",
            ),
        ] {
            let request = json!({"model": "m", "messages": messages, "tools": tools});
            match refused(request, &allowed()) {
                ApiError::InvalidRequest { param: p, .. } => assert_eq!(p, param),
                other => panic!("{other:?}"),
            }
        }
    }
}
