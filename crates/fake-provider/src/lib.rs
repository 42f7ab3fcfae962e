//! Fake LLM providers: real HTTP servers on loopback that speak one provider wire format
//! each (OpenAI chat completions, Anthropic Messages, Gemini generateContent, Replicate
//! predictions), answer deterministically, record every request, and inject faults on
//! command — error statuses with or without `Retry-After`, stalls before the first byte or
//! mid-stream, cut streams, malformed JSON and SSE, context-length and content-filter
//! refusals, and a capacity past which requests are answered 429 (a provider's tolerance
//! for calls at once). Answers can be scripted too: a request whose body contains a marker gets the
//! text given for it (a planner's plan, a reviewer's verdict). Tests drive them in-process;
//! the benchmark runs the binary. [`upstreams`] fakes the web tools' upstreams the same way.
//! `mcp` is a fake MCP server (the `switchyard-fake-mcp` binary serves it over stdio).

mod anthropic;
mod gemini;
pub mod mcp;
mod openai;
mod replicate;
mod structured;
pub mod upstreams;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use futures::StreamExt;
use serde_json::Value;

/// Which provider's wire format a fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Anthropic,
    Gemini,
    Replicate,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(Format::OpenAi),
            "anthropic" => Ok(Format::Anthropic),
            "gemini" => Ok(Format::Gemini),
            "replicate" => Ok(Format::Replicate),
            other => Err(format!(
                "unknown format {other:?}; expected openai, anthropic, gemini or replicate"
            )),
        }
    }
}

/// One injected fault, replacing the normal answer to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this status with the format's error body and these extra headers
    /// (e.g. `("retry-after", "2")`).
    Status {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// A 400 in the format's words for "the prompt is longer than the context window".
    ContextLength,
    /// The format's refusal for filtered content.
    ContentFilter,
    /// The format's refusal of a model the key may not use (or that does not exist): a
    /// refusal about the model, not the credentials.
    NoModelAccess,
    /// Accept the request, then send nothing for this long before answering normally.
    StallBeforeFirstByte(Duration),
    /// Streams: send the first two events, stall this long, then send the rest.
    StallMidStream(Duration),
    /// Streams: send the first two events, then close without the end-of-stream marker.
    CutStream,
    /// A 200 whose JSON body (or, streaming, whose second event) is not valid JSON.
    Malformed,
}

impl Fault {
    /// A plain error status without extra headers.
    pub fn status(status: u16) -> Self {
        Fault::Status {
            status,
            headers: Vec::new(),
        }
    }

    /// An error status with one extra header, e.g. `Retry-After`.
    pub fn status_with(status: u16, header: &str, value: &str) -> Self {
        Fault::Status {
            status,
            headers: vec![(header.to_owned(), value.to_owned())],
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The model the request asked for (from the body or the path).
    pub model: String,
    /// The API key the request carried, in whichever header the format uses.
    pub key: Option<String>,
    pub stream: bool,
    pub body: Value,
}

/// A scripted answer: the text (or, OpenAI format only, the tool calls) a request whose
/// body contains `marker` gets.
#[derive(Debug, Clone)]
struct Reply {
    marker: String,
    text: String,
    /// `[{"name", "arguments"}]`: the answer calls these tools instead of answering text.
    tool_calls: Option<Value>,
}

/// What a request gets, decided when it arrives.
#[derive(Debug, Default)]
pub(crate) struct Arrival {
    /// The fault that replaces its normal answer, if any.
    pub fault: Option<Fault>,
    /// The scripted text it answers with instead of the usual echo, if any.
    pub reply: Option<String>,
    /// Scripted tool calls it answers with instead (`[{"name", "arguments"}]`); the OpenAI
    /// format only.
    pub tool_calls: Option<Value>,
}

/// Shared state of one fake: its script of faults and answers, settings and what it received.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// One-shot faults, taken in order by the first request they match.
    script: Mutex<VecDeque<(Option<String>, Fault)>>,
    /// One-shot answers, taken in order by the first request whose body has their marker.
    replies: Mutex<VecDeque<Reply>>,
    /// Standing answers, for every request whose body has their marker (one-shot ones first).
    standing_replies: Mutex<Vec<Reply>>,
    /// A fault every request gets while it is set (an outage).
    outage: Mutex<Option<Fault>>,
    latency: Mutex<Duration>,
    chunk_delay: Mutex<Duration>,
    /// Requests served at once; one arriving past it is answered 429.
    capacity: Mutex<Option<usize>>,
    /// Requests within the capacity waiting out the latency now.
    serving: AtomicUsize,
    /// Requests answered 429 for arriving past the capacity.
    over_capacity: AtomicUsize,
    calls: AtomicUsize,
    /// Requests waiting before their first byte now, and the most there ever were: work
    /// that overlapped in time shows as more than one.
    waiting: AtomicUsize,
    most_waiting: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    /// Off in long benchmark runs, where keeping every request would only grow memory.
    forget_requests: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Records a request and returns what it gets: a fault, a scripted answer, or neither.
    pub(crate) fn arrive(&self, recorded: Recorded) -> Arrival {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let model = recorded.model.clone();
        let (reply, tool_calls) = match self.reply_for(&recorded.body) {
            Some(Reply {
                tool_calls: Some(calls),
                ..
            }) => (None, Some(calls)),
            Some(reply) => (Some(reply.text), None),
            None => (None, None),
        };
        if !self.forget_requests.load(Ordering::Relaxed) {
            lock(&self.requests).push(recorded);
        }
        let mut script = lock(&self.script);
        let scripted = script
            .iter()
            .position(|(m, _)| m.as_ref().is_none_or(|m| *m == model))
            .and_then(|i| script.remove(i))
            .map(|(_, f)| f);
        Arrival {
            fault: scripted.or_else(|| lock(&self.outage).clone()),
            reply,
            tool_calls,
        }
    }

    /// The scripted answer to a request with `body`: the first one-shot reply whose marker
    /// the body contains (used up), else the first such standing reply.
    fn reply_for(&self, body: &Value) -> Option<Reply> {
        let (mut replies, standing) = (lock(&self.replies), lock(&self.standing_replies));
        if replies.is_empty() && standing.is_empty() {
            return None;
        }
        let text = body.to_string();
        let once = replies
            .iter()
            .position(|r| text.contains(&r.marker))
            .and_then(|i| replies.remove(i));
        once.or_else(|| standing.iter().find(|r| text.contains(&r.marker)).cloned())
    }

    /// Waits as a real provider would before its first byte; a stall fault adds to it.
    /// Returns the fault the request gets: the one it arrived with, else a 429 when it
    /// arrived past the capacity (answered after the same wait, so it counts among the
    /// requests at once like any other).
    pub(crate) async fn before_answer(&self, fault: Option<Fault>) -> Option<Fault> {
        let latency = *lock(&self.latency);
        let capacity = *lock(&self.capacity);
        let mut fault = fault;
        let _serving = match capacity {
            Some(capacity) if fault.is_none() => {
                let serving = Serving::new(self, capacity);
                if serving.is_none() {
                    self.over_capacity.fetch_add(1, Ordering::SeqCst);
                    fault = Some(Fault::status(429));
                }
                serving
            }
            _ => None,
        };
        if !latency.is_zero() {
            let _waiting = Waiting::new(self);
            tokio::time::sleep(latency).await;
        }
        if let Some(Fault::StallBeforeFirstByte(stall)) = &fault {
            tokio::time::sleep(*stall).await;
        }
        fault
    }

    pub(crate) fn chunk_delay(&self) -> Duration {
        *lock(&self.chunk_delay)
    }
}

/// One request counted in [`State::waiting`] until dropped (also when its connection is
/// dropped mid-wait).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(state: &'a State) -> Self {
        let now = state.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        state.most_waiting.fetch_max(now, Ordering::SeqCst);
        Self(&state.waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request within the capacity, counted in [`State::serving`] until dropped.
struct Serving<'a>(&'a AtomicUsize);

impl<'a> Serving<'a> {
    /// A place among the `capacity` requests served at once, if one is free.
    fn new(state: &'a State, capacity: usize) -> Option<Self> {
        state
            .serving
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(&state.serving))
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running fake provider; it stops when dropped.
#[derive(Debug)]
pub struct FakeProvider {
    pub format: Format,
    pub addr: SocketAddr,
    state: Arc<State>,
    /// The server task; dropping the set (with the fake) aborts it.
    _server: tokio::task::JoinSet<()>,
}

impl FakeProvider {
    /// Starts a fake of `format` on a free loopback port.
    pub async fn start(format: Format) -> std::io::Result<Self> {
        Self::bind(
            format,
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
        )
        .await
    }

    /// Starts a fake of `format` on `addr`.
    pub async fn bind(format: Format, addr: SocketAddr) -> std::io::Result<Self> {
        let state = Arc::new(State::default());
        let app = match format {
            Format::OpenAi => openai::router(),
            Format::Anthropic => anthropic::router(),
            Format::Gemini => gemini::router(),
            Format::Replicate => replicate::router(),
        }
        .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut server = tokio::task::JoinSet::new();
        server.spawn(async move {
            // The server only ends when the fake is dropped (the task is aborted).
            // Like a real provider's server: streamed events go out as they are written.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            format,
            addr,
            state,
            _server: server,
        })
    }

    /// The `base_url` a Switchyard provider of this format is configured with.
    pub fn base_url(&self) -> String {
        match self.format {
            Format::OpenAi | Format::Anthropic | Format::Replicate => {
                format!("http://{}/v1", self.addr)
            }
            Format::Gemini => format!("http://{}/v1beta", self.addr),
        }
    }

    /// The next request (for any model) gets `fault` instead of its answer.
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.state.script).push_back((None, fault));
    }

    /// The next request for `model` gets `fault` instead of its answer.
    pub fn push_fault_for(&self, model: &str, fault: Fault) {
        lock(&self.state.script).push_back((Some(model.to_owned()), fault));
    }

    /// The next request whose body contains `marker` (as sent: JSON, so quotes and newlines
    /// escaped) answers with `text` instead of its usual echo; several such answers are taken
    /// in the order they were pushed. A fault for the same request still wins.
    pub fn push_reply(&self, marker: &str, text: &str) {
        lock(&self.state.replies).push_back(Reply {
            marker: marker.to_owned(),
            text: text.to_owned(),
            tool_calls: None,
        });
    }

    /// Like [`push_reply`](Self::push_reply), but the answer calls tools: each `(name,
    /// arguments)` becomes one call (ids `call_fake_0`, `call_fake_1`, …) of an OpenAI
    /// answer with `finish_reason: tool_calls`. The OpenAI format only.
    pub fn push_tool_calls(&self, marker: &str, calls: &[(&str, &str)]) {
        lock(&self.state.replies).push_back(Reply {
            marker: marker.to_owned(),
            text: String::new(),
            tool_calls: Some(tool_calls(calls)),
        });
    }

    /// Like [`set_reply`](Self::set_reply), but every matching request calls these tools.
    pub fn set_tool_calls(&self, marker: &str, calls: &[(&str, &str)]) {
        let mut standing = lock(&self.state.standing_replies);
        standing.retain(|r| r.marker != marker);
        standing.push(Reply {
            marker: marker.to_owned(),
            text: String::new(),
            tool_calls: Some(tool_calls(calls)),
        });
    }

    /// Every request whose body contains `marker` answers with `text` (after any one-shot
    /// [`push_reply`](Self::push_reply) that matches it), replacing an earlier standing answer
    /// for the same marker.
    pub fn set_reply(&self, marker: &str, text: &str) {
        let mut standing = lock(&self.state.standing_replies);
        standing.retain(|r| r.marker != marker);
        standing.push(Reply {
            marker: marker.to_owned(),
            text: text.to_owned(),
            tool_calls: None,
        });
    }

    /// Every request gets `fault` until this is called with `None` (scripted faults first).
    pub fn set_outage(&self, fault: Option<Fault>) {
        *lock(&self.state.outage) = fault;
    }

    /// Delay before every answer's first byte.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.state.latency) = latency;
    }

    /// Requests served at once (`None`: no limit): while `capacity` requests wait out the
    /// latency, the next one is answered 429 (without `Retry-After`) after the same wait.
    /// Needs a latency, since only requests waiting it out count.
    pub fn set_capacity(&self, capacity: Option<usize>) {
        *lock(&self.state.capacity) = capacity;
    }

    /// Requests answered 429 for arriving past the capacity.
    pub fn over_capacity(&self) -> usize {
        self.state.over_capacity.load(Ordering::SeqCst)
    }

    /// Starts counting [`most_at_once`](Self::most_at_once) afresh.
    pub fn reset_most_at_once(&self) {
        self.state.most_waiting.store(0, Ordering::SeqCst);
    }

    /// Delay between streamed events.
    pub fn set_chunk_delay(&self, delay: Duration) {
        *lock(&self.state.chunk_delay) = delay;
    }

    /// Stops keeping requests (their count is still kept), for long benchmark runs.
    pub fn forget_requests(&self) {
        self.state.forget_requests.store(true, Ordering::Relaxed);
    }

    /// The most requests that were waiting out the latency at the same time.
    pub fn most_at_once(&self) -> usize {
        self.state.most_waiting.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// The body of every request received, in order.
    pub fn bodies(&self) -> Vec<Value> {
        lock(&self.state.requests)
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }
}

/// Scripted calls as `[{"name", "arguments"}]`.
fn tool_calls(calls: &[(&str, &str)]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|(name, arguments)| serde_json::json!({"name": name, "arguments": arguments}))
            .collect(),
    )
}

/// A loopback URL nothing listens on: connecting to it is refused.
pub fn refused_url() -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{addr}/v1"))
}

/// The text every fake answers with: which model, and an echo of the last user text.
pub fn answer_text(model: &str, last_user_text: &str) -> String {
    format!("fake answer from {model} to: {last_user_text}")
}

/// The text of choice `index` when a request asks for several (`n`): choice 0 is
/// [`answer_text`], the others say which they are, so a mix-up between choices shows.
pub fn choice_text(model: &str, last_user_text: &str, index: usize) -> String {
    let text = answer_text(model, last_user_text);
    if index == 0 {
        text
    } else {
        format!("{text} (choice {index})")
    }
}

/// The words of `text`, each with its trailing space, as streamed pieces.
pub(crate) fn pieces(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

/// A JSON error answer with extra headers.
pub(crate) fn error_response(status: u16, headers: &[(String, String)], body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut map = HeaderMap::new();
    map.insert("content-type", HeaderValue::from_static("application/json"));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            map.insert(name, value);
        }
    }
    (status, map, body.to_string()).into_response()
}

/// A 200 whose body claims JSON but is not.
pub(crate) fn malformed_json() -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        "{\"id\": \"broken",
    )
        .into_response()
}

/// One server-sent event: an optional `event:` name and its data.
#[derive(Debug, Clone)]
pub(crate) struct SseEvent {
    pub name: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub(crate) fn data(data: impl Into<String>) -> Self {
        Self {
            name: None,
            data: data.into(),
        }
    }

    pub(crate) fn named(name: &str, data: impl Into<String>) -> Self {
        Self {
            name: Some(name.to_owned()),
            data: data.into(),
        }
    }
}

/// Sends `events` as an SSE answer, `delay` apart, applying a mid-stream fault: a stall or
/// a cut after the first two events, or malformed data as the second. A complete stream
/// must have at least three events so the cut always lands before its end marker.
pub(crate) fn sse(events: Vec<SseEvent>, delay: Duration, fault: Option<&Fault>) -> Response {
    let mut events = events;
    let mut stall_after_two = None;
    match fault {
        Some(Fault::CutStream) => events.truncate(2),
        Some(Fault::StallMidStream(stall)) => stall_after_two = Some(*stall),
        Some(Fault::Malformed) => {
            events.truncate(1);
            events.push(SseEvent::data("{\"choices\": [broken"));
        }
        _ => {}
    }
    let stream =
        futures::stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if i == 2
                && let Some(stall) = stall_after_two
            {
                tokio::time::sleep(stall).await;
            }
            let mut event = Event::default().data(e.data);
            if let Some(name) = e.name {
                event = event.event(name);
            }
            Ok::<_, Infallible>(event)
        });
    Sse::new(stream).into_response()
}
