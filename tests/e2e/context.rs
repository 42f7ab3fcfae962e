//! Shared context (`/v1/context/{scope}/{key}`, the `context` bucket): the HTTP round trip
//! with ETags, concurrent writers on one key (exactly one wins per revision, the others
//! get 409 with the current entry, and retries lose no update), history, bad names and the
//! size limit; and the worker-side interface on the same bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::context::{Context, ContextError, MAX_VALUE_BYTES};
use tokio::sync::Barrier;

use crate::harness::{Stack, eventually};

const WRITERS: usize = 8;

/// `method /v1/context/<path>` with optional `If-Match`, writer and JSON body.
async fn call(
    stack: &Stack,
    method: Method,
    path: &str,
    if_match: Option<&str>,
    writer: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut request = stack
        .http
        .request(method, format!("{}/v1/context/{path}", stack.base));
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    if let Some(writer) = writer {
        request = request.header("x-switchyard-writer", writer);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

fn etag(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("etag")
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The revision in a quoted ETag.
fn revision(tag: &str) -> u64 {
    tag.trim_matches('"').parse().unwrap()
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn context_round_trip_with_etags_history_and_refusals() {
    let stack = Stack::start(0, &[]).await;
    let path = "team-research/plan";

    // Create: 201 with the revision in a quoted ETag.
    let created = call(
        &stack,
        Method::PUT,
        path,
        None,
        None,
        Some(&json!({"step": 1})),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let first = etag(&created);
    assert!(first.starts_with('"') && first.ends_with('"'), "{first}");

    let got = call(&stack, Method::GET, path, None, None, None).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(etag(&got), first);
    assert_eq!(got.headers()["x-switchyard-writer"], "api");
    assert_eq!(got.json::<Value>().await.unwrap(), json!({"step": 1}));

    // Creating again is a conflict carrying the current entry.
    let again = call(
        &stack,
        Method::PUT,
        path,
        None,
        None,
        Some(&json!({"step": 9})),
    )
    .await;
    assert_eq!(etag(&again), first);
    let (status, body) = error_of(again).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "revision_mismatch");
    assert_eq!(body["current"]["value"], json!({"step": 1}));
    assert_eq!(body["current"]["revision"], revision(&first));

    // Update at the current revision, as a named writer.
    let updated = call(
        &stack,
        Method::PUT,
        path,
        Some(&first),
        Some("planner"),
        Some(&json!({"step": 2})),
    )
    .await;
    assert_eq!(updated.status(), StatusCode::OK);
    let second = etag(&updated);
    assert!(revision(&second) > revision(&first));

    // A write on the stale revision: 409 with the current value and revision.
    let stale = call(
        &stack,
        Method::PUT,
        path,
        Some(&first),
        Some("writer"),
        Some(&json!({"step": 3})),
    )
    .await;
    assert_eq!(etag(&stale), second);
    let (status, body) = error_of(stale).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["current"]["value"], json!({"step": 2}));
    assert_eq!(body["current"]["revision"], revision(&second));
    assert_eq!(body["current"]["by"], "planner");

    // `If-Match: *` writes over whatever is there.
    let any = call(
        &stack,
        Method::PUT,
        path,
        Some("*"),
        Some("coder"),
        Some(&json!("any")),
    )
    .await;
    assert_eq!(any.status(), StatusCode::OK);
    let third = etag(&any);

    // A stale delete is refused; a delete at the current revision goes through.
    let (status, body) =
        error_of(call(&stack, Method::DELETE, path, Some(&second), None, None).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["current"]["value"], "any");
    let deleted = call(
        &stack,
        Method::DELETE,
        path,
        Some(&third),
        Some("reviewer"),
        None,
    )
    .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        call(&stack, Method::GET, path, None, None, None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&stack, Method::DELETE, path, None, None, None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // `*` needs an entry; a deleted key can be created again.
    let (status, body) =
        error_of(call(&stack, Method::PUT, path, Some("*"), None, Some(&json!(1))).await).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(body["error"]["code"], "precondition_failed");
    let recreated = call(&stack, Method::PUT, path, None, None, Some(&json!([1, 2]))).await;
    assert_eq!(recreated.status(), StatusCode::CREATED);

    // History: every change, oldest first, with who and when.
    let history = stack.get_json(&format!("/v1/context/{path}/history")).await;
    let rows: Vec<(String, String, Value)> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r["at_ms"].as_u64().unwrap() > 0, "{r}");
            (
                r["operation"].as_str().unwrap().to_owned(),
                r["by"].as_str().unwrap_or("?").to_owned(),
                r["value"].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String, Value)> = [
        ("put", "api", json!({"step": 1})),
        ("put", "planner", json!({"step": 2})),
        ("put", "coder", json!("any")),
        ("delete", "reviewer", Value::Null),
        ("put", "api", json!([1, 2])),
    ]
    .into_iter()
    .map(|(o, b, v)| (o.to_owned(), b.to_owned(), v))
    .collect();
    assert_eq!(rows, expected);
    let revisions: Vec<u64> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");

    // The scope's keys; a deleted key is not listed.
    call(
        &stack,
        Method::PUT,
        "team-research/facts",
        None,
        None,
        Some(&json!({})),
    )
    .await;
    call(
        &stack,
        Method::PUT,
        "team-research/gone",
        None,
        None,
        Some(&json!(0)),
    )
    .await;
    call(
        &stack,
        Method::DELETE,
        "team-research/gone",
        None,
        None,
        None,
    )
    .await;
    call(
        &stack,
        Method::PUT,
        "team-other/plan",
        None,
        None,
        Some(&json!(0)),
    )
    .await;
    let listed = stack.get_json("/v1/context/team-research").await;
    let keys: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["facts", "plan"]);
    assert_eq!(listed["truncated"], false);
    let empty = stack.get_json("/v1/context/nobody-here").await;
    assert_eq!(empty["data"], json!([]));

    // Bad names, named; malformed JSON; a value over the limit.
    for (method, bad_path, param) in [
        (Method::GET, "Team/plan", "scope"),
        (Method::PUT, "team/pl%20an", "key"),
        (Method::GET, "a%2Eb/plan", "scope"),
        (Method::GET, "team/k%2A/history", "key"),
        (Method::GET, "team%3E", "scope"),
    ] {
        let (status, body) =
            error_of(call(&stack, method, bad_path, None, None, Some(&json!(1))).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad_path}: {body}");
        assert_eq!(body["error"]["param"], param, "{bad_path}: {body}");
    }
    let (status, body) = error_of(
        call(
            &stack,
            Method::PUT,
            "team/k",
            None,
            Some("bad writer"),
            Some(&json!(1)),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "x-switchyard-writer");
    let (status, body) = error_of(
        call(
            &stack,
            Method::PUT,
            "team/k",
            Some("W/\"3\""),
            None,
            Some(&json!(1)),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "if-match");
    let malformed = stack
        .http
        .put(format!("{}/v1/context/team/k", stack.base))
        .header("content-type", "application/json")
        .body("{\"a\":")
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(malformed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_json");
    let big = json!("x".repeat(MAX_VALUE_BYTES));
    let (status, body) =
        error_of(call(&stack, Method::PUT, "team/k", None, None, Some(&big)).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "value_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("artifacts")
    );
    assert_eq!(
        call(&stack, Method::GET, "team/k", None, None, None)
            .await
            .status(),
        StatusCode::NOT_FOUND,
        "nothing refused was stored"
    );
    stack.stop().await;
}

/// One writer's `If-Match` write of `list` + its name; the answer's status, the new or
/// current revision and the current list (on a conflict).
async fn append(
    stack: &Stack,
    name: &str,
    mut list: Vec<Value>,
    at: u64,
) -> (StatusCode, u64, Vec<Value>) {
    list.push(json!(name));
    let response = call(
        stack,
        Method::PUT,
        "wf-concurrent/names",
        Some(&format!("\"{at}\"")),
        Some(name),
        Some(&Value::Array(list)),
    )
    .await;
    let status = response.status();
    let tag = revision(&etag(&response));
    let body: Value = response.json().await.unwrap();
    assert!(
        status == StatusCode::OK || status == StatusCode::CONFLICT,
        "{name}: {status} {body}"
    );
    if status == StatusCode::OK {
        return (status, tag, Vec::new());
    }
    assert_eq!(body["current"]["revision"], tag, "{body}");
    let current = body["current"]["value"].as_array().unwrap().clone();
    (status, tag, current)
}

#[tokio::test]
async fn concurrent_writers_on_one_key_lose_no_update() {
    let stack = Arc::new(Stack::start(0, &[]).await);
    let created = call(
        &stack,
        Method::PUT,
        "wf-concurrent/names",
        None,
        None,
        Some(&json!([])),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let start = revision(&etag(&created));

    // Every writer writes on the same revision at once, then retries on the revision
    // its conflict names until its write is in.
    let barrier = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (stack, barrier) = (stack.clone(), barrier.clone());
            tokio::spawn(async move {
                let name = format!("writer-{i}");
                let mut attempts = Vec::new();
                let (mut list, mut at) = (Vec::new(), start);
                barrier.wait().await;
                loop {
                    let (status, revision, current) = append(&stack, &name, list, at).await;
                    attempts.push((at, status, revision));
                    if status == StatusCode::OK {
                        return attempts;
                    }
                    (list, at) = (current, revision);
                }
            })
        })
        .collect();
    let mut by_revision: BTreeMap<u64, Vec<(StatusCode, u64)>> = BTreeMap::new();
    for writer in writers {
        for (at, status, revision) in writer.await.unwrap() {
            by_revision.entry(at).or_default().push((status, revision));
        }
    }

    // The first round: one winner, seven conflicts, each naming the winner's revision or
    // a later one (another loser may have retried and won before its conflict was read).
    let first_round = &by_revision[&start];
    assert_eq!(first_round.len(), WRITERS);
    let winners: Vec<u64> = first_round
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(winners.len(), 1, "{first_round:?}");
    assert!(
        first_round
            .iter()
            .filter(|(s, _)| *s == StatusCode::CONFLICT)
            .all(|(_, r)| *r >= winners[0]),
        "{first_round:?}"
    );
    // Exactly one write went in at every revision anyone wrote on.
    for (at, answers) in &by_revision {
        let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
        assert_eq!(ok, 1, "revision {at}: {answers:?}");
    }
    assert_eq!(by_revision.len(), WRITERS);

    // No lost update: every writer's name is in, once.
    let got = call(&stack, Method::GET, "wf-concurrent/names", None, None, None).await;
    let names: Vec<String> = got.json::<Vec<String>>().await.unwrap();
    let distinct: BTreeSet<&String> = names.iter().collect();
    assert_eq!(names.len(), WRITERS, "{names:?}");
    assert_eq!(distinct.len(), WRITERS, "{names:?}");

    // The history shows the writers in the order their names went in.
    let history = stack
        .get_json("/v1/context/wf-concurrent/names/history")
        .await;
    let writers: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["by"].as_str().unwrap())
        .collect();
    let mut expected = vec!["api"];
    expected.extend(names.iter().map(String::as_str));
    assert_eq!(writers, expected);
    Arc::into_inner(stack).unwrap().stop().await;
}

#[tokio::test]
async fn the_worker_interface_shares_the_bucket_with_the_api() {
    let stack = Stack::start(0, &[]).await;
    let js = async_nats::jetstream::new(stack.client.clone());
    let store = shared::provision::context_bucket(&js, 1).await.unwrap();
    let context = Context::new(js, store);

    let first = context
        .create("wf-1", "outline", &json!(["intro"]), "researcher")
        .await
        .unwrap();
    let got = call(&stack, Method::GET, "wf-1/outline", None, None, None).await;
    assert_eq!(revision(&etag(&got)), first);
    assert_eq!(got.headers()["x-switchyard-writer"], "researcher");

    // A client writes; the step's write on what it read is refused with the client's entry.
    let updated = call(
        &stack,
        Method::PUT,
        "wf-1/outline",
        Some(&format!("\"{first}\"")),
        Some("writer"),
        Some(&json!(["intro", "body"])),
    )
    .await;
    let second = revision(&etag(&updated));
    match context
        .put_if(
            "wf-1",
            "outline",
            &json!(["intro", "end"]),
            "researcher",
            first,
        )
        .await
    {
        Err(ContextError::Conflict {
            current: Some(current),
        }) => {
            assert_eq!(current.revision, second);
            assert_eq!(current.envelope.value, json!(["intro", "body"]));
            assert_eq!(current.envelope.by, "writer");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        context
            .create("wf-1", "outline", &json!(0), "researcher")
            .await,
        Err(ContextError::Conflict { current: Some(_) })
    ));
    let third = context
        .put_if(
            "wf-1",
            "outline",
            &json!(["intro", "body", "end"]),
            "researcher",
            second,
        )
        .await
        .unwrap();
    let current = context.get("wf-1", "outline").await.unwrap().unwrap();
    assert_eq!(current.revision, third);
    assert_eq!(current.envelope.value, json!(["intro", "body", "end"]));

    context
        .delete("wf-1", "outline", "reviewer", Some(third))
        .await
        .unwrap();
    assert_eq!(context.get("wf-1", "outline").await.unwrap(), None);
    let history = context.history("wf-1", "outline").await.unwrap();
    let by: Vec<Option<&str>> = history.iter().map(|r| r.by.as_deref()).collect();
    assert_eq!(
        by,
        [
            Some("researcher"),
            Some("writer"),
            Some("researcher"),
            Some("reviewer")
        ]
    );
    assert!(matches!(
        context.get("wf.1", "outline").await,
        Err(ContextError::BadName { which: "scope", .. })
    ));
    stack.stop().await;
}

/// `switchyard context <args> --url <gateway>`: its exit status, stdout and stderr.
async fn cli(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env_remove("NATS_URL")
        .env_remove("SWITCHYARD_CONFIG")
        .arg("context")
        .args(args)
        .args(["--url", &stack.base]);
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
async fn the_cli_writes_on_the_revision_it_read() {
    let stack = Stack::start(0, &[]).await;
    let (ok, out, err) = cli(&stack, &["put", "team-cli", "plan", r#"{"draft": 1}"#]).await;
    assert!(ok, "{out}{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let first = created["revision"].as_u64().unwrap();

    let (ok, out, err) = cli(&stack, &["get", "team-cli", "plan"]).await;
    assert!(ok, "{out}{err}");
    let entry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(entry["revision"], first);
    assert_eq!(entry["by"], "api");
    assert_eq!(entry["value"], json!({"draft": 1}));

    let at = first.to_string();
    let args = [
        "put",
        "team-cli",
        "plan",
        "[2]",
        "--if-match",
        &at,
        "--writer",
        "editor",
    ];
    let (ok, out, err) = cli(&stack, &args).await;
    assert!(ok, "{out}{err}");
    // The same revision again is stale: refused, showing the current entry.
    let (ok, _, err) = cli(&stack, &args).await;
    assert!(!ok);
    assert!(err.contains("409") && err.contains("editor"), "{err}");

    let (ok, out, err) = cli(&stack, &["list", "team-cli"]).await;
    assert!(ok, "{out}{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["data"][0]["key"], "plan");
    let (ok, out, err) = cli(
        &stack,
        &["delete", "team-cli", "plan", "--writer", "editor"],
    )
    .await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&stack, &["history", "team-cli", "plan"]).await;
    assert!(ok, "{out}{err}");
    let history: Value = serde_json::from_str(&out).unwrap();
    let ops: Vec<(&str, &str)> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["operation"].as_str().unwrap(), r["by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [("put", "api"), ("put", "editor"), ("delete", "editor")]
    );
    let (ok, _, err) = cli(&stack, &["get", "team-cli", "plan"]).await;
    assert!(!ok && err.contains("404"), "{err}");
    stack.stop().await;
}

#[tokio::test]
async fn while_nats_is_away_context_is_a_503_and_then_back() {
    let mut stack = Stack::start(0, &[]).await;
    let created = call(
        &stack,
        Method::PUT,
        "team-x/fact",
        None,
        None,
        Some(&json!(1)),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    stack.nats.stop();
    let (status, body) =
        error_of(call(&stack, Method::GET, "team-x/fact", None, None, None).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    stack.nats.start_again();
    let value = eventually(std::time::Duration::from_secs(20), || async {
        let got = call(&stack, Method::GET, "team-x/fact", None, None, None).await;
        (got.status() == StatusCode::OK).then_some(())?;
        got.json::<Value>().await.ok()
    })
    .await;
    assert_eq!(value, json!(1));
    stack.stop().await;
}
