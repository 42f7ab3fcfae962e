//! MCP end to end, against a real MCP server process (`switchyard-fake-mcp`, built with the
//! official SDK): the tools service connects it over stdio (and an in-process one over
//! streamable HTTP, with a bearer key), serves its tools on
//! `tools.mcp.<server>.<tool>` and lists them in the `mcp_tools` catalogue, starts it again
//! when it dies; the worker's tool loop offers and calls a permitted MCP tool (chat and an
//! agent's step), refuses one not permitted, and feeds an MCP error back with its class; and
//! an MCP client (rmcp, in the test) uses Switchyard's built-in tools through `switchyard mcp`
//! and the gateway's `/mcp`.

use std::path::PathBuf;
use std::process::Command as StdCommand;
use std::sync::OnceLock;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};

use crate::harness::{Stack, content, eventually, requests_with, task_id, tool_messages};
use crate::workflows::{run_one_step, step};

/// The fake MCP server's executable: built by `cargo test --workspace` (the fake-provider's
/// own test needs it); built here when a narrower command did not build it.
fn fake_mcp_binary() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // target/<profile>/deps/e2e-… → target/<profile>/switchyard-fake-mcp
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let path = dir.join("switchyard-fake-mcp");
        if !path.exists() {
            let mut build = StdCommand::new(env!("CARGO"));
            build.args([
                "build",
                "-p",
                "switchyard-fake-provider",
                "--bin",
                "switchyard-fake-mcp",
            ]);
            if dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build.status().unwrap();
            assert!(status.success(), "building switchyard-fake-mcp failed");
        }
        path
    })
}

/// `[mcp.fake]`: the fake MCP server over stdio, given one variable of the test's own.
fn fake_server_toml() -> String {
    format!(
        "\n[mcp.fake]\ncommand = {:?}\nenv = {{ GREETING = \"${{MCP_TEST_GREETING}}\", MODE = \"plain\" }}\n",
        fake_mcp_binary().display().to_string()
    )
}

/// The stack's environment: the variable `[mcp.fake]` names.
const GREETING: (&str, &str) = ("MCP_TEST_GREETING", "hello from the test");

/// Waits until the catalogue lists `name` and returns its entry.
async fn catalogued(stack: &Stack, name: &str) -> Value {
    let js = async_nats::jetstream::new(stack.client.clone());
    eventually(Duration::from_secs(30), || async {
        let bucket = js.get_key_value(shared::mcp::MCP_TOOLS_BUCKET).await.ok()?;
        let entry = bucket.get(name).await.ok()??;
        serde_json::from_slice::<Value>(&entry).ok()
    })
    .await
}

/// A tool call over NATS, as the worker makes it: the result, or the error's class.
async fn call(stack: &Stack, name: &str, arguments: Value) -> Result<Value, String> {
    shared::tool_call::call(
        &stack.client,
        name,
        arguments.to_string().as_bytes(),
        Duration::from_secs(10),
        None,
    )
    .await
    .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    .map_err(|e| e.class.as_str().to_owned())
}

#[tokio::test]
async fn a_stdio_mcp_server_s_tools_are_served_catalogued_relisted_and_restarted() {
    let mut stack = Stack::start_with(0, &[GREETING], &fake_server_toml()).await;
    stack.start_tools().await;

    let echo = catalogued(&stack, "mcp.fake.echo").await;
    assert_eq!(echo["function"], "mcp__fake__echo");
    assert_eq!(echo["mcp_name"], "echo");
    assert_eq!(echo["description"], "Echoes the text back.");
    assert_eq!(echo["input_schema"]["properties"]["text"]["type"], "string");
    catalogued(&stack, "mcp.fake.add").await;

    // Each tool is an endpoint of the tools service.
    let info = stack
        .client
        .request("$SRV.INFO.switchyard-tools", "".into())
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    let endpoint = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "mcp__fake__echo")
        .cloned()
        .unwrap();
    assert_eq!(endpoint["subject"], "tools.mcp.fake.echo");
    assert_eq!(endpoint["metadata"]["mcp_tool"], "echo");

    // Calls reach the server's tools/call: text, structured content, an error result.
    assert_eq!(
        call(&stack, "mcp.fake.echo", json!({"text": "hi"})).await,
        Ok(json!({"text": "hi"}))
    );
    assert_eq!(
        call(&stack, "mcp.fake.add", json!({"a": 2, "b": 3.5})).await,
        Ok(json!({"sum": 5.5}))
    );
    assert_eq!(
        call(&stack, "mcp.fake.fail", json!({"message": "no such city"})).await,
        Err("upstream".to_owned())
    );
    assert_eq!(
        call(&stack, "mcp.fake.echo", json!(["not", "an", "object"])).await,
        Err("invalid_arguments".to_owned())
    );
    // The server gets its configured variables, and none of Switchyard's keys.
    let env = |name: &str| json!({"name": name});
    assert_eq!(
        call(&stack, "mcp.fake.env", env("GREETING")).await,
        Ok(json!({"text": "hello from the test"}))
    );
    assert_eq!(
        call(&stack, "mcp.fake.env", env("MODE")).await,
        Ok(json!({"text": "plain"}))
    );
    assert_eq!(
        call(&stack, "mcp.fake.env", env("FAKE_PROVIDER_KEY")).await,
        Ok(json!({"text": "unset"}))
    );

    // The server's tool list changes: the new tool is listed and served without a restart.
    assert_eq!(
        call(&stack, "mcp.fake.grow", json!({})).await,
        Ok(json!({"text": "grown"}))
    );
    let late = catalogued(&stack, "mcp.fake.late").await;
    assert_eq!(late["description"], "Listed only after `grow`.");
    assert_eq!(
        call(&stack, "mcp.fake.late", json!({})).await,
        Ok(json!({"text": "late but here"}))
    );
    assert_eq!(
        call(&stack, "mcp.fake.echo", json!({"text": "still"})).await,
        Ok(json!({"text": "still"}))
    );

    // The server dies: it is started again and serves as before.
    let crashed = call(&stack, "mcp.fake.crash", json!({})).await;
    assert!(crashed.is_err(), "{crashed:?}");
    eventually(Duration::from_secs(30), || async {
        call(&stack, "mcp.fake.echo", json!({"text": "back"}))
            .await
            .ok()
            .filter(|v| *v == json!({"text": "back"}))
    })
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn a_streamable_http_mcp_server_is_reached_with_its_bearer_key() {
    let server = fake_provider::mcp::FakeMcpHttp::start(Some("http-s3cret"))
        .await
        .unwrap();
    let extra = format!(
        "\n[mcp.web]\nurl = {:?}\nbearer_env = \"MCP_HTTP_KEY\"\n",
        server.url()
    );
    let mut stack = Stack::start_with(
        0,
        &[
            ("MCP_HTTP_KEY", "http-s3cret"),
            ("SWITCHYARD__TOOLS__CALL_TIMEOUT_MS", "1000"),
            // A sandboxed run must end before its call times out.
            ("SWITCHYARD__TOOLS__RUN_CODE__WALL_TIME_MS", "500"),
        ],
        &extra,
    )
    .await;
    stack.start_tools().await;
    let echo = catalogued(&stack, "mcp.web.echo").await;
    assert_eq!(echo["function"], "mcp__web__echo");
    assert_eq!(
        call(&stack, "mcp.web.echo", json!({"text": "over http"})).await,
        Ok(json!({"text": "over http"}))
    );
    assert_eq!(
        call(&stack, "mcp.web.add", json!({"a": 1, "b": 1})).await,
        Ok(json!({"sum": 2.0}))
    );
    assert_eq!(
        call(&stack, "mcp.web.fail", json!({"message": "down the line"})).await,
        Err("upstream".to_owned())
    );
    // Slower than `[tools] call_timeout_ms`: the tools process answers `timeout`.
    assert_eq!(
        call(&stack, "mcp.web.slow", json!({"ms": 5000})).await,
        Err("timeout".to_owned())
    );
    // The server goes away: calls fail as unavailable, not as a fault of the tool.
    drop(server);
    let gone = call(&stack, "mcp.web.echo", json!({"text": "anyone?"})).await;
    assert_eq!(gone, Err("unavailable".to_owned()));
    stack.stop().await;
}

#[tokio::test]
async fn a_chat_request_calls_a_permitted_mcp_tool_and_is_refused_another() {
    let extra = fake_server_toml()
        + "\n[tools]\nchat_allowed = [\"calculator\", \"mcp.fake.echo\", \"mcp.fake.fail\"]\n";
    let mut stack = Stack::start_with(0, &[GREETING], &extra).await;
    stack.start_tools().await;
    catalogued(&stack, "mcp.fake.fail").await;
    let echo = catalogued(&stack, "mcp.fake.echo").await;
    // A worker loads the catalogue before it takes a task.
    stack.start_worker().await;

    let marker = "MCP-CHAT";
    stack.provider.push_tool_calls(
        marker,
        &[
            ("mcp__fake__echo", &json!({"text": "ping"}).to_string()),
            (
                "mcp__fake__fail",
                &json!({"message": "the city is gone"}).to_string(),
            ),
            ("mcp__fake__add", &json!({"a": 1, "b": 2}).to_string()),
        ],
    );
    stack.provider.push_reply(marker, "Echoed ping.");
    let request = json!({"model": "fake", "messages": [{"role": "user", "content": marker}],
        "tools": [{"type": "builtin", "name": "mcp.fake.echo"}, {"type": "builtin", "name": "mcp.fake.fail"}]});
    let response = stack.chat(request).await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(content(&answer), "Echoed ping.");

    let requests: Vec<Value> = stack.provider.bodies();
    assert_eq!(requests.len(), 2);
    // Offered as functions with the server's schemas.
    let offered = requests[0]["tools"].as_array().unwrap();
    assert_eq!(offered[0]["function"]["name"], "mcp__fake__echo");
    assert_eq!(offered[0]["function"]["parameters"], echo["input_schema"]);
    assert_eq!(offered[1]["function"]["name"], "mcp__fake__fail");
    // Fed back: the result, the error result with its class, the refusal.
    let results = tool_messages(&requests[1]);
    assert_eq!(results[0], json!({"text": "ping"}));
    assert_eq!(results[1]["error"]["class"], "upstream");
    assert_eq!(results[1]["error"]["message"], "the city is gone");
    assert_eq!(results[2]["error"]["class"], "denied");

    let stored = stack.stored(&id).await;
    let calls: Vec<(&str, &str, Option<&str>)> = stored["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["outcome"].as_str().unwrap(),
                c["class"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("mcp.fake.echo", "ok", None),
            ("mcp.fake.fail", "error", Some("upstream")),
            ("mcp__fake__add", "error", Some("denied")),
        ]
    );

    // Not in chat_allowed: refused before queueing, like a built-in tool.
    let refused = json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "builtin", "name": "mcp.fake.add"}]});
    let response = stack.chat(refused).await;
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "tool_not_allowed");
    stack.stop().await;
}

#[tokio::test]
async fn an_agent_listing_an_mcp_tool_is_offered_it_and_its_step_calls_it() {
    let extra = fake_server_toml()
        + r#"
[routes.agents]
provider = "fake"
model = "fake-model"

[agents.adder]
role = "Adder"
capabilities = ["adding"]
route = "agents"
system_prompt = "You are the Adder."
tools = ["mcp.fake.add"]
"#;
    let mut stack = Stack::start_with(0, &[GREETING], &extra).await;
    stack.start_tools().await;
    catalogued(&stack, "mcp.fake.add").await;
    stack.start_worker().await;

    let marker = "Your step (add)";
    stack.provider.push_tool_calls(
        marker,
        &[("mcp__fake__add", &json!({"a": 40, "b": 2}).to_string())],
    );
    stack.provider.push_reply(marker, "The sum is 42.");
    let task = run_one_step(
        &stack,
        "Add forty and two",
        "adder",
        ("add", "adding", "Add them"),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let add = step(&task, "add");
    assert_eq!(add["agent"], "adder");
    assert_eq!(add["output"], "The sum is 42.");
    assert_eq!(add["tool_calls"][0]["name"], "mcp.fake.add");
    assert_eq!(add["tool_calls"][0]["outcome"], "ok");
    let requests: Vec<Value> = requests_with(&stack, marker);
    assert_eq!(
        requests[0]["tools"][0]["function"]["name"],
        "mcp__fake__add"
    );
    assert_eq!(tool_messages(&requests[1])[0], json!({"sum": 42.0}));
    stack.stop().await;
}

#[tokio::test]
async fn an_mcp_client_uses_the_built_in_tools_through_switchyard_mcp() {
    let mut stack = Stack::start(0, &[]).await;
    stack.start_tools().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("--config")
        .arg(stack.config_file())
        .arg("mcp")
        .env_remove("NATS_URL")
        .env("RUST_LOG", "warn");
    for (k, v) in &stack.env {
        cmd.env(k, v);
    }
    let (transport, _) = TokioChildProcess::builder(cmd).spawn().unwrap();
    let client = ().serve(transport).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    let calculator = tools.iter().find(|t| t.name == "calculator").unwrap();
    assert!(calculator.input_schema["required"] == json!(["expression"]));

    let args = |e: &str| json!({"expression": e}).as_object().cloned().unwrap();
    let result = client
        .call_tool(CallToolRequestParams::new("calculator").with_arguments(args("6 * 7")))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false));
    assert_eq!(
        result.structured_content,
        Some(json!({"expression": "6 * 7", "result": 42}))
    );
    // A failing call is an error result with its class.
    let failed = client
        .call_tool(CallToolRequestParams::new("calculator").with_arguments(args("1 / 0")))
        .await
        .unwrap();
    assert_eq!(failed.is_error, Some(true));
    let text: Value = serde_json::from_str(&failed.content[0].as_text().unwrap().text).unwrap();
    assert_eq!(text["error"]["class"], "invalid_arguments");
    // An unknown tool is a protocol error.
    let unknown = client
        .call_tool(CallToolRequestParams::new("shell").with_arguments(args("ls")))
        .await;
    assert!(unknown.is_err(), "{unknown:?}");
    client.cancel().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn an_mcp_client_uses_the_chat_allowed_built_in_tools_on_the_gateway_s_mcp_endpoint() {
    let mut stack = Stack::start_with(0, &[], "\n[tools]\nchat_allowed = [\"calculator\"]\n").await;
    stack.start_tools().await;
    // rmcp's HTTP client needs a TLS provider even for plain http.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = StreamableHttpClientTransport::from_uri(format!("{}/mcp", stack.base));
    let client = ().serve(transport).await.unwrap();
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["calculator"]);
    let args = json!({"expression": "2 ^ 10"})
        .as_object()
        .cloned()
        .unwrap();
    let result = client
        .call_tool(CallToolRequestParams::new("calculator").with_arguments(args))
        .await
        .unwrap();
    assert_eq!(
        result.structured_content,
        Some(json!({"expression": "2 ^ 10", "result": 1024}))
    );
    client.cancel().await.unwrap();

    // Without chat_allowed the gateway offers no tool, and refuses a call.
    let closed = Stack::start(0, &[]).await;
    let transport = StreamableHttpClientTransport::from_uri(format!("{}/mcp", closed.base));
    let client = ().serve(transport).await.unwrap();
    assert!(client.list_all_tools().await.unwrap().is_empty());
    let args = json!({"expression": "1 + 1"}).as_object().cloned().unwrap();
    let refused = client
        .call_tool(CallToolRequestParams::new("calculator").with_arguments(args))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    client.cancel().await.unwrap();
    closed.stop().await;
    stack.stop().await;
}
