//! Folds a stream of `chat.completion.chunk`s into the one `chat.completion` that is stored
//! as a streaming task's result, so streamed and non-streamed tasks store the same shape.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// Accumulates chunks; [`Assembler::finish`] yields the completion.
#[derive(Debug, Default)]
pub struct Assembler {
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    fingerprint: Option<Value>,
    usage: Option<Value>,
    choices: BTreeMap<u64, Choice>,
}

#[derive(Debug, Default)]
struct Choice {
    role: Option<String>,
    content: String,
    has_content: bool,
    finish_reason: Option<Value>,
    /// Tool calls by their `index`, arguments concatenated across deltas.
    tool_calls: BTreeMap<u64, Map<String, Value>>,
}

impl Assembler {
    pub fn push(&mut self, chunk: &Value) {
        for (slot, key) in [
            (&mut self.id, "id"),
            (&mut self.created, "created"),
            (&mut self.model, "model"),
            (&mut self.fingerprint, "system_fingerprint"),
        ] {
            if slot.is_none() {
                *slot = chunk.get(key).filter(|v| !v.is_null()).cloned();
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage.clone());
        }
        for c in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let choice = self.choices.entry(index).or_default();
            if let Some(reason) = c.get("finish_reason").filter(|r| !r.is_null()) {
                choice.finish_reason = Some(reason.clone());
            }
            let Some(delta) = c.get("delta") else {
                continue;
            };
            if let Some(role) = delta.get("role").and_then(Value::as_str) {
                choice.role = Some(role.to_owned());
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                choice.content.push_str(text);
                choice.has_content = true;
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                merge_tool_call(choice, call);
            }
        }
    }

    pub fn finish(self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, c)| {
                let mut message = Map::new();
                message.insert(
                    "role".into(),
                    json!(c.role.unwrap_or_else(|| "assistant".into())),
                );
                message.insert(
                    "content".into(),
                    if c.has_content {
                        json!(c.content)
                    } else {
                        Value::Null
                    },
                );
                if !c.tool_calls.is_empty() {
                    let calls: Vec<Value> = c.tool_calls.into_values().map(Value::Object).collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                json!({
                    "index": index,
                    "message": message,
                    "finish_reason": c.finish_reason.unwrap_or(Value::Null),
                })
            })
            .collect();
        let mut out = json!({
            "id": self.id.unwrap_or(Value::Null),
            "object": "chat.completion",
            "created": self.created.unwrap_or(Value::Null),
            "model": self.model.unwrap_or(Value::Null),
            "choices": choices,
        });
        if let Some(fp) = self.fingerprint {
            out["system_fingerprint"] = fp;
        }
        if let Some(usage) = self.usage {
            out["usage"] = usage;
        }
        out
    }
}

fn merge_tool_call(choice: &mut Choice, call: &Value) {
    let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
    let entry = choice.tool_calls.entry(index).or_default();
    // Everything but the streamed pieces is copied as sent: `id`, `type`, and provider
    // extras such as Gemini's `extra_content` (thought signatures a next turn needs).
    for (key, v) in call.as_object().into_iter().flatten() {
        if key != "index" && key != "function" && !v.is_null() {
            entry.insert(key.clone(), v.clone());
        }
    }
    let Some(function) = call.get("function") else {
        return;
    };
    let target = entry
        .entry("function")
        .or_insert_with(|| json!({"name": "", "arguments": ""}));
    for key in ["name", "arguments"] {
        if let Some(part) = function.get(key).and_then(Value::as_str) {
            let current = target[key].as_str().unwrap_or_default().to_owned();
            target[key] = json!(current + part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_call_extras_survive_assembly() {
        let mut a = Assembler::default();
        let extra = json!({"google": {"thought_signature": "sig"}});
        a.push(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "extra_content": extra,
             "function": {"name": "f", "arguments": "{\"a\""}}]}}]}));
        a.push(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]}));
        let call = &a.finish()["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["extra_content"], extra);
        assert_eq!(call["function"]["arguments"], "{\"a\":1}");
        assert!(call.get("index").is_none());
    }

    #[test]
    fn text_and_tool_calls_are_reassembled() {
        let chunks = [
            json!({"id": "c1", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "get", "arguments": "{\"a\""}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": {"total_tokens": 9}}),
        ];
        let mut a = Assembler::default();
        for c in &chunks {
            a.push(c);
        }
        let done = a.finish();
        assert_eq!(done["object"], "chat.completion");
        assert_eq!(done["id"], "c1");
        assert_eq!(done["created"], 5);
        let message = &done["choices"][0]["message"];
        assert_eq!(message["content"], "Hello");
        assert_eq!(message["tool_calls"][0]["function"]["name"], "get");
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(done["usage"]["total_tokens"], 9);
    }
}
