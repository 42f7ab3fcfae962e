//! The client's own tools pass through the gateway untouched, whatever the provider's wire
//! format: for an OpenAI-, Anthropic- and Gemini-format provider (each a fake on loopback)
//! a request offering two functions comes back asking for both in one answer (parallel
//! tool calls), in the OpenAI shape, whole and as streamed deltas that reassemble to the
//! same calls; the tool results go back and the model answers from them; `tool_choice`
//! and `parallel_tool_calls` reach the provider in its own terms.

use fake_provider::{FakeProvider, Format};
use serde_json::{Value, json};

use crate::harness::{Stack, content, done_chunks};

/// The two functions every request offers.
fn functions() -> Value {
    json!([
        {"type": "function", "function": {"name": "weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "clock", "description": "Time now",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}},
    ])
}

/// A stack whose routes `openai`, `anthropic` and `gemini` each go to a fake of that
/// format; the OpenAI one is the stack's own fake, scripted to call both tools.
async fn stack() -> (Stack, FakeProvider, FakeProvider) {
    let anthropic = FakeProvider::start(Format::Anthropic).await.unwrap();
    let gemini = FakeProvider::start(Format::Gemini).await.unwrap();
    let extra = format!(
        r#"
[providers.anthropic]
kind = "anthropic"
base_url = "{}"
api_key_env = "FAKE_PROVIDER_KEY"

[providers.gemini]
kind = "gemini"
base_url = "{}"
api_key_env = "FAKE_PROVIDER_KEY"

[routes.openai]
provider = "fake"
model = "gpt-x"

[routes.anthropic]
provider = "anthropic"
model = "claude-x"

[routes.gemini]
provider = "gemini"
model = "gemini-x"
"#,
        anthropic.base_url(),
        gemini.base_url()
    );
    let stack = Stack::start_with(1, &[], &extra).await;
    // The OpenAI fake answers only what it is told: both tools, in one answer.
    stack.provider.set_tool_calls(
        "use every tool",
        &[
            ("weather", r#"{"city": "Lisbon"}"#),
            ("clock", r#"{"zone": "UTC"}"#),
        ],
    );
    (stack, anthropic, gemini)
}

fn request(route: &str, stream: bool) -> Value {
    json!({
        "model": route,
        "messages": [{"role": "user", "content": "Please use every tool."}],
        "tools": functions(),
        "stream": stream,
    })
}

/// Each call's (id, name, arguments), from a whole answer's message.
fn calls_of(message: &Value) -> Vec<(String, String, Value)> {
    message["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "function", "{c}");
            (
                c["id"].as_str().unwrap().to_owned(),
                c["function"]["name"].as_str().unwrap().to_owned(),
                serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Each call's (id, name, arguments) put back together from streamed deltas, by index, and
/// the finish reason.
fn reassembled(body: &str) -> (Vec<(String, String, Value)>, String) {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = String::new();
    for chunk in done_chunks(body) {
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.to_owned();
        }
        for delta in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = usize::try_from(delta["index"].as_u64().unwrap()).unwrap();
            if calls.len() <= index {
                calls.resize(index + 1, Default::default());
            }
            let call = &mut calls[index];
            if let Some(id) = delta["id"].as_str() {
                call.0 = id.to_owned();
            }
            if let Some(name) = delta["function"]["name"].as_str() {
                call.1.push_str(name);
            }
            if let Some(arguments) = delta["function"]["arguments"].as_str() {
                call.2.push_str(arguments);
            }
        }
    }
    let calls = calls
        .into_iter()
        .map(|(id, name, arguments)| (id, name, serde_json::from_str(&arguments).unwrap()))
        .collect();
    (calls, finish)
}

#[tokio::test]
async fn parallel_client_tool_calls_come_back_whole_and_streamed_in_every_format() {
    let (stack, _anthropic, _gemini) = stack().await;
    for route in ["openai", "anthropic", "gemini"] {
        let response = stack.chat(request(route, false)).await;
        assert_eq!(response.status(), 200, "{route}");
        let answer: Value = response.json().await.unwrap();
        let choice = &answer["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{route}: {answer:#}");
        let whole = calls_of(&choice["message"]);
        let names: Vec<&str> = whole.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(names, ["weather", "clock"], "{route}: {answer:#}");
        let mut ids: Vec<&str> = whole.iter().map(|c| c.0.as_str()).collect();
        ids.dedup();
        assert_eq!(
            ids.len(),
            2,
            "{route}: each call has its own id: {answer:#}"
        );

        let response = stack.chat(request(route, true)).await;
        assert_eq!(response.status(), 200, "{route}");
        let body = response.text().await.unwrap();
        let (streamed, finish) = reassembled(&body);
        assert_eq!(finish, "tool_calls", "{route}: {body}");
        let streamed_calls: Vec<(&str, &Value)> =
            streamed.iter().map(|c| (c.1.as_str(), &c.2)).collect();
        let whole_calls: Vec<(&str, &Value)> = whole.iter().map(|c| (c.1.as_str(), &c.2)).collect();
        assert_eq!(streamed_calls, whole_calls, "{route}: {body}");
        assert!(streamed.iter().all(|c| !c.0.is_empty()), "{route}: {body}");

        // The results go back in OpenAI terms and the model answers from them.
        let mut messages = vec![
            json!({"role": "user", "content": "Please use every tool."}),
            choice["message"].clone(),
        ];
        for (id, name, _) in &whole {
            messages.push(json!({"role": "tool", "tool_call_id": id,
                "content": format!("RESULT-OF-{name}")}));
        }
        if route == "openai" {
            // The OpenAI fake is told what to answer to the results.
            stack
                .provider
                .push_reply("RESULT-OF-weather", "Sunny in Lisbon, noon UTC.");
        }
        let response = stack
            .chat(json!({"model": route, "messages": messages, "tools": functions()}))
            .await;
        assert_eq!(response.status(), 200, "{route}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["choices"][0]["finish_reason"], "stop",
            "{route}: {answer:#}"
        );
        if route != "openai" {
            // The Anthropic and Gemini fakes echo the last user turn: here, the results.
            let text = content(&answer);
            assert!(
                text.contains("RESULT-OF-weather") && text.contains("RESULT-OF-clock"),
                "{route}: {text}"
            );
        }
    }
    // The OpenAI-format provider got the tools and results exactly as sent.
    let sent = stack.provider.requests();
    let last = &sent.last().unwrap().body;
    assert_eq!(last["tools"], functions());
    assert_eq!(last["messages"][2]["role"], "tool");
    stack.stop().await;
}

#[tokio::test]
async fn tool_choice_and_parallel_tool_calls_reach_each_provider_in_its_terms() {
    let (stack, anthropic, gemini) = stack().await;
    for route in ["openai", "anthropic", "gemini"] {
        let mut body = request(route, false);
        body["tool_choice"] = json!({"type": "function", "function": {"name": "clock"}});
        body["parallel_tool_calls"] = json!(false);
        let response = stack.chat(body).await;
        assert_eq!(response.status(), 200, "{route}");
    }
    let openai = stack.provider.requests();
    let sent = &openai.last().unwrap().body;
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "clock"}})
    );
    assert_eq!(sent["parallel_tool_calls"], false);
    assert_eq!(
        anthropic.requests().last().unwrap().body["tool_choice"],
        json!({"type": "tool", "name": "clock", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        gemini.requests().last().unwrap().body["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY", "allowedFunctionNames": ["clock"]})
    );
    // Forced to one tool, the Anthropic-format answer calls only it.
    let response = stack
        .chat({
            let mut body = request("anthropic", false);
            body["tool_choice"] = json!({"type": "function", "function": {"name": "clock"}});
            body
        })
        .await;
    let answer: Value = response.json().await.unwrap();
    let names: Vec<String> = calls_of(&answer["choices"][0]["message"])
        .into_iter()
        .map(|c| c.1)
        .collect();
    assert_eq!(names, ["clock"]);
    stack.stop().await;
}
