//! The artifacts object store end to end: `PUT`/`GET /v1/artifacts/{id}` round trips of
//! multi-megabyte binary bodies with their SHA-256 and content type, the refusals (bad id,
//! missing, oversize), and a workflow step whose output is over `artifacts.inline_max_bytes`:
//! stored as an artifact, referenced by the task, and given whole to the step after it.

use serde_json::{Value, json};
use shared::artifacts::sha256_hex;

use crate::harness::{Stack, chat_body, content, done_chunks, requests_with, task_id};
use crate::workflows::{run_task, step};

/// Largest artifact these stacks accept: 6 MiB.
const MAX_BYTES: usize = 6 << 20;

/// `n` bytes that are not text and do not repeat in any short period.
fn binary(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            // xorshift64*: every byte value occurs, zeros and invalid UTF-8 included.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

async fn stack() -> Stack {
    Stack::start(
        1,
        &[("SWITCHYARD__ARTIFACTS__MAX_BYTES", &MAX_BYTES.to_string())],
    )
    .await
}

async fn put(stack: &Stack, id: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    stack
        .http
        .put(format!("{}/v1/artifacts/{id}", stack.base))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn get(stack: &Stack, path: &str) -> reqwest::Response {
    stack
        .http
        .get(format!("{}{path}", stack.base))
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The OpenAI error of a refusal, after checking its status.
async fn refused(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn a_multi_megabyte_binary_round_trips_byte_exact_with_its_digest_and_type() {
    let stack = stack().await;
    let bytes = binary(5 << 20, 7);
    let sha256 = sha256_hex(&bytes);

    let created = put(&stack, "quarterly-report", "application/pdf", bytes.clone()).await;
    assert_eq!(created.status(), 201);
    assert_eq!(header(&created, "etag"), format!("\"{sha256}\""));
    let described: Value = created.json().await.unwrap();
    assert_eq!(described["id"], "quarterly-report");
    assert_eq!(described["object"], "artifact");
    assert_eq!(described["bytes"], bytes.len());
    assert_eq!(described["sha256"], sha256);
    assert_eq!(described["content_type"], "application/pdf");
    assert!(described["created"].as_u64().unwrap() > 0);

    let fetched = get(&stack, "/v1/artifacts/quarterly-report").await;
    assert_eq!(fetched.status(), 200);
    assert_eq!(header(&fetched, "content-type"), "application/pdf");
    assert_eq!(header(&fetched, "etag"), format!("\"{sha256}\""));
    assert_eq!(header(&fetched, "x-switchyard-sha256"), sha256);
    assert_eq!(header(&fetched, "content-length"), bytes.len().to_string());
    let body = fetched.bytes().await.unwrap();
    assert!(body[..] == bytes[..], "the bytes came back different");
    assert_eq!(sha256_hex(&body), sha256);

    // The metadata alone, as JSON and as the headers of HEAD.
    let meta: Value = get(&stack, "/v1/artifacts/quarterly-report/meta")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(meta, described);
    let head = stack
        .http
        .head(format!("{}/v1/artifacts/quarterly-report", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "x-switchyard-sha256"), sha256);
    assert_eq!(header(&head, "content-length"), bytes.len().to_string());

    // A client holding the current version is told so without the bytes.
    let unchanged = stack
        .http
        .get(format!("{}/v1/artifacts/quarterly-report", stack.base))
        .header("if-none-match", format!("\"{sha256}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), 304);

    // Replacing it answers 200 and serves the new bytes and type.
    let text = b"a short replacement".to_vec();
    let replaced = put(&stack, "quarterly-report", "text/plain", text.clone()).await;
    assert_eq!(replaced.status(), 200);
    let fetched = get(&stack, "/v1/artifacts/quarterly-report").await;
    assert_eq!(header(&fetched, "content-type"), "text/plain");
    assert_eq!(header(&fetched, "x-switchyard-sha256"), sha256_hex(&text));
    assert_eq!(fetched.bytes().await.unwrap()[..], text[..]);

    // POST chooses the id and says where the artifact is; no content type is octets.
    let posted = stack
        .http
        .post(format!("{}/v1/artifacts", stack.base))
        .body(bytes[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let location = header(&posted, "location").to_owned();
    let described: Value = posted.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/artifacts/{}", described["id"].as_str().unwrap())
    );
    let fetched = get(&stack, &location).await;
    assert_eq!(header(&fetched, "content-type"), "application/octet-stream");
    assert_eq!(fetched.bytes().await.unwrap()[..], bytes[..1000]);
    stack.stop().await;
}

#[tokio::test]
async fn bad_ids_missing_artifacts_and_oversize_bodies_are_refused() {
    let stack = stack().await;
    for id in ["Upper", "a.b", "a*", "-x", &"x".repeat(65)] {
        let body = refused(put(&stack, id, "text/plain", b"x".to_vec()).await, 400).await;
        assert_eq!(body["error"]["param"], "id", "{id}: {body}");
        let body = refused(get(&stack, &format!("/v1/artifacts/{id}")).await, 400).await;
        assert_eq!(body["error"]["param"], "id", "{id}: {body}");
    }
    let body = refused(put(&stack, "typed", "no-slash", b"x".to_vec()).await, 400).await;
    assert_eq!(body["error"]["param"], "content-type");

    let body = refused(get(&stack, "/v1/artifacts/nowhere").await, 404).await;
    assert_eq!(body["error"]["code"], "not_found");
    refused(get(&stack, "/v1/artifacts/nowhere/meta").await, 404).await;

    // Over the limit with a declared length: refused before the body is read.
    let kept = binary(1000, 3);
    assert_eq!(
        put(&stack, "kept", "application/octet-stream", kept.clone())
            .await
            .status(),
        201
    );
    let body = refused(
        put(
            &stack,
            "kept",
            "application/octet-stream",
            binary(MAX_BYTES + 1, 4),
        )
        .await,
        413,
    )
    .await;
    assert_eq!(body["error"]["code"], "request_too_large");
    // Over the limit in a stream of unknown length: refused once the limit is passed.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..7).map(|i| Ok(binary(1 << 20, 10 + i))).collect();
    let streamed = stack
        .http
        .put(format!("{}/v1/artifacts/kept", stack.base))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await;
    // The gateway may answer before the client has sent everything, and close.
    if let Ok(response) = streamed {
        let body = refused(response, 413).await;
        assert_eq!(body["error"]["code"], "request_too_large");
    }
    // The artifact that was there is untouched by the refused replacements.
    let fetched = get(&stack, "/v1/artifacts/kept").await;
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap()[..], kept[..]);
    stack.stop().await;
}

/// The shipped agents on the fake provider, which echoes each prompt unless scripted.
const FAKE_AGENTS: &str = "\n[routes.agents]\nprovider = \"fake\"\nmodel = \"fake-model\"\n";

#[tokio::test]
async fn a_large_step_output_becomes_an_artifact_that_the_next_step_reads_whole() {
    let stack = Stack::start_with(
        1,
        &[("SWITCHYARD__ARTIFACTS__INLINE_MAX_BYTES", "2048")],
        FAKE_AGENTS,
    )
    .await;
    // A long draft: numbered lines, so any cut or reordering shows.
    let draft: String = (0..200)
        .map(|i| format!("Finding {i:03}: bike lanes cut injuries on route {i}. "))
        .collect();
    assert!(draft.len() > 8_000 && draft.len() < 12_000);
    stack.provider.set_reply("Your step (draft)", &draft);
    stack.provider.set_reply(
        "Your step (@review",
        r#"{"verdict": "approve", "score": 0.9, "feedback": "Ready."}"#,
    );
    let task = run_task(
        &stack,
        json!({"goal": "Report on urban cycling safety", "steps": [
            {"id": "draft", "capability": "research", "instruction": "Draft the findings"},
            {"id": "polish", "capability": "research", "instruction": "Polish the draft",
             "depends_on": ["draft"]}]}),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");

    // The task carries a preview and the reference, not the draft.
    let drafted = step(&task, "draft");
    let reference = &drafted["artifact"];
    assert_eq!(
        reference["id"],
        format!("step-{}", drafted["task_id"].as_str().unwrap())
    );
    assert_eq!(reference["bytes"], draft.len());
    assert_eq!(reference["sha256"], sha256_hex(draft.as_bytes()));
    assert_eq!(reference["content_type"], "text/plain; charset=utf-8");
    let preview = drafted["output"].as_str().unwrap();
    assert!(preview.len() < draft.len() && draft.starts_with(preview));

    // The artifact is the draft, byte for byte.
    let fetched = get(
        &stack,
        &format!("/v1/artifacts/{}", reference["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(fetched.status(), 200);
    assert_eq!(
        header(&fetched, "x-switchyard-sha256"),
        sha256_hex(draft.as_bytes())
    );
    assert_eq!(fetched.text().await.unwrap(), draft);

    // The step after it was prompted with the whole draft, not the preview.
    let polish_requests = requests_with(&stack, "Your step (polish)");
    assert!(!polish_requests.is_empty());
    let prompt = polish_requests[0]["messages"][1]["content"]
        .as_str()
        .unwrap();
    assert!(prompt.contains(&draft), "the prompt lacks the whole draft");

    // The deliverable (the echo of a prompt holding both outputs) is an artifact too, and the
    // whole of it is served.
    let output = &task["output_artifact"];
    let whole = get(
        &stack,
        &format!("/v1/artifacts/{}", output["id"].as_str().unwrap()),
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(whole.len() as u64, output["bytes"].as_u64().unwrap());
    assert!(whole.starts_with(task["output"].as_str().unwrap()));
    assert!(whole.contains(&draft), "the deliverable lacks the draft");
    stack.stop().await;
}

#[tokio::test]
async fn offline_the_simulated_team_writes_at_length_into_artifacts() {
    let stack = Stack::start_with(1, &[], crate::workflows::AGENTS_ROUTE).await;
    let task = run_task(
        &stack,
        json!({"goal": "Write a market analysis of electric bikes (at length)"}),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    // Over the default 32 KiB: every work step and the deliverable are artifacts; the plan
    // and the verdict (structured, short) stay inline.
    assert!(step(&task, "@plan")["artifact"].is_null());
    assert!(step(&task, "@review")["artifact"].is_null());
    for id in ["s1", "@synthesis"] {
        let reference = &step(&task, id)["artifact"];
        let whole = get(
            &stack,
            &format!("/v1/artifacts/{}", reference["id"].as_str().unwrap()),
        )
        .await
        .text()
        .await
        .unwrap();
        assert_eq!(sha256_hex(whole.as_bytes()), reference["sha256"], "{id}");
        assert!(whole.len() > 32 << 10, "{id}");
        assert!(whole.contains("[simulated simulated-1]"), "{id}");
    }
    assert_eq!(
        task["output_artifact"],
        step(&task, "@synthesis")["artifact"]
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_chat_answer_too_large_for_a_nats_message_is_stored_by_reference_and_answered_whole() {
    // Artifacts as large as four NATS messages (the test servers allow 8 MiB ones). Decoding
    // and encoding megabytes in a debug build on a busy machine can hold a worker thread past
    // the tests' 1 s `ack_wait`; the redeliveries that follow are not what is tested here.
    let stack = Stack::start(
        1,
        &[
            ("SWITCHYARD__ARTIFACTS__MAX_BYTES", "33554432"),
            ("SWITCHYARD__QUEUE__ACK_WAIT_MS", "15000"),
        ],
    )
    .await;
    let max_payload = stack.client.server_info().max_payload;
    assert!(max_payload * 4 <= 33_554_432);
    // Longer than a NATS message may be, in long words (a streamed answer is a chunk each).
    let word = |i: usize| format!("{i:06}{}", "x".repeat(994));
    let text: String = (0..max_payload / 1000 + 100)
        .map(word)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(text.len() > max_payload);
    stack.provider.set_reply("the giant answer", &text);

    let response = stack
        .chat(chat_body("fake", "the giant answer, please"))
        .await;
    let id = task_id(&response);
    let status = response.status();
    let completion: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{completion}");
    assert!(
        content(&completion) == text,
        "the answer is not the whole text"
    );
    // The stored result holds a reference, not the megabytes; the artifact holds them.
    let stored = stack.stored(&id).await;
    assert!(
        stored.get("response").is_none(),
        "the response is stored inline"
    );
    let reference = &stored["response_artifact"];
    let artifact = reference["id"].as_str().unwrap();
    assert_eq!(artifact, format!("result-{id}-1"), "the first delivery's");
    assert_eq!(reference["content_type"], "application/json");
    let body = get(&stack, &format!("/v1/artifacts/{artifact}")).await;
    assert_eq!(body.status(), 200);
    let bytes = body.bytes().await.unwrap();
    assert_eq!(reference["sha256"], sha256_hex(&bytes));
    let whole: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(content(&whole) == text);
    // Only Switchyard writes the artifacts it refers to: a caller cannot replace them.
    for reserved in [artifact.to_owned(), format!("step-{id}")] {
        let refused = refused(
            put(&stack, &reserved, "application/json", b"{}".to_vec()).await,
            400,
        )
        .await;
        assert_eq!(refused["error"]["param"], "id", "{refused}");
    }

    // Streamed: every chunk is small, and the end is checked against the whole answer.
    let mut body = chat_body("fake", "the giant answer, streamed");
    body["stream"] = json!(true);
    let response = stack.chat(body).await;
    assert_eq!(response.status(), 200);
    let streamed: String = done_chunks(&response.text().await.unwrap())
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        streamed == text,
        "the streamed answer is not the whole text"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_step_answer_too_long_for_the_context_bucket_is_written_there_by_reference() {
    let stack = Stack::start_with(1, &[], &format!("{FAKE_AGENTS}context_window = 200000\n")).await;
    // Longer than a context value may be; its end is beyond any preview.
    let long: String = (0..1600)
        .map(|i| format!("Survey row {i:03}: riders per dock, week {i}. "))
        .collect::<String>()
        + "END-OF-SURVEY";
    assert!(long.len() > shared::context::MAX_VALUE_BYTES);
    stack.provider.set_reply("Your step (survey)", &long);
    stack.provider.set_reply(
        "Your step (@review",
        r#"{"verdict": "approve", "score": 0.9, "feedback": "Ready."}"#,
    );
    let task = run_task(
        &stack,
        json!({"goal": "Survey dock use", "steps": [
            {"id": "survey", "capability": "research", "instruction": "Survey the docks"}]}),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let id = task["id"].as_str().unwrap();
    // The entry (its value is the body) refers to the step's artifact, with a preview.
    let entry = stack.get_json(&format!("/v1/context/{id}/survey")).await;
    let artifact = step(&task, "survey")["artifact"].clone();
    assert_eq!(entry["artifact"], artifact, "{entry:#}");
    let preview = entry["preview"].as_str().unwrap();
    assert!(long.starts_with(preview) && preview.len() < long.len());
    // A step that reads the entry (the review: the survey is not its dependency) gets the
    // whole answer from the artifact.
    let review = requests_with(&stack, "Your step (@review)");
    let prompt = review[0]["messages"][1]["content"].as_str().unwrap();
    let heading = "# Shared context: `survey` (revision 1, by researcher; written by another step)";
    let (_, section) = prompt.split_once(heading).expect("the entry's section");
    let section = section.split("\n# ").next().unwrap();
    assert!(section.contains("END-OF-SURVEY"), "{section}");
    stack.stop().await;
}
