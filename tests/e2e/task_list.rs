//! `GET /v1/tasks` and `switchyard tasks list`: workflows listed newest first from the
//! `workflows` bucket, filtered by status, bounded by `limit`, checked parameters.

use std::process::Command;

use serde_json::{Value, json};

use crate::harness::Stack;
use crate::workflows::{AGENTS_ROUTE, ended, post_task, task_until};

/// Submits a task (with an `Idempotency-Key` when given) and waits until `until` holds for it;
/// returns its id.
async fn submit(
    stack: &Stack,
    body: Value,
    key: Option<&str>,
    until: impl Fn(&Value) -> bool,
) -> String {
    let response = match key {
        None => post_task(stack, body).await,
        Some(key) => stack
            .http
            .post(format!("{}/v1/tasks", stack.base))
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap(),
    };
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    task_until(stack, &id, until).await;
    id
}

fn awaiting(task: &Value) -> bool {
    task["status"] == "awaiting_approval"
}

/// `GET /v1/tasks` with `query`: status and body.
async fn list(stack: &Stack, query: &str) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{}/v1/tasks{query}", stack.base))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn ids(list: &Value) -> Vec<&str> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn tasks_are_listed_newest_first_by_creation_filtered_and_bounded() {
    let stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    let (status, empty) = list(&stack, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        empty,
        json!({"object": "list", "data": [], "has_more": false})
    );

    let alpha = submit(
        &stack,
        json!({"goal": "Alpha: draft a press release", "approval": true}),
        None,
        awaiting,
    )
    .await;
    let long_goal = format!(
        "Beta: compare bike-share schemes\nacross cities.\n{}",
        "Consider cost, safety and reach. ".repeat(10)
    );
    let beta = submit(&stack, json!({"goal": long_goal}), None, ended).await;
    // Named by an idempotency key: a name-based id, not time-ordered like the others.
    let gamma = submit(
        &stack,
        json!({"goal": "Gamma: summarize cycling research", "team": "research"}),
        Some("task-list-gamma"),
        ended,
    )
    .await;
    // Alpha, the oldest, is written last: approved after the others finished.
    let approve = stack
        .http
        .post(format!("{}/v1/tasks/{alpha}/approve", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(approve.status(), 202);
    task_until(&stack, &alpha, |t| t["status"] == "completed").await;
    let delta = submit(
        &stack,
        json!({"goal": "Delta: a launch plan", "approval": true}),
        None,
        awaiting,
    )
    .await;

    let (status, all) = list(&stack, "").await;
    assert_eq!(status, 200);
    assert_eq!(all["object"], "list");
    assert_eq!(ids(&all), [&delta, &gamma, &beta, &alpha], "{all:#}");
    assert_eq!(all["has_more"], false);
    // Each summary agrees with the task's full state.
    for summary in all["data"].as_array().unwrap() {
        let id = summary["id"].as_str().unwrap();
        let task = stack.get_json(&format!("/v1/tasks/{id}")).await;
        assert_eq!(summary["object"], "task");
        for field in ["status", "team", "created_ms", "usage"] {
            assert_eq!(summary[field], task[field], "{field} of {id}");
        }
        let steps = task["steps"].as_array().unwrap();
        let done = steps.iter().filter(|s| s["status"] == "completed").count();
        assert_eq!(
            summary["steps"],
            json!({"done": done, "total": steps.len()})
        );
        assert!(
            summary.get("output").is_none(),
            "a summary carries no output"
        );
    }
    let by_id = |id: &str| {
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&delta)["status"], "awaiting_approval");
    assert_eq!(by_id(&gamma)["team"], "research");
    assert_eq!(by_id(&alpha)["goal"], "Alpha: draft a press release");
    // The long goal is one line, cut with an ellipsis.
    let preview = by_id(&beta)["goal"].as_str().unwrap().to_owned();
    assert!(
        preview.starts_with("Beta: compare bike-share schemes across cities. Consider"),
        "{preview}"
    );
    assert!(preview.ends_with('…'), "{preview}");
    assert_eq!(preview.chars().count(), 120);
    let steps = &by_id(&beta)["steps"];
    assert_eq!(steps["done"], steps["total"]);
    assert!(steps["total"].as_u64().unwrap() >= 3);

    // A page is the newest by creation, not the most recently changed (Alpha).
    let (_, one) = list(&stack, "?limit=1").await;
    assert_eq!(ids(&one), [&delta]);
    assert_eq!(one["has_more"], true);
    let (_, three) = list(&stack, "?limit=3").await;
    assert_eq!(ids(&three), [&delta, &gamma, &beta]);
    assert_eq!(three["has_more"], true);

    let (_, completed) = list(&stack, "?status=completed").await;
    assert_eq!(ids(&completed), [&gamma, &beta, &alpha]);
    assert_eq!(completed["has_more"], false);
    let (_, waiting) = list(&stack, "?status=awaiting_approval&limit=5").await;
    assert_eq!(ids(&waiting), [&delta]);
    let (_, first_completed) = list(&stack, "?limit=1&status=completed").await;
    assert_eq!(ids(&first_completed), [&gamma]);
    let (_, failed) = list(&stack, "?status=failed").await;
    assert_eq!(ids(&failed), Vec::<&str>::new());

    // Bad parameters are refused, each by name.
    for (query, param) in [
        ("?status=done", "status"),
        ("?status=Completed", "status"),
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=twenty", "limit"),
        ("?limit=-1", "limit"),
        ("?limit=5&limit=6", "limit"),
        ("?state=running", "state"),
    ] {
        let (status, body) = list(&stack, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{query}");
        assert_eq!(body["error"]["param"], param, "{query}: {body}");
    }
    let (_, body) = list(&stack, "?status=done").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("awaiting_approval"), "{message}");
    stack.stop().await;
}

fn switchyard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env_remove("NATS_URL").env_remove("SWITCHYARD_CONFIG");
    cmd
}

/// Runs `switchyard tasks list` with `args` against the stack's gateway: exit success,
/// stdout, stderr.
async fn tasks_list(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    let mut cmd = switchyard();
    cmd.args(["tasks", "list", "--url", &stack.base]).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn switchyard_tasks_list_prints_a_plain_table_newest_first() {
    let stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    let (ok, stdout, stderr) = tasks_list(&stack, &[]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "no tasks\n");

    let older = submit(
        &stack,
        json!({"goal": "Write a market analysis of electric bikes"}),
        None,
        ended,
    )
    .await;
    let newer = submit(
        &stack,
        json!({"goal": "Draft a press release", "approval": true}),
        None,
        awaiting,
    )
    .await;
    let older_task = stack.get_json(&format!("/v1/tasks/{older}")).await;
    assert_eq!(older_task["status"], "completed");
    let total = older_task["steps"].as_array().unwrap().len();
    let tokens = older_task["usage"]["prompt_tokens"].as_u64().unwrap()
        + older_task["usage"]["completion_tokens"].as_u64().unwrap();

    let (ok, stdout, stderr) = tasks_list(&stack, &[]).await;
    assert!(ok, "{stderr}");
    assert!(
        !stdout.contains('\u{1b}'),
        "terminal codes in a pipe:\n{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "STATUS", "STEPS", "TOKENS", "COST", "AGE", "GOAL"]
    );
    // Newest first; each line: id, status, steps done/total, tokens, cost, age, goal.
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[0], newer);
    assert_eq!(cells[1], "awaiting_approval");
    assert!(lines[1].ends_with("Draft a press release"), "{stdout}");
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(cells[0], older);
    assert_eq!(cells[1], "completed");
    assert_eq!(cells[2], format!("{total}/{total}"));
    assert_eq!(cells[3], tokens.to_string());
    // The simulated model has no price here: no cost to show.
    assert_eq!(cells[4], "-");
    assert!(
        lines[2].ends_with("Write a market analysis of electric bikes"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = tasks_list(&stack, &["--status", "completed", "--limit", "1"]).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[1].starts_with(&older), "{stdout}");

    let (ok, stdout, stderr) = tasks_list(&stack, &["--limit", "1"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.lines().nth(1).unwrap().starts_with(&newer),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with("(more tasks than shown: raise --limit, or filter with --status)"),
        "{stdout}"
    );

    // The gateway's refusal, by the parameter it names, is the command's error.
    let (ok, stdout, stderr) = tasks_list(&stack, &["--status", "finished"]).await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("400"), "{stderr}");
    assert!(stderr.contains("status must be one of"), "{stderr}");
    // The limit is checked before anything is asked.
    let (ok, _, stderr) = tasks_list(&stack, &["--limit", "500"]).await;
    assert!(!ok);
    assert!(stderr.contains("--limit"), "{stderr}");
    stack.stop().await;
}
