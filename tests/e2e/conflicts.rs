//! Conflicts on the shared context, end to end: two parallel steps of one workflow write
//! their answers to one key of the workflow's scope by compare-and-set on the revision each
//! saw when dispatched. Exactly one write wins; the other is a conflict recorded on the task
//! and settled by the workflow's policy (the loser re-run on the winner's revision, or a
//! reviewer's merge), never by keeping the last write.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::Stack;
use crate::workflow_faults::{APPROVE, FAKE_AGENTS, marker, step_requests, user_text};
use crate::workflows::{run_task, step};

/// Runs two parallel research steps that write `findings`, then one that needs both, under
/// `policy`; the model answers slowly enough that both are dispatched on revision 0.
async fn contend(stack: &Stack, policy: &str) -> Value {
    stack.provider.set_latency(Duration::from_millis(300));
    stack.provider.set_reply(&marker("@review"), APPROVE);
    let task = run_task(
        stack,
        json!({
            "goal": "Size the e-bike market",
            "agents": ["researcher", "analyst", "writer", "reviewer"],
            "on_conflict": policy,
            "steps": [
                {"id": "north", "capability": "research", "instruction": "Size the north", "writes": "findings"},
                {"id": "south", "capability": "research", "instruction": "Size the south", "writes": "findings"},
                {"id": "sum", "capability": "analysis", "instruction": "Add them up", "depends_on": ["north", "south"]}
            ]
        }),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    task
}

/// The one conflict recorded, and the step that lost it.
fn the_conflict(task: &Value) -> (&Value, String) {
    let conflicts = task["conflicts"].as_array().expect("conflicts recorded");
    assert_eq!(conflicts.len(), 1, "{task:#}");
    let conflict = &conflicts[0];
    assert_eq!(conflict["key"], "findings");
    assert_eq!(conflict["base_revision"], 0);
    assert_eq!(conflict["current_revision"], 1);
    assert_eq!(conflict["current_by"], "researcher");
    let loser = conflict["step"].as_str().unwrap().to_owned();
    assert!(["north", "south"].contains(&loser.as_str()), "{conflict:#}");
    (conflict, loser)
}

/// The (revision, writer) pairs of `history`.
fn writers(history: &[(u64, String, String)]) -> Vec<(u64, &str)> {
    history.iter().map(|(r, by, _)| (*r, by.as_str())).collect()
}

/// The revisions of `findings` in the task's scope: (revision, writer, value).
async fn findings_history(stack: &Stack, task: &Value) -> Vec<(u64, String, String)> {
    let id = task["id"].as_str().unwrap();
    let history = stack
        .get_json(&format!("/v1/context/{id}/findings/history"))
        .await;
    history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_u64().unwrap(),
                r["by"].as_str().unwrap().to_owned(),
                r["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn other(loser: &str) -> &'static str {
    if loser == "north" { "south" } else { "north" }
}

#[tokio::test]
async fn parallel_writers_of_one_key_one_wins_the_loser_reruns_on_its_revision() {
    let stack = Stack::start_with(1, &[], FAKE_AGENTS).await;
    let task = contend(&stack, "rerun").await;
    let (conflict, loser) = the_conflict(&task);
    assert_eq!(conflict["policy"], "rerun");
    assert_eq!(conflict["resolved_by"], loser.as_str());
    assert_eq!(conflict["resolved_revision"], 2, "{conflict:#}");
    // The winner wrote revision 1; the loser ran twice and wrote revision 2 on top.
    let winner = step(&task, other(&loser));
    assert_eq!(
        (winner["written"].as_u64(), winner["attempt"].as_u64()),
        (Some(1), None)
    );
    let lost = step(&task, &loser);
    assert_eq!(lost["attempt"], 1, "{lost:#}");
    assert_eq!(lost["written"], 2);
    let runs = step_requests(&stack, &loser);
    assert_eq!(runs.len(), 2);
    // The re-run saw the winner's revision as the entry its answer replaces; the first run
    // saw none.
    let seen = "`findings` (revision 1, by researcher; yours to write";
    assert!(!user_text(&runs[0]).contains(seen));
    assert!(
        user_text(&runs[1]).contains(seen),
        "{}",
        user_text(&runs[1])
    );
    // The two parallel steps' model calls overlapped in time.
    assert!(stack.provider.most_at_once() >= 2);
    assert_eq!(step_requests(&stack, other(&loser)).len(), 1);
    // Both writes are in the key's history, in order, each by the researcher: nothing was
    // overwritten silently.
    let history = findings_history(&stack, &task).await;
    assert_eq!(writers(&history), [(1, "researcher"), (2, "researcher")]);
    assert!(history[0].2.contains(&marker(other(&loser))), "{history:?}");
    assert!(history[1].2.contains(&marker(&loser)), "{history:?}");
    // The progress stream said so.
    let events = stack
        .http
        .get(format!(
            "{}/v1/tasks/{}/events",
            stack.base,
            task["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("conflict"), "{events}");
    stack.stop().await;
}

#[tokio::test]
async fn under_the_merge_policy_a_reviewer_merges_the_versions_before_dependents_run() {
    let stack = Stack::start_with(1, &[], FAKE_AGENTS).await;
    let task = contend(&stack, "merge").await;
    let (conflict, loser) = the_conflict(&task);
    let merge = format!("@merge-{loser}");
    assert_eq!(conflict["policy"], "merge");
    assert_eq!(conflict["resolved_by"], merge.as_str());
    assert_eq!(conflict["resolved_revision"], 2, "{conflict:#}");
    let merged = step(&task, &merge);
    assert_eq!(merged["agent"], "reviewer");
    assert_eq!(merged["written"], 2);
    // The merge saw the losing version as its input; the dependent waited for the merge.
    let merge_prompt = &step_requests(&stack, &merge)[0];
    assert!(
        merge_prompt
            .to_string()
            .contains(&format!("Output of step `{loser}`")),
        "{merge_prompt}"
    );
    let sum = step(&task, "sum");
    assert!(
        sum["depends_on"]
            .as_array()
            .unwrap()
            .contains(&json!(merge))
    );
    let history = findings_history(&stack, &task).await;
    assert_eq!(writers(&history), [(1, "researcher"), (2, "reviewer")]);
    stack.stop().await;
}
