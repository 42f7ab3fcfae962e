//! Switchyard's agent layer, pure: the routing score that picks an agent for a step, plans
//! (the step DAG), step prompts and the workflow state machine. Agent profiles and teams are
//! configuration, in `shared::agents`. Nothing here talks
//! to NATS or HTTP; the gateway and the worker sit at its edges and store what it decides.

pub mod budget;
pub mod control;
pub mod plan;
pub mod prompt;
pub mod routing;
pub mod workflow;
