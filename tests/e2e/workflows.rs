//! Workflows end to end through real workers and a real nats-server: started by a control
//! message on `tasks.workflow.<priority>` (as the gateway will publish it), planned, run,
//! synthesized and reviewed by the offline `simulated` provider playing every role.

use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::{Value, json};
use shared::TaskId;

use crate::harness::{Stack, eventually};

/// The shipped agents' route, on the simulated provider.
pub(crate) const AGENTS_ROUTE: &str =
    "\n[routes.agents]\nprovider = \"simulated\"\nmodel = \"simulated-1\"\n";

/// Starts a workflow for `spec` as the gateway would; returns its id.
pub(crate) async fn start(stack: &Stack, spec: Value) -> TaskId {
    let id = TaskId::new();
    let message = json!({"workflow": id, "action": "start", "spec": spec, "created_ms": shared::task::now_ms()});
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{id}.start").as_str());
    async_nats::jetstream::new(stack.client.clone())
        .publish_with_headers("tasks.workflow.normal", headers, message.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    id
}

/// The workflow's stored state once `until` holds for it.
pub(crate) async fn state_until(
    stack: &Stack,
    id: TaskId,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let workflows = async_nats::jetstream::new(stack.client.clone())
        .get_key_value("workflows")
        .await
        .unwrap();
    eventually(Duration::from_secs(60), || async {
        let bytes = workflows.get(id.to_string()).await.unwrap()?;
        let wf: Value = serde_json::from_slice(&bytes).unwrap();
        until(&wf).then_some(wf)
    })
    .await
}

/// The workflow's state once it has ended.
pub(crate) async fn finished(stack: &Stack, id: TaskId) -> Value {
    state_until(stack, id, ended).await
}

pub(crate) fn step<'a>(wf: &'a Value, id: &str) -> &'a Value {
    wf["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()
}

#[tokio::test]
async fn a_goal_is_planned_run_synthesized_and_reviewed_offline() {
    let stack = Stack::start_with(2, &[], AGENTS_ROUTE).await;
    let id = start(
        &stack,
        json!({"goal": "Write a market analysis of electric bikes"}),
    )
    .await;
    let wf = finished(&stack, id).await;
    assert_eq!(wf["status"], "completed", "{wf:#}");
    let steps = wf["steps"].as_array().unwrap();
    // The planner's three parallel steps, then the synthesis and its review.
    let ids: Vec<&str> = steps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["@plan", "s1", "s2", "s3", "@synthesis", "@review"]);
    assert_eq!(step(&wf, "@plan")["agent"], "planner");
    assert_eq!(step(&wf, "@synthesis")["agent"], "writer");
    assert_eq!(step(&wf, "@review")["agent"], "reviewer");
    // Every step was routed with the reasons kept, and has one stored result.
    let results = stack.results_bucket().await;
    for s in steps {
        assert_eq!(s["status"], "completed", "{s:#}");
        assert!(
            !s["routing"]["candidates"].as_array().unwrap().is_empty(),
            "{s:#}"
        );
        let task_id = s["task_id"].as_str().unwrap();
        let entry = results.entry(task_id).await.unwrap().unwrap();
        assert_eq!(entry.revision, entry.revision.max(1));
    }
    // The deliverable is the writer's, made from every step's output.
    let output = wf["output"].as_str().unwrap();
    assert!(
        output.contains("Writer: done, working from the outputs of s1, s2, s3"),
        "{output}"
    );
    assert_eq!(wf["review"]["approved"], true);
    assert!(wf["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // The simulated model has no price here: its tokens cost 0, and the usage says so.
    assert_eq!(wf["usage"]["cost_usd"], 0.0);
    assert_eq!(wf["usage"]["cost_known"], false);
    stack.stop().await;
}

#[tokio::test]
async fn a_given_plan_runs_in_dependency_order_and_outputs_reach_dependents() {
    let stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    let id = start(
        &stack,
        json!({
            "goal": "Compare two cities for a bike-share launch",
            "steps": [
                {"id": "city-a", "capability": "research", "instruction": "Research city A"},
                {"id": "city-b", "capability": "research", "instruction": "Research city B"},
                {"id": "compare", "capability": "analysis", "instruction": "Compare them", "depends_on": ["city-a", "city-b"]}
            ]
        }),
    )
    .await;
    let wf = finished(&stack, id).await;
    assert_eq!(wf["status"], "completed", "{wf:#}");
    // The dependent step saw both inputs (the simulated analyst names them).
    let compare = step(&wf, "compare");
    assert_eq!(compare["agent"], "analyst");
    assert!(
        compare["output"]
            .as_str()
            .unwrap()
            .contains("the outputs of city-a, city-b"),
        "{compare:#}"
    );
    // The independent steps were dispatched by one event, the dependent one by another.
    assert_eq!(step(&wf, "city-a")["dispatched_by"], "start");
    assert_eq!(step(&wf, "city-b")["dispatched_by"], "start");
    assert!(
        compare["dispatched_by"]
            .as_str()
            .unwrap()
            .starts_with("after:city-")
    );
    stack.stop().await;
}

/// `POST /v1/tasks` with `body`; the response.
pub(crate) async fn post_task(stack: &Stack, body: Value) -> reqwest::Response {
    stack
        .http
        .post(format!("{}/v1/tasks", stack.base))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `GET /v1/tasks/{id}` until `done` holds for it.
pub(crate) async fn task_until(stack: &Stack, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(60), || async {
        let task = stack.get_json(&format!("/v1/tasks/{id}")).await;
        done(&task).then_some(task)
    })
    .await
}

/// `POST /v1/tasks` with `body`, which must be accepted (202); returns the task id.
pub(crate) async fn submit(stack: &Stack, body: Value) -> String {
    let response = post_task(stack, body).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    accepted["id"].as_str().unwrap().to_owned()
}

/// Submits `body` and returns the task once it has ended.
pub(crate) async fn run_task(stack: &Stack, body: Value) -> Value {
    let id = submit(stack, body).await;
    task_until(stack, &id, ended).await
}

/// Runs a workflow of one given step, `(id, capability, instruction)`, by `agent` (with the
/// shipped writer and a reviewer that approves), and returns the task once it has ended.
pub(crate) async fn run_one_step(
    stack: &Stack,
    goal: &str,
    agent: &str,
    (id, capability, instruction): (&str, &str, &str),
) -> Value {
    stack.provider.set_reply(
        "Your step (@review",
        r#"{"verdict": "approve", "score": 0.9, "feedback": "Ready."}"#,
    );
    run_task(
        stack,
        json!({"goal": goal, "agents": [agent, "writer", "reviewer"], "steps": [
            {"id": id, "capability": capability, "instruction": instruction}]}),
    )
    .await
}

pub(crate) fn ended(task: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap_or_default())
}

#[tokio::test]
async fn the_task_api_hands_a_goal_to_a_team_and_shows_its_work() {
    let stack = Stack::start_with(2, &[], AGENTS_ROUTE).await;
    let response = post_task(
        &stack,
        json!({"goal": "Report on urban cycling safety", "team": "research"}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "queued");
    let id = accepted["id"].as_str().unwrap().to_owned();
    // Readable as soon as it is accepted.
    assert_eq!(stack.task(&id).await.status(), 200);
    let task = task_until(&stack, &id, ended).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["object"], "task");
    assert_eq!(task["team"], "research");
    assert!(task["output"].as_str().unwrap().contains("Writer"));
    // Work steps stay within the team; the team has no planner or reviewer and borrows them.
    for step in task["steps"].as_array().unwrap() {
        let agent = step["agent"].as_str().unwrap();
        match step["kind"].as_str().unwrap() {
            "work" => assert!(
                ["researcher", "analyst", "writer"].contains(&agent),
                "{step:#}"
            ),
            "plan" => assert_eq!(agent, "planner"),
            "review" => assert_eq!(agent, "reviewer"),
            _ => {}
        }
    }
    stack.stop().await;
}

#[tokio::test]
async fn approval_pauses_the_task_until_a_person_decides() {
    let stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let accepted: Value = post_task(
            &stack,
            json!({"goal": "Draft a press release", "approval": true}),
        )
        .await
        .json()
        .await
        .unwrap();
        let id = accepted["id"].as_str().unwrap().to_owned();
        task_until(&stack, &id, |t| t["status"] == "awaiting_approval").await;
        ids.push(id);
    }
    let approve = stack
        .http
        .post(format!("{}/v1/tasks/{}/approve", stack.base, ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(approve.status(), 202);
    assert_eq!(
        task_until(&stack, &ids[0], ended).await["status"],
        "completed"
    );
    let reject = stack
        .http
        .post(format!("{}/v1/tasks/{}/reject", stack.base, ids[1]))
        .json(&json!({"reason": "off message"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reject.status(), 202);
    let rejected = task_until(&stack, &ids[1], ended).await;
    assert_eq!(rejected["status"], "failed");
    assert_eq!(rejected["error"]["guard"], "rejected");
    // Deciding a task that no longer waits is refused.
    let again = stack
        .http
        .post(format!("{}/v1/tasks/{}/approve", stack.base, ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    stack.stop().await;
}

#[tokio::test]
async fn cancel_stops_a_task_and_dispatches_nothing_more() {
    // The agents' model takes its time, so the plan is still being written when we cancel.
    let slow = "\n[providers.slowagents]\nkind = \"simulated\"\nlatency_ms = 4000\n[routes.agents]\nprovider = \"slowagents\"\nmodel = \"slow-1\"\n";
    let stack = Stack::start_with(1, &[], slow).await;
    let accepted: Value = post_task(&stack, json!({"goal": "Plan a city bike network"}))
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    task_until(&stack, &id, |t| t["status"] == "planning").await;
    let cancel = stack
        .http
        .delete(format!("{}/v1/tasks/{id}", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    let task = task_until(&stack, &id, ended).await;
    assert_eq!(task["status"], "cancelled", "{task:#}");
    let steps = task["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "nothing after the plan: {task:#}");
    assert_eq!(steps[0]["status"], "cancelled");
    // The planner's call was stopped: its task ended as cancelled, well before its 4 s.
    let plan = stack.stored(steps[0]["task_id"].as_str().unwrap()).await;
    assert_eq!(plan["error"]["class"], "cancelled", "{plan:#}");
    stack.stop().await;
}

#[tokio::test]
async fn bad_task_requests_are_refused_naming_the_field() {
    let stack = Stack::start_with(0, &[], AGENTS_ROUTE).await;
    let cases = [
        (json!({"goal": ""}), "goal"),
        (json!({"goal": "g", "team": "ghosts"}), "team"),
        (
            json!({"goal": "g", "agents": ["planner", "nobody"]}),
            "agents[1]",
        ),
        (
            json!({"goal": "g", "capabilities": ["astrology"]}),
            "capabilities[0]",
        ),
        (
            json!({"goal": "g", "budget": {"max_tokens": 0}}),
            "budget.max_tokens",
        ),
        (json!({"goal": "g", "colour": "blue"}), "colour"),
        (
            json!({"goal": "g", "budget": {"max_tokens": "many"}}),
            "budget.max_tokens",
        ),
        (json!({"team": "research"}), "goal"),
        (
            json!({"goal": "g", "steps": [
                {"id": "a", "capability": "research", "instruction": "x", "depends_on": ["b"]},
                {"id": "b", "capability": "research", "instruction": "y", "depends_on": ["a"]}
            ]}),
            "steps",
        ),
    ];
    for (body, param) in cases {
        let response = post_task(&stack, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
    let missing = stack
        .http
        .delete(format!("{}/v1/tasks/{}", stack.base, TaskId::new()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    stack.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_step_leaves_the_workflow_to_finish_exactly_once() {
    let slow = "\n[providers.slowagents]\nkind = \"simulated\"\nlatency_ms = 1500\n[routes.agents]\nprovider = \"slowagents\"\nmodel = \"slow-1\"\n";
    let stack = Stack::start_with(0, &[], slow).await;
    let logs = tempfile::TempDir::new().unwrap();
    let mut doomed = stack.spawn_worker_process(&logs.path().join("doomed.log"));
    let id = start(
        &stack,
        json!({
            "goal": "Survive a crash",
            "steps": [
                {"id": "a", "capability": "research", "instruction": "Find A"},
                {"id": "b", "capability": "research", "instruction": "Find B"},
                {"id": "c", "capability": "analysis", "instruction": "Weigh A and B", "depends_on": ["a", "b"]}
            ]
        }),
    )
    .await;
    // The first steps are out and their provider calls under way: kill the worker, no drain.
    state_until(&stack, id, |wf| wf["status"] == "running").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let mut rescuer = stack.spawn_worker_process(&logs.path().join("rescuer.log"));
    let wf = finished(&stack, id).await;
    assert_eq!(wf["status"], "completed", "{wf:#}");
    // Each step is one task with one result and one event, whoever ran it.
    let events = stack.task_events().await;
    for s in wf["steps"].as_array().unwrap() {
        let task_id = s["task_id"].as_str().unwrap();
        assert_eq!(stack.stored(task_id).await["status"], "completed");
        assert_eq!(events.get(task_id), Some(&1), "{s:#}");
    }
    rescuer.kill().unwrap();
    rescuer.wait().unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn progress_streams_as_server_sent_events_and_resumes_after_the_last_seen() {
    let stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    let accepted: Value = post_task(&stack, json!({"goal": "Summarise bike lanes"}))
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/tasks/{id}/events", stack.base);
    // The stream ends by itself with the workflow's end.
    let body = tokio::time::timeout(Duration::from_secs(60), async {
        stack
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await
    .expect("the event stream did not end");
    let events: Vec<(u64, String)> = body
        .split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            Some((field("id:")?.parse().ok()?, field("event:")?))
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|(_, k)| k.as_str()).collect();
    for kind in [
        "step_started",
        "step_finished",
        "planned",
        "synthesized",
        "reviewed",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    assert_eq!(kinds.last(), Some(&"done"));
    // Resuming after the third event gives the rest, from the fourth on.
    let (third, _) = events[2];
    let rest = stack
        .http
        .get(&url)
        .header("last-event-id", third.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let first_again: u64 = rest
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(first_again, events[3].0);
    // Both streams have ended, and their consumers are gone from the server with them (left
    // alone, an ordered consumer lingers for 30 s, and JetStream refuses the 1,001st).
    let js = async_nats::jetstream::new(stack.client.clone());
    eventually(Duration::from_secs(5), || async {
        let mut stream = js.get_stream("EVENTS").await.ok()?;
        let info = stream.info().await.ok()?;
        (info.state.consumer_count == 0).then_some(())
    })
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn routing_moves_a_step_away_from_a_loaded_agent() {
    // Two researchers alike but for their queues: a1's is full of work nobody serves.
    let agents = format!(
        "{AGENTS_ROUTE}{}",
        ["a1", "a2"]
            .map(|name| format!(
                "\n[agents.{name}]\nrole = \"Researcher\"\ncapabilities = [\"research\"]\nroute = \"agents\"\nsystem_prompt = \"You are the Researcher of a team.\"\nmax_concurrency = 1\n"
            ))
            .concat()
    );
    let served = "workflow,agent-a2,agent-writer,agent-reviewer";
    let stack =
        Stack::start_with(1, &[("SWITCHYARD__WORKER__CAPABILITIES", served)], &agents).await;
    let js = async_nats::jetstream::new(stack.client.clone());
    for i in 0..5 {
        let id = TaskId::new();
        let task = json!({
            "id": id, "capability": "agent-a1", "priority": "normal", "route": "agents",
            "request": {"model": "agents", "messages": [{"role": "user", "content": format!("backlog {i}")}]},
            "deadline_ms": shared::task::now_ms() + 600_000, "created_ms": shared::task::now_ms()
        });
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.to_string().as_str());
        js.publish_with_headers("tasks.agent-a1.normal", headers, task.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let id = start(
        &stack,
        json!({
            "goal": "Find the facts",
            "agents": ["a1", "a2", "writer", "reviewer"],
            "steps": [{"id": "facts", "capability": "research", "instruction": "Find them"}]
        }),
    )
    .await;
    let wf = finished(&stack, id).await;
    assert_eq!(wf["status"], "completed", "{wf:#}");
    let facts = step(&wf, "facts");
    assert_eq!(facts["agent"], "a2", "{facts:#}");
    // Why: every candidate's parts are kept, and a1 lost on load alone.
    let candidates = facts["routing"]["candidates"].as_array().unwrap();
    let part = |agent: &str, part: &str| {
        candidates.iter().find(|c| c["agent"] == agent).unwrap()[part]
            .as_f64()
            .unwrap()
    };
    assert_eq!(part("a1", "capability"), part("a2", "capability"));
    assert!(part("a1", "load") < part("a2", "load"), "{candidates:#?}");
    stack.stop().await;
}

#[tokio::test]
async fn agents_are_listed_with_their_teams_and_live_load_from_jetstream() {
    // No worker serves the planner's queue, so what is published there stays queued.
    let stack = Stack::start_with(0, &[], AGENTS_ROUTE).await;
    let js = async_nats::jetstream::new(stack.client.clone());
    for i in 0..2 {
        let id = TaskId::new();
        let task = json!({
            "id": id, "capability": "agent-planner", "priority": "high", "route": "agents",
            "request": {"model": "agents", "messages": [{"role": "user", "content": format!("queued {i}")}]},
            "deadline_ms": shared::task::now_ms() + 600_000, "created_ms": shared::task::now_ms()
        });
        js.publish("tasks.agent-planner.high", task.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let list = stack.get_json("/v1/agents").await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for shipped in [
        "planner",
        "researcher",
        "analyst",
        "writer",
        "coder",
        "tester",
        "reviewer",
        "critic",
        "advisor",
    ] {
        assert!(names.contains(&shipped), "{shipped}: {names:?}");
    }
    let planner = stack.get_json("/v1/agents/planner").await;
    assert_eq!(
        planner["load"],
        json!({"in_flight": 0, "queued": 2, "capacity": planner["max_concurrency"]})
    );
    assert!(
        planner["teams"]
            .as_array()
            .unwrap()
            .contains(&json!("default"))
    );
    assert_eq!(
        stack.get_json("/v1/agents/writer").await["load"]["queued"],
        0
    );
    let missing = stack
        .http
        .get(format!("{}/v1/agents/nobody", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    stack.stop().await;
}

#[tokio::test]
async fn a_priced_model_costs_each_step_and_the_cost_budget_stops_the_run() {
    // $1,000 per million tokens each way: a planner's prompt alone costs cents.
    let priced = format!(
        "{AGENTS_ROUTE}\n[prices.\"simulated/simulated-1\"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 1000.0\n"
    );
    let stack = Stack::start_with(1, &[], &priced).await;
    let accepted: Value = post_task(
        &stack,
        json!({"goal": "Plan a city-wide bike census", "budget": {"max_cost_usd": 0.001}}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let task = task_until(&stack, &id, ended).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["guard"], "max_cost", "{task:#}");
    // The planner's step ran and was costed at the model's price; nothing ran after it.
    let plan = step(&task, "@plan");
    assert_eq!(plan["status"], "completed");
    let tokens = |usage: &Value| {
        (
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["completion_tokens"].as_u64().unwrap(),
        )
    };
    let (prompt, completion) = tokens(&plan["usage"]);
    assert!(prompt > 0 && completion > 0, "{plan:#}");
    let expected = (prompt + completion) as f64 * 1000.0 / 1_000_000.0;
    let cost = plan["usage"]["cost_usd"].as_f64().unwrap();
    assert!((cost - expected).abs() < 1e-9, "{cost} ≠ {expected}");
    assert_eq!(plan["usage"]["cost_known"], true);
    // The workflow's usage is its steps' sum, over the budget.
    assert_eq!(tokens(&task["usage"]), (prompt, completion));
    assert!((task["usage"]["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-9);
    assert!(expected > 0.001);
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the budget is $0.0010"),
        "{task:#}"
    );
    // The plan's steps were never dispatched: the guard stopped the run first.
    let rest: Vec<&Value> = task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["id"] != "@plan")
        .collect();
    assert!(!rest.is_empty(), "{task:#}");
    for s in rest {
        assert_eq!(s["status"], "cancelled", "{s:#}");
        assert!(s.get("dispatched_by").is_none(), "{s:#}");
    }
    stack.stop().await;
}
