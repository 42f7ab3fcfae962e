//! Agents and teams as configuration: profiles (`[agents.<name>]`), teams
//! (`[teams.<name>]`), the catalog Switchyard ships, and their checks. Part of the contract
//! because the gateway, the worker and provisioning all read them (an agent's steps run on
//! its own queue, `agent-<name>`). Agents can also be added or replaced at runtime through
//! the `agents` bucket (`LiveCatalog`). What agents *do* (plans, routing, workflows) is in
//! `crates/agents`.

mod catalog;
mod live;
mod profile;

pub use catalog::{Catalog, Team, Weights};
pub use live::LiveCatalog;
pub use profile::{AgentProfile, FieldError, QUEUE_PREFIX, check_token};
