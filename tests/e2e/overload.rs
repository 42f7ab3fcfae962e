//! Load above capacity: requests whose deadline the queue cannot meet are refused at once
//! with 429 and `Retry-After`, instead of waiting until 504 while their work runs for nobody.

use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;

use crate::harness::{Stack, chat_body};

#[tokio::test]
async fn requests_the_queue_cannot_serve_in_time_are_refused_early_with_retry_after() {
    let stack = Stack::start(1, &[("SWITCHYARD__WORKER__CONCURRENCY", "1")]).await;
    stack.provider.set_latency(Duration::from_millis(300));
    // Let the gateway see how fast this capability's one slot takes work (~3 tasks/s).
    let warm_up =
        join_all((0..10).map(|i| stack.chat(chat_body("fake", &format!("warm {i}"))))).await;
    assert!(warm_up.iter().all(|r| r.status() == 200));

    // Fifteen at once, each wanting its answer within 1.5 s: about five can have it.
    let deadline = [("x-switchyard-timeout-ms", "1500")];
    let burst = join_all(
        (0..15).map(|i| stack.chat_with(chat_body("fake", &format!("burst {i}")), &deadline)),
    )
    .await;
    let mut refused = 0;
    for response in burst {
        if response.status() != 429 {
            continue;
        }
        refused += 1;
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
    }
    assert!(refused > 0, "no request was refused early");
    // The refused were never queued: the provider saw only the others.
    assert!(stack.provider.calls() <= 10 + 15 - refused);
    stack.stop().await;
}
