//! Reading and checking a chat completion request body. The body is kept as the JSON object
//! the caller sent (unknown fields included, passed through to the provider); only the
//! fields Switchyard itself relies on are checked, each with the parameter it concerns.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::{Map, Value};
use shared::limits::{MAX_JSON_DEPTH, check_route, json_depth};

use crate::error::ApiError;
use crate::state::AppState;

/// A checked chat completion request.
#[derive(Debug)]
pub struct ChatBody {
    pub model: String,
    pub stream: bool,
    pub body: Map<String, Value>,
}

impl FromRequest<AppState> for ChatBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        parse(&read(req, state).await?)
    }
}

/// A request's whole body, within `gateway.max_body_bytes`, however it trickles in: a client
/// sending a byte now and then must not hold the connection (and its task) indefinitely.
pub async fn read(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.config.gateway.max_body_bytes;
    let limit_ms = state.config.gateway.body_read_timeout_ms;
    let read = Bytes::from_request(req, state);
    tokio::time::timeout(Duration::from_millis(limit_ms), read)
        .await
        .map_err(|_| ApiError::BodyTimeout { limit_ms })?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge { limit }
            } else {
                ApiError::invalid("body", rejection.body_text())
            }
        })
}

/// A JSON object body, its depth checked before it is parsed.
pub fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    // Ours, not serde_json's (128): the worker reads a request one level deeper, inside
    // its task, so the two must not meet at the parser's own limit.
    if json_depth(bytes) > MAX_JSON_DEPTH {
        return Err(ApiError::invalid(
            "body",
            format!(
                "request body must not nest arrays and objects deeper than {MAX_JSON_DEPTH} levels"
            ),
        ));
    }
    match serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))? {
        Value::Object(body) => Ok(body),
        _ => Err(ApiError::invalid(
            "body",
            "request body must be a JSON object",
        )),
    }
}

/// Parses and checks a request body.
pub fn parse(bytes: &[u8]) -> Result<ChatBody, ApiError> {
    let body = json_object(bytes)?;
    let model = match body.get("model") {
        // The model becomes the task's route, which travels in NATS headers and keys.
        Some(Value::String(m)) => match check_route(m) {
            Ok(()) => m.clone(),
            Err(e) => return Err(ApiError::invalid("model", format!("`model` {e}"))),
        },
        Some(_) => return Err(ApiError::invalid("model", "`model` must be a string")),
        None => return Err(ApiError::invalid("model", "`model` is required")),
    };
    check_messages(body.get("messages"))?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream", "`stream` must be a boolean")),
    };
    Ok(ChatBody {
        model,
        stream,
        body,
    })
}

fn check_messages(messages: Option<&Value>) -> Result<(), ApiError> {
    let messages = match messages {
        Some(Value::Array(m)) => m,
        Some(_) => return Err(ApiError::invalid("messages", "`messages` must be an array")),
        None => return Err(ApiError::invalid("messages", "`messages` is required")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return Err(ApiError::invalid(
                format!("messages[{i}]"),
                format!("`messages[{i}]` must be an object"),
            ));
        };
        match message.get("role") {
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("`messages[{i}].role` must be a string"),
                ));
            }
            None => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("`messages[{i}].role` is required"),
                ));
            }
        }
        match message.get("content") {
            None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    format!("`messages[{i}].content` must be a string or an array of parts"),
                ));
            }
        }
    }
    Ok(())
}

/// `fields` as a `T`, a problem naming the field it is in (`capabilities[1]`), the
/// unknown field, or the missing one.
pub fn decode<T: serde::de::DeserializeOwned>(fields: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // A missing field is reported at the object that lacks it: name the field.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let param = match (path.as_str(), missing) {
            ("." | "", Some(field)) => field.to_owned(),
            ("." | "", None) => "body".to_owned(),
            (parent, Some(field)) => format!("{parent}.{field}"),
            (field, None) => field.to_owned(),
        };
        ApiError::invalid(param, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(err: ApiError) -> String {
        match err {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn good_body_keeps_unknown_fields() {
        let b =
            parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x_extra":[1]}"#)
                .unwrap();
        assert_eq!(b.model, "m");
        assert!(!b.stream);
        assert_eq!(b.body["x_extra"][0], 1);
    }

    #[test]
    fn malformed_json() {
        assert!(matches!(
            parse(b"{\"model\":"),
            Err(ApiError::InvalidJson(_))
        ));
    }

    #[test]
    fn each_bad_field_names_its_param() {
        let cases: [(&[u8], &str); 9] = [
            (br#"[]"#, "body"),
            (br#"{"messages":[{"role":"user"}]}"#, "model"),
            (br#"{"model":7,"messages":[{"role":"user"}]}"#, "model"),
            (br#"{"model":"m"}"#, "messages"),
            (br#"{"model":"m","messages":"hi"}"#, "messages"),
            (br#"{"model":"m","messages":[]}"#, "messages"),
            (
                br#"{"model":"m","messages":[{"content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#,
                "stream",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                param(parse(body).unwrap_err()),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Property tests: whatever arrives as a body, parsing returns a body or a 4xx, and never
    /// panics. 256 cases each keeps the suite quick.
    mod properties {
        use axum::response::IntoResponse;
        use proptest::prelude::*;
        use serde_json::{Value, json};

        use super::super::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,20}".prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,8}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A chat body whose checked fields hold anything (or are missing).
        fn chat_like() -> impl Strategy<Value = Value> {
            let field = || prop::option::of(json_value());
            let message = (field(), field(), field()).prop_map(|(role, content, extra)| {
                let mut m = serde_json::Map::new();
                for (key, value) in [("role", role), ("content", content), ("name", extra)] {
                    if let Some(value) = value {
                        m.insert(key.to_owned(), value);
                    }
                }
                Value::Object(m)
            });
            // Mostly well-formed messages, so the model's own checks are reached.
            let good_message = (".{0,10}", ".{0,20}")
                .prop_map(|(role, content)| json!({"role": role, "content": content}));
            let model = prop_oneof![
                json_value(),
                "[ -~]{0,300}".prop_map(Value::String),
                "[a-z/\\x00-\\x1f]{0,12}".prop_map(Value::String),
                ".{0,40}".prop_map(Value::String),
            ];
            (
                prop::option::of(model),
                prop::option::of(prop_oneof![
                    3 => prop::collection::vec(good_message, 1..3).prop_map(Value::Array),
                    1 => prop::collection::vec(message, 0..4).prop_map(Value::Array),
                    1 => json_value(),
                ]),
                field(),
                field(),
            )
                .prop_map(|(model, messages, stream, other)| {
                    let mut body = json!({});
                    for (key, value) in [
                        ("model", model),
                        ("messages", messages),
                        ("stream", stream),
                        ("temperature", other),
                    ] {
                        if let Some(value) = value {
                            body[key] = value;
                        }
                    }
                    body
                })
        }

        fn ok_or_4xx(bytes: &[u8]) -> Result<(), TestCaseError> {
            match parse(bytes) {
                Ok(body) => {
                    prop_assert!(shared::limits::check_route(&body.model).is_ok());
                    prop_assert_eq!(body.body.get("model"), Some(&Value::String(body.model)));
                }
                Err(e) => {
                    let status = e.into_response().status();
                    prop_assert!(status.is_client_error(), "{}", status);
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                ok_or_4xx(&bytes)?;
            }

            #[test]
            fn arbitrary_json(value in json_value()) {
                ok_or_4xx(value.to_string().as_bytes())?;
            }

            #[test]
            fn arbitrary_chat_bodies(value in chat_like()) {
                ok_or_4xx(value.to_string().as_bytes())?;
            }

            #[test]
            fn arbitrary_nesting(open in "[\\[{]{0,300}", rest in ".{0,20}") {
                ok_or_4xx(format!("{{\"model\":\"m\",\"x\":{open}{rest}").as_bytes())?;
            }
        }
    }
}
