//! The failover loop on its own: a real fake provider on loopback whose faults are chosen
//! by model name (each target of a route is a model of it), an in-memory stand-in for the
//! shared health store, and a sink that keeps the chunks. No NATS.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use fake_provider::{FakeProvider, Fault, Format};
use serde_json::{Value, json};
use shared::config::{ApiKey, Config, Source};
use shared::task::now_ms;
use shared::{FailureClass, Task, TaskId};

use super::{Failover, Outcome};
use crate::deps::Routing;
use crate::health::{Admission, Probe, ProviderHealth};
use crate::relay::{ChunkSink, FirstChunk};

/// A key pool's variables, as the fake provider sees them.
const KEY_A: &str = "sk-test-a";
const KEY_B: &str = "sk-test-b";
/// Long enough that only a timeout or the deadline ends a stalled call.
const STALL: Duration = Duration::from_secs(600);

/// Provider health kept in memory: cooldowns and disabled keys are honoured, failures and
/// successes recorded; breakers never open (their rules are `health.rs`'s own tests).
#[derive(Default)]
struct MemoryHealth {
    cooled_targets: Mutex<HashMap<(String, String), u64>>,
    cooled_keys: Mutex<HashMap<String, u64>>,
    disabled_keys: Mutex<HashSet<String>>,
    failures: Mutex<Vec<(String, FailureClass)>>,
    successes: Mutex<Vec<String>>,
}

fn until(now: u64, pause: Option<Duration>) -> u64 {
    now + pause.map_or(1000, |p| u64::try_from(p.as_millis()).unwrap())
}

impl ProviderHealth for MemoryHealth {
    fn latency_ms(&self, _provider: &str, _model: &str) -> Option<f64> {
        None
    }

    fn admit(&self, provider: &str, model: &str, now: u64) -> Admission {
        let cooled = self.cooled_targets.lock().unwrap();
        match cooled.get(&(provider.to_owned(), model.to_owned())) {
            Some(&until) if until > now => Admission::Skip(until),
            _ => Admission::Go,
        }
    }

    fn last_class(&self, _provider: &str, _model: &str) -> Option<FailureClass> {
        None
    }

    fn usable_keys<'a>(
        &self,
        _provider: &str,
        keys: &'a [ApiKey],
        start: usize,
        now: u64,
    ) -> (Vec<&'a ApiKey>, Option<u64>) {
        let cooled = self.cooled_keys.lock().unwrap();
        let disabled = self.disabled_keys.lock().unwrap();
        let mut usable = Vec::new();
        let mut back_at: Option<u64> = None;
        for i in 0..keys.len() {
            let key = &keys[(start + i) % keys.len()];
            match cooled.get(&key.label) {
                _ if disabled.contains(&key.label) => {}
                Some(&until) if until > now => {
                    back_at = Some(back_at.map_or(until, |b| b.min(until)));
                }
                _ => usable.push(key),
            }
        }
        (usable, back_at)
    }

    fn key_back_at(&self, _provider: &str, label: &str, now: u64) -> Option<u64> {
        let cooled = self.cooled_keys.lock().unwrap();
        cooled.get(label).copied().filter(|until| *until > now)
    }

    async fn claim_probe(&self, _provider: &str, _model: &str, _probe_for: Duration) -> Probe {
        Probe::Won
    }

    async fn success(&self, _provider: &str, model: &str, _latency_ms: f64) {
        self.successes.lock().unwrap().push(model.to_owned());
    }

    async fn failure(&self, _provider: &str, model: &str, class: FailureClass) {
        self.failures
            .lock()
            .unwrap()
            .push((model.to_owned(), class));
    }

    async fn cool_target(&self, provider: &str, model: &str, pause: Option<Duration>) {
        self.cooled_targets.lock().unwrap().insert(
            (provider.to_owned(), model.to_owned()),
            until(now_ms(), pause),
        );
    }

    async fn cool_key(&self, _provider: &str, label: &str, pause: Option<Duration>) {
        self.cooled_keys
            .lock()
            .unwrap()
            .insert(label.to_owned(), until(now_ms(), pause));
    }

    async fn disable_key(&self, _provider: &str, label: &str, _reason: &str) {
        self.disabled_keys.lock().unwrap().insert(label.to_owned());
    }
}

/// What a first chunk said: provider, model, attempts so far.
type Answering = (String, String, usize);

/// Keeps every chunk: its number, body, and what the first one said.
#[derive(Default)]
struct KeptChunks(Mutex<Vec<(u64, Value, Option<Answering>)>>);

impl ChunkSink for KeptChunks {
    async fn chunk(&self, seq: u64, chunk: &Value, first: Option<&FirstChunk<'_>>) {
        let first = first.map(|f| (f.provider.to_owned(), f.model.to_owned(), f.attempts));
        self.0.lock().unwrap().push((seq, chunk.clone(), first));
    }
}

/// A fake provider and routes over its models:
/// - `chain`: `m1`, `m2`, `m3` through provider `fake` (patient: 20 s per call);
/// - `hasty`: `slow` through provider `hasty` (200 ms per call), then `m2` through `fake`;
/// - `pooled`: `pm` through provider `pool`, with keys A and B;
/// - `narrow`: `n1` through provider `narrow` (two calls at once at most), then `m2`;
///   `narrow-only`: `n1` alone.
struct Bench {
    fake: FakeProvider,
    routing: Routing,
    health: MemoryHealth,
    chunks: KeptChunks,
}

impl Bench {
    async fn start() -> Self {
        let fake = FakeProvider::start(Format::OpenAi).await.unwrap();
        let url = fake.base_url();
        let toml = format!(
            r#"
[providers.fake]
kind = "openai"
base_url = "{url}"
api_key_env = "KEY_A"
timeout_ms = 20000

[providers.hasty]
kind = "openai"
base_url = "{url}"
api_key_env = "KEY_A"
timeout_ms = 200

[providers.pool]
kind = "openai"
base_url = "{url}"
api_key_envs = ["KEY_A", "KEY_B"]
timeout_ms = 20000

[routes.chain]
targets = [{{ provider = "fake", model = "m1" }}, {{ provider = "fake", model = "m2" }}, {{ provider = "fake", model = "m3" }}]

[routes.hasty]
targets = [{{ provider = "hasty", model = "slow" }}, {{ provider = "fake", model = "m2" }}]

[providers.narrow]
kind = "openai"
base_url = "{url}"
api_key_env = "KEY_B"

[providers.narrow.concurrency]
initial = 2
max = 2

[routes.pooled]
targets = [{{ provider = "pool", model = "pm" }}]

[routes.narrow]
targets = [{{ provider = "narrow", model = "n1" }}, {{ provider = "fake", model = "m2" }}]

[routes.narrow-only]
provider = "narrow"
model = "n1"
"#
        );
        let env = HashMap::from([
            ("KEY_A".to_owned(), KEY_A.to_owned()),
            ("KEY_B".to_owned(), KEY_B.to_owned()),
        ]);
        let config = Config::load(Source::Toml(&toml), &env).unwrap();
        let http = crate::provider::http_client().unwrap();
        Self {
            fake,
            routing: Routing::new(&config, &http),
            health: MemoryHealth::default(),
            chunks: KeptChunks::default(),
        }
    }

    async fn run(&self, task: &Task) -> Outcome {
        Failover {
            task,
            delivery: 1,
            prior: &[],
            routing: &self.routing,
            health: &self.health,
            chunks: &self.chunks,
        }
        .run()
        .await
    }

    /// The models the fake was asked for, in order.
    fn models_called(&self) -> Vec<String> {
        self.fake.requests().into_iter().map(|r| r.model).collect()
    }
}

fn task(route: &str, deadline: Duration) -> Task {
    let deadline_ms = now_ms() + u64::try_from(deadline.as_millis()).unwrap();
    Task {
        id: TaskId::new(),
        capability: shared::Capability::default(),
        priority: shared::Priority::Normal,
        route: route.to_owned(),
        request: json!({"model": route, "messages": [{"role": "user", "content": "hi"}]})
            .as_object()
            .unwrap()
            .clone(),
        deadline_ms,
        reply_to: None,
        created_ms: now_ms(),
        replay_of: None,
        step: None,
        asked_by: Vec::new(),
        session: None,
    }
}

/// `(model, class)` of each attempt, in order.
fn tried(outcome: &Outcome) -> Vec<(&str, Option<FailureClass>)> {
    outcome
        .attempts
        .iter()
        .map(|a| (a.model.as_str(), a.class))
        .collect()
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_5xx_is_retried_on_the_same_target_then_answers() {
    let bench = Bench::start().await;
    bench.fake.push_fault_for("m1", Fault::status(502));

    let outcome = bench.run(&task("chain", MINUTE)).await;

    assert!(outcome.answer.is_ok(), "{:?}", outcome.answer);
    assert_eq!(
        tried(&outcome),
        [("m1", Some(FailureClass::Upstream5xx)), ("m1", None)]
    );
    assert_eq!(outcome.answered_by, Some(("fake".into(), "m1".into())));
    assert_eq!(outcome.fallback_depth, 0);
    assert_eq!(
        *bench.health.failures.lock().unwrap(),
        [("m1".to_owned(), FailureClass::Upstream5xx)]
    );
}

#[tokio::test]
async fn a_timeout_fails_over_to_the_next_target() {
    let bench = Bench::start().await;
    bench
        .fake
        .push_fault_for("slow", Fault::StallBeforeFirstByte(STALL));

    let outcome = bench.run(&task("hasty", MINUTE)).await;

    assert!(outcome.answer.is_ok(), "{:?}", outcome.answer);
    assert_eq!(
        tried(&outcome),
        [("slow", Some(FailureClass::Timeout)), ("m2", None)]
    );
    assert_eq!(outcome.answered_by, Some(("fake".into(), "m2".into())));
    assert_eq!(outcome.fallback_depth, 1);
}

#[tokio::test]
async fn a_429_rotates_to_the_next_key() {
    let bench = Bench::start().await;
    bench.fake.push_fault_for("pm", Fault::status(429));

    let outcome = bench.run(&task("pooled", MINUTE)).await;

    assert!(outcome.answer.is_ok(), "{:?}", outcome.answer);
    let keys: Vec<_> = outcome.attempts.iter().map(|a| a.key.as_deref()).collect();
    assert_eq!(keys, [Some("KEY_A"), Some("KEY_B")]);
    assert_eq!(
        tried(&outcome),
        [("pm", Some(FailureClass::RateLimited)), ("pm", None)]
    );
    let sent: Vec<_> = bench
        .fake
        .requests()
        .into_iter()
        .map(|r| r.key.unwrap())
        .collect();
    assert!(
        sent[0].ends_with(KEY_A) && sent[1].ends_with(KEY_B),
        "{sent:?}"
    );
    assert!(
        bench
            .health
            .key_back_at("pool", "KEY_A", now_ms())
            .is_some()
    );
}

#[tokio::test]
async fn when_every_target_fails_each_attempt_is_listed_in_order() {
    let bench = Bench::start().await;
    bench.fake.set_outage(Some(Fault::status(503)));

    let outcome = bench.run(&task("chain", MINUTE)).await;

    let err = outcome.answer.as_ref().unwrap_err();
    assert_eq!(err.class, FailureClass::Upstream5xx);
    let five = Some(FailureClass::Upstream5xx);
    let expected = [
        ("m1", five),
        ("m1", five),
        ("m2", five),
        ("m2", five),
        ("m3", five),
        ("m3", five),
    ];
    assert_eq!(tried(&outcome), expected);
    assert_eq!(bench.models_called(), ["m1", "m1", "m2", "m2", "m3", "m3"]);
    let listed = "fake/m1: upstream_5xx, fake/m1: upstream_5xx, fake/m2: upstream_5xx, \
                  fake/m2: upstream_5xx, fake/m3: upstream_5xx, fake/m3: upstream_5xx";
    assert!(err.message.contains(listed), "{}", err.message);
    assert_eq!(outcome.answered_by, None);
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_chain() {
    let bench = Bench::start().await;
    bench
        .fake
        .set_outage(Some(Fault::StallBeforeFirstByte(STALL)));
    let task = task("chain", Duration::from_millis(300));

    let outcome = bench.run(&task).await;

    let err = outcome.answer.as_ref().unwrap_err();
    assert_eq!(err.class, FailureClass::DeadlineExceeded, "{err:?}");
    // Each target would wait 20 s; the one deadline ended the chain before the last.
    assert!(!outcome.attempts.is_empty());
    assert!(outcome.attempts.len() < 3, "{:?}", tried(&outcome));
    assert!(
        outcome
            .attempts
            .iter()
            .all(|a| a.started_ms <= task.deadline_ms)
    );
}

#[tokio::test]
async fn a_streamed_answer_goes_to_the_sink_and_its_first_chunk_says_who_answers() {
    let bench = Bench::start().await;
    bench.fake.push_fault_for("m1", Fault::status(500));
    bench.fake.push_fault_for("m1", Fault::status(500));
    let mut task = task("chain", MINUTE);
    task.request.insert("stream".into(), json!(true));

    let outcome = bench.run(&task).await;

    let answer = outcome.answer.unwrap();
    let chunks = bench.chunks.0.lock().unwrap();
    let seqs: Vec<u64> = chunks.iter().map(|c| c.0).collect();
    assert_eq!(seqs, (0..chunks.len() as u64).collect::<Vec<_>>());
    assert_eq!(chunks[0].2, Some(("fake".into(), "m2".into(), 3)));
    assert!(chunks[1..].iter().all(|c| c.2.is_none()));
    let text: String = chunks
        .iter()
        .filter_map(|c| c.1["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(answer["choices"][0]["message"]["content"], text.as_str());
}

#[tokio::test]
async fn a_rate_limit_lowers_the_providers_limit_of_calls_in_flight() {
    let bench = Bench::start().await;
    bench.fake.push_fault_for("n1", Fault::status(429));
    let calls = &bench.routing.runtimes["narrow"].calls;
    let held = calls.try_slot().unwrap();

    let outcome = bench.run(&task("narrow", MINUTE)).await;

    assert_eq!(outcome.answered_by, Some(("fake".into(), "m2".into())));
    assert_eq!(calls.limit(), 1);
    // The task's slot came back; the one still held is all the lowered limit allows.
    assert!(calls.try_slot().is_none());
    drop(held);
    assert!(calls.try_slot().is_some());
}

#[tokio::test]
async fn a_target_at_its_limit_is_passed_over_for_the_next_one() {
    let bench = Bench::start().await;
    let calls = &bench.routing.runtimes["narrow"].calls;
    let _held = [calls.try_slot().unwrap(), calls.try_slot().unwrap()];

    let outcome = bench.run(&task("narrow", MINUTE)).await;

    assert_eq!(outcome.answered_by, Some(("fake".into(), "m2".into())));
    assert_eq!(tried(&outcome), [("m2", None)], "n1 was not called");
}

#[tokio::test]
async fn a_task_that_gets_no_slot_before_its_deadline_fails_without_calling() {
    let bench = Bench::start().await;
    let calls = &bench.routing.runtimes["narrow"].calls;
    let _held = [calls.try_slot().unwrap(), calls.try_slot().unwrap()];

    // Its only target, so it is waited for.
    let outcome = bench
        .run(&task("narrow-only", Duration::from_millis(300)))
        .await;

    let err = outcome.answer.unwrap_err();
    assert_eq!(err.class, FailureClass::DeadlineExceeded, "{err:?}");
    assert!(outcome.attempts.is_empty());
    assert_eq!(bench.fake.calls(), 0, "no provider was called");
}
