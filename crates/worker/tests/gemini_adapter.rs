//! The Gemini adapter against the fake Gemini server on loopback: what goes over the wire
//! (key in a header and never in the URL, the mapped request), answers, streams, a tool
//! round trip, and the class of each injected fault.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

mod common;

use fake_provider::{FakeProvider, Fault, Format};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use shared::FailureClass;
use shared::config::Secret;
use switchyard_worker::provider::{Call, Provider, ProviderError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider(base_url: &str) -> Provider {
    common::provider("gemini", base_url)
}

async fn setup() -> (FakeProvider, Provider) {
    common::setup(Format::Gemini, "gemini").await
}

fn request(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

fn hello() -> Map<String, Value> {
    request(json!({
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"}
        ],
        "max_tokens": 64,
        "temperature": 0.5
    }))
}

fn call<'a>(request: &'a Map<String, Value>, key: Option<&'a Secret>) -> Call<'a> {
    Call {
        model: "gemini-test",
        request,
        key,
    }
}

/// Every item of a stream, in order.
async fn drain(provider: &Provider, call: Call<'_>) -> Vec<Result<Value, ProviderError>> {
    provider.stream(call).await.unwrap().collect().await
}

/// The streamed text, the tool calls by index (arguments joined), and the last chunk.
fn reassemble(chunks: &[Value]) -> (String, Vec<Value>, Value) {
    let mut text = String::new();
    let mut calls: Vec<Value> = Vec::new();
    for chunk in chunks {
        let delta = &chunk["choices"][0]["delta"];
        text.push_str(delta["content"].as_str().unwrap_or_default());
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = usize::try_from(call["index"].as_u64().unwrap()).unwrap();
            if calls.len() <= index {
                calls.resize(index + 1, json!({"function": {"arguments": ""}}));
            }
            let slot = &mut calls[index];
            for key in ["id", "type", "extra_content"] {
                if let Some(v) = call.get(key) {
                    slot[key] = v.clone();
                }
            }
            if let Some(name) = call["function"]["name"].as_str() {
                slot["function"]["name"] = json!(name);
            }
            let joined = slot["function"]["arguments"].as_str().unwrap().to_owned()
                + call["function"]["arguments"].as_str().unwrap_or_default();
            slot["function"]["arguments"] = json!(joined);
        }
    }
    (text, calls, chunks.last().cloned().unwrap())
}

#[tokio::test]
async fn completes_and_maps_the_request() {
    let (fake, provider) = setup().await;
    let key = Secret::new("gm-test-key".to_owned());
    let request = hello();
    let answer = provider.complete(call(&request, Some(&key))).await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "fake answer from gemini-test to: hi"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 5);
    assert_eq!(answer["usage"]["completion_tokens"], 7);
    assert_eq!(answer["usage"]["total_tokens"], 12);

    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].model, "gemini-test");
    assert_eq!(seen[0].key.as_deref(), Some("gm-test-key"));
    assert!(!seen[0].stream);
    let body = &seen[0].body;
    assert_eq!(
        body["systemInstruction"],
        json!({"parts": [{"text": "be brief"}]})
    );
    assert_eq!(
        body["contents"],
        json!([{"role": "user", "parts": [{"text": "hi"}]}])
    );
    assert_eq!(
        body["generationConfig"],
        json!({"maxOutputTokens": 64, "temperature": 0.5})
    );
}

#[tokio::test]
async fn prefixed_model_names_are_stripped_and_odd_ones_refused() {
    let (fake, provider) = setup().await;
    let request = hello();
    let prefixed = Call {
        model: "models/gemini-test",
        ..call(&request, None)
    };
    provider.complete(prefixed).await.unwrap();
    assert_eq!(fake.requests()[0].model, "gemini-test");
    for model in ["../evil", "m?key=x", ""] {
        let odd = Call {
            model,
            ..call(&request, None)
        };
        let err = provider.complete(odd).await.unwrap_err();
        assert_eq!(err.class, FailureClass::BadRequest, "{model}");
        let err = provider.stream(odd).await.err().unwrap();
        assert_eq!(err.class, FailureClass::BadRequest, "{model}");
    }
    assert_eq!(
        fake.calls(),
        1,
        "refused model names never leave the worker"
    );
}

/// Reads one HTTP request off a raw socket and answers it with a fixed Gemini error, so the
/// test sees the request line and headers exactly as sent.
#[expect(
    clippy::disallowed_methods,
    reason = "a one-request server the test joins for what it captured"
)]
async fn capture_one_request() -> (String, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1beta", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-request");
            head.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"error":{"code":403,"message":"Permission denied for key gm-secret-key","status":"PERMISSION_DENIED"}}"#;
        let answer = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });
    (base_url, server)
}

#[tokio::test]
async fn the_key_goes_in_a_header_and_never_in_the_url_or_error() {
    let (base_url, server) = capture_one_request().await;
    let provider = provider(&base_url);
    let key = Secret::new("gm-secret-key".to_owned());
    let request = hello();
    let err = provider
        .complete(call(&request, Some(&key)))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Auth);
    assert_eq!(err.status, Some(403));
    assert!(!err.message.contains("gm-secret-key"), "{}", err.message);
    let head = server.await.unwrap();
    let request_line = head.lines().next().unwrap();
    assert_eq!(
        request_line,
        "POST /v1beta/models/gemini-test:generateContent HTTP/1.1"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("x-goog-api-key: gm-secret-key"),
        "{head}"
    );
}

#[tokio::test]
async fn streams_chunks_to_the_end() {
    let (fake, provider) = setup().await;
    let request = hello();
    let items = drain(&provider, call(&request, None)).await;
    let chunks: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    assert!(chunks.len() >= 3);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (text, calls, last) = reassemble(&chunks);
    assert_eq!(text, "fake answer from gemini-test to: hi");
    assert!(calls.is_empty());
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["total_tokens"], 12);
    // Only the last chunk finishes; text arrived as several deltas, not one string.
    let finished = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finished, 1);
    let text_deltas = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(text_deltas > 1);
    assert!(fake.requests()[0].stream);
}

fn weather_request(messages: Value) -> Map<String, Value> {
    request(json!({
        "messages": messages,
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        }}],
        "tool_choice": "auto"
    }))
}

#[tokio::test]
async fn tool_calls_round_trip() {
    let (fake, provider) = setup().await;
    let ask = json!({"role": "user", "content": "please use tool for Oslo"});
    let first = weather_request(json!([ask]));
    let answer = provider.complete(call(&first, None)).await.unwrap();
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let tool_call = choice["message"]["tool_calls"][0].clone();
    assert_eq!(tool_call["type"], "function");
    assert_eq!(tool_call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(tool_call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"text": "please use tool for Oslo"}));
    assert_eq!(
        tool_call["extra_content"]["google"]["thought_signature"],
        "fake-thought-signature"
    );
    let declared = &fake.requests()[0].body;
    assert_eq!(
        declared["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    assert_eq!(
        declared["toolConfig"]["functionCallingConfig"]["mode"],
        "AUTO"
    );

    // The caller runs the tool and sends the assistant message back with the result.
    let second = weather_request(json!([
        ask,
        choice["message"],
        {"role": "tool", "tool_call_id": tool_call["id"], "content": "{\"temp_c\": 3}"}
    ]));
    let answer = provider.complete(call(&second, None)).await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "fake answer from gemini-test to: {\"temp_c\":3}"
    );
    let sent = &fake.requests()[1].body["contents"];
    assert_eq!(
        sent[1],
        json!({"role": "model", "parts": [{
            "functionCall": {"name": "get_weather", "args": {"text": "please use tool for Oslo"}},
            "thoughtSignature": "fake-thought-signature"
        }]})
    );
    assert_eq!(
        sent[2],
        json!({"role": "user", "parts": [{
            "functionResponse": {"name": "get_weather", "response": {"temp_c": 3}}
        }]})
    );
}

#[tokio::test]
async fn tool_calls_stream_as_deltas() {
    let (_fake, provider) = setup().await;
    let request = weather_request(json!([{"role": "user", "content": "use tool now"}]));
    let items = drain(&provider, call(&request, None)).await;
    let chunks: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    let (text, calls, last) = reassemble(&chunks);
    assert_eq!(text, "");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(
        calls[0]["function"]["arguments"],
        "{\"text\":\"use tool now\"}"
    );
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn faults_get_their_class() {
    let (fake, provider) = setup().await;
    let request = hello();
    let cases = [
        (
            Fault::status_with(429, "retry-after", "2"),
            FailureClass::RateLimited,
        ),
        (Fault::status(401), FailureClass::Auth),
        (Fault::status(403), FailureClass::Auth),
        (Fault::status(500), FailureClass::Upstream5xx),
        (Fault::status(503), FailureClass::Upstream5xx),
        (Fault::status(400), FailureClass::BadRequest),
        (Fault::ContextLength, FailureClass::ContextLength),
        (Fault::Malformed, FailureClass::InvalidResponse),
    ];
    for (fault, class) in cases {
        fake.push_fault(fault.clone());
        let err = provider.complete(call(&request, None)).await.unwrap_err();
        assert_eq!(err.class, class, "{fault:?}");
        // A stream fails the same way: up front, or (malformed data) as its last item.
        fake.push_fault(fault.clone());
        let err = match provider.stream(call(&request, None)).await {
            Err(err) => err,
            Ok(stream) => {
                let items: Vec<_> = stream.collect().await;
                items.into_iter().find_map(Result::err).unwrap()
            }
        };
        assert_eq!(err.class, class, "stream {fault:?}");
    }
    fake.push_fault(Fault::status_with(429, "retry-after", "2"));
    let err = provider.complete(call(&request, None)).await.unwrap_err();
    assert_eq!(err.status, Some(429));
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(err.message, "injected fault");
}

#[tokio::test]
async fn blocked_prompts_answer_with_content_filter() {
    let (fake, provider) = setup().await;
    let request = hello();
    fake.push_fault(Fault::ContentFilter);
    let answer = provider.complete(call(&request, None)).await.unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(answer["choices"][0]["message"]["content"], "");
    assert_eq!(answer["usage"]["prompt_tokens"], 5);

    fake.push_fault(Fault::ContentFilter);
    let items = drain(&provider, call(&request, None)).await;
    let chunks: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    let (text, _, last) = reassemble(&chunks);
    assert_eq!(text, "");
    assert_eq!(last["choices"][0]["finish_reason"], "content_filter");
}

#[tokio::test]
async fn broken_streams_get_their_class() {
    let (fake, provider) = setup().await;
    let request = hello();
    for (fault, class) in [
        (Fault::CutStream, FailureClass::Network),
        (Fault::Malformed, FailureClass::InvalidResponse),
    ] {
        fake.push_fault(fault.clone());
        let items = drain(&provider, call(&request, None)).await;
        let (last, before) = items.split_last().unwrap();
        assert!(before.iter().all(Result::is_ok), "{fault:?}");
        assert_eq!(last.as_ref().unwrap_err().class, class, "{fault:?}");
    }
}

#[tokio::test]
async fn a_stall_mid_stream_still_completes() {
    let (fake, provider) = setup().await;
    let request = hello();
    fake.push_fault(Fault::StallMidStream(Duration::from_millis(20)));
    let items = drain(&provider, call(&request, None)).await;
    let chunks: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    let (text, _, last) = reassemble(&chunks);
    assert_eq!(text, "fake answer from gemini-test to: hi");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
}
