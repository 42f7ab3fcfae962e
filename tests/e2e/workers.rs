//! Workers: a killed worker's task is redelivered and answered once; workers sharing a
//! capability both take work; SIGTERM drains in-flight work before exiting; the probes on
//! `worker.health_listen` say whether a worker lives and takes tasks.

use std::collections::BTreeSet;
use std::process::Child;
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{Stack, content, eventually, free_port, task_id};

async fn wait_for_calls(stack: &Stack, n: usize) {
    eventually(Duration::from_secs(20), || async {
        (stack.provider.calls() >= n).then_some(())
    })
    .await;
}

/// Sends `text`, SIGKILLs the worker process that is running it (no drain, no ack, no
/// result), starts a fresh worker process, and returns the caller's answer with the running
/// rescuer, which [`terminate`] stops.
async fn crash_mid_task(stack: &Stack, text: &str) -> (reqwest::Response, Child, TempDir) {
    let logs = TempDir::new().unwrap();
    stack.provider.set_latency(Duration::from_secs(30));
    let mut doomed = stack.spawn_worker_process(&logs.path().join("doomed.log"));
    let pending = stack.send(text);
    wait_for_calls(stack, 1).await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    stack.provider.set_latency(Duration::ZERO);
    let rescuer = stack.spawn_worker_process(&logs.path().join("rescuer.log"));
    let response = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the client got no answer")
        .unwrap();
    (response, rescuer, logs)
}

fn sigterm(process: &Child) {
    kill(
        Pid::from_raw(process.id().try_into().unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
}

/// Stops a worker process with SIGTERM and checks that it drained and exited cleanly.
fn terminate(mut worker: Child) {
    sigterm(&worker);
    assert!(worker.wait().unwrap().success());
}

#[tokio::test]
async fn killed_worker_task_is_redelivered_and_answered_once() {
    let stack = Stack::start(0, &[]).await;
    let (response, rescuer, _logs) = crash_mid_task(&stack, "survive a crash").await;
    assert_eq!(response.status(), 200);
    let task_id = task_id(&response);
    let completion: Value = response.json().await.unwrap();
    assert!(content(&completion).contains("survive a crash"));
    assert_eq!(stack.provider.calls(), 2, "one call per delivery");

    let stored: Value = stack.task(&task_id).await.json().await.unwrap();
    assert_eq!(stored["status"], "completed");
    assert!(stored["delivery"].as_u64().unwrap() >= 2);
    // Exactly one result was ever written for the task.
    let history: Vec<_> = stack
        .results_bucket()
        .await
        .history(&task_id)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(history.len(), 1);
    // And exactly one lifecycle event.
    let mut events = async_nats::jetstream::new(stack.client.clone())
        .get_stream("EVENTS")
        .await
        .unwrap();
    assert_eq!(events.info().await.unwrap().state.messages, 1);

    terminate(rescuer);
    stack.stop().await;
}

#[tokio::test]
async fn two_workers_sharing_a_capability_both_take_work() {
    let stack = Stack::start(2, &[("SWITCHYARD__WORKER__CONCURRENCY", "1")]).await;
    stack.provider.set_latency(Duration::from_millis(300));
    let pending: Vec<_> = (0..6).map(|i| stack.send(&format!("job {i}"))).collect();
    let mut workers = BTreeSet::new();
    for p in pending {
        let response = p.await.unwrap();
        assert_eq!(response.status(), 200);
        let id = task_id(&response);
        let stored: Value = stack.task(&id).await.json().await.unwrap();
        workers.insert(stored["worker"].as_str().unwrap().to_owned());
    }
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert_eq!(stack.provider.calls(), 6);
    stack.stop().await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_then_exits() {
    let stack = Stack::start(0, &[]).await;
    let logs = TempDir::new().unwrap();
    stack.provider.set_latency(Duration::from_millis(1500));
    let mut worker = stack.spawn_worker_process(&logs.path().join("worker.log"));
    let pending = stack.send("finish me");
    wait_for_calls(&stack, 1).await;
    sigterm(&worker);
    let response = pending.await.unwrap();
    assert_eq!(response.status(), 200);
    let status = tokio::task::spawn_blocking(move || worker.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        stack.provider.calls(),
        1,
        "finished by the draining worker, not redelivered"
    );
    stack.stop().await;
}

#[tokio::test]
async fn gateway_shutdown_lets_in_flight_requests_finish() {
    let stack = Stack::start(1, &[]).await;
    stack.provider.set_latency(Duration::from_millis(1000));
    let pending = stack.send("answer me before you go");
    wait_for_calls(&stack, 1).await;
    stack.begin_gateway_shutdown();
    let response = pending.await.unwrap();
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.unwrap();
    assert!(content(&completion).contains("before you go"));
    stack.stop().await;
}

#[tokio::test]
async fn task_whose_last_attempt_died_is_failed_not_stranded() {
    // Two deliveries: one attempt and the reserve. The attempt's worker is killed.
    let stack = Stack::start(0, &[("SWITCHYARD__QUEUE__MAX_DELIVER", "2")]).await;
    let (response, rescuer, _logs) = crash_mid_task(&stack, "last chance").await;
    assert_eq!(response.status(), 500);
    let task_id = task_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal");
    let stored: Value = stack.task(&task_id).await.json().await.unwrap();
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["error"]["class"], "internal");
    assert_eq!(stored["delivery"], 2);
    assert_eq!(
        stack.provider.calls(),
        1,
        "the reserve delivery calls no provider"
    );

    terminate(rescuer);
    stack.stop().await;
}

#[tokio::test]
async fn worker_probes_follow_its_nats_connection_and_end_with_it() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut stack = Stack::start(1, &[("SWITCHYARD__WORKER__HEALTH_LISTEN", addr.as_str())]).await;
    let probe = |path: &'static str| {
        let (http, url) = (stack.http.clone(), format!("http://{addr}{path}"));
        async move {
            let r = http.get(url).send().await.ok()?;
            Some((r.status().as_u16(), r.json::<Value>().await.ok()?))
        }
    };
    assert_eq!(probe("/healthz").await.unwrap().0, 200);
    let (status, body) = eventually(Duration::from_secs(20), || async {
        probe("/readyz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["nats_connected"], true, "{body}");
    assert_eq!(body["fetching"], true, "{body}");

    // Without NATS it takes no task: not ready, though alive.
    stack.nats.stop();
    let body = eventually(Duration::from_secs(20), || async {
        probe("/readyz")
            .await
            .filter(|(s, _)| *s == 503)
            .map(|(_, b)| b)
    })
    .await;
    assert_eq!(body["nats_connected"], false, "{body}");
    assert_eq!(probe("/healthz").await.unwrap().0, 200);
    stack.nats.start_again();
    eventually(Duration::from_secs(30), || async {
        probe("/readyz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    let response = stack
        .chat(crate::harness::chat_body("fake", "probed"))
        .await;
    assert_eq!(response.status(), 200);

    // A stopped worker stops answering.
    let client = stack.http.clone();
    stack.stop().await;
    let gone = client.get(format!("http://{addr}/healthz")).send().await;
    assert!(gone.is_err(), "the probes outlived the worker: {gone:?}");
}
