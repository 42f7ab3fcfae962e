//! What SDKs and browsers need beyond chat completions: `GET /v1/models/{id}` (the SDKs'
//! `models.retrieve`).

use serde_json::Value;

use crate::harness::Stack;

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
