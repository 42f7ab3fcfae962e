//! The built-in `simulated` provider: in-process, deterministic, configurable latency, no
//! network; with a `capacity`, calls past it are answered 429 as a busy provider would. Every answer says it is simulated, so nobody mistakes it for a model. Offered
//! function tools and no tool result yet, it calls one (the calculator with an expression
//! found in the prompt; `run_code` with a small Python program about the step and its
//! tests; else the first tool with arguments that follow its schema); with a tool result in
//! the conversation, it answers using it, so the tool loop runs offline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use shared::config::ProviderConfig;
use shared::schema;
use shared::task::now_ms;

use super::shape::{self, content_text};
use super::{Call, ChunkStream, ProviderError};
use shared::FailureClass;

/// Longest echo of the caller's last message in a simulated answer.
const ECHO_CHARS: usize = 200;
/// Asked for in a prompt, this makes the answer long (a report of [`LONG_PARAGRAPHS`]
/// numbered paragraphs), so an offline run shows what happens to large outputs (artifacts).
pub const AT_LENGTH: &str = "(at length)";
/// Paragraphs of a long answer: about 48 KiB, over the default `artifacts.inline_max_bytes`.
const LONG_PARAGRAPHS: usize = 400;

#[derive(Debug, Clone)]
pub struct Simulated {
    latency: Duration,
    chunk_delay: Duration,
    /// Calls served at once, if limited, and the calls being served.
    capacity: Option<usize>,
    serving: Arc<AtomicUsize>,
}

/// One call within the capacity, counted until dropped.
#[derive(Debug)]
struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Simulated {
    pub fn new(config: &ProviderConfig) -> Self {
        Self {
            latency: Duration::from_millis(config.latency_ms),
            chunk_delay: Duration::from_millis(config.chunk_delay_ms),
            capacity: config.capacity,
            serving: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A place among the calls served at once, or the 429 a busy provider answers, asking
    /// to come back after one call's time (its latency), when a place is likely free.
    fn serve(&self) -> Result<Option<Serving>, ProviderError> {
        let Some(capacity) = self.capacity else {
            return Ok(None);
        };
        self.serving
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .map(|_| Some(Serving(self.serving.clone())))
            .map_err(|_| ProviderError {
                status: Some(429),
                retry_after: Some(self.latency),
                ..ProviderError::new(
                    FailureClass::RateLimited,
                    format!("simulated: more than {capacity} calls at once"),
                )
            })
    }

    pub async fn complete(&self, call: Call<'_>) -> Result<Value, ProviderError> {
        let (model, request) = (call.model, call.request);
        let _serving = self.serve()?;
        pause(self.latency).await;
        let (message, finish, said) = match reply(model, request) {
            Reply::Text(text) => {
                let message = json!({"role": "assistant", "content": text});
                (message, "stop", text)
            }
            Reply::Call { name, arguments } => {
                let message = json!({"role": "assistant", "content": null, "tool_calls": [{
                    "id": call_id(), "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }]});
                (message, "tool_calls", arguments)
            }
        };
        Ok(json!({
            "id": completion_id(),
            "object": "chat.completion",
            "created": now_ms() / 1000,
            "model": model,
            "system_fingerprint": "simulated",
            "choices": [{
                "index": 0,
                "message": message,
                "finish_reason": finish
            }],
            "usage": usage(request, &said),
        }))
    }

    pub fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let serving = self.serve()?;
        let (model, request) = (call.model, call.request);
        let reply = reply(model, request);
        let id = completion_id();
        let created = now_ms() / 1000;
        let chunk = move |delta: Value, finish: Value, usage: Value| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "simulated",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                "usage": usage,
            })
        };
        let mut chunks = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Value::Null,
        )];
        match reply {
            Reply::Text(text) => {
                chunks.extend(
                    text.split_inclusive(' ')
                        .map(|word| chunk(json!({"content": word}), Value::Null, Value::Null)),
                );
                chunks.push(chunk(json!({}), json!("stop"), usage(request, &text)));
            }
            Reply::Call { name, arguments } => {
                let delta = json!({"tool_calls": [{"index": 0, "id": call_id(), "type": "function",
                    "function": {"name": name, "arguments": arguments}}]});
                chunks.push(chunk(delta, Value::Null, Value::Null));
                chunks.push(chunk(
                    json!({}),
                    json!("tool_calls"),
                    usage(request, &arguments),
                ));
            }
        }
        let latency = self.latency;
        let delay = self.chunk_delay;
        let stream = futures::stream::iter(chunks.into_iter().enumerate())
            .then(move |(i, c)| async move {
                pause(if i == 0 { latency } else { delay }).await;
                Ok(c)
            })
            // The call is served until its stream ends (or is dropped).
            .map(move |chunk| {
                let _serving = &serving;
                chunk
            });
        Ok(stream.boxed())
    }
}

/// Waits `delay`; a zero delay does not wait for the timer's next (1 ms) tick.
async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn completion_id() -> String {
    format!("chatcmpl-sim-{}", uuid::Uuid::now_v7().simple())
}

fn call_id() -> String {
    format!("call_sim_{}", uuid::Uuid::now_v7().simple())
}

/// What the simulated model answers.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Text(String),
    /// A call to tool `name` with `arguments` (a JSON object, as text).
    Call {
        name: String,
        arguments: String,
    },
}

/// The expression the simulated model computes when the prompt has none.
const FALLBACK_EXPRESSION: &str = "6 * 7";

/// A structured answer when a JSON schema is asked for; else a tool call when tools are
/// offered (and `tool_choice` is not `none`) and no tool has answered yet; else text.
fn reply(model: &str, request: &Map<String, Value>) -> Reply {
    let structured = schema::requested(request).is_some();
    let messages = request.get("messages").and_then(Value::as_array);
    let tool_answered = messages.is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
    if !structured
        && !tool_answered
        && request.get("tool_choice").is_none_or(|c| c != "none")
        && let Some((name, parameters)) = tool_to_call(request)
    {
        let prompt = || {
            messages
                .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
                .and_then(|m| m.get("content"))
                .map(content_text)
                .unwrap_or_default()
        };
        let arguments = match name.as_str() {
            "calculator" => {
                let expression =
                    find_expression(&prompt()).unwrap_or_else(|| FALLBACK_EXPRESSION.to_owned());
                json!({"expression": expression})
            }
            "run_code" => json!({"language": "python", "code": program(&prompt())}),
            _ => schema::example(&parameters, 0, &STYLE),
        };
        return Reply::Call {
            name,
            arguments: arguments.to_string(),
        };
    }
    Reply::Text(answer(model, request))
}

/// The offered function tool to call: the calculator if offered, else `run_code`, else the
/// first.
fn tool_to_call(request: &Map<String, Value>) -> Option<(String, Value)> {
    let functions: Vec<&Value> = request
        .get("tools")?
        .as_array()?
        .iter()
        .filter(|t| t["type"] == "function")
        .map(|t| &t["function"])
        .filter(|f| f["name"].is_string())
        .collect();
    let chosen = ["calculator", "run_code"]
        .iter()
        .find_map(|name| functions.iter().find(|f| f["name"] == *name))
        .or_else(|| functions.first())?;
    Some((
        chosen["name"].as_str().unwrap_or_default().to_owned(),
        chosen["parameters"].clone(),
    ))
}

/// Characters of the step's text the simulated program works on.
const PROGRAM_TEXT_CHARS: usize = 1_000;

/// The Python program the simulated model runs with `run_code`: a small function about the
/// step's own text (its key terms), the tests that show it works, and what it finds.
fn program(step: &str) -> String {
    let text: String = step.chars().take(PROGRAM_TEXT_CHARS).collect();
    // A JSON string is a Python string literal (the same escapes).
    let literal = serde_json::to_string(&text).unwrap_or_else(|_| "\"\"".to_owned());
    format!(
        r##"# [simulated] A function for this step, and the tests that show it works.
from collections import Counter


def key_terms(text, n=3):
    """The n most frequent words of text (four letters or more, any case), most frequent first."""
    words = [w.strip(".,:;!?()[]`'\"#*").lower() for w in text.split()]
    counts = Counter(w for w in words if len(w) >= 4 and w.isalpha())
    return [w for w, _ in counts.most_common(n)]


assert key_terms("") == []
assert key_terms("Bikes, bikes and more BIKES; cars.", 1) == ["bikes"]
assert key_terms("a an the") == []
print("tests passed: 3")

STEP = {literal}
print("key terms of the step:", ", ".join(key_terms(STEP)) or "(none)")
"##
    )
}

/// The longest run of arithmetic in `text` (digits, operators, parentheses) with at least
/// one operator between numbers: what the simulated model asks the calculator.
fn find_expression(text: &str) -> Option<String> {
    let arithmetic = |c: char| c.is_ascii_digit() || " .+-*/^%()".contains(c);
    text.split(|c: char| !arithmetic(c))
        .map(|run| run.trim_matches(|c: char| " +-*/^%.".contains(c)))
        .filter(|run| {
            let digits = run.chars().filter(char::is_ascii_digit).count();
            let operator = run
                .trim_start_matches('(')
                .chars()
                .skip(1)
                .any(|c| "+-*/^%".contains(c));
            let mut depth: i32 = 0;
            let balanced = run.chars().all(|c| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth >= 0
            }) && depth == 0;
            digits >= 2 && operator && balanced
        })
        .max_by_key(|run| run.len())
        .map(str::to_owned)
}

/// What the simulated model says about the tool results in the conversation, e.g.
/// "The calculator says 6 * 7 = 42."
fn tool_results(messages: &[Value]) -> Option<String> {
    let mut said = Vec::new();
    for message in messages.iter().filter(|m| m["role"] == "tool") {
        let content = message.get("content").map(content_text).unwrap_or_default();
        let value: Value = serde_json::from_str(&content).unwrap_or(Value::Null);
        said.push(if let Some(exit) = value.get("exit_code") {
            let stdout: String = value["stdout"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .replace('\n', " / ")
                .chars()
                .take(ECHO_CHARS)
                .collect();
            let killed = value["killed"]
                .as_str()
                .map_or_else(String::new, |k| format!(", killed ({k})"));
            format!("The code ran in the sandbox: exit code {exit}{killed}, stdout: {stdout}")
        } else if let Some(result) = value.get("result") {
            match value["expression"].as_str() {
                Some(expression) => format!("The calculator says {expression} = {result}."),
                None => format!("The tool answered {result}."),
            }
        } else if let Some(error) = value.get("error") {
            format!(
                "The tool failed ({}): {}",
                error["class"].as_str().unwrap_or("error"),
                error["message"].as_str().unwrap_or_default()
            )
        } else {
            let text: String = content.chars().take(ECHO_CHARS).collect();
            format!("The tool answered: {text}")
        });
    }
    (!said.is_empty()).then(|| said.join(" "))
}

/// The deterministic answer. With a JSON schema in `response_format`, a document that
/// follows it (so structured-output callers, such as a workflow's planner and reviewer, get
/// something they can use); otherwise text that says which model, which role the system
/// prompt gave (`You are the …`), which inputs the prompt carried, and echoes the last
/// message.
fn answer(model: &str, request: &Map<String, Value>) -> String {
    if let Some(schema) = schema::requested(request) {
        return schema::example(schema, 0, &STYLE).to_string();
    }
    let messages = request.get("messages").and_then(Value::as_array);
    let count = messages.map_or(0, Vec::len);
    let text_of = |m: &Value| m.get("content").map(content_text).unwrap_or_default();
    let tools = messages.and_then(|m| tool_results(m));
    // After tool calls, the caller's last words are its last user message.
    let last = messages
        .and_then(|m| {
            if tools.is_some() {
                m.iter().rev().find(|m| m["role"] == "user")
            } else {
                m.last()
            }
        })
        .map(text_of)
        .unwrap_or_default();
    let tools = tools.map_or_else(String::new, |t| format!(" {t}"));
    let echo: String = last.chars().take(ECHO_CHARS).collect();
    let role = messages
        .and_then(|m| m.iter().find(|m| m["role"] == "system"))
        .map(text_of)
        .and_then(|system| {
            let rest = system.trim_start().strip_prefix("You are the ")?;
            let end = rest.find([' ', '.', ',']).unwrap_or(rest.len());
            Some(rest[..end].to_owned())
        });
    let inputs: Vec<&str> = last
        .split("Output of step `")
        .skip(1)
        .filter_map(|s| s.split('`').next())
        .collect();
    let text = match role {
        Some(role) => {
            let inputs = if inputs.is_empty() {
                "the goal only".to_owned()
            } else {
                format!("the outputs of {}", inputs.join(", "))
            };
            format!(
                "[simulated {model}] {role}: done, working from {inputs}.{tools} You said: {echo}"
            )
        }
        None => {
            // Earlier answers in the conversation (a session's history, or one resent):
            // shows offline that a later turn saw the earlier ones.
            let answers = messages.map_or(0, |m| {
                m.iter()
                    .filter(|m| m["role"] == "assistant" && !text_of(m).is_empty())
                    .count()
            });
            let earlier = if answers == 0 {
                String::new()
            } else {
                format!(", with {answers} earlier answer(s)")
            };
            format!(
                "[simulated {model}] Received {count} message(s){earlier}.{tools} You said: {echo}"
            )
        }
    };
    if last.contains(AT_LENGTH) {
        at_length(text)
    } else {
        text
    }
}

/// `text` followed by [`LONG_PARAGRAPHS`] numbered paragraphs.
fn at_length(mut text: String) -> String {
    for i in 1..=LONG_PARAGRAPHS {
        text.push_str(&format!(
            "\n\n{i}. Simulated paragraph {i} of {LONG_PARAGRAPHS}, written at length as asked: \
             it stands for the detail a real model would give here."
        ));
    }
    text
}

/// How the simulated provider's structured answers look: arrays of objects get three items
/// (so a simulated plan has parallel steps), tokens are `s1`, `s2`, …, other strings name
/// their property.
const STYLE: schema::Style = schema::Style {
    object_items: 3,
    token: |i| format!("s{}", i + 1),
    text: |property, i| match property {
        Some(name) => format!("simulated {name} {}", i + 1),
        None => format!("simulated {}", i + 1),
    },
};

/// Token counts estimated at four characters a token.
fn usage(request: &Map<String, Value>, text: &str) -> Value {
    let prompt_chars: usize = request
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| {
            m.iter()
                .filter_map(|m| m.get("content"))
                .map(|c| content_text(c).len())
                .sum()
        });
    shape::usage(
        u64::try_from(prompt_chars.div_ceil(4)).unwrap_or(u64::MAX),
        u64::try_from(text.len().div_ceil(4)).unwrap_or(u64::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Map<String, Value> {
        json!({"messages": [{"role": "user", "content": "hello there"}]})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn call(request: &Map<String, Value>) -> Call<'_> {
        Call {
            model: "sim",
            request,
            key: None,
        }
    }

    fn provider() -> Simulated {
        Simulated {
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            capacity: None,
            serving: Arc::new(AtomicUsize::new(0)),
        }
    }

    #[tokio::test]
    async fn calls_past_the_capacity_are_rate_limited_until_one_ends() {
        let sim = Simulated {
            capacity: Some(1),
            ..provider()
        };
        let request = request();
        let open = sim.stream(call(&request)).unwrap();
        let refused = sim.complete(call(&request)).await.unwrap_err();
        assert_eq!(
            (refused.class, refused.status),
            (FailureClass::RateLimited, Some(429))
        );
        assert!(sim.stream(call(&request)).is_err());
        // The open stream holds its place until it is done.
        let chunks: Vec<_> = open.collect().await;
        assert!(chunks.iter().all(Result::is_ok));
        sim.complete(call(&request)).await.unwrap();
    }

    #[test]
    fn asked_for_length_it_answers_at_length() {
        let mut request = request();
        let short = answer("m", &request);
        request.insert(
            "messages".into(),
            json!([{"role": "user", "content": format!("Write a report {AT_LENGTH}")}]),
        );
        let long = answer("m", &request);
        assert!(short.len() < 1_000);
        assert!(long.len() > 40 << 10, "{}", long.len());
        assert!(long.ends_with("a real model would give here."));
        assert_eq!(long, answer("m", &request), "deterministic");
    }

    #[tokio::test]
    async fn answers_deterministically_and_says_simulated() {
        let a = provider().complete(call(&request())).await.unwrap();
        let b = provider().complete(call(&request())).await.unwrap();
        let text = a["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(text, b["choices"][0]["message"]["content"]);
        assert!(text.contains("simulated"));
        assert!(text.contains("hello there"));
        assert_eq!(a["usage"]["prompt_tokens"], 3);
    }

    #[tokio::test]
    async fn a_json_schema_is_followed_and_a_role_is_named() {
        let schema = json!({"type": "object", "required": ["steps"], "properties": {"steps": {
            "type": "array", "minItems": 1, "items": {"type": "object", "properties": {
                "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
                "capability": {"type": "string", "enum": ["research", "analysis"]},
                "instruction": {"type": "string"},
                "depends_on": {"type": "array", "items": {"type": "string"}}}}}}});
        let request = json!({"messages": [{"role": "user", "content": "plan"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}});
        let answer = provider()
            .complete(call(request.as_object().unwrap()))
            .await
            .unwrap();
        let plan: Value =
            serde_json::from_str(answer["choices"][0]["message"]["content"].as_str().unwrap())
                .unwrap();
        let steps = plan["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0]["id"], "s1");
        assert_eq!(steps[1]["capability"], "analysis");
        assert_eq!(steps[2]["depends_on"], json!([]));
        assert_ne!(steps[0]["instruction"], steps[1]["instruction"]);

        let request = json!({"messages": [
            {"role": "system", "content": "You are the Researcher of a team."},
            {"role": "user", "content": "# Output of step `facts`\nx\n# Output of step `market`\ny"}]});
        let answer = provider()
            .complete(call(request.as_object().unwrap()))
            .await
            .unwrap();
        let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            text.contains("Researcher: done, working from the outputs of facts, market"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn offered_a_tool_it_calls_it_then_answers_with_the_result() {
        let calculator = json!({"type": "function", "function": {"name": "calculator",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}});
        let request = json!({"messages": [
            {"role": "system", "content": "You are the Analyst of a team."},
            {"role": "user", "content": "# Goal\nWhat is (1200 - 950) / 950 * 100, in percent?"}],
            "tools": [calculator]});
        let request = request.as_object().unwrap();
        let answer = provider().complete(call(request)).await.unwrap();
        assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
        let tool_call = &answer["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(tool_call["function"]["name"], "calculator");
        let arguments: Value =
            serde_json::from_str(tool_call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments["expression"], "(1200 - 950) / 950 * 100");

        let mut messages = request["messages"].as_array().unwrap().clone();
        messages.push(answer["choices"][0]["message"].clone());
        messages.push(json!({"role": "tool", "tool_call_id": tool_call["id"],
            "content": "{\"expression\":\"6 * 7\",\"result\":42}"}));
        let mut followup = request.clone();
        followup.insert("messages".into(), json!(messages));
        let answer = provider().complete(call(&followup)).await.unwrap();
        let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(text.contains("Analyst: done"), "{text}");
        assert!(text.contains("The calculator says 6 * 7 = 42."), "{text}");
        assert!(text.contains("You said: # Goal"), "{text}");

        // Streamed, the call arrives as a tool-call delta.
        let chunks: Vec<Value> = provider()
            .stream(call(request))
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(
            chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "calculator"
        );
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
        // `tool_choice: none` gets text.
        let mut none = request.clone();
        none.insert("tool_choice".into(), json!("none"));
        let answer = provider().complete(call(&none)).await.unwrap();
        assert!(answer["choices"][0]["message"]["content"].is_string());
    }

    #[tokio::test]
    async fn offered_run_code_it_writes_a_tested_program_then_reports_its_run() {
        let run_code = json!({"type": "function", "function": {"name": "run_code",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}}}});
        let step = "# Goal\nA \"slug\" function for titles\n# Your step (code)\nWrite the slug function for titles";
        let request = json!({"messages": [
            {"role": "system", "content": "You are the Coder of a team."},
            {"role": "user", "content": step}],
            "tools": [run_code]});
        let request = request.as_object().unwrap();
        let answer = provider().complete(call(request)).await.unwrap();
        let tool_call = &answer["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(tool_call["function"]["name"], "run_code");
        let arguments: Value =
            serde_json::from_str(tool_call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments["language"], "python");
        // The program is real Python: it runs, its tests pass, and it works on the step.
        let ran = std::process::Command::new("python3")
            .args(["-I", "-c", arguments["code"].as_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8(ran.stdout).unwrap();
        assert!(
            ran.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&ran.stderr)
        );
        assert_eq!(
            stdout,
            "tests passed: 3\nkey terms of the step: slug, function, titles\n"
        );

        let mut messages = request["messages"].as_array().unwrap().clone();
        messages.push(answer["choices"][0]["message"].clone());
        messages.push(json!({"role": "tool", "tool_call_id": tool_call["id"],
            "content": json!({"language": "python", "exit_code": 0, "stdout": stdout,
                "stderr": "", "duration_ms": 30, "truncated": false}).to_string()}));
        let mut followup = request.clone();
        followup.insert("messages".into(), json!(messages));
        let answer = provider().complete(call(&followup)).await.unwrap();
        let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            text.contains("The code ran in the sandbox: exit code 0, stdout: tests passed: 3 / key terms of the step: slug, function, titles"),
            "{text}"
        );
    }

    #[test]
    fn expressions_are_found_in_prose() {
        assert_eq!(
            find_expression("What is 12 * (3 + 4)?").as_deref(),
            Some("12 * (3 + 4)")
        );
        assert_eq!(find_expression("Revenue grew from 10 to 12."), None);
        assert_eq!(
            find_expression("step (s1) and 3 + 4").as_deref(),
            Some("3 + 4")
        );
        assert_eq!(find_expression("nothing here"), None);
    }

    #[tokio::test]
    async fn stream_reassembles_to_the_same_text() {
        let whole = provider().complete(call(&request())).await.unwrap();
        let chunks: Vec<Value> = provider()
            .stream(call(&request()))
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, whole["choices"][0]["message"]["content"]);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
    }
}
