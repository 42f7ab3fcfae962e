//! The Replicate predictions format: `POST /v1/models/{owner}/{name}/predictions` (official
//! models) and `POST /v1/predictions` (a pinned `version`) create a prediction,
//! `GET /v1/predictions/{id}` polls it and `GET /v1/predictions/{id}/stream` streams its
//! `output` / `error` / `done` events; errors are `{"detail","status","title"}`, the key a
//! bearer token.
//!
//! A prediction created with `Prefer: wait` is answered finished in the create call;
//! otherwise it reports `starting`, then `processing` on its first poll and its end on the
//! second. Two model-name conventions serve tests: a model whose name starts with `slow`
//! never finishes within the wait, so the client must poll; `elsewhere-{port}` also does
//! not, and puts its `urls` on `127.0.0.1:{port}`, to test where a client sends its key.
//! Faults are taken at create: context-length and content-filter faults make the
//! prediction fail with Replicate's wording; stream faults apply to its event stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{Value, json};

use crate::openai::bearer;
use crate::{
    Arrival, Fault, Recorded, SseEvent, State, answer_text, error_response, lock, malformed_json,
    pieces, sse,
};

/// A failed prediction's error for [`Fault::ContextLength`].
const CONTEXT_LENGTH_ERROR: &str = "prompt is too long: maximum context length is 8192 tokens";
/// A failed prediction's error for [`Fault::ContentFilter`], in the safety checker's words.
const CONTENT_FILTER_ERROR: &str =
    "NSFW content detected. Try running it again, or try a different prompt.";

pub(crate) fn router() -> Router<Arc<State>> {
    Router::new()
        .route(
            "/v1/models/{owner}/{name}/predictions",
            post(create_for_model),
        )
        .route("/v1/predictions", post(create_for_version))
        .route("/v1/predictions/{id}", get(poll))
        .route("/v1/predictions/{id}/stream", get(stream))
        .layer(Extension(Arc::new(Predictions::default())))
}

/// Every prediction this fake created, by id.
#[derive(Debug, Default)]
struct Predictions {
    next_id: AtomicU64,
    by_id: std::sync::Mutex<HashMap<String, Prediction>>,
}

#[derive(Debug, Clone)]
struct Prediction {
    id: String,
    model: String,
    version: Option<String>,
    input: Value,
    /// `http://host:port` its `urls` point at.
    origin: String,
    /// The answer, or the error the prediction fails with.
    outcome: Result<String, String>,
    finished: bool,
    polls: u32,
    /// Asked for with `stream: true`: it has a stream URL.
    streams: bool,
    stream_fault: Option<Fault>,
}

impl Prediction {
    fn status(&self) -> &'static str {
        match (self.finished, &self.outcome) {
            (true, Ok(_)) => "succeeded",
            (true, Err(_)) => "failed",
            (false, _) if self.polls == 0 => "starting",
            (false, _) => "processing",
        }
    }

    fn to_json(&self) -> Value {
        let url = format!("{}/v1/predictions/{}", self.origin, self.id);
        let mut value = json!({
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": self.input,
            "logs": "",
            "output": null,
            "error": null,
            "status": self.status(),
            "created_at": "2024-07-01T00:00:00.000Z",
            "urls": {
                "get": url,
                "cancel": format!("{url}/cancel"),
                "web": format!("https://replicate.com/p/{}", self.id),
            },
        });
        if self.streams {
            value["urls"]["stream"] = json!(format!("{url}/stream"));
        }
        if self.finished {
            match &self.outcome {
                Ok(text) => {
                    let output = pieces(text);
                    value["metrics"] = json!({
                        "predict_time": 0.1,
                        "input_token_count": self.input["prompt"].as_str().unwrap_or_default().split_whitespace().count(),
                        "output_token_count": output.len(),
                    });
                    value["output"] = json!(output);
                }
                Err(error) => value["error"] = json!(error),
            }
        }
        value
    }
}

/// Replicate's error body (RFC 7807 problem details).
fn problem(status: u16, title: &str, detail: &str) -> Value {
    json!({"detail": detail, "status": status, "title": title})
}

fn problem_response(status: u16, title: &str, detail: &str) -> Response {
    error_response(status, &[], &problem(status, title, detail))
}

async fn create_for_model(
    Extract(state): Extract<Arc<State>>,
    Extension(predictions): Extension<Arc<Predictions>>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let model = format!("{owner}/{name}");
    create(&state, &predictions, &headers, &body, Some(model)).await
}

async fn create_for_version(
    Extract(state): Extract<Arc<State>>,
    Extension(predictions): Extension<Arc<Predictions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create(&state, &predictions, &headers, &body, None).await
}

/// Creates a prediction of `model`, or of the body's `version` when `model` is `None`.
async fn create(
    state: &State,
    predictions: &Predictions,
    headers: &HeaderMap,
    body: &[u8],
    model: Option<String>,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return problem_response(400, "Invalid JSON", "The request body is not valid JSON.");
    };
    let version = body["version"].as_str().map(str::to_owned);
    let Some(model) = model.or_else(|| version.clone()) else {
        return problem_response(422, "Invalid version", "- version: version is required");
    };
    let stream = body["stream"] == json!(true);
    let Arrival { fault, reply, .. } = state.arrive(Recorded {
        model: model.clone(),
        key: bearer(headers),
        stream,
        body: body.clone(),
    });
    let fault = state.before_answer(fault).await;
    let outcome = match &fault {
        Some(Fault::Status { status, headers }) => {
            let (title, detail) = match status {
                401 => (
                    "Unauthenticated",
                    "You did not pass a valid authentication token",
                ),
                404 => ("Not found", "The requested resource could not be found."),
                429 => (
                    "Request was throttled",
                    "Request was throttled. Expected available in 2 seconds.",
                ),
                _ => ("Internal server error", "Injected fault."),
            };
            return error_response(*status, headers, &problem(*status, title, detail));
        }
        Some(Fault::NoModelAccess) => {
            // Replicate answers a model it will not run for this token as not found.
            let body = problem(
                404,
                "Not found",
                "The requested resource could not be found.",
            );
            return error_response(404, &[], &body);
        }
        Some(Fault::Malformed) if !stream => return malformed_json(),
        Some(Fault::ContextLength) => Err(CONTEXT_LENGTH_ERROR.to_owned()),
        Some(Fault::ContentFilter) => Err(CONTENT_FILTER_ERROR.to_owned()),
        _ => Ok(()),
    };
    let Some(prompt) = body["input"]["prompt"].as_str() else {
        return problem_response(
            422,
            "Input validation failed",
            "- input: prompt is required",
        );
    };
    let outcome =
        outcome.map(|()| reply.unwrap_or_else(|| answer_text(&model, last_user_text(prompt))));
    let name = model.split_once('/').map_or("", |(_, name)| name);
    let name = name.split_once(':').map_or(name, |(name, _)| name);
    let elsewhere = name
        .strip_prefix("elsewhere-")
        .and_then(|port| port.parse::<u16>().ok());
    let origin = match elsewhere {
        Some(port) => format!("http://127.0.0.1:{port}"),
        None => format!(
            "http://{}",
            headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1")
        ),
    };
    let waits = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("wait"));
    let slow = name.starts_with("slow") || elsewhere.is_some();
    let id = format!(
        "fake{:06}",
        predictions.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let prediction = Prediction {
        id: id.clone(),
        model,
        version,
        input: body["input"].clone(),
        origin,
        outcome,
        finished: waits && !slow && !stream,
        polls: 0,
        streams: stream,
        stream_fault: fault.filter(|f| {
            matches!(
                f,
                Fault::CutStream | Fault::StallMidStream(_) | Fault::Malformed
            )
        }),
    };
    let answer = prediction.to_json();
    lock(&predictions.by_id).insert(id, prediction);
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

/// Reports the prediction one step further along: `processing`, then finished.
async fn poll(
    Extension(predictions): Extension<Arc<Predictions>>,
    Path(id): Path<String>,
) -> Response {
    let mut by_id = lock(&predictions.by_id);
    let Some(prediction) = by_id.get_mut(&id) else {
        return problem_response(
            404,
            "Not found",
            "The requested resource could not be found.",
        );
    };
    prediction.polls += 1;
    if prediction.polls >= 2 {
        prediction.finished = true;
    }
    axum::Json(prediction.to_json()).into_response()
}

/// The prediction's events: each output piece, then `done`; a failing prediction sends
/// `error` and a `done` with its reason. Streaming it runs it to the end.
async fn stream(
    Extract(state): Extract<Arc<State>>,
    Extension(predictions): Extension<Arc<Predictions>>,
    Path(id): Path<String>,
) -> Response {
    let prediction = {
        let mut by_id = lock(&predictions.by_id);
        let Some(prediction) = by_id.get_mut(&id) else {
            return problem_response(
                404,
                "Not found",
                "The requested resource could not be found.",
            );
        };
        prediction.finished = true;
        prediction.clone()
    };
    let events = match &prediction.outcome {
        Ok(text) => {
            let mut events: Vec<SseEvent> = pieces(text)
                .into_iter()
                .map(|piece| SseEvent::named("output", piece))
                .collect();
            events.push(SseEvent::named("done", "{}"));
            events
        }
        Err(error) => vec![
            SseEvent::named("error", json!({"detail": error}).to_string()),
            SseEvent::named("done", json!({"reason": "error"}).to_string()),
        ],
    };
    sse(
        events,
        state.chunk_delay(),
        prediction.stream_fault.as_ref(),
    )
}

/// The last user text in a prompt: after the transcript's last `User: `, or all of it.
fn last_user_text(prompt: &str) -> &str {
    match prompt.rsplit_once("User: ") {
        Some((_, rest)) => rest.split("\n\nAssistant:").next().unwrap_or(rest),
        None => prompt,
    }
}
