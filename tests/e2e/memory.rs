//! The episodic memory end to end: workflows run by real workers (the agents' model a fake
//! provider whose reviewer is scripted to ask for a revision), their events followed by
//! `switchyard memory` into its SQLite index, searched through `GET /v1/memory/search` and
//! the `shared::memory::search` client; the index file deleted and rebuilt from `EVENTS`
//! answering the same; retention bounding it.

use std::time::Duration;

use serde_json::{Value, json};
use shared::memory::{Kind, Query};

use crate::harness::{Stack, eventually};
use crate::workflows::{AGENTS_ROUTE, run_task};

/// The shipped agents' route, on the fake provider, so each step's answer can be scripted.
const FAKE_AGENTS: &str = "\n[routes.agents]\nprovider = \"fake\"\nmodel = \"fake-model\"\n";
const APPROVE: &str = r#"{"verdict": "approve", "score": 0.9, "feedback": "Ready."}"#;
const FEEDBACK: &str = "Add the maintenance costs of the docks.";
const BIKE_COSTS: &str = "Bikes cost 900 EUR each; a dock costs 4000 EUR.";

/// The marker of step `id`'s prompt, for scripting its answer.
fn marker(id: &str) -> String {
    format!("Your step ({id})")
}

/// The last sequence of a workflow event in `EVENTS`, once each of `workflows` has its
/// `done` there (it is published just after the state that `run_task` waits for).
async fn settled(stack: &Stack, workflows: &[&str]) -> u64 {
    let js = async_nats::jetstream::new(stack.client.clone());
    eventually(Duration::from_secs(20), || async {
        let mut stream = js.get_stream("EVENTS").await.ok()?;
        let state = stream.info().await.ok()?.state.clone();
        let (mut last, mut done) = (0, Vec::new());
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            if let Some(id) = message.subject.as_str().strip_prefix("events.workflow.") {
                last = seq;
                let event: Value = serde_json::from_slice(&message.payload).ok()?;
                if event["kind"] == "done" {
                    done.push(id.to_owned());
                }
            }
        }
        workflows
            .iter()
            .all(|w| done.iter().any(|d| d == w))
            .then_some(last)
    })
    .await
}

/// `GET /v1/memory/search` with `params`: the status and the body.
async fn search(stack: &Stack, params: &[(&str, &str)]) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{}/v1/memory/search", stack.base))
        .query(params)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The hits of a search that must succeed.
async fn hits(stack: &Stack, params: &[(&str, &str)]) -> Vec<Value> {
    let (status, body) = search(stack, params).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["object"], "list");
    body["data"].as_array().unwrap().clone()
}

/// Waits until the index has applied every event up to `seq`.
async fn indexed(stack: &Stack, seq: u64) {
    eventually(Duration::from_secs(20), || async {
        let (status, body) = search(stack, &[("q", "anything")]).await;
        (status == 200 && body["indexed_seq"].as_u64()? >= seq).then_some(())
    })
    .await;
}

fn find<'a>(hits: &'a [Value], id: &str) -> Option<&'a Value> {
    hits.iter().find(|h| h["id"] == id)
}

/// A stack with the memory index whose agents' model answers the `bike-costs` step with
/// [`BIKE_COSTS`] and whose reviewer asks once for a revision ([`FEEDBACK`]), then approves.
async fn reviewed_once() -> Stack {
    let mut stack = Stack::start_with(1, &[], FAKE_AGENTS).await;
    stack.start_memory().await;
    stack.provider.set_reply(&marker("bike-costs"), BIKE_COSTS);
    stack.provider.push_reply(
        &marker("@review"),
        &json!({"verdict": "revise", "score": 0.4, "feedback": FEEDBACK}).to_string(),
    );
    stack.provider.set_reply(&marker("@review-2"), APPROVE);
    stack
}

#[tokio::test]
async fn past_work_and_reviews_are_found_and_a_rebuilt_index_answers_the_same() {
    // A team's task whose reviewer asks for one revision, with feedback.
    let mut stack = reviewed_once().await;
    let bikes = run_task(
        &stack,
        json!({"goal": "Cost out a bike-share for Lisbon", "team": "research", "steps": [
            {"id": "bike-costs", "capability": "research", "instruction": "Find the purchase costs of bikes and docks"}]}),
    )
    .await;
    assert_eq!(bikes["status"], "completed", "{bikes:#}");
    assert_eq!(bikes["revisions"], 1);
    // Another task, without a team, approved at once.
    stack.provider.set_reply(&marker("@review"), APPROVE);
    let scooters = run_task(
        &stack,
        json!({"goal": "Compare e-scooter rentals", "steps": [
            {"id": "scooter-fleet", "capability": "research", "instruction": "Count the scooter fleets in Porto"}]}),
    )
    .await;
    assert_eq!(scooters["status"], "completed", "{scooters:#}");
    let (bikes, scooters) = (
        bikes["id"].as_str().unwrap().to_owned(),
        scooters["id"].as_str().unwrap().to_owned(),
    );
    let last = settled(&stack, &[&bikes, &scooters]).await;
    indexed(&stack, last).await;

    // The researcher's past work, found by what it was asked.
    let found = hits(
        &stack,
        &[("q", "purchase costs of bikes"), ("agent", "researcher")],
    )
    .await;
    let work = find(&found, &format!("step_output:{bikes}:bike-costs")).unwrap();
    assert_eq!(work["kind"], "step_output");
    assert_eq!(work["agent"], "researcher");
    assert_eq!(work["team"], "research");
    assert_eq!(work["scope"], bikes.as_str());
    assert_eq!(work["workflow"], bikes.as_str());
    assert_eq!(work["text"], BIKE_COSTS);
    assert_eq!(work["brief"], "Find the purchase costs of bikes and docks");
    assert!(found.iter().all(|h| {
        h["agent"] == "researcher"
            || h["about"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("researcher")))
    }));
    // The reviewer's feedback, found as a review of the researcher's and the writer's work.
    let reviews = hits(
        &stack,
        &[
            ("q", "maintenance costs"),
            ("agent", "writer"),
            ("kind", "review"),
        ],
    )
    .await;
    let review = find(&reviews, &format!("review:{bikes}:@review")).unwrap();
    assert_eq!(review["text"], FEEDBACK);
    assert_eq!(review["approved"], false);
    assert_eq!(review["agent"], "reviewer");
    assert_eq!(review["about"], json!(["researcher", "writer"]));
    assert!(reviews.iter().all(|h| h["kind"] == "review"));
    // Narrowed to one task's scope, or to a team.
    let in_scooters = hits(
        &stack,
        &[
            ("q", "scooter fleets Porto bikes"),
            ("scope", scooters.as_str()),
        ],
    )
    .await;
    assert!(
        find(
            &in_scooters,
            &format!("step_output:{scooters}:scooter-fleet")
        )
        .is_some()
    );
    assert!(
        in_scooters.iter().all(|h| h["scope"] == scooters.as_str()),
        "{in_scooters:#?}"
    );
    let in_team = hits(
        &stack,
        &[("q", "scooter fleets Porto bikes"), ("team", "research")],
    )
    .await;
    assert!(!in_team.is_empty());
    assert!(
        in_team.iter().all(|h| h["workflow"] == bikes.as_str()),
        "{in_team:#?}"
    );
    // The completed tasks themselves.
    let tasks = hits(&stack, &[("q", "scooter rentals"), ("kind", "task")]).await;
    assert_eq!(tasks[0]["id"], format!("task:{scooters}"));
    assert_eq!(tasks[0]["brief"], "Compare e-scooter rentals");

    // What a worker preparing a later, similar step asks: past reviews of the writer's work
    // on such goals. The revision request is among the few it gets (the approvals of both
    // tasks' second drafts may rank beside it), with its verdict and the task it was about.
    let mut later = Query::text("Cost out a bike-share for Porto");
    later.agent = Some("writer".into());
    later.kind = Some(Kind::Review);
    later.limit = Some(3);
    let answer = shared::memory::search(&stack.client, &later, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.indexed_seq >= last);
    let note = answer.hits.iter().find(|h| h.text == FEEDBACK).unwrap();
    assert_eq!(note.approved, Some(false));
    assert_eq!(note.workflow.as_deref(), Some(bikes.as_str()));
    assert!(note.about.contains(&"writer".to_owned()));

    // Delete the file: the index is rebuilt from EVENTS and answers the same, in order.
    let queries: [&[(&str, &str)]; 4] = [
        &[("q", "costs bikes docks scooters")],
        &[("q", "maintenance"), ("agent", "researcher")],
        &[("q", "Lisbon Porto bike-share"), ("limit", "3")],
        &[("q", "scooter"), ("kind", "step_output")],
    ];
    let mut before = Vec::new();
    for q in queries {
        before.push(hits(&stack, q).await);
    }
    assert!(before.iter().all(|h| !h.is_empty()));
    stack.stop_memory().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut path = stack.memory_file().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    assert!(!stack.memory_file().exists());
    stack.start_memory().await;
    indexed(&stack, last).await;
    for (q, expected) in queries.iter().zip(&before) {
        assert_eq!(&hits(&stack, q).await, expected, "{q:?}");
    }

    // Bad input names its parameter; no replica is a 503.
    for (params, param) in [
        (vec![("q", "")], "q"),
        (vec![("q", "bikes"), ("limit", "0")], "limit"),
        (vec![("q", "bikes"), ("agent", "Not A Name")], "agent"),
        (vec![("q", "bikes"), ("kind", "chat")], "kind"),
    ] {
        let (status, body) = search(&stack, &params).await;
        assert_eq!(status, 400, "{body:#}");
        assert_eq!(body["error"]["param"], param, "{body:#}");
    }
    stack.stop_memory().await;
    let (status, body) = search(&stack, &[("q", "bikes")]).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["error"]["code"], "memory_unavailable");
    stack.stop().await;
}

#[tokio::test]
async fn a_past_reviewers_note_is_recalled_into_a_later_similar_step_and_recorded() {
    let stack = reviewed_once().await;
    let task = |city: &str| {
        json!({"goal": format!("Cost out a bike-share for {city}"), "team": "research", "steps": [
            {"id": "bike-costs", "capability": "research", "instruction": "Find the purchase costs of bikes and docks"}]})
    };
    let lisbon = run_task(&stack, task("Lisbon")).await;
    assert_eq!(lisbon["revisions"], 1, "{lisbon:#}");
    let lisbon = lisbon["id"].as_str().unwrap().to_owned();
    let last = settled(&stack, &[&lisbon]).await;
    indexed(&stack, last).await;

    // A later, similar task: its writer's synthesis is prompted with the reviewer's
    // request from the first, which it had no other way to see.
    stack.provider.set_reply(&marker("@review"), APPROVE);
    let porto = run_task(&stack, task("Porto")).await;
    assert_eq!(porto["status"], "completed", "{porto:#}");
    let synthesis = stack
        .provider
        .bodies()
        .into_iter()
        .find(|b| {
            let text = b.to_string();
            text.contains("Your step (@synthesis)") && text.contains("for Porto")
        })
        .unwrap();
    let prompt = synthesis["messages"][1]["content"].as_str().unwrap();
    assert!(prompt.contains("# From past work: "), "{prompt}");
    assert!(prompt.contains(FEEDBACK), "{prompt}");
    // The step records which memory it used; the first task's synthesis had none to use.
    let recalled = |task: &Value| -> Vec<String> {
        let step = task["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "@synthesis")
            .unwrap();
        step["prompt"]["sections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "memory" && s["status"] != "dropped")
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        recalled(&porto).contains(&format!("review:{lisbon}:@review")),
        "{:#}",
        porto["steps"]
    );
    let first = stack.get_json(&format!("/v1/tasks/{lisbon}")).await;
    assert!(recalled(&first).is_empty(), "{first:#}");
    stack.stop().await;
}

#[tokio::test]
async fn retention_keeps_only_the_newest_memories() {
    let extra = format!("{AGENTS_ROUTE}\n[memory]\nmax_entries = 2\n");
    let mut stack = Stack::start_with(1, &[], &extra).await;
    stack.start_memory().await;
    let task = run_task(
        &stack,
        json!({"goal": "Summarise bike lanes", "steps": [
            {"id": "north", "capability": "research", "instruction": "Survey the northern bike lanes"},
            {"id": "south", "capability": "research", "instruction": "Survey the southern bike lanes"}]}),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let id = task["id"].as_str().unwrap().to_owned();
    let last = settled(&stack, &[&id]).await;
    indexed(&stack, last).await;
    // Two step outputs, a synthesis and the task (and the review, if it said something) were
    // indexed; the newest two are kept, the task among them.
    let kept = hits(
        &stack,
        &[("q", "bike lanes survey summarise"), ("limit", "50")],
    )
    .await;
    assert_eq!(kept.len(), 2, "{kept:#?}");
    assert!(find(&kept, &format!("task:{id}")).is_some(), "{kept:#?}");
    assert!(find(&kept, &format!("step_output:{id}:north")).is_none());
    stack.stop().await;
}
