//! Failover against real fakes of each wire format on loopback: for each injected fault,
//! which target answered, how many attempts it took, which class was recorded, and that the
//! task got exactly one result. Also: key rotation, breakers shared through the `providers`
//! bucket, a long outage waited out in the queue, and the dead-letter queue.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    FakeProvider, Fault, Format, Stack, chat_body, eventually, sse_data, task_id,
};

/// A primary target of each wire format, each with a two-key pool, falling back to the
/// stack's OpenAI fake (`fake`); context-length and content-filter refusals go to the
/// `long` route.
struct Formats {
    stack: Stack,
    primaries: Vec<(Format, &'static str, FakeProvider)>,
}

const KEYS: [(&str, &str); 2] = [
    ("PRIMARY_KEY_1", "pk-one-111"),
    ("PRIMARY_KEY_2", "pk-two-222"),
];

fn format_name(format: Format) -> &'static str {
    match format {
        Format::OpenAi => "openai",
        Format::Anthropic => "anthropic",
        Format::Gemini => "gemini",
        Format::Replicate => "replicate",
    }
}

fn primary_model(format: Format) -> &'static str {
    match format {
        Format::OpenAi => "gpt-x",
        Format::Anthropic => "claude-x",
        Format::Gemini => "gemini-x",
        Format::Replicate => "acme/llama-x",
    }
}

impl Formats {
    async fn start(health: &str, overrides: &[(&str, &str)]) -> Self {
        let mut extra = String::new();
        let mut primaries = Vec::new();
        for format in [
            Format::OpenAi,
            Format::Anthropic,
            Format::Gemini,
            Format::Replicate,
        ] {
            let fake = FakeProvider::start(format).await.unwrap();
            let name = format_name(format);
            let model = primary_model(format);
            extra += &format!(
                r#"
[providers.p-{name}]
kind = "{name}"
base_url = "{url}"
api_key_envs = ["PRIMARY_KEY_1", "PRIMARY_KEY_2"]
direct_models = ["{name}-direct"]
timeout_ms = 1500
first_token_timeout_ms = 1000
idle_timeout_ms = 1000

[routes.via-{name}]
context_length_fallback = "long"
content_filter_fallback = "long"
targets = [{{ provider = "p-{name}", model = "{model}" }}, {{ provider = "fake", model = "backup-model" }}]
"#,
                url = fake.base_url()
            );
            primaries.push((format, name, fake));
        }
        extra += &format!(
            r#"
[providers.dead]
kind = "openai"
base_url = "{refused}"

[routes.long]
targets = [{{ provider = "fake", model = "long-model" }}]

[routes.refused-first]
targets = [{{ provider = "dead", model = "m" }}, {{ provider = "fake", model = "backup-model" }}]

[health]
{health}
"#,
            refused = fake_provider::refused_url().unwrap()
        );
        let mut env: Vec<(&str, &str)> = KEYS.to_vec();
        env.extend_from_slice(overrides);
        let stack = Stack::start_with(1, &env, &extra).await;
        Self { stack, primaries }
    }
}

/// What one request is expected to end with.
struct Expect {
    provider: String,
    model: &'static str,
    attempts: usize,
    depth: u32,
    first_class: &'static str,
}

/// Sends one request and checks it ended as `expect` says; returns the stored result.
async fn check(stack: &Stack, route: &str, expect: &Expect, what: &str) -> Value {
    let response = stack.chat(chat_body(route, what)).await;
    assert_eq!(response.status(), 200, "{what}");
    let headers = response.headers().clone();
    let id = task_id(&response);
    assert_eq!(
        headers["x-switchyard-provider"],
        expect.provider.as_str(),
        "{what}"
    );
    assert_eq!(headers["x-switchyard-model"], expect.model, "{what}");
    assert_eq!(
        headers["x-switchyard-attempts"],
        expect.attempts.to_string().as_str(),
        "{what}"
    );
    assert_eq!(
        headers["x-switchyard-fallback-depth"],
        expect.depth.to_string().as_str(),
        "{what}"
    );
    assert!(headers.contains_key("x-switchyard-overhead-ms"), "{what}");
    let completion: Value = response.json().await.unwrap();
    assert!(
        completion["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains(what),
        "{what}: {completion}"
    );
    let stored: Value = stack.task(&id).await.json().await.unwrap();
    assert_eq!(stored["status"], "completed", "{what}");
    let attempts = stored["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), expect.attempts, "{what}: {stored}");
    assert_eq!(attempts[0]["class"], expect.first_class, "{what}: {stored}");
    assert!(attempts.last().unwrap().get("class").is_none(), "{what}");
    stored
}

#[tokio::test]
async fn each_fault_of_each_wire_format_ends_where_the_table_says() {
    let formats = Formats::start("failure_threshold = 1000\ncooldown_ms = 300", &[]).await;
    let stack = &formats.stack;
    let mut task_ids = Vec::new();
    let mut stored_texts = Vec::new();
    for (format, name, fake) in &formats.primaries {
        let route = format!("via-{name}");
        let primary = format!("p-{name}");
        let model = primary_model(*format);
        let same = |attempts, first_class| Expect {
            provider: primary.clone(),
            model,
            attempts,
            depth: 0,
            first_class,
        };
        let backup = |first_class| Expect {
            provider: "fake".to_owned(),
            model: "backup-model",
            attempts: 2,
            depth: 1,
            first_class,
        };
        let cases: Vec<(Fault, Expect)> = vec![
            // Rate limits rotate to the pool's other key.
            (
                Fault::status_with(429, "retry-after", "1"),
                same(2, "rate_limited"),
            ),
            (Fault::status(429), same(2, "rate_limited")),
            (
                Fault::status_with(429, "retry-after-ms", "200"),
                same(2, "rate_limited"),
            ),
            // Flaky answers are retried once in place.
            (Fault::status(500), same(2, "upstream_5xx")),
            (Fault::status(502), same(2, "upstream_5xx")),
            (Fault::status(503), same(2, "upstream_5xx")),
            (Fault::status(529), same(2, "upstream_5xx")),
            (Fault::Malformed, same(2, "invalid_response")),
            // A stall outlasts the target's timeout: the next target answers.
            (
                Fault::StallBeforeFirstByte(Duration::from_secs(3)),
                backup("timeout"),
            ),
            // Too long for this model: the context-length fallback route answers.
            (
                Fault::ContextLength,
                Expect {
                    provider: "fake".to_owned(),
                    model: "long-model",
                    attempts: 2,
                    depth: 1,
                    first_class: "context_length",
                },
            ),
            // Refused content (an error or, for Anthropic and Gemini, an answer that says
            // so): the content-filter fallback route answers.
            (
                Fault::ContentFilter,
                Expect {
                    provider: "fake".to_owned(),
                    model: "long-model",
                    attempts: 2,
                    depth: 1,
                    first_class: "content_filter",
                },
            ),
            // A refused key leaves the rotation; the other key answers.
            (Fault::status(401), same(2, "auth")),
        ];
        for (fault, expect) in cases {
            let what = format!("{name} {fault:?}");
            let (primary_before, backup_before) = (fake.calls(), stack.provider.calls());
            fake.push_fault(fault.clone());
            let stored = check(stack, &route, &expect, &what).await;
            task_ids.push(stored["id"].as_str().unwrap().to_owned());
            stored_texts.push(stored.to_string());
            // Exactly the recorded attempts reached the providers: nothing done twice.
            let calls = fake.calls() - primary_before + stack.provider.calls() - backup_before;
            assert_eq!(calls, expect.attempts, "{what}");
            if matches!(fault, Fault::Status { status: 401, .. }) {
                let refused = stored["attempts"][0]["key"].as_str().unwrap().to_owned();
                let answered = stored["attempts"][1]["key"].as_str().unwrap();
                assert_ne!(refused, answered, "{what}");
                if *format == Format::OpenAi {
                    // OpenAI echoes the refused key in its error; the result has it blanked.
                    let message = stored["attempts"][0]["message"].as_str().unwrap();
                    assert!(message.contains("*****"), "{what}: {message}");
                }
                let (report, target) = stack.target_health(&primary).await;
                let key = target["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|k| k["label"] == refused.as_str())
                    .unwrap();
                assert_eq!(key["state"], "disabled", "{what}: {report}");
            }
            // Let the cooldown of a rate-limited key pass before the next case.
            let cooldown = match &fault {
                Fault::Status { headers, .. } if !headers.is_empty() => 1100,
                _ => 350,
            };
            tokio::time::sleep(Duration::from_millis(cooldown)).await;
        }
        // Every key the fakes saw came from the pool.
        for request in fake.requests() {
            let key = request.key.unwrap_or_default();
            assert!(KEYS.iter().any(|(_, v)| key.contains(v)), "{name}: {key}");
        }
    }
    // One lifecycle event per task: each was finished exactly once.
    eventually(Duration::from_secs(10), || async {
        let events = stack.task_events().await;
        task_ids
            .iter()
            .all(|id| events.get(id) == Some(&1))
            .then_some(())
    })
    .await;
    let events = stack.task_events().await;
    assert!(task_ids.iter().all(|id| events[id] == 1));
    // No key reached a stored result (the OpenAI 401 above echoed one).
    for (_, secret) in KEYS {
        assert!(
            stored_texts.iter().all(|text| !text.contains(secret)),
            "{secret} leaked"
        );
    }
    formats.stack.stop().await;
}

#[tokio::test]
async fn refused_connections_fail_over_and_streams_only_before_output() {
    let formats = Formats::start("failure_threshold = 1000", &[]).await;
    let stack = &formats.stack;
    let backup = |first_class| Expect {
        provider: "fake".to_owned(),
        model: "backup-model",
        attempts: 2,
        depth: 1,
        first_class,
    };
    check(stack, "refused-first", &backup("network"), "refused").await;

    let openai = &formats.primaries[0].2;
    let anthropic = &formats.primaries[1].2;
    let stream = |route: &str, text: &str| {
        let mut body = chat_body(route, text);
        body["stream"] = json!(true);
        body
    };
    // Stalled before the first token: the next target streams the answer.
    openai.push_fault(Fault::StallBeforeFirstByte(Duration::from_secs(3)));
    let response = stack.chat(stream("via-openai", "stall first")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-provider"], "fake");
    assert_eq!(response.headers()["x-switchyard-fallback-depth"], "1");
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");

    // Cut before any text (Anthropic's first two events carry none): still a clean failover.
    anthropic.push_fault(Fault::CutStream);
    let response = stack.chat(stream("via-anthropic", "cut early")).await;
    assert_eq!(response.headers()["x-switchyard-provider"], "fake");
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");

    // Malformed SSE before any text: retried in place.
    openai.push_fault(Fault::Malformed);
    let response = stack.chat(stream("via-openai", "malformed sse")).await;
    assert_eq!(response.headers()["x-switchyard-provider"], "p-openai");
    assert_eq!(response.headers()["x-switchyard-attempts"], "2");
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");

    // After text reached the caller, a cut or a stall is an error event, never [DONE].
    for (fault, class) in [
        (Fault::CutStream, "network"),
        (Fault::StallMidStream(Duration::from_secs(3)), "timeout"),
    ] {
        let before = stack.provider.calls();
        openai.push_fault(fault.clone());
        let response = stack.chat(stream("via-openai", "cut late")).await;
        assert_eq!(response.status(), 200, "{fault:?}");
        let id = task_id(&response);
        let data = sse_data(&response.text().await.unwrap());
        assert_ne!(data.last().unwrap(), "[DONE]", "{fault:?}");
        assert!(!data.contains(&"[DONE]".to_owned()), "{fault:?}");
        let error: Value = serde_json::from_str(data.last().unwrap()).unwrap();
        assert_eq!(error["error"]["code"], class, "{fault:?}: {error}");
        assert_eq!(
            stack.provider.calls(),
            before,
            "no failover after output: {fault:?}"
        );
        let stored: Value = stack.task(&id).await.json().await.unwrap();
        assert_eq!(stored["status"], "failed");
        assert_eq!(stored["attempts"].as_array().unwrap().len(), 1);
    }
    formats.stack.stop().await;
}

#[tokio::test]
async fn an_open_breaker_is_shared_skipped_and_probed() {
    let formats = Formats::start("failure_threshold = 2\nopen_ms = 1500", &[]).await;
    let mut stack = formats.stack;
    // A second worker: what the first learns, it must use.
    stack.start_worker().await;
    let openai = &formats.primaries[0].2;
    for _ in 0..2 {
        openai.push_fault(Fault::status(503));
    }
    // Two 503s (one retried in place) open the breaker; the backup answers.
    let response = stack.chat(chat_body("via-openai", "first")).await;
    assert_eq!(response.headers()["x-switchyard-provider"], "fake");
    let (report, target) = stack.target_health("p-openai").await;
    assert_eq!(target["state"], "open", "{report}");
    assert_eq!(target["last_failure_class"], "upstream_5xx");
    // While open, no worker calls it: several requests, none reach the primary.
    let calls = openai.calls();
    for i in 0..4 {
        let response = stack
            .chat(chat_body("via-openai", &format!("skip {i}")))
            .await;
        assert_eq!(response.headers()["x-switchyard-provider"], "fake");
        assert_eq!(response.headers()["x-switchyard-attempts"], "1");
    }
    assert_eq!(openai.calls(), calls);
    // After open_ms one probe goes to the recovered primary, and the breaker closes.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let response = stack.chat(chat_body("via-openai", "probe")).await;
    assert_eq!(response.headers()["x-switchyard-provider"], "p-openai");
    assert_eq!(openai.calls(), calls + 1);
    let (report, target) = stack.target_health("p-openai").await;
    assert_eq!(target["state"], "closed", "{report}");
    stack.stop().await;
}

#[tokio::test]
async fn a_long_outage_is_waited_out_in_the_queue_then_dead_letters_can_be_replayed() {
    let formats = Formats::start(
        "failure_threshold = 3\nopen_ms = 500",
        &[("SWITCHYARD__QUEUE__MAX_DELIVER", "30")],
    )
    .await;
    let stack = &formats.stack;
    let openai = &formats.primaries[0].2;
    // Every target of the route is down (the backup too) for a while.
    openai.set_outage(Some(Fault::status(503)));
    stack
        .provider
        .set_outage(Some(Fault::status_with(503, "retry-after", "1")));
    let request = tokio::spawn({
        let (http, base) = (stack.http.clone(), stack.base.clone());
        async move {
            http.post(format!("{base}/v1/chat/completions"))
                .header("x-switchyard-timeout-ms", "30000")
                .json(&chat_body("via-openai", "outlast"))
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    openai.set_outage(None);
    stack.provider.set_outage(None);
    let response = request.await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "completed after the outage without a client retry"
    );
    let id = task_id(&response);
    let stored: Value = stack.task(&id).await.json().await.unwrap();
    assert_eq!(stored["status"], "completed");
    assert!(stored["delivery"].as_u64().unwrap() >= 2, "{stored}");
    let attempts = stored["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 3, "{stored}");
    assert!(
        attempts[..attempts.len() - 1]
            .iter()
            .all(|a| a["class"] == "upstream_5xx")
    );

    // A task whose deadline passes during an outage fails and is dead-lettered with its
    // history; once the provider is back, replaying it completes as a new task.
    openai.set_outage(Some(Fault::status(503)));
    stack.provider.set_outage(Some(Fault::status(503)));
    let response = stack
        .chat_with(
            chat_body("via-openai", "doomed"),
            &[("x-switchyard-timeout-ms", "2500")],
        )
        .await;
    assert!(response.status().is_server_error(), "{}", response.status());
    let doomed = task_id(&response);
    openai.set_outage(None);
    stack.provider.set_outage(None);
    let letters: Value = eventually(Duration::from_secs(10), || async {
        let list: Value = reqwest::get(format!("{}/v1/dlq?capability=chat", stack.base))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list["data"]
            .as_array()?
            .iter()
            .any(|l| l["task"]["id"] == doomed.as_str())
            .then_some(list)
    })
    .await;
    let letter = letters["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["task"]["id"] == doomed.as_str())
        .unwrap();
    assert!(
        !letter["attempts"].as_array().unwrap().is_empty(),
        "{letter}"
    );
    let replay: Value = stack
        .http
        .post(format!("{}/v1/dlq/{doomed}/replay", stack.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replay["replay_of"], doomed.as_str());
    let new_id = replay["task_id"].as_str().unwrap().to_owned();
    let result = stack.wait_result(&new_id).await;
    assert_eq!(result["status"], "completed", "{result}");
    // The replayed letter is gone; a second replay is a 404.
    let again = stack
        .http
        .post(format!("{}/v1/dlq/{doomed}/replay", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    formats.stack.stop().await;
}

#[tokio::test]
async fn provider_slash_model_addresses_one_target_and_keys_rotate() {
    let formats = Formats::start("failure_threshold = 1000", &[]).await;
    let stack = &formats.stack;
    let response = stack
        .chat(chat_body("p-gemini/gemini-direct", "direct"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-provider"], "p-gemini");
    assert_eq!(response.headers()["x-switchyard-model"], "gemini-direct");
    let unknown = stack.chat(chat_body("nobody/model", "x")).await;
    assert_eq!(unknown.status(), 404);
    // Calls spread over the key pool.
    for i in 0..4 {
        let response = stack
            .chat(chat_body("via-openai", &format!("rotate {i}")))
            .await;
        assert_eq!(response.status(), 200);
    }
    let keys: std::collections::BTreeSet<String> = formats.primaries[0]
        .2
        .requests()
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    formats.stack.stop().await;
}

#[tokio::test]
async fn the_cli_lists_provider_health_replays_dead_letters_and_resets_keys() {
    let stack = Stack::start(1, &[("SWITCHYARD__QUEUE__MAX_DELIVER", "2")]).await;
    // One delivery calls the provider (twice: one retry in place); both fail, so the task
    // fails for good and is dead-lettered.
    stack.provider.push_fault(Fault::status(502));
    stack.provider.push_fault(Fault::status(502));
    let response = stack.chat(chat_body("fake", "to the dlq")).await;
    assert_eq!(response.status(), 502);
    let dead = task_id(&response);
    let config = stack.config_file();
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("NATS_URL");
        for (k, v) in &stack.env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let health = cli(&["providers"]);
    let fake = health["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["provider"] == "fake")
        .unwrap()
        .clone();
    assert_eq!(fake["consecutive_failures"], 2, "{health}");
    assert_eq!(fake["last_failure_class"], "upstream_5xx");
    assert_eq!(fake["keys"][0]["label"], "FAKE_PROVIDER_KEY");

    let letters = eventually(Duration::from_secs(10), || async {
        let list = cli(&["dlq", "list", "--capability", "chat"]);
        (list["data"].as_array().unwrap().len() == 1).then_some(list)
    })
    .await;
    let letter = &letters["data"][0];
    assert_eq!(letter["task"]["id"], dead.as_str());
    // One page at a time: the cursor is the last letter's sequence.
    let page = cli(&["dlq", "list", "--limit", "1"]);
    assert_eq!(page["has_more"], false, "{page}");
    assert_eq!(page["last_id"], letter["seq"]);
    let after = page["last_id"].to_string();
    assert!(
        cli(&["dlq", "list", "--after", &after])["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(letter["error"]["class"], "upstream_5xx");
    assert_eq!(letter["attempts"].as_array().unwrap().len(), 2);

    let replayed = cli(&["dlq", "replay", &dead]);
    let new_id = replayed["data"][0]["task_id"].as_str().unwrap().to_owned();
    let result = stack.wait_result(&new_id).await;
    assert_eq!(result["status"], "completed");
    assert_eq!(cli(&["dlq", "list"])["data"].as_array().unwrap().len(), 0);

    // A refused key leaves the rotation for every worker until an operator resets it.
    stack.provider.push_fault(Fault::status(401));
    assert_eq!(stack.chat(chat_body("fake", "refused")).await.status(), 502);
    let (_, fake) = stack.target_health("fake").await;
    assert_eq!(fake["keys"][0]["state"], "disabled", "{fake}");
    let calls = stack.provider.calls();
    let refused = stack.chat(chat_body("fake", "no key left")).await;
    assert_eq!(refused.status(), 502);
    assert_eq!(stack.provider.calls(), calls, "a disabled key is not used");
    cli(&["providers", "reset", "fake", "--key", "FAKE_PROVIDER_KEY"]);
    eventually(Duration::from_secs(10), || async {
        let response = stack.chat(chat_body("fake", "key is back")).await;
        (response.status() == 200).then_some(())
    })
    .await;
    let (_, fake) = stack.target_health("fake").await;
    assert_eq!(fake["keys"][0]["state"], "active", "{fake}");
    stack.stop().await;
}

#[tokio::test]
async fn latency_and_cost_strategies_order_targets() {
    let slow = FakeProvider::start(Format::OpenAi).await.unwrap();
    slow.set_latency(Duration::from_millis(300));
    let extra = format!(
        r#"
[providers.slow]
kind = "openai"
base_url = "{url}"

[routes.quickest]
strategy = "latency"
targets = [{{ provider = "slow", model = "s" }}, {{ provider = "fake", model = "f" }}]

[routes.cheapest]
strategy = "cost"
targets = [
  {{ provider = "slow", model = "pricey", input_cost_per_mtok = 3.0, output_cost_per_mtok = 15.0 }},
  {{ provider = "fake", model = "thrifty", input_cost_per_mtok = 0.05, output_cost_per_mtok = 0.1 }},
]
"#,
        url = slow.base_url()
    );
    let stack = Stack::start_with(1, &[], &extra).await;
    for i in 0..3 {
        let response = stack
            .chat(chat_body("cheapest", &format!("cost {i}")))
            .await;
        assert_eq!(response.headers()["x-switchyard-model"], "thrifty");
    }
    // Both targets get measured (unknown ones go first), then the faster one wins once the
    // workers have shared their latencies.
    for i in 0..2 {
        stack
            .chat(chat_body("quickest", &format!("warm {i}")))
            .await;
    }
    assert!(slow.calls() >= 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let slow_calls = slow.calls();
    for i in 0..5 {
        let response = stack
            .chat(chat_body("quickest", &format!("fast {i}")))
            .await;
        assert_eq!(response.headers()["x-switchyard-provider"], "fake");
    }
    assert_eq!(slow.calls(), slow_calls);
    let report: Value = stack.get_json("/v1/providers").await;
    let slow_report = report["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["model"] == "s")
        .unwrap();
    assert!(
        slow_report["latency_ms"].as_f64().unwrap() >= 300.0,
        "{report}"
    );
    stack.stop().await;
}
