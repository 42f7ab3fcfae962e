//! The built-in tools' contract: their names and JSON schemas (what a model is offered), the
//! subject each is served on (`tools.<name>`, a NATS micro service), how a tool answers an
//! error (a class from one closed vocabulary), and the record every tool call leaves on a
//! task's result. The tools themselves are `crates/tools`; the loop that calls them is the
//! worker's `tool_loop`. `docs/tools.md` documents all of it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Subjects of the built-in tools: `tools.<name>`.
pub const SUBJECT_PREFIX: &str = "tools";
/// The NATS service (`$SRV.INFO.<name>`) that serves the built-in tools, one endpoint each.
pub const SERVICE_NAME: &str = "switchyard-tools";
/// Queue group of the tool endpoints: every `switchyard tools` process shares the load.
pub const QUEUE_GROUP: &str = "tools";
/// Header of an error answer naming its [`ToolErrorClass`] (beside the service API's own
/// `Nats-Service-Error` and `Nats-Service-Error-Code`).
pub const ERROR_CLASS_HEADER: &str = "Switchyard-Tool-Error";
/// Largest arguments a tool takes: a tool call is a few fields, not a document.
pub const MAX_ARGUMENT_BYTES: usize = 16 * 1024;
/// Largest result a tool call may feed back to the model: larger ones are refused
/// (`too_large`) rather than cut, so the model never reads half a JSON document.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Characters of a call's arguments kept in its record: enough to see what was asked.
pub const RECORDED_ARGUMENT_CHARS: usize = 512;
/// Characters of an error message kept (in a record, a header, a tool message).
pub const MAX_ERROR_CHARS: usize = 300;
/// The `type` of a chat request's `tools` entry that names a built-in tool:
/// `{"type": "builtin", "name": "calculator"}`.
pub const BUILTIN_TOOL_TYPE: &str = "builtin";

/// The subject tool `name` is served on.
pub fn subject(name: &str) -> String {
    format!("{SUBJECT_PREFIX}.{name}")
}

/// Why a tool call failed. Closed: every failed call carries exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorClass {
    /// The arguments are not what the tool takes (not JSON, a missing or wrong field, an
    /// expression that does not parse, too large).
    InvalidArguments,
    /// The caller may not use this tool (not in the agent's `tools`, not allowed for chat,
    /// or no such tool).
    Denied,
    /// The tool's upstream (a web API, …) failed.
    Upstream,
    /// The tool did not answer in time.
    Timeout,
    /// No process serves the tool (no responders on its subject).
    Unavailable,
    /// The result is larger than [`MAX_RESULT_BYTES`].
    TooLarge,
    /// A quota on the tool (`[tools.quotas]`) is used up for this window; the message says
    /// when it resets.
    QuotaExceeded,
    /// A fault inside the tool or Switchyard.
    Internal,
}

impl ToolErrorClass {
    pub const ALL: [ToolErrorClass; 8] = [
        ToolErrorClass::InvalidArguments,
        ToolErrorClass::Denied,
        ToolErrorClass::Upstream,
        ToolErrorClass::Timeout,
        ToolErrorClass::Unavailable,
        ToolErrorClass::TooLarge,
        ToolErrorClass::QuotaExceeded,
        ToolErrorClass::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ToolErrorClass::InvalidArguments => "invalid_arguments",
            ToolErrorClass::Denied => "denied",
            ToolErrorClass::Upstream => "upstream",
            ToolErrorClass::Timeout => "timeout",
            ToolErrorClass::Unavailable => "unavailable",
            ToolErrorClass::TooLarge => "too_large",
            ToolErrorClass::QuotaExceeded => "quota_exceeded",
            ToolErrorClass::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The service API's `Nats-Service-Error-Code` for this class (HTTP-like).
    pub fn code(self) -> usize {
        match self {
            ToolErrorClass::InvalidArguments => 400,
            ToolErrorClass::Denied => 403,
            ToolErrorClass::TooLarge => 413,
            ToolErrorClass::QuotaExceeded => 429,
            ToolErrorClass::Internal => 500,
            ToolErrorClass::Upstream => 502,
            ToolErrorClass::Unavailable => 503,
            ToolErrorClass::Timeout => 504,
        }
    }

    /// The class of an error answer that gave only a code (a service that does not set
    /// [`ERROR_CLASS_HEADER`]).
    pub fn from_code(code: usize) -> Self {
        match code {
            400 | 422 => ToolErrorClass::InvalidArguments,
            401 | 403 => ToolErrorClass::Denied,
            413 => ToolErrorClass::TooLarge,
            429 => ToolErrorClass::QuotaExceeded,
            503 => ToolErrorClass::Unavailable,
            408 | 504 => ToolErrorClass::Timeout,
            500 => ToolErrorClass::Internal,
            _ => ToolErrorClass::Upstream,
        }
    }
}

/// A failed tool call: its class and a message safe to show the model (no secrets, no
/// internals).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", class.as_str())]
pub struct ToolError {
    pub class: ToolErrorClass,
    pub message: String,
}

impl ToolError {
    pub fn new(class: ToolErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: clip(&message.into(), MAX_ERROR_CHARS),
        }
    }

    /// What the model reads in the tool message of a failed call.
    pub fn to_json(&self) -> Value {
        json!({"error": {"class": self.class.as_str(), "message": self.message}})
    }
}

/// One built-in tool: its name and what a model is told about it.
#[derive(Debug, Clone, Copy)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// The JSON schema of its arguments.
    parameters: fn() -> Value,
}

impl ToolSpec {
    pub fn parameters(&self) -> Value {
        (self.parameters)()
    }

    /// The OpenAI `tools` entry that offers it to a model.
    pub fn function(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters(),
        }})
    }
}

/// The calculator's arguments.
fn calculator_parameters() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["expression"],
        "properties": {"expression": {
            "type": "string",
            "description": "An arithmetic expression, e.g. `(1200 - 950) / 950 * 100` or `sqrt(2) * pi`: numbers, + - * / % ^, parentheses, and the functions sqrt, abs, exp, ln, log10, log2, sin, cos, tan, asin, acos, atan, floor, ceil, round, min, max, pow; constants pi and e.",
            "maxLength": 1024
        }}
    })
}

/// `ask_agent`'s arguments.
fn ask_agent_parameters() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["question"],
        "properties": {
            "agent": {"type": "string", "description": "The agent to ask, by name (give this or `capability`)."},
            "capability": {"type": "string", "description": "A capability the agent to ask must have, e.g. `research` (give this or `agent`)."},
            "question": {"type": "string", "description": "The question, self-contained: the other agent sees nothing else of your work.", "maxLength": 8192}
        }
    })
}

/// `weather`'s arguments.
fn weather_parameters() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "location": {"type": "string", "description": "A place name, e.g. `Lisbon` or `Springfield, Illinois`. Give this, or latitude and longitude.", "maxLength": 200},
            "latitude": {"type": "number", "minimum": -90, "maximum": 90},
            "longitude": {"type": "number", "minimum": -180, "maximum": 180},
            "days": {"type": "integer", "minimum": 1, "maximum": 7, "description": "Days of daily forecast, today first (default 3)."},
            "units": {"type": "string", "enum": ["metric", "imperial"], "description": "metric (°C, km/h, mm; the default) or imperial (°F, mph, inch)."}
        }
    })
}

/// `run_code`'s arguments.
fn run_code_parameters() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["language", "code"],
        "properties": {
            "language": {
                "type": "string",
                "enum": ["python", "shell"],
                "description": "`python` (Python 3, standard library only) or `shell` (POSIX sh)."
            },
            "code": {
                "type": "string",
                "description": "The whole program. Print what you want to see: the result has its stdout, stderr and exit code."
            },
            "stdin": {
                "type": "string",
                "description": "Text fed to the program's standard input (optional)."
            }
        }
    })
}

/// `stock_quote`'s arguments.
fn stock_quote_parameters() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["symbol"],
        "properties": {"symbol": {"type": "string", "description": "A ticker symbol, e.g. `AAPL`, `MSFT` or `BRK.B`.", "maxLength": 20}}
    })
}

/// The arguments of the tools that search (`news`, `web_search`).
fn search_parameters() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["query"],
        "properties": {
            "query": {"type": "string", "description": "What to search for, in a few words.", "maxLength": 400},
            "max_results": {"type": "integer", "minimum": 1, "maximum": 50, "description": "How many results at most (the configured number by default, and never more)."}
        }
    })
}

/// The name of the tool that asks another agent.
pub const ASK_AGENT: &str = "ask_agent";

/// `http_fetch`'s arguments.
fn http_fetch_parameters() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["url"],
        "properties": {"url": {"type": "string", "description": "An http or https URL on the public internet.", "maxLength": 4096}}
    })
}

/// Every built-in tool, by name.
pub const BUILTIN: &[ToolSpec] = &[
    ToolSpec {
        name: "calculator",
        description: "Evaluates an arithmetic expression exactly as written and returns its value. Use it for any arithmetic instead of computing in your head.",
        parameters: calculator_parameters,
    },
    ToolSpec {
        name: ASK_AGENT,
        description: "Asks another agent of this deployment a question and returns its answer. Use it when the question needs another agent's expertise; the answer can take a while.",
        parameters: ask_agent_parameters,
    },
    ToolSpec {
        name: "run_code",
        description: "Runs a short Python or shell program in an isolated sandbox (no network, no files but its own temporary directory, limited time, memory and output) and returns its exit code, stdout and stderr. Use it to check that code works: run it with tests that assert what it must do.",
        parameters: run_code_parameters,
    },
    ToolSpec {
        name: "weather",
        description: "Current weather and a short daily forecast for a place (by name, or latitude and longitude): temperature, wind, precipitation and conditions in words, with units.",
        parameters: weather_parameters,
    },
    ToolSpec {
        name: "stock_quote",
        description: "The latest quote of a stock by ticker symbol: price, change, day range, previous close and the trading day.",
        parameters: stock_quote_parameters,
    },
    ToolSpec {
        name: "news",
        description: "Recent news articles about a query, newest first: title, URL, source and date.",
        parameters: search_parameters,
    },
    ToolSpec {
        name: "web_search",
        description: "Searches the web and returns results with title, URL and a snippet. Fetch a result's page with http_fetch to read it.",
        parameters: search_parameters,
    },
    ToolSpec {
        name: "http_fetch",
        description: "Fetches a public web page or text file by URL and returns its readable text, title, final URL and content type. Binary files are refused; long pages are cut.",
        parameters: http_fetch_parameters,
    },
];

/// Headers the worker puts on a tool call, saying who calls: tools that act on the task
/// path (`ask_agent`) read them; others ignore them.
pub mod caller {
    /// The id of the task making the call.
    pub const TASK_ID: &str = "Switchyard-Task-Id";
    /// The call's id, as the model gave it.
    pub const CALL_ID: &str = "Switchyard-Tool-Call-Id";
    /// The agents that asked so far, the calling agent last, comma-separated (empty for a
    /// direct chat request).
    pub const ASKED_BY: &str = "Switchyard-Asked-By";
    /// Unix time in milliseconds by which the call's answer is needed.
    pub const DEADLINE_MS: &str = "Switchyard-Deadline-Ms";
    /// The calling task's priority.
    pub const PRIORITY: &str = "Switchyard-Priority";
}

/// The built-in tool `name`, if there is one.
pub fn builtin(name: &str) -> Option<&'static ToolSpec> {
    BUILTIN.iter().find(|t| t.name == name)
}

/// Whether `name` is a built-in tool.
pub fn is_builtin(name: &str) -> bool {
    builtin(name).is_some()
}

/// How a tool call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolOutcome {
    Ok,
    Error,
}

/// One tool call as recorded on a task's result (and so on a workflow's step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The model's id for the call.
    pub id: String,
    pub name: String,
    /// The arguments as the model sent them, cut at [`RECORDED_ARGUMENT_CHARS`].
    pub arguments: String,
    /// Which model answer asked for it (1: the first).
    pub round: u32,
    pub started_ms: u64,
    pub duration_ms: u64,
    pub outcome: ToolOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ToolErrorClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Bytes of the result fed back to the model (the error's, for a failed call).
    pub result_bytes: usize,
}

/// `text` cut to at most `max` characters, with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut kept: String = text.chars().take(max.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip_and_have_codes() {
        for class in ToolErrorClass::ALL {
            assert_eq!(ToolErrorClass::parse(class.as_str()), Some(class));
            assert_eq!(serde_json::to_value(class).unwrap(), json!(class.as_str()));
            assert_eq!(ToolErrorClass::from_code(class.code()), class);
        }
        assert_eq!(ToolErrorClass::from_code(599), ToolErrorClass::Upstream);
    }

    #[test]
    fn the_calculator_is_offered_as_a_function() {
        let calc = builtin("calculator").unwrap();
        let f = calc.function();
        assert_eq!(f["type"], "function");
        assert_eq!(f["function"]["name"], "calculator");
        assert_eq!(
            f["function"]["parameters"]["required"],
            json!(["expression"])
        );
        assert!(!is_builtin("rm_rf"));
        assert_eq!(subject("calculator"), "tools.calculator");
    }

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("héllo", 10), "héllo");
        assert_eq!(clip("héllo", 3), "hé…");
    }
}
