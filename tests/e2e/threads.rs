//! Threads and sessions end to end: clients post to a thread and list it in order; a
//! follower over SSE, started before a workflow runs, sees each agent's step insight once and
//! in dependency order, then a client's message, and resumes after `Last-Event-ID`; a chat
//! session's later turns carry its earlier ones to the provider, streamed turns included.

use std::time::Duration;

use serde_json::{Value, json};
use shared::TaskId;
use shared::threads::{Author, AuthorKind, Post};

use crate::harness::{Stack, chat_body, content, eventually, requests_with, sse_data};
use crate::workflows::{AGENTS_ROUTE, task_until};

/// The messages of an SSE body so far, as (id, message) pairs.
fn sse_messages(body: &str) -> Vec<(u64, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let id = field("id:")?.parse().ok()?;
            Some((id, serde_json::from_str(&field("data:")?).ok()?))
        })
        .collect()
}

/// Reads a thread's event stream until a message's content is `last`; its messages.
async fn follow_until(response: &mut reqwest::Response, last: &str) -> Vec<(u64, Value)> {
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let chunk = response.chunk().await.unwrap().expect("the stream ended");
            body.push_str(std::str::from_utf8(&chunk).unwrap());
            let messages = sse_messages(&body);
            if messages.iter().any(|(_, m)| m["content"] == last) {
                return messages;
            }
        }
    })
    .await
    .expect("the message never came")
}

async fn post(stack: &Stack, thread: &str, body: Value) -> reqwest::Response {
    stack
        .http
        .post(format!("{}/v1/threads/{thread}/messages", stack.base))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn clients_post_and_list_a_thread_in_order_a_page_at_a_time() {
    let stack = Stack::start(1, &[]).await;
    let mut ids = Vec::new();
    for (i, author) in ["ada", "grace", "ada"].iter().enumerate() {
        let response = post(
            &stack,
            "design-review",
            json!({"content": format!("point {i}"), "author": author, "role": "user"}),
        )
        .await;
        assert_eq!(response.status(), 201);
        let posted: Value = response.json().await.unwrap();
        assert_eq!(posted["author"], json!({"kind": "client", "name": author}));
        ids.push(posted["id"].as_u64().unwrap());
    }
    let all = stack.get_json("/v1/threads/design-review/messages").await;
    assert_eq!(all["object"], "list");
    assert_eq!(all["has_more"], false);
    let contents: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["point 0", "point 1", "point 2"]);
    // A page, then the rest after its last id.
    let first = stack
        .get_json("/v1/threads/design-review/messages?limit=2")
        .await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["has_more"], true);
    let rest = stack
        .get_json(&format!(
            "/v1/threads/design-review/messages?after={}",
            ids[1]
        ))
        .await;
    assert_eq!(rest["data"][0]["id"], ids[2]);
    assert_eq!(rest["has_more"], false);
    // Another thread is empty, not missing.
    let other = stack.get_json("/v1/threads/elsewhere/messages").await;
    assert_eq!(other["data"], json!([]));
    // A post JetStream has seen under the same message id is kept once.
    let js = async_nats::jetstream::new(stack.client.clone());
    let note = Post {
        author: Author {
            kind: AuthorKind::System,
            name: "test".into(),
        },
        role: None,
        content: "once".into(),
        workflow: None,
        step: None,
    };
    let a = shared::threads::post(&js, "design-review", &note, "note-1")
        .await
        .unwrap();
    let b = shared::threads::post(&js, "design-review", &note, "note-1")
        .await
        .unwrap();
    assert_eq!(a.id, b.id);
    let page = shared::threads::read(&js, "design-review", ids[2], 10)
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1, "{page:?}");
    // Cleared, the thread is empty.
    let cleared = stack
        .http
        .delete(format!("{}/v1/threads/design-review/messages", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    let after = stack.get_json("/v1/threads/design-review/messages").await;
    assert_eq!(after["data"], json!([]));
    stack.stop().await;
}

#[tokio::test]
async fn bad_thread_requests_are_refused_naming_the_field() {
    let stack = Stack::start_with(0, &[], "[threads]\nmax_message_bytes = 1000\n").await;
    let refused = |response: reqwest::Response, status: u16| async move {
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        body["error"].clone()
    };
    let error = refused(
        post(&stack, "Not.A.Thread", json!({"content": "x"})).await,
        400,
    )
    .await;
    assert_eq!(error["param"], "thread", "{error}");
    let listed = stack
        .http
        .get(format!("{}/v1/threads/a%2A/messages", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused(listed, 400).await["param"], "thread");
    let error = refused(post(&stack, "t", json!({"author": "ada"})).await, 400).await;
    assert_eq!(error["param"], "content", "{error}");
    let error = refused(post(&stack, "t", json!({"content": " "})).await, 400).await;
    assert_eq!(error["param"], "content", "{error}");
    let error = refused(
        post(&stack, "t", json!({"content": "x", "role": "boss"})).await,
        400,
    )
    .await;
    assert_eq!(error["param"], "role", "{error}");
    let error = refused(
        post(&stack, "t", json!({"content": "x", "author": "a\nb"})).await,
        400,
    )
    .await;
    assert_eq!(error["param"], "author.name", "{error}");
    let error = refused(
        post(&stack, "t", json!({"content": "x".repeat(1001)})).await,
        413,
    )
    .await;
    assert_eq!(error["code"], "value_too_large", "{error}");
    let limit = stack
        .http
        .get(format!("{}/v1/threads/t/messages?limit=0", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused(limit, 400).await["param"], "limit");
    let resume = stack
        .http
        .get(format!("{}/v1/threads/t/events", stack.base))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(refused(resume, 400).await["param"], "last-event-id");
    let session = stack
        .chat_with(
            chat_body("fake", "hello"),
            &[("x-switchyard-session", "not a token")],
        )
        .await;
    assert_eq!(refused(session, 400).await["param"], "x-switchyard-session");
    stack.stop().await;
}

#[tokio::test]
async fn a_follower_sees_the_agents_insights_in_order_and_resumes_after_the_last_seen() {
    let stack = Stack::start_with(1, &[], AGENTS_ROUTE).await;
    let id = TaskId::new().to_string();
    let events = format!("{}/v1/threads/{id}/events", stack.base);
    // Following the workflow's thread before the workflow exists.
    let mut follower = stack.http.get(&events).send().await.unwrap();
    assert_eq!(follower.status(), 200);
    let accepted = stack
        .http
        .post(format!("{}/v1/tasks", stack.base))
        .header("x-switchyard-task-id", &id)
        .json(&json!({"goal": "Compare two cities for a bike-share launch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let task = task_until(&stack, &id, |t| {
        matches!(t["status"].as_str(), Some("completed" | "failed"))
    })
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["thread"], id);
    let response = post(
        &stack,
        &id,
        json!({"content": "Thanks, team", "author": "ada"}),
    )
    .await;
    assert_eq!(response.status(), 201);

    let seen = follow_until(&mut follower, "Thanks, team").await;
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // Each completed step's insight once, by its agent, after those of the steps it used.
    let steps = task["steps"].as_array().unwrap();
    let position = |step: &str| {
        let at: Vec<usize> = seen
            .iter()
            .enumerate()
            .filter(|(_, (_, m))| m["step"] == step)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(at.len(), 1, "{step}: {seen:#?}");
        at[0]
    };
    for step in steps.iter().filter(|s| s["status"] == "completed") {
        let name = step["id"].as_str().unwrap();
        let (_, message) = &seen[position(name)];
        assert_eq!(message["author"]["kind"], "agent");
        assert_eq!(message["author"]["name"], step["agent"], "{message:#}");
        assert_eq!(message["workflow"], id);
        assert!(
            step["output"]
                .as_str()
                .unwrap()
                .starts_with(message["content"].as_str().unwrap().trim_end_matches('…')),
            "{message:#}"
        );
        for dependency in step["depends_on"].as_array().unwrap() {
            assert!(position(dependency.as_str().unwrap()) < position(name));
        }
    }
    assert!(seen.len() > 2, "{seen:#?}");
    // The review's prompt carried the work steps' insights from the thread (not its own
    // dependency's: the deliverable is in the prompt already), as its record says.
    let review = steps.iter().find(|s| s["id"] == "@review").unwrap();
    let from_thread: Vec<u64> = review["prompt"]["sections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "thread" && s["status"] == "included")
        .map(|s| {
            s["id"].as_str().unwrap()["thread:".len()..]
                .parse()
                .unwrap()
        })
        .collect();
    assert!(!from_thread.is_empty(), "{review:#}");
    for seq in &from_thread {
        let (_, message) = seen.iter().find(|(id, _)| id == seq).unwrap();
        assert_ne!(message["step"], "@synthesis", "{message:#}");
        assert_eq!(message["author"]["kind"], "agent");
    }
    let (_, last) = seen.last().unwrap();
    assert_eq!(last["author"], json!({"kind": "client", "name": "ada"}));
    // The listing holds the same messages in the same order.
    let listed = stack.get_json(&format!("/v1/threads/{id}/messages")).await;
    let listed_ids: Vec<u64> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed_ids, ids);
    drop(follower);

    // Resuming after the second message gives the rest, from the third on.
    let mut resumed = stack
        .http
        .get(&events)
        .header("last-event-id", ids[1].to_string())
        .send()
        .await
        .unwrap();
    let rest = follow_until(&mut resumed, "Thanks, team").await;
    assert_eq!(rest[0].0, ids[2]);
    assert_eq!(rest.len(), ids.len() - 2);
    drop(resumed);
    // The followers have left, and their consumers are gone with them.
    let js = async_nats::jetstream::new(stack.client.clone());
    eventually(Duration::from_secs(10), || async {
        let mut stream = js.get_stream("THREADS").await.ok()?;
        let info = stream.info().await.ok()?;
        (info.state.consumer_count == 0).then_some(())
    })
    .await;
    stack.stop().await;
}

/// The messages of the one request the fake provider received whose last message is
/// `text` (later turns carry it in their history too).
fn sent_messages(stack: &Stack, text: &str) -> Vec<(String, String)> {
    let requests: Vec<Value> = requests_with(stack, text)
        .into_iter()
        .filter(|r| r["messages"].as_array().unwrap().last().unwrap()["content"] == text)
        .collect();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    requests[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pair(role: &str, content: &str) -> (String, String) {
    (role.to_owned(), content.to_owned())
}

#[tokio::test]
async fn a_sessions_later_turns_carry_the_earlier_ones_streamed_or_not() {
    let stack = Stack::start(1, &[]).await;
    let session = [("x-switchyard-session", "trip-planning")];
    stack.provider.push_reply("My name is Ada", "Hello Ada.");
    let first = stack
        .chat_with(
            json!({"model": "fake", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "My name is Ada"}
            ]}),
            &session,
        )
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(content(&first), "Hello Ada.");

    // The second turn sends only itself; the provider gets the first turn too, after the
    // system prompt.
    let second = stack
        .chat_with(
            json!({"model": "fake", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is my name?"}
            ]}),
            &session,
        )
        .await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(
        sent_messages(&stack, "What is my name?"),
        [
            pair("system", "Be brief."),
            pair("user", "My name is Ada"),
            pair("assistant", "Hello Ada."),
            pair("user", "What is my name?"),
        ]
    );

    // A streamed turn is kept too: its answer, assembled, reaches the next turn.
    let streamed = stack
        .chat_with(
            json!({"model": "fake", "stream": true, "messages": [
                {"role": "user", "content": "Where am I going?"}
            ]}),
            &session,
        )
        .await;
    assert_eq!(streamed.status(), 200);
    let data = sse_data(&streamed.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    stack
        .chat_with(chat_body("fake", "And when?"), &session)
        .await;
    let fourth = sent_messages(&stack, "And when?");
    assert_eq!(
        fourth,
        [
            pair("user", "My name is Ada"),
            pair("assistant", "Hello Ada."),
            pair("user", "What is my name?"),
            pair("assistant", content(&second)),
            pair("user", "Where am I going?"),
            pair(
                "assistant",
                &fake_provider::answer_text("fake-model", "Where am I going?")
            ),
            pair("user", "And when?"),
        ]
    );

    // The history, each turn once, in order; cleared, the next turn starts afresh.
    let history = stack
        .get_json("/v1/threads/session-trip-planning/messages")
        .await;
    let kept: Vec<(String, String)> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(kept.len(), 8, "{history:#}");
    assert_eq!(kept[..7], fourth[..]);
    assert_eq!(history["data"][1]["author"]["name"], "fake");
    let cleared = stack
        .http
        .delete(format!(
            "{}/v1/threads/session-trip-planning/messages",
            stack.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    stack
        .chat_with(chat_body("fake", "Fresh start"), &session)
        .await;
    assert_eq!(
        sent_messages(&stack, "Fresh start"),
        [pair("user", "Fresh start")]
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_retried_turn_is_kept_once_and_the_simulated_model_says_it_saw_the_first() {
    let stack = Stack::start(1, &[]).await;
    let session = [
        ("x-switchyard-session", "retry"),
        ("idempotency-key", "turn-one"),
    ];
    for _ in 0..2 {
        let response = stack
            .chat_with(chat_body("simulated", "Hello there"), &session)
            .await;
        assert_eq!(response.status(), 200);
    }
    let second = stack
        .chat_with(
            chat_body("simulated", "Again"),
            &[("x-switchyard-session", "retry")],
        )
        .await;
    let second: Value = second.json().await.unwrap();
    let answer = content(&second);
    // The first turn's question and answer, then this one: three messages, one answer.
    assert!(
        answer.contains("Received 3 message(s), with 1 earlier answer(s)"),
        "{answer}"
    );
    let history = eventually(Duration::from_secs(10), || async {
        let history = stack.get_json("/v1/threads/session-retry/messages").await;
        (history["data"].as_array()?.len() >= 4).then_some(history)
    })
    .await;
    assert_eq!(history["data"].as_array().unwrap().len(), 4, "{history:#}");
    stack.stop().await;
}
