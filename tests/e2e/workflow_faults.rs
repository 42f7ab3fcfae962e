//! Workflows when things go wrong, end to end: a planner that answers garbage, a reviewer
//! that will not approve, budgets (tokens, steps, wall time) that stop a runaway task, a
//! gateway restarted while a task waits for approval, a gateway SIGKILLed while steps run,
//! and one that died between storing a task and starting it. The agents' model is the fake
//! provider (a real HTTP server) with answers scripted by a marker in each step's prompt, or
//! the offline `simulated` provider.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Stack, eventually, requests_with};
use crate::workflows::{AGENTS_ROUTE, ended, state_until, step, submit, task_until};

/// The shipped agents' route, on the fake provider: every step is an HTTP call whose answer
/// a test can script by a marker in its prompt.
pub(crate) const FAKE_AGENTS: &str =
    "\n[routes.agents]\nprovider = \"fake\"\nmodel = \"fake-model\"\n";

/// A reviewer's verdict that approves.
pub(crate) const APPROVE: &str = r#"{"verdict": "approve", "score": 0.9, "feedback": "Ready."}"#;

/// The marker of step `id`'s prompt (`# Your step (<id>)`), for scripting its answer.
pub(crate) fn marker(id: &str) -> String {
    format!("Your step ({id})")
}

/// Every request the fake received for step `id`. Its prompt names its step first: later
/// mentions are inputs (the fake's answers echo their prompts, which name their steps).
pub(crate) fn step_requests(stack: &Stack, id: &str) -> Vec<Value> {
    stack
        .provider
        .bodies()
        .into_iter()
        .filter(|b| {
            let own = user_text(b)
                .split_once("# Your step (")
                .and_then(|(_, rest)| rest.split_once(')'));
            own.is_some_and(|(step, _)| step == id)
        })
        .collect()
}

/// The user message of a step's request (the goal, the instruction, the inputs).
pub(crate) fn user_text(request: &Value) -> &str {
    request["messages"][1]["content"].as_str().unwrap()
}

/// `POST /v1/tasks` with `body`; the new task's id.
fn step_ids(task: &Value) -> Vec<&str> {
    task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn an_invalid_plan_is_asked_for_again_and_a_second_one_fails_the_task() {
    let stack = Stack::start_with(1, &[], FAKE_AGENTS).await;
    // A plan that parses but needs a capability nobody has, then no plan at all.
    stack.provider.push_reply(
        &marker("@plan"),
        r#"{"steps": [{"id": "stars", "capability": "astrology", "instruction": "Read the stars", "depends_on": []}]}"#,
    );
    stack
        .provider
        .push_reply(&marker("@plan-2"), "I would rather not make a plan.");
    let id = submit(&stack, json!({"goal": "Launch a bike-share"})).await;
    let task = task_until(&stack, &id, ended).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["guard"], "invalid_plan", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(message.contains("no JSON object"), "{message}");
    // Both plans were asked for, and nothing else ran.
    assert_eq!(step_ids(&task), ["@plan", "@plan-2"]);
    let plans = [
        step_requests(&stack, "@plan"),
        step_requests(&stack, "@plan-2"),
    ]
    .concat();
    assert_eq!(plans.len(), 2, "{plans:#?}");
    // The second request carries the first plan's problems, naming the field.
    let retry = user_text(&plans[1]);
    assert!(
        retry.contains(
            "Your previous plan was refused: steps[0].capability: no agent has the capability `astrology`"
        ),
        "{retry}"
    );
    assert!(!user_text(&plans[0]).contains("refused"));
    stack.queue_drains().await;
    assert_eq!(stack.provider.calls(), 2);
    stack.stop().await;
}

#[tokio::test]
async fn a_plan_fixed_on_the_second_try_runs_to_the_end() {
    let stack = Stack::start_with(1, &[], FAKE_AGENTS).await;
    stack
        .provider
        .push_reply(&marker("@plan"), "Plans are for the faint of heart.");
    // Valid, inside prose and a code fence as models answer.
    stack.provider.push_reply(
        &marker("@plan-2"),
        "Here is the plan:\n```json\n{\"steps\": [\
         {\"id\": \"facts\", \"capability\": \"research\", \"instruction\": \"Find the facts\", \"depends_on\": []},\
         {\"id\": \"draft\", \"capability\": \"writing\", \"instruction\": \"Draft the launch note\", \"depends_on\": [\"facts\"]}\
         ]}\n```",
    );
    stack.provider.set_reply(&marker("@review"), APPROVE);
    let id = submit(&stack, json!({"goal": "Launch a bike-share"})).await;
    let task = task_until(&stack, &id, ended).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        step_ids(&task),
        [
            "@plan",
            "@plan-2",
            "facts",
            "draft",
            "@synthesis",
            "@review"
        ]
    );
    let retry = step_requests(&stack, "@plan-2");
    assert_eq!(retry.len(), 1);
    assert!(
        user_text(&retry[0])
            .contains("Your previous plan was refused: the answer contains no JSON object"),
        "{}",
        user_text(&retry[0])
    );
    // The second plan is the one that ran: its steps in order, the first's output handed on.
    assert_eq!(step(&task, "draft")["agent"], "writer");
    let draft = step_requests(&stack, "draft");
    assert!(
        user_text(&draft[0]).contains("# Output of step `facts`"),
        "{draft:#?}"
    );
    stack.stop().await;
}

/// A caller's plan of one research step, so a test starts at the synthesis.
fn one_step_plan(goal: &str) -> Value {
    json!({
        "goal": goal,
        "steps": [{"id": "facts", "capability": "research", "instruction": "Find the facts"}]
    })
}

#[tokio::test]
async fn a_reviewer_asking_for_a_revision_gets_exactly_one_with_its_feedback() {
    let stack = Stack::start_with(1, &[], FAKE_AGENTS).await;
    stack.provider.push_reply(
        &marker("@review"),
        r#"{"verdict": "revise", "score": 0.4, "feedback": "Add the maintenance costs."}"#,
    );
    stack.provider.set_reply(&marker("@review-2"), APPROVE);
    let id = submit(&stack, one_step_plan("Cost out a bike-share")).await;
    let task = task_until(&stack, &id, ended).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        step_ids(&task),
        [
            "facts",
            "@synthesis",
            "@review",
            "@synthesis-2",
            "@review-2"
        ]
    );
    assert_eq!(task["revisions"], 1);
    assert_eq!(task["review"]["approved"], true);
    // The revision saw the feedback and the draft it revises; its text is the deliverable.
    let revision = step_requests(&stack, "@synthesis-2");
    assert_eq!(revision.len(), 1);
    let prompt = user_text(&revision[0]);
    assert!(
        prompt.contains("The reviewer asked for a revision: Add the maintenance costs."),
        "{prompt}"
    );
    assert!(prompt.contains("# Output of step `@synthesis`"), "{prompt}");
    assert_eq!(task["output"], step(&task, "@synthesis-2")["output"]);
    // The second review judged the revision.
    let review = step_requests(&stack, "@review-2");
    assert!(
        user_text(&review[0]).contains("The output of `@synthesis-2` above is the deliverable"),
        "{review:#?}"
    );
    stack.queue_drains().await;
    for id in [
        "facts",
        "@synthesis",
        "@review",
        "@synthesis-2",
        "@review-2",
    ] {
        assert_eq!(step_requests(&stack, id).len(), 1, "{id}");
    }
    assert_eq!(stack.provider.calls(), 5);
    stack.stop().await;
}

#[tokio::test]
async fn a_reviewer_that_never_approves_ends_the_task_at_the_revision_bound() {
    let stack = Stack::start_with(1, &[], FAKE_AGENTS).await;
    // Every review (`@review`, `@review-2`, …) asks for another revision.
    stack.provider.set_reply(
        "Your step (@review",
        r#"{"verdict": "revise", "score": 0.1, "feedback": "Still not there."}"#,
    );
    let id = submit(&stack, one_step_plan("Please a hard reviewer")).await;
    let task = task_until(&stack, &id, ended).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["guard"], "max_revisions", "{task:#}");
    assert_eq!(task["revisions"], 1);
    assert_eq!(
        step_ids(&task),
        [
            "facts",
            "@synthesis",
            "@review",
            "@synthesis-2",
            "@review-2"
        ]
    );
    // Nothing after the second review: five calls in all.
    stack.queue_drains().await;
    assert_eq!(stack.provider.calls(), 5);
    stack.stop().await;
}

/// A chain of four dependent research steps under `budget`.
fn chain(goal: &str, budget: Value) -> Value {
    let ids = ["a", "b", "c", "d"];
    let steps: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let depends_on = if i == 0 { json!([]) } else { json!([ids[i - 1]]) };
            json!({"id": id, "capability": "research", "instruction": format!("Do part {id}"), "depends_on": depends_on})
        })
        .collect();
    json!({"goal": goal, "steps": steps, "budget": budget})
}

#[tokio::test]
async fn a_budget_stops_a_runaway_task_and_nothing_more_is_dispatched() {
    let stack = Stack::start_with(1, &[], FAKE_AGENTS).await;
    // Each fake answer uses 12 tokens: the second step's takes the first task past 20. The
    // second task may start two steps, and needs a third.
    let by_tokens = submit(&stack, chain("Tokens run out", json!({"max_tokens": 20}))).await;
    let by_steps = submit(&stack, chain("Steps run out", json!({"max_steps": 2}))).await;
    let results = stack.results_bucket().await;
    for (id, goal, guard) in [
        (&by_tokens, "Tokens run out", "max_tokens"),
        (&by_steps, "Steps run out", "max_steps"),
    ] {
        let task = task_until(&stack, id, ended).await;
        assert_eq!(task["status"], "failed", "{task:#}");
        assert_eq!(task["error"]["guard"], guard, "{task:#}");
        let statuses: Vec<&str> = task["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            ["completed", "completed", "cancelled", "cancelled"],
            "{task:#}"
        );
        // Once the queue is empty, nothing is left to run: the stopped steps never reached
        // a provider and have no result.
        stack.queue_drains().await;
        assert_eq!(requests_with(&stack, goal).len(), 2, "{goal}");
        for id in ["c", "d"] {
            let task_id = step(&task, id)["task_id"].as_str().unwrap();
            assert!(results.get(task_id).await.unwrap().is_none(), "{id}");
        }
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_wall_time_budget_stops_a_task_whose_step_outlives_it() {
    let stack = Stack::start_with(1, &[], FAKE_AGENTS).await;
    // The planner's answer would come long after the task's wall time is up.
    stack.provider.set_latency(Duration::from_secs(15));
    let id = submit(
        &stack,
        json!({"goal": "Take forever", "budget": {"max_wall_ms": 1500}}),
    )
    .await;
    let task = task_until(&stack, &id, ended).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["guard"], "wall_time", "{task:#}");
    // The step itself was stopped at the deadline, not left to finish.
    assert_eq!(task["error"]["step"], "@plan", "{task:#}");
    assert_eq!(task["error"]["class"], "deadline_exceeded", "{task:#}");
    assert_eq!(step_ids(&task), ["@plan"]);
    stack.stop().await;
}

#[tokio::test]
async fn a_task_awaiting_approval_is_approved_through_a_restarted_gateway() {
    let mut stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    let id = submit(
        &stack,
        json!({"goal": "Draft a press release", "approval": true}),
    )
    .await;
    let waiting = task_until(&stack, &id, |t| t["status"] == "awaiting_approval").await;
    assert_eq!(waiting["review"]["approved"], true, "{waiting:#}");
    let old = stack.base.clone();
    stack.restart_gateway().await;
    assert!(
        stack
            .http
            .get(format!("{old}/readyz"))
            .send()
            .await
            .is_err(),
        "the old gateway still answers"
    );
    // The new gateway knows the task from NATS alone, and can decide it.
    let seen = stack.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!(seen["status"], "awaiting_approval", "{seen:#}");
    let approve = stack
        .http
        .post(format!("{}/v1/tasks/{id}/approve", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(approve.status(), 202);
    let task = task_until(&stack, &id, ended).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["output"], waiting["output"]);
    stack.stop().await;
}

/// The id of the last complete event in an SSE body read so far.
fn last_event_id(body: &str) -> Option<u64> {
    let complete = &body[..body.rfind("\n\n")?];
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .next_back()?
        .trim()
        .parse()
        .ok()
}

/// Every progress event of workflow `id` in `EVENTS`, as `(kind, step)`.
async fn workflow_events(stack: &Stack, id: &str) -> Vec<(String, Option<String>)> {
    let js = async_nats::jetstream::new(stack.client.clone());
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let subject = format!("events.workflow.{id}");
    let mut events = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(seq).await
            && message.subject.as_str() == subject
        {
            let event: Value = serde_json::from_slice(&message.payload).unwrap();
            events.push((
                event["kind"].as_str().unwrap().to_owned(),
                event["step"].as_str().map(str::to_owned),
            ));
        }
    }
    events
}

#[tokio::test]
async fn a_gateway_killed_mid_workflow_leaves_it_to_finish_exactly_once() {
    // Each step's call takes its time, so the kill lands while steps run.
    let slow = "\n[providers.slowagents]\nkind = \"simulated\"\nlatency_ms = 1000\n[routes.agents]\nprovider = \"slowagents\"\nmodel = \"slow-1\"\n";
    let stack = Stack::start_with(2, &[], slow).await;
    let logs = tempfile::TempDir::new().unwrap();
    let (mut doomed, base) = stack
        .spawn_gateway_process(&logs.path().join("doomed.log"))
        .await;
    let body = json!({
        "goal": "Outlive the gateway",
        "steps": [
            {"id": "a", "capability": "research", "instruction": "Find A"},
            {"id": "b", "capability": "research", "instruction": "Find B"},
            {"id": "c", "capability": "analysis", "instruction": "Weigh A and B", "depends_on": ["a", "b"]}
        ]
    });
    let response = stack
        .http
        .post(format!("{base}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    // A watcher follows the progress through the doomed gateway.
    let mut watch = stack
        .http
        .get(format!("{base}/v1/tasks/{id}/events"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let last_seen = tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = String::new();
        loop {
            let chunk = watch.next().await.unwrap().unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(id) = last_event_id(&seen) {
                return id;
            }
        }
    })
    .await
    .expect("no progress through the doomed gateway");
    // Steps are out and their calls under way: SIGKILL, no drain.
    let parsed: shared::TaskId = id.parse().unwrap();
    state_until(&stack, parsed, |wf| wf["status"] == "running").await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    assert!(
        stack
            .http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_err()
    );
    // A fresh gateway shows the task to its end, and the watcher resumes where it was.
    let (mut fresh, base) = stack
        .spawn_gateway_process(&logs.path().join("fresh.log"))
        .await;
    let task = eventually(Duration::from_secs(60), || async {
        let task: Value = stack
            .http
            .get(format!("{base}/v1/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ended(&task).then_some(task)
    })
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let rest = stack
        .http
        .get(format!("{base}/v1/tasks/{id}/events"))
        .header("last-event-id", last_seen.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ids: Vec<u64> = rest
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert!(
        ids.first().is_some_and(|first| *first > last_seen),
        "{rest}"
    );
    assert!(rest.contains("event: done"), "{rest}");
    // Exactly once: each step one task with a result and one lifecycle event; one end.
    stack.queue_drains().await;
    let lifecycle = stack.task_events().await;
    for s in task["steps"].as_array().unwrap() {
        let task_id = s["task_id"].as_str().unwrap();
        let derived = parsed.child(s["id"].as_str().unwrap()).to_string();
        assert_eq!(task_id, derived, "{s:#}");
        assert_eq!(stack.stored(task_id).await["status"], "completed", "{s:#}");
        assert_eq!(lifecycle.get(task_id), Some(&1), "{s:#}");
    }
    let events = workflow_events(&stack, &id).await;
    let count = |kind: &str, step: Option<&str>| {
        events
            .iter()
            .filter(|(k, s)| k == kind && s.as_deref() == step)
            .count()
    };
    assert_eq!(count("done", None), 1, "{events:?}");
    for s in ["a", "b", "c", "@synthesis", "@review"] {
        assert_eq!(count("step_finished", Some(s)), 1, "{s}: {events:?}");
    }
    fresh.kill().unwrap();
    fresh.wait().unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn a_task_whose_gateway_died_before_starting_it_starts_when_the_post_is_retried() {
    let stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    // What a gateway killed between storing a task and publishing its start leaves behind:
    // the task, queued, and nothing on the queue to start it.
    let key = "launch-note-7";
    let id = shared::TaskId::for_idempotency_key(key);
    let now = shared::task::now_ms();
    let orphan = json!({
        "id": id, "spec": {"goal": "Write the launch note", "team": "default"},
        "status": "queued", "steps": [], "plan_attempts": 0, "revisions": 0,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0},
        "created_ms": now, "deadline_ms": now + 600_000, "updated_ms": now
    });
    let workflows = async_nats::jetstream::new(stack.client.clone())
        .get_key_value("workflows")
        .await
        .unwrap();
    workflows
        .create(id.to_string(), orphan.to_string().into())
        .await
        .unwrap();
    let seen = stack.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!(seen["status"], "queued", "{seen:#}");
    // The caller, who got no answer, retries with the same key: the same task runs.
    let retry = post_with_key(&stack, key).await;
    assert_eq!(retry.status(), 202);
    let accepted: Value = retry.json().await.unwrap();
    assert_eq!(accepted["id"], id.to_string());
    let task = task_until(&stack, &id.to_string(), ended).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["goal"], "Write the launch note");
    // A retry once it has run is answered with the task as it is, and starts nothing.
    let again = post_with_key(&stack, key).await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], id.to_string());
    assert_eq!(again["status"], "completed", "{again:#}");
    stack.queue_drains().await;
    assert_eq!(stack.get_json(&format!("/v1/tasks/{id}")).await, task);
    stack.stop().await;
}

/// `POST /v1/tasks` for the launch note, with `Idempotency-Key: key`.
async fn post_with_key(stack: &Stack, key: &str) -> reqwest::Response {
    stack
        .http
        .post(format!("{}/v1/tasks", stack.base))
        .header("idempotency-key", key)
        .json(&json!({"goal": "Write the launch note"}))
        .send()
        .await
        .unwrap()
}
