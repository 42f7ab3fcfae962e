//! Built-in tools end to end: the tools service found through `$SRV` discovery and called
//! over NATS, the worker's tool loop with the fake provider scripted to ask for tools
//! (several rounds, parallel calls, a failing tool, a tool nobody serves, the iteration
//! bound), permissions (a chat request naming a tool it may not use, a step calling a tool
//! its agent may not use), and the offline `simulated` provider running the loop through a
//! workflow step.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    Nats, Stack, content, eventually, requests_with, task_id, tool_messages, wait_for_tools,
};
use crate::workflows::{AGENTS_ROUTE, run_one_step, run_task, step};

/// Chat requests may use the calculator.
const CHAT_CALCULATOR: &str = "\n[tools]\nchat_allowed = [\"calculator\"]\n";

/// A chat request to the fake provider that offers the calculator (and `extra` tools).
fn calculator_chat(text: &str, extra: &[Value]) -> Value {
    let mut tools = extra.to_vec();
    tools.push(json!({"type": "builtin", "name": "calculator"}));
    json!({"model": "fake", "messages": [{"role": "user", "content": text}], "tools": tools})
}

fn expression(e: &str) -> String {
    json!({"expression": e}).to_string()
}

/// The calculator endpoint's counts in the tools service's `$SRV.STATS`.
async fn calculator_stats(client: &async_nats::Client) -> Value {
    let stats = client
        .request("$SRV.STATS.switchyard-tools", "".into())
        .await
        .unwrap();
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "calculator")
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn the_tools_service_is_discovered_and_answers_over_nats() {
    let nats = Nats::start();
    let client = shared::nats::connect(&nats.url, "test").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let config = std::sync::Arc::new(
        shared::config::Config::load(
            shared::config::Source::Toml(&crate::harness::config_toml(
                &nats.url,
                "http://127.0.0.1:9",
            )),
            &crate::harness::stack_env(&[]),
        )
        .unwrap(),
    );
    let served = tokio::spawn(tools::serve(client.clone(), config, stop.clone()));
    wait_for_tools(&client).await;

    let info = client
        .request("$SRV.INFO.switchyard-tools", "".into())
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    assert_eq!(info["name"], "switchyard-tools");
    let endpoints = info["endpoints"].as_array().unwrap();
    let calculator = endpoints
        .iter()
        .find(|e| e["name"] == "calculator")
        .unwrap();
    assert_eq!(calculator["subject"], "tools.calculator");
    assert_eq!(calculator["queue_group"], "tools");
    assert!(
        calculator["metadata"]["description"]
            .as_str()
            .unwrap()
            .contains("arithmetic")
    );

    // The protocol: arguments in, the result out; an error is headers with its class.
    let answer = client
        .request("tools.calculator", expression("(2 + 3) * 4").into())
        .await
        .unwrap();
    assert!(answer.headers.is_none());
    let result: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(result, json!({"expression": "(2 + 3) * 4", "result": 20}));
    let failed = client
        .request("tools.calculator", expression("2 +").into())
        .await
        .unwrap();
    let headers = failed.headers.unwrap();
    assert_eq!(
        headers.get("Switchyard-Tool-Error").unwrap().as_str(),
        "invalid_arguments"
    );
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    assert!(
        headers
            .get("Nats-Service-Error")
            .unwrap()
            .as_str()
            .contains("ends too early")
    );

    // Counted once each answer is sent (just after it leaves, so read until it shows).
    let calculator = eventually(Duration::from_secs(10), || async {
        let calculator = calculator_stats(&client).await;
        (calculator["num_requests"] == 2).then_some(calculator)
    })
    .await;
    assert_eq!(calculator["num_errors"], 1);

    stop.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_loop_runs_rounds_of_parallel_calls_until_the_answer() {
    let mut stack = Stack::start_with(1, &[], CHAT_CALCULATOR).await;
    stack.start_tools().await;
    let marker = "LOOP-ROUNDS";
    stack.provider.push_tool_calls(
        marker,
        &[
            ("calculator", &expression("6 * 7")),
            ("calculator", &expression("2 ^ 10")),
        ],
    );
    stack
        .provider
        .push_tool_calls(marker, &[("calculator", &expression("42 + 1024"))]);
    stack.provider.push_reply(marker, "The total is 1066.");
    let client_tool = json!({"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}});
    let response = stack
        .chat(calculator_chat(
            &format!("{marker}: add them up"),
            std::slice::from_ref(&client_tool),
        ))
        .await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(content(&answer), "The total is 1066.");
    // Three model answers of 12 tokens each.
    assert_eq!(answer["usage"]["total_tokens"], 36);

    let requests: Vec<Value> = stack.provider.bodies();
    assert_eq!(requests.len(), 3);
    // The built-in entry became the calculator's schema; the client's own tool is untouched.
    let offered = requests[0]["tools"].as_array().unwrap();
    assert_eq!(offered[0], client_tool);
    assert_eq!(offered[1]["function"]["name"], "calculator");
    assert_eq!(
        offered[1]["function"]["parameters"]["required"],
        json!(["expression"])
    );
    // Each round carries the assistant's calls and one tool message per call.
    let first_results = tool_messages(&requests[1]);
    assert_eq!(first_results.len(), 2);
    assert_eq!(first_results[0]["result"], 42);
    assert_eq!(first_results[1]["result"], 1024);
    let messages = requests[1]["messages"].as_array().unwrap();
    assert_eq!(messages[1]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(messages[2]["tool_call_id"], "call_fake_0");
    assert_eq!(messages[3]["tool_call_id"], "call_fake_1");
    assert_eq!(tool_messages(&requests[2])[2]["result"], 1066);

    let stored = stack.stored(&id).await;
    let calls = stored["tool_calls"].as_array().unwrap();
    let summary: Vec<(u64, &str, &str)> = calls
        .iter()
        .map(|c| {
            (
                c["round"].as_u64().unwrap(),
                c["name"].as_str().unwrap(),
                c["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "calculator", "ok"),
            (1, "calculator", "ok"),
            (2, "calculator", "ok")
        ]
    );
    assert_eq!(calls[0]["arguments"], expression("6 * 7"));
    assert!(
        calls
            .iter()
            .all(|c| c["result_bytes"].as_u64().unwrap() > 0)
    );
    assert!(calls.iter().all(|c| c.get("duration_ms").is_some()));
    stack.stop().await;
}

/// A stack whose chat requests may use the calculator, with the fake provider scripted to
/// ask it for `expression` and then answer `reply`, for requests carrying `marker`.
async fn calculator_round(marker: &str, expression_text: &str, reply: &str) -> Stack {
    let mut stack = Stack::start_with(1, &[], CHAT_CALCULATOR).await;
    stack.start_tools().await;
    stack
        .provider
        .push_tool_calls(marker, &[("calculator", &expression(expression_text))]);
    stack.provider.push_reply(marker, reply);
    stack
}

#[tokio::test]
async fn a_failing_tool_is_a_tool_message_the_model_answers_after() {
    let marker = "LOOP-FAILS";
    let stack = calculator_round(marker, "1 / 0", "Division by zero has no answer.").await;
    let response = stack.chat(calculator_chat(marker, &[])).await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(content(&answer), "Division by zero has no answer.");
    let requests = stack.provider.requests();
    let error = &tool_messages(&requests[1].body)[0]["error"];
    assert_eq!(error["class"], "invalid_arguments");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("division by zero")
    );
    let stored = stack.stored(&id).await;
    assert_eq!(stored["status"], "completed");
    assert_eq!(stored["tool_calls"][0]["outcome"], "error");
    assert_eq!(stored["tool_calls"][0]["class"], "invalid_arguments");
    stack.stop().await;
}

#[tokio::test]
async fn a_tool_nobody_serves_is_reported_unavailable_not_a_failed_task() {
    // No tools process: the call finds no responders.
    let stack = Stack::start_with(1, &[], CHAT_CALCULATOR).await;
    let marker = "LOOP-NOBODY";
    stack
        .provider
        .push_tool_calls(marker, &[("calculator", &expression("1 + 1"))]);
    stack.provider.push_reply(marker, "The calculator is down.");
    let response = stack.chat(calculator_chat(marker, &[])).await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let requests = stack.provider.requests();
    assert_eq!(
        tool_messages(&requests[1].body)[0]["error"]["class"],
        "unavailable"
    );
    let stored = stack.stored(&id).await;
    assert_eq!(stored["tool_calls"][0]["class"], "unavailable");
    stack.stop().await;
}

#[tokio::test]
async fn the_iteration_bound_stops_a_model_that_keeps_calling_tools() {
    let mut stack = Stack::start_with(
        1,
        &[("SWITCHYARD__TOOLS__MAX_ITERATIONS", "2")],
        CHAT_CALCULATOR,
    )
    .await;
    stack.start_tools().await;
    let marker = "LOOP-FOREVER";
    stack
        .provider
        .set_tool_calls(marker, &[("calculator", &expression("1 + 1"))]);
    let response = stack.chat(calculator_chat(marker, &[])).await;
    assert_eq!(response.status(), 422);
    let id = task_id(&response);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "tool_limit");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_iterations"),
        "{error}"
    );
    let stored = stack.stored(&id).await;
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["error"]["class"], "tool_limit");
    assert_eq!(stored["tool_calls"].as_array().unwrap().len(), 2);
    // Two rounds served, the third answer refused; not dead-lettered (it would loop again).
    assert_eq!(stack.provider.calls(), 3);
    stack.stop().await;
}

#[tokio::test]
async fn built_in_tools_are_denied_by_default() {
    // Chat: no `[tools] chat_allowed`, so naming the calculator is refused before queueing.
    let stack = Stack::start(1, &[]).await;
    let response = stack.chat(calculator_chat("hello", &[])).await;
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "tool_not_allowed");
    assert_eq!(error["error"]["param"], "tools[0].name");
    assert_eq!(stack.provider.calls(), 0);
    // A client's own function of any name passes through untouched, as before.
    let own = json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]});
    assert_eq!(stack.chat(own).await.status(), 200);
    stack.stop().await;
}

/// The shipped agents on the fake provider, plus an agent that may use no tool.
const FAKE_AGENTS_AND_A_COUNTER: &str = r#"
[routes.agents]
provider = "fake"
model = "fake-model"

[agents.counter]
role = "Counter"
capabilities = ["counting"]
route = "agents"
system_prompt = "You are the Counter."
"#;

#[tokio::test]
async fn a_step_calling_a_tool_its_agent_may_not_use_is_refused_and_recorded() {
    let mut stack = Stack::start_with(1, &[], FAKE_AGENTS_AND_A_COUNTER).await;
    stack.start_tools().await;
    let marker = "Your step (count)";
    stack
        .provider
        .push_tool_calls(marker, &[("calculator", &expression("2 + 2"))]);
    stack.provider.push_reply(marker, "Four, counted by hand.");
    let task = run_one_step(
        &stack,
        "Count to four",
        "counter",
        ("count", "counting", "Count"),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let count = step(&task, "count");
    assert_eq!(count["agent"], "counter");
    assert_eq!(count["output"], "Four, counted by hand.");
    let call = &count["tool_calls"][0];
    assert_eq!(call["name"], "calculator");
    assert_eq!(call["outcome"], "error");
    assert_eq!(call["class"], "denied");
    // The counter's step request offered no tool; the refusal reached the model.
    let requests: Vec<Value> = requests_with(&stack, marker);
    assert!(requests[0].get("tools").is_none());
    assert_eq!(tool_messages(&requests[1])[0]["error"]["class"], "denied");
    stack.stop().await;
}

#[tokio::test]
async fn offline_the_analyst_uses_the_calculator_in_a_workflow_step() {
    let mut stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    stack.start_tools().await;
    let task = run_task(
        &stack,
        json!({"goal": "What is 12 * (3 + 4)?", "team": "research", "steps": [
            {"id": "figure", "capability": "analysis", "instruction": "Work out the figure"}]}),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let figure = step(&task, "figure");
    assert_eq!(figure["agent"], "analyst");
    let calls = figure["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{figure:#}");
    assert_eq!(calls[0]["name"], "calculator");
    assert_eq!(calls[0]["outcome"], "ok");
    assert_eq!(calls[0]["arguments"], expression("12 * (3 + 4)"));
    let output = figure["output"].as_str().unwrap();
    assert!(
        output.contains("The calculator says 12 * (3 + 4) = 84."),
        "{output}"
    );
    // The step's usage covers both model calls.
    assert!(figure["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // The step's own result records the same call.
    let result = stack.stored(figure["task_id"].as_str().unwrap()).await;
    assert_eq!(result["tool_calls"][0]["name"], "calculator");
    stack.stop().await;
}

/// A quota is shared by every worker: two workers running eight calls against a quota of
/// five let exactly five through, and the rest are told it is used up and when it resets.
#[tokio::test]
async fn a_quota_shared_by_two_workers_lets_no_more_calls_through_than_it_allows() {
    // A week-long window (the longest), so the test does not straddle a reset.
    let quota = format!(
        "{CHAT_CALCULATOR}\n[tools.quotas.calculator]\nwindow_secs = {}\ncalls = 5\n",
        shared::config::MAX_QUOTA_WINDOW_SECS
    );
    let mut stack = Stack::start_with(2, &[("SWITCHYARD__WORKER__CONCURRENCY", "2")], &quota).await;
    stack.start_tools().await;
    // Slow answers keep both workers busy, so both take calls from the quota.
    stack.provider.set_latency(Duration::from_millis(300));
    let markers: Vec<String> = (0..8).map(|i| format!("QUOTA-{i}")).collect();
    for (i, marker) in markers.iter().enumerate() {
        stack
            .provider
            .push_tool_calls(marker, &[("calculator", &expression(&format!("{i} + 1")))]);
        stack.provider.push_reply(marker, "Done.");
    }
    let responses = futures::future::join_all(
        markers
            .iter()
            .map(|m| stack.chat(calculator_chat(&format!("{m}: add"), &[]))),
    )
    .await;
    let mut outcomes = Vec::new();
    let mut workers = std::collections::BTreeSet::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        let stored = stack.stored(task_id(&response)).await;
        workers.insert(stored["worker"].as_str().unwrap().to_owned());
        let call = stored["tool_calls"][0].clone();
        outcomes.push(call);
    }
    assert_eq!(workers.len(), 2, "both workers ran calls: {workers:?}");
    let ok = outcomes.iter().filter(|c| c["outcome"] == "ok").count();
    assert_eq!(ok, 5, "{outcomes:#?}");
    for refused in outcomes.iter().filter(|c| c["outcome"] != "ok") {
        assert_eq!(refused["class"], "quota_exceeded", "{refused:#}");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("5 calculator calls per 604800 s for all callers together")
                && message.contains("resets at"),
            "{message}"
        );
    }
    // The tools service saw only the calls the quota let through.
    let calculator = calculator_stats(&stack.client).await;
    assert_eq!(calculator["num_requests"], 5);
    stack.stop().await;
}

/// Two agents on the fake provider that may ask each other.
const ASKING_AGENTS: &str = r#"
[routes.agents]
provider = "fake"
model = "fake-model"

[agents.asker]
role = "Asker"
capabilities = ["asking"]
route = "agents"
system_prompt = "You are the Asker."
tools = ["ask_agent"]

[agents.expert]
role = "Expert"
capabilities = ["expertise"]
route = "agents"
system_prompt = "You are the Expert."
tools = ["ask_agent"]
"#;

fn ask(agent: &str, question: &str) -> String {
    json!({"agent": agent, "question": question}).to_string()
}

/// Runs a one-step workflow whose `ask` step the asker does; returns the task.
async fn asking_workflow(stack: &Stack) -> Value {
    run_one_step(
        stack,
        "Find out",
        "asker",
        ("ask", "asking", "Ask the expert"),
    )
    .await
}

#[tokio::test]
async fn an_agent_asks_another_and_the_answer_comes_back_over_the_task_path() {
    let mut stack = Stack::start_with(1, &[], ASKING_AGENTS).await;
    stack.start_tools().await;
    let step_marker = "Your step (ask)";
    stack.provider.push_tool_calls(
        step_marker,
        &[(
            "ask_agent",
            &ask("expert", "ASK-EXPERT: when does water boil?"),
        )],
    );
    stack
        .provider
        .push_reply("ASK-EXPERT", "At 100 °C at sea level.");
    stack
        .provider
        .push_reply(step_marker, "The expert says 100 °C.");
    let task = asking_workflow(&stack).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let asked = step(&task, "ask");
    assert_eq!(asked["agent"], "asker");
    assert_eq!(asked["output"], "The expert says 100 °C.");
    let call = &asked["tool_calls"][0];
    assert_eq!(call["name"], "ask_agent");
    assert_eq!(call["outcome"], "ok", "{call:#}");

    // The expert's answer reached the asker as the tool result.
    let requests: Vec<Value> = stack.provider.bodies();
    let expert = requests
        .iter()
        .find(|r| r["messages"][0]["content"] == "You are the Expert.")
        .unwrap();
    assert!(
        expert["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("Agent `asker` asks you")
    );
    let second = requests
        .iter()
        .filter(|r| r.to_string().contains(step_marker))
        .nth(1)
        .unwrap();
    let result = &tool_messages(second)[0];
    assert_eq!(result["agent"], "expert");
    assert_eq!(result["answer"], "At 100 °C at sea level.");
    // It was a task of its own, on the expert's queue, stored like any result.
    let question = stack.stored(result["task_id"].as_str().unwrap()).await;
    assert_eq!(question["status"], "completed");
    assert_eq!(
        question["response"]["choices"][0]["message"]["content"],
        "At 100 °C at sea level."
    );
    stack.stop().await;
}

#[tokio::test]
async fn an_ask_that_would_close_a_cycle_is_refused_and_the_asked_agent_answers_anyway() {
    let mut stack = Stack::start_with(1, &[], ASKING_AGENTS).await;
    stack.start_tools().await;
    let step_marker = "Your step (ask)";
    stack.provider.push_tool_calls(
        step_marker,
        &[("ask_agent", &ask("expert", "CYCLE-Q: is this right?"))],
    );
    // The expert asks back.
    stack.provider.push_tool_calls(
        "CYCLE-Q",
        &[("ask_agent", &ask("asker", "BACK-Q: what do you think?"))],
    );
    stack
        .provider
        .push_reply("CYCLE-Q", "I could not ask back; yes, it is right.");
    stack.provider.push_reply(step_marker, "The expert agrees.");
    let task = asking_workflow(&stack).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let asked = step(&task, "ask");
    assert_eq!(asked["output"], "The expert agrees.");
    assert_eq!(asked["tool_calls"][0]["outcome"], "ok");
    // The expert's own ask was refused, naming the cycle; nothing asked the asker.
    let requests: Vec<Value> = stack.provider.bodies();
    assert!(!requests.iter().any(|r| {
        r["messages"][1]["content"]
            .as_str()
            .is_some_and(|c| c.contains("BACK-Q") && c.contains("# Question"))
    }));
    let second = requests
        .iter()
        .filter(|r| r.to_string().contains(step_marker))
        .nth(1)
        .unwrap();
    let question = stack
        .stored(tool_messages(second)[0]["task_id"].as_str().unwrap())
        .await;
    let refused = &question["tool_calls"][0];
    assert_eq!(refused["class"], "denied", "{question:#}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("cycle of asks: asker → expert → asker"),
        "{refused:#}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_streamed_answer_runs_the_loop_and_streams_only_the_final_answer() {
    let marker = "STREAMED-LOOP";
    let stack = calculator_round(marker, "6 * 7", "The calculator says the answer is 42.").await;
    let mut request = calculator_chat(&format!("{marker}: what is 6 * 7?"), &[]);
    request["stream"] = json!(true);
    let response = stack.chat(request).await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let body = response.text().await.unwrap();
    let chunks = crate::harness::done_chunks(&body);
    // The caller reads the final answer, streamed; the tool round stays inside.
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "The calculator says the answer is 42.");
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()),
        "{body}"
    );
    let finishes: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finishes, ["stop"], "{body}");
    // Both rounds were streamed from the provider; the call ran and was recorded.
    let requests = stack.provider.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.body["stream"] == true));
    assert_eq!(tool_messages(&requests[1].body)[0]["result"], 42);
    let stored = stack.stored(&id).await;
    assert_eq!(stored["tool_calls"][0]["outcome"], "ok");
    assert_eq!(
        stored["response"]["choices"][0]["message"]["content"],
        "The calculator says the answer is 42."
    );
    stack.stop().await;
}
