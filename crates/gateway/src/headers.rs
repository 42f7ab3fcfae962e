//! Switchyard's own HTTP headers.

/// On every response: the id of the task the request became (or would have become).
pub const TASK_ID: &str = "x-switchyard-task-id";
/// Request: queue priority, `high`, `normal` (default) or `low`.
pub const PRIORITY: &str = "x-switchyard-priority";
/// Request: run on this capability's queue instead of the route's.
pub const CAPABILITY: &str = "x-switchyard-capability";
/// Request: how long to wait for the answer, in milliseconds (bounded by configuration).
pub const TIMEOUT_MS: &str = "x-switchyard-timeout-ms";
/// Response: provider and model of the route that answered.
pub const PROVIDER: &str = "x-switchyard-provider";
pub const MODEL: &str = "x-switchyard-model";
