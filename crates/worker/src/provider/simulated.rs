//! The built-in `simulated` provider: in-process, deterministic, configurable latency, no
//! network. Every answer says it is simulated, so nobody mistakes it for a model.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use shared::config::ProviderConfig;
use shared::schema;
use shared::task::now_ms;

use super::shape::{self, content_text};
use super::{Call, ChunkStream, ProviderError};

/// Longest echo of the caller's last message in a simulated answer.
const ECHO_CHARS: usize = 200;

#[derive(Debug, Clone)]
pub struct Simulated {
    latency: Duration,
    chunk_delay: Duration,
}

impl Simulated {
    pub fn new(config: &ProviderConfig) -> Self {
        Self {
            latency: Duration::from_millis(config.latency_ms),
            chunk_delay: Duration::from_millis(config.chunk_delay_ms),
        }
    }

    pub async fn complete(&self, call: Call<'_>) -> Result<Value, ProviderError> {
        let (model, request) = (call.model, call.request);
        pause(self.latency).await;
        let text = answer(model, request);
        Ok(json!({
            "id": completion_id(),
            "object": "chat.completion",
            "created": now_ms() / 1000,
            "model": model,
            "system_fingerprint": "simulated",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"
            }],
            "usage": usage(request, &text),
        }))
    }

    pub fn stream(&self, call: Call<'_>) -> ChunkStream {
        let (model, request) = (call.model, call.request);
        let text = answer(model, request);
        let usage = usage(request, &text);
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
        chunks.extend(
            text.split_inclusive(' ')
                .map(|word| chunk(json!({"content": word}), Value::Null, Value::Null)),
        );
        chunks.push(chunk(json!({}), json!("stop"), usage));
        let latency = self.latency;
        let delay = self.chunk_delay;
        futures::stream::iter(chunks.into_iter().enumerate())
            .then(move |(i, c)| async move {
                pause(if i == 0 { latency } else { delay }).await;
                Ok(c)
            })
            .boxed()
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
    let last = messages
        .and_then(|m| m.last())
        .map(text_of)
        .unwrap_or_default();
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
    match role {
        Some(role) => {
            let inputs = if inputs.is_empty() {
                "the goal only".to_owned()
            } else {
                format!("the outputs of {}", inputs.join(", "))
            };
            format!("[simulated {model}] {role}: done, working from {inputs}. You said: {echo}")
        }
        None => format!("[simulated {model}] Received {count} message(s). You said: {echo}"),
    }
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
        }
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
    async fn stream_reassembles_to_the_same_text() {
        let whole = provider().complete(call(&request())).await.unwrap();
        let chunks: Vec<Value> = provider()
            .stream(call(&request()))
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
