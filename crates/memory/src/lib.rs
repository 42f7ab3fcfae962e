//! Switchyard's episodic memory: what agents did and what reviewers said of it, indexed in
//! SQLite (FTS5) from the `EVENTS` stream and searched over NATS on `memory.search`.
//!
//! The index holds nothing the stream does not: each replica of `switchyard memory` keeps
//! its own file, built by following `EVENTS`, and a deleted file is rebuilt to the same
//! answers. `document` says which events become memories, `index` stores and ranks them,
//! `follow` feeds the index from the stream, `service` answers searches. The contract
//! (query, hit, client) is `shared::memory`; `docs/memory-index.md` tells the whole story.

pub mod document;
pub mod follow;
pub mod index;
mod service;

pub use service::{ServeError, serve};
