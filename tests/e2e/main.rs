//! End-to-end tests through the real pipeline: gateway → JetStream → worker → provider → back,
//! against a real `nats-server` and a fake provider on loopback.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]
#![expect(
    clippy::disallowed_methods,
    reason = "tests run requests and servers beside the test body (joined, or dropped with the \
              test's runtime) and wait on processes; no process here has a drain to respect"
)]

mod accounts;
mod artifacts;
mod bad_input;
mod call_limits;
mod chat;
mod cli;
mod client_tools;
mod clients;
mod cluster;
mod conflicts;
mod context;
mod direct_publish;
mod exactly_once;
mod failover;
mod failures;
mod harness;
mod hostile_http;
mod hostile_input;
mod isolation;
mod mcp;
mod memory;
mod nats_cluster;
mod overload;
mod priorities;
mod protocol;
mod provisioning;
mod runtime_agents;
mod sandbox;
mod task_list;
mod threads;
mod tools;
mod web_tools;
mod windows;
mod workers;
mod workflow_faults;
mod workflows;
