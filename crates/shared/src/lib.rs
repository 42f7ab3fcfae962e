//! The contract between Switchyard's gateway and workers: task, result and stream-event
//! types, subject and bucket names, configuration, JetStream provisioning and the closed
//! vocabulary of failure classes. Nothing here talks HTTP.

pub mod agents;
pub mod artifacts;
pub mod backoff;
pub mod config;
pub mod context;
pub mod dlq;
pub mod failure;
pub mod health;
pub mod inbound;
pub mod limits;
pub mod mcp;
pub mod memory;
pub mod names;
pub mod nats;
pub mod provision;
pub mod reply;
pub mod schema;
pub mod task;
pub mod threads;
pub mod tokens;
pub mod tool_call;
pub mod tools;

pub use failure::FailureClass;
pub use names::{Capability, NameError, Priority, TaskId};
pub use task::{
    Attempt, ContextWrite, SessionRef, StepRef, StreamEventKind, Task, TaskResult, TaskStatus,
};
