//! A worker's adaptive limit of calls in flight to a provider: against a provider that
//! answers 429 past a few requests at once, a worker with room for many more tasks lowers
//! its limit and settles near the provider's tolerance, and every task still completes;
//! `/v1/providers` shows the worker's lowered limit. The simulated provider's `capacity` shows
//! the same offline.

use std::time::Duration;

use futures::future::join_all;

use crate::harness::{Stack, chat_body, eventually};

/// Requests the fake serves at once; more are answered 429.
const TOLERANCE: usize = 4;
/// Tasks the worker runs at once: far more than the provider tolerates.
const CONCURRENCY: &str = "32";
/// Tasks sent at once in each round.
const ROUND: usize = 48;

/// Sends a round of requests at once; each must be answered.
async fn round(stack: &Stack, name: &str) {
    // A deadline long enough that the queue never refuses the round.
    let deadline = [("x-switchyard-timeout-ms", "120000")];
    let answers = join_all(
        (0..ROUND).map(|i| stack.chat_with(chat_body("fake", &format!("{name} {i}")), &deadline)),
    )
    .await;
    for (i, answer) in answers.into_iter().enumerate() {
        let status = answer.status();
        let body = answer.text().await.unwrap();
        assert_eq!(status, 200, "{name} {i}: {body}");
    }
}

#[tokio::test]
async fn calls_in_flight_settle_near_what_the_provider_tolerates() {
    let stack = Stack::start_with(
        1,
        &[
            ("SWITCHYARD__WORKER__CONCURRENCY", CONCURRENCY),
            // Room for the deliveries rate-limited while the limit comes down.
            ("SWITCHYARD__QUEUE__MAX_DELIVER", "20"),
        ],
        r#"
[providers.fake.concurrency]
initial = 32
max = 32

[health]
cooldown_ms = 100
"#,
    )
    .await;
    stack.provider.set_latency(Duration::from_millis(200));
    stack.provider.set_capacity(Some(TOLERANCE));

    // The first round meets the tolerance: rate limits bring the limit down.
    round(&stack, "learning").await;
    assert!(
        stack.provider.over_capacity() > 0,
        "the worker never went past the provider's tolerance"
    );

    // Once adapted, the worker stays near the tolerance: far fewer calls at once than it
    // has tasks in flight, and every task answered.
    stack.provider.reset_most_at_once();
    let refused_before = stack.provider.over_capacity();
    let calls_before = stack.provider.calls();
    round(&stack, "adapted").await;
    let most = stack.provider.most_at_once();
    assert!(
        most <= 3 * TOLERANCE,
        "{most} calls at once after adapting, against a tolerance of {TOLERANCE}"
    );
    // Rate limits are now rare probes of the tolerance, not most calls.
    let refused = stack.provider.over_capacity() - refused_before;
    let calls = stack.provider.calls() - calls_before;
    assert!(
        refused * 4 < calls,
        "{refused} of {calls} calls were rate-limited after adapting"
    );
    // The report shows the one worker's limit, come down from 32.
    let limit = eventually(Duration::from_secs(10), || async {
        let (_, target) = stack.target_health("fake").await;
        let limits = target["calls_in_flight_limit"].as_object()?.clone();
        let limit = limits.values().next()?.as_u64()?;
        (limits.len() == 1 && limit < 32).then_some(limit)
    })
    .await;
    assert!(limit <= 3 * TOLERANCE as u64, "limit {limit}");
    stack.stop().await;
}

#[tokio::test]
async fn the_simulated_provider_shows_the_limit_coming_down_offline() {
    let stack = Stack::start_with(
        1,
        &[
            ("SWITCHYARD__WORKER__CONCURRENCY", "16"),
            ("SWITCHYARD__QUEUE__MAX_DELIVER", "20"),
        ],
        r#"
[providers.busy]
kind = "simulated"
latency_ms = 100
capacity = 2

[providers.busy.concurrency]
initial = 16
max = 16

[routes.busy]
provider = "busy"
model = "simulated-busy"
"#,
    )
    .await;
    let deadline = [("x-switchyard-timeout-ms", "120000")];
    let answers = join_all(
        (0..24).map(|i| stack.chat_with(chat_body("busy", &format!("offline {i}")), &deadline)),
    )
    .await;
    for answer in answers {
        assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    }
    // Its 429s brought the worker's limit down from 16, as the report shows.
    eventually(Duration::from_secs(10), || async {
        let (_, target) = stack.target_health("busy").await;
        let limit = target["calls_in_flight_limit"]
            .as_object()?
            .values()
            .next()?
            .as_u64()?;
        (limit < 16).then_some(())
    })
    .await;
    stack.stop().await;
}
