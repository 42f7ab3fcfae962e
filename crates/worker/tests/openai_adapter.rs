//! The OpenAI-compatible adapter against the fake OpenAI server on loopback: answers,
//! streams, and the class of each injected fault.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

mod common;

use fake_provider::{FakeProvider, Fault, Format};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use shared::FailureClass;
use shared::config::Secret;
use switchyard_worker::provider::{Call, Provider};

async fn setup() -> (FakeProvider, Provider) {
    common::setup(Format::OpenAi, "openai").await
}

fn request() -> Map<String, Value> {
    json!({"messages": [{"role": "user", "content": "hi"}], "seed": 3})
        .as_object()
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn completes_and_sends_the_key() {
    let (fake, provider) = setup().await;
    let key = Secret::new("sk-test".to_owned());
    let request = request();
    let call = Call {
        model: "m1",
        request: &request,
        key: Some(&key),
    };
    let answer = provider.complete(call).await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "fake answer from m1 to: hi"
    );
    let seen = fake.requests();
    assert_eq!(seen[0].key.as_deref(), Some("sk-test"));
    assert_eq!(seen[0].body["seed"], 3);
}

#[tokio::test]
async fn streams_chunks_to_the_end() {
    let (_fake, provider) = setup().await;
    let request = request();
    let call = Call {
        model: "m1",
        request: &request,
        key: None,
    };
    let chunks: Vec<_> = provider.stream(call).await.unwrap().collect().await;
    assert!(chunks.iter().all(Result::is_ok));
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c.as_ref().unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "fake answer from m1 to: hi");
}

#[tokio::test]
async fn faults_get_their_class() {
    let (fake, provider) = setup().await;
    let request = request();
    let call = Call {
        model: "m1",
        request: &request,
        key: None,
    };
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
    for (fault, class) in cases {
        fake.push_fault(fault.clone());
        let err = provider.complete(call).await.unwrap_err();
        assert_eq!(err.class, class, "{fault:?}");
    }
    fake.push_fault(Fault::status_with(429, "retry-after", "2"));
    let err = provider.complete(call).await.unwrap_err();
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn broken_streams_get_their_class() {
    let (fake, provider) = setup().await;
    let request = request();
    let call = Call {
        model: "m1",
        request: &request,
        key: None,
    };
    for (fault, class) in [
        (Fault::CutStream, FailureClass::Network),
        (Fault::Malformed, FailureClass::InvalidResponse),
    ] {
        fake.push_fault(fault.clone());
        let items: Vec<_> = provider.stream(call).await.unwrap().collect().await;
        let err = items.into_iter().find_map(Result::err).unwrap();
        assert_eq!(err.class, class, "{fault:?}");
    }
}

/// The text of the fake's answer to one user message `text`, asked whole or streamed.
async fn answer(provider: &Provider, text: &str, stream: bool) -> String {
    let request = json!({"messages": [{"role": "user", "content": text}]})
        .as_object()
        .cloned()
        .unwrap();
    let call = Call {
        model: "m1",
        request: &request,
        key: None,
    };
    if !stream {
        let answer = provider.complete(call).await.unwrap();
        return answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    common::stream_all(provider, call)
        .await
        .into_iter()
        .filter_map(|c| {
            c.unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn scripted_replies_answer_the_requests_that_carry_their_marker() {
    let (fake, provider) = setup().await;
    fake.push_reply("(plan)", "first plan");
    fake.push_reply("(plan)", "second plan");
    fake.set_reply("(review)", "APPROVE");
    assert_eq!(
        answer(&provider, "write a (plan)", false).await,
        "first plan"
    );
    assert_eq!(answer(&provider, "(review) it", true).await, "APPROVE");
    assert_eq!(answer(&provider, "(plan) again", true).await, "second plan");
    // One-shot replies are used up; the usual echo comes back. Standing ones stay.
    assert_eq!(
        answer(&provider, "a third (plan)", false).await,
        "fake answer from m1 to: a third (plan)"
    );
    assert_eq!(answer(&provider, "(review) again", false).await, "APPROVE");
    fake.set_reply("(review)", "REVISE");
    assert_eq!(
        answer(&provider, "(review) once more", false).await,
        "REVISE"
    );
}
