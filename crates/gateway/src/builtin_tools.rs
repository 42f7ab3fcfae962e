//! Checking a chat request's built-in tools before it is queued: each `{"type": "builtin",
//! "name": …}` entry of `tools` must name a built-in tool that `[tools] chat_allowed`
//! lets chat requests use (403 otherwise: deny by default), not beside a function of the
//! same name. The worker checks again when it runs the task, so a task published around
//! the gateway gets no more.

use serde_json::Value;
use shared::config::{ToolsConfig, known_tools};
use shared::tools::{BUILTIN_TOOL_TYPE, builtin};

use crate::body::ChatBody;
use crate::error::ApiError;

pub fn check(body: &ChatBody, config: &ToolsConfig) -> Result<(), ApiError> {
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
        if builtin(name).is_none() {
            return Err(ApiError::invalid(
                field,
                format!("`{name}` is not a built-in tool ({})", known_tools()),
            ));
        }
        if !config.chat_may_use(name) {
            return Err(ApiError::ToolNotAllowed {
                param: field,
                message: format!(
                    "built-in tool `{name}` is not allowed for chat requests on this gateway ([tools] chat_allowed)"
                ),
            });
        }
        named.push(name);
    }
    if named.is_empty() {
        return Ok(());
    }
    let functions = tools.iter().filter_map(|t| t["function"]["name"].as_str());
    for function in functions {
        if named.contains(&function) {
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
        check(&body(value), config).unwrap_err()
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
        assert!(check(&body(calc.clone()), &allowed()).is_ok());
        // Client functions alone are none of our business.
        let plain = json!({"model": "m", "messages": messages,
            "tools": [{"type": "function", "function": {"name": "calculator"}}]});
        assert!(check(&body(plain), &ToolsConfig::default()).is_ok());
        // Streamed answers may use built-in tools too.
        let streamed = json!({"model": "m", "messages": messages, "stream": true,
            "tools": [{"type": "builtin", "name": "calculator"}]});
        assert!(check(&body(streamed), &allowed()).is_ok());
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
