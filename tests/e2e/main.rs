//! End-to-end tests through the real pipeline: gateway → JetStream → worker → provider → back,
//! against a real `nats-server` and a fake provider on loopback.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

mod accounts;
mod bad_input;
mod chat;
mod cli;
mod direct_publish;
mod failover;
mod failures;
mod harness;
mod protocol;
mod provisioning;
mod workers;
