//! Strategies the adapters' property tests share: arbitrary JSON biased toward the field
//! names and values the wire formats use (so generated inputs reach deep into the parsers,
//! not only their first `get`), and arbitrary event data. Test-only.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Cases per property: enough to shake out panics on odd shapes, few enough that the
/// whole suite stays fast.
pub(crate) const CASES: u32 = 256;

/// Field names the adapters read, mixed with arbitrary ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(vec![
            "choices", "content", "type", "text", "index", "delta", "message", "usage", "id",
            "model", "input_tokens", "output_tokens", "cache_creation_input_tokens",
            "cache_read_input_tokens", "stop_reason", "content_block", "partial_json", "name",
            "input", "candidates", "parts", "finishReason", "usageMetadata",
            "promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount",
            "toolUsePromptTokenCount", "cachedContentTokenCount", "functionCall", "args",
            "thought", "thoughtSignature", "promptFeedback", "blockReason", "modelVersion",
            "error", "code", "status", "details", "retryDelay", "@type", "output", "metrics",
            "input_token_count", "output_token_count", "urls", "finish_reason", "role",
            "tool_calls", "function", "arguments",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

/// Strings the adapters match on, mixed with arbitrary ones.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            "text", "tool_use", "message_start", "content_block_start",
            "content_block_delta", "content_block_stop", "text_delta", "input_json_delta",
            "message_delta", "message_stop", "error", "ping", "json_response", "end_turn",
            "max_tokens", "refusal", "STOP", "MAX_TOKENS", "SAFETY",
            "MALFORMED_FUNCTION_CALL", "succeeded", "failed", "starting", "processing",
            "canceled", "aborted", "rate_limit_error", "overloaded_error", "[DONE]",
            "type.googleapis.com/google.rpc.RetryInfo", "1e400s", "-3s", "NaNs",
        ])
        .prop_map(str::to_owned),
        2 => ".{0,24}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

/// Any JSON value, a few levels deep.
pub(crate) fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// What one server-sent event's data may be: JSON of any shape, or any text at all.
pub(crate) fn event_data() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => json().prop_map(|v| v.to_string()),
        1 => any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => Just("[DONE]".to_owned()),
    ]
}

/// Token counts, large ones included: sums of them must not overflow.
pub(crate) fn tokens() -> impl Strategy<Value = u64> {
    prop_oneof![0..100_000u64, any::<u64>(), Just(u64::MAX)]
}
