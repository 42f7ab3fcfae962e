//! Agents added, replaced and removed at runtime through `PUT`/`DELETE /v1/agents/{name}`:
//! stored in the `agents` bucket, seen by a worker that was running before the change, and
//! refused with the field named when the profile is bad.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Stack, eventually};
use crate::workflows::{run_task, step};

const AGENTS_ROUTE: &str = "\n[routes.agents]\nprovider = \"simulated\"\nmodel = \"simulated-1\"\n";

fn poet() -> Value {
    json!({
        "role": "Poet",
        "capabilities": ["poetry"],
        "route": "agents",
        "system_prompt": "You are the Poet. You write short poems.",
        "max_concurrency": 3,
    })
}

/// `method /v1/agents/{name}`, with `profile` as the body if given.
async fn call(
    stack: &Stack,
    method: reqwest::Method,
    name: &str,
    profile: Option<&Value>,
) -> reqwest::Response {
    let request = stack
        .http
        .request(method, format!("{}/v1/agents/{name}", stack.base));
    match profile {
        Some(profile) => request.json(profile),
        None => request,
    }
    .send()
    .await
    .unwrap()
}

async fn put(stack: &Stack, name: &str, profile: &Value) -> reqwest::Response {
    call(stack, reqwest::Method::PUT, name, Some(profile)).await
}

async fn delete(stack: &Stack, name: &str) -> reqwest::Response {
    call(stack, reqwest::Method::DELETE, name, None).await
}

async fn agent(stack: &Stack, name: &str) -> reqwest::Response {
    call(stack, reqwest::Method::GET, name, None).await
}

#[tokio::test]
async fn an_agent_added_at_runtime_takes_steps_and_can_be_removed() {
    let stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;

    let added = put(&stack, "poet", &poet()).await;
    assert_eq!(added.status(), 201);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["source"], "runtime");
    assert_eq!(added["load"]["capacity"], 3);

    // The worker, running since before the change, serves the new agent's queue.
    let task = run_task(
        &stack,
        json!({
            "goal": "A poem about trains",
            "agents": ["poet", "writer", "reviewer"],
            "steps": [{"id": "poem", "capability": "poetry", "instruction": "Write it."}],
        }),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let poem = step(&task, "poem");
    assert_eq!(poem["agent"], "poet");
    assert!(
        poem["output"].as_str().unwrap().contains("Poet"),
        "the simulated model answers as the agent's role: {poem:#}"
    );

    // Its record: the step counted once, and the approving review of the work it did.
    let record = eventually(Duration::from_secs(20), || async {
        let poet: Value = agent(&stack, "poet").await.json().await.unwrap();
        let record = poet["performance"].clone();
        (record["review_score"].is_number()).then_some(record)
    })
    .await;
    assert_eq!(record["succeeded"], 1, "{record:#}");
    assert_eq!(record["failed"], 0);
    assert_eq!(record["success_rate"], 1.0);
    assert!(record["mean_latency_ms"].is_number());
    assert!(record["review_score"].as_f64().unwrap() > 0.0);

    // Replacing it changes its cap on the queue's consumer.
    let mut smaller = poet();
    smaller["max_concurrency"] = json!(1);
    assert_eq!(put(&stack, "poet", &smaller).await.status(), 200);
    let consumer = async_nats::jetstream::new(stack.client.clone())
        .get_stream("TASKS")
        .await
        .unwrap()
        .consumer_info("tasks-agent-poet")
        .await
        .unwrap()
        .clone();
    assert_eq!(consumer.config.max_ack_pending, 1);

    let listed = stack.get_json("/v1/agents").await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "poet" && a["max_concurrency"] == 1)
    );

    let gone = delete(&stack, "poet").await;
    assert_eq!(gone.status(), 200);
    let gone: Value = gone.json().await.unwrap();
    assert_eq!(gone["deleted"], true);
    assert_eq!(gone["restored"], false);
    assert_eq!(agent(&stack, "poet").await.status(), 404);
    let refused = stack
        .http
        .post(format!("{}/v1/tasks", stack.base))
        .json(&json!({"goal": "Another poem", "agents": ["poet"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["param"], "agents[0]");
    stack.stop().await;
}

#[tokio::test]
async fn a_configured_agent_can_be_replaced_and_restored_but_not_deleted() {
    let stack = Stack::start_with(0, &[], AGENTS_ROUTE).await;
    let configured: Value = agent(&stack, "writer").await.json().await.unwrap();
    assert_eq!(configured["source"], "configuration");

    let mut editor = configured.clone();
    for key in ["object", "name", "source", "teams", "load", "performance"] {
        editor.as_object_mut().unwrap().remove(key);
    }
    editor["role"] = json!("Editor");
    assert_eq!(put(&stack, "writer", &editor).await.status(), 200);
    let replaced: Value = agent(&stack, "writer").await.json().await.unwrap();
    assert_eq!(replaced["role"], "Editor");
    assert_eq!(replaced["source"], "runtime");
    assert_eq!(replaced["teams"], configured["teams"], "still in its teams");

    let restored: Value = delete(&stack, "writer").await.json().await.unwrap();
    assert_eq!(restored["restored"], true);
    let back: Value = agent(&stack, "writer").await.json().await.unwrap();
    assert_eq!(back["role"], configured["role"]);
    assert_eq!(back["source"], "configuration");

    // Only in configuration: removed there, not here.
    let refused = delete(&stack, "writer").await;
    assert_eq!(refused.status(), 409);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "agent_configured");
    assert_eq!(agent(&stack, "writer").await.status(), 200);
    stack.stop().await;
}

#[tokio::test]
async fn bad_profiles_are_refused_naming_the_field() {
    let stack = Stack::start_with(0, &[], AGENTS_ROUTE).await;
    let with = |key: &str, value: Value| {
        let mut p = poet();
        p[key] = value;
        p
    };
    let without = |key: &str| {
        let mut p = poet();
        p.as_object_mut().unwrap().remove(key);
        p
    };
    for (name, profile, field) in [
        ("poet", with("colour", json!("blue")), "colour"),
        (
            "poet",
            with("capabilities", json!(["poetry", 7])),
            "capabilities[1]",
        ),
        (
            "poet",
            with("capabilities", json!(["a.b"])),
            "capabilities[0]",
        ),
        ("poet", with("route", json!("nowhere")), "route"),
        ("poet", with("max_concurrency", json!(0)), "max_concurrency"),
        ("poet", with("name", json!("bard")), "name"),
        ("poet", without("role"), "role"),
        ("Poet!", poet(), "name"),
    ] {
        let response = put(&stack, name, &profile).await;
        assert_eq!(response.status(), 400, "{field}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["param"], field, "{body:#}");
    }
    assert_eq!(
        agent(&stack, "poet").await.status(),
        404,
        "nothing was stored"
    );
    stack.stop().await;
}

#[tokio::test]
async fn routing_prefers_the_agent_with_the_better_record() {
    let stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    // By name alone the first would win a tie; its record says otherwise.
    for name in ["aaa-flaky", "zzz-steady"] {
        assert_eq!(put(&stack, name, &poet()).await.status(), 201);
    }
    let records = async_nats::jetstream::new(stack.client.clone())
        .get_key_value("performance")
        .await
        .unwrap();
    let flaky =
        json!({"succeeded": 2, "failed": 18, "review_score": 0.1, "mean_latency_ms": 900.0});
    records
        .put("aaa-flaky", flaky.to_string().into())
        .await
        .unwrap();
    // The worker's copy follows the bucket by a watch.
    let routed = eventually(Duration::from_secs(20), || async {
        let task = run_task(
            &stack,
            json!({
                "goal": "A poem about rivers",
                "agents": ["aaa-flaky", "zzz-steady", "writer", "reviewer"],
                "steps": [{"id": "poem", "capability": "poetry", "instruction": "Write it."}],
            }),
        )
        .await;
        let poem = step(&task, "poem").clone();
        (poem["agent"] == "zzz-steady").then_some(poem)
    })
    .await;
    let candidates = routed["routing"]["candidates"].as_array().unwrap();
    let flaky = candidates
        .iter()
        .find(|c| c["agent"] == "aaa-flaky")
        .unwrap();
    let steady = candidates
        .iter()
        .find(|c| c["agent"] == "zzz-steady")
        .unwrap();
    assert_eq!(flaky["capability"], steady["capability"]);
    assert!(
        flaky["performance"].as_f64().unwrap() < steady["performance"].as_f64().unwrap(),
        "{candidates:#?}"
    );
    stack.stop().await;
}

/// Runs `switchyard <args>` against the stack's gateway, with `stdin`; returns its output.
async fn cli(stack: &Stack, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (url, stdin) = (stack.base.clone(), stdin.to_owned());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&args)
            .args(["--url", &url])
            .env_remove("SWITCHYARD_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_cli_lists_adds_and_removes_agents() {
    let stack = Stack::start_with(0, &[], AGENTS_ROUTE).await;
    let (ok, out, err) = cli(
        &stack,
        &["agents", "put", "poet", "--file", "-"],
        &poet().to_string(),
    )
    .await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("\"source\": \"runtime\""), "{out}");

    let (ok, out, err) = cli(&stack, &["agents", "list"], "").await;
    assert!(ok, "{err}");
    let poet_line = out.lines().find(|l| l.starts_with("poet ")).unwrap();
    for part in ["runtime", "Poet", "agents", "0/3", "poetry"] {
        assert!(poet_line.contains(part), "{part:?} missing: {poet_line}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("planner ") && l.contains("configuration"))
    );

    let (ok, _, err) = cli(
        &stack,
        &["agents", "put", "bard", "--file", "-"],
        "{\"role\": 1}",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("400"), "{err}");

    // A name is one path segment, whatever it holds: this is not `DELETE /v1/agents/poet`.
    let (ok, _, err) = cli(&stack, &["agents", "delete", "poet?x=1"], "").await;
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    let (ok, out, err) = cli(&stack, &["agents", "delete", "poet"], "").await;
    assert!(ok, "{err}");
    assert!(out.contains("\"deleted\": true"), "{out}");
    let (ok, _, err) = cli(&stack, &["agents", "show", "poet"], "").await;
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    stack.stop().await;
}
