//! The `switchyard` binary's library half: running the gateway and workers as one process
//! (`switchyard up`), and finding (or fetching) and starting a local `nats-server` when none
//! is reachable.

pub mod context;
pub mod local_nats;
pub mod nats_server;
pub mod operate;
pub mod run;
pub mod serve;
pub mod task_table;
