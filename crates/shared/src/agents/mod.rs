//! Agents and teams as configuration: profiles (`[agents.<name>]`), teams
//! (`[teams.<name>]`), the catalog Switchyard ships, and their checks. Part of the contract
//! because the gateway, the worker and provisioning all read them (an agent's steps run on
//! its own queue, `agent-<name>`). What agents *do* (plans, routing, workflows) is in
//! `crates/agents`.

mod catalog;
mod profile;

pub use catalog::{Catalog, Team};
pub use profile::{AgentProfile, FieldError, QUEUE_PREFIX, check_token};
