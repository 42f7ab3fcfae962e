//! Workflows end to end through real workers and a real nats-server: started by a control
//! message on `tasks.workflow.<priority>` (as the gateway will publish it), planned, run,
//! synthesized and reviewed by the offline `simulated` provider playing every role.

use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::{Value, json};
use shared::TaskId;

use crate::harness::{Stack, eventually};

/// The shipped agents' route, on the simulated provider.
const AGENTS_ROUTE: &str = "\n[routes.agents]\nprovider = \"simulated\"\nmodel = \"simulated-1\"\n";

/// Starts a workflow for `spec` as the gateway would; returns its id.
async fn start(stack: &Stack, spec: Value) -> TaskId {
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

/// The workflow's state once it has ended.
async fn finished(stack: &Stack, id: TaskId) -> Value {
    let workflows = async_nats::jetstream::new(stack.client.clone())
        .get_key_value("workflows")
        .await
        .unwrap();
    eventually(Duration::from_secs(60), || async {
        let bytes = workflows.get(id.to_string()).await.unwrap()?;
        let wf: Value = serde_json::from_slice(&bytes).unwrap();
        ["completed", "failed", "cancelled"]
            .contains(&wf["status"].as_str().unwrap_or_default())
            .then_some(wf)
    })
    .await
}

fn step<'a>(wf: &'a Value, id: &str) -> &'a Value {
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
