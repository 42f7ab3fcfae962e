//! The Anthropic Messages adapter against the fake Anthropic server on loopback: what it
//! sends, answers and streams mapped back to the OpenAI shape, a tool call round trip, JSON
//! answers, and the class of each injected fault.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

mod common;

use common::stream_all;
use fake_provider::{FakeProvider, Fault, Format};
use serde_json::{Map, Value, json};
use shared::FailureClass;
use shared::config::Secret;
use switchyard_worker::provider::{Call, Provider};

async fn setup() -> (FakeProvider, Provider) {
    common::setup(Format::Anthropic, "anthropic").await
}

fn request(body: Value) -> Map<String, Value> {
    body.as_object().cloned().unwrap()
}

fn hi() -> Map<String, Value> {
    request(json!({"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]}))
}

fn call<'a>(request: &'a Map<String, Value>, key: Option<&'a Secret>) -> Call<'a> {
    Call {
        model: "claude-test",
        request,
        key,
    }
}

/// The streamed text, and each tool call's id, name and arguments put back together.
fn reassemble(chunks: &[Value]) -> (String, Vec<(String, String, String)>) {
    let mut text = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for chunk in chunks {
        let delta = &chunk["choices"][0]["delta"];
        text.push_str(delta["content"].as_str().unwrap_or_default());
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = usize::try_from(call["index"].as_u64().unwrap()).unwrap();
            if index == calls.len() {
                calls.push(Default::default());
            }
            let entry = &mut calls[index];
            if let Some(id) = call["id"].as_str() {
                id.clone_into(&mut entry.0);
            }
            if let Some(name) = call["function"]["name"].as_str() {
                name.clone_into(&mut entry.1);
            }
            entry
                .2
                .push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    (text, calls)
}

#[tokio::test]
async fn completes_with_key_version_system_and_default_max_tokens() {
    let (fake, provider) = setup().await;
    let key = Secret::new("sk-ant-test".to_owned());
    let request = hi();
    let answer = provider.complete(call(&request, Some(&key))).await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    let choice = &answer["choices"][0];
    assert_eq!(
        choice["message"]["content"],
        "fake answer from claude-test to: hi"
    );
    assert_eq!(choice["finish_reason"], "stop");
    // 5 fresh prompt tokens plus 3 read from the cache; one token per word.
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14})
    );
    let seen = fake.requests();
    assert_eq!(seen[0].key.as_deref(), Some("sk-ant-test"));
    assert_eq!(seen[0].model, "claude-test");
    assert!(!seen[0].stream);
    assert_eq!(seen[0].body["system"], "be brief");
    assert_eq!(seen[0].body["max_tokens"], 4096);
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    );
}

#[tokio::test]
async fn length_and_stop_sequences_map_to_finish_reasons() {
    let (_fake, provider) = setup().await;
    let request = request(json!({
        "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2,
    }));
    let answer = provider.complete(call(&request, None)).await.unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(answer["choices"][0]["message"]["content"], "fake answer ");

    let request = request_with_stop();
    let answer = provider.complete(call(&request, None)).await.unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["choices"][0]["message"]["content"], "fake answer ");
}

fn request_with_stop() -> Map<String, Value> {
    request(json!({"messages": [{"role": "user", "content": "hi"}], "stop": ["from"]}))
}

#[tokio::test]
async fn streams_text_to_the_end_with_usage() {
    let (fake, provider) = setup().await;
    let request = hi();
    let items = stream_all(&provider, call(&request, None)).await;
    let chunks: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let (text, calls) = reassemble(&chunks);
    assert_eq!(text, "fake answer from claude-test to: hi");
    assert!(calls.is_empty());
    // More than one content chunk: the stream is mapped piece by piece, not flattened.
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(content_chunks, 6);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["prompt_tokens"], 8);
    assert_eq!(last["usage"]["completion_tokens"], 6);
    assert_eq!(fake.requests()[0].body["stream"], true);
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"answer": {"type": "string"}}},
    }}])
}

#[tokio::test]
async fn tool_call_round_trip() {
    let (fake, provider) = setup().await;
    let first = request(json!({
        "messages": [{"role": "user", "content": "please use tool"}],
        "tools": weather_tools(),
    }));
    let answer = provider.complete(call(&first, None)).await.unwrap();
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let tool_call = &choice["message"]["tool_calls"][0];
    assert_eq!(tool_call["type"], "function");
    assert_eq!(tool_call["function"]["name"], "weather");
    let arguments: Value =
        serde_json::from_str(tool_call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        arguments,
        json!({"answer": "fake answer from claude-test to: please use tool"})
    );
    assert_eq!(
        fake.requests()[0].body["tools"],
        json!([{"name": "weather", "description": "Weather now",
                "input_schema": {"type": "object", "properties": {"answer": {"type": "string"}}}}])
    );

    let second = request(json!({
        "messages": [
            {"role": "user", "content": "please use tool"},
            choice["message"].clone(),
            {"role": "tool", "tool_call_id": tool_call["id"].clone(), "content": "sunny"},
        ],
        "tools": weather_tools(),
    }));
    let answer = provider.complete(call(&second, None)).await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "fake answer from claude-test to: sunny"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    let sent = &fake.requests()[1].body["messages"];
    assert_eq!(sent[1]["content"][0]["type"], "tool_use");
    assert_eq!(sent[1]["content"][0]["id"], tool_call["id"]);
    assert_eq!(sent[1]["content"][0]["input"], arguments);
    assert_eq!(
        sent[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_call["id"].clone(), "content": "sunny"},
        ]})
    );
}

#[tokio::test]
async fn streamed_tool_call_reassembles() {
    let (_fake, provider) = setup().await;
    let request = request(json!({
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": weather_tools(),
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }));
    let chunks: Vec<Value> = stream_all(&provider, call(&request, None))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let (text, calls) = reassemble(&chunks);
    assert_eq!(text, "");
    assert_eq!(calls.len(), 1);
    let (id, name, arguments) = &calls[0];
    assert_eq!(id, "toolu_fake_0");
    assert_eq!(name, "weather");
    let arguments: Value = serde_json::from_str(arguments).unwrap();
    assert_eq!(
        arguments,
        json!({"answer": "fake answer from claude-test to: weather?"})
    );
    // The arguments arrive in more than one piece, after the delta that names the call.
    let argument_pieces = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert!(argument_pieces > 1);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn json_response_format_comes_back_as_content() {
    let (fake, provider) = setup().await;
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}});
    let request = request(json!({
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }));
    let expected = json!({"answer": "fake answer from claude-test to: hi"});

    let answer = provider.complete(call(&request, None)).await.unwrap();
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none());
    let content: Value =
        serde_json::from_str(choice["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, expected);
    assert_eq!(fake.requests()[0].body["tools"][0]["input_schema"], schema);

    let chunks: Vec<Value> = stream_all(&provider, call(&request, None))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let (text, calls) = reassemble(&chunks);
    assert!(calls.is_empty());
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), expected);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn refusal_is_an_answer_with_content_filter() {
    let (fake, provider) = setup().await;
    let request = hi();
    fake.push_fault(Fault::ContentFilter);
    let answer = provider.complete(call(&request, None)).await.unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(answer["choices"][0]["message"]["content"], "");

    fake.push_fault(Fault::ContentFilter);
    let chunks: Vec<Value> = stream_all(&provider, call(&request, None))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "content_filter"
    );
}

#[tokio::test]
async fn faults_get_their_class() {
    let (fake, provider) = setup().await;
    let key = Secret::new("sk-ant-secret".to_owned());
    let request = hi();
    let call = call(&request, Some(&key));
    let cases = [
        (
            Fault::status_with(429, "retry-after", "2"),
            FailureClass::RateLimited,
        ),
        (Fault::status(401), FailureClass::Auth),
        (Fault::status(529), FailureClass::Upstream5xx),
        (Fault::status(500), FailureClass::Upstream5xx),
        (Fault::status(400), FailureClass::BadRequest),
        (Fault::ContextLength, FailureClass::ContextLength),
        (Fault::Malformed, FailureClass::InvalidResponse),
    ];
    for (fault, class) in cases {
        fake.push_fault(fault.clone());
        let err = provider.complete(call).await.unwrap_err();
        assert_eq!(err.class, class, "{fault:?}");
        assert!(!err.message.contains("sk-ant-secret"));
    }
    fake.push_fault(Fault::status_with(429, "retry-after", "2"));
    let err = provider.complete(call).await.unwrap_err();
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(err.status, Some(429));
    assert_eq!(err.message, "injected fault");

    // Error statuses come back before the stream opens.
    fake.push_fault(Fault::status(529));
    let err = provider.stream(call).await.err().unwrap();
    assert_eq!(err.class, FailureClass::Upstream5xx);
}

#[tokio::test]
async fn broken_streams_get_their_class() {
    let (fake, provider) = setup().await;
    let request = hi();
    for (fault, class) in [
        (Fault::CutStream, FailureClass::Network),
        (Fault::Malformed, FailureClass::InvalidResponse),
    ] {
        fake.push_fault(fault.clone());
        let items = stream_all(&provider, call(&request, None)).await;
        // Whatever came before the break, the stream ends on the error.
        assert!(items.last().unwrap().is_err(), "{fault:?}");
        let err = items.into_iter().find_map(Result::err).unwrap();
        assert_eq!(err.class, class, "{fault:?}");
    }
}

#[tokio::test]
async fn a_stall_mid_stream_still_completes() {
    let (fake, provider) = setup().await;
    let request = hi();
    fake.push_fault(Fault::StallMidStream(Duration::from_millis(50)));
    let chunks: Vec<Value> = stream_all(&provider, call(&request, None))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(reassemble(&chunks).0, "fake answer from claude-test to: hi");
}
