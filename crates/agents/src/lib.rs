//! Switchyard's agent layer, pure: agent profiles and teams, the routing score that picks an
//! agent for a step, plans (the step DAG) and the workflow state machine. Nothing here talks
//! to NATS or HTTP; the gateway and the worker sit at its edges and store what it decides.

pub mod catalog;
pub mod plan;
pub mod profile;
pub mod prompt;
pub mod routing;
pub mod workflow;
