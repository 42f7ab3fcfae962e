//! The Replicate adapter against the fake Replicate server on loopback: predictions answered
//! in the create call and by polling, pinned versions, streams, requests it refuses, where
//! the key goes, and the class of each injected fault.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod common;

use fake_provider::{FakeProvider, Fault, Format};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use shared::FailureClass;
use shared::config::Secret;
use switchyard_worker::provider::{Call, Provider, ProviderError};

async fn setup() -> (FakeProvider, Provider) {
    common::setup(Format::Replicate, "replicate").await
}

fn request() -> Map<String, Value> {
    json!({
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_tokens": 100,
        "seed": 3
    })
    .as_object()
    .cloned()
    .unwrap()
}

fn call<'a>(model: &'a str, request: &'a Map<String, Value>) -> Call<'a> {
    Call {
        model,
        request,
        key: None,
    }
}

fn text(answer: &Value) -> &str {
    answer["choices"][0]["message"]["content"].as_str().unwrap()
}

/// Every item of a stream, and the text of its deltas.
async fn drain(provider: &Provider, call: Call<'_>) -> (Vec<Result<Value, ProviderError>>, String) {
    let items: Vec<_> = provider.stream(call).await.unwrap().collect().await;
    let text = items
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (items, text)
}

#[tokio::test]
async fn completes_in_the_create_call_and_sends_the_key() {
    let (fake, provider) = setup().await;
    let key = Secret::new("r8_test".to_owned());
    let request = request();
    let call = Call {
        key: Some(&key),
        ..call("meta/llama", &request)
    };
    let answer = provider.complete(call).await.unwrap();
    assert_eq!(text(&answer), "fake answer from meta/llama to: hi");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 1);
    assert_eq!(answer["usage"]["completion_tokens"], 6);
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].key.as_deref(), Some("r8_test"));
    assert!(!seen[0].stream);
    assert_eq!(
        seen[0].body,
        json!({"input": {"prompt": "hi", "system_prompt": "Be brief.", "max_tokens": 100}})
    );
}

#[tokio::test]
async fn polls_a_prediction_that_outlives_the_wait() {
    let (_fake, provider) = setup().await;
    let request = request();
    let answer = provider
        .complete(call("meta/slow-llama", &request))
        .await
        .unwrap();
    assert_eq!(text(&answer), "fake answer from meta/slow-llama to: hi");
    assert_eq!(answer["usage"]["completion_tokens"], 6);
}

#[tokio::test]
async fn a_pinned_version_is_created_by_version() {
    let (fake, provider) = setup().await;
    let request = request();
    let answer = provider
        .complete(call("someone/llama:abc123", &request))
        .await
        .unwrap();
    assert_eq!(text(&answer), "fake answer from abc123 to: hi");
    assert_eq!(fake.requests()[0].body["version"], "abc123");
}

#[tokio::test]
async fn a_conversation_is_sent_as_a_transcript() {
    let (fake, provider) = setup().await;
    let request = json!({"messages": [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "and now?"}
    ]})
    .as_object()
    .cloned()
    .unwrap();
    let answer = provider
        .complete(call("meta/llama", &request))
        .await
        .unwrap();
    assert_eq!(text(&answer), "fake answer from meta/llama to: and now?");
    assert_eq!(
        fake.requests()[0].body["input"]["prompt"],
        "User: hello\n\nAssistant: hi there\n\nUser: and now?\n\nAssistant:"
    );
}

#[tokio::test]
async fn streams_output_events_as_chunks() {
    let (fake, provider) = setup().await;
    let request = request();
    let (items, text) = drain(&provider, call("meta/llama", &request)).await;
    assert!(items.iter().all(Result::is_ok));
    assert_eq!(text, "fake answer from meta/llama to: hi");
    let chunks: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    // The role rides on the first output piece: nothing goes out before the model answers.
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "fake ");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["total_tokens"], 7);
    let seen = fake.requests();
    assert!(seen[0].stream);
    assert_eq!(seen[0].body["stream"], true);
}

#[tokio::test]
async fn requests_a_prediction_cannot_express_are_refused_before_any_call() {
    let (fake, provider) = setup().await;
    let mut with_tools = request();
    with_tools.insert(
        "tools".into(),
        json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]),
    );
    let mut json_mode = request();
    json_mode.insert("response_format".into(), json!({"type": "json_object"}));
    for request in [&with_tools, &json_mode] {
        let err = provider
            .complete(call("meta/llama", request))
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::BadRequest);
        let err = provider
            .stream(call("meta/llama", request))
            .await
            .err()
            .unwrap();
        assert_eq!(err.class, FailureClass::BadRequest);
    }
    let plain = request();
    for model in ["meta/../admin", "llama", "meta/llama?x=1"] {
        let err = provider.complete(call(model, &plain)).await.unwrap_err();
        assert_eq!(err.class, FailureClass::BadRequest, "{model}");
    }
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
#[expect(
    clippy::disallowed_methods,
    reason = "a listener that lives as long as the test's runtime, only counting connections"
)]
async fn the_key_never_goes_to_a_host_a_prediction_names() {
    let (fake, provider) = setup().await;
    // A listener that counts connections and drops them: following the foreign URL would
    // both be counted and fail the call.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = elsewhere.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let listener = tokio::spawn(async move {
        while let Ok((socket, _)) = elsewhere.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let model = format!("meta/elsewhere-{port}");
    let key = Secret::new("r8_test".to_owned());
    let request = request();
    let call = Call {
        key: Some(&key),
        ..call(&model, &request)
    };
    let answer = provider.complete(call).await.unwrap();
    assert_eq!(text(&answer), format!("fake answer from {model} to: hi"));
    let (items, text) = drain(&provider, call).await;
    assert!(items.iter().all(Result::is_ok));
    assert_eq!(text, format!("fake answer from {model} to: hi"));
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    assert_eq!(fake.calls(), 2);
    listener.abort();
}

#[tokio::test]
async fn faults_get_their_class() {
    let (fake, provider) = setup().await;
    let request = request();
    let cases = [
        (
            Fault::status_with(429, "retry-after", "2"),
            FailureClass::RateLimited,
        ),
        (Fault::status(401), FailureClass::Auth),
        (Fault::status(503), FailureClass::Upstream5xx),
        (Fault::ContextLength, FailureClass::ContextLength),
        (Fault::ContentFilter, FailureClass::ContentFilter),
        (Fault::Malformed, FailureClass::InvalidResponse),
    ];
    for model in ["meta/llama", "meta/slow-llama"] {
        for (fault, class) in &cases {
            fake.push_fault(fault.clone());
            let err = provider.complete(call(model, &request)).await.unwrap_err();
            assert_eq!(err.class, *class, "{model} {fault:?}");
        }
    }
    fake.push_fault(Fault::status_with(429, "retry-after", "2"));
    let err = provider
        .complete(call("meta/llama", &request))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(err.status, Some(429));
}

#[tokio::test]
async fn broken_streams_get_their_class() {
    let (fake, provider) = setup().await;
    let request = request();
    for (fault, class) in [
        (Fault::CutStream, FailureClass::Network),
        (Fault::Malformed, FailureClass::InvalidResponse),
    ] {
        fake.push_fault(fault.clone());
        let (items, _) = drain(&provider, call("meta/llama", &request)).await;
        let err = items.into_iter().find_map(Result::err).unwrap();
        assert_eq!(err.class, class, "{fault:?}");
    }
    // A prediction that fails before any output fails the stream before any chunk, so the
    // attempt is not taken for a half-sent answer and failover can move on.
    for (fault, class) in [
        (Fault::ContextLength, FailureClass::ContextLength),
        (Fault::ContentFilter, FailureClass::ContentFilter),
    ] {
        fake.push_fault(fault.clone());
        let (items, _) = drain(&provider, call("meta/llama", &request)).await;
        assert_eq!(items.len(), 1, "{fault:?}");
        assert_eq!(items[0].as_ref().unwrap_err().class, class, "{fault:?}");
    }
    fake.push_fault(Fault::status(503));
    let err = provider
        .stream(call("meta/llama", &request))
        .await
        .err()
        .unwrap();
    assert_eq!(err.class, FailureClass::Upstream5xx);
}
