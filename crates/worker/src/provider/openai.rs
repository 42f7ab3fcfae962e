//! Any OpenAI-compatible `/chat/completions` endpoint (OpenAI, Groq, OpenRouter, Cerebras,
//! Novita, Hugging Face router, Together, Mistral, DeepSeek, Ollama, vLLM, llama.cpp
//! server, …). The request passes through as the caller sent it, unknown fields included;
//! only `model` and `stream` are set here.

use serde_json::{Map, Value};
use shared::FailureClass;

use super::http::{Translate, chunk_stream, cut_stream, event_json, json_body, send, sse_events};
use super::{Call, ChunkStream, ProviderError, classify_status, error_text};

/// A client for one OpenAI-compatible base URL.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    http: reqwest::Client,
    url: String,
}

impl OpenAiCompatible {
    pub fn new(http: reqwest::Client, base_url: String) -> Self {
        Self {
            http,
            url: format!("{base_url}/chat/completions"),
        }
    }

    pub async fn complete(&self, call: Call<'_>) -> Result<Value, ProviderError> {
        completion(json_body(self.send(call, false).await?).await?)
    }

    pub async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let events = sse_events(self.send(call, true).await?)?;
        let translator = Chunks {
            secret: call.key.map(|s| s.expose().to_owned()),
            finished: false,
            done: false,
        };
        Ok(chunk_stream(events, translator))
    }

    async fn send(&self, call: Call<'_>, stream: bool) -> Result<reqwest::Response, ProviderError> {
        let body = request_body(call.model, call.request, stream);
        let mut request = self.http.post(&self.url).json(&body);
        if let Some(key) = call.key {
            request = request.bearer_auth(key.expose());
        }
        send(request, call.key).await
    }
}

/// The caller's request with `model` and `stream` set; usage is asked for on streams so the
/// assembled result carries token counts.
fn request_body(model: &str, request: &Map<String, Value>, stream: bool) -> Map<String, Value> {
    let mut body = request.clone();
    body.insert("model".to_owned(), Value::String(model.to_owned()));
    if stream {
        body.insert("stream".to_owned(), Value::Bool(true));
    } else {
        body.remove("stream");
        body.remove("stream_options");
    }
    body
}

/// An answer is a `chat.completion` as long as it has its `choices`; the rest passes through.
fn completion(value: Value) -> Result<Value, ProviderError> {
    if value.get("choices").and_then(Value::as_array).is_none() {
        return Err(ProviderError::new(
            FailureClass::InvalidResponse,
            "provider answer has no choices array",
        ));
    }
    Ok(value)
}

/// Reads SSE events into chunks. A stream must end with `[DONE]` (or at least have sent a
/// `finish_reason`); one that just stops is a cut stream, not a complete answer.
struct Chunks {
    secret: Option<String>,
    /// A chunk carried a `finish_reason`.
    finished: bool,
    /// `[DONE]` was read.
    done: bool,
}

impl Translate for Chunks {
    fn event(&mut self, data: &str) -> Result<Vec<Value>, ProviderError> {
        if data == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        let value = event_json(data)?;
        if value.get("error").is_some() {
            return Err(ProviderError::new(
                classify_status(500, data),
                error_text(data, self.secret.as_deref()),
            ));
        }
        let choices = value.get("choices").and_then(Value::as_array);
        if choices
            .into_iter()
            .flatten()
            .any(|c| c.get("finish_reason").is_some_and(|r| !r.is_null()))
        {
            self.finished = true;
        }
        Ok(vec![value])
    }

    fn done(&self) -> bool {
        self.done
    }

    fn end(&mut self) -> Result<Vec<Value>, ProviderError> {
        if self.finished {
            Ok(Vec::new())
        } else {
            Err(cut_stream("[DONE]"))
        }
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_pass_through_and_stream_is_set() {
        let request = json!({"messages": [], "seed": 7, "stream": true, "stream_options": {"include_usage": true}});
        let request = request.as_object().unwrap();
        let body = request_body("m1", request, false);
        assert_eq!(body["seed"], 7);
        assert_eq!(body["model"], "m1");
        assert!(body.get("stream").is_none());
        assert!(body.get("stream_options").is_none());
        let body = request_body("m1", request, true);
        assert_eq!(body["stream"], true);
    }
}
