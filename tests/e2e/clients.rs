//! What SDKs and browsers need beyond chat completions: `GET /v1/models/{id}` (the SDKs'
//! `models.retrieve`), and CORS for the origins `gateway.cors_allowed_origins` lists.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Stack, chat_body};

const ORIGIN: &str = "https://app.example.com";
const CORS_ORIGINS: &str = "SWITCHYARD__GATEWAY__CORS_ALLOWED_ORIGINS";

async fn get(stack: &Stack, path: &str) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{}{path}", stack.base))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_model_is_retrieved_by_its_id() {
    let stack = Stack::start(0, &[]).await;
    let list = stack.get_json("/v1/models").await;
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "fake")
        .unwrap()
        .clone();
    let (status, model) = get(&stack, "/v1/models/fake").await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(model, listed, "the same object as in the list");
    assert_eq!(model["object"], "model");

    // A direct `provider/model` address has slashes; SDKs send them raw or percent-encoded.
    for path in [
        "/v1/models/fake/org/some-model",
        "/v1/models/fake%2Forg%2Fsome-model",
    ] {
        let (status, model) = get(&stack, path).await;
        assert_eq!(status, 200, "{path}: {model}");
        assert_eq!(model["id"], "fake/org/some-model", "{path}");
        assert_eq!(model["object"], "model");
        assert_eq!(model["owned_by"], "fake");
        assert_eq!(model["capability"], "chat");
    }
    stack.stop().await;
}

#[tokio::test]
async fn an_unknown_model_is_a_404_in_the_openai_shape() {
    let stack = Stack::start(0, &[]).await;
    for path in [
        "/v1/models/no-such-route",
        "/v1/models/nobody/some-model",
        "/v1/models/fake/",
    ] {
        let (status, body) = get(&stack, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        let error = &body["error"];
        assert_eq!(error["type"], "invalid_request_error", "{path}");
        assert_eq!(error["code"], "model_not_found", "{path}");
        assert_eq!(error["param"], "model", "{path}");
        assert!(error["message"].is_string(), "{path}");
    }
    stack.stop().await;
}

/// A browser's preflight for a chat completion from `origin`.
async fn preflight(stack: &Stack, origin: &str) -> reqwest::Response {
    stack
        .http
        .request(
            Method::OPTIONS,
            format!("{}/v1/chat/completions", stack.base),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-switchyard-priority,x-stainless-os",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn listed_origins_pass_preflight_and_read_answers_and_headers() {
    let stack = Stack::start(1, &[(CORS_ORIGINS, ORIGIN)]).await;
    let response = preflight(&stack, ORIGIN).await;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(ORIGIN)
    );
    let methods = header(&response, "access-control-allow-methods").unwrap();
    for method in ["GET", "POST", "PUT", "DELETE"] {
        assert!(methods.contains(method), "{method} not in {methods}");
    }
    let allowed = header(&response, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in ["authorization", "content-type", "x-switchyard-priority"] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }

    // The answer itself: readable, and so are Switchyard's headers.
    let answer = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .header("origin", ORIGIN)
        .json(&chat_body("fake", "from a browser"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(header(&answer, "access-control-allow-origin"), Some(ORIGIN));
    let exposed = header(&answer, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "x-switchyard-task-id",
        "x-switchyard-provider",
        "x-switchyard-model",
        "x-switchyard-attempts",
        "x-switchyard-fallback-depth",
        "x-switchyard-overhead-ms",
        "x-switchyard-writer",
        "retry-after",
        "etag",
    ] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }

    // Errors are readable too, so a page can show why a call failed.
    let error = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .header("origin", ORIGIN)
        .json(&json!({"model": "no-such-route", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error.status(), 404);
    assert_eq!(header(&error, "access-control-allow-origin"), Some(ORIGIN));
    stack.stop().await;
}

#[tokio::test]
async fn other_origins_get_no_cors_headers() {
    let stack = Stack::start(0, &[(CORS_ORIGINS, ORIGIN)]).await;
    let response = preflight(&stack, "https://elsewhere.example.com").await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    stack.stop().await;

    // By default no origin is allowed: the gateway does not authenticate yet.
    let stack = Stack::start(0, &[]).await;
    let response = preflight(&stack, ORIGIN).await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    let models = stack
        .http
        .get(format!("{}/v1/models", stack.base))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    assert_eq!(header(&models, "access-control-allow-origin"), None);
    stack.stop().await;
}
