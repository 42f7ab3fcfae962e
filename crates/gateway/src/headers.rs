//! Switchyard's own HTTP headers.

/// On every response: the id of the task the request became (or would have become).
/// On a request: the caller's own id for the task (a UUID), to look it up later.
pub const TASK_ID: &str = "x-switchyard-task-id";
/// Request: a key naming this request, so that retries of it map to one task and get its
/// one result (the `Idempotency-Key` convention of HTTP APIs).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;
/// Request: queue priority, `high`, `normal` (default) or `low`.
pub const PRIORITY: &str = "x-switchyard-priority";
/// Request: run on this capability's queue instead of the route's.
pub const CAPABILITY: &str = "x-switchyard-capability";
/// Request: how long to wait for the answer, in milliseconds (bounded by configuration).
pub const TIMEOUT_MS: &str = "x-switchyard-timeout-ms";
/// Request: who writes a context entry (a name token; `api` when absent). Response (to a
/// context `GET`): who wrote the entry.
pub const WRITER: &str = "x-switchyard-writer";
/// Request to `/v1/chat/completions`: the chat session this request is a turn of (a name
/// token of at most 56 characters); its earlier turns are put before the new messages
/// (`docs/threads.md`).
pub const SESSION: &str = "x-switchyard-session";
/// Response: provider and model of the target that answered.
pub const PROVIDER: &str = "x-switchyard-provider";
pub const MODEL: &str = "x-switchyard-model";
/// Response: provider calls made for the task, across redeliveries.
pub const ATTEMPTS: &str = "x-switchyard-attempts";
/// Response: targets tried before the one that answered (0: the first choice).
pub const FALLBACK_DEPTH: &str = "x-switchyard-fallback-depth";
/// Response: the gateway's own share of the time to answer, in milliseconds: time from
/// the request to the answer (streams: to the first chunk) minus time spent with providers.
pub const OVERHEAD_MS: &str = "x-switchyard-overhead-ms";

/// Who answered and at what cost, as response headers.
#[derive(Debug, Clone, Default)]
pub struct Answered {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub attempts: Option<usize>,
    pub fallback_depth: Option<u32>,
    pub overhead_ms: Option<u64>,
}

impl Answered {
    /// Sets the headers this knows on `response`.
    pub fn apply(&self, response: &mut axum::response::Response) {
        let values = [
            (PROVIDER, self.provider.clone()),
            (MODEL, self.model.clone()),
            (ATTEMPTS, self.attempts.map(|a| a.to_string())),
            (FALLBACK_DEPTH, self.fallback_depth.map(|d| d.to_string())),
            (OVERHEAD_MS, self.overhead_ms.map(|o| o.to_string())),
        ];
        for (name, value) in values {
            if let Some(v) = value.and_then(|v| axum::http::HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(name, v);
            }
        }
    }
}
