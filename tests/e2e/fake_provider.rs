//! A fake OpenAI-compatible provider: a real HTTP server on loopback that answers
//! `POST /v1/chat/completions` (JSON or SSE), records every request, and injects faults on
//! command (scripted statuses, a delay before answering).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

/// One scripted answer that replaces the next normal one.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and body.
    Status { status: u16, body: String },
    /// Start a 200 event stream, send two chunks, then end it without `[DONE]`.
    CutStream,
}

#[derive(Default)]
struct FakeState {
    script: Mutex<VecDeque<Fault>>,
    delay: Mutex<Duration>,
    calls: AtomicUsize,
    requests: Mutex<Vec<(Option<String>, Value)>>,
}

pub struct FakeProvider {
    pub url: String,
    state: Arc<FakeState>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    /// The next call answers `status` with `body` instead of a completion.
    pub fn push_fault(&self, status: u16, body: &str) {
        self.state.script.lock().unwrap().push_back(Fault::Status {
            status,
            body: body.to_owned(),
        });
    }

    /// The next streaming call is cut after two chunks.
    pub fn push_cut_stream(&self) {
        self.state
            .script
            .lock()
            .unwrap()
            .push_back(Fault::CutStream);
    }

    /// Every later call waits `delay` before answering.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Bodies of every request received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// `Authorization` headers of every request received, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }
}

/// The text the fake answers a request with.
pub fn answer_text(body: &Value) -> String {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    format!(
        "fake answer from {} to: {last}",
        body["model"].as_str().unwrap_or("?")
    )
}

async fn chat(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.requests.lock().unwrap().push((auth, body.clone()));
    let fault = state.script.lock().unwrap().pop_front();
    match fault {
        Some(Fault::Status { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap();
            return (status, [("content-type", "application/json")], body).into_response();
        }
        Some(Fault::CutStream) => {
            let events = ["Hello ", "there "].map(|text| {
                let chunk = json!({
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                    "model": body["model"], "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
                });
                Ok::<_, Infallible>(Event::default().data(chunk.to_string()))
            });
            return Sse::new(futures::stream::iter(events)).into_response();
        }
        None => {}
    }
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let text = answer_text(&body);
    let model = body["model"].clone();
    if body["stream"] == json!(true) {
        let mut chunks = vec![json!({"role": "assistant", "content": ""})];
        chunks.extend(text.split_inclusive(' ').map(|w| json!({"content": w})));
        let count = chunks.len();
        let events = futures::stream::iter(chunks.into_iter().enumerate())
            .then(move |(i, delta)| {
                let model = model.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let finish = if i + 1 == count { json!("stop") } else { Value::Null };
                    let chunk = json!({
                        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                        "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
                    });
                    Ok::<_, Infallible>(Event::default().data(chunk.to_string()))
                }
            })
            .chain(futures::stream::once(async { Ok(Event::default().data("[DONE]")) }));
        return Sse::new(events).into_response();
    }
    Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    }))
    .into_response()
}
